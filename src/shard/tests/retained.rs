use std::time::Duration;

use super::cfg;
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
