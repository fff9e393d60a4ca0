//! The shard's cluster side (`shard/cluster.rs`) without NATS: what a turn hands the
//! cluster thread, the PUBACK held for the JetStream ack, copies from other nodes,
//! shared groups left to NATS, and single-node mode unchanged.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use super::cfg;
use crate::cluster::ClusterStatus;
use crate::protocol::{Packet, Properties, PubResp, QoS, ReasonCode, SubscriptionOptions};
use crate::session::{Message, NONE};
use crate::shard::harness::*;
use crate::shard::{ClusterIn, ShardMsg, SharedTarget};

const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;

fn cluster_node() -> Cluster {
    let mut cl = Cluster::new(1, cfg());
    cl.shards[0].enable_cluster();
    cl
}

fn from_node(cl: &Cluster, topic: &str, payload: &str, qos: QoS) -> Arc<Message> {
    from_node_keyed(cl, topic, payload, qos, 0)
}

/// A message from another node as the cluster thread hands it to a loop; `key` is its
/// cluster identity (`Message::cluster_key`), 0 for none.
pub(super) fn from_node_keyed(
    cl: &Cluster,
    topic: &str,
    payload: &str,
    qos: QoS,
    key: u64,
) -> Arc<Message> {
    Arc::new(Message {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain: false,
        properties: Default::default(),
        arrived_at: cl.now,
        origin_shard: u32::MAX as usize,
        origin_session: NONE,
        owned: true,
        cluster_key: key,
    })
}

#[test]
fn interest_changes_and_publishes_go_to_the_cluster() {
    let mut cl = cluster_node();
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "a/#", Q1);
    let out = cl.shards[0].take_cluster_out().expect("interest");
    let i: Vec<_> = out
        .interest
        .iter()
        .map(|i| (&i.filter[..], i.add))
        .collect();
    assert_eq!(i, [(&b"a/#"[..], true)]);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    cl.publish(p, "a/b", "x", Q0, false, 0);
    cl.expect(s, pubp("a/b", "x", Q0, false, 0));
    let out = cl.shards[0].take_cluster_out().expect("a publish");
    assert_eq!(out.publishes.len(), 1);
    assert_eq!(&out.publishes[0].msg.topic[..], b"a/b");
    assert!(out.publishes[0].ack.is_none(), "QoS 0 holds nothing");
    assert!(cl.shards[0].take_cluster_out().is_none(), "taken once");
    cl.send(s, Packet::Unsubscribe(unsubscribe(2, "a/#")));
    let out = cl.shards[0].take_cluster_out().expect("interest removed");
    assert_eq!(out.interest.len(), 1);
    assert!(!out.interest[0].add);
}

fn unsubscribe(packet_id: u16, filter: &str) -> crate::protocol::Unsubscribe {
    crate::protocol::Unsubscribe {
        packet_id,
        filters: vec![Bytes::copy_from_slice(filter.as_bytes())].into(),
        properties: Default::default(),
    }
}

#[test]
fn qos1_puback_waits_for_the_jetstream_ack() {
    let mut cl = cluster_node();
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "t", Q1);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    cl.publish(p, "t", "x", Q1, false, 42);
    // Delivered locally at once; the publisher's PUBACK is held.
    cl.expect(s, pubp("t", "x", Q1, false, 1));
    cl.expect_nothing(p);
    let out = cl.shards[0].take_cluster_out().expect("forwarded");
    let token = out.publishes[0].ack.expect("held ack");
    assert_eq!((token.packet_id, token.qos), (42, Q1));
    cl.shards[0].on_cluster_in(
        ClusterIn::Ack {
            token,
            stored: true,
        },
        cl.now,
    );
    cl.pump();
    cl.expect(p, puback(42));
}

#[test]
fn qos2_pubrec_waits_and_a_duplicate_is_not_forwarded_again() {
    let mut cl = cluster_node();
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    cl.publish(p, "t", "x", Q2, false, 7);
    cl.expect_nothing(p);
    let token = cl.shards[0]
        .take_cluster_out()
        .expect("forwarded")
        .publishes[0]
        .ack
        .expect("held");
    // Resent before the PUBREC: answered from the QoS 2 state, not published again.
    let mut dup = publish("t", "x", Q2, false, 7);
    dup.dup = true;
    cl.send(p, Packet::Publish(dup));
    cl.expect(p, pubrec(7));
    assert!(cl.shards[0].take_cluster_out().is_none());
    cl.shards[0].on_cluster_in(
        ClusterIn::Ack {
            token,
            stored: true,
        },
        cl.now,
    );
    cl.pump();
    cl.expect(p, pubrec(7));
    cl.send(p, pubrel(7));
    cl.expect(p, pubcomp(7));
}

/// The held token of the one publish the last turn forwarded.
fn held_token(cl: &mut Cluster) -> crate::shard::AckToken {
    cl.shards[0]
        .take_cluster_out()
        .expect("forwarded")
        .publishes[0]
        .ack
        .expect("held")
}

fn refuse_unstored(cl: &mut Cluster, token: crate::shard::AckToken) {
    let now = cl.now;
    cl.shards[0].on_cluster_in(
        ClusterIn::Ack {
            token,
            stored: false,
        },
        now,
    );
    cl.pump();
}

/// Review10 M7: JetStream did not store a QoS 1/2 publish (NATS away, no ack in
/// time), so it is never acknowledged as if it had been. MQTT 5 gets 0x80 on the
/// PUBACK (PUBREC, which ends that QoS 2 flow); the refused QoS 2 id is forgotten,
/// so the client's re-send is forwarded again instead of answered from the QoS 2
/// state.
#[test]
fn an_unstored_publish_is_refused_with_0x80_in_mqtt5() {
    use crate::protocol::{PubResp, ReasonCode};
    let mut cl = cluster_node();
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    cl.publish(p, "t", "x", Q1, false, 1);
    let token = held_token(&mut cl);
    refuse_unstored(&mut cl, token);
    let mut nack = PubResp::new(1);
    nack.code = ReasonCode::UnspecifiedError;
    cl.expect(p, Packet::PubAck(nack.clone()));

    cl.publish(p, "t", "y", Q2, false, 2);
    let token = held_token(&mut cl);
    refuse_unstored(&mut cl, token);
    nack.packet_id = 2;
    cl.expect(p, Packet::PubRec(nack));
    cl.expect_open(p);
    // The flow ended: the same id again is a new message, forwarded again.
    cl.publish(p, "t", "y", Q2, false, 2);
    let token = held_token(&mut cl);
    cl.shards[0].on_cluster_in(
        ClusterIn::Ack {
            token,
            stored: true,
        },
        cl.now,
    );
    cl.pump();
    cl.expect(p, pubrec(2));
}

/// Review10 M7, MQTT 3.1.1: there is no negative PUBACK, so the connection is
/// closed and the client sends the PUBLISH again when it reconnects; its will is not
/// published (it did nothing wrong), and its persistent session stays.
#[test]
fn an_unstored_publish_closes_a_3_1_1_connection_without_its_will() {
    let mut cl = cluster_node();
    let w = cl.connect_ok(V311, "watch", ConnectOpts::default(), false);
    cl.subscribe(w, "will/#", Q1);
    let opts = ConnectOpts {
        clean: false,
        will: Some(will("will/p", "gone", Q1, false, Default::default())),
        ..ConnectOpts::default()
    };
    let p = cl.connect_ok(V311, "p", opts.clone(), false);
    let _ = cl.shards[0].take_cluster_out();
    cl.publish(p, "t", "x", Q1, false, 5);
    let token = held_token(&mut cl);
    refuse_unstored(&mut cl, token);
    cl.expect_closed(p);
    cl.expect_nothing(w);
    let again = cl.connect_ok(V311, "p", opts, true);
    cl.publish(again, "t", "x", Q1, false, 5);
    let token = held_token(&mut cl);
    cl.shards[0].on_cluster_in(
        ClusterIn::Ack {
            token,
            stored: true,
        },
        cl.now,
    );
    cl.pump();
    cl.expect(again, puback(5));
}

#[test]
fn an_ack_for_a_closed_connection_goes_nowhere() {
    let mut cl = cluster_node();
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    cl.publish(p, "t", "x", Q1, false, 3);
    let token = cl.shards[0]
        .take_cluster_out()
        .expect("forwarded")
        .publishes[0]
        .ack
        .expect("held");
    cl.drop_connection(p);
    let q = cl.connect_ok(V311, "q", ConnectOpts::default(), false);
    cl.shards[0].on_cluster_in(
        ClusterIn::Ack {
            token,
            stored: true,
        },
        cl.now,
    );
    cl.pump();
    cl.expect_nothing(q);
}

#[test]
fn copies_from_other_nodes_are_delivered_and_not_forwarded() {
    let mut cl = cluster_node();
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "r/+", Q1);
    let _ = cl.shards[0].take_cluster_out();
    let msg = from_node(&cl, "r/1", "remote", Q1);
    cl.shards[0].on_cluster_in(
        ClusterIn::Msg(ShardMsg::Publish {
            msg,
            plain: true,
            shared: Vec::new(),
            hold: 0,
        }),
        cl.now,
    );
    cl.pump();
    cl.expect(s, pubp("r/1", "remote", Q1, false, 1));
    assert!(cl.shards[0].take_cluster_out().is_none());
}

#[test]
fn shared_groups_are_picked_by_nats_not_locally() {
    let mut cl = cluster_node();
    let m = cl.connect_ok(V311, "m", ConnectOpts::default(), false);
    cl.subscribe(m, "$share/g/s/#", Q0);
    let out = cl.shards[0].take_cluster_out().expect("interest");
    assert_eq!(out.interest[0].group.as_deref(), Some(&b"g"[..]));
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    cl.publish(p, "s/1", "x", Q0, false, 0);
    // NATS's queue group decides; the copy comes back if this node is picked.
    cl.expect_nothing(m);
    let target = SharedTarget {
        filter: Bytes::from_static(b"s/#"),
        group: Bytes::from_static(b"g"),
    };
    let msg = from_node(&cl, "s/1", "x", Q0);
    cl.shards[0].on_cluster_in(
        ClusterIn::Msg(ShardMsg::Publish {
            msg,
            plain: false,
            shared: vec![target],
            hold: 0,
        }),
        cl.now,
    );
    cl.pump();
    cl.expect(m, pubp("s/1", "x", Q0, false, 0));
}

#[test]
fn single_node_mode_is_unchanged() {
    let mut cl = Cluster::new(1, cfg());
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "$share/g/t", Q0);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    cl.publish(p, "t", "x", Q1, false, 9);
    cl.expect(p, puback(9));
    cl.expect(s, pubp("t", "x", Q0, false, 0));
    assert!(cl.shards[0].take_cluster_out().is_none());
}

/// A cluster node whose cluster thread runs, connected to NATS (`max_payload` as
/// given, 0: NATS's default), with topics up to 64 KiB allowed.
fn connected_node(max_payload: u64) -> (Cluster, Arc<ClusterStatus>) {
    let mut config = cfg();
    config.max_topic_len = 65_535;
    let mut cl = Cluster::new(1, config);
    cl.shards[0].enable_cluster();
    let status = Arc::new(ClusterStatus::default());
    status.connected.store(true, Ordering::Relaxed);
    status.max_payload.store(max_payload, Ordering::Relaxed);
    cl.shards[0].set_cluster_status(status.clone());
    (cl, status)
}

fn refused(code: ReasonCode, packet_id: u16, qos: QoS) -> Packet {
    let r = PubResp {
        packet_id,
        code,
        properties: Properties::default(),
    };
    if qos == Q1 {
        Packet::PubAck(r)
    } else {
        Packet::PubRec(r)
    }
}

/// Review10 H3: a topic whose NATS subject would pass nats-server's control line is
/// refused (not delivered, not forwarded, never acknowledged as taken): 0x90 to an
/// MQTT 5 QoS 1/2 publisher; a QoS 0 or 3.1.1 publisher is disconnected, as for a
/// topic over `max_topic_len`. The same topic fits a single node.
#[test]
fn a_topic_too_long_for_nats_is_refused() {
    let (mut cl, status) = connected_node(0);
    let long = " ".repeat(1_300);
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "#", Q1);
    let _ = cl.shards[0].take_cluster_out();
    let p5 = cl.connect_ok(V5, "p5", ConnectOpts::default(), false);
    cl.publish(p5, &long, "x", Q1, false, 1);
    cl.expect(p5, refused(ReasonCode::TopicNameInvalid, 1, Q1));
    cl.publish(p5, &long, "x", Q2, false, 2);
    cl.expect(p5, refused(ReasonCode::TopicNameInvalid, 2, Q2));
    cl.expect_open(p5);
    // A retained one's KV key (base64 of the topic) is bounded too.
    let plain = "a".repeat(3_000);
    cl.publish(p5, &plain, "x", Q1, true, 3);
    cl.expect(p5, refused(ReasonCode::TopicNameInvalid, 3, Q1));
    cl.publish(p5, &plain, "x", Q1, false, 4);
    cl.expect(s, pubp(&plain, "x", Q1, false, 1));
    let out = cl.shards[0].take_cluster_out().expect("the fitting one");
    assert_eq!(out.publishes.len(), 1);
    assert!(out.publishes[0].ack.is_some(), "held for JetStream");
    cl.expect_nothing(s);
    assert_eq!(status.refused_subjects.load(Ordering::Relaxed), 3);
    cl.publish(p5, &long, "x", Q0, false, 0);
    cl.expect(p5, disconnect(ReasonCode::TopicNameInvalid));
    cl.expect_closed(p5);
    let p3 = cl.connect_ok(V311, "p3", ConnectOpts::default(), false);
    cl.publish(p3, &long, "x", Q1, false, 5);
    cl.expect_nothing(p3);
    cl.expect_closed(p3);
    cl.expect_nothing(s);
    assert!(cl.shards[0].take_cluster_out().is_none());

    let mut config = cfg();
    config.max_topic_len = 65_535;
    let mut single = Cluster::new(1, config);
    let p = single.connect_ok(V5, "p", ConnectOpts::default(), false);
    single.publish(p, &long, "x", Q1, false, 1);
    single.expect(p, puback(1));
}

/// Review10 H3: a SUBSCRIBE whose NATS subscription nats-server would refuse (closing
/// the connection, again after every reconnect) gets 0x8F (3.1.1: 0x80).
#[test]
fn a_filter_too_long_for_nats_is_refused() {
    let (mut cl, status) = connected_node(0);
    let long = format!("{}/+", " ".repeat(1_300));
    // 3.1.1 has one failure code, 0x80.
    for (v, code) in [
        (V5, ReasonCode::TopicFilterInvalid),
        (V311, ReasonCode::UnspecifiedError),
    ] {
        let c = cl.connect_ok(v, &format!("c{v:?}"), ConnectOpts::default(), false);
        cl.subscribe_with(
            c,
            &long,
            SubscriptionOptions::default(),
            Properties::default(),
        );
        cl.expect(c, suback(1, &[code]));
        // The group name is on the SUB line too.
        let shared = format!("$share/{}/t", "g".repeat(3_900));
        cl.subscribe_with(
            c,
            &shared,
            SubscriptionOptions::default(),
            Properties::default(),
        );
        cl.expect(c, suback(1, &[code]));
        cl.expect_open(c);
    }
    assert!(cl.shards[0].take_cluster_out().is_none(), "no interest");
    assert_eq!(status.refused_subjects.load(Ordering::Relaxed), 4);
}

/// Review10 H3: a message larger than the server's `max_payload` with its headers is
/// not forwarded (nats-server would close the connection): refused with 0x97 to an
/// MQTT 5 QoS 1/2 publisher, never acknowledged as stored.
#[test]
fn a_message_too_large_for_nats_is_refused() {
    let (mut cl, status) = connected_node(4_096);
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "t", Q1);
    let _ = cl.shards[0].take_cluster_out();
    let p5 = cl.connect_ok(V5, "p5", ConnectOpts::default(), false);
    // Under max_payload alone, over it with the headers.
    let big = "x".repeat(4_000);
    cl.publish(p5, "t", &big, Q1, false, 1);
    cl.expect(p5, refused(ReasonCode::QuotaExceeded, 1, Q1));
    cl.publish(p5, "t", &big, Q2, false, 2);
    cl.expect(p5, refused(ReasonCode::QuotaExceeded, 2, Q2));
    cl.expect_nothing(s);
    assert!(cl.shards[0].take_cluster_out().is_none());
    cl.publish(p5, "t", "small", Q1, false, 3);
    cl.expect(s, pubp("t", "small", Q1, false, 1));
    assert_eq!(cl.shards[0].take_cluster_out().unwrap().publishes.len(), 1);
    assert_eq!(status.refused_large.load(Ordering::Relaxed), 2);
    cl.publish(p5, "t", &big, Q0, false, 0);
    cl.expect(p5, disconnect(ReasonCode::QuotaExceeded));
    cl.expect_closed(p5);
    let p3 = cl.connect_ok(V311, "p3", ConnectOpts::default(), false);
    cl.publish(p3, "t", &big, Q1, false, 4);
    cl.expect_nothing(p3);
    cl.expect_closed(p3);
    cl.expect_nothing(s);
}

/// Review10 H4: while the cluster cannot take a publish (NATS lost, or the cluster
/// thread ended), nothing comes back through the queue group, so a local member of a
/// shared group gets it, as on a single node.
#[test]
fn shared_groups_are_picked_locally_while_the_cluster_cannot_take_them() {
    let (mut cl, status) = connected_node(0);
    let m = cl.connect_ok(V311, "m", ConnectOpts::default(), false);
    cl.subscribe(m, "$share/g/t", Q1);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    cl.publish(p, "t", "via nats", Q0, false, 0);
    cl.expect_nothing(m);
    status.connected.store(false, Ordering::Relaxed);
    cl.publish(p, "t", "cut", Q1, false, 1);
    cl.expect(m, pubp("t", "cut", Q1, false, 1));
    status.connected.store(true, Ordering::Relaxed);
    status.stopped.store(true, Ordering::Release);
    cl.publish(p, "t", "alone", Q0, false, 0);
    cl.expect(m, pubp("t", "alone", Q0, false, 0));
    status.stopped.store(false, Ordering::Release);
    cl.publish(p, "t", "back", Q0, false, 0);
    cl.expect_nothing(m);
}

/// Review10 H5: a client whose node died before its PUBREC re-sends the QoS 2 message
/// (DUP = 1) to this node, which had received the first copy from NATS: PUBREC, no
/// second delivery, not forwarded again. Another message under a DUP flag is new.
#[test]
fn a_qos2_resend_after_a_node_died_is_not_delivered_twice() {
    let (mut cl, status) = connected_node(0);
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "t", Q2);
    let _ = cl.shards[0].take_cluster_out();
    // The first copy, from the dead node, as the cluster thread records it.
    let first = crate::cluster::headers::Publisher {
        client_id: Bytes::from_static(b"p"),
        packet_id: 7,
        dup: false,
    };
    assert!(!status.qos2_resent(&first, b"t", b"m", cl.now));
    let msg = from_node(&cl, "t", "m", Q2);
    cl.shards[0].on_cluster_in(
        ClusterIn::Msg(ShardMsg::Publish {
            msg,
            plain: true,
            shared: Vec::new(),
            hold: 0,
        }),
        cl.now,
    );
    cl.pump();
    cl.expect(s, pubp("t", "m", Q2, false, 1));
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    let mut resend = publish("t", "m", Q2, false, 7);
    resend.dup = true;
    cl.send(p, Packet::Publish(resend.clone()));
    cl.expect(p, pubrec(7));
    cl.send(p, pubrel(7));
    cl.expect(p, pubcomp(7));
    cl.expect_nothing(s);
    assert!(cl.shards[0].take_cluster_out().is_none(), "not forwarded");
    assert_eq!(status.qos2_resends.load(Ordering::Relaxed), 1);
    // Another message with a DUP flag: delivered, forwarded with its publisher.
    let mut other = publish("t", "other", Q2, false, 8);
    other.dup = true;
    cl.send(p, Packet::Publish(other));
    let out = cl.shards[0].take_cluster_out().expect("forwarded");
    let publisher = out.publishes[0].publisher.as_ref().expect("publisher");
    assert_eq!(
        (&publisher.client_id[..], publisher.packet_id, publisher.dup),
        (&b"p"[..], 8, true)
    );
    assert!(matches!(cl.next(s), Some(Packet::Publish(m)) if &m.payload[..] == b"other"));
}

/// While the NATS writer is full (`ClusterStatus::forward_full`), a loop makes no
/// copy of a plain QoS 0 message for it (counted when the turn is handed over), but
/// still hands over a retained one (the retained bucket takes it whether or not it is
/// forwarded) and a QoS 1 one (its PUBACK waits for it); local delivery is unchanged.
#[test]
fn a_full_writer_stops_qos0_copies_at_the_loop() {
    let (mut cl, status) = connected_node(0);
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "t/#", Q1);
    let _ = cl.shards[0].take_cluster_out();
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    status.forward_full.store(true, Ordering::Relaxed);
    cl.publish(p, "t/0", "plain", Q0, false, 0);
    cl.publish(p, "t/r", "kept", Q0, true, 0);
    cl.publish(p, "t/1", "held", Q1, false, 7);
    cl.expect(s, pubp("t/0", "plain", Q0, false, 0));
    cl.expect(s, pubp("t/r", "kept", Q0, false, 0));
    cl.expect(s, pubp("t/1", "held", Q1, false, 1));
    let out = cl.shards[0].take_cluster_out().expect("a turn");
    let topics: Vec<_> = out.publishes.iter().map(|f| &f.msg.topic[..]).collect();
    assert_eq!(topics, [&b"t/r"[..], &b"t/1"[..]]);
    assert_eq!(out.writer_full_dropped, 1);
    // Room again: the next QoS 0 copy is made.
    status.forward_full.store(false, Ordering::Relaxed);
    cl.publish(p, "t/0", "again", Q0, false, 0);
    cl.expect(s, pubp("t/0", "again", Q0, false, 0));
    let out = cl.shards[0].take_cluster_out().expect("a turn");
    assert_eq!(out.publishes.len(), 1);
    assert_eq!(out.writer_full_dropped, 0);
}
