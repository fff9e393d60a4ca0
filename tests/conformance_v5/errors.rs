//! MQTT 5.0 conformance: malformed packets and protocol errors after CONNACK (4.13),
//! each answered with a DISCONNECT carrying the right reason code, bystanders unharmed.

use super::*;

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
