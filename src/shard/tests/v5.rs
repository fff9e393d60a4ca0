//! Shard tests of MQTT 5 features: topic aliases both ways, the client's maximum
//! packet size, the outbound buffer bound and slow-consumer policy, subscription ids.

use super::cfg;
use crate::config::SlowConsumerPolicy;
use crate::protocol::{Packet, Properties, PropertyValues, QoS, ReasonCode};
use crate::shard::harness::*;

const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;

fn aliased(topic: &str, payload: &str, alias: u16) -> Packet {
    let mut m = publish(topic, payload, Q0, false, 0);
    m.properties.topic_alias = Some(alias);
    Packet::Publish(m)
}

#[test]
fn inbound_topic_aliases() {
    let mut config = cfg();
    config.topic_alias_maximum = 2;
    let mut cl = Cluster::new(1, config);
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "#", Q0);
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    cl.send(p, aliased("a/b", "1", 1));
    cl.send(p, aliased("", "2", 1));
    cl.send(p, aliased("c", "3", 1));
    cl.send(p, aliased("", "4", 1));
    cl.expect(s, pubp("a/b", "1", Q0, false, 0));
    cl.expect(s, pubp("a/b", "2", Q0, false, 0));
    cl.expect(s, pubp("c", "3", Q0, false, 0));
    cl.expect(s, pubp("c", "4", Q0, false, 0));
    cl.expect_nothing(p);
}

#[test]
fn inbound_topic_alias_errors() {
    let mut config = cfg();
    config.topic_alias_maximum = 2;
    let mut cl = Cluster::new(1, config);
    let a = cl.connect_ok(V5, "a", ConnectOpts::default(), false);
    cl.send(a, aliased("t", "x", 3));
    cl.expect(a, disconnect(ReasonCode::TopicAliasInvalid));
    cl.expect_closed(a);
    let b = cl.connect_ok(V5, "b", ConnectOpts::default(), false);
    cl.send(b, aliased("t", "x", 0));
    cl.expect(b, disconnect(ReasonCode::TopicAliasInvalid));
    let c = cl.connect_ok(V5, "c", ConnectOpts::default(), false);
    cl.send(c, aliased("", "x", 2));
    cl.expect(c, disconnect(ReasonCode::ProtocolError));
    cl.expect_closed(c);
}

#[test]
fn outbound_topic_aliases_first_seen_until_client_maximum() {
    let mut cl = Cluster::new(1, cfg());
    let props = Properties::from(PropertyValues {
        topic_alias_maximum: Some(1),
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
    cl.subscribe(s, "#", Q0);
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    cl.publish(p, "long/topic/a", "1", Q0, false, 0);
    cl.publish(p, "long/topic/a", "2", Q0, false, 0);
    cl.publish(p, "other", "3", Q0, false, 0);
    cl.publish(p, "long/topic/a", "4", Q0, false, 0);
    cl.expect(s, aliased("long/topic/a", "1", 1));
    cl.expect(s, aliased("", "2", 1));
    cl.expect(s, pubp("other", "3", Q0, false, 0));
    cl.expect(s, aliased("", "4", 1));
    // A new connection starts without aliases.
    cl.drop_connection(s);
    let props = Properties::from(PropertyValues {
        topic_alias_maximum: Some(1),
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
    cl.subscribe(s, "#", Q0);
    cl.publish(p, "long/topic/a", "5", Q0, false, 0);
    cl.expect(s, aliased("long/topic/a", "5", 1));
}

#[test]
fn client_maximum_packet_size_drops_oversized_copies() {
    let mut cl = Cluster::new(1, cfg());
    let props = Properties::from(PropertyValues {
        maximum_packet_size: Some(32),
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
    let big = "x".repeat(40);
    cl.publish(p, "t", &big, Q0, false, 0);
    cl.publish(p, "t", &big, Q1, false, 1);
    cl.expect(p, puback(1));
    cl.publish(p, "t", "small", Q1, false, 2);
    cl.expect(p, puback(2));
    // The QoS 1 copy that was too large is treated as delivered: the next one gets
    // the next packet id and nothing waits in flight.
    cl.expect(s, pubp("t", "small", Q1, false, 2));
    cl.expect_nothing(s);
    assert_eq!(cl.shards[0].stats().dropped_too_large, 2);
}

#[test]
fn outbound_buffer_bound_drops_qos0_and_holds_qos1() {
    let mut config = cfg();
    config.max_outbound_bytes = 40;
    let mut cl = Cluster::new(1, config);
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "t", Q1);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    cl.stall(s, true);
    // Each QoS 0 copy is 2 + 2 + 1 + 10 = 15 bytes: two fit in 40.
    for i in 0..5 {
        cl.publish(p, "t", &format!("qos0-{i:05}"), Q0, false, 0);
    }
    assert_eq!(cl.shards[0].stats().dropped_outbound_full, 3);
    // QoS 1 copies wait in the session queue instead of being dropped.
    for i in 1..=3u16 {
        cl.publish(p, "t", &format!("qos1-{i:05}"), Q1, false, i);
        cl.expect(p, puback(i));
    }
    cl.expect_nothing(s);
    cl.stall(s, false);
    cl.expect(s, pubp("t", "qos0-00000", Q0, false, 0));
    cl.expect(s, pubp("t", "qos0-00001", Q0, false, 0));
    for i in 1..=3u16 {
        cl.expect(s, pubp("t", &format!("qos1-{i:05}"), Q1, false, i));
    }
    cl.expect_nothing(s);
    assert_eq!(cl.shards[0].stats().dropped_outbound_full, 3);
}

#[test]
fn slow_consumer_disconnect_policy() {
    let mut config = cfg();
    config.max_outbound_bytes = 20;
    config.max_queued_messages = 1;
    config.slow_consumer_policy = SlowConsumerPolicy::Disconnect;
    let mut cl = Cluster::new(1, config);
    let s = cl.connect_ok(V5, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "t", Q1);
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    cl.stall(s, true);
    for i in 1..=3u16 {
        cl.publish(p, "t", &format!("payload-{i:05}"), Q1, false, i);
    }
    cl.expect_closed(s);
    cl.stall(s, false);
    assert_eq!(cl.shards[0].stats().dropped_queue_full, 1);
}

#[test]
fn subscription_identifier_on_delivery() {
    let mut cl = Cluster::new(2, cfg());
    let s = cl.connect_ok(V5, &id_on(1, 2, "s"), ConnectOpts::default(), false);
    let props = Properties::from(PropertyValues {
        subscription_identifier: Some(99),
        ..Default::default()
    });
    cl.subscribe_with(
        s,
        "t/#",
        crate::protocol::SubscriptionOptions::default(),
        props,
    );
    cl.expect(s, suback(1, &[ReasonCode::Success]));
    let p = cl.connect_ok(V5, &id_on(0, 2, "p"), ConnectOpts::default(), false);
    cl.publish(p, "t/x", "m", Q0, false, 0);
    let mut m = publish("t/x", "m", Q0, false, 0);
    m.properties.rare.to_mut().subscription_identifiers = smallvec::smallvec![99];
    cl.expect(s, Packet::Publish(m));
}

#[test]
fn subscription_identifier_from_a_client_is_a_protocol_error() {
    let mut cl = Cluster::new(1, cfg());
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    let mut m = publish("t/x", "m", Q0, false, 0);
    m.properties.rare.to_mut().subscription_identifiers = smallvec::smallvec![5];
    cl.send(p, Packet::Publish(m));
    cl.expect(p, disconnect(ReasonCode::ProtocolError));
    cl.expect_closed(p);
}
