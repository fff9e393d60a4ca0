//! The cluster layer's sans-IO parts: mapping vectors and property tests (reversible,
//! NATS matching agrees with MQTT matching and with the trie), interest counts against
//! a model, header and retained-value round trips.

use bytes::Bytes;
use proptest::prelude::*;

use super::headers::{self, Meta};
use super::interest::{InterestChange, InterestKey, InterestTable};
use super::subject::{
    filter_subjects, nats_matches, queue_group, subject_topic, topic_subject, QosClass,
};
use super::ClusterError;
use crate::protocol::{PublishProperties, PublishRare, QoS, UserProperty};
use crate::topic::{matches, TopicTrie};

const Q0: QosClass = QosClass::AtMostOnce;
const Q1: QosClass = QosClass::AtLeastOnce;

#[test]
fn topic_vectors() {
    let cases: &[(&str, &str)] = &[
        ("a/b", "mq.0.a.b"),
        ("a.b", "mq.0.a%2Eb"),
        ("a b/*/>", "mq.0.a%20b.%2A.%3E"),
        ("/", "mq.0.%.%"),
        ("a//b", "mq.0.a.%.b"),
        ("100%", "mq.0.100%25"),
        ("é", "mq.0.%C3%A9"),
        ("sensor-1/temp_c", "mq.0.sensor-1.temp_c"),
    ];
    for (topic, subject) in cases {
        assert_eq!(
            topic_subject(topic.as_bytes(), Q0).as_deref(),
            Some(*subject)
        );
        let (back, class) = subject_topic(subject).unwrap();
        assert_eq!(back, topic.as_bytes());
        assert_eq!(class, Q0);
    }
    assert_eq!(topic_subject(b"a", Q1).as_deref(), Some("mq.1.a"));
    assert_eq!(topic_subject(b"$SYS/broker/uptime", Q0), None);
}

#[test]
fn filter_vectors() {
    let subs = |f: &str| filter_subjects(f.as_bytes()).into_vec();
    assert_eq!(subs("a/+/c"), ["mq.*.a.*.c"]);
    assert_eq!(subs("a/#"), ["mq.*.a", "mq.*.a.>"]);
    assert_eq!(subs("#"), ["mq.*.>"]);
    assert_eq!(subs("+"), ["mq.*.*"]);
    assert_eq!(subs("a.b/ /#"), ["mq.*.a%2Eb.%20", "mq.*.a%2Eb.%20.>"]);
    assert!(subs("$SYS/#").is_empty());
    assert_eq!(queue_group(b"g 1"), "g%201");
}

#[test]
fn foreign_subjects_are_refused() {
    for s in [
        "x.0.a",
        "mq.2.a",
        "mq.0",
        "mq.0.a%2",
        "mq.0.a%zz",
        "mq.0.%61",
        "mq.0.a b",
        "mq.0.a..b",
        "mq.0.%24SYS",
        "mq.0.*",
    ] {
        assert_eq!(subject_topic(s), Err(ClusterError::BadSubject), "{s}");
    }
}

#[test]
fn nats_matcher_follows_nats_rules() {
    assert!(nats_matches("a.*", "a.b"));
    assert!(!nats_matches("a.*", "a.b.c"));
    assert!(nats_matches("a.>", "a.b.c"));
    assert!(!nats_matches("a.>", "a"));
    assert!(!nats_matches("a.b", "a"));
}

/// Levels built from the characters NATS reserves and the escape itself, so the
/// escaping is exercised everywhere.
fn level() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just('a'),
            Just('b'),
            Just('.'),
            Just(' '),
            Just('*'),
            Just('>'),
            Just('%'),
            Just('\t'),
            Just('é'),
            Just('-'),
        ],
        0..4,
    )
    .prop_map(|v| v.into_iter().collect())
}

fn topic() -> impl Strategy<Value = String> {
    proptest::collection::vec(level(), 1..5)
        .prop_map(|v| v.join("/"))
        .prop_filter("$ topics stay local; no empty topic", |t| {
            !t.is_empty() && !t.starts_with('$')
        })
}

/// Filter levels from a small alphabet (so filters often match), wildcards included.
fn filter() -> impl Strategy<Value = String> {
    let lvl = prop_oneof![
        Just("+".to_owned()),
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("".to_owned()),
        Just("a.b".to_owned()),
        Just("*".to_owned()),
    ];
    (proptest::collection::vec(lvl, 1..4), any::<bool>())
        .prop_map(|(v, hash)| {
            let mut f = v.join("/");
            if hash {
                f.push_str("/#");
            }
            f
        })
        // MQTT refuses an empty filter (validate_filter); empty levels are fine.
        .prop_filter("non-empty filter", |f| !f.is_empty())
}

fn small_topic() -> impl Strategy<Value = String> {
    let lvl = prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("".to_owned()),
        Just("a.b".to_owned()),
        Just("*".to_owned()),
        Just(">".to_owned()),
    ];
    proptest::collection::vec(lvl, 1..5)
        .prop_map(|v| v.join("/"))
        .prop_filter("non-empty topic", |t| !t.is_empty())
}

fn token_ok(t: &str) -> bool {
    !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic() && b != b'.')
}

proptest! {
    #[test]
    fn topic_mapping_is_reversible(t in topic(), q1 in any::<bool>()) {
        let class = if q1 { Q1 } else { Q0 };
        let s = topic_subject(t.as_bytes(), class).unwrap();
        // Valid NATS subject for a publish: non-empty printable tokens, no wildcards.
        prop_assert!(s.split('.').all(token_ok), "{s}");
        prop_assert!(s.split('.').all(|tok| tok != "*" && tok != ">"));
        prop_assert!(!s.contains('*') && !s.contains('>'));
        let (back, c) = subject_topic(&s).unwrap();
        prop_assert_eq!(back, t.as_bytes().to_vec());
        prop_assert_eq!(c, class);
    }

    #[test]
    fn filter_subjects_are_valid(f in filter()) {
        for s in filter_subjects(f.as_bytes()) {
            let toks: Vec<&str> = s.split('.').collect();
            prop_assert!(toks.iter().all(|t| token_ok(t)), "{s}");
            // `>` only last; `*`/`>` never inside a token.
            for (i, t) in toks.iter().enumerate() {
                prop_assert!(*t != ">" || i == toks.len() - 1);
                prop_assert!(t.len() == 1 || (!t.contains('*') && !t.contains('>')));
            }
        }
    }

    /// NATS delivers a message to a node exactly when MQTT matching (the naive
    /// matcher and the broker's trie) says one of its filters matches.
    #[test]
    fn nats_matching_agrees_with_mqtt(f in filter(), t in small_topic(), q1 in any::<bool>()) {
        let class = if q1 { Q1 } else { Q0 };
        let subject = topic_subject(t.as_bytes(), class).unwrap();
        let nats = filter_subjects(f.as_bytes()).iter().any(|p| nats_matches(p, &subject));
        let naive = matches(f.as_bytes(), t.as_bytes());
        let mut trie: TopicTrie<u32> = TopicTrie::new();
        trie.insert(f.as_bytes(), 1);
        let mut in_trie = false;
        trie.for_each_match(t.as_bytes(), |_| in_trie = true);
        prop_assert_eq!(nats, naive, "filter {:?} topic {:?} subject {}", f, t, subject);
        prop_assert_eq!(nats, in_trie, "filter {:?} topic {:?}", f, t);
    }

    /// A message matching two filters of one node comes once per filter from NATS,
    /// never more: each filter's subjects are disjoint (`a` and `a.>`).
    #[test]
    fn one_filter_matches_at_most_once(f in filter(), t in small_topic()) {
        let subject = topic_subject(t.as_bytes(), Q0).unwrap();
        let n = filter_subjects(f.as_bytes()).iter().filter(|p| nats_matches(p, &subject)).count();
        prop_assert!(n <= 1);
    }

    #[test]
    fn arbitrary_subjects_never_panic(s in "[a-z0-9%.*> A-F]{0,24}") {
        if let Ok((t, c)) = subject_topic(&s) {
            // Whatever decodes is canonical: it maps back to the same subject.
            let again = topic_subject(&t, c);
            prop_assert_eq!(again.as_deref(), Some(s.as_str()));
        }
    }

    /// The table against a model: per key, the set of loops that said add last.
    #[test]
    fn interest_counts_follow_a_model(ops in proptest::collection::vec((0usize..4, 0usize..3, any::<bool>()), 0..64)) {
        let keys: Vec<InterestKey> = ["a/#", "b", "c/+"]
            .iter()
            .map(|f| InterestKey { filter: Bytes::from_static(f.as_bytes()), group: None })
            .collect();
        let mut t = InterestTable::new();
        let mut model = [[false; 4]; 3];
        for (l, k, add) in ops {
            let before = model[k].iter().any(|x| *x);
            model[k][l] = add;
            let after = model[k].iter().any(|x| *x);
            let want = match (before, after) {
                (false, true) => InterestChange::Subscribe,
                (true, false) => InterestChange::Unsubscribe,
                _ => InterestChange::None,
            };
            prop_assert_eq!(t.apply(l, &keys[k], add), want);
            let loops = t.loops(&keys[k]);
            for (i, m) in model[k].iter().enumerate() {
                prop_assert_eq!(loops.contains(i), *m);
            }
            for l in 0..4 {
                let any = model.iter().any(|m| m[l]);
                prop_assert_eq!(t.any_loops().contains(l), any);
            }
        }
        prop_assert_eq!(t.len(), model.iter().filter(|m| m.iter().any(|x| *x)).count());
    }

    #[test]
    fn header_decode_never_panics(q in ".{0,4}", r in ".{0,2}", id in ".{0,6}", p in ".{0,12}") {
        let _ = headers::decode(|n| match n {
            headers::QOS => Some(q.as_str()),
            headers::RETAIN => Some(r.as_str()),
            headers::ORIGIN => Some("n1"),
            headers::ID => Some(id.as_str()),
            headers::PROPS => Some(p.as_str()),
            _ => None,
        });
    }

    #[test]
    fn retained_value_decode_never_panics(v in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = headers::decode_retained(&v);
    }

    #[test]
    fn retained_key_is_reversible_and_valid(t in topic()) {
        let k = headers::retained_key(t.as_bytes());
        prop_assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        prop_assert_eq!(headers::retained_topic(&k).unwrap(), t.as_bytes().to_vec());
    }
}

fn props() -> PublishProperties {
    PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval_s: Some(60),
        rare: PublishRare {
            response_topic: Some(Bytes::from_static(b"reply/to")),
            correlation_data: Some(Bytes::from_static(&[0, 1, 2])),
            content_type: Some(Bytes::from_static(b"text/plain")),
            user_properties: vec![(
                Bytes::from_static("k é".as_bytes()),
                Bytes::from_static(b"v\n"),
            ) as UserProperty],
            ..Default::default()
        }
        .into(),
        ..Default::default()
    }
}

fn lookup<'a>(h: &'a [(&'static str, String)]) -> impl Fn(&str) -> Option<&'a str> {
    move |n| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str())
}

#[test]
fn headers_round_trip() {
    for (qos, retain, properties) in [
        (QoS::AtMostOnce, false, PublishProperties::default()),
        (QoS::AtLeastOnce, true, props()),
        (QoS::ExactlyOnce, false, props()),
    ] {
        let meta = Meta {
            qos,
            retain,
            origin: "node-1".into(),
            id: 42,
            properties,
        };
        let h = headers::encode(&meta);
        assert_eq!(headers::decode(lookup(&h)), Ok(meta));
    }
}

#[test]
fn per_connection_properties_are_not_forwarded() {
    let mut p = props();
    p.topic_alias = Some(3);
    p.rare.to_mut().subscription_identifiers.push(7);
    let meta = Meta {
        qos: QoS::AtMostOnce,
        retain: false,
        origin: "n".into(),
        id: 1,
        properties: p,
    };
    let back = headers::decode(lookup(&headers::encode(&meta))).unwrap();
    assert_eq!(back.properties, props());
}

#[test]
fn bad_headers_are_named() {
    let h = [(headers::QOS, "3".to_owned())];
    assert_eq!(
        headers::decode(lookup(&h)),
        Err(ClusterError::BadHeader(headers::QOS))
    );
    let h = [
        (headers::QOS, "1".to_owned()),
        (headers::ORIGIN, "n".to_owned()),
        (headers::ID, "x".to_owned()),
    ];
    assert_eq!(
        headers::decode(lookup(&h)),
        Err(ClusterError::BadHeader(headers::ID))
    );
    let h = [
        (headers::QOS, "1".to_owned()),
        (headers::ORIGIN, "n".to_owned()),
        (headers::ID, "1".to_owned()),
        (headers::PROPS, "!!".to_owned()),
    ];
    assert_eq!(
        headers::decode(lookup(&h)),
        Err(ClusterError::BadHeader(headers::PROPS))
    );
}

#[test]
fn retained_value_round_trip() {
    for (qos, p, payload) in [
        (QoS::AtMostOnce, PublishProperties::default(), &b""[..]),
        (QoS::AtLeastOnce, props(), &b"21.5"[..]),
    ] {
        let v = headers::encode_retained(qos, &p, payload);
        let (q, back, pl) = headers::decode_retained(&v).unwrap();
        assert_eq!((q, back, &pl[..]), (qos, p, payload));
    }
    assert_eq!(
        headers::decode_retained(&[9, 0, 0, 0, 0, 0]),
        Err(ClusterError::BadRetained)
    );
}

/// Session takeover requests and replies, and the ownership value, round-trip; what
/// ringmq did not write is refused.
#[cfg(not(loom))]
#[test]
fn session_wire_formats_round_trip() {
    use super::sessions::*;
    let r = encode_request(b"dev/1", true, 7);
    assert_eq!(
        decode_request(&r),
        Some(Request::Takeover {
            client_id: Bytes::from_static(b"dev/1"),
            clean: true,
            epoch: 7
        })
    );
    assert_eq!(
        decode_request(&encode_confirm(b"dev/1", u64::MAX - 3)),
        Some(Request::Confirm {
            client_id: Bytes::from_static(b"dev/1"),
            token: u64::MAX - 3
        })
    );
    assert_eq!(decode_request(b""), None);
    assert_eq!(
        decode_request(b"\x02id"),
        None,
        "a confirmation without its token"
    );
    assert_eq!(decode_request(b"\x03id"), None);
    assert_eq!(
        decode_request(b"\x00"),
        None,
        "an empty id is never claimed"
    );
    let s = Bytes::from_static(b"records");
    assert_eq!(decode_reply(&encode_reply(Some(&s), 9)), Some(Some((9, s))));
    assert_eq!(decode_reply(&encode_reply(None, 9)), Some(None));
    assert_eq!(decode_reply(b"\x00x"), None);
    assert_eq!(
        decode_reply(b"\x01short"),
        None,
        "a hand-over without its id"
    );
    assert_eq!(decode_reply(b"\x07"), None);
    assert_eq!(
        decode_owner(&encode_owner(
            "n.1 x",
            42,
            1_700_000_000_123,
            1_700_000_000_456,
            b"state\n\x00"
        )),
        Some(Owner {
            node: "n.1 x".to_string(),
            epoch: 42,
            connect_ms: 1_700_000_000_123,
            offline_ms: 1_700_000_000_456,
            state: Bytes::from_static(b"state\n\x00")
        })
    );
    assert_eq!(
        decode_owner(&encode_owner("n", 1, 0, 0, b"")),
        Some(Owner {
            node: "n".to_string(),
            epoch: 1,
            connect_ms: 0,
            offline_ms: 0,
            state: Bytes::new()
        })
    );
    assert_eq!(decode_owner(b"n1"), None);
    assert_eq!(decode_owner(b"n\n1\n"), None, "no CONNECT time");
    assert_eq!(decode_owner(b"n\n1\n5\n"), None, "no offline time");
    assert_eq!(
        decode_request(&encode_merge(b"dev/1", b"records")),
        Some(Request::Merge {
            client_id: Bytes::from_static(b"dev/1"),
            session: Bytes::from_static(b"records")
        })
    );
    assert_eq!(
        decode_request(b"\x03\x09\x00dev"),
        None,
        "id longer than the message"
    );
    assert_eq!(
        decode_request(&encode_hand_back(b"dev/1", 77, b"records")),
        Some(Request::HandBack {
            client_id: Bytes::from_static(b"dev/1"),
            token: 77,
            session: Bytes::from_static(b"records")
        })
    );
    assert_eq!(
        decode_request(b"\x05\x4d\0\0\0\0\0\0\0\x09\x00dev"),
        None,
        "id longer than the message"
    );
    assert_eq!(
        encode_hand_back(b"d", 1, b"").len(),
        HAND_BACK_HEADER_BYTES + 1
    );
    // A node name with NATS's reserved characters stays one token.
    assert_eq!(takeover_subject("a.b c"), "ringmq.node.a%2Eb%20c.takeover");
}

/// Which incarnation is dead, for the wills sweep: a stale heartbeat; a newer
/// incarnation of the node than the will's; never a node whose heartbeat is unknown
/// or a will written after the heartbeat known here (a restart not yet seen).
#[cfg(not(loom))]
#[test]
fn a_will_is_orphaned_only_by_a_dead_incarnation() {
    use super::wills::*;
    use std::collections::HashMap;
    const S: i128 = 1_000_000_000;
    let me = incarnation_of("n1", 0xab);
    let key = will_key(b"client/1", &me);
    assert_eq!(owner_of_key(&key), Some(me.as_str()));
    assert_eq!(owner_of_key("nodots"), None);
    assert_eq!(owner_of_key("a.b"), None);
    let (node, inc) = me.split_once('.').unwrap();
    let mut beats: HashMap<String, (String, i128)> = HashMap::new();
    assert!(!is_dead(&beats, 100 * S, &me, 0, 5 * S), "unknown node");
    beats.insert(node.to_string(), (inc.to_string(), 100 * S));
    assert!(
        !is_dead(&beats, 104 * S, &me, 99 * S, 5 * S),
        "fresh heartbeat"
    );
    assert!(
        is_dead(&beats, 105 * S, &me, 99 * S, 5 * S),
        "stale heartbeat"
    );
    // Restarted: the heartbeat known here is another incarnation's.
    beats.insert(node.to_string(), ("ff".into(), 100 * S));
    assert!(
        is_dead(&beats, 100 * S, &me, 90 * S, 5 * S),
        "will older than the new incarnation"
    );
    assert!(
        !is_dead(&beats, 100 * S, &me, 101 * S, 5 * S),
        "will newer than the heartbeat known"
    );
}

/// Will changes while no writer drains them (NATS down, bucket missing) pile up as one
/// entry per client id, the latest state each, and adding never waits: the cluster
/// thread's main task (forwarding, acks, claims) cannot be held by the wills writer.
#[cfg(not(loom))]
#[test]
fn will_changes_keep_the_latest_per_client_without_waiting() {
    let feed = super::wills::WillFeed::default();
    for round in 0..1_000u32 {
        for c in 0..100u32 {
            let client = Bytes::from(format!("c{c}"));
            // Each client ends on "set" in the last round, except odd ones: "gone".
            let value =
                (round % 2 == 0 || c % 2 == 0).then(|| Bytes::from(format!("will {c} {round}")));
            feed.put(client, value);
        }
    }
    assert_eq!(feed.len(), 100, "one entry per client id, not per change");
    for c in 0..100u32 {
        let (client, value) = feed.pop().expect("an entry per client");
        assert_eq!(client, Bytes::from(format!("c{c}")), "first-change order");
        let want = (c % 2 == 0).then(|| Bytes::from(format!("will {c} 999")));
        assert_eq!(value, want, "the latest state of c{c}");
    }
    assert!(feed.pop().is_none());
    // A client changed again after its entry was taken is queued again.
    feed.put(Bytes::from_static(b"c1"), None);
    assert_eq!(feed.pop(), Some((Bytes::from_static(b"c1"), None)));
}

/// One loop whose ring is full holds up only its own queue: another loop's claims and
/// takeovers still reach it (before, one FIFO for all loops stopped at the first full
/// ring). While a loop's queue is long the sources are not read (`has_room`), and a
/// dead node's will goes to the loop with the least waiting.
#[cfg(not(loom))]
#[test]
fn a_full_loop_ring_holds_up_only_its_own_queue() {
    use super::link::PendingIn;
    use crate::ring as spsc;
    use crate::shard::ClusterIn;
    let takeover = |n: u64| ClusterIn::Takeover {
        client_id: Bytes::from_static(b"c"),
        clean: false,
        reply: n,
        max_bytes: 1 << 20,
    };
    let (mut p0, mut c0) = spsc::channel::<ClusterIn>(4);
    let (p1, mut c1) = spsc::channel::<ClusterIn>(4);
    let cap = p0.capacity();
    // Loop 0 is busy: its ring is full.
    for n in 0..cap as u64 {
        assert!(p0.push(takeover(n)).is_ok());
    }
    let mut producers = vec![p0, p1];
    let mut to_wake = vec![false; 2];
    let mut q = PendingIn::new(2);
    for n in 0..10_000 {
        q.push(0, takeover(n));
    }
    q.push(1, takeover(99));
    assert!(!q.has_room(), "loop 0's queue is long: sources wait");
    assert_eq!(q.shortest(), 1);
    q.flush(&mut producers, &mut to_wake);
    match c1.pop() {
        Some(ClusterIn::Takeover { reply: 99, .. }) => {}
        other => panic!("loop 1 did not get its takeover: {other:?}"),
    }
    assert_eq!(to_wake, [false, true]);
    assert_eq!(q.len(0), 10_000, "nothing lost for loop 0");
    // Loop 0 drains its ring: its queue moves on, in order.
    while c0.pop().is_some() {}
    q.flush(&mut producers, &mut to_wake);
    match c0.pop() {
        Some(ClusterIn::Takeover { reply: 0, .. }) => {}
        other => panic!("loop 0's first queued takeover: {other:?}"),
    }
    assert_eq!(q.len(0), 10_000 - cap);
}

/// The self-fencing lease ends before any survivor can take the node for dead
/// (review H3), whatever the delays: a heartbeat sent at `sent` by the node's clock
/// is stamped by the server at some `stamp` >= `sent` (delivery delay), acknowledged
/// or not; a survivor's "now" is its own latest heartbeat's stamp, at most real time.
/// For every survivor judgement `is_dead`, the node's lease (from the last
/// acknowledged send) ran out at least `dead - fence` before it (the survivor's own
/// heartbeat lagging real time only widens that); an unacknowledged heartbeat never
/// extends the lease.
#[cfg(not(loom))]
#[test]
fn the_lease_runs_out_before_any_survivor_calls_the_node_dead() {
    use super::wills::*;
    use std::collections::HashMap;
    use std::time::{Duration, Instant};
    let t = Timings::from_ms(1_000, 3_000, 5_000);
    let base = Instant::now();
    let ns = |d: Duration| d.as_nanos() as i128;
    let me = incarnation_of("cut", 1);
    let (node, inc) = me.split_once('.').unwrap();
    for sent_ms in [0u64, 250, 1_000] {
        for delay_ms in [0u64, 1, 400, 2_900] {
            let sent = Duration::from_millis(sent_ms);
            let stamp = sent + Duration::from_millis(delay_ms);
            let mut lease = Lease::new(t.fence_after);
            assert_eq!(
                lease.step(false, base),
                None,
                "no lease yet: nothing fenced"
            );
            lease.renewed(base + sent);
            // An older heartbeat acknowledged late does not move the lease back.
            lease.renewed(base);
            let deadline = lease.deadline().expect("a lease");
            assert_eq!(deadline, base + sent + t.fence_after);
            let beats: HashMap<String, (String, i128)> =
                [(node.to_string(), (inc.to_string(), ns(stamp)))].into();
            // Survivor judgements every 10 ms of server time.
            let mut judged = false;
            for now_ms in 0..20_000u64 {
                let now = Duration::from_millis(now_ms * 10);
                if !is_dead(&beats, ns(now), &me, 0, ns(t.dead_after)) {
                    continue;
                }
                let margin = (base + now).saturating_duration_since(deadline);
                assert!(
                    margin >= t.dead_after - t.fence_after,
                    "sent {sent_ms} delay {delay_ms}: dead at {now:?}, fenced at {:?}",
                    deadline - base
                );
                assert!(!lease.holds(base + now));
                assert_eq!(lease.step(false, base + now), Some(true), "fences");
                judged = true;
                break;
            }
            assert!(judged, "the survivor never called it dead");
            assert!(lease.holds(deadline - Duration::from_millis(1)));
            assert_eq!(
                lease.step(true, deadline - Duration::from_millis(1)),
                Some(false)
            );
            assert_eq!(lease.step(true, deadline), None, "stays fenced");
        }
    }
}

/// A fence drops a fenced client's will change that was not written yet (its put
/// must never land for a connection already closed) and keeps the fenced will apart
/// from the latest-per-client queue, so a later change of the id cannot replace it.
#[cfg(not(loom))]
#[test]
fn a_fence_drops_the_unwritten_put_and_keeps_the_will_apart() {
    let feed = super::wills::WillFeed::default();
    let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
    feed.put(a.clone(), Some(Bytes::from_static(b"put a")));
    feed.put(b.clone(), Some(Bytes::from_static(b"put b")));
    feed.fence(a.clone(), Bytes::from_static(b"will a"));
    // The id comes back (a local will while fenced) and goes.
    feed.put(a.clone(), None);
    let fenced: Vec<_> = feed
        .take_fenced()
        .into_iter()
        .map(|(c, r, _)| (c, r))
        .collect();
    assert_eq!(fenced, [(a.clone(), Bytes::from_static(b"will a"))]);
    assert!(feed.take_fenced().is_empty());
    assert_eq!(feed.pop(), Some((a, None)), "the later change, not the put");
    assert_eq!(feed.pop(), Some((b, Some(Bytes::from_static(b"put b")))));
    assert!(feed.pop().is_none());
    assert!(feed.is_empty());
}

/// What an old node does with a hand-over never confirmed (review M1): it takes the
/// entry back only while it holds the asker's exact claim, sends the session on to a
/// newer claim, and leaves an entry naming itself alone.
#[cfg(not(loom))]
#[test]
fn a_lapsed_handover_is_reasserted_only_over_the_askers_claim() {
    use super::sessions::{reassert_step, Owner, Reassert};
    let owner = |node: &str, epoch| Owner {
        node: node.into(),
        epoch,
        connect_ms: 0,
        offline_ms: 0,
        state: Bytes::new(),
    };
    assert_eq!(reassert_step(Some(&owner("b", 7)), "a", 7), Reassert::Take);
    assert_eq!(
        reassert_step(Some(&owner("c", 8)), "a", 7),
        Reassert::SendTo("c".into())
    );
    assert_eq!(reassert_step(Some(&owner("a", 9)), "a", 7), Reassert::Leave);
    assert_eq!(reassert_step(Some(&owner("b", 6)), "a", 7), Reassert::Leave);
    assert_eq!(reassert_step(None, "a", 7), Reassert::Leave);
}

/// Two nodes compare the identities they computed apart from one message's headers,
/// so the key must not depend on the build or the process (no seeded hasher), must
/// tell origins and sequences apart, and is never 0 (a local message's mark).
#[test]
fn message_keys_are_stable_and_tell_messages_apart() {
    use super::headers::message_key;
    // FNV-1a of "n1", 0xff, 7u64 LE (checked by hand): pinned, since nodes of two
    // builds must agree.
    assert_eq!(message_key("n1", 7), 0xa6e9_acc1_caa4_6c4a);
    assert_eq!(message_key("n1", 7), message_key("n1", 7));
    assert_ne!(message_key("n1", 7), message_key("n1", 8));
    assert_ne!(message_key("n1", 7), message_key("n2", 7));
    assert_ne!(message_key("n", 0x31), message_key("n1", 0));
    assert_ne!(message_key("", 0), 0);
}

/// Review L1: a node whose table of requests waiting for their loop is full answers
/// "busy", distinct from "no session"; a confirmation asks again after "busy" (a
/// "no session" answer would end it for good and lose the delta), boundedly, and a
/// real answer or the old node's silence ends it as before.
#[cfg(not(loom))]
#[test]
fn a_busy_answer_is_asked_again_and_no_session_is_final() {
    use super::sessions::{
        decode_answer, encode_reply, Answer, ConfirmStep, ConfirmTries, REPLY_BUSY,
        REPLY_TAKEN_BACK, REPLY_TOO_LARGE,
    };
    let delta = bytes::Bytes::from_static(b"delta");
    assert_eq!(decode_answer(&[REPLY_BUSY]), Answer::Busy);
    assert_eq!(decode_answer(&encode_reply(None, 0)), Answer::Nothing);
    assert_eq!(decode_answer(&[REPLY_TOO_LARGE]), Answer::TooLarge);
    assert_eq!(decode_answer(&[REPLY_TAKEN_BACK]), Answer::TakenBack);
    assert_eq!(
        decode_answer(&encode_reply(Some(&delta), 9)),
        Answer::Session(9, delta.clone())
    );
    assert_eq!(decode_answer(&[7, 7]), Answer::Malformed);

    let mut t = ConfirmTries::default();
    assert!(matches!(t.next(Some(Answer::Busy)), ConfirmStep::Again(d) if !d.is_zero()));
    assert_eq!(
        t.next(Some(Answer::Session(9, delta.clone()))),
        ConfirmStep::Done(Some(delta))
    );
    let mut t = ConfirmTries::default();
    assert_eq!(t.next(Some(Answer::Nothing)), ConfirmStep::Done(None));
    assert_eq!(t.next(Some(Answer::TakenBack)), ConfirmStep::TakenBack);

    // Busy for ever, or silent: asked again a bounded number of times, then given up.
    let mut t = ConfirmTries::default();
    let mut again = 0;
    loop {
        match t.next(Some(Answer::Busy)) {
            ConfirmStep::Again(wait) => {
                assert!(!wait.is_zero(), "a busy node is not asked again at once");
                again += 1
            }
            ConfirmStep::GiveUp => break,
            ConfirmStep::Done(d) => panic!("busy is not an answer: {d:?}"),
            ConfirmStep::TakenBack => panic!("busy is not an answer: taken back"),
        }
        assert!(again < 100, "unbounded");
    }
    assert!(
        again > 3,
        "busy is asked again more than silence is: {again}"
    );
    let mut t = ConfirmTries::default();
    assert_eq!(t.next(None), ConfirmStep::Again(std::time::Duration::ZERO));
    assert_eq!(t.next(None), ConfirmStep::Again(std::time::Duration::ZERO));
    assert_eq!(t.next(None), ConfirmStep::GiveUp);
}

/// Review10 M8: a round of a confirmation left unanswered is asked again after a
/// backoff that grows from 1 s and stays bounded, however many rounds fail.
#[cfg(not(loom))]
#[test]
fn an_unanswered_confirmation_backs_off_boundedly() {
    use super::sessions::confirm_backoff;
    use std::time::Duration;
    assert_eq!(confirm_backoff(0), Duration::from_secs(1));
    assert_eq!(confirm_backoff(1), Duration::from_secs(2));
    assert_eq!(confirm_backoff(2), Duration::from_secs(4));
    for attempt in [3, 10, 40, u32::MAX] {
        assert_eq!(
            confirm_backoff(attempt),
            Duration::from_secs(5),
            "{attempt}"
        );
    }
}

/// Review10 H2: a node restarted under its name numbers its forwarded messages from 1
/// again; a peer that remembers the earlier process's (origin, id) pairs must not
/// take the new process's messages for second copies.
#[test]
fn a_restarted_node_is_a_new_origin() {
    let mut seen = headers::SeenWindow::new(1024);
    let before = headers::origin_of("n2", headers::new_incarnation());
    for id in 1..=100 {
        assert!(!seen.seen_before(&before, id));
    }
    // The second copy NATS sends for a second matching subscription is dropped.
    assert!(seen.seen_before(&before, 7));
    let after = headers::origin_of("n2", headers::new_incarnation());
    assert_ne!(before, after, "two processes of one node share an origin");
    for id in 1..=100 {
        assert!(
            !seen.seen_before(&after, id),
            "id {id} of the new process dropped"
        );
    }
    // The origin rides in a header: a node name is kept as it is.
    let meta = Meta {
        qos: QoS::AtLeastOnce,
        retain: false,
        origin: after.clone(),
        id: 1,
        properties: PublishProperties::default(),
    };
    assert_eq!(headers::decode(lookup(&headers::encode(&meta))), Ok(meta));
}

#[test]
fn the_seen_window_is_bounded() {
    let mut seen = headers::SeenWindow::new(4);
    for id in 1..=5 {
        assert!(!seen.seen_before("o", id));
    }
    // 1 left the window; 5 is still in it.
    assert!(!seen.seen_before("o", 1));
    assert!(seen.seen_before("o", 5));
}

proptest! {
    /// The length the loops bound (review10 H3) is the subject's real length.
    #[test]
    fn topic_subject_len_is_the_subject_length(t in topic()) {
        let s = topic_subject(t.as_bytes(), Q1).unwrap();
        prop_assert_eq!(super::subject::topic_subject_len(t.as_bytes()), s.len());
    }
}

/// Review10 H3: nats-server closes a connection whose control line is over 4 KiB;
/// escaping triples a byte outside `[A-Za-z0-9_-]`.
#[test]
fn subjects_are_bounded_for_nats() {
    use super::subject::{filter_fits, topic_fits, SUBJECT_MAX_BYTES};
    assert!(topic_fits(" ".repeat(1_200).as_bytes(), false));
    assert!(!topic_fits(" ".repeat(1_300).as_bytes(), false));
    assert!(!topic_fits("a".repeat(SUBJECT_MAX_BYTES).as_bytes(), false));
    // A retained topic's KV key is base64 of it under `$KV.ringmq_retained.`.
    let plain = "a".repeat(3_000);
    assert!(topic_fits(plain.as_bytes(), false));
    assert!(!topic_fits(plain.as_bytes(), true));
    assert!(topic_fits("a".repeat(2_800).as_bytes(), true));
    assert!(filter_fits(b"a/+/#", Some(b"g")));
    assert!(!filter_fits(
        format!("{}/#", " ".repeat(1_300)).as_bytes(),
        None
    ));
    // `a/#` is two subscriptions; the longer one counts.
    let edge = "a".repeat(SUBJECT_MAX_BYTES - 5);
    assert!(filter_fits(edge.as_bytes(), None));
    assert!(!filter_fits(format!("{edge}/#").as_bytes(), None));
    // The queue group is on the SUB line too.
    assert!(!filter_fits(
        b"t",
        Some("g".repeat(SUBJECT_MAX_BYTES).as_bytes())
    ));
}

/// Review10 H3: the loops' bound on what NATS counts against `max_payload` is never
/// under the real headers and payload (nor a retained entry's value).
#[test]
fn forward_bytes_bounds_the_real_message() {
    let origin = headers::origin_of("node-with-a-name", u64::MAX);
    for (properties, payload_len) in [
        (PublishProperties::default(), 0),
        (PublishProperties::default(), 100_000),
        (props(), 10),
    ] {
        let meta = Meta {
            qos: QoS::ExactlyOnce,
            retain: true,
            origin: origin.clone(),
            id: u64::MAX,
            properties: properties.clone(),
        };
        // "NATS/1.0\r\n", "Name: value\r\n" each, "\r\n".
        let headers: usize = 12
            + headers::encode(&meta)
                .iter()
                .map(|(k, v)| k.len() + 2 + v.len() + 2)
                .sum::<usize>();
        let value = headers::encode_retained(meta.qos, &properties, &vec![0; payload_len]).len();
        let bound = headers::forward_bytes(
            headers::origin_len("node-with-a-name"),
            &properties,
            payload_len,
            true,
        );
        assert_eq!(origin.len(), headers::origin_len("node-with-a-name"));
        assert!(
            bound >= headers + payload_len,
            "{bound} < {headers} + {payload_len}"
        );
        assert!(bound >= value);
    }
}

#[test]
fn publisher_header_round_trip() {
    let p = headers::Publisher {
        client_id: Bytes::from_static(b"dev ice/1"),
        packet_id: 65_535,
        dup: true,
    };
    let v = headers::encode_publisher(&p);
    assert_eq!(headers::decode_publisher(&v), Some(p));
    for bad in [
        "",
        "ZGV2 1",
        "ZGV2 1 2",
        "ZGV2 70000 0",
        "!! 1 0",
        "ZGV2 1 0 x",
    ] {
        assert_eq!(headers::decode_publisher(bad), None, "{bad:?}");
    }
}

/// Review10 H5: a QoS 2 message re-sent (DUP = 1) on another node after its
/// publisher's node died is recognised by every node that received the first copy.
#[test]
fn a_qos2_resend_is_recognised_within_the_window() {
    let mut w = headers::Qos2Window::default();
    let t0 = std::time::Instant::now();
    let first = headers::Publisher {
        client_id: Bytes::from_static(b"p"),
        packet_id: 7,
        dup: false,
    };
    let resend = headers::Publisher {
        dup: true,
        ..first.clone()
    };
    assert!(!w.resent(&first, b"t", b"m1", t0));
    assert!(w.resent(&resend, b"t", b"m1", t0 + std::time::Duration::from_secs(5)));
    // Another client's same packet id, and another message under a DUP flag, pass.
    let other = headers::Publisher {
        client_id: Bytes::from_static(b"q"),
        ..resend.clone()
    };
    assert!(!w.resent(&other, b"t", b"m1", t0));
    assert!(!w.resent(&resend, b"t", b"m2", t0));
    // The packet id reused after PUBCOMP (DUP = 0) always passes, and is then the one
    // a re-send is compared with.
    assert!(!w.resent(&first, b"t", b"m3", t0));
    assert!(w.resent(&resend, b"t", b"m3", t0));
    // Forgotten after the window.
    let later = t0 + headers::QOS2_WINDOW + std::time::Duration::from_secs(1);
    assert!(!w.resent(&resend, b"t", b"m3", later));
}

#[test]
fn the_qos2_window_is_bounded_in_count() {
    let mut w = headers::Qos2Window::default();
    let now = std::time::Instant::now();
    let p = |id: usize| headers::Publisher {
        client_id: Bytes::from(id.to_string()),
        packet_id: 1,
        dup: false,
    };
    for id in 0..=headers::QOS2_WINDOW_MAX {
        assert!(!w.resent(&p(id), b"t", b"m", now));
    }
    let again = |id: usize| headers::Publisher { dup: true, ..p(id) };
    // One more than the bound: the oldest went at the next record.
    assert!(!w.resent(&again(0), b"t", b"m", now));
    assert!(w.resent(&again(headers::QOS2_WINDOW_MAX), b"t", b"m", now));
}

/// Review10 M1: a loop whose ring to the cluster thread is full keeps every part of
/// its turn but the plain publishes for the next turn, the fence's wills and the
/// reasserted hand-overs included (a lost fenced will is never settled; a lost
/// reassert strands the session), and the ids it served without the cluster.
#[cfg(not(loom))]
#[test]
fn a_full_ring_to_the_cluster_keeps_fenced_wills_and_reasserts() {
    use super::bridge::{ClusterStatus, Doorbell, LoopLink};
    use crate::shard::ClusterOut;
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, OnceLock};
    let (out, mut from_loop) = crate::ring::channel::<ClusterOut>(1);
    let (_to_loop, rx) = crate::ring::channel(1);
    let status = Arc::new(ClusterStatus::default());
    let mut link = LoopLink {
        out,
        rx,
        bell: Arc::new(Doorbell::default()),
        wake: Arc::new(OnceLock::new()),
        status: status.clone(),
        pending: ClusterOut::default(),
    };
    // The ring's one slot is taken: the cluster thread is behind.
    let mut first = ClusterOut::default();
    first.reasserts.push((Bytes::from_static(b"first"), 1));
    link.send(first);
    assert!(!link.backed_up());
    let turn = |n: u8| {
        let mut out = ClusterOut::default();
        out.fenced
            .push((Bytes::from(vec![b'f', n]), Bytes::from_static(b"will")));
        out.reasserts
            .push((Bytes::from(vec![b'r', n]), u64::from(n)));
        out.local.push(Bytes::from(vec![b'l', n]));
        out
    };
    link.send(turn(1));
    assert!(
        link.backed_up(),
        "a fenced will or a reassert waits for room"
    );
    link.send(turn(2));
    assert_eq!(status.dropped_out.load(Ordering::Relaxed), 0);
    // The cluster thread catches up: the first turn, then both held turns, in order.
    let first = from_loop.pop().expect("first turn");
    assert_eq!(first.reasserts.len(), 1);
    link.send(ClusterOut::default());
    let held = from_loop.pop().expect("the held turns");
    let ids = |v: &[(Bytes, Bytes)]| v.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&held.fenced), [&b"f\x01"[..], &b"f\x02"[..]]);
    assert_eq!(
        held.reasserts,
        [
            (Bytes::from_static(b"r\x01"), 1),
            (Bytes::from_static(b"r\x02"), 2)
        ]
    );
    assert_eq!(held.local, [&b"l\x01"[..], &b"l\x02"[..]]);
    assert!(!link.backed_up());
}

/// A saved session's state as an entry holds it: `client`'s `SessionPut` record
/// behind its 4-byte length (what `shard::handover_records` reads back).
#[cfg(not(loom))]
fn saved_state(client: &'static [u8], expiry_s: u32) -> Vec<u8> {
    let mut rec = Vec::new();
    crate::store::record::Record::SessionPut {
        client: Bytes::from_static(client),
        expiry_s,
        will: None,
    }
    .encode(&mut rec);
    let mut b = (rec.len() as u32).to_le_bytes().to_vec();
    b.extend_from_slice(&rec);
    b
}

/// A saved session whose owner died is resumed only while it has not expired
/// (review10 M4): its expiry counts from when its client went, or, for a client
/// that was connected when its node died, from that node's last heartbeat.
#[cfg(not(loom))]
#[test]
fn a_saved_session_is_resumed_only_before_it_expires() {
    use super::sessions::saved_session_live;
    let state = |expiry_s: u32| saved_state(b"dev", expiry_s);
    let hour = state(3600);
    let gone_ms = 1_000_000_000;
    let now = |after_s: u64| gone_ms + after_s * 1000;
    assert!(saved_session_live(&hour, gone_ms, None, now(3599)));
    assert!(saved_session_live(&hour, gone_ms, None, now(3600)));
    assert!(!saved_session_live(&hour, gone_ms, None, now(3601)));
    assert!(
        !saved_session_live(&hour, gone_ms, Some(now(10_000)), now(3601)),
        "the offline time wins over the heartbeat"
    );
    // Connected when last saved: its node's last heartbeat bounds when it went.
    assert!(saved_session_live(&hour, 0, Some(gone_ms), now(60)));
    assert!(!saved_session_live(&hour, 0, Some(gone_ms), now(86_400)));
    assert!(
        saved_session_live(&hour, 0, None, now(86_400)),
        "with neither time known it is resumed, as before"
    );
    assert!(saved_session_live(
        &state(u32::MAX),
        gone_ms,
        None,
        u64::MAX
    ));
    assert!(!saved_session_live(b"", 0, None, now(0)), "nothing saved");
    assert!(
        !saved_session_live(b"\x09\x00", 0, None, now(0)),
        "unreadable"
    );
}

/// A session save the bucket did not take goes back to the queue, and a later
/// change of the same id queued meanwhile is not overwritten by it (review10 M4).
#[cfg(not(loom))]
#[test]
fn an_unwritten_session_save_is_kept_unless_a_later_one_came() {
    use super::wills::WillQueue;
    let mut q = WillQueue::default();
    q.put(Bytes::from_static(b"a"), Some(Bytes::from_static(b"a1")));
    q.put(Bytes::from_static(b"b"), Some(Bytes::from_static(b"b1")));
    let (id, v) = q.pop().expect("a");
    q.put_back(id, v);
    assert_eq!(
        q.pop(),
        Some((Bytes::from_static(b"b"), Some(Bytes::from_static(b"b1"))))
    );
    let (id, v) = q.pop().expect("a again");
    assert_eq!(v, Some(Bytes::from_static(b"a1")));
    q.put(Bytes::from_static(b"a"), None);
    q.put_back(id, v);
    assert_eq!(
        q.pop(),
        Some((Bytes::from_static(b"a"), None)),
        "the later change wins"
    );
    assert_eq!(q.pop(), None);
}

/// A save's feed value carries when the client went, and an ended session blanks
/// the entry.
#[cfg(not(loom))]
#[test]
fn a_session_save_is_stamped_with_the_time_its_client_went() {
    use super::sessions::stamp_save;
    use crate::shard::SessionSave;
    let s = Bytes::from_static(b"subs");
    let on = stamp_save(SessionSave::Online(s.clone()), 77).expect("saved");
    assert_eq!(&on[..8], &0u64.to_le_bytes());
    assert_eq!(&on[8..], b"subs");
    let off = stamp_save(SessionSave::Offline(s), 77).expect("saved");
    assert_eq!(&off[..8], &77u64.to_le_bytes());
    assert_eq!(stamp_save(SessionSave::Ended, 77), None);
}

/// A will entry carries the epoch its CONNECT claimed, and a delayed will is
/// dropped when a later CONNECT claimed its client id (review10 M9: the session was
/// resumed within the delay, so MQTT 5 forbids sending it).
#[cfg(not(loom))]
#[test]
fn a_delayed_will_is_dropped_when_its_session_was_resumed() {
    use super::sessions::Owner;
    use super::wills::{decode_will_entry, resumed_since, will_delay_s, will_entry};
    let w = crate::session::Will {
        topic: Bytes::from_static(b"dev/state"),
        payload: Bytes::from_static(b"offline"),
        qos: crate::protocol::QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        delay_s: 30,
        at: None,
    };
    let record = crate::shard::will_record(b"dev", &w);
    assert_eq!(will_delay_s(&record), 30);
    assert_eq!(will_delay_s(b"not a record"), 0);
    let entry = will_entry(&record, 7);
    assert_eq!(decode_will_entry(&entry), Some((record.clone(), 7)));
    assert_eq!(
        decode_will_entry(&record),
        None,
        "a bare record is not an entry"
    );
    assert_eq!(
        decode_will_entry(&Bytes::from_static(b"\xff\xff\xff\xff")),
        None
    );
    let owner = |epoch| Owner {
        node: "b".into(),
        epoch,
        connect_ms: 0,
        offline_ms: 0,
        state: Bytes::new(),
    };
    assert!(resumed_since(Some(&owner(8)), 7), "claimed again since");
    assert!(!resumed_since(Some(&owner(7)), 7), "the will's own claim");
    assert!(!resumed_since(None, 7));
    assert!(
        !resumed_since(Some(&owner(9)), 0),
        "an unknown epoch shows nothing"
    );
}

/// A dead node's will with a Will Delay waits that delay past the node's death
/// before a survivor takes it (review10 M9); one without a delay goes at once.
#[cfg(not(loom))]
#[test]
fn a_dead_nodes_delayed_will_waits_its_delay() {
    use super::wills::orphan_due;
    let s = 1_000_000_000i128;
    let beats: std::collections::HashMap<String, (String, i128)> =
        [("bm9kZQ".to_string(), ("01".to_string(), 100 * s))].into();
    let dead_after = 5 * s;
    let owner = "bm9kZQ.01";
    assert!(orphan_due(&beats, 105 * s, owner, 90 * s, dead_after, 0));
    assert!(!orphan_due(&beats, 105 * s, owner, 90 * s, dead_after, 30));
    assert!(!orphan_due(&beats, 134 * s, owner, 90 * s, dead_after, 30));
    assert!(orphan_due(&beats, 135 * s, owner, 90 * s, dead_after, 30));
}

/// Review10 M2: a message from NATS for a loop whose ring is full. QoS 0 is
/// dropped (counted by the caller); a QoS 1/2 message (PUBACKed on its node) or a
/// retained entry waits, in order behind the others waiting, and reaches the ring
/// when the loop has drained it; past `HELD_MAX` it is dropped too.
#[cfg(not(loom))]
#[test]
fn a_full_loop_ring_holds_qos1_messages_and_drops_only_qos0() {
    use super::link::{Delivered, PendingIn};
    use crate::session::{Message, NONE};
    use crate::shard::{ClusterIn, ShardMsg};
    use std::sync::Arc;
    use std::time::Instant;
    let publish = |topic: &'static str| ShardMsg::Publish {
        msg: Arc::new(Message {
            topic: Bytes::from_static(topic.as_bytes()),
            payload: Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            arrived_at: Instant::now(),
            origin_shard: usize::MAX,
            origin_session: NONE,
            owned: true,
            cluster_key: 0,
        }),
        plain: true,
        shared: Vec::new(),
        hold: 0,
    };
    let topic = |m: Option<ClusterIn>| match m {
        Some(ClusterIn::Msg(ShardMsg::Publish { msg, .. })) => msg.topic.clone(),
        other => panic!("not a publish: {other:?}"),
    };
    let (mut p, mut c) = crate::ring::channel::<ClusterIn>(1);
    let mut q = PendingIn::new(1);
    assert_eq!(q.deliver(0, &mut p, publish("a"), true), Delivered::Now);
    // Ring full.
    assert_eq!(
        q.deliver(0, &mut p, publish("q0"), false),
        Delivered::Dropped
    );
    assert_eq!(q.deliver(0, &mut p, publish("b"), true), Delivered::Held);
    assert_eq!(q.deliver(0, &mut p, publish("c"), true), Delivered::Held);
    assert!(q.has_room());
    assert_eq!(topic(c.pop()), "a");
    // Room again, but "b" and "c" wait: "d" must not overtake them.
    assert_eq!(q.deliver(0, &mut p, publish("d"), true), Delivered::Held);
    let mut to_wake = vec![false];
    let mut producers = vec![p];
    let mut got = Vec::new();
    while !q.is_empty() {
        q.flush(&mut producers, &mut to_wake);
        while let Some(m) = c.pop() {
            got.push(topic(Some(m)));
        }
    }
    assert_eq!(got, ["b", "c", "d"], "every QoS 1 message, in order");
    // Bounded: a loop that never drains gets its queue capped, the rest counted.
    let mut held = 0;
    let mut dropped = 0;
    for _ in 0..3 * super::link::PENDING_IN_MAX {
        match q.deliver(0, &mut producers[0], publish("x"), true) {
            Delivered::Held => held += 1,
            Delivered::Dropped => dropped += 1,
            Delivered::Now => {}
        }
    }
    assert!(!q.has_room(), "the main task stops reading NATS");
    assert_eq!(q.len(0), held);
    assert!(dropped > 0 && q.len(0) <= 2 * super::link::PENDING_IN_MAX);
}

/// The writer task's backlog (review10 H1 without the QoS 0 regression of clwrite10):
/// the main task never waits for the writer, so what bounds the publishes it gathers
/// is this. A QoS 0 copy past `FORWARD_BACKLOG_MAX` is dropped before it is made; a
/// QoS 1/2 publish is always queued while NATS is there (its PUBACK waits for it) and
/// refused at once while NATS is away; what the writer counts down as written makes
/// room again.
#[cfg(not(loom))]
#[test]
fn the_writers_backlog_bounds_qos0_and_never_drops_a_held_publish() {
    use super::link::{Admit, Outgoing, Publish, FORWARD_BACKLOG_MAX};
    use crate::session::{Message, NONE};
    let msg = std::sync::Arc::new(Message {
        topic: Bytes::from_static(b"t"),
        payload: Bytes::from_static(b"m"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
        arrived_at: std::time::Instant::now(),
        origin_shard: 0,
        origin_session: NONE,
        owned: true,
        cluster_key: 0,
    });
    let publish = || Publish {
        msg: msg.clone(),
        id: 1,
        publisher: None,
        ack: None,
    };
    let mut out = Outgoing::default();
    assert_eq!(out.admit(false, false), Admit::Drop);
    assert_eq!(out.admit(false, true), Admit::Refuse);
    for _ in 0..FORWARD_BACKLOG_MAX - 1 {
        assert_eq!(out.admit(true, false), Admit::Queue);
        out.push(publish());
    }
    // Half handed to the writer: still the backlog until written.
    let batch = out.take();
    assert_eq!(batch.len(), FORWARD_BACKLOG_MAX - 1);
    assert!(out.is_empty());
    assert_eq!(out.admit(true, false), Admit::Queue);
    out.push(publish());
    assert_eq!(out.backlog(), FORWARD_BACKLOG_MAX);
    assert_eq!(out.admit(true, false), Admit::Drop, "QoS 0 past the bound");
    assert_eq!(
        out.admit(true, true),
        Admit::Queue,
        "a held publish is never dropped"
    );
    // The writer wrote its batch: room again.
    out.written_for_test(batch.len());
    assert_eq!(out.backlog(), 1);
    assert_eq!(out.admit(true, false), Admit::Queue);
}

/// `/healthz`'s cluster reasons (review10 M6, M5): 200 only when connected, alone
/// under its name, with every JetStream part made and the retained bucket read;
/// otherwise the first cause, naming the setting.
#[test]
fn healthz_names_why_a_connected_node_is_not_a_sound_member() {
    use super::health::JsPart;
    use std::sync::atomic::Ordering;
    let s = super::ClusterStatus {
        node: "n1".into(),
        kv_replicas: 5,
        ..Default::default()
    };
    assert_eq!(s.unhealthy().as_deref(), Some("cluster: NATS disconnected"));
    s.connected.store(true, Ordering::Relaxed);
    let _ = s
        .jetstream
        .lock()
        .unwrap()
        .failed(JsPart::Retained, "insufficient resources".into());
    let why = s.unhealthy().expect("JetStream parts missing");
    assert!(
        why.starts_with("cluster: JetStream not ready (cluster_kv_replicas = 5): missing "),
        "{why}"
    );
    assert!(
        why.ends_with("KV_ringmq_retained: insufficient resources"),
        "{why}"
    );
    *s.name_conflict.lock().unwrap() = Some("00000000000000aa".into());
    let why = s.unhealthy().expect("a twin");
    assert!(
        why.contains("cluster_node_name \"n1\" is also used by another running process"),
        "{why}"
    );
    *s.name_conflict.lock().unwrap() = None;
    for p in [
        JsPart::QosStream,
        JsPart::Retained,
        JsPart::Sessions,
        JsPart::Nodes,
        JsPart::Wills,
    ] {
        s.jetstream.lock().unwrap().made(p);
    }
    assert_eq!(
        s.unhealthy().as_deref(),
        Some("cluster: retained not loaded (the bucket's first read is not done)")
    );
    s.retained_loaded.store(true, Ordering::Relaxed);
    assert_eq!(s.unhealthy(), None);
    let text = s.prometheus_text();
    for line in [
        "ringmq_cluster_jetstream_ready 1",
        "ringmq_cluster_name_conflict 0",
        "ringmq_cluster_retained_loaded 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}");
    }
}

/// A live peer whose liveness timings differ (review10 L2, M6) makes `/healthz` 503
/// naming the key and both values, after a twin name (the more basic cause) and
/// before JetStream; the gauge follows it.
#[test]
fn healthz_names_a_peer_whose_liveness_timings_differ() {
    use super::health::{LivenessTimings, TimingsGuard, TimingsNews};
    use std::sync::atomic::Ordering;
    let s = super::ClusterStatus {
        node: "n1".into(),
        ..Default::default()
    };
    s.connected.store(true, Ordering::Relaxed);
    let mine = LivenessTimings {
        beat_ms: 1000,
        fence_after_ms: 3000,
        dead_after_ms: 5000,
    };
    let mut g = TimingsGuard::new(mine);
    let theirs = LivenessTimings {
        fence_after_ms: 2000,
        ..mine
    };
    // "bjI": n2's heartbeat key (base64url of the name).
    g.on_announcement("bjI", Some(theirs.encode().as_bytes()));
    let TimingsNews::Found(m) = g.check(|_| true) else {
        panic!("no mismatch found")
    };
    *s.timings_mismatch.lock().unwrap() = Some(m.to_string());
    assert_eq!(
        s.unhealthy().as_deref(),
        Some(
            "cluster: cluster_fence_after_ms differs: this node 3000, node \"n2\" 2000 \
             (the liveness timings must be the same on every node)"
        )
    );
    *s.name_conflict.lock().unwrap() = Some("00000000000000aa".into());
    assert!(s.unhealthy().unwrap().contains("cluster_node_name \"n1\""));
    *s.name_conflict.lock().unwrap() = None;
    let text = s.prometheus_text();
    assert!(text
        .lines()
        .any(|l| l == "ringmq_cluster_timings_mismatch 1"));
    assert_eq!(g.check(|_| false), TimingsNews::Cleared);
    *s.timings_mismatch.lock().unwrap() = None;
    assert!(s
        .unhealthy()
        .unwrap()
        .starts_with("cluster: JetStream not ready"));
}

/// The longest client id the config allows with a cluster (review10 L2) keeps its
/// longest KV key (its wills entry, under the longest node name) within the subject
/// bound; one byte more would not.
#[cfg(not(loom))]
#[test]
fn the_longest_client_id_fits_every_kv_key() {
    use super::subject::{CLIENT_ID_MAX_BYTES, SUBJECT_MAX_BYTES};
    let node = "n".repeat(64);
    let owner = super::wills::incarnation_of(&node, u64::MAX);
    let subject_len = |id_len: usize| {
        format!(
            "$KV.{}.{}",
            super::wills::WILLS_BUCKET,
            super::wills::will_key(&vec![b'c'; id_len], &owner)
        )
        .len()
    };
    assert!(subject_len(CLIENT_ID_MAX_BYTES) <= SUBJECT_MAX_BYTES);
    assert!(subject_len(CLIENT_ID_MAX_BYTES + 1) > SUBJECT_MAX_BYTES);
    assert_eq!(
        super::sessions::CLAIM_TIMEOUT.as_millis(),
        u128::from(super::CLAIM_TIMEOUT_MS)
    );
}

/// Review10 L1: a claim that finds this node's own name in the entry recovers the
/// saved state when its loop holds no session (a restart without a data directory),
/// unless clean start; what it writes keeps the saved state (and when its client
/// went), so neither a crash before the first save nor the claim itself blanks it.
#[cfg(not(loom))]
#[test]
fn a_claim_of_an_entry_naming_this_node_recovers_the_saved_state() {
    use super::sessions::*;
    let saved = |expiry_s: u32| saved_state(b"c", expiry_s);
    let s = saved(60);
    assert_eq!(
        claim_next(Some("n1"), "n1", false, &s),
        ClaimNext::OwnOrSaved
    );
    assert_eq!(claim_next(Some("n1"), "n1", true, &s), ClaimNext::Fresh);
    assert_eq!(claim_next(Some("n1"), "n1", false, &[]), ClaimNext::Fresh);
    assert_eq!(claim_next(None, "n1", false, &s), ClaimNext::Fresh);
    assert_eq!(
        claim_next(Some("n2"), "n1", false, &s),
        ClaimNext::Fetch("n2".into())
    );
    assert_eq!(claim_next(Some("n2"), "n1", true, &s), ClaimNext::Fresh);

    assert_eq!(claimed_state(false, 5, &s), (5, &s[..]));
    assert_eq!(claimed_state(true, 5, &s), (0, &[][..]));

    let now = 1_000_000;
    assert!(own_saved_live(&s, 0, now), "connected when the node went");
    assert!(
        own_saved_live(&s, now - 30_000, now),
        "offline for 30 of 60 s"
    );
    assert!(!own_saved_live(&s, now - 61_000, now), "expired");
    assert!(
        !own_saved_live(&saved(0), 0, now),
        "no expiry of its own: it ended with its connection"
    );
    assert!(own_saved_live(&saved(u32::MAX), now - 1, now));
    assert!(!own_saved_live(b"junk", 0, now));
}

/// Review10 L6: the return-time wills check and `settle` read the stream leader's
/// answer: a put is held (at its revision), a delete or purge marker, a survivor's
/// mark or no message is gone, and a failed read says nothing.
#[cfg(not(loom))]
#[test]
fn the_leader_read_of_a_will_entry_tells_held_gone_and_unknown_apart() {
    use super::wills::*;
    use async_nats::jetstream::stream::{LastRawMessageError, LastRawMessageErrorKind};
    assert_eq!(leader_read(Ok((42, None, false))), LeaderRead::Held(42));
    assert_eq!(
        leader_read(Ok((42, Some("PUT"), false))),
        LeaderRead::Held(42)
    );
    assert_eq!(leader_read(Ok((42, Some("DEL"), false))), LeaderRead::Gone);
    assert_eq!(
        leader_read(Ok((42, Some("PURGE"), false))),
        LeaderRead::Gone
    );
    // A survivor's mark keeps the entry but the will is no longer this node's.
    assert_eq!(leader_read(Ok((42, Some("PUT"), true))), LeaderRead::Gone);
    assert_eq!(leader_read(Ok((42, None, true))), LeaderRead::Gone);
    let gone = LastRawMessageError::new(LastRawMessageErrorKind::NoMessageFound);
    assert_eq!(leader_read(Err(&gone)), LeaderRead::Gone);
    let failed = LastRawMessageError::new(LastRawMessageErrorKind::Other);
    assert!(matches!(leader_read(Err(&failed)), LeaderRead::Unknown(_)));
}

/// Review of session 12: a session change of an id this node served on its own (its
/// claim unanswered, e.g. a bucket electing its leader) found no entry naming this
/// node, was dropped after 1 s, and the reconcile then wrote the state it found
/// (none): the session's subscriptions reached the bucket only at its next change,
/// and a node death before that lost them. Now the latest change per id is kept
/// until the reconcile, which writes it into the entry it wins; a later CONNECT on
/// another node still wins the id, and nothing is written then.
#[cfg(not(loom))]
#[test]
fn a_save_of_an_id_served_locally_lands_with_its_reconcile() {
    use super::sessions::{
        decode_owner, reconcile_step, stamp_save, LocalIds, Owner, ReconcileStep,
    };
    use crate::shard::SessionSave;
    let id = Bytes::from_static(b"dev");
    let online = |s: &'static [u8]| stamp_save(SessionSave::Online(Bytes::from_static(s)), 0);
    let first = online(b"subs-1");
    let latest = online(b"subs-2");
    let mut local = LocalIds::default();
    assert!(
        !local.keep(&id, latest.as_ref()),
        "an id not served here is the state writer's alone"
    );
    assert!(local.served(&id, 1_000));
    assert!(local.keep(&id, first.as_ref()));
    assert!(local.keep(&id, latest.as_ref()));
    let pending = local.pending();
    assert_eq!(pending.len(), 1, "one kept change per id");
    let kept = pending[0].kept.as_ref();
    let state_of = |step: ReconcileStep| match step {
        ReconcileStep::Write {
            value,
            epoch,
            other,
        } => {
            let o = decode_owner(&value).expect("an ownership entry");
            assert_eq!((o.node.as_str(), o.epoch), ("n2", epoch));
            assert_eq!(o.connect_ms, 1_000);
            (o.state, o.offline_ms, epoch, other)
        }
        ReconcileStep::Lost(n) => panic!("lost to {n}"),
    };

    // No entry (the claim never landed): this node's, with the latest change.
    let (state, offline, epoch, other) = state_of(reconcile_step("n2", None, 1_000, kept, None));
    assert_eq!(&state[..], b"subs-2", "the kept change is written");
    assert_eq!((offline, epoch, other), (0, 1, None));

    // Another node's entry from an earlier CONNECT: this node wins the id, and the
    // entry holds this node's session, not the state the other one saved.
    let theirs = Owner {
        node: "n1".into(),
        epoch: 4,
        connect_ms: 900,
        offline_ms: 0,
        state: Bytes::from_static(b"theirs"),
    };
    let (state, _, epoch, other) = state_of(reconcile_step(
        "n2",
        Some(theirs.clone()),
        1_000,
        kept,
        None,
    ));
    assert_eq!(&state[..], b"subs-2");
    assert_eq!((epoch, other.as_deref()), (5, Some("n1")));
    // Nothing kept (no change came): the found state stays, as before.
    let (state, _, _, _) = state_of(reconcile_step(
        "n2",
        Some(theirs.clone()),
        1_000,
        None,
        None,
    ));
    assert_eq!(&state[..], b"theirs");
    // A later CONNECT there: it keeps the id and its entry.
    let later = Owner {
        connect_ms: 1_100,
        ..theirs
    };
    assert_eq!(
        reconcile_step("n2", Some(later), 1_000, kept, None),
        ReconcileStep::Lost("n1".into())
    );
    // The client went (offline, with its time) or the session ended (blanked).
    let off = stamp_save(SessionSave::Offline(Bytes::from_static(b"subs-3")), 7_000);
    let (state, offline, _, _) = state_of(reconcile_step("n2", None, 1_000, Some(&off), None));
    assert_eq!((&state[..], offline), (&b"subs-3"[..], 7_000));
    let (state, offline, _, _) = state_of(reconcile_step("n2", None, 1_000, Some(&None), None));
    assert_eq!((state.len(), offline), (0, 0));

    // Settled with what it wrote: forgotten, nothing to save again.
    assert!(!local.settled(&pending[0]));
    assert!(local.is_empty());
    // A change that came while the reconcile wrote: saved again afterwards.
    assert!(local.served(&id, 2_000));
    local.keep(&id, first.as_ref());
    let p = local.pending().remove(0);
    local.keep(&id, latest.as_ref());
    assert!(local.settled(&p), "the newer change is saved again");
    assert!(local.is_empty());
    // A CONNECT served here again meanwhile: left, with its change, for the next run.
    assert!(local.served(&id, 3_000));
    local.keep(&id, first.as_ref());
    let p = local.pending().remove(0);
    assert!(local.served(&id, 3_500));
    assert!(!local.settled(&p));
    let again = local.pending();
    assert_eq!(
        (again[0].connect_ms, &again[0].kept),
        (3_500, &Some(first.clone()))
    );
    // Written after all into an entry naming this node (a claim that timed out here
    // landed): the reconcile writes that one, not the older kept change.
    local.written(&id, latest.as_ref());
    assert_eq!(local.pending()[0].kept, Some(latest.clone()));
    // Claimed through the cluster: nothing left to reconcile.
    local.claimed(&id);
    assert!(local.is_empty());

    // Bounded: past `LOCAL_MAX` ids a new one is not taken (nor its changes).
    let mut full = LocalIds::default();
    let mut n = 0u32;
    while full.served(&Bytes::from(n.to_le_bytes().to_vec()), 1) {
        n += 1;
    }
    assert_eq!(full.len(), n as usize);
    assert!(n >= 1_024, "{n}");
    assert!(!full.keep(b"not-taken", latest.as_ref()));
    assert!(
        full.served(&Bytes::from(0u32.to_le_bytes().to_vec()), 2),
        "a known id still is"
    );
}

/// Review10 M3, the late compare-and-set: a claim that timed out while JetStream had
/// no quorum may still land once it has one. The entry then names this node at the
/// claim's epoch, and the reconcile must ask the owner that claim read (which was
/// never asked and still serves the client) instead of taking the entry for a claim
/// of its own that finished (two owners, both connections open).
#[cfg(not(loom))]
#[test]
fn a_claim_that_landed_after_it_was_given_up_asks_the_owner_it_read() {
    use super::sessions::*;
    let owner = |node: &str, epoch: u64, connect_ms: u64| Owner {
        node: node.into(),
        epoch,
        connect_ms,
        offline_ms: 0,
        state: Bytes::new(),
    };
    let given_up = Attempt {
        prev: "b".into(),
        epoch: 2,
    };
    // `Ok(node to ask)` for a win, `Err(node)` when the other CONNECT is later.
    let next = |found: Option<Owner>, attempt: Option<&Attempt>| match reconcile_step(
        "a", found, 1_000, None, attempt,
    ) {
        ReconcileStep::Write { other, .. } => Ok(other),
        ReconcileStep::Lost(node) => Err(node),
    };
    // Landed late: the entry is this node's at the given-up claim's epoch.
    assert_eq!(
        next(Some(owner("a", 2, 900)), Some(&given_up)),
        Ok(Some("b".into()))
    );
    // A claim of this node's own that finished (another epoch): nobody to ask.
    assert_eq!(next(Some(owner("a", 3, 900)), Some(&given_up)), Ok(None));
    assert_eq!(next(Some(owner("a", 2, 900)), None), Ok(None));
    // Not landed: the entry still names b, whose CONNECT was earlier.
    assert_eq!(
        next(Some(owner("b", 1, 900)), Some(&given_up)),
        Ok(Some("b".into()))
    );
    // A later CONNECT elsewhere keeps the id, whatever this node attempted.
    assert_eq!(
        next(Some(owner("c", 3, 1_100)), Some(&given_up)),
        Err("c".into())
    );
    assert_eq!(next(None, Some(&given_up)), Ok(None));
    // A CONNECT on this node before the reconcile asks that owner too.
    assert_eq!(
        owner_to_ask(Some("a"), 2, "a", Some(&given_up)),
        Some("b".into())
    );
    assert_eq!(owner_to_ask(Some("a"), 3, "a", Some(&given_up)), None);
    assert_eq!(
        owner_to_ask(Some("c"), 3, "a", Some(&given_up)),
        Some("c".into())
    );
    assert_eq!(owner_to_ask(None, 0, "a", Some(&given_up)), None);
}

/// The heartbeat watch used to be made inline in the beat loop with no bound: a
/// request JetStream left unanswered held the beats (the node then fenced itself and
/// looked dead). `keep_watching` bounds each attempt (`AttemptWait`), asks again after
/// a refusal, makes the watch again when it ends, and feeds every entry in order.
#[cfg(not(loom))]
#[test]
fn a_watch_that_goes_unanswered_is_asked_for_again_and_its_entries_arrive() {
    use futures_util::stream::{self, StreamExt};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    type Watch = stream::BoxStream<'static, Result<u32, String>>;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let made = calls.clone();
    let make = move || {
        let n = made.fetch_add(1, Ordering::Relaxed);
        async move {
            match n {
                // Never answered (a forming cluster drops the request).
                0 => std::future::pending::<Result<Watch, String>>().await,
                1 => Err("no responders".to_string()),
                // A watch that ends after two entries (NATS lost).
                2 => Ok(stream::iter([Ok(1), Ok(2)]).boxed()),
                _ => Ok(stream::iter([Ok(3)]).chain(stream::pending()).boxed()),
            }
        }
    };
    let got = rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(super::wills::keep_watching(make, tx, "a test watch"));
        let mut got = Vec::new();
        // A guard against a hang (the unbounded wait never returns), not a timing.
        let all = tokio::time::timeout(Duration::from_secs(60), async {
            while got.len() < 3 {
                match rx.recv().await {
                    Some(v) => got.push(v),
                    None => break,
                }
            }
        })
        .await;
        drop(rx);
        task.abort();
        assert!(all.is_ok(), "the entries never came: {got:?}");
        got
    });
    assert_eq!(got, [1, 2, 3]);
    assert_eq!(calls.load(Ordering::Relaxed), 4);
}

/// Review10 L5: a survivor deleted a dead node's will entry and then handed the will
/// on; if it died in between, the will never fired. Now it marks the entry taken
/// (keeping the will), publishes, and only then deletes: a mark whose taker died is
/// another survivor's to finish, under the same identity (origin from the key, id
/// the will's own revision), which the nodes that got the first copy drop.
#[cfg(not(loom))]
#[test]
fn a_will_marked_by_a_taker_that_died_is_finished_by_another_survivor() {
    use super::wills::*;
    let s = 1_000_000_000i128;
    let dead_after = 5 * s;
    let w = crate::session::Will {
        topic: Bytes::from_static(b"dev/state"),
        payload: Bytes::from_static(b"offline"),
        qos: crate::protocol::QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
        delay_s: 0,
        at: None,
    };
    let record = crate::shard::will_record(b"dev", &w);
    let entry = will_entry(&record, 7);
    let (owner, taker, me) = (
        incarnation_of("n1", 1),
        incarnation_of("n2", 2),
        incarnation_of("n3", 3),
    );
    let beat = |node: &str, inc: u64, at: i128| (node_key(node), (format!("{inc:016x}"), at));
    // n1 (the will's owner) last beat at 90 s; n2 and n3 at 100 s; now is 100 s.
    let mut beats: std::collections::HashMap<_, _> = [
        beat("n1", 1, 90 * s),
        beat("n2", 2, 100 * s),
        beat("n3", 3, 100 * s),
    ]
    .into();
    let step = |value: &Bytes, at: i128, beats: &std::collections::HashMap<_, _>, now: i128| {
        orphan_step(value, at, &owner, &me, beats, now, dead_after)
    };
    assert_eq!(
        step(&entry, 80 * s, &beats, 100 * s),
        Some(OrphanStep::Take { record, epoch: 7 })
    );
    assert_eq!(
        step(&entry, 80 * s, &beats, 94 * s),
        Some(OrphanStep::Wait),
        "n1 not dead yet"
    );

    // n2 took it (the will's put was revision 41) at 99 s.
    let mark = taken_entry(&taker, 41, &entry);
    let taken = Taken {
        taker: taker.clone(),
        will_revision: 41,
        entry: entry.clone(),
    };
    assert_eq!(decode_taken(&mark), Some(taken.clone()));
    assert_eq!(decode_taken(&entry), None, "a will entry is not a mark");
    assert_eq!(decode_will_entry(&mark), None, "an older node skips a mark");
    // Its taker is alive: it is on it.
    assert_eq!(step(&mark, 99 * s, &beats, 100 * s), Some(OrphanStep::Wait));
    // Its taker died (no beat for `dead_after`): another survivor finishes it, with
    // the will and the revision the taker published it under.
    assert_eq!(
        step(&mark, 99 * s, &beats, 105 * s),
        Some(OrphanStep::Finish(taken.clone()))
    );
    // Its taker's node restarted (a newer incarnation beat after the mark): the
    // process that marked it is gone.
    beats.insert(node_key("n2"), (format!("{:016x}", 22u64), 101 * s));
    assert_eq!(
        step(&mark, 99 * s, &beats, 102 * s),
        Some(OrphanStep::Finish(taken.clone()))
    );
    // A taker whose node's heartbeat is not known here yet is not taken for dead.
    beats.remove(&node_key("n2"));
    assert_eq!(step(&mark, 99 * s, &beats, 200 * s), Some(OrphanStep::Wait));
    // This node's own mark (its publish or delete failed): finished at its next sweep.
    let mine = taken_entry(&me, 41, &entry);
    assert!(matches!(
        step(&mine, 99 * s, &beats, 100 * s),
        Some(OrphanStep::Finish(t)) if t.taker == me && t.will_revision == 41
    ));
    assert_eq!(step(&Bytes::from_static(b"junk"), 0, &beats, 100 * s), None);
    // One identity whoever publishes it.
    let key = will_key(b"dev", &owner);
    assert_eq!(will_origin(&key), will_origin(&key));
    assert!(will_origin(&key).starts_with(WILL_ORIGIN_PREFIX));
}
