//! A cluster node with a data directory (`shard/durable_cluster.rs`): a QoS 1/2
//! PUBACK/PUBREC waits for JetStream *and* for the log, whichever answers last, and a
//! failed write is refused only once JetStream has answered too.

use super::cfg;
use crate::protocol::{Packet, PubResp, QoS, ReasonCode};
use crate::shard::cluster::{AckToken, ClusterIn};
use crate::shard::harness::*;
use crate::store::sim::SimDisk;
use crate::store::wal::{SyncMode, Wal};
use crate::store::{recover, DiskError};

const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;
const SEG: u64 = 1 << 16;

/// A one-loop cluster node with a log on `disk` and an offline persistent
/// subscriber of `t/#`.
fn node(disk: &mut SimDisk) -> Cluster {
    let mut cl = Cluster::new(1, cfg());
    let r = recover(&*disk, SEG).expect("recovers");
    let wal = Wal::new(
        SyncMode::Fsync,
        SEG,
        r.segments,
        r.seg_len,
        r.next_lsn,
        r.snapshot,
    );
    let now = cl.now;
    cl.shards[0].attach_store(wal, r.state.next_msg_id, now, 1_700_000_000_000);
    cl.shards[0].enable_cluster();
    cl.pump();
    let opts = ConnectOpts {
        clean: false,
        ..ConnectOpts::default()
    };
    let s = cl.connect_ok(V311, "sub", opts, false);
    let options = crate::protocol::SubscriptionOptions {
        qos: Q2,
        ..Default::default()
    };
    cl.subscribe_with(s, "t/#", options, crate::protocol::Properties::default());
    run_disk(&mut cl, disk);
    assert!(matches!(cl.next(s), Some(Packet::SubAck(_))));
    cl.drop_connection(s);
    run_disk(&mut cl, disk);
    let _ = cl.shards[0].take_cluster_out();
    cl
}

fn run_disk(cl: &mut Cluster, disk: &mut SimDisk) {
    while let Some(op) = cl.shards[0].poll_store_op() {
        let r = disk.run(&op);
        let now = cl.now;
        cl.shards[0].on_store_done(r, now);
    }
    cl.pump();
}

/// The held acknowledgement the last publish handed the cluster thread.
fn token(cl: &mut Cluster) -> AckToken {
    let out = cl.shards[0].take_cluster_out().expect("forwarded");
    out.publishes[0].ack.expect("held for JetStream")
}

fn jetstream_acks(cl: &mut Cluster, token: AckToken) {
    let now = cl.now;
    cl.shards[0].on_cluster_in(
        ClusterIn::Ack {
            token,
            stored: true,
        },
        now,
    );
    cl.pump();
}

#[test]
fn the_log_first_then_jetstream() {
    let mut disk = SimDisk::new();
    let mut cl = node(&mut disk);
    let p = cl.connect_ok(V311, "pub", ConnectOpts::default(), false);
    cl.publish(p, "t/1", "x", Q1, false, 42);
    let t = token(&mut cl);
    run_disk(&mut cl, &mut disk);
    // The copy is durable, JetStream has not answered.
    cl.expect_nothing(p);
    jetstream_acks(&mut cl, t);
    cl.expect(p, puback(42));
}

#[test]
fn jetstream_first_then_the_log() {
    let mut disk = SimDisk::new();
    let mut cl = node(&mut disk);
    let p = cl.connect_ok(V311, "pub", ConnectOpts::default(), false);
    cl.publish(p, "t/2", "y", Q2, false, 7);
    let t = token(&mut cl);
    jetstream_acks(&mut cl, t);
    // JetStream has it; the log does not yet (before: the PUBREC went here).
    cl.expect_nothing(p);
    run_disk(&mut cl, &mut disk);
    cl.expect(p, pubrec(7));
    cl.send(p, pubrel(7));
    cl.expect(p, pubcomp(7));
    // The same packet id again: a new message, held for both once more.
    cl.publish(p, "t/2", "z", Q2, false, 7);
    let t = token(&mut cl);
    run_disk(&mut cl, &mut disk);
    cl.expect_nothing(p);
    jetstream_acks(&mut cl, t);
    cl.expect(p, pubrec(7));
}

#[test]
fn a_failed_write_is_refused_once_jetstream_answered() {
    let mut disk = SimDisk::new();
    let mut cl = node(&mut disk);
    let p = cl.connect_ok(V5, "pub5", ConnectOpts::default(), false);
    cl.publish(p, "t/3", "lost", Q1, false, 9);
    let t = token(&mut cl);
    disk.fail_next_write = Some(DiskError::NoSpace);
    run_disk(&mut cl, &mut disk);
    // The refusal waits: the id must not be reused before JetStream's late answer.
    cl.expect_nothing(p);
    jetstream_acks(&mut cl, t);
    let mut refused = PubResp::new(9);
    refused.code = ReasonCode::QuotaExceeded;
    cl.expect(p, Packet::PubAck(refused));
    assert_eq!(cl.shards[0].stats().store_acks_refused, 1);
    // Next time both answer and the PUBACK goes.
    cl.publish(p, "t/3", "kept", Q1, false, 9);
    let t = token(&mut cl);
    run_disk(&mut cl, &mut disk);
    jetstream_acks(&mut cl, t);
    cl.expect(p, puback(9));
}

#[test]
fn with_nothing_to_log_jetstream_alone_decides() {
    let mut disk = SimDisk::new();
    let mut cl = node(&mut disk);
    let p = cl.connect_ok(V311, "pub", ConnectOpts::default(), false);
    cl.publish(p, "nobody/here", "x", Q1, false, 5);
    let t = token(&mut cl);
    cl.expect_nothing(p);
    assert!(cl.shards[0].poll_store_op().is_none(), "nothing to write");
    jetstream_acks(&mut cl, t);
    cl.expect(p, puback(5));
}
