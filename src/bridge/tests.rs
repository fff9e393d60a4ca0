//! The bridge core on virtual time: config errors named, topic mapping, and the
//! client against a scripted remote (packets decoded and answered in memory).

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use smallvec::smallvec;

use super::config::parse_rule;
use super::rules::Rules;
use super::*;
use crate::protocol::{
    decode_packet, encode_to_bytes, ConnAck, Packet, Properties, ProtocolVersion, PubResp, Publish,
    PublishProperties, QoS, ReasonCode, SubAck,
};

fn table(text: &str) -> Result<Vec<BridgeConfig>, BridgeConfigError> {
    let t: toml::Table = text.parse().expect("test TOML");
    parse_bridges(t.get("bridge").expect("[[bridge]]"))
}

fn cfg(extra: &str) -> BridgeConfig {
    table(&format!(
        "[[bridge]]\nname = \"edge\"\naddress = \"127.0.0.1:1883\"\nreconnect_min_ms = 1000\nreconnect_max_ms = 8000\n{extra}"
    ))
    .expect("valid bridge")
    .remove(0)
}

fn err(text: &str) -> String {
    table(text).expect_err("invalid bridge").to_string()
}

#[test]
fn a_full_table_parses() {
    let b = table(
        r#"[[bridge]]
name = "cloud"
address = "mqtts://broker.example:8883"
tls_ca_file = "/etc/ca.pem"
protocol_version = "5"
client_id = "edge-7"
username = "u"
password = "p"
keepalive_s = 30
clean_session = true
topics = ["sensors/# out 1 site/ edge7/", "cmd/+ in 2", "both/x both 0 \"\" \"\""]
queue_max_messages = 5
inflight_max = 3
"#,
    )
    .unwrap()
    .remove(0);
    assert_eq!(b.host, "broker.example");
    assert_eq!(b.port, 8883);
    let tls = b.tls.as_ref().unwrap();
    assert_eq!(tls.ca_file, "/etc/ca.pem");
    assert_eq!(tls.server_name, "broker.example");
    assert_eq!(b.protocol, ProtocolVersion::V5);
    assert_eq!(b.client_id, "edge-7");
    assert_eq!(b.keepalive_s, 30);
    assert!(b.clean_session);
    assert_eq!(b.topics.len(), 3);
    assert_eq!(b.topics[0].local_filter(), "site/sensors/#");
    assert_eq!(b.topics[0].remote_filter(), "edge7/sensors/#");
    assert_eq!(b.topics[1].direction, Direction::In);
    assert_eq!(b.topics[1].qos, 2);
    assert_eq!(b.topics[2].direction, Direction::Both);
    assert_eq!(b.queue_max_messages, 5);
    assert_eq!(b.inflight_max, 3);
}

#[test]
fn defaults_are_mosquittos() {
    let b = cfg("topics = [\"a/#\"]");
    assert_eq!(b.client_id, "ringmq-bridge-edge");
    assert!(!b.clean_session);
    assert!(b.try_private);
    assert_eq!(b.protocol, ProtocolVersion::V311);
    assert_eq!(b.topics[0].direction, Direction::Out);
    assert_eq!(b.topics[0].qos, 0);
    assert!(b.tls.is_none());
}

#[test]
fn config_errors_name_the_bridge_and_the_key() {
    let base = "[[bridge]]\nname = \"edge\"\n";
    let e = err(&format!("{base}topics = [\"a\"]\n"));
    assert!(
        e.contains("bridge[edge].address") && e.contains("got nothing"),
        "{e}"
    );
    let e = err(&format!("{base}address = \"h:1883\"\n"));
    assert!(e.contains("bridge[edge].topics"), "{e}");
    let e = err(&format!(
        "{base}address = \"h:1883\"\ntopics = [\"a/# sideways\"]\n"
    ));
    assert!(
        e.contains("bridge[edge].topics") && e.contains("sideways"),
        "{e}"
    );
    let e = err(&format!(
        "{base}address = \"h:1883\"\ntopics = [\"a/# in 3\"]\n"
    ));
    assert!(e.contains("QoS \\\"3\\\"") || e.contains("QoS"), "{e}");
    let e = err(&format!(
        "{base}address = \"h:1883\"\ntopics = [\"a/#/b\"]\n"
    ));
    assert!(e.contains("a/#/b"), "{e}");
    let e = err(&format!("{base}address = \"h:99999\"\ntopics = [\"a\"]\n"));
    assert!(
        e.contains("bridge[edge].address") && e.contains("h:99999"),
        "{e}"
    );
    let e = err(&format!(
        "{base}address = \"h:1\"\ntopics = [\"a\"]\nkeepalive = 3\n"
    ));
    assert!(
        e.contains("bridge[edge].keepalive") && e.contains("one of"),
        "{e}"
    );
    let e = err(&format!(
        "{base}address = \"mqtts://h:8883\"\ntopics = [\"a\"]\n"
    ));
    assert!(e.contains("bridge[edge].tls_ca_file"), "{e}");
    let e = err(&format!(
        "{base}address = \"h:1\"\ntopics = [\"a\"]\nreconnect_min_ms = 5000\nreconnect_max_ms = 100\n"
    ));
    assert!(e.contains("bridge[edge].reconnect_max_ms"), "{e}");
    let e = err("[[bridge]]\naddress = \"h:1\"\n");
    assert!(e.contains("bridge[0].name"), "{e}");
    let e = err(
        "[[bridge]]\nname = \"x\"\naddress = \"h:1\"\ntopics = [\"a\"]\n[[bridge]]\nname = \"x\"\naddress = \"h:1\"\ntopics = [\"a\"]\n",
    );
    assert!(
        e.contains("bridge[x].name") && e.contains("no other"),
        "{e}"
    );
}

#[test]
fn rules_swap_prefixes_both_ways() {
    let rules = vec![
        parse_rule("sensors/# out 1 site/ edge7/").unwrap(),
        parse_rule("cmd/+ in 2 local/ remote/").unwrap(),
        parse_rule("\"\" both 0 status/here status/there").unwrap(),
    ];
    let r = Rules::new(&rules);
    assert_eq!(
        r.outbound(b"site/sensors/t1"),
        Some((Bytes::from_static(b"edge7/sensors/t1"), QoS::AtLeastOnce))
    );
    assert_eq!(r.outbound(b"sensors/t1"), None);
    // An `in` rule does not forward out.
    assert_eq!(r.outbound(b"local/cmd/a"), None);
    assert_eq!(
        r.inbound(b"remote/cmd/a"),
        Some(Bytes::from_static(b"local/cmd/a"))
    );
    assert_eq!(r.inbound(b"remote/cmd/a/b"), None);
    assert_eq!(
        r.outbound(b"status/here"),
        Some((Bytes::from_static(b"status/there"), QoS::AtMostOnce))
    );
    assert_eq!(
        r.inbound(b"status/there"),
        Some(Bytes::from_static(b"status/here"))
    );
    assert!(parse_rule("a # b").is_err());
    assert!(parse_rule("a out 1 x").is_err());
    assert!(parse_rule("a out 1 x/# y/").is_err());
    assert!(parse_rule("").is_err());
}

/// A scripted remote: decodes what the bridge sends, lets the test answer.
struct Remote {
    version: ProtocolVersion,
    rx: BytesMut,
}

impl Remote {
    fn new(version: ProtocolVersion) -> Remote {
        Remote {
            version,
            rx: BytesMut::new(),
        }
    }

    /// Everything the bridge wrote, decoded. A bridge-marked CONNECT level (0x84) is
    /// reported through `private` and decoded as plain 3.1.1.
    fn take(&mut self, c: &mut BridgeClient) -> (Vec<Packet>, bool) {
        let mut private = false;
        while let Some(b) = c.poll_transmit() {
            let mut b = b.to_vec();
            if b[0] == 0x10 {
                let mut i = 1;
                while b[i] & 0x80 != 0 {
                    i += 1;
                }
                let level = i + 7;
                private = b[level] & 0x80 != 0;
                b[level] &= 0x7F;
            }
            self.rx.extend_from_slice(&b);
        }
        let mut out = Vec::new();
        while let Some(p) = decode_packet(&mut self.rx, self.version, 1 << 20).unwrap() {
            out.push(p);
        }
        (out, private)
    }

    fn packets(&mut self, c: &mut BridgeClient) -> Vec<Packet> {
        self.take(c).0
    }

    fn answer(&self, c: &mut BridgeClient, p: Packet, now: Instant) {
        c.on_bytes(&encode_to_bytes(&p, self.version), now);
    }
}

fn connack(session_present: bool, code: ReasonCode) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present,
        code,
        properties: Properties::default(),
    })
}

fn publish(topic: &str, qos: QoS, id: u16, payload: &str) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        packet_id: id,
        properties: PublishProperties::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    })
}

/// Drives the client to `Up`; returns the packets it sent after CONNECT.
fn bring_up(c: &mut BridgeClient, r: &mut Remote, now: Instant, present: bool) -> Vec<Packet> {
    c.on_timeout(now);
    assert_eq!(c.poll_transport(), Some(Transport::Connect));
    c.on_connected(now);
    let (p, _) = r.take(c);
    assert!(matches!(p.as_slice(), [Packet::Connect(_)]), "{p:?}");
    r.answer(c, connack(present, ReasonCode::Success), now);
    assert!(c.is_up());
    r.packets(c)
}

fn payloads(ps: &[Packet]) -> Vec<(String, u8, u16, bool)> {
    ps.iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((
                String::from_utf8(p.payload.to_vec()).unwrap(),
                p.qos as u8,
                p.packet_id,
                p.dup,
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn connect_announces_a_bridge_and_subscribes_the_in_rules() {
    let t0 = Instant::now();
    let mut c = BridgeClient::new(
        cfg("topics = [\"up/# out 1\", \"down/# in 2 l/ r/\"]\nusername = \"u\"\npassword = \"p\""),
        7,
        t0,
    );
    let mut r = Remote::new(ProtocolVersion::V311);
    assert_eq!(c.next_timeout(), Some(t0));
    c.on_timeout(t0);
    assert_eq!(c.poll_transport(), Some(Transport::Connect));
    c.on_connected(t0);
    let (p, private) = r.take(&mut c);
    assert!(private, "3.1.1 with try_private sends level 0x84");
    let Packet::Connect(conn) = &p[0] else {
        panic!("{p:?}")
    };
    assert!(!conn.clean_start);
    assert_eq!(&conn.client_id[..], b"ringmq-bridge-edge");
    assert_eq!(conn.username.as_deref(), Some(&b"u"[..]));
    assert_eq!(conn.keep_alive_s, 60);
    r.answer(&mut c, connack(false, ReasonCode::Success), t0);
    let p = r.packets(&mut c);
    let [Packet::Subscribe(s)] = p.as_slice() else {
        panic!("{p:?}")
    };
    assert_eq!(s.filters.len(), 1);
    assert_eq!(&s.filters[0].0[..], b"r/down/#");
    assert_eq!(s.filters[0].1.qos, QoS::ExactlyOnce);
    assert_eq!(
        c.local_subscriptions(),
        vec![("up/#".to_string(), QoS::AtLeastOnce)]
    );
    assert_eq!(c.stats().connects, 1);
}

#[test]
fn v5_subscribes_with_no_local_and_announces_no_private_level() {
    let t0 = Instant::now();
    let mut c = BridgeClient::new(
        cfg("protocol_version = \"5\"\ntopics = [\"x/# both 1\"]"),
        7,
        t0,
    );
    let mut r = Remote::new(ProtocolVersion::V5);
    c.on_timeout(t0);
    c.poll_transport();
    c.on_connected(t0);
    let (p, private) = r.take(&mut c);
    assert!(!private);
    let Packet::Connect(conn) = &p[0] else {
        panic!()
    };
    assert_eq!(conn.protocol, ProtocolVersion::V5);
    assert_eq!(conn.properties.session_expiry_interval_s, Some(u32::MAX));
    r.answer(&mut c, connack(false, ReasonCode::Success), t0);
    let p = r.packets(&mut c);
    let [Packet::Subscribe(s)] = p.as_slice() else {
        panic!("{p:?}")
    };
    assert!(s.filters[0].1.no_local);
    assert!(s.filters[0].1.retain_as_published);
}

#[test]
fn refused_private_level_falls_back_to_plain_311() {
    let t0 = Instant::now();
    let mut c = BridgeClient::new(cfg("topics = [\"a\"]"), 7, t0);
    let mut r = Remote::new(ProtocolVersion::V311);
    c.on_timeout(t0);
    c.poll_transport();
    c.on_connected(t0);
    assert!(r.take(&mut c).1);
    r.answer(
        &mut c,
        connack(false, ReasonCode::UnsupportedProtocolVersion),
        t0,
    );
    assert_eq!(c.poll_transport(), Some(Transport::Close));
    c.on_closed(t0);
    let retry = c.next_timeout().unwrap();
    c.on_timeout(retry);
    assert_eq!(c.poll_transport(), Some(Transport::Connect));
    c.on_connected(retry);
    assert!(!r.take(&mut c).1, "second CONNECT is plain 3.1.1");
}

#[test]
fn qos1_and_qos2_out_complete_their_exchanges() {
    let t0 = Instant::now();
    let mut c = BridgeClient::new(cfg("topics = [\"t/# out 2 a/ b/\"]"), 7, t0);
    let mut r = Remote::new(ProtocolVersion::V311);
    assert!(bring_up(&mut c, &mut r, t0, false).is_empty());
    assert!(c.publish_out(b"a/t/1", QoS::AtLeastOnce, false, Bytes::from("one"), t0));
    assert!(c.publish_out(b"a/t/2", QoS::ExactlyOnce, true, Bytes::from("two"), t0));
    assert!(c.publish_out(b"a/t/0", QoS::AtMostOnce, false, Bytes::from("zero"), t0));
    // No rule: not taken.
    assert!(!c.publish_out(b"t/3", QoS::AtLeastOnce, false, Bytes::from("x"), t0));
    let p = r.packets(&mut c);
    assert_eq!(
        payloads(&p),
        vec![
            ("one".into(), 1, 1, false),
            ("two".into(), 2, 2, false),
            ("zero".into(), 0, 0, false)
        ]
    );
    let Packet::Publish(two) = &p[1] else {
        panic!()
    };
    assert_eq!(&two.topic[..], b"b/t/2");
    assert!(two.retain);
    assert_eq!(c.held(), 2);
    r.answer(&mut c, Packet::PubAck(PubResp::new(1)), t0);
    r.answer(&mut c, Packet::PubRec(PubResp::new(2)), t0);
    assert_eq!(r.packets(&mut c), vec![Packet::PubRel(PubResp::new(2))]);
    assert_eq!(c.held(), 1);
    r.answer(&mut c, Packet::PubComp(PubResp::new(2)), t0);
    assert_eq!(c.held(), 0);
    assert_eq!(c.stats().out_acked, 2);
}

#[test]
fn qos1_and_qos2_in_are_delivered_once_and_acknowledged() {
    let t0 = Instant::now();
    let mut c = BridgeClient::new(cfg("topics = [\"cmd/# in 2 l/ r/\"]"), 7, t0);
    let mut r = Remote::new(ProtocolVersion::V311);
    bring_up(&mut c, &mut r, t0, false);
    r.answer(&mut c, publish("r/cmd/a", QoS::AtLeastOnce, 5, "p1"), t0);
    // Not acknowledged to the remote until the local broker has it.
    assert_eq!(r.packets(&mut c), vec![]);
    let m = c.poll_local().unwrap();
    assert_eq!(&m.topic[..], b"l/cmd/a");
    assert_eq!(m.qos, QoS::AtLeastOnce);
    // A resend while the local ack is owed is not forwarded again.
    r.answer(&mut c, publish("r/cmd/a", QoS::AtLeastOnce, 5, "p1"), t0);
    assert_eq!(c.poll_local(), None);
    c.local_acked(m.remote_token, t0);
    assert_eq!(r.packets(&mut c), vec![Packet::PubAck(PubResp::new(5))]);
    // Twice is once.
    c.local_acked(m.remote_token, t0);
    assert_eq!(r.packets(&mut c), vec![]);
    r.answer(&mut c, publish("r/cmd/b", QoS::ExactlyOnce, 6, "p2"), t0);
    // The remote did not see our PUBREC and sends again with DUP: not delivered twice,
    // neither before the local PUBREC nor after it.
    r.answer(&mut c, publish("r/cmd/b", QoS::ExactlyOnce, 6, "p2"), t0);
    assert_eq!(r.packets(&mut c), vec![]);
    let m = c.poll_local().unwrap();
    assert_eq!(&m.payload[..], b"p2");
    assert_eq!(c.poll_local(), None);
    c.local_acked(m.remote_token, t0);
    r.answer(&mut c, publish("r/cmd/b", QoS::ExactlyOnce, 6, "p2"), t0);
    assert_eq!(
        r.packets(&mut c),
        vec![
            Packet::PubRec(PubResp::new(6)),
            Packet::PubRec(PubResp::new(6))
        ]
    );
    assert_eq!(c.poll_local(), None);
    r.answer(&mut c, Packet::PubRel(PubResp::new(6)), t0);
    assert_eq!(r.packets(&mut c), vec![Packet::PubComp(PubResp::new(6))]);
    // After the exchange the id is free again: a new message with it is delivered.
    r.answer(&mut c, publish("r/cmd/c", QoS::ExactlyOnce, 6, "p3"), t0);
    assert_eq!(&c.poll_local().unwrap().payload[..], b"p3");
    // A topic no rule covers is counted, still acknowledged.
    r.answer(&mut c, publish("elsewhere", QoS::AtMostOnce, 0, "p4"), t0);
    assert_eq!(c.poll_local(), None);
    assert_eq!(c.stats().in_unmatched, 1);
    assert_eq!(c.stats().in_received, 4);
}

#[test]
fn a_full_inbound_window_pauses_reading_and_the_local_ack_resumes_it() {
    let t0 = Instant::now();
    let mut c = BridgeClient::new(cfg("topics = [\"cmd/# in 1\"]\ninflight_max = 2"), 7, t0);
    let mut r = Remote::new(ProtocolVersion::V311);
    bring_up(&mut c, &mut r, t0, false);
    for id in 1..=4 {
        r.answer(&mut c, publish("cmd/x", QoS::AtLeastOnce, id, "m"), t0);
    }
    // Two wait for their local ack; the other two stay undecoded (3.1.1: not reading).
    assert_eq!(c.in_waiting(), 2);
    let first = c.poll_local().unwrap();
    assert!(c.poll_local().is_some());
    assert_eq!(c.poll_local(), None);
    c.local_acked(first.remote_token, t0);
    c.read_on(t0);
    assert_eq!(r.packets(&mut c), vec![Packet::PubAck(PubResp::new(1))]);
    assert_eq!(c.in_waiting(), 2);
    assert!(c.poll_local().is_some());
    assert_eq!(c.poll_local(), None);
    assert_eq!(c.stats().in_received, 3);
}

#[test]
fn a_lost_remote_session_forgets_what_waits_for_the_local_ack() {
    let t0 = Instant::now();
    let mut c = BridgeClient::new(cfg("topics = [\"cmd/# in 1\"]"), 7, t0);
    let mut r = Remote::new(ProtocolVersion::V311);
    bring_up(&mut c, &mut r, t0, false);
    r.answer(&mut c, publish("cmd/x", QoS::AtLeastOnce, 1, "old"), t0);
    let old = c.poll_local().unwrap();
    c.on_closed(t0);
    let t1 = c.next_timeout().unwrap();
    // The remote comes back without our session and reuses id 1 for a new message:
    // delivered, not taken for a resend; the old token acknowledges nothing.
    bring_up(&mut c, &mut r, t1, false);
    r.answer(&mut c, publish("cmd/x", QoS::AtLeastOnce, 1, "new"), t1);
    let new = c.poll_local().unwrap();
    assert_eq!(&new.payload[..], b"new");
    c.local_acked(old.remote_token, t1);
    assert_eq!(r.packets(&mut c), vec![]);
    c.local_acked(new.remote_token, t1);
    assert_eq!(r.packets(&mut c), vec![Packet::PubAck(PubResp::new(1))]);
}

#[test]
fn the_queue_holds_messages_while_down_up_to_its_bound() {
    let t0 = Instant::now();
    let mut c = BridgeClient::new(
        cfg("topics = [\"q/# out 1\"]\nqueue_max_messages = 3"),
        7,
        t0,
    );
    let mut r = Remote::new(ProtocolVersion::V311);
    for i in 0..5 {
        c.publish_out(
            b"q/x",
            QoS::AtLeastOnce,
            false,
            Bytes::from(format!("m{i}")),
            t0,
        );
    }
    assert_eq!(c.held(), 3);
    assert_eq!(c.stats().out_dropped_queue_full, 2);
    assert!(c.poll_transmit().is_none(), "nothing is sent while down");
    let p = bring_up(&mut c, &mut r, t0, false);
    assert_eq!(
        payloads(&p),
        vec![
            ("m0".into(), 1, 1, false),
            ("m1".into(), 1, 2, false),
            ("m2".into(), 1, 3, false)
        ]
    );
}

#[test]
fn unacknowledged_messages_are_resent_after_a_reconnect() {
    let t0 = Instant::now();
    let mut c = BridgeClient::new(cfg("topics = [\"q/# out 2\"]"), 7, t0);
    let mut r = Remote::new(ProtocolVersion::V311);
    bring_up(&mut c, &mut r, t0, false);
    c.publish_out(b"q/1", QoS::AtLeastOnce, false, Bytes::from("a"), t0);
    c.publish_out(b"q/2", QoS::ExactlyOnce, false, Bytes::from("b"), t0);
    c.publish_out(b"q/3", QoS::ExactlyOnce, false, Bytes::from("c"), t0);
    r.packets(&mut c);
    r.answer(&mut c, Packet::PubRec(PubResp::new(3)), t0);
    r.packets(&mut c);
    // The remote goes away with all three unfinished.
    c.on_closed(t0);
    assert!(!c.is_up());
    let mut r = Remote::new(ProtocolVersion::V311);
    let t1 = c.next_timeout().unwrap();
    let p = bring_up(&mut c, &mut r, t1, true);
    // Session kept: PUBLISH again with DUP, and PUBREL for the one already received.
    assert_eq!(
        payloads(&p),
        vec![("a".into(), 1, 1, true), ("b".into(), 2, 2, true)]
    );
    assert!(p.contains(&Packet::PubRel(PubResp::new(3))));
    // Session lost this time: the unfinished ones are sent as new messages.
    c.on_closed(t1);
    let t2 = c.next_timeout().unwrap();
    let p = bring_up(&mut c, &mut Remote::new(ProtocolVersion::V311), t2, false);
    let sent = payloads(&p);
    assert_eq!(sent.len(), 2, "{p:?}");
    assert!(sent.iter().all(|(_, _, _, dup)| !dup));
    assert_eq!(sent[0].0, "a");
    assert_eq!(sent[1].0, "b");
    assert_eq!(c.held(), 2);
}

#[test]
fn reconnect_backs_off_exponentially_with_jitter_and_resets_on_success() {
    let t0 = Instant::now();
    let mut c = BridgeClient::new(cfg("topics = [\"a\"]"), 99, t0);
    let mut now = t0;
    let mut delays = Vec::new();
    for _ in 0..6 {
        c.on_timeout(now);
        assert_eq!(c.poll_transport(), Some(Transport::Connect));
        // Connection refused.
        c.on_closed(now);
        let next = c.next_timeout().unwrap();
        delays.push(next - now);
        // Nothing happens before the instant.
        c.on_timeout(next - Duration::from_millis(1));
        assert_eq!(c.poll_transport(), None);
        now = next;
    }
    let caps = [1000u64, 2000, 4000, 8000, 8000, 8000];
    for (d, cap) in delays.iter().zip(caps) {
        let ms = d.as_millis() as u64;
        assert!(ms >= cap / 2 && ms <= cap, "{delays:?}");
    }
    assert_eq!(c.stats().connect_failures, 6);
    // A success resets the exponent.
    let mut r = Remote::new(ProtocolVersion::V311);
    bring_up(&mut c, &mut r, now, false);
    c.on_closed(now);
    let d = c.next_timeout().unwrap() - now;
    assert!(d <= Duration::from_millis(1000), "{d:?}");
    assert_eq!(c.stats().disconnects, 1);
}

#[test]
fn keepalive_pings_and_gives_up_on_a_silent_remote() {
    let t0 = Instant::now();
    let mut c = BridgeClient::new(cfg("topics = [\"a\"]\nkeepalive_s = 10"), 7, t0);
    let mut r = Remote::new(ProtocolVersion::V311);
    bring_up(&mut c, &mut r, t0, false);
    let t = c.next_timeout().unwrap();
    assert_eq!(t, t0 + Duration::from_secs(10));
    c.on_timeout(t);
    assert_eq!(r.packets(&mut c), vec![Packet::PingReq]);
    r.answer(&mut c, Packet::PingResp, t);
    // Silence: after 1.5 × keepalive without a byte, the connection is closed.
    let t2 = t + Duration::from_secs(10);
    c.on_timeout(t2);
    assert_eq!(r.packets(&mut c), vec![Packet::PingReq]);
    let t3 = c.next_timeout().unwrap();
    assert_eq!(t3, t + Duration::from_secs(15));
    c.on_timeout(t3);
    assert_eq!(c.poll_transport(), Some(Transport::Close));
    assert!(matches!(
        r.packets(&mut c).as_slice(),
        [Packet::Disconnect(_)]
    ));
}

#[test]
fn a_remote_that_never_answers_connect_times_out() {
    let t0 = Instant::now();
    let mut c = BridgeClient::new(cfg("topics = [\"a\"]\nconnect_timeout_ms = 2000"), 7, t0);
    c.on_timeout(t0);
    c.poll_transport();
    c.on_connected(t0);
    assert_eq!(c.next_timeout(), Some(t0 + Duration::from_secs(2)));
    c.on_timeout(t0 + Duration::from_secs(2));
    assert_eq!(c.poll_transport(), Some(Transport::Close));
    c.on_closed(t0 + Duration::from_secs(2));
    assert_eq!(c.stats().connect_failures, 1);
}

#[test]
fn protocol_errors_from_the_remote_close_the_connection() {
    let t0 = Instant::now();
    let mut c = BridgeClient::new(cfg("topics = [\"a\"]"), 7, t0);
    let mut r = Remote::new(ProtocolVersion::V311);
    c.on_timeout(t0);
    c.poll_transport();
    c.on_connected(t0);
    r.packets(&mut c);
    // A PUBLISH before CONNACK.
    r.answer(&mut c, publish("a", QoS::AtMostOnce, 0, "x"), t0);
    assert_eq!(c.poll_transport(), Some(Transport::Close));
    assert_eq!(c.stats().protocol_errors, 1);
    c.on_closed(t0);
    // Garbage once up.
    let t1 = c.next_timeout().unwrap();
    bring_up(&mut c, &mut r, t1, false);
    c.on_bytes(&[0xF0, 0x00], t1);
    assert_eq!(c.poll_transport(), Some(Transport::Close));
    assert_eq!(c.stats().protocol_errors, 2);
}

#[test]
fn the_inflight_window_limits_unacknowledged_sends() {
    let t0 = Instant::now();
    let mut c = BridgeClient::new(cfg("topics = [\"q/# out 1\"]\ninflight_max = 2"), 7, t0);
    let mut r = Remote::new(ProtocolVersion::V311);
    bring_up(&mut c, &mut r, t0, false);
    for i in 0..4 {
        c.publish_out(
            b"q/x",
            QoS::AtLeastOnce,
            false,
            Bytes::from(format!("m{i}")),
            t0,
        );
    }
    assert_eq!(payloads(&r.packets(&mut c)).len(), 2);
    r.answer(&mut c, Packet::PubAck(PubResp::new(1)), t0);
    let p = payloads(&r.packets(&mut c));
    assert_eq!(p, vec![("m2".into(), 1, 3, false)]);
    assert_eq!(c.held(), 3);
}

#[test]
fn refused_subscriptions_are_counted() {
    let t0 = Instant::now();
    let mut c = BridgeClient::new(cfg("topics = [\"a in 1\"]"), 7, t0);
    let mut r = Remote::new(ProtocolVersion::V311);
    let p = bring_up(&mut c, &mut r, t0, false);
    let [Packet::Subscribe(s)] = p.as_slice() else {
        panic!("{p:?}")
    };
    r.answer(
        &mut c,
        Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            codes: smallvec![ReasonCode::UnspecifiedError],
            properties: Properties::default(),
        }),
        t0,
    );
    assert_eq!(c.stats().subscribe_refused, 1);
    assert!(c.is_up());
}
