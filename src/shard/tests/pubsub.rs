//! Shard tests of publish/subscribe: local and cross-shard delivery, no-local,
//! wildcards and `$` topics, shared subscriptions, overlapping subscriptions, SUBACK
//! and UNSUBACK codes and when a SUBACK may be sent, refusals and topic limits.

use bytes::Bytes;
use smallvec::smallvec;

use super::cfg;
use crate::protocol::{
    Packet, Properties, PropertyValues, PublishProperties, PublishRare, QoS, ReasonCode,
    SubscriptionOptions, UnsubAck, Unsubscribe,
};
use crate::shard::harness::*;

const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;

#[test]
fn local_publish_subscribe_qos0() {
    let mut cl = Cluster::new(1, cfg());
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    cl.subscribe(s, "a/b", Q0);
    cl.publish(p, "a/b", "hello", Q0, false, 0);
    cl.expect(s, pubp("a/b", "hello", Q0, false, 0));
    cl.publish(p, "a/c", "nope", Q0, false, 0);
    cl.expect_nothing(s);
    cl.expect_nothing(p);
    let st = cl.shards[0].stats();
    assert_eq!(
        (st.messages_in, st.messages_out, st.subscriptions),
        (2, 1, 1)
    );
}

#[test]
fn a_publish_that_matches_no_subscription_of_the_node_is_counted_unmatched() {
    let mut cl = Cluster::new(2, cfg());
    let s = cl.connect_ok(V311, &id_on(1, 2, "s"), ConnectOpts::default(), false);
    let p = cl.connect_ok(V311, &id_on(0, 2, "p"), ConnectOpts::default(), false);
    cl.subscribe(s, "a/+", Q1);
    // Matched on the other loop only: routed there, not unmatched.
    cl.publish(p, "a/b", "x", Q1, false, 1);
    cl.expect(s, pubp("a/b", "x", Q1, false, 1));
    cl.expect(p, puback(1));
    // Nobody on either loop, at QoS 0 and QoS 1 (still acknowledged).
    cl.publish(p, "b/c", "y", Q0, false, 0);
    cl.publish(p, "b/c", "z", Q1, false, 2);
    cl.expect(p, puback(2));
    cl.expect_nothing(s);
    let unmatched = |cl: &Cluster, i: usize| cl.shards[i].stats().unmatched;
    assert_eq!((unmatched(&cl, 0), unmatched(&cl, 1)), (2, 0));
    // The broker's own `$SYS` messages nobody reads are not counted.
    let now = cl.now;
    cl.shards[0].publish_sys(
        Bytes::from_static(b"$SYS/broker/uptime"),
        Bytes::from_static(b"1"),
        now,
    );
    assert_eq!((unmatched(&cl, 0), unmatched(&cl, 1)), (2, 0));
    // A routed copy is not counted again on the loop that finds its subscriber gone.
    cl.publish(s, "a/b", "w", Q0, false, 0);
    cl.expect(s, pubp("a/b", "w", Q0, false, 0));
    assert_eq!((unmatched(&cl, 0), unmatched(&cl, 1)), (2, 0));
}

#[test]
fn publisher_receives_own_message_without_no_local() {
    let mut cl = Cluster::new(1, cfg());
    let c = cl.connect_ok(V5, "c", ConnectOpts::default(), false);
    cl.subscribe(c, "t", Q0);
    cl.publish(c, "t", "x", Q0, false, 0);
    cl.expect(c, pubp("t", "x", Q0, false, 0));
}

#[test]
fn no_local_skips_the_publishing_session() {
    let mut cl = Cluster::new(1, cfg());
    let c = cl.connect_ok(V5, "c", ConnectOpts::default(), false);
    let o = cl.connect_ok(V5, "o", ConnectOpts::default(), false);
    let opts = SubscriptionOptions {
        qos: Q0,
        no_local: true,
        ..Default::default()
    };
    cl.subscribe_with(c, "t", opts, Properties::default());
    cl.expect(c, suback(1, &[ReasonCode::Success]));
    cl.subscribe_with(o, "t", opts, Properties::default());
    cl.expect(o, suback(1, &[ReasonCode::Success]));
    cl.publish(c, "t", "x", Q0, false, 0);
    cl.expect_nothing(c);
    cl.expect(o, pubp("t", "x", Q0, false, 0));
}

#[test]
fn pub_sub_across_four_shards_one_message_per_remote_shard() {
    let mut cl = Cluster::new(4, cfg());
    let mut subs = Vec::new();
    for shard in 1..4 {
        let id = id_on(shard, 4, "sub");
        let s = cl.connect_ok(V311, &id, ConnectOpts::default(), false);
        assert_eq!(cl.clients[s].shard, shard);
        cl.subscribe(s, "x/+", Q0);
        subs.push(s);
    }
    // A second subscriber on shard 3 does not change the routes.
    let extra = cl.connect_ok(V311, &id_on(3, 4, "extra"), ConnectOpts::default(), false);
    let routes_before = cl.mesh_counts.1;
    cl.subscribe(extra, "x/#", Q0);
    assert_eq!(
        cl.mesh_counts.1,
        routes_before + 3,
        "x/# is a new filter on shard 3"
    );
    let p = cl.connect_ok(V311, &id_on(0, 4, "pub"), ConnectOpts::default(), false);
    let before = cl.mesh_counts.0;
    cl.publish(p, "x/1", "m", Q0, false, 0);
    assert_eq!(
        cl.mesh_counts.0 - before,
        3,
        "one ShardMsg::Publish per remote shard"
    );
    for &s in &subs {
        cl.expect(s, pubp("x/1", "m", Q0, false, 0));
    }
    cl.expect(extra, pubp("x/1", "m", Q0, false, 0));

    // Route removal: shard 1's only subscriber leaves.
    let routes_before = cl.mesh_counts.1;
    cl.send(
        subs[0],
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 2,
            filters: smallvec![Bytes::from_static(b"x/+")],
            properties: Properties::default(),
        }),
    );
    cl.expect(
        subs[0],
        Packet::UnsubAck(UnsubAck {
            packet_id: 2,
            codes: smallvec![],
            properties: Properties::default(),
        }),
    );
    assert_eq!(
        cl.mesh_counts.1,
        routes_before + 3,
        "1 -> 0 broadcast to the 3 other shards"
    );
    let before = cl.mesh_counts.0;
    cl.publish(p, "x/2", "m2", Q0, false, 0);
    assert_eq!(cl.mesh_counts.0 - before, 2);
    cl.expect_nothing(subs[0]);
    cl.expect(subs[1], pubp("x/2", "m2", Q0, false, 0));
    cl.expect(subs[2], pubp("x/2", "m2", Q0, false, 0));
    cl.expect(extra, pubp("x/2", "m2", Q0, false, 0));

    // A publish nobody subscribed to crosses no shard.
    let before = cl.mesh_counts.0;
    cl.publish(p, "y", "m3", Q0, false, 0);
    assert_eq!(cl.mesh_counts.0, before);
}

#[test]
fn session_end_removes_routes() {
    let mut cl = Cluster::new(2, cfg());
    let s = cl.connect_ok(V311, &id_on(1, 2, "s"), ConnectOpts::default(), false);
    cl.subscribe(s, "t", Q0);
    let p = cl.connect_ok(V311, &id_on(0, 2, "p"), ConnectOpts::default(), false);
    cl.drop_connection(s);
    let before = cl.mesh_counts.0;
    cl.publish(p, "t", "x", Q0, false, 0);
    assert_eq!(cl.mesh_counts.0, before);
    assert_eq!(cl.shards[1].stats().subscriptions, 0);
}

#[test]
fn wildcards_and_dollar_topics() {
    let mut cl = Cluster::new(1, cfg());
    let all = cl.connect_ok(V311, "all", ConnectOpts::default(), false);
    cl.subscribe(all, "#", Q0);
    let plus = cl.connect_ok(V311, "plus", ConnectOpts::default(), false);
    cl.subscribe(plus, "+/x", Q0);
    let sys = cl.connect_ok(V311, "sys", ConnectOpts::default(), false);
    cl.subscribe(sys, "$SYS/#", Q0);
    let multi = cl.connect_ok(V311, "multi", ConnectOpts::default(), false);
    cl.subscribe(multi, "a/#", Q0);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);

    cl.publish(p, "$SYS/x", "1", Q0, false, 0);
    cl.expect_nothing(all);
    cl.expect_nothing(plus);
    cl.expect(sys, pubp("$SYS/x", "1", Q0, false, 0));

    cl.publish(p, "b/x", "2", Q0, false, 0);
    cl.expect(all, pubp("b/x", "2", Q0, false, 0));
    cl.expect(plus, pubp("b/x", "2", Q0, false, 0));
    cl.expect_nothing(multi);

    cl.publish(p, "a", "3", Q0, false, 0);
    cl.expect(multi, pubp("a", "3", Q0, false, 0));
    cl.expect(all, pubp("a", "3", Q0, false, 0));
    cl.expect_nothing(plus);
}

#[test]
fn shared_subscription_round_robin_local() {
    let mut cl = Cluster::new(1, cfg());
    let a = cl.connect_ok(V5, "a", ConnectOpts::default(), false);
    let b = cl.connect_ok(V5, "b", ConnectOpts::default(), false);
    let plain = cl.connect_ok(V5, "plain", ConnectOpts::default(), false);
    cl.subscribe(a, "$share/g/t/+", Q0);
    cl.subscribe(b, "$share/g/t/+", Q0);
    cl.subscribe(plain, "t/+", Q0);
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    for i in 0..4 {
        cl.publish(p, "t/1", &i.to_string(), Q0, false, 0);
    }
    cl.expect(a, pubp("t/1", "0", Q0, false, 0));
    cl.expect(b, pubp("t/1", "1", Q0, false, 0));
    cl.expect(a, pubp("t/1", "2", Q0, false, 0));
    cl.expect(b, pubp("t/1", "3", Q0, false, 0));
    cl.expect_nothing(a);
    cl.expect_nothing(b);
    for i in 0..4 {
        cl.expect(plain, pubp("t/1", &i.to_string(), Q0, false, 0));
    }
}

#[test]
fn shared_subscription_round_robin_across_shards() {
    let mut cl = Cluster::new(3, cfg());
    let a = cl.connect_ok(V311, &id_on(1, 3, "a"), ConnectOpts::default(), false);
    let b = cl.connect_ok(V311, &id_on(2, 3, "b"), ConnectOpts::default(), false);
    cl.subscribe(a, "$share/g/t", Q1);
    cl.subscribe(b, "$share/g/t", Q1);
    let p = cl.connect_ok(V311, &id_on(0, 3, "p"), ConnectOpts::default(), false);
    for i in 0..4 {
        cl.publish(p, "t", &i.to_string(), Q0, false, 0);
    }
    cl.expect(a, pubp("t", "0", Q0, false, 0));
    cl.expect(a, pubp("t", "2", Q0, false, 0));
    cl.expect(b, pubp("t", "1", Q0, false, 0));
    cl.expect(b, pubp("t", "3", Q0, false, 0));
    cl.expect_nothing(a);
    cl.expect_nothing(b);
    // Two groups each get every message once.
    let c = cl.connect_ok(V311, &id_on(0, 3, "c"), ConnectOpts::default(), false);
    cl.subscribe(c, "$share/h/t", Q0);
    cl.publish(p, "t", "x", Q0, false, 0);
    cl.expect(c, pubp("t", "x", Q0, false, 0));
    cl.expect(a, pubp("t", "x", Q0, false, 0));
    cl.expect_nothing(b);
}

#[test]
fn shared_subscription_no_local_is_protocol_error() {
    let mut cl = Cluster::new(1, cfg());
    let a = cl.connect_ok(V5, "a", ConnectOpts::default(), false);
    let opts = SubscriptionOptions {
        qos: Q0,
        no_local: true,
        ..Default::default()
    };
    cl.subscribe_with(a, "$share/g/t", opts, Properties::default());
    cl.expect(a, disconnect(ReasonCode::ProtocolError));
    cl.expect_closed(a);
}

#[test]
fn overlapping_subscriptions_one_copy_highest_qos_all_ids() {
    let mut cl = Cluster::new(1, cfg());
    let s = cl.connect_ok(V5, "s", ConnectOpts::default(), false);
    let id = |n| {
        Properties::from(PropertyValues {
            subscription_identifier: Some(n),
            ..Default::default()
        })
    };
    cl.subscribe_with(
        s,
        "a/+",
        SubscriptionOptions {
            qos: Q0,
            ..Default::default()
        },
        id(7),
    );
    cl.expect(s, suback(1, &[ReasonCode::Success]));
    cl.subscribe_with(
        s,
        "a/#",
        SubscriptionOptions {
            qos: Q1,
            ..Default::default()
        },
        id(3),
    );
    cl.expect(s, suback(1, &[ReasonCode::GrantedQoS1]));
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    cl.publish(p, "a/b", "x", Q2, false, 1);
    cl.expect(p, pubrec(1));
    let mut expected = publish("a/b", "x", Q1, false, 1);
    expected.properties.rare.to_mut().subscription_identifiers = smallvec![3, 7];
    cl.expect(s, Packet::Publish(expected));
    cl.expect_nothing(s);
}

#[test]
fn delivered_qos_is_min_of_publish_and_subscription() {
    let mut cl = Cluster::new(1, cfg());
    let s1 = cl.connect_ok(V311, "s1", ConnectOpts::default(), false);
    let s2 = cl.connect_ok(V311, "s2", ConnectOpts::default(), false);
    cl.subscribe(s1, "t", Q1);
    cl.subscribe(s2, "t", Q2);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    cl.publish(p, "t", "a", Q2, false, 5);
    cl.expect(p, pubrec(5));
    cl.expect(s1, pubp("t", "a", Q1, false, 1));
    cl.expect(s2, pubp("t", "a", Q2, false, 1));
    cl.publish(p, "t", "b", Q0, false, 0);
    cl.expect(s1, pubp("t", "b", Q0, false, 0));
    cl.expect(s2, pubp("t", "b", Q0, false, 0));
}

#[test]
fn v5_properties_forwarded_unchanged_and_to_v311_stripped() {
    let mut cl = Cluster::new(1, cfg());
    let s5 = cl.connect_ok(V5, "s5", ConnectOpts::default(), false);
    let s3 = cl.connect_ok(V311, "s3", ConnectOpts::default(), false);
    cl.subscribe(s5, "t", Q0);
    cl.subscribe(s3, "t", Q0);
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        rare: PublishRare {
            response_topic: Some(Bytes::from_static(b"reply/here")),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            content_type: Some(Bytes::from_static(b"text/plain")),
            user_properties: vec![
                (Bytes::from_static(b"k"), Bytes::from_static(b"v1")),
                (Bytes::from_static(b"k"), Bytes::from_static(b"v2")),
            ],
            ..Default::default()
        }
        .into(),
        ..Default::default()
    };
    let mut m = publish("t", "body", Q0, false, 0);
    m.properties = props.clone();
    cl.send(p, Packet::Publish(m.clone()));
    cl.expect(s5, Packet::Publish(m));
    cl.expect(s3, pubp("t", "body", Q0, false, 0));
}

#[test]
fn subscribe_refusals() {
    let mut config = cfg();
    config.deny_subscribe = vec!["test/nosubscribe".to_string()];
    config.max_subscriptions_per_client = 2;
    let mut cl = Cluster::new(1, config);
    let s3 = cl.connect_ok(V311, "s3", ConnectOpts::default(), false);
    cl.subscribe_with(
        s3,
        "test/nosubscribe",
        SubscriptionOptions {
            qos: Q1,
            ..Default::default()
        },
        Properties::default(),
    );
    cl.expect(s3, suback(1, &[ReasonCode::UnspecifiedError]));
    assert_eq!(cl.clients[s3].raw[cl.clients[s3].raw.len() - 1], 0x80);
    let s5 = cl.connect_ok(V5, "s5", ConnectOpts::default(), false);
    cl.subscribe(s5, "a", Q0);
    cl.subscribe(s5, "b", Q0);
    cl.subscribe_with(
        s5,
        "c",
        SubscriptionOptions::default(),
        Properties::default(),
    );
    cl.expect(s5, suback(1, &[ReasonCode::QuotaExceeded]));
    // Re-subscribing to an existing filter is not a new subscription.
    cl.subscribe(s5, "a", Q1);
}

#[test]
fn features_off_refuse_subscriptions() {
    let mut config = cfg();
    config.wildcard_subscription_available = false;
    config.shared_subscription_available = false;
    config.subscription_identifier_available = false;
    let mut cl = Cluster::new(1, config);
    let s = cl.connect_ok(V5, "s", ConnectOpts::default(), false);
    cl.subscribe_with(
        s,
        "a/+",
        SubscriptionOptions::default(),
        Properties::default(),
    );
    cl.expect(
        s,
        suback(1, &[ReasonCode::WildcardSubscriptionsNotSupported]),
    );
    cl.subscribe_with(
        s,
        "$share/g/a",
        SubscriptionOptions::default(),
        Properties::default(),
    );
    cl.expect(s, suback(1, &[ReasonCode::SharedSubscriptionsNotSupported]));
    let id = Properties::from(PropertyValues {
        subscription_identifier: Some(1),
        ..Default::default()
    });
    cl.subscribe_with(s, "a", SubscriptionOptions::default(), id);
    cl.expect(
        s,
        suback(1, &[ReasonCode::SubscriptionIdentifiersNotSupported]),
    );
    cl.subscribe(s, "a", Q0);
}

#[test]
fn topic_limits_refuse_filters_and_names() {
    let mut config = cfg();
    config.max_topic_levels = 2;
    let mut cl = Cluster::new(1, config);
    let s = cl.connect_ok(V5, "s", ConnectOpts::default(), false);
    cl.subscribe_with(
        s,
        "a/b/c",
        SubscriptionOptions::default(),
        Properties::default(),
    );
    cl.expect(s, suback(1, &[ReasonCode::TopicFilterInvalid]));
    cl.publish(s, "a/b/c", "x", Q0, false, 0);
    cl.expect(s, disconnect(ReasonCode::TopicNameInvalid));
    cl.expect_closed(s);
}

#[test]
fn unsubscribe_v5_codes_and_stops_delivery() {
    let mut cl = Cluster::new(1, cfg());
    let s = cl.connect_ok(V5, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "t", Q0);
    cl.send(
        s,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 9,
            filters: smallvec![Bytes::from_static(b"t"), Bytes::from_static(b"nope")],
            properties: Properties::default(),
        }),
    );
    cl.expect(
        s,
        Packet::UnsubAck(UnsubAck {
            packet_id: 9,
            codes: smallvec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
            properties: Properties::default(),
        }),
    );
    cl.publish(s, "t", "x", Q0, false, 0);
    cl.expect_nothing(s);
    assert_eq!(cl.shards[0].stats().subscriptions, 0);
}

#[test]
fn suback_waits_until_every_shard_routes_to_the_new_subscriber() {
    let mut cl = Cluster::new(3, cfg());
    let s = cl.connect_ok(V311, &id_on(1, 3, "sub"), ConnectOpts::default(), false);
    let p = cl.connect_ok(V311, &id_on(2, 3, "pub"), ConnectOpts::default(), false);
    cl.hold_mesh = true;
    cl.subscribe_with(
        s,
        "race/t",
        SubscriptionOptions::default(),
        Properties::default(),
    );
    // The route add is still on its way to shards 0 and 2: no SUBACK yet, since a
    // client holding one may publish on another shard at once.
    cl.expect_nothing(s);
    cl.hold_mesh = false;
    cl.pump();
    cl.expect(s, suback(1, &[ReasonCode::Success]));
    cl.publish(p, "race/t", "m", Q0, false, 0);
    cl.expect(s, pubp("race/t", "m", Q0, false, 0));
}

#[test]
fn suback_for_an_existing_route_is_immediate() {
    let mut cl = Cluster::new(2, cfg());
    let a = cl.connect_ok(V311, &id_on(1, 2, "a"), ConnectOpts::default(), false);
    let b = cl.connect_ok(V311, &id_on(1, 2, "b"), ConnectOpts::default(), false);
    cl.subscribe(a, "known/t", Q0);
    cl.hold_mesh = true;
    // Same filter on the same shard: no route change, nothing to wait for.
    cl.subscribe(b, "known/t", Q0);
    cl.hold_mesh = false;
}

/// A subscribe storm on one of several shards queues a SUBACK per subscriber until
/// the other shards apply the routes; once they have, the queue gives its memory back.
#[test]
fn held_subacks_release_their_queue_once_every_shard_routes() {
    let mut cl = Cluster::new(2, cfg());
    let subscribers: Vec<Cid> = (0..200)
        .map(|i| {
            cl.connect_ok(
                V311,
                &id_on(0, 2, &format!("dev{i}")),
                ConnectOpts::default(),
                false,
            )
        })
        .collect();
    cl.hold_mesh = true;
    for (i, c) in subscribers.iter().enumerate() {
        cl.subscribe_with(
            *c,
            &format!("dev/{i}/cmd"),
            SubscriptionOptions::default(),
            Properties::default(),
        );
        cl.expect_nothing(*c);
    }
    assert_eq!(cl.shards[0].pending_subacks.len(), 200);
    assert!(cl.shards[0].pending_subacks.capacity() >= 200);
    cl.hold_mesh = false;
    cl.pump();
    for c in &subscribers {
        cl.expect(*c, suback(1, &[ReasonCode::Success]));
    }
    assert_eq!(
        cl.shards[0].pending_subacks.capacity(),
        crate::shard::routes::PENDING_SUBACKS_KEPT
    );
    assert_eq!(cl.shards[1].stats().subscriptions, 0);
}

#[test]
fn scrape_counters_follow_known_traffic() {
    // 2 shards: the subscribers' sessions and the publisher may live on either.
    let mut cl = Cluster::new(2, cfg());
    let s1 = cl.connect_ok(V311, &id_on(0, 2, "s1"), ConnectOpts::default(), false);
    let s2 = cl.connect_ok(V311, &id_on(1, 2, "s2"), ConnectOpts::default(), false);
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    cl.subscribe(s1, "m/#", Q1);
    cl.subscribe(s2, "m/#", Q0);
    for (i, q) in [Q0, Q0, Q1, Q2].into_iter().enumerate() {
        cl.publish(p, "m/x", "payload", q, false, i as u16 + 1);
    }
    // s1 leaves its QoS 1 copies unacknowledged: they are in flight.
    let mut snaps: Vec<_> = cl.shards.iter_mut().map(|s| s.stats_snapshot()).collect();
    let total = snaps.iter().fold([0u64; 3], |mut t, s| {
        for (a, b) in t.iter_mut().zip(s.messages_in_qos) {
            *a += b;
        }
        t
    });
    assert_eq!(total, [2, 1, 1]);
    let sum = |f: &dyn Fn(&crate::shard::ShardStats) -> u64| snaps.iter().map(f).sum::<u64>();
    assert_eq!(sum(&|s| s.messages_in), 4);
    assert_eq!(sum(&|s| s.messages_out), 8, "4 messages x 2 subscribers");
    assert_eq!(sum(&|s| s.sessions_online as u64), 3);
    assert_eq!(
        sum(&|s| s.accepted),
        3,
        "adopted connections are not counted twice"
    );
    // Copies of QoS 1 and 2 messages to s1 (subscribed at QoS 1) await PUBACK.
    assert_eq!(sum(&|s| s.inflight as u64), 2);
    assert!(sum(&|s| s.bytes_in) > 0 && sum(&|s| s.bytes_out) > 0);
    cl.drop_connection(s2);
    snaps = cl.shards.iter_mut().map(|s| s.stats_snapshot()).collect();
    assert_eq!(snaps.iter().map(|s| s.sessions_online).sum::<usize>(), 2);
}
