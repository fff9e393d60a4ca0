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

mod support;

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

// ----------------------------------------------------------------------------------
// Malformed packets and protocol errors after CONNACK (4.13)
// ----------------------------------------------------------------------------------

#[test]
fn mqtt_2_1_3_1_publish_qos_3_is_malformed() {
    assert_violation(&hex("36 08 00 03 61 2f 62 00 01 00"), &[0x81]);
}

#[test]
fn mqtt_1_5_5_remaining_length_over_4_bytes_is_malformed() {
    // Mosquitto 2.0.11 deviates: it closes without a DISCONNECT (4.13 lets a server skip it; ringmq sends one).
    assert_violation(&hex("30 ff ff ff ff 7f"), &[0x81]);
}

#[test]
fn mqtt_2_1_2_packet_type_0_is_malformed() {
    assert_violation(&hex("00 00"), &[0x81, 0x82]);
}

#[test]
fn mqtt_2_1_3_1_subscribe_reserved_flags_are_malformed() {
    assert_violation(&hex("80 09 00 01 00 00 03 61 2f 62 00"), &[0x81]);
}

#[test]
fn mqtt_2_1_3_1_pubrel_reserved_flags_are_malformed() {
    // Mosquitto 2.0.11 deviates: it closes without a DISCONNECT.
    assert_violation(&hex("60 02 00 01"), &[0x81]);
}

#[test]
fn mqtt_1_5_4_1_invalid_utf8_topic_is_malformed() {
    assert_violation(&hex("30 07 00 02 c3 28 00 78 79"), &[0x81]);
}

#[test]
fn mqtt_1_5_4_2_null_character_in_topic_is_malformed() {
    assert_violation(&hex("30 08 00 03 61 00 62 00 78 79"), &[0x81]);
}

#[test]
fn mqtt_3_3_2_2_publish_topic_with_wildcard_is_refused() {
    // Malformed, protocol error or 0x90 Topic Name invalid are all defensible codes.
    assert_violation(
        &pkt::publish(V5, "a/#", 0, false, false, 0, &[], b"x"),
        &[0x81, 0x82, 0x90],
    );
}

#[test]
fn mqtt_2_2_1_3_publish_qos1_packet_id_0_is_refused() {
    assert_violation(
        &pkt::publish(V5, "pid/zero", 1, false, false, 0, &[], b"x"),
        &[0x81, 0x82],
    );
}

#[test]
fn mqtt_3_3_1_2_dup_on_qos0_is_refused() {
    // Mosquitto 2.0.11 deviates: it accepts DUP=1 on QoS 0.
    assert_violation(
        &pkt::publish(V5, "dup/zero", 0, false, true, 0, &[], b"x"),
        &[0x81, 0x82],
    );
}

#[test]
fn mqtt_3_8_3_2_subscribe_without_filters_is_protocol_error() {
    // Mosquitto 2.0.11 deviates: it sends 0x81.
    assert_violation(&hex("82 03 00 01 00"), &[0x82]);
}

#[test]
fn mqtt_3_10_3_2_unsubscribe_without_filters_is_protocol_error() {
    // Mosquitto 2.0.11 deviates: it sends 0x81; the spec calls an empty UNSUBSCRIBE a Protocol Error (0x82).
    assert_violation(&hex("a2 03 00 01 00"), &[0x82]);
}

#[test]
fn mqtt_3_8_3_5_subscription_option_reserved_bits_are_malformed() {
    assert_violation(&pkt::subscribe(V5, 1, &[], &[("a/b", 0x40)]), &[0x81]);
}

#[test]
fn mqtt_3_8_3_1_retain_handling_3_is_protocol_error() {
    // Mosquitto 2.0.11 deviates: it sends 0x81.
    assert_violation(
        &pkt::subscribe(V5, 1, &[], &[("a/b", opts(0, false, false, 3))]),
        &[0x82],
    );
}

#[test]
fn mqtt_3_8_3_1_subscription_qos_3_is_malformed() {
    assert_violation(&pkt::subscribe(V5, 1, &[], &[("a/b", 0x03)]), &[0x81]);
}

#[test]
fn mqtt_3_8_3_4_no_local_on_shared_subscription_is_protocol_error() {
    // Mosquitto 2.0.11 deviates: it grants the subscription.
    assert_violation(
        &pkt::subscribe(V5, 1, &[], &[("$share/g/a/b", opts(0, true, false, 0))]),
        &[0x82],
    );
}

#[test]
fn mqtt_3_8_2_1_2_subscription_identifier_0_is_protocol_error() {
    // Mosquitto 2.0.11 deviates: it sends 0x81.
    assert_violation(
        &pkt::subscribe(V5, 1, &p_var(0x0b, 0), &[("a/b", 0)]),
        &[0x82],
    );
}

#[test]
fn mqtt_3_3_4_6_publish_from_client_with_subscription_identifier_is_protocol_error() {
    // Mosquitto 2.0.11 deviates: it accepts it.
    assert_violation(
        &pkt::publish(V5, "a/b", 0, false, false, 0, &p_var(0x0b, 5), b"x"),
        &[0x82],
    );
}

#[test]
fn mqtt_2_2_2_2_duplicate_publish_property_is_protocol_error() {
    // Mosquitto 2.0.11 deviates: it closes without a DISCONNECT.
    let props = [p_u8(0x01, 1), p_u8(0x01, 1)].concat();
    assert_violation(
        &pkt::publish(V5, "a/b", 0, false, false, 0, &props, b"x"),
        &[0x82],
    );
}

#[test]
fn mqtt_2_2_2_2_property_not_allowed_on_publish_is_malformed() {
    // 0x11 Session Expiry Interval is not a PUBLISH property.
    assert_violation(
        &pkt::publish(V5, "a/b", 0, false, false, 0, &p_u32(0x11, 1), b"x"),
        &[0x81],
    );
}

#[test]
fn mqtt_4_12_0_auth_without_authentication_method_is_protocol_error() {
    // Mosquitto 2.0.11 deviates: it closes without a DISCONNECT.
    assert_violation(&hex("f0 02 18 00"), &[0x82]);
}

#[test]
fn mqtt_3_3_2_8_topic_alias_0_is_invalid() {
    // Mosquitto 2.0.11 deviates: it sends 0x81; 3.3.4 says 0x94.
    assert_violation(
        &pkt::publish(V5, "a/b", 0, false, false, 0, &p_u16(0x23, 0), b"x"),
        &[0x94],
    );
}

#[test]
fn mqtt_3_3_2_10_topic_alias_above_maximum_is_invalid() {
    let b = Broker::two_shards();
    let mut by = Bystander::new(b.addr(), V5);
    let (mut c, ack) = RawClient::connect_v5(b.addr(), &uniq("alias"));
    let max = ack.props.two(0x22).unwrap_or(0);
    c.send(&pkt::publish(
        V5,
        "a/b",
        0,
        false,
        false,
        0,
        &p_u16(0x23, max.saturating_add(1).max(1)),
        b"x",
    ));
    c.expect_disconnect_v5(&[0x94]);
    by.check();
}

#[test]
fn mqtt_3_3_4_unknown_topic_alias_with_empty_topic_is_protocol_error() {
    let b = Broker::two_shards();
    let mut by = Bystander::new(b.addr(), V5);
    let (mut c, ack) = RawClient::connect_v5(b.addr(), &uniq("alias"));
    let max = ack.props.two(0x22).unwrap_or(0);
    assert!(
        max >= 1,
        "ringmq advertises a Topic Alias Maximum by default (64)"
    );
    c.send(&pkt::publish(
        V5,
        "",
        0,
        false,
        false,
        0,
        &p_u16(0x23, 1),
        b"x",
    ));
    c.expect_disconnect_v5(&[0x82]);
    by.check();
}

#[test]
fn mqtt_3_3_2_9_topic_alias_from_client_is_resolved() {
    let b = Broker::two_shards();
    let mut s = c5(b.addr(), "tas");
    let (mut p, ack) = RawClient::connect_v5(b.addr(), &uniq("tap"));
    assert!(
        ack.props.two(0x22).unwrap_or(0) >= 1,
        "no Topic Alias Maximum in CONNACK"
    );
    let t = format!("alias/{}", uniq("t"));
    sub_ok(&mut s, &t, 1);
    publish_props(&mut p, &t, 1, false, 1, &p_u16(0x23, 1), b"first");
    publish_props(&mut p, "", 1, false, 2, &p_u16(0x23, 1), b"second");
    // The subscriber set no Topic Alias Maximum: the server must send the full topic
    // and no alias (MQTT-3.3.2-12 ... -3.3.2-14).
    for want in [&b"first"[..], b"second"] {
        let f = s.recv_frame();
        let m = PublishMsg::parse(V5, &f);
        assert_eq!(
            to_hex(&f.raw),
            to_hex(&pkt::forwarded(V5, &t, 1, m.pid, want))
        );
        s.send(&pkt::ack(4, m.pid));
    }
}

#[test]
fn mqtt_3_3_4_7_receive_maximum_exceeded_is_0x93() {
    // Mosquitto 2.0.11 deviates: it answers PUBREC 0x97 instead of DISCONNECT 0x93.
    let b = Broker::two_shards();
    let mut by = Bystander::new(b.addr(), V5);
    let (mut c, ack) = RawClient::connect_v5(b.addr(), &uniq("rmx"));
    let rm = ack.props.two(0x21).unwrap_or(65535);
    let t = format!("rmx/{}", uniq("t"));
    // QoS 2 PUBLISHes count against Receive Maximum until PUBCOMP: never send PUBREL.
    let mut burst = Vec::new();
    for pid in 1..=u32::from(rm) + 1 {
        burst.extend_from_slice(&pkt::publish(
            V5,
            &t,
            2,
            false,
            false,
            pid as u16,
            &[],
            b"x",
        ));
    }
    c.send_lenient(&burst);
    for pid in 1..=rm {
        let f = c.recv_frame();
        assert_eq!(f.first, 0x50, "PUBREC {pid} expected, got {f:?}");
        assert_eq!(f.u16_at(0), pid);
    }
    c.expect_disconnect_v5(&[0x93]);
    by.check();
}

// ----------------------------------------------------------------------------------
// 3.8 SUBSCRIBE / 3.9 SUBACK / 3.10 UNSUBSCRIBE / 3.11 UNSUBACK
// ----------------------------------------------------------------------------------

#[test]
fn mqtt_3_9_3_suback_reason_code_per_filter() {
    let b = Broker::two_shards();
    let mut c = c5(b.addr(), "suba");
    let u = uniq("f");
    let (f0, f1, f2) = (format!("{u}/a"), format!("{u}/b"), format!("{u}/+/c"));
    let ack = subscribe_v5(&mut c, 10, &[], &[(&f0, 0), (&f1, 1), (&f2, 2)]);
    assert_eq!(ack.codes, vec![0, 1, 2]);
}

#[test]
fn mqtt_3_9_3_invalid_filter_gets_0x8f_per_filter() {
    // Mosquitto 2.0.11 deviates: it ends the connection on an invalid filter.
    let b = Broker::two_shards();
    let mut c = c5(b.addr(), "subbad");
    let u = uniq("f");
    let (good, bad1, bad2) = (format!("{u}/ok"), format!("{u}/#/x"), format!("{u}/a+"));
    let ack = subscribe_v5(&mut c, 11, &[], &[(&good, 1), (&bad1, 1), (&bad2, 0)]);
    assert_eq!(ack.codes, vec![0x01, 0x8f, 0x8f]);
    c.ping();
}

#[test]
fn mqtt_3_11_3_unsuback_reason_codes() {
    let b = Broker::two_shards();
    let mut c = c5(b.addr(), "unsub");
    let u = uniq("f");
    let (have, none) = (format!("{u}/have"), format!("{u}/none"));
    sub_ok(&mut c, &have, 0);
    c.send(&pkt::unsubscribe(V5, 0x0203, &[], &[&have, &none]));
    let f = c.recv_frame();
    assert_eq!(f.first, 0xb0, "{f:?}");
    let ack = SubAck::parse(V5, &f);
    assert_eq!(ack.pid, 0x0203);
    assert_eq!(ack.codes, vec![0x00, 0x11], "UNSUBACK codes");
}

#[test]
fn mqtt_3_8_4_3_resubscribe_replaces_options() {
    let b = Broker::two_shards();
    let mut s = c5(b.addr(), "resub");
    let mut p = c5(b.addr(), "resubp");
    let t = format!("re/{}", uniq("t"));
    sub_ok(&mut s, &t, 2);
    sub_ok(&mut s, &t, 0);
    p.publish_complete(&t, 1, false, 5, b"once");
    p.publish_complete(&t, 0, false, 0, b"sentinel");
    let m = s.recv_publish();
    assert_eq!((m.qos, &m.payload[..]), (0, &b"once"[..]));
    assert_eq!(s.recv_publish().payload, b"sentinel", "delivered twice");
}

// ----------------------------------------------------------------------------------
// QoS flows, byte-exact
// ----------------------------------------------------------------------------------

#[test]
fn mqtt_4_3_1_qos0_flow_byte_exact() {
    let b = Broker::two_shards();
    let mut s = c5(b.addr(), "q0s");
    let mut p = c5(b.addr(), "q0p");
    let t = format!("q0/{}", uniq("t"));
    sub_ok(&mut s, &t, 0);
    let bytes = pkt::forwarded(V5, &t, 0, 0, b"qos zero");
    p.send(&bytes);
    p.ping();
    s.expect_bytes(&bytes);
}

#[test]
fn mqtt_4_3_2_qos1_flow_byte_exact() {
    let b = Broker::two_shards();
    let mut s = c5(b.addr(), "q1s");
    let mut p = c5(b.addr(), "q1p");
    let t = format!("q1/{}", uniq("t"));
    sub_ok(&mut s, &t, 1);
    p.send(&pkt::forwarded(V5, &t, 1, 7, b"qos one"));
    p.expect_ack(4, 7, true);
    let f = s.recv_frame();
    let m = PublishMsg::parse(V5, &f);
    assert_ne!(m.pid, 0);
    assert_eq!(
        to_hex(&f.raw),
        to_hex(&pkt::forwarded(V5, &t, 1, m.pid, b"qos one"))
    );
    s.send(&pkt::ack(4, m.pid));
    s.ping();
}

#[test]
fn mqtt_4_3_3_qos2_flow_byte_exact() {
    let b = Broker::two_shards();
    let mut s = c5(b.addr(), "q2s");
    let mut p = c5(b.addr(), "q2p");
    let t = format!("q2/{}", uniq("t"));
    sub_ok(&mut s, &t, 2);
    p.send(&pkt::forwarded(V5, &t, 2, 9, b"qos two"));
    p.expect_ack(5, 9, true);
    p.send_hex("62 02 00 09");
    p.expect_ack(7, 9, true);
    let f = s.recv_frame();
    let m = PublishMsg::parse(V5, &f);
    assert_eq!(
        to_hex(&f.raw),
        to_hex(&pkt::forwarded(V5, &t, 2, m.pid, b"qos two"))
    );
    s.send(&pkt::ack(5, m.pid));
    s.expect_ack(6, m.pid, true);
    s.send(&pkt::ack(7, m.pid));
    s.ping();
}

#[test]
fn mqtt_3_4_2_1_puback_no_matching_subscribers_is_success_or_0x10() {
    let b = Broker::two_shards();
    let mut p = c5(b.addr(), "nosub");
    p.send(&pkt::forwarded(
        V5,
        &format!("nobody/{}", uniq("t")),
        1,
        3,
        b"x",
    ));
    let f = p.recv_frame();
    let ack = PubAckV5::parse(&f);
    assert_eq!((f.first, ack.pid), (0x40, 3));
    assert!(
        ack.code == 0x00 || ack.code == 0x10,
        "PUBACK reason {:#04x}",
        ack.code
    );
}

// ----------------------------------------------------------------------------------
// Retained messages and retain options (3.3.1.3, 3.8.3.1)
// ----------------------------------------------------------------------------------

#[test]
fn mqtt_3_3_1_5_retained_set_replace_delete() {
    let b = Broker::two_shards();
    let mut p = c5(b.addr(), "retp");
    let t = format!("ret/{}", uniq("t"));
    p.publish_complete(&t, 1, true, 1, b"first");
    p.publish_complete(&t, 1, true, 2, b"second");
    let mut s = c5(b.addr(), "rets");
    sub_ok(&mut s, &t, 1);
    let m = s.recv_publish_ack();
    assert!(
        m.retain,
        "MQTT-3.3.1-9 context: retained message sent at subscribe has RETAIN 1"
    );
    assert_eq!(m.payload, b"second");
    s.expect_silence();
    // MQTT-3.3.1-6: empty payload deletes.
    p.publish_complete(&t, 1, true, 3, b"");
    let live = s.recv_publish_ack();
    assert_eq!(live.payload, b"");
    let mut s2 = c5(b.addr(), "rets2");
    sub_ok(&mut s2, &t, 1);
    s2.expect_silence();
}

#[test]
fn mqtt_3_3_1_10_retain_handling_0_sends_on_every_subscribe() {
    let b = Broker::two_shards();
    let mut p = c5(b.addr(), "rh0p");
    let t = format!("rh0/{}", uniq("t"));
    p.publish_complete(&t, 0, true, 0, b"r");
    let mut s = c5(b.addr(), "rh0s");
    sub_ok(&mut s, &t, opts(0, false, false, 0));
    assert_eq!(s.recv_publish().payload, b"r");
    sub_ok(&mut s, &t, opts(0, false, false, 0));
    assert_eq!(
        s.recv_publish().payload,
        b"r",
        "retain handling 0 resends on resubscribe"
    );
}

#[test]
fn mqtt_3_3_1_10_retain_handling_1_sends_only_for_new_subscription() {
    let b = Broker::two_shards();
    let mut p = c5(b.addr(), "rh1p");
    let t = format!("rh1/{}", uniq("t"));
    p.publish_complete(&t, 0, true, 0, b"r");
    let mut s = c5(b.addr(), "rh1s");
    sub_ok(&mut s, &t, opts(0, false, false, 1));
    assert_eq!(s.recv_publish().payload, b"r");
    sub_ok(&mut s, &t, opts(0, false, false, 1));
    s.expect_silence();
}

#[test]
fn mqtt_3_3_1_10_retain_handling_2_never_sends() {
    let b = Broker::two_shards();
    let mut p = c5(b.addr(), "rh2p");
    let t = format!("rh2/{}", uniq("t"));
    p.publish_complete(&t, 0, true, 0, b"r");
    let mut s = c5(b.addr(), "rh2s");
    sub_ok(&mut s, &t, opts(0, false, false, 2));
    s.expect_silence();
}

#[test]
fn mqtt_3_3_1_12_and_13_retain_as_published() {
    let b = Broker::two_shards();
    let mut rap = c5(b.addr(), "rap1");
    let mut norap = c5(b.addr(), "rap0");
    let mut p = c5(b.addr(), "rapp");
    let t = format!("rap/{}", uniq("t"));
    sub_ok(&mut rap, &t, opts(0, false, true, 0));
    sub_ok(&mut norap, &t, opts(0, false, false, 0));
    p.publish_complete(&t, 0, true, 0, b"live");
    assert!(
        rap.recv_publish().retain,
        "MQTT-3.3.1-13: RETAIN kept with Retain As Published"
    );
    assert!(
        !norap.recv_publish().retain,
        "MQTT-3.3.1-12: RETAIN 0 without Retain As Published"
    );
}

// ----------------------------------------------------------------------------------
// Will (3.1.2.5, 3.1.3.2)
// ----------------------------------------------------------------------------------

fn will_watcher(addr: &str, topic: &str) -> RawClient {
    let mut w = c5(addr, "wwat");
    sub_ok(&mut w, topic, 1);
    w
}

/// Publishes a sentinel on `topic` and asserts it is the next thing `w` receives.
fn assert_no_will(addr: &str, w: &mut RawClient, topic: &str) {
    let mut p = c5(addr, "wsent");
    p.publish_complete(topic, 1, false, 1, b"sentinel");
    let m = w.recv_publish_ack();
    assert_eq!(m.payload, b"sentinel", "a will was published");
    w.expect_silence();
}

#[test]
fn mqtt_3_1_2_8_will_published_on_socket_drop() {
    let b = Broker::two_shards();
    let wt = format!("will/{}", uniq("t"));
    let mut w = will_watcher(b.addr(), &wt);
    let mut will = Will::new(&wt, b"offline");
    will.qos = 1;
    let (c, _) = RawClient::connect_v5_with(b.addr(), &Connect::v5(&uniq("wdrop")).will(will));
    c.drop_connection();
    let m = w.recv_publish_ack();
    assert_eq!(
        (m.topic.as_str(), m.qos, &m.payload[..]),
        (wt.as_str(), 1, &b"offline"[..])
    );
}

#[test]
fn mqtt_3_1_2_8_will_not_published_on_disconnect_0x00() {
    let b = Broker::two_shards();
    let wt = format!("will/{}", uniq("t"));
    let mut w = will_watcher(b.addr(), &wt);
    let (mut c, _) = RawClient::connect_v5_with(
        b.addr(),
        &Connect::v5(&uniq("wd0")).will(Will::new(&wt, b"no")),
    );
    c.send(&pkt::disconnect_v5(0x00, &[]));
    c.expect_closed();
    assert_no_will(b.addr(), &mut w, &wt);
}

#[test]
fn mqtt_3_14_2_1_will_published_on_disconnect_0x04() {
    let b = Broker::two_shards();
    let wt = format!("will/{}", uniq("t"));
    let mut w = will_watcher(b.addr(), &wt);
    let (mut c, _) = RawClient::connect_v5_with(
        b.addr(),
        &Connect::v5(&uniq("wd4")).will(Will::new(&wt, b"yes")),
    );
    c.send(&pkt::disconnect_v5(0x04, &[]));
    c.expect_closed();
    let m = w.recv_publish_ack();
    assert_eq!(m.payload, b"yes");
}

#[test]
fn mqtt_3_1_3_9_will_delay_cancelled_by_reconnect() {
    let b = Broker::two_shards();
    let wt = format!("will/{}", uniq("t"));
    let mut w = will_watcher(b.addr(), &wt);
    let id = uniq("wdly");
    let mut will = Will::new(&wt, b"delayed");
    will.props = p_u32(0x18, 2);
    let conn = persistent(&id, 60).will(will);
    let (c, _) = RawClient::connect_v5_with(b.addr(), &conn);
    c.drop_connection();
    // Reconnect well within the 2 s delay: the will must not be sent.
    let (mut c, ack) = RawClient::connect_v5_with(b.addr(), &persistent(&id, 60));
    assert!(ack.session_present);
    std::thread::sleep(Duration::from_millis(3000));
    assert_no_will(b.addr(), &mut w, &wt);
    c.ping();
}

#[test]
fn mqtt_3_1_3_9_will_delay_elapses_then_published() {
    let b = Broker::two_shards();
    let wt = format!("will/{}", uniq("t"));
    let mut w = will_watcher(b.addr(), &wt);
    let mut will = Will::new(&wt, b"late");
    will.props = p_u32(0x18, 1);
    let (c, _) = RawClient::connect_v5_with(b.addr(), &persistent(&uniq("wdl2"), 60).will(will));
    c.drop_connection();
    let m = w.recv_publish_ack();
    assert_eq!(m.payload, b"late");
}

#[test]
fn mqtt_3_1_3_9_will_sent_when_session_ends_before_delay() {
    // Mosquitto 2.0.11 deviates: it does not publish the will when the session ends before the will delay.
    let b = Broker::two_shards();
    let wt = format!("will/{}", uniq("t"));
    let mut w = will_watcher(b.addr(), &wt);
    let mut will = Will::new(&wt, b"session over");
    // Delay 3600 s but session expiry 0: the will goes when the session ends, now.
    will.props = p_u32(0x18, 3600);
    let (c, _) = RawClient::connect_v5_with(b.addr(), &Connect::v5(&uniq("wse")).will(will));
    c.drop_connection();
    let m = w.recv_publish_ack();
    assert_eq!(m.payload, b"session over");
}

#[test]
fn mqtt_3_1_3_10_will_properties_forwarded() {
    let b = Broker::two_shards();
    let wt = format!("will/{}", uniq("t"));
    let mut w = will_watcher(b.addr(), &wt);
    let mut will = Will::new(&wt, b"{}");
    will.props = [
        p_str(0x03, "application/json"),
        p_str(0x08, "reply/here"),
        p_bin(0x09, b"\x01\x02"),
        p_u8(0x01, 1),
        p_pair("k", "v"),
    ]
    .concat();
    let (c, _) = RawClient::connect_v5_with(b.addr(), &Connect::v5(&uniq("wprop")).will(will));
    c.drop_connection();
    let m = w.recv_publish_ack();
    assert_eq!(m.props.str(0x03), Some("application/json"));
    assert_eq!(m.props.str(0x08), Some("reply/here"));
    assert_eq!(m.props.bin(0x09), Some(&b"\x01\x02"[..]));
    assert_eq!(m.props.byte(0x01), Some(1));
    assert_eq!(
        m.props.user_props(),
        vec![("k".to_string(), "v".to_string())]
    );
}

// ----------------------------------------------------------------------------------
// Flow control and sizes
// ----------------------------------------------------------------------------------

#[test]
fn mqtt_3_3_4_9_server_respects_client_receive_maximum() {
    // Mosquitto 2.0.11 deviates: it sends a third unacknowledged QoS 1 message.
    let b = Broker::two_shards();
    let (mut s, _) =
        RawClient::connect_v5_with(b.addr(), &Connect::v5(&uniq("crm")).props(&p_u16(0x21, 2)));
    let mut p = c5(b.addr(), "crmp");
    let t = format!("crm/{}", uniq("t"));
    sub_ok(&mut s, &t, 1);
    for i in 1..=5u16 {
        p.publish_complete(&t, 1, false, i, format!("m{i}").as_bytes());
    }
    let m1 = s.recv_publish();
    let m2 = s.recv_publish();
    assert_eq!((&m1.payload[..], &m2.payload[..]), (&b"m1"[..], &b"m2"[..]));
    // Two unacknowledged: nothing more may be sent.
    s.expect_silence();
    s.send(&pkt::ack(4, m1.pid));
    assert_eq!(s.recv_publish().payload, b"m3");
    s.expect_silence();
}

#[test]
fn mqtt_3_1_2_25_oversize_message_not_sent_to_client() {
    let b = Broker::two_shards();
    let (mut s, _) = RawClient::connect_v5_with(
        b.addr(),
        &Connect::v5(&uniq("cmps")).props(&p_u32(0x27, 64)),
    );
    let mut p = c5(b.addr(), "cmpsp");
    let t = format!("cmps/{}", uniq("t"));
    sub_ok(&mut s, &t, 1);
    p.publish_complete(&t, 1, false, 1, &[b'x'; 200]);
    p.publish_complete(&t, 1, false, 2, b"small");
    let m = s.recv_publish_ack();
    assert_eq!(
        m.payload, b"small",
        "an oversize packet was sent or the small one lost"
    );
    assert!(m.raw.len() <= 64);
    s.expect_silence();
}

// ----------------------------------------------------------------------------------
// Subscription identifiers, no local, shared subscriptions
// ----------------------------------------------------------------------------------

#[test]
fn mqtt_3_3_4_3_subscription_identifier_returned() {
    let b = Broker::two_shards();
    let mut s = c5(b.addr(), "sid");
    let mut plain = c5(b.addr(), "sidn");
    let mut p = c5(b.addr(), "sidp");
    let t = format!("sid/{}", uniq("t"));
    let ack = subscribe_v5(&mut s, 1, &p_var(0x0b, 7), &[(&t, 0)]);
    assert_eq!(ack.codes, vec![0]);
    sub_ok(&mut plain, &t, 0);
    p.publish_complete(&t, 0, false, 0, b"x");
    assert_eq!(s.recv_publish().props.sub_ids(), vec![7]);
    assert_eq!(plain.recv_publish().props.sub_ids(), Vec::<u32>::new());
}

#[test]
fn mqtt_3_3_4_4_overlapping_subscriptions_carry_all_identifiers() {
    let b = Broker::two_shards();
    let mut s = c5(b.addr(), "sido");
    let mut p = c5(b.addr(), "sidop");
    let u = uniq("t");
    let t = format!("sido/{u}/x");
    subscribe_v5(&mut s, 1, &p_var(0x0b, 7), &[(&format!("sido/{u}/#"), 0)]);
    subscribe_v5(&mut s, 2, &p_var(0x0b, 300), &[(&format!("sido/{u}/+"), 0)]);
    p.publish_complete(&t, 0, false, 0, b"x");
    // Either one message with both identifiers or one message per subscription.
    let first = s.recv_publish().props.sub_ids();
    let mut all = first.clone();
    if first.len() == 1 {
        all.extend(s.recv_publish().props.sub_ids());
    }
    all.sort_unstable();
    assert_eq!(all, vec![7, 300]);
    s.expect_silence();
}

#[test]
fn mqtt_3_8_3_3_no_local() {
    let b = Broker::two_shards();
    let mut c = c5(b.addr(), "nl");
    let mut other = c5(b.addr(), "nlo");
    let t = format!("nl/{}", uniq("t"));
    sub_ok(&mut c, &t, opts(1, true, false, 0));
    c.publish_complete(&t, 1, false, 1, b"mine");
    other.publish_complete(&t, 1, false, 1, b"theirs");
    let m = c.recv_publish_ack();
    assert_eq!(m.payload, b"theirs", "own message echoed despite No Local");
}

#[test]
fn mqtt_4_8_2_shared_subscription_delivers_each_message_to_one_member() {
    let b = Broker::two_shards();
    let u = uniq("t");
    let t = format!("shr/{u}");
    let filter = format!("$share/g{u}/{t}");
    let mut members: Vec<RawClient> = (0..3).map(|_| c5(b.addr(), "shm")).collect();
    for m in &mut members {
        sub_ok(m, &filter, 1);
    }
    let mut all = c5(b.addr(), "shall");
    sub_ok(&mut all, &t, 1);
    let mut p = c5(b.addr(), "shp");
    const N: u16 = 30;
    for i in 1..=N {
        p.publish_complete(&t, 1, false, i, format!("{i}").as_bytes());
    }
    // The non-shared subscriber gets every message.
    for i in 1..=N {
        assert_eq!(all.recv_publish_ack().payload, format!("{i}").as_bytes());
    }
    // Then each message reached exactly one member of the group.
    let mut got: Vec<u16> = Vec::new();
    while got.len() < N as usize {
        let mut progressed = false;
        for m in &mut members {
            if let ReadOutcome::Frame(f) = m.read_frame_within(Duration::from_millis(200)) {
                assert_eq!(f.ptype(), 3, "{f:?}");
                let msg = PublishMsg::parse(V5, &f);
                m.ack_received(&msg);
                got.push(std::str::from_utf8(&msg.payload).unwrap().parse().unwrap());
                progressed = true;
            }
        }
        assert!(
            progressed,
            "group stalled after {} of {N} messages: {got:?}",
            got.len()
        );
    }
    got.sort_unstable();
    assert_eq!(got, (1..=N).collect::<Vec<_>>());
    for m in &mut members {
        m.expect_silence();
    }
}

#[test]
fn mqtt_4_8_2_shared_subscription_gets_no_retained_on_subscribe() {
    // Mosquitto 2.0.11 deviates: it sends the retained message to the shared subscriber.
    // 4.8.2: retained messages are not sent to a session subscribing to a shared subscription.
    let b = Broker::two_shards();
    let u = uniq("t");
    let t = format!("shr/{u}");
    let mut p = c5(b.addr(), "shrp");
    p.publish_complete(&t, 1, true, 1, b"retained");
    let mut m = c5(b.addr(), "shrm");
    sub_ok(&mut m, &format!("$share/g{u}/{t}"), 1);
    m.expect_silence();
}

// ----------------------------------------------------------------------------------
// Request / response, content properties (3.3.2.3)
// ----------------------------------------------------------------------------------

#[test]
fn mqtt_3_3_2_passthrough_of_application_properties() {
    let b = Broker::two_shards();
    let mut s = c5(b.addr(), "rrs");
    let mut p = c5(b.addr(), "rrp");
    let t = format!("rr/{}", uniq("t"));
    sub_ok(&mut s, &t, 1);
    let props = [
        p_u8(0x01, 1),
        p_str(0x08, "resp/topic"),
        p_bin(0x09, b"\x00corr\xff"),
        p_pair("a", "1"),
        p_pair("a", "2"),
        p_pair("b", "3"),
        p_str(0x03, "text/plain"),
    ]
    .concat();
    publish_props(&mut p, &t, 1, false, 4, &props, "héllo".as_bytes());
    let m = s.recv_publish_ack();
    assert_eq!(m.payload, "héllo".as_bytes());
    assert_eq!(
        m.props.byte(0x01),
        Some(1),
        "MQTT-3.3.2-4: payload format indicator"
    );
    assert_eq!(
        m.props.str(0x08),
        Some("resp/topic"),
        "MQTT-3.3.2-15: response topic"
    );
    assert_eq!(
        m.props.bin(0x09),
        Some(&b"\x00corr\xff"[..]),
        "MQTT-3.3.2-16: correlation data"
    );
    assert_eq!(
        m.props.str(0x03),
        Some("text/plain"),
        "MQTT-3.3.2-20: content type"
    );
    assert_eq!(
        m.props.user_props(),
        vec![
            ("a".into(), "1".into()),
            ("a".into(), "2".into()),
            ("b".into(), "3".into())
        ],
        "MQTT-3.3.2-17/18: user properties unchanged and in order"
    );
}

#[test]
fn mqtt_3_3_2_passthrough_decoded_by_codec() {
    let b = Broker::two_shards();
    let mut s = c5(b.addr(), "rrcs");
    let mut p = c5(b.addr(), "rrcp");
    let t = format!("rrc/{}", uniq("t"));
    sub_ok(&mut s, &t, 0);
    let props = [p_str(0x08, "resp"), p_bin(0x09, b"id-1"), p_pair("k", "v")].concat();
    publish_props(&mut p, &t, 0, false, 0, &props, b"req");
    match s.recv_packet(V5) {
        ringmq::protocol::Packet::Publish(m) => {
            assert_eq!(&m.topic[..], t.as_bytes());
            assert_eq!(&m.payload[..], b"req");
            assert_eq!(m.properties.response_topic.as_deref(), Some(&b"resp"[..]));
            assert_eq!(m.properties.correlation_data.as_deref(), Some(&b"id-1"[..]));
            assert_eq!(m.properties.user_properties.len(), 1);
            assert_eq!(&m.properties.user_properties[0].0[..], b"k");
            assert_eq!(&m.properties.user_properties[0].1[..], b"v");
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[test]
fn mqtt_3_3_2_6_message_expiry_forwarded_and_not_increased() {
    let b = Broker::two_shards();
    let mut s = c5(b.addr(), "mes");
    let mut p = c5(b.addr(), "mep");
    let t = format!("me/{}", uniq("t"));
    sub_ok(&mut s, &t, 1);
    publish_props(&mut p, &t, 1, false, 1, &p_u32(0x02, 100), b"x");
    let m = s.recv_publish_ack();
    let left = m
        .props
        .four(0x02)
        .expect("Message Expiry Interval must be forwarded");
    assert!((90..=100).contains(&left), "expiry {left}");
}

#[test]
fn mqtt_3_3_2_5_expired_message_not_delivered() {
    let b = Broker::two_shards();
    let id = uniq("mex");
    let t = format!("mex/{}", uniq("t"));
    let (mut s, _) = RawClient::connect_v5_with(b.addr(), &persistent(&id, 60));
    sub_ok(&mut s, &t, 1);
    s.disconnect();
    let mut p = c5(b.addr(), "mexp");
    publish_props(&mut p, &t, 1, false, 1, &p_u32(0x02, 1), b"expires");
    publish_props(&mut p, &t, 1, false, 2, &[], b"stays");
    std::thread::sleep(Duration::from_millis(2500));
    let (mut s, ack) = RawClient::connect_v5_with(b.addr(), &persistent(&id, 60));
    assert!(ack.session_present);
    let m = s.recv_publish_ack();
    assert_eq!(m.payload, b"stays", "an expired message was delivered");
}

// ----------------------------------------------------------------------------------
// 4.7 Topic names and filters
// ----------------------------------------------------------------------------------

#[test]
fn mqtt_4_7_2_1_wildcards_do_not_match_dollar_topics() {
    let b = Broker::two_shards();
    let u = uniq("t");
    let dollar = format!("${u}/{u}");
    let plain = format!("s/{u}");
    let mut hash = c5(b.addr(), "dhash");
    sub_ok(&mut hash, "#", 0);
    let mut plus = c5(b.addr(), "dplus");
    sub_ok(&mut plus, &format!("+/{u}"), 0);
    let mut exact = c5(b.addr(), "dexact");
    sub_ok(&mut exact, &format!("${u}/#"), 0);
    let mut p = c5(b.addr(), "dpub");
    p.publish_complete(&dollar, 0, false, 0, b"dollar");
    p.publish_complete(&plain, 0, false, 0, b"plain");
    loop {
        let m = hash.recv_publish();
        assert!(!m.topic.starts_with('$'), "'#' matched {}", m.topic);
        if m.topic == plain {
            break;
        }
    }
    assert_eq!(plus.recv_publish().topic, plain);
    let m = exact.recv_publish();
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        (dollar.as_str(), &b"dollar"[..])
    );
}
