//! Durability across loops (`shard/durable_remote.rs`), on virtual time with one
//! simulated disk per loop: a publisher's PUBACK waits until the loop of a
//! persistent subscriber has the copy in its own log, a failed write or a full mesh
//! there refuses it, and what was acknowledged survives a crash of both loops.

use super::cfg;
use crate::protocol::{Packet, PubResp, QoS, ReasonCode};
use crate::shard::harness::*;
use crate::store::sim::SimDisk;
use crate::store::wal::{SyncMode, Wal};
use crate::store::{recover, DiskError};

const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;
const SEG: u64 = 1 << 16;

/// A two-loop cluster whose loop `i` recovered from `disks[i]`.
fn two_loops(disks: &mut [SimDisk; 2]) -> Cluster {
    let mut cl = Cluster::new(2, cfg());
    for (i, disk) in disks.iter_mut().enumerate() {
        let r = recover(&*disk, SEG).expect("recovers");
        for op in &r.ops {
            disk.run(op).expect("tidy");
        }
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
    }
    cl.pump();
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
    let id = id_on(1, 2, "sub");
    let s = cl.connect_ok(V311, &id, opts(false, 1, false), false);
    let options = crate::protocol::SubscriptionOptions {
        qos: Q2,
        ..Default::default()
    };
    cl.subscribe_with(s, "t/#", options, crate::protocol::Properties::default());
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
