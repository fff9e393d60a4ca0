//! Shard tests of QoS 1 and 2 flows: acknowledgements, duplicates, PUBREL for an
//! unknown id, receive maximum and the in-flight window, batched acknowledgements, and
//! QoS 0 fan-out sharing one encoding per variant.

use super::cfg;
use crate::protocol::{Packet, Properties, PropertyValues, PubResp, QoS, ReasonCode};
use crate::shard::harness::*;

const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;

#[test]
fn inbound_qos1_is_acked_and_delivered() {
    let mut cl = Cluster::new(1, cfg());
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "t", Q1);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    cl.publish(p, "t", "x", Q1, false, 42);
    cl.expect(p, puback(42));
    cl.expect(s, pubp("t", "x", Q1, false, 1));
    cl.send(s, puback(1));
    cl.expect_nothing(s);
}

#[test]
fn inbound_qos2_duplicate_not_delivered_twice() {
    let mut cl = Cluster::new(1, cfg());
    let s = cl.connect_ok(V5, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "t", Q0);
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    cl.publish(p, "t", "x", Q2, false, 7);
    cl.expect(p, pubrec(7));
    cl.expect(s, pubp("t", "x", Q0, false, 0));
    // The client did not see the PUBREC and re-sends with DUP.
    let mut dup = publish("t", "x", Q2, false, 7);
    dup.dup = true;
    cl.send(p, Packet::Publish(dup));
    cl.expect(p, pubrec(7));
    cl.expect_nothing(s);
    cl.send(p, pubrel(7));
    cl.expect(p, pubcomp(7));
    // After PUBREL the id is free again: a new message with it is delivered.
    cl.publish(p, "t", "y", Q2, false, 7);
    cl.expect(p, pubrec(7));
    cl.expect(s, pubp("t", "y", Q0, false, 0));
}

#[test]
fn pubrel_for_unknown_id() {
    let mut cl = Cluster::new(1, cfg());
    let p5 = cl.connect_ok(V5, "p5", ConnectOpts::default(), false);
    cl.send(p5, pubrel(3));
    cl.expect(
        p5,
        Packet::PubComp(PubResp {
            packet_id: 3,
            code: ReasonCode::PacketIdentifierNotFound,
            properties: Properties::default(),
        }),
    );
    let p3 = cl.connect_ok(V311, "p3", ConnectOpts::default(), false);
    cl.send(p3, pubrel(3));
    cl.expect(p3, pubcomp(3));
}

#[test]
fn receive_maximum_exceeded_disconnects_0x93() {
    let mut config = cfg();
    config.receive_maximum = 2;
    let mut cl = Cluster::new(1, config);
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    cl.publish(p, "t", "1", Q2, false, 1);
    cl.expect(p, pubrec(1));
    cl.publish(p, "t", "2", Q2, false, 2);
    cl.expect(p, pubrec(2));
    // Completing one frees a slot.
    cl.send(p, pubrel(1));
    cl.expect(p, pubcomp(1));
    cl.publish(p, "t", "3", Q2, false, 3);
    cl.expect(p, pubrec(3));
    cl.publish(p, "t", "4", Q1, false, 4);
    cl.expect(p, disconnect(ReasonCode::ReceiveMaximumExceeded));
    cl.expect_closed(p);
}

#[test]
fn outbound_qos2_flow() {
    let mut cl = Cluster::new(1, cfg());
    let s = cl.connect_ok(V5, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "t", Q2);
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    cl.publish(p, "t", "x", Q2, false, 1);
    cl.expect(p, pubrec(1));
    cl.expect(s, pubp("t", "x", Q2, false, 1));
    cl.send(s, pubrec(1));
    cl.expect(s, pubrel(1));
    cl.send(s, pubcomp(1));
    cl.expect_nothing(s);
    cl.publish(p, "t", "y", Q2, false, 2);
    cl.expect(p, pubrec(2));
    cl.expect(s, pubp("t", "y", Q2, false, 2));
}

#[test]
fn inflight_window_bounded_by_client_receive_maximum() {
    let mut cl = Cluster::new(1, cfg());
    let props = Properties::from(PropertyValues {
        receive_maximum: Some(2),
        ..Default::default()
    });
    let s = cl.connect_ok(
        V5,
        "s",
        ConnectOpts {
            properties: props,
            ..Default::default()
        },
        false,
    );
    cl.subscribe(s, "t", Q1);
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    for i in 1..=4u16 {
        cl.publish(p, "t", &i.to_string(), Q1, false, i);
        cl.expect(p, puback(i));
    }
    cl.expect(s, pubp("t", "1", Q1, false, 1));
    cl.expect(s, pubp("t", "2", Q1, false, 2));
    cl.expect_nothing(s);
    cl.send(s, puback(1));
    cl.expect(s, pubp("t", "3", Q1, false, 3));
    cl.expect_nothing(s);
    // An ack for an id not in flight changes nothing.
    cl.send(s, puback(1));
    cl.expect_nothing(s);
    cl.send(s, puback(2));
    cl.expect(s, pubp("t", "4", Q1, false, 4));
    cl.send(s, puback(3));
    cl.send(s, puback(4));
    cl.expect_nothing(s);
}

#[test]
fn inflight_window_bounded_by_config_max_inflight() {
    let mut config = cfg();
    config.max_inflight = 1;
    let mut cl = Cluster::new(1, config);
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "t", Q2);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    cl.publish(p, "t", "a", Q1, false, 1);
    cl.publish(p, "t", "b", Q1, false, 2);
    cl.expect(s, pubp("t", "a", Q1, false, 1));
    cl.expect_nothing(s);
    cl.send(s, puback(1));
    cl.expect(s, pubp("t", "b", Q1, false, 2));
}

#[test]
fn pubacks_batched_in_one_read_and_split_across_reads_end_their_flows() {
    // PUBACKs are read in place (no decode); these cover what the decoder covered.
    for version in [V311, V5] {
        let mut config = cfg();
        config.max_inflight = 2;
        let mut cl = Cluster::new(1, config);
        let s = cl.connect_ok(version, "s", ConnectOpts::default(), false);
        cl.subscribe(s, "t", Q1);
        let p = cl.connect_ok(version, "p", ConnectOpts::default(), false);
        for i in 1..=4u16 {
            cl.publish(p, "t", &i.to_string(), Q1, false, i);
            cl.expect(p, puback(i));
        }
        cl.expect(s, pubp("t", "1", Q1, false, 1));
        cl.expect(s, pubp("t", "2", Q1, false, 2));
        cl.expect_nothing(s);
        // Two acks and the first byte of a third in one read.
        cl.send_raw(s, &[0x40, 2, 0, 1, 0x40, 2, 0, 2, 0x40]);
        cl.expect(s, pubp("t", "3", Q1, false, 3));
        cl.expect(s, pubp("t", "4", Q1, false, 4));
        cl.expect_nothing(s);
        cl.send_raw(s, &[2, 0, 3]);
        cl.send_raw(s, &[0x40, 2, 0, 4]);
        // Both ids are free again: a new message goes out at once.
        cl.publish(p, "t", "5", Q1, false, 5);
        cl.expect(p, puback(5));
        cl.expect(s, pubp("t", "5", Q1, false, 5));
        cl.expect_open(s);
    }
}

#[test]
fn puback_with_packet_id_zero_is_a_protocol_error() {
    let mut cl = Cluster::new(1, cfg());
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.send_raw(s, &[0x40, 2, 0, 0]);
    cl.expect_closed(s);
}

#[test]
fn pubrec_with_error_code_ends_the_flow() {
    let mut cl = Cluster::new(1, cfg());
    let props = Properties::from(PropertyValues {
        receive_maximum: Some(1),
        ..Default::default()
    });
    let s = cl.connect_ok(
        V5,
        "s",
        ConnectOpts {
            properties: props,
            ..Default::default()
        },
        false,
    );
    cl.subscribe(s, "t", Q2);
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    cl.publish(p, "t", "a", Q2, false, 1);
    cl.publish(p, "t", "b", Q2, false, 2);
    cl.expect(s, pubp("t", "a", Q2, false, 1));
    let refuse = PubResp {
        packet_id: 1,
        code: ReasonCode::UnspecifiedError,
        properties: Properties::default(),
    };
    cl.send(s, Packet::PubRec(refuse));
    cl.expect(s, pubp("t", "b", Q2, false, 2));
    cl.expect_nothing(s);
}

#[test]
fn qos0_fan_out_shares_one_encoding_per_variant() {
    // Mixed versions and QoS on one publish: every copy must still be exact.
    let mut cl = Cluster::new(1, cfg());
    let mut subs = Vec::new();
    for i in 0..6 {
        let v = [V311, V5, V31][i % 3];
        let s = cl.connect_ok(v, &format!("s{i}"), ConnectOpts::default(), false);
        cl.subscribe(s, "t", if i < 3 { Q0 } else { Q1 });
        subs.push((s, if i < 3 { Q0 } else { Q1 }));
    }
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    cl.publish(p, "t", "m1", Q1, false, 1);
    cl.publish(p, "t", "m2", Q1, false, 2);
    for (s, q) in subs {
        let (id1, id2) = if q == Q0 { (0, 0) } else { (1, 2) };
        cl.expect(s, pubp("t", "m1", q, false, id1));
        cl.expect(s, pubp("t", "m2", q, false, id2));
    }
}

#[test]
fn a_bridge_session_window_is_the_packet_id_space_not_max_inflight() {
    // A bridge holds each message until its remote acknowledged it (bridge::link);
    // its own queue_max_messages bounds that, not max_inflight.
    let mut config = cfg();
    config.max_inflight = 1;
    let mut cl = Cluster::new(1, config);
    let b = cl.open(0, V5);
    let conn = cl.clients[b].conn;
    cl.shards[0].set_cert_username(conn, "$bridge/b".to_string());
    cl.send(
        b,
        Packet::Connect(Box::new(crate::protocol::Connect {
            protocol: V5,
            clean_start: true,
            keep_alive_s: 0,
            client_id: bytes::Bytes::from_static(b"$bridge/b"),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })),
    );
    match cl.next(b) {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, ReasonCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    cl.subscribe(b, "t", Q1);
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "t", Q1);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    for i in 1..=3u16 {
        cl.publish(p, "t", &i.to_string(), Q1, false, i);
        cl.expect(p, puback(i));
    }
    for i in 1..=3u16 {
        match cl.next(b) {
            Some(Packet::Publish(m)) => {
                assert_eq!((m.packet_id, &m.payload[..]), (i, i.to_string().as_bytes()))
            }
            other => panic!("bridge: expected message {i}, got {other:?}"),
        }
    }
    cl.expect(s, pubp("t", "1", Q1, false, 1));
    cl.expect_nothing(s);
}
