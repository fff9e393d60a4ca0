//! A full mesh between two shards (`Cluster::mesh_room`): data may be dropped and
//! counted, control messages (route updates, their acks, retained-store updates)
//! never are.

use bytes::Bytes;
use smallvec::smallvec;

use super::cfg;
use crate::protocol::{Packet, Properties, QoS, SubscriptionOptions, UnsubAck, Unsubscribe};
use crate::shard::harness::*;
use crate::shard::ROUTE_BATCH_MAX;

const Q0: QoS = QoS::AtMostOnce;

fn unsubscribe(cl: &mut Cluster, c: Cid, filter: &'static str, packet_id: u16) {
    cl.send(
        c,
        Packet::Unsubscribe(Unsubscribe {
            packet_id,
            filters: smallvec![Bytes::from_static(filter.as_bytes())],
            properties: Properties::default(),
        }),
    );
    cl.expect(
        c,
        Packet::UnsubAck(UnsubAck {
            packet_id,
            codes: smallvec![],
            properties: Properties::default(),
        }),
    );
}

/// Two shards, `x` subscribed on shard 0 and published from shard 1, so shard 1's
/// ring to shard 0 can be filled with publishes. Returns (cluster, subscriber of `x`
/// on 0, publisher on 1, a client on 1, a client on 0).
fn two_shards() -> (Cluster, Cid, Cid, Cid, Cid) {
    let mut cl = Cluster::new(2, cfg());
    let x_sub = cl.connect_ok(V311, &id_on(0, 2, "xs"), ConnectOpts::default(), false);
    cl.subscribe(x_sub, "x", Q0);
    let pub1 = cl.connect_ok(V311, &id_on(1, 2, "p1"), ConnectOpts::default(), false);
    let c1 = cl.connect_ok(V311, &id_on(1, 2, "c1"), ConnectOpts::default(), false);
    let c0 = cl.connect_ok(V311, &id_on(0, 2, "c0"), ConnectOpts::default(), false);
    (cl, x_sub, pub1, c1, c0)
}

/// Fills `from → to` (room 2) with publishes held in flight; the third is dropped.
fn fill(cl: &mut Cluster, publisher: Cid) {
    cl.mesh_room = Some(2);
    cl.hold_mesh = true;
    let dropped = cl.mesh_dropped;
    for _ in 0..3 {
        cl.publish(publisher, "x", "m", Q0, false, 0);
    }
    assert_eq!(
        cl.mesh_dropped - dropped,
        1,
        "QoS 0 data beyond the room is dropped"
    );
}

#[test]
fn a_route_add_waits_for_room_instead_of_being_dropped() {
    let (mut cl, x_sub, pub1, c1, c0) = two_shards();
    fill(&mut cl, pub1);
    cl.subscribe_with(
        c1,
        "y",
        SubscriptionOptions::default(),
        Properties::default(),
    );
    // Held until shard 0 routes `y` to shard 1.
    cl.expect_nothing(c1);
    cl.hold_mesh = false;
    cl.pump();
    assert_eq!(cl.mesh_dropped, 1, "the route update was not dropped");
    cl.expect(c1, suback(1, &[granted(Q0)]));
    cl.expect(x_sub, pubp("x", "m", Q0, false, 0));
    cl.expect(x_sub, pubp("x", "m", Q0, false, 0));
    cl.expect_nothing(x_sub);
    cl.publish(c0, "y", "hello", Q0, false, 0);
    cl.expect(c1, pubp("y", "hello", Q0, false, 0));
}

#[test]
fn a_route_ack_waits_for_room_instead_of_being_dropped() {
    let (mut cl, pub0, c1) = filled_zero_to_one();
    cl.subscribe_with(
        c1,
        "y",
        SubscriptionOptions::default(),
        Properties::default(),
    );
    // Shard 0 applies the route while its ring back to shard 1 is full: the ack
    // must wait for room.
    cl.deliver_pair(1, 0);
    cl.expect_nothing(c1);
    cl.hold_mesh = false;
    cl.pump();
    assert_eq!(cl.mesh_dropped, 1, "the ack was not dropped");
    cl.expect(c1, suback(1, &[granted(Q0)]));
    cl.publish(pub0, "y", "hello", Q0, false, 0);
    cl.expect(c1, pubp("y", "hello", Q0, false, 0));
}

#[test]
fn route_updates_waiting_for_room_coalesce_per_filter() {
    let (mut cl, _x_sub, pub1, c1, c0) = two_shards();
    fill(&mut cl, pub1);
    let routes_before = cl.mesh_counts.1;
    // add, remove, add of `y` and add, remove of `z` while the ring is full.
    cl.subscribe_with(
        c1,
        "y",
        SubscriptionOptions::default(),
        Properties::default(),
    );
    unsubscribe(&mut cl, c1, "y", 2);
    cl.subscribe_with(
        c1,
        "z",
        SubscriptionOptions::default(),
        Properties::default(),
    );
    unsubscribe(&mut cl, c1, "z", 3);
    cl.subscribe_with(
        c1,
        "y",
        SubscriptionOptions::default(),
        Properties::default(),
    );
    cl.expect_nothing(c1);
    cl.hold_mesh = false;
    cl.pump();
    assert_eq!(
        cl.mesh_counts.1 - routes_before,
        2,
        "one route update per filter: y (add) and z (remove)"
    );
    // Every held SUBACK is released, the one whose route was superseded included.
    for _ in 0..3 {
        cl.expect(c1, suback(1, &[granted(Q0)]));
    }
    cl.expect_nothing(c1);
    let publishes_before = cl.mesh_counts.0;
    cl.publish(c0, "z", "gone", Q0, false, 0);
    assert_eq!(
        cl.mesh_counts.0, publishes_before,
        "z is not routed to shard 1"
    );
    cl.publish(c0, "y", "hello", Q0, false, 0);
    cl.expect(c1, pubp("y", "hello", Q0, false, 0));
    cl.expect_nothing(c1);
}

/// Two shards, `x` subscribed on shard 1 and published from shard 0, so shard 0's
/// ring to shard 1 can be filled. Returns (cluster, publisher on 0, a client on 1).
fn filled_zero_to_one() -> (Cluster, Cid, Cid) {
    let mut cl = Cluster::new(2, cfg());
    let x_sub = cl.connect_ok(V311, &id_on(1, 2, "xs"), ConnectOpts::default(), false);
    cl.subscribe(x_sub, "x", Q0);
    let pub0 = cl.connect_ok(V311, &id_on(0, 2, "p0"), ConnectOpts::default(), false);
    let c1 = cl.connect_ok(V311, &id_on(1, 2, "c1"), ConnectOpts::default(), false);
    fill(&mut cl, pub0);
    (cl, pub0, c1)
}

/// Frees the mesh and delivers everything in flight or waiting.
fn free(cl: &mut Cluster) {
    cl.hold_mesh = false;
    cl.mesh_room = None;
    cl.pump();
}

#[test]
fn a_retained_update_waits_for_room_and_reaches_the_replica() {
    let (mut cl, pub0, c1) = filled_zero_to_one();
    let carried = cl.mesh_retained;
    cl.publish(pub0, "r", "v", Q0, true, 0);
    assert_eq!(cl.shards[0].stats().retained, 1);
    assert_eq!(cl.shards[1].stats().retained, 0, "still waiting");
    assert_eq!(cl.mesh_dropped, 1, "the retained update was not dropped");
    free(&mut cl);
    assert_eq!(cl.mesh_retained - carried, 1);
    assert_eq!(cl.shards[1].stats().retained, 1, "replica on shard 1");
    cl.subscribe(c1, "r", Q0);
    cl.expect(c1, pubp("r", "v", Q0, true, 0));
    cl.expect_nothing(c1);
}

#[test]
fn a_newer_retained_message_supersedes_a_waiting_one() {
    let (mut cl, pub0, c1) = filled_zero_to_one();
    let carried = cl.mesh_retained;
    cl.publish(pub0, "r", "old", Q0, true, 0);
    cl.publish(pub0, "s", "other", Q0, true, 0);
    cl.publish(pub0, "r", "new", Q0, true, 0);
    free(&mut cl);
    assert_eq!(
        cl.mesh_retained - carried,
        2,
        "one update per topic: r and s"
    );
    assert_eq!(cl.shards[1].stats().retained, 2);
    assert_eq!(
        cl.shards[1].stats().bytes_retained,
        cl.shards[0].stats().bytes_retained
    );
    cl.subscribe(c1, "r", Q0);
    cl.expect(c1, pubp("r", "new", Q0, true, 0));
    cl.expect_nothing(c1);
}

#[test]
fn a_retained_delete_supersedes_a_waiting_message() {
    let (mut cl, pub0, c1) = filled_zero_to_one();
    free(&mut cl);
    // Replicated while there was room.
    cl.publish(pub0, "r", "first", Q0, true, 0);
    assert_eq!(cl.shards[1].stats().retained, 1);
    fill(&mut cl, pub0);
    let carried = cl.mesh_retained;
    cl.publish(pub0, "r", "second", Q0, true, 0);
    cl.publish(pub0, "r", "", Q0, true, 0);
    // A delete of a topic no shard holds is not sent at all.
    cl.publish(pub0, "never", "", Q0, true, 0);
    free(&mut cl);
    assert_eq!(cl.mesh_retained - carried, 1, "only the delete of r");
    assert_eq!(cl.shards[0].stats().retained, 0);
    assert_eq!(cl.shards[1].stats().retained, 0, "the delete won");
    cl.subscribe(c1, "r", Q0);
    cl.expect_nothing(c1);
}

#[test]
fn a_retained_update_reaches_the_replica_before_the_route_ack() {
    let (mut cl, pub0, c1) = filled_zero_to_one();
    // No subscriber of `r` yet: not forwarded live, only the replica needs it.
    cl.publish(pub0, "r", "v", Q0, true, 0);
    cl.subscribe_with(
        c1,
        "r",
        SubscriptionOptions::default(),
        Properties::default(),
    );
    // Shard 0 applies the route while its ring to shard 1 is still full: its ack
    // waits behind the retained update.
    cl.deliver_pair(1, 0);
    cl.expect_nothing(c1);
    free(&mut cl);
    cl.expect(c1, suback(1, &[granted(Q0)]));
    cl.expect(c1, pubp("r", "v", Q0, true, 0));
    cl.expect_nothing(c1);
}

#[test]
fn live_delivery_of_a_retained_message_is_data_and_the_replica_still_converges() {
    let (mut cl, pub0, c1) = filled_zero_to_one();
    free(&mut cl);
    cl.subscribe(c1, "r", Q0);
    fill(&mut cl, pub0);
    let dropped = cl.mesh_dropped;
    cl.publish(pub0, "r", "v", Q0, true, 0);
    assert_eq!(
        cl.mesh_dropped - dropped,
        1,
        "the live copy is data: dropped"
    );
    free(&mut cl);
    // The two held `x` publishes went to another client; `c1` missed `r` live.
    cl.expect_nothing(c1);
    assert_eq!(cl.shards[1].stats().retained, 1, "replica converged");
    let late = cl.connect_ok(V311, &id_on(1, 2, "late"), ConnectOpts::default(), false);
    cl.subscribe(late, "r", Q0);
    cl.expect(late, pubp("r", "v", Q0, true, 0));
}

#[test]
fn route_updates_waiting_for_room_leave_in_batches() {
    let (mut cl, _x_sub, pub1, c1, c0) = two_shards();
    fill(&mut cl, pub1);
    let (updates, messages) = (cl.mesh_counts.1, cl.mesh_counts.2);
    // A subscribe storm on shard 1 while its ring to shard 0 is full.
    let n = ROUTE_BATCH_MAX + 10;
    for i in 0..n {
        cl.subscribe_with(
            c1,
            &format!("dev/{i}/cmd"),
            SubscriptionOptions::default(),
            Properties::default(),
        );
    }
    cl.expect_nothing(c1);
    cl.hold_mesh = false;
    cl.pump();
    assert_eq!(cl.mesh_counts.1 - updates, n, "one add per filter");
    assert_eq!(
        cl.mesh_counts.2 - messages,
        2,
        "a full batch and the rest: two ring slots, not {n}"
    );
    for _ in 0..n {
        cl.expect(c1, suback(1, &[granted(Q0)]));
    }
    // Shard 0 applied every add of both batches.
    for i in [0, ROUTE_BATCH_MAX - 1, ROUTE_BATCH_MAX, n - 1] {
        let topic = format!("dev/{i}/cmd");
        cl.publish(c0, &topic, "m", Q0, false, 0);
        cl.expect(c1, pubp(&topic, "m", Q0, false, 0));
    }
}
