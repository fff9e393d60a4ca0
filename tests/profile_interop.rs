//! The interoperability profile `tests/profiles/interop.toml`, checked on the wire:
//! each of its five settings (deny_subscribe, server_keep_alive_s, receive_maximum,
//! max_packet_size, topic_alias_maximum) must be observable by a client.
//!
//! The broker is started with `--config tests/profiles/interop.toml --shards 2`
//! (`RINGMQ_TEST_PROFILE_ADDR` points the tests at an equivalently configured broker).

mod support;

use support::pkt::{self, p_u16, Connect};
use support::*;

/// A QoS 1 MQTT 5 PUBLISH (no properties) of exactly `total` bytes on the wire
/// (`total` between 131 and 16 386, so the remaining length takes 2 bytes).
fn qos1_publish_of_len(topic: &str, pid: u16, total: usize) -> Vec<u8> {
    let body = total - 3;
    let payload = vec![b'a'; body - (2 + topic.len() + 2 + 1)];
    let p = pkt::publish(V5, topic, 1, false, false, pid, &[], &payload);
    assert_eq!(p.len(), total);
    p
}

fn broker() -> Broker {
    Broker::with_profile("interop.toml", &["--shards", "2"])
}

// --- deny_subscribe = ["test/nosubscribe"] ---

#[test]
fn profile_deny_subscribe_v311_gets_0x80() {
    let b = broker();
    let mut c = RawClient::connect_v311(b.addr(), &uniq("deny3"));
    let ok = format!("test/{}", uniq("ok"));
    c.send(&pkt::subscribe(
        V311,
        5,
        &[],
        &[("test/nosubscribe", 1), (&ok, 1)],
    ));
    c.expect_hex("90 04 00 05 80 01");
    c.ping();
}

#[test]
fn profile_deny_subscribe_v5_gets_0x80() {
    // Mosquitto (ACL deny) answers 0x87 Not authorized; the profile promises 0x80.
    let b = broker();
    let (mut c, _) = RawClient::connect_v5(b.addr(), &uniq("deny5"));
    let ok = format!("test/{}", uniq("ok"));
    c.send(&pkt::subscribe(
        V5,
        6,
        &[],
        &[("test/nosubscribe", 2), (&ok, 2)],
    ));
    let ack = SubAck::parse(V5, &c.recv_suback());
    assert_eq!((ack.pid, ack.codes), (6, vec![0x80, 0x02]));
    c.ping();
}

#[test]
fn profile_deny_subscribe_receives_nothing() {
    let b = broker();
    let (mut c, _) = RawClient::connect_v5(b.addr(), &uniq("deny"));
    c.send(&pkt::subscribe(V5, 1, &[], &[("test/nosubscribe", 0)]));
    c.recv_suback();
    let (mut p, _) = RawClient::connect_v5(b.addr(), &uniq("denyp"));
    p.publish_complete("test/nosubscribe", 1, false, 1, b"x");
    c.expect_silence();
}

// --- server_keep_alive_s = 60 ---

#[test]
fn profile_server_keep_alive_sent_in_connack() {
    let b = broker();
    let (_c, ack) = RawClient::connect_v5_with(b.addr(), &Connect::v5(&uniq("ska")).keepalive(120));
    assert_eq!(
        ack.props.two(0x13),
        Some(60),
        "Server Keep Alive in CONNACK: {:?}",
        ack.props
    );
}

/// The same run serves a shorter v5 keepalive as asked (no Server Keep Alive, so the
/// client's will is not delayed to 60 s) ...
#[test]
fn profile_short_v5_keep_alive_is_kept() {
    let b = broker();
    let (mut c, ack) =
        RawClient::connect_v5_with(b.addr(), &Connect::v5(&uniq("ska2")).keepalive(2));
    assert_eq!(
        ack.props.two(0x13),
        None,
        "CONNACK properties: {:?}",
        ack.props
    );
    // Enforced at 1.5 × 2 s: a silent client is closed long before 60 s.
    c.expect_disconnect_v5(&[0x8D]);
}

/// ... and a 3.1.1 client with keepalive 0 (none) is accepted, not refused.
#[test]
fn profile_v311_keep_alive_zero_is_accepted() {
    let b = broker();
    let (mut c, ack) = RawClient::connect_with(b.addr(), &Connect::v311(&uniq("ka0")).keepalive(0));
    assert_eq!(ack.raw, vec![0x20, 0x02, 0x00, 0x00], "CONNACK");
    c.ping();
}

// --- receive_maximum = 2 ---

#[test]
fn profile_receive_maximum_advertised() {
    let b = broker();
    let (_c, ack) = RawClient::connect_v5(b.addr(), &uniq("rm"));
    assert_eq!(
        ack.props.two(0x21),
        Some(2),
        "Receive Maximum in CONNACK: {:?}",
        ack.props
    );
}

#[test]
fn profile_receive_maximum_exceeded_disconnects_0x93() {
    // Mosquitto deviates: it answers the third with PUBREC 0x97 (quota exceeded).
    let b = broker();
    let mut by = Bystander::new(b.addr(), V5);
    let (mut c, _) = RawClient::connect_v5(b.addr(), &uniq("rmx"));
    let t = format!("rmx/{}", uniq("t"));
    for pid in 1..=2u16 {
        c.send(&pkt::publish(V5, &t, 2, false, false, pid, &[], b"x"));
        c.expect_ack(5, pid, true);
    }
    c.send(&pkt::publish(V5, &t, 2, false, false, 3, &[], b"x"));
    c.expect_disconnect_v5(&[0x93]);
    by.check();
}

#[test]
fn profile_receive_maximum_frees_slot_after_pubcomp() {
    let b = broker();
    let (mut c, _) = RawClient::connect_v5(b.addr(), &uniq("rmf"));
    let t = format!("rmf/{}", uniq("t"));
    for pid in 1..=6u16 {
        c.publish_complete(&t, 2, false, pid, b"x");
    }
    c.ping();
}

// --- max_packet_size = 256 ---

#[test]
fn profile_maximum_packet_size_advertised() {
    let b = broker();
    let (_c, ack) = RawClient::connect_v5(b.addr(), &uniq("mps"));
    assert_eq!(
        ack.props.four(0x27),
        Some(256),
        "Maximum Packet Size in CONNACK: {:?}",
        ack.props
    );
}

#[test]
fn profile_packet_too_large_v5_disconnects_0x95() {
    let b = broker();
    let mut by = Bystander::new(b.addr(), V5);
    let (mut c, _) = RawClient::connect_v5(b.addr(), &uniq("big5"));
    let t = format!("big/{}", uniq("t"));
    // 256 bytes in total is allowed...
    let fit = qos1_publish_of_len(&t, 1, 256);
    c.send(&fit);
    c.expect_ack(4, 1, true);
    // ...257 is not (MQTT-3.2.2-? / 3.2.2.3.6: Protocol Error, DISCONNECT 0x95).
    let over = qos1_publish_of_len(&t, 2, 257);
    c.send_lenient(&over);
    c.expect_disconnect_v5(&[0x95]);
    by.check();
}

#[test]
fn profile_packet_too_large_v311_closes() {
    let b = broker();
    let mut by = Bystander::new(b.addr(), V311);
    let mut c = RawClient::connect_v311(b.addr(), &uniq("big3"));
    c.send_lenient(&pkt::publish(
        V311,
        "big/x",
        0,
        false,
        false,
        0,
        &[],
        &[b'a'; 400],
    ));
    c.expect_closed();
    by.check();
}

#[test]
fn profile_oversize_outgoing_not_sent_to_small_client() {
    // A client's own Maximum Packet Size below the server's also holds.
    let b = broker();
    let conn = Connect::v5(&uniq("small")).props(&pkt::p_u32(0x27, 40));
    let (mut s, _) = RawClient::connect_v5_with(b.addr(), &conn);
    let t = format!("sm/{}", uniq("t"));
    s.subscribe_ok(1, &t, 0);
    let (mut p, _) = RawClient::connect_v5(b.addr(), &uniq("smp"));
    p.publish_complete(&t, 0, false, 0, &[b'z'; 100]);
    p.publish_complete(&t, 0, false, 0, b"ok");
    assert_eq!(s.recv_publish().payload, b"ok");
}

// --- topic_alias_maximum = 2 ---

#[test]
fn profile_topic_alias_maximum_advertised() {
    let b = broker();
    let (_c, ack) = RawClient::connect_v5(b.addr(), &uniq("tam"));
    assert_eq!(
        ack.props.two(0x22),
        Some(2),
        "Topic Alias Maximum in CONNACK: {:?}",
        ack.props
    );
}

#[test]
fn profile_topic_alias_2_works_3_is_invalid() {
    let b = broker();
    let mut by = Bystander::new(b.addr(), V5);
    let (mut s, _) = RawClient::connect_v5(b.addr(), &uniq("tas"));
    let t = format!("ta/{}", uniq("t"));
    s.subscribe_ok(1, &t, 0);
    let (mut c, _) = RawClient::connect_v5(b.addr(), &uniq("ta"));
    c.send(&pkt::publish(
        V5,
        &t,
        0,
        false,
        false,
        0,
        &p_u16(0x23, 2),
        b"set",
    ));
    c.send(&pkt::publish(
        V5,
        "",
        0,
        false,
        false,
        0,
        &p_u16(0x23, 2),
        b"use",
    ));
    assert_eq!(s.recv_publish().payload, b"set");
    let m = s.recv_publish();
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        (t.as_str(), &b"use"[..])
    );
    c.send(&pkt::publish(
        V5,
        &t,
        0,
        false,
        false,
        0,
        &p_u16(0x23, 3),
        b"bad",
    ));
    c.expect_disconnect_v5(&[0x94]);
    by.check();
}
