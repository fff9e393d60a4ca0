//! MQTT 5.0 conformance over raw sockets, one test per normative statement (ids
//! "MQTT-x.y.z-n" of the OASIS 5.0 spec appear in each test's name as `mqtt_x_y_z_n_...`;
//! where a behaviour has no numbered statement the section number is used).
//!
//! Server-side errors after CONNACK must produce a DISCONNECT with the right reason code
//! (4.13) and then a close; during CONNECT the server MAY send a refusing CONNACK (then
//! its code is checked) and MUST close. Every malformed-packet test also proves that two
//! clients connected before are unaffected ([`Bystander`]).
//!
//! Each test starts its own broker with two shards (or uses `RINGMQ_TEST_ADDR`).
//!
//! This file holds the shared helpers and 3.1 CONNECT / 3.2 CONNACK; beside it
//! `errors` (4.13), `pubsub` (subscriptions, QoS, retained, will, flow control) and
//! `features` (subscription ids, no local, shared, request/response, topics).

#[path = "../support/mod.rs"]
mod support;

mod errors;
mod features;
mod pubsub;

use std::time::Duration;

use support::pkt::{self, opts, p_bin, p_pair, p_str, p_u16, p_u32, p_u8, p_var, Connect, Will};
use support::*;

fn c5(addr: &str, tag: &str) -> RawClient {
    RawClient::connect_v5(addr, &uniq(tag)).0
}

fn publish_props(
    c: &mut RawClient,
    topic: &str,
    qos: u8,
    retain: bool,
    pid: u16,
    props: &[u8],
    payload: &[u8],
) {
    c.send(&pkt::publish(
        V5, topic, qos, retain, false, pid, props, payload,
    ));
    c.complete_publish_flow(qos, pid);
}

fn subscribe_v5(c: &mut RawClient, pid: u16, props: &[u8], filters: &[(&str, u8)]) -> SubAck {
    c.send(&pkt::subscribe(V5, pid, props, filters));
    let f = c.recv_suback();
    let ack = SubAck::parse(V5, &f);
    assert_eq!(ack.pid, pid, "SUBACK packet id: {f:?}");
    ack
}

fn sub_ok(c: &mut RawClient, filter: &str, o: u8) {
    let ack = subscribe_v5(c, 1, &[], &[(filter, o)]);
    assert_eq!(ack.codes, vec![o & 3], "SUBACK for {filter}");
}

/// `bad` sent on an established 5.0 connection: DISCONNECT with one of `codes`, close,
/// bystanders unaffected.
fn assert_violation(bad: &[u8], codes: &[u8]) {
    let b = Broker::two_shards();
    let mut by = Bystander::new(b.addr(), V5);
    let mut c = c5(b.addr(), "bad");
    c.send(bad);
    c.expect_disconnect_v5(codes);
    by.check();
}

/// A bad CONNECT: refusing CONNACK with one of `codes` (optional) and close.
fn assert_connect_refused(bad: &[u8], codes: &[u8]) {
    let b = Broker::two_shards();
    let mut by = Bystander::new(b.addr(), V5);
    let mut c = RawClient::connect(b.addr());
    c.version = V5;
    c.send(bad);
    c.expect_connack_error_or_close_v5(codes);
    by.check();
}

fn persistent(id: &str, expiry_s: u32) -> Connect {
    Connect::v5(id).clean(false).props(&p_u32(0x11, expiry_s))
}

// ----------------------------------------------------------------------------------
// 3.1 CONNECT / 3.2 CONNACK
// ----------------------------------------------------------------------------------

#[test]
fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    let b = Broker::two_shards();
    let mut by = Bystander::new(b.addr(), V5);
    let mut c = RawClient::connect(b.addr());
    c.send_hex("c0 00");
    c.expect_closed();
    by.check();
}

#[test]
fn mqtt_3_1_0_2_second_connect_is_protocol_error() {
    // Mosquitto 2.0.11 deviates: it closes without a DISCONNECT.
    let b = Broker::two_shards();
    let mut by = Bystander::new(b.addr(), V5);
    let id = uniq("twice");
    let (mut c, _) = RawClient::connect_v5(b.addr(), &id);
    c.send(&Connect::v5(&id).bytes());
    c.expect_disconnect_v5(&[0x82]);
    by.check();
}

#[test]
fn mqtt_3_1_2_1_bad_protocol_name_is_refused() {
    let mut conn = Connect::v5(&uniq("name"));
    conn.protocol_name = b"MQTX".to_vec();
    // Which code is sent, if any, is open: unsupported version or malformed/protocol error.
    assert_connect_refused(&conn.bytes(), &[0x81, 0x82, 0x84]);
}

#[test]
fn mqtt_3_1_2_3_reserved_connect_flag_is_malformed() {
    let mut conn = Connect::v5(&uniq("rsv"));
    conn.reserved_flag = true;
    assert_connect_refused(&conn.bytes(), &[0x81]);
}

#[test]
fn mqtt_3_1_2_11_will_qos_without_will_flag_is_malformed() {
    let mut conn = Connect::v5(&uniq("wq"));
    conn.stray_will_bits = 0x10;
    assert_connect_refused(&conn.bytes(), &[0x81]);
}

#[test]
fn mqtt_3_1_2_12_will_qos_3_is_malformed() {
    let mut w = Will::new("will/q3", b"x");
    w.qos = 3;
    assert_connect_refused(&Connect::v5(&uniq("wq3")).will(w).bytes(), &[0x81]);
}

#[test]
fn mqtt_3_1_2_22_receive_maximum_0_is_protocol_error() {
    let conn = Connect::v5(&uniq("rm0")).props(&p_u16(0x21, 0));
    assert_connect_refused(&conn.bytes(), &[0x82]);
}

#[test]
fn mqtt_3_1_2_24_maximum_packet_size_0_is_protocol_error() {
    let conn = Connect::v5(&uniq("mps0")).props(&p_u32(0x27, 0));
    assert_connect_refused(&conn.bytes(), &[0x82]);
}

#[test]
fn mqtt_2_2_2_2_duplicate_connect_property_is_protocol_error() {
    let conn = Connect::v5(&uniq("dup"))
        .props(&p_u32(0x11, 10))
        .props(&p_u32(0x11, 20));
    assert_connect_refused(&conn.bytes(), &[0x82]);
}

#[test]
fn mqtt_2_2_2_2_property_not_allowed_on_connect_is_malformed() {
    // 0x23 Topic Alias belongs to PUBLISH only.
    let conn = Connect::v5(&uniq("prop")).props(&p_u16(0x23, 1));
    assert_connect_refused(&conn.bytes(), &[0x81]);
}

#[test]
fn mqtt_3_1_3_5_utf8_client_id_accepted() {
    let b = Broker::two_shards();
    let (c, ack) = RawClient::connect_v5(b.addr(), &format!("{}-é", uniq("utf")));
    assert!(!ack.session_present);
    c.disconnect();
}

#[test]
fn mqtt_3_1_2_9_password_without_username_is_allowed_in_v5() {
    let b = Broker::two_shards();
    let mut conn = Connect::v5(&uniq("pw"));
    conn.password = Some(b"token".to_vec());
    let (mut c, _) = RawClient::connect_v5_with(b.addr(), &conn);
    c.ping();
}

#[test]
fn mqtt_3_2_2_16_empty_client_id_gets_assigned_identifier() {
    let b = Broker::two_shards();
    let (mut a, ack_a) = RawClient::connect_v5(b.addr(), "");
    let id_a = ack_a
        .props
        .str(0x12)
        .expect("MQTT-3.2.2-16: Assigned Client Identifier missing")
        .to_string();
    assert!(!id_a.is_empty());
    let (mut c, ack_c) = RawClient::connect_v5(b.addr(), "");
    let id_c = ack_c
        .props
        .str(0x12)
        .expect("Assigned Client Identifier missing")
        .to_string();
    assert_ne!(id_a, id_c, "two clients were assigned the same identifier");
    a.ping();
    c.ping();
}

#[test]
fn mqtt_3_2_2_16_assigned_identifier_decodes_with_codec() {
    // The same CONNACK read through ringmq::protocol (exercises the codec on a real peer).
    let b = Broker::two_shards();
    let mut c = RawClient::connect(b.addr());
    c.version = V5;
    c.send(&Connect::v5("").bytes());
    match c.recv_packet(V5) {
        ringmq::protocol::Packet::ConnAck(ack) => {
            assert_eq!(ack.code, ringmq::protocol::ReasonCode::Success);
            assert!(!ack.session_present);
            let id = ack
                .properties
                .assigned_client_identifier
                .clone()
                .expect("assigned client identifier");
            assert!(!id.is_empty());
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn mqtt_3_2_2_connack_properties_are_consistent() {
    let b = Broker::two_shards();
    let (_c, ack) = RawClient::connect_v5(b.addr(), &uniq("props"));
    if let Some(rm) = ack.props.two(0x21) {
        assert!(rm > 0, "Receive Maximum 0 is a protocol error");
    }
    if let Some(q) = ack.props.byte(0x24) {
        assert!(q <= 1, "Maximum QoS may only be 0 or 1 when sent");
    }
    for id in [0x25, 0x28, 0x29, 0x2A] {
        if let Some(v) = ack.props.byte(id) {
            assert!(v <= 1, "property {id:#04x} must be 0 or 1, got {v}");
        }
    }
    if let Some(m) = ack.props.four(0x27) {
        assert!(m > 0);
    }
}

#[test]
fn mqtt_3_2_2_2_session_present_with_session_expiry() {
    let b = Broker::two_shards();
    let id = uniq("sp");
    let (c, ack) = RawClient::connect_v5_with(b.addr(), &persistent(&id, 60));
    assert!(!ack.session_present, "no session existed yet");
    c.disconnect();
    let (c, ack) = RawClient::connect_v5_with(b.addr(), &persistent(&id, 60));
    assert!(ack.session_present, "MQTT-3.2.2-3: stored session resumed");
    c.disconnect();
    let (c, ack) = RawClient::connect_v5_with(b.addr(), &Connect::v5(&id).props(&p_u32(0x11, 60)));
    assert!(
        !ack.session_present,
        "MQTT-3.2.2-2: clean start 1 discards the session"
    );
    c.disconnect();
}

#[test]
fn mqtt_3_1_2_23_session_expiry_0_ends_session_at_disconnect() {
    let b = Broker::two_shards();
    let id = uniq("se0");
    let (c, _) = RawClient::connect_v5_with(b.addr(), &Connect::v5(&id).clean(false));
    c.disconnect();
    let (_c, ack) = RawClient::connect_v5_with(b.addr(), &Connect::v5(&id).clean(false));
    assert!(!ack.session_present);
}

#[test]
fn mqtt_3_1_2_23_session_expires_after_interval() {
    let b = Broker::two_shards();
    let id = uniq("se1");
    let (c, _) = RawClient::connect_v5_with(b.addr(), &persistent(&id, 1));
    c.disconnect();
    // Well past the 1 s expiry.
    std::thread::sleep(Duration::from_millis(3000));
    let (_c, ack) = RawClient::connect_v5_with(b.addr(), &persistent(&id, 1));
    assert!(!ack.session_present, "session outlived its expiry interval");
}

#[test]
fn mqtt_3_14_2_disconnect_can_shorten_session_expiry_to_0() {
    let b = Broker::two_shards();
    let id = uniq("sed");
    let (mut c, _) = RawClient::connect_v5_with(b.addr(), &persistent(&id, 60));
    c.send(&pkt::disconnect_v5(0x00, &p_u32(0x11, 0)));
    c.expect_closed();
    let (_c, ack) = RawClient::connect_v5_with(b.addr(), &persistent(&id, 60));
    assert!(
        !ack.session_present,
        "DISCONNECT set the session expiry to 0"
    );
}

#[test]
fn mqtt_3_14_2_2_session_expiry_on_disconnect_after_0_is_protocol_error() {
    let b = Broker::two_shards();
    let mut by = Bystander::new(b.addr(), V5);
    let mut c = c5(b.addr(), "sedp");
    c.send(&pkt::disconnect_v5(0x00, &p_u32(0x11, 30)));
    c.expect_disconnect_v5(&[0x82]);
    by.check();
}

#[test]
fn mqtt_3_1_2_5_session_resumed_with_queued_messages() {
    let b = Broker::two_shards();
    let id = uniq("pers");
    let t = format!("pers/{}", uniq("t"));
    let (mut s, _) = RawClient::connect_v5_with(b.addr(), &persistent(&id, 60));
    sub_ok(&mut s, &t, 1);
    s.disconnect();
    let mut p = c5(b.addr(), "persp");
    p.publish_complete(&t, 1, false, 1, b"while away");
    let (mut s, ack) = RawClient::connect_v5_with(b.addr(), &persistent(&id, 60));
    assert!(ack.session_present);
    let m = s.recv_publish_ack();
    assert_eq!(
        (m.topic.as_str(), m.qos, &m.payload[..]),
        (t.as_str(), 1, &b"while away"[..])
    );
}

#[test]
fn mqtt_3_1_4_3_takeover_sends_disconnect_0x8e() {
    // Mosquitto 2.0.11 deviates: it closes the old connection without DISCONNECT 0x8E.
    let b = Broker::two_shards();
    let id = uniq("take");
    let (mut first, _) = RawClient::connect_v5(b.addr(), &id);
    let (mut second, _) = RawClient::connect_v5(b.addr(), &id);
    first.expect_disconnect_v5(&[0x8e]);
    second.ping();
}

#[test]
fn mqtt_3_1_2_22_keepalive_timeout_closes() {
    let b = Broker::two_shards();
    let mut by = Bystander::new(b.addr(), V5);
    let (mut c, _) = RawClient::connect_v5_with(b.addr(), &Connect::v5(&uniq("ka")).keepalive(1));
    // The server may say why (DISCONNECT 0x8D) before closing; it must close within
    // 1.5 x keepalive (+ generous slack: only the close is asserted).
    match c.read_frame_within(Duration::from_secs(10)) {
        ReadOutcome::Closed => {}
        ReadOutcome::Frame(f) => {
            assert_eq!(
                f.first, 0xe0,
                "only a DISCONNECT may precede the close: {f:?}"
            );
            assert_eq!(
                f.body.first(),
                Some(&0x8d),
                "keepalive DISCONNECT reason: {f:?}"
            );
            c.expect_closed();
        }
        ReadOutcome::Timeout => panic!("connection with keepalive 1 s still open after 10 s"),
    }
    by.check();
}
