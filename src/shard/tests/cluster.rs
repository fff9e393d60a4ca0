//! The shard's cluster side (`shard/cluster.rs`) without NATS: what a turn hands the
//! cluster thread, the PUBACK held for the JetStream ack, copies from other nodes,
//! shared groups left to NATS, and single-node mode unchanged.

use std::sync::Arc;

use bytes::Bytes;

use super::cfg;
use crate::protocol::{Packet, QoS};
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
        cluster_key: 0,
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
            stored: false,
        },
        cl.now,
    );
    cl.pump();
    cl.expect(p, pubrec(7));
    cl.send(p, pubrel(7));
    cl.expect(p, pubcomp(7));
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
