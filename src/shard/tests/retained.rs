//! Shard tests of retained messages: store, replace and delete across shards, retain
//! handling and retain-as-published, expiry, bounds and the over-memory mark, and the
//! replicas' convergence (last writer wins, tombstones and their TTL).

use std::time::Duration;

use super::cfg;
use crate::config::Config;
use crate::protocol::{
    Packet, Properties, PublishProperties, QoS, ReasonCode, SubscriptionOptions,
};
use crate::shard::harness::*;

const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;

#[test]
fn retained_store_replace_delete_across_shards() {
    let mut cl = Cluster::new(3, cfg());
    let p = cl.connect_ok(V311, &id_on(0, 3, "p"), ConnectOpts::default(), false);
    cl.publish(p, "r/1", "first", Q0, true, 0);
    cl.publish(p, "r/1", "second", Q0, true, 0);
    cl.publish(p, "r/2", "other", Q1, true, 1);
    cl.expect(p, puback(1));
    for s in 0..3 {
        assert_eq!(cl.shards[s].stats().retained, 2, "replica on shard {s}");
    }
    let s = cl.connect_ok(V311, &id_on(2, 3, "s"), ConnectOpts::default(), false);
    cl.subscribe(s, "r/+", Q1);
    let mut got = vec![cl.next(s), cl.next(s)];
    got.sort_by_key(|p| format!("{p:?}"));
    let mut want = vec![
        Some(pubp("r/1", "second", Q0, true, 0)),
        Some(pubp("r/2", "other", Q1, true, 1)),
    ];
    want.sort_by_key(|p| format!("{p:?}"));
    assert_eq!(got, want);
    cl.send(s, puback(1));
    // Live forwarding clears the retain flag (3.1.1).
    cl.publish(p, "r/1", "third", Q0, true, 0);
    cl.expect(s, pubp("r/1", "third", Q0, false, 0));
    // Empty payload deletes (and is forwarded as a normal message).
    cl.publish(p, "r/1", "", Q0, true, 0);
    cl.expect(s, pubp("r/1", "", Q0, false, 0));
    for sh in 0..3 {
        assert_eq!(cl.shards[sh].stats().retained, 1);
    }
    let t = cl.connect_ok(V311, &id_on(1, 3, "t"), ConnectOpts::default(), false);
    cl.subscribe(t, "r/#", Q0);
    cl.expect(t, pubp("r/2", "other", Q0, true, 0));
    cl.expect_nothing(t);
}

#[test]
fn retain_handling_0_1_2() {
    let mut cl = Cluster::new(1, cfg());
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    cl.publish(p, "r", "v", Q0, true, 0);
    let s = cl.connect_ok(V5, "s", ConnectOpts::default(), false);
    let rh = |n| SubscriptionOptions {
        qos: Q0,
        retain_handling: n,
        ..Default::default()
    };
    // 1: only when the subscription is new.
    cl.subscribe_with(s, "r", rh(1), Properties::default());
    cl.expect(s, suback(1, &[ReasonCode::Success]));
    cl.expect(s, pubp("r", "v", Q0, true, 0));
    cl.subscribe_with(s, "r", rh(1), Properties::default());
    cl.expect(s, suback(1, &[ReasonCode::Success]));
    cl.expect_nothing(s);
    // 0: on every subscribe.
    cl.subscribe_with(s, "r", rh(0), Properties::default());
    cl.expect(s, suback(1, &[ReasonCode::Success]));
    cl.expect(s, pubp("r", "v", Q0, true, 0));
    // 2: never.
    let t = cl.connect_ok(V5, "t", ConnectOpts::default(), false);
    cl.subscribe_with(t, "r", rh(2), Properties::default());
    cl.expect(t, suback(1, &[ReasonCode::Success]));
    cl.expect_nothing(t);
}

#[test]
fn retain_as_published() {
    let mut cl = Cluster::new(1, cfg());
    let rap = cl.connect_ok(V5, "rap", ConnectOpts::default(), false);
    let plain = cl.connect_ok(V5, "plain", ConnectOpts::default(), false);
    let o = SubscriptionOptions {
        qos: Q0,
        retain_as_published: true,
        ..Default::default()
    };
    cl.subscribe_with(rap, "r", o, Properties::default());
    cl.expect(rap, suback(1, &[ReasonCode::Success]));
    cl.subscribe(plain, "r", Q0);
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    cl.publish(p, "r", "v", Q0, true, 0);
    cl.expect(rap, pubp("r", "v", Q0, true, 0));
    cl.expect(plain, pubp("r", "v", Q0, false, 0));
    cl.publish(p, "r", "w", Q0, false, 0);
    cl.expect(rap, pubp("r", "w", Q0, false, 0));
}

#[test]
fn retained_message_expiry_decremented_then_dropped() {
    let mut cl = Cluster::new(1, cfg());
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    let mut m = publish("r", "v", Q0, true, 0);
    m.properties.message_expiry_interval_s = Some(10);
    cl.send(p, Packet::Publish(m));
    cl.advance(Duration::from_secs(4));
    let s = cl.connect_ok(V5, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "r", Q0);
    let mut want = publish("r", "v", Q0, true, 0);
    want.properties = PublishProperties {
        message_expiry_interval_s: Some(6),
        ..Default::default()
    };
    cl.expect(s, Packet::Publish(want));
    cl.advance(Duration::from_secs(6));
    let t = cl.connect_ok(V5, "t", ConnectOpts::default(), false);
    cl.subscribe(t, "r", Q0);
    cl.expect_nothing(t);
    assert_eq!(cl.shards[0].stats().retained, 0);
}

#[test]
fn retained_store_is_bounded() {
    let mut config = cfg();
    config.max_retained_messages = 2;
    let mut cl = Cluster::new(1, config);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    for t in ["a", "b", "c"] {
        cl.publish(p, t, "v", Q0, true, 0);
    }
    // Replacing an existing topic is still allowed at the bound.
    cl.publish(p, "a", "v2", Q0, true, 0);
    let st = cl.shards[0].stats();
    assert_eq!((st.retained, st.dropped_retained_full), (2, 1));
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "c", Q0);
    cl.expect_nothing(s);
    cl.subscribe(s, "a", Q0);
    cl.expect(s, pubp("a", "v2", Q0, true, 0));
}

#[test]
fn retain_not_available_refuses_retained_publish() {
    let mut config = cfg();
    config.retain_available = false;
    let mut cl = Cluster::new(1, config);
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    cl.publish(p, "r", "v", Q0, true, 0);
    cl.expect(p, disconnect(ReasonCode::RetainNotSupported));
    cl.expect_closed(p);
}

/// Bytes the server sent `c` since `from` (an earlier `raw.len()`); the decoded
/// packets are taken out of its inbox.
fn sent_since(cl: &mut Cluster, c: Cid, from: usize) -> Vec<u8> {
    cl.clients[c].inbox.clear();
    cl.clients[c].raw[from..].to_vec()
}

/// Topic → payload of every message in shard `s`'s retained replica, by topic.
fn replica_entries(cl: &Cluster, s: usize) -> Vec<(String, bytes::Bytes)> {
    let mut out = Vec::new();
    cl.shards[s].retained.for_each(|t, m| {
        out.push((
            String::from_utf8_lossy(t).into_owned(),
            bytes::Bytes::copy_from_slice(m.body.payload()),
        ))
    });
    out.sort();
    out
}

/// Topic → payload length of every message in shard `s`'s retained replica, sorted.
fn replica(cl: &Cluster, s: usize) -> Vec<(String, usize)> {
    replica_entries(cl, s)
        .into_iter()
        .map(|(t, p)| (t, p.len()))
        .collect()
}

#[test]
fn over_memory_mark_retained_that_adds_or_grows_is_not_stored() {
    // The subscription's row counts too (`bytes_routes`).
    let row = filter_row_bytes("r/#");
    let config = Config {
        memory_high_water_bytes: 300 + row,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    let s = cl.connect_ok(V5, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "r/#", Q1);
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    // 1 + 300 + 64 = 365 bytes retained: over the mark from here on.
    let big = "x".repeat(300);
    cl.publish(p, "r", &big, Q1, true, 10);
    cl.expect(p, puback(10));
    cl.expect(s, pubp("r", &big, Q1, false, 1));
    cl.send(s, puback(1));
    assert_eq!(cl.shards[0].stats().memory_bytes(), 365 + row);

    // A new retained topic, QoS 1: PUBACK 0x97, still delivered, not stored.
    let at = cl.clients[p].raw.len();
    cl.publish(p, "r/new", "v", Q1, true, 1);
    assert_eq!(sent_since(&mut cl, p, at), [0x40, 0x03, 0x00, 0x01, 0x97]);
    cl.expect(s, pubp("r/new", "v", Q1, false, 2));
    cl.send(s, puback(2));
    // QoS 2: PUBREC 0x97 ends the flow, so a PUBREL finds no packet id.
    let at = cl.clients[p].raw.len();
    cl.publish(p, "r/new2", "v", QoS::ExactlyOnce, true, 2);
    assert_eq!(sent_since(&mut cl, p, at), [0x50, 0x03, 0x00, 0x02, 0x97]);
    cl.expect(s, pubp("r/new2", "v", Q1, false, 3));
    cl.send(s, puback(3));
    let at = cl.clients[p].raw.len();
    cl.send(p, pubrel(2));
    assert_eq!(sent_since(&mut cl, p, at), [0x70, 0x03, 0x00, 0x02, 0x92]);
    // Growing the stored one is refused too.
    let bigger = "y".repeat(301);
    let at = cl.clients[p].raw.len();
    cl.publish(p, "r", &bigger, Q1, true, 3);
    assert_eq!(sent_since(&mut cl, p, at), [0x40, 0x03, 0x00, 0x03, 0x97]);
    cl.expect(s, pubp("r", &bigger, Q1, false, 4));
    cl.send(s, puback(4));
    let st = cl.shards[0].stats();
    assert_eq!(
        (st.retained, st.bytes_retained, st.dropped_retained_memory),
        (1, 365, 3)
    );
    assert_eq!(replica(&cl, 0), [("r".to_string(), 300)]);

    // Replacing with a smaller message works over the mark, and brings it back under.
    let at = cl.clients[p].raw.len();
    cl.publish(p, "r", "small", Q1, true, 5);
    assert_eq!(sent_since(&mut cl, p, at), [0x40, 0x02, 0x00, 0x05]);
    cl.expect(s, pubp("r", "small", Q1, false, 5));
    cl.send(s, puback(5));
    assert_eq!(cl.shards[0].stats().bytes_retained, 1 + 5 + 64);
    // Under the mark again: new retained topics are stored.
    cl.publish(p, "r/new", "v", Q1, true, 6);
    cl.expect(p, puback(6));
    assert_eq!(
        replica(&cl, 0),
        [("r".to_string(), 5), ("r/new".to_string(), 1)]
    );
    assert_eq!(cl.shards[0].stats().dropped_retained_memory, 3);
}

#[test]
fn over_memory_mark_v311_publisher_is_acknowledged_and_counted() {
    let config = Config {
        memory_high_water_bytes: 300,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    cl.publish(p, "r", &"x".repeat(300), Q1, true, 1);
    cl.expect(p, puback(1));
    for (qos, id, wire) in [
        (Q1, 2u8, [0x40u8, 0x02, 0x00, 0x02]),
        (QoS::ExactlyOnce, 3, [0x50, 0x02, 0x00, 0x03]),
    ] {
        let at = cl.clients[p].raw.len();
        cl.publish(p, "r/new", "v", qos, true, u16::from(id));
        assert_eq!(sent_since(&mut cl, p, at), wire);
    }
    // 3.x QoS 2 flow goes on as usual: PUBREL 3 completes it.
    let at = cl.clients[p].raw.len();
    cl.send(p, pubrel(3));
    assert_eq!(sent_since(&mut cl, p, at), [0x70, 0x02, 0x00, 0x03]);
    assert_eq!(cl.shards[0].stats().dropped_retained_memory, 2);
    assert_eq!(replica(&cl, 0), [("r".to_string(), 300)]);
}

#[test]
fn over_memory_mark_retained_delete_still_works() {
    let config = Config {
        memory_high_water_bytes: 300,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    cl.publish(p, "a", "v", Q0, true, 0);
    cl.publish(p, "b", &"x".repeat(300), Q0, true, 0);
    assert!(cl.shards[0].over_memory_mark());
    let at = cl.clients[p].raw.len();
    cl.publish(p, "a", "", Q1, true, 1);
    assert_eq!(sent_since(&mut cl, p, at), [0x40, 0x02, 0x00, 0x01]);
    assert_eq!(replica(&cl, 0), [("b".to_string(), 300)]);
    assert_eq!(cl.shards[0].stats().dropped_retained_memory, 0);
}

#[test]
fn retained_bytes_bound_refuses_on_every_replica() {
    // Cost: topic 1 + payload + 64. "a" takes 115 of 150.
    let config = Config {
        max_retained_bytes: 150,
        ..cfg()
    };
    let mut cl = Cluster::new(3, config);
    let p = cl.connect_ok(V5, &id_on(1, 3, "p"), ConnectOpts::default(), false);
    let s = cl.connect_ok(V311, &id_on(2, 3, "s"), ConnectOpts::default(), false);
    cl.subscribe(s, "b", Q1);
    cl.publish(p, "a", &"x".repeat(50), Q1, true, 1);
    cl.expect(p, puback(1));
    // 115 + 75 > 150: refused on the publisher's shard, so on no replica.
    let at = cl.clients[p].raw.len();
    cl.publish(p, "b", &"y".repeat(10), Q1, true, 2);
    assert_eq!(sent_since(&mut cl, p, at), [0x40, 0x03, 0x00, 0x02, 0x97]);
    cl.expect(s, pubp("b", &"y".repeat(10), Q1, false, 1));
    cl.send(s, puback(1));
    for sh in 0..3 {
        let st = cl.shards[sh].stats();
        assert_eq!((st.retained, st.bytes_retained), (1, 115), "shard {sh}");
    }
    let refused: u64 = cl
        .shards
        .iter()
        .map(|s| s.stats().dropped_retained_bytes)
        .sum();
    assert_eq!(refused, 1);
    assert_eq!(cl.shards[1].stats().dropped_retained_bytes, 1);
    // Shrinking "a" makes room for "b".
    cl.publish(p, "a", "x", Q1, true, 3);
    cl.expect(p, puback(3));
    cl.publish(p, "b", &"y".repeat(10), Q1, true, 4);
    cl.expect(p, puback(4));
    for sh in 0..3 {
        let st = cl.shards[sh].stats();
        assert_eq!((st.retained, st.bytes_retained), (2, 66 + 75), "shard {sh}");
    }
}

#[test]
fn retained_count_bound_answers_v5_with_quota_exceeded() {
    let config = Config {
        max_retained_messages: 1,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    cl.publish(p, "a", "v", Q1, true, 1);
    cl.expect(p, puback(1));
    let at = cl.clients[p].raw.len();
    cl.publish(p, "b", "v", Q1, true, 2);
    assert_eq!(sent_since(&mut cl, p, at), [0x40, 0x03, 0x00, 0x02, 0x97]);
    // Replacing the stored topic, even with a larger message, is within the bound.
    cl.publish(p, "a", "longer", Q1, true, 3);
    cl.expect(p, puback(3));
    let st = cl.shards[0].stats();
    assert_eq!((st.retained, st.dropped_retained_full), (1, 1));
}

/// Topic → payload of every message in shard `s`'s retained replica, sorted.
fn replica_payloads(cl: &Cluster, s: usize) -> Vec<(String, String)> {
    replica_entries(cl, s)
        .into_iter()
        .map(|(t, p)| (t, String::from_utf8_lossy(&p).into_owned()))
        .collect()
}

/// Three shards, a publisher on shards 0 and 1 (index = shard).
fn lww_cluster() -> (Cluster, [Cid; 2]) {
    let mut cl = Cluster::new(3, cfg());
    let p0 = cl.connect_ok(V311, &id_on(0, 3, "p0"), ConnectOpts::default(), false);
    let p1 = cl.connect_ok(V311, &id_on(1, 3, "p1"), ConnectOpts::default(), false);
    (cl, [p0, p1])
}

/// Every replica holds exactly `want` for topic `t`, and a new subscriber on each
/// shard gets it (or nothing when `want` is `None`).
#[track_caller]
fn assert_converged(cl: &mut Cluster, want: Option<&str>, tag: &str) {
    let expected: Vec<(String, String)> = want
        .map(|w| vec![("t".to_string(), w.to_string())])
        .unwrap_or_default();
    for s in 0..3 {
        assert_eq!(
            replica_payloads(cl, s),
            expected,
            "{tag}: replica on shard {s}"
        );
    }
    for s in 0..3 {
        let c = cl.connect_ok(
            V311,
            &id_on(s, 3, &format!("sub-{tag}")),
            ConnectOpts::default(),
            false,
        );
        cl.subscribe(c, "t", Q0);
        if let Some(w) = want {
            cl.expect(c, pubp("t", w, Q0, true, 0));
        }
        cl.expect_nothing(c);
        cl.drop_connection(c);
    }
}

#[test]
fn concurrent_retained_publishes_converge_on_the_newer() {
    for newer in [0, 1] {
        let (mut cl, p) = lww_cluster();
        let older = 1 - newer;
        // Both read before either shard's update reaches any other shard.
        cl.hold_mesh = true;
        cl.publish(p[older], "t", "old", Q0, true, 0);
        cl.advance(Duration::from_millis(1));
        cl.publish(p[newer], "t", "new", Q0, true, 0);
        // Each origin stored its own.
        assert_eq!(replica_payloads(&cl, older), [("t".into(), "old".into())]);
        assert_eq!(replica_payloads(&cl, newer), [("t".into(), "new".into())]);
        cl.hold_mesh = false;
        cl.pump();
        assert_converged(&mut cl, Some("new"), &format!("newer on {newer}"));
    }
}

#[test]
fn concurrent_retained_publishes_read_at_one_instant_go_to_the_higher_shard() {
    let (mut cl, p) = lww_cluster();
    cl.hold_mesh = true;
    cl.publish(p[1], "t", "from-1", Q0, true, 0);
    cl.publish(p[0], "t", "from-0", Q0, true, 0);
    cl.hold_mesh = false;
    cl.pump();
    assert_converged(&mut cl, Some("from-1"), "tie");
}

#[test]
fn a_delete_racing_an_older_update_wins_everywhere() {
    for deleter in [0, 1] {
        let (mut cl, p) = lww_cluster();
        let other = 1 - deleter;
        cl.publish(p[0], "t", "v0", Q0, true, 0);
        assert_converged(&mut cl, Some("v0"), &format!("before {deleter}"));
        cl.hold_mesh = true;
        cl.publish(p[other], "t", "older", Q0, true, 0);
        cl.advance(Duration::from_millis(1));
        cl.publish(p[deleter], "t", "", Q0, true, 0);
        // The delete reaches the other two replicas before the older update, so
        // only its tombstone keeps that update out.
        cl.deliver_pair(deleter, other);
        cl.deliver_pair(deleter, 2);
        for s in 0..3 {
            assert_eq!(replica_payloads(&cl, s), [], "shard {s} after the delete");
        }
        cl.hold_mesh = false;
        cl.pump();
        assert_converged(&mut cl, None, &format!("deleter {deleter}"));
        for s in 0..3 {
            assert_eq!(cl.shards[s].tombstones.len(), 1, "shard {s}");
        }

        // A newer update after the delete wins, even racing an older delete.
        cl.hold_mesh = true;
        cl.publish(p[deleter], "t", "", Q0, true, 0);
        cl.advance(Duration::from_millis(1));
        cl.publish(p[other], "t", "newer", Q0, true, 0);
        cl.hold_mesh = false;
        cl.pump();
        assert_converged(&mut cl, Some("newer"), &format!("after {deleter}"));
        for s in 0..3 {
            assert_eq!(cl.shards[s].tombstones.len(), 0, "shard {s}");
        }
    }
}

#[test]
fn tombstones_go_after_their_ttl() {
    let (mut cl, p) = lww_cluster();
    cl.publish(p[0], "t", "v", Q0, true, 0);
    cl.publish(p[0], "t", "", Q0, true, 0);
    for s in 0..3 {
        assert_eq!(cl.shards[s].tombstones.len(), 1, "shard {s}");
    }
    cl.advance(Duration::from_secs(29));
    cl.publish(p[1], "u", "x", Q0, true, 0);
    for s in 0..3 {
        assert_eq!(cl.shards[s].tombstones.len(), 1, "shard {s} within the TTL");
    }
    cl.advance(Duration::from_secs(1));
    cl.publish(p[1], "u", "y", Q0, true, 0);
    for s in 0..3 {
        assert_eq!(cl.shards[s].tombstones.len(), 0, "shard {s} after the TTL");
        assert_eq!(replica_payloads(&cl, s), [("u".into(), "y".into())]);
    }
}
