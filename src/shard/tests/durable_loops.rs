//! Durability across loops (`shard/durable_remote.rs`), on virtual time with one
//! simulated disk per loop: a publisher's PUBACK waits until the loop of a
//! persistent subscriber has the copy in its own log, a failed write or a full mesh
//! there refuses it, and what was acknowledged survives a crash of both loops;
//! after a restart a loop that runs first routes to the recovered subscribers of a
//! loop not heard from yet (`PeerRoutes`).

use super::cfg;
use crate::protocol::{Packet, PubResp, QoS, ReasonCode};
use crate::shard::harness::*;
use crate::shard::PeerRoutes;
use crate::store::sim::SimDisk;
use crate::store::wal::{SyncMode, Wal};
use crate::store::{recover, DiskError};

const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;
const SEG: u64 = 1 << 16;

/// A two-loop cluster whose loop `i` recovered from `disks[i]`, with the mesh run
/// until nothing moves (every loop has had its first turns).
fn two_loops(disks: &mut [SimDisk; 2]) -> Cluster {
    let mut cl = started(disks);
    cl.pump();
    cl
}

/// Start-up as `worker/store.rs` does it: every loop recovered before any runs,
/// each given its log, its state and the other loops' recovered routes. Nothing has
/// crossed the mesh yet.
fn started(disks: &mut [SimDisk; 2]) -> Cluster {
    let mut cl = Cluster::new(2, cfg());
    let recovered: Vec<_> = disks
        .iter_mut()
        .map(|disk| {
            let r = recover(&*disk, SEG).expect("recovers");
            for op in &r.ops {
                disk.run(op).expect("tidy");
            }
            r
        })
        .collect();
    let peer_routes = PeerRoutes::of(recovered.iter().map(|r| &r.state));
    for (i, r) in recovered.into_iter().enumerate() {
        let wal = Wal::new(
            SyncMode::Process,
            SEG,
            r.segments,
            r.seg_len,
            r.next_lsn,
            r.snapshot,
        );
        let now = cl.now;
        cl.shards[i].attach_store(wal, r.state.next_msg_id, now, 1_700_000_000_000);
        cl.shards[i].load_store(r.state, now);
        cl.shards[i].load_peer_routes(&peer_routes);
    }
    cl
}

/// Loop `i`'s IO side: its log's operations run on its disk until none is left.
fn run_disk(cl: &mut Cluster, disks: &mut [SimDisk; 2], i: usize) {
    while let Some(op) = cl.shards[i].poll_store_op() {
        let r = disks[i].run(&op);
        let now = cl.now;
        cl.shards[i].on_store_done(r, now);
    }
    cl.pump();
}

fn run_all(cl: &mut Cluster, disks: &mut [SimDisk; 2]) {
    for _ in 0..4 {
        run_disk(cl, disks, 0);
        run_disk(cl, disks, 1);
    }
}

fn opts(clean: bool, on: usize, v5: bool) -> ConnectOpts {
    let mut o = ConnectOpts {
        clean,
        accept_on: on,
        ..ConnectOpts::default()
    };
    if v5 && !clean {
        o.properties.to_mut().session_expiry_interval_s = Some(3600);
    }
    o
}

/// A persistent subscriber of `t/#` on loop 1, offline, and its id.
fn offline_subscriber(cl: &mut Cluster, disks: &mut [SimDisk; 2]) -> String {
    offline_subscriber_of(cl, disks, "t/#")
}

/// A persistent subscriber of `filter` on loop 1, offline, and its id.
fn offline_subscriber_of(cl: &mut Cluster, disks: &mut [SimDisk; 2], filter: &str) -> String {
    let id = id_on(1, 2, "sub");
    let s = cl.connect_ok(V311, &id, opts(false, 1, false), false);
    let options = crate::protocol::SubscriptionOptions {
        qos: Q2,
        ..Default::default()
    };
    cl.subscribe_with(s, filter, options, crate::protocol::Properties::default());
    run_all(cl, disks);
    assert!(matches!(cl.next(s), Some(Packet::SubAck(_))));
    cl.drop_connection(s);
    run_all(cl, disks);
    id
}

#[test]
fn a_puback_waits_for_the_log_of_the_subscribers_loop() {
    let mut disks = [SimDisk::new(), SimDisk::new()];
    let mut cl = two_loops(&mut disks);
    let sub = offline_subscriber(&mut cl, &mut disks);
    let p = cl.connect_ok(V311, &id_on(0, 2, "pub"), opts(true, 0, false), false);
    cl.publish(p, "t/1", "one", Q1, false, 7);
    cl.publish(p, "t/2", "two", Q2, false, 8);
    // The publisher's loop has nothing to write (a clean publisher, no subscriber
    // there); the copies are loop 1's to keep.
    run_disk(&mut cl, &mut disks, 0);
    cl.expect_nothing(p);
    run_disk(&mut cl, &mut disks, 1);
    cl.expect(p, puback(7));
    cl.expect(p, pubrec(8));
    cl.send(p, pubrel(8));
    cl.expect(p, pubcomp(8));
    // Not yet written on loop 1 when both die: never acknowledged.
    cl.publish(p, "t/3", "three", Q1, false, 9);
    run_disk(&mut cl, &mut disks, 0);
    cl.expect_nothing(p);

    let mut disks = [disks[0].crash_process(), disks[1].crash_process()];
    let mut cl = two_loops(&mut disks);
    let s = cl.connect(V311, &sub, opts(false, 1, false));
    run_all(&mut cl, &mut disks);
    assert!(matches!(cl.next(s), Some(Packet::ConnAck(a)) if a.session_present));
    cl.expect(s, pubp("t/1", "one", Q1, false, 1));
    cl.expect(s, pubp("t/2", "two", Q2, false, 2));
    cl.expect_nothing(s);
}

#[test]
fn replies_keep_their_order_behind_one_waiting_for_another_loop() {
    let mut disks = [SimDisk::new(), SimDisk::new()];
    let mut cl = two_loops(&mut disks);
    offline_subscriber(&mut cl, &mut disks);
    let p = cl.connect_ok(V311, &id_on(0, 2, "pub"), opts(true, 0, false), false);
    cl.publish(p, "t/1", "remote", Q1, false, 1);
    // No subscriber anywhere: needs nothing, yet must not overtake the first.
    cl.publish(p, "elsewhere", "x", Q1, false, 2);
    run_disk(&mut cl, &mut disks, 0);
    cl.expect_nothing(p);
    run_disk(&mut cl, &mut disks, 1);
    cl.expect(p, puback(1));
    cl.expect(p, puback(2));
}

#[test]
fn a_failed_write_on_the_subscribers_loop_refuses_the_puback() {
    let mut disks = [SimDisk::new(), SimDisk::new()];
    let mut cl = two_loops(&mut disks);
    let sub = offline_subscriber(&mut cl, &mut disks);
    let p5 = cl.connect_ok(V5, &id_on(0, 2, "p5"), opts(true, 0, true), false);
    let p3 = cl.connect_ok(V311, &id_on(0, 2, "p3"), opts(true, 0, false), false);
    cl.publish(p5, "t/a", "a", Q1, false, 1);
    cl.publish(p3, "t/b", "b", Q1, false, 2);
    disks[1].fail_next_write = Some(DiskError::NoSpace);
    run_all(&mut cl, &mut disks);
    let mut refused = PubResp::new(1);
    refused.code = ReasonCode::QuotaExceeded;
    cl.expect(p5, Packet::PubAck(refused));
    cl.expect_nothing(p3);
    assert_eq!(cl.shards[0].stats().store_acks_refused, 2);
    // Loop 1's log goes on: the next one is kept and acknowledged.
    cl.publish(p3, "t/c", "c", Q1, false, 3);
    run_all(&mut cl, &mut disks);
    cl.expect(p3, puback(3));
    let mut disks = [disks[0].crash_process(), disks[1].crash_process()];
    let mut cl = two_loops(&mut disks);
    let s = cl.connect(V311, &sub, opts(false, 1, false));
    run_all(&mut cl, &mut disks);
    assert!(matches!(cl.next(s), Some(Packet::ConnAck(a)) if a.session_present));
    cl.expect(s, pubp("t/c", "c", Q1, false, 1));
    cl.expect_nothing(s);
}

#[test]
fn a_publish_the_full_mesh_dropped_is_not_acknowledged() {
    let mut disks = [SimDisk::new(), SimDisk::new()];
    let mut cl = two_loops(&mut disks);
    offline_subscriber(&mut cl, &mut disks);
    let p5 = cl.connect_ok(V5, &id_on(0, 2, "p5"), opts(true, 0, true), false);
    cl.mesh_room = Some(1);
    cl.hold_mesh = true;
    cl.publish(p5, "t/a", "kept", Q1, false, 1);
    cl.publish(p5, "t/b", "dropped", Q1, false, 2);
    assert_eq!(cl.mesh_dropped, 1);
    cl.hold_mesh = false;
    cl.mesh_room = None;
    run_all(&mut cl, &mut disks);
    cl.expect(p5, puback(1));
    let mut refused = PubResp::new(2);
    refused.code = ReasonCode::QuotaExceeded;
    cl.expect(p5, Packet::PubAck(refused));
}

#[test]
fn a_retained_puback_waits_for_every_loops_replica_log() {
    let mut disks = [SimDisk::new(), SimDisk::new()];
    let mut cl = two_loops(&mut disks);
    let p = cl.connect_ok(V311, &id_on(0, 2, "pub"), opts(true, 0, false), false);
    cl.publish(p, "r/1", "kept", Q1, true, 3);
    // Loop 0's own replica is written; loop 1's is not yet.
    run_disk(&mut cl, &mut disks, 0);
    cl.expect_nothing(p);
    run_disk(&mut cl, &mut disks, 1);
    cl.expect(p, puback(3));
    let mut disks = [disks[0].crash_process(), disks[1].crash_process()];
    let mut cl = two_loops(&mut disks);
    // A subscriber on loop 1 gets it from loop 1's recovered replica.
    let s = cl.connect_ok(V311, &id_on(1, 2, "late"), opts(true, 1, false), false);
    cl.subscribe(s, "r/#", Q1);
    cl.expect(s, pubp("r/1", "kept", Q1, true, 1));
}

/// After a kill -9 a bridge's remote sends its unacknowledged messages again as soon
/// as the bridge reconnects, which may be before the loop of the one subscriber has
/// run its first turn (its recovered route adds leave then). Loop 0 must route to
/// that subscriber anyway: a message that matched nobody would be acknowledged at
/// once, and the remote would forget it (tests/bridge.rs, `a_kill_9_of_ringmq_...`).
fn a_publish_before_the_subscribers_loop_ran_reaches_its_recovered_session(filter: &str) {
    let mut disks = [SimDisk::new(), SimDisk::new()];
    let mut cl = two_loops(&mut disks);
    let sub = offline_subscriber_of(&mut cl, &mut disks, filter);
    let mut disks = [disks[0].crash_process(), disks[1].crash_process()];
    let mut cl = started(&mut disks);
    // Loop 1 has not been heard from: nothing it sends arrives yet.
    cl.hold_mesh = true;
    let p = cl.connect_ok(V311, &id_on(0, 2, "pub"), opts(true, 0, false), false);
    cl.publish(p, "t/1", "early", Q1, false, 7);
    cl.publish(p, "t/2", "early2", Q2, false, 8);
    run_disk(&mut cl, &mut disks, 0);
    // Forwarded to loop 1 and held for its log, not acknowledged for nobody.
    cl.expect_nothing(p);
    cl.hold_mesh = false;
    run_all(&mut cl, &mut disks);
    cl.expect(p, puback(7));
    cl.expect(p, pubrec(8));
    let s = cl.connect(V311, &sub, opts(false, 1, false));
    run_all(&mut cl, &mut disks);
    assert!(matches!(cl.next(s), Some(Packet::ConnAck(a)) if a.session_present));
    cl.expect(s, pubp("t/1", "early", Q1, false, 1));
    cl.expect(s, pubp("t/2", "early2", Q2, false, 2));
    cl.expect_nothing(s);
}

#[test]
fn a_publish_before_the_subscribers_loop_ran_reaches_its_recovered_subscription() {
    a_publish_before_the_subscribers_loop_ran_reaches_its_recovered_session("t/#");
}

#[test]
fn a_publish_before_the_members_loop_ran_reaches_its_recovered_shared_group() {
    a_publish_before_the_subscribers_loop_ran_reaches_its_recovered_session("$share/g/t/#");
}

#[test]
fn peer_routes_hold_each_loops_recovered_filters_once_with_their_groups() {
    let mut disks = [SimDisk::new(), SimDisk::new()];
    let mut cl = two_loops(&mut disks);
    offline_subscriber_of(&mut cl, &mut disks, "t/#");
    let other = id_on(1, 2, "other");
    let o = cl.connect_ok(V311, &other, opts(false, 1, false), false);
    let options = crate::protocol::SubscriptionOptions {
        qos: Q1,
        ..Default::default()
    };
    for filter in ["t/#", "$share/g/t/#"] {
        cl.subscribe_with(o, filter, options, crate::protocol::Properties::default());
        run_all(&mut cl, &mut disks);
        assert!(matches!(cl.next(o), Some(Packet::SubAck(_))));
    }
    let states: Vec<_> = disks
        .iter()
        .map(|d| recover(&d.crash_process(), SEG).expect("recovers").state)
        .collect();
    let routes = PeerRoutes::of(&states);
    // Loop 0 has no persistent session; loop 1 has `t/#` twice and the group once.
    assert_eq!((routes.row_len(0), routes.row_len(1)), (0, 2));
}
