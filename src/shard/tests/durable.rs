//! Durability in the shard (`shard/durable.rs`), on virtual time with the simulated
//! disk: acknowledgements wait for the log, clean sessions and QoS 0 write nothing,
//! a failed write is never acknowledged, and what was acknowledged comes back
//! after a process crash and recovery.

use super::cfg;
use crate::protocol::{Packet, PubResp, QoS, ReasonCode};
use crate::shard::harness::*;
use crate::store::sim::SimDisk;
use crate::store::wal::{SyncMode, Wal};
use crate::store::{recover, DiskError};

const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;
const SEG: u64 = 1 << 16;

/// A one-shard cluster whose shard recovered from `disk` (its tidying ops run).
fn cluster_on(disk: &mut SimDisk, mode: SyncMode) -> Cluster {
    let mut cl = Cluster::new(1, cfg());
    let r = recover(&*disk, SEG).expect("recovers");
    for op in &r.ops {
        disk.run(op).expect("tidy");
    }
    let wal = Wal::new(mode, SEG, r.segments, r.seg_len, r.next_lsn, r.snapshot);
    let now = cl.now;
    cl.shards[0].attach_store(wal, r.state.next_msg_id, now, 1_700_000_000_000);
    cl.shards[0].load_store(r.state, now);
    cl.pump();
    cl
}

/// The IO side: runs the log's operations on `disk` until none is left.
fn run_disk(cl: &mut Cluster, disk: &mut SimDisk) {
    while let Some(op) = cl.shards[0].poll_store_op() {
        let r = disk.run(&op);
        let now = cl.now;
        cl.shards[0].on_store_done(r, now);
    }
    cl.pump();
}

fn persistent() -> ConnectOpts {
    ConnectOpts {
        clean: false,
        ..ConnectOpts::default()
    }
}

#[test]
fn acks_wait_for_the_log_and_survive_a_process_crash() {
    let mut disk = SimDisk::new();
    let mut cl = cluster_on(&mut disk, SyncMode::Process);
    let s = cl.connect_ok(V311, "sub", persistent(), false);
    sub_raw(&mut cl, s, "t/#", Q2);
    // The SUBACK waits for the subscription's record.
    cl.expect_nothing(s);
    run_disk(&mut cl, &mut disk);
    assert!(matches!(cl.next(s), Some(Packet::SubAck(_))));
    cl.drop_connection(s);
    run_disk(&mut cl, &mut disk);

    let p = cl.connect_ok(V311, "pub", ConnectOpts::default(), false);
    cl.publish(p, "t/1", "one", Q1, false, 11);
    // Queued for an offline persistent session: no PUBACK before the write.
    cl.expect_nothing(p);
    run_disk(&mut cl, &mut disk);
    cl.expect(p, puback(11));
    cl.publish(p, "t/2", "two", Q2, false, 12);
    cl.expect_nothing(p);
    run_disk(&mut cl, &mut disk);
    cl.expect(p, pubrec(12));
    cl.send(p, pubrel(12));
    cl.expect(p, pubcomp(12));
    // Not yet written when the process dies: never acknowledged, may be lost.
    cl.publish(p, "t/3", "three", Q1, false, 13);
    cl.expect_nothing(p);

    let mut disk = disk.crash_process();
    let mut cl = cluster_on(&mut disk, SyncMode::Process);
    let s = cl.connect(V311, "sub", persistent());
    // The CONNACK and the queued copies behind it go out once the copies' `Sent`
    // records are durable.
    cl.expect_nothing(s);
    run_disk(&mut cl, &mut disk);
    match cl.next(s) {
        Some(Packet::ConnAck(a)) => assert!(a.session_present, "{a:?}"),
        other => panic!("{other:?}"),
    }
    cl.expect(s, pubp("t/1", "one", Q1, false, 1));
    cl.expect(s, pubp("t/2", "two", Q2, false, 2));
    cl.send(s, puback(1));
    cl.send(s, pubrec(2));
    // PUBREL lets the client forget the id: only once `Released` is durable.
    cl.expect_nothing(s);
    run_disk(&mut cl, &mut disk);
    cl.expect(s, pubrel(2));
    cl.send(s, pubcomp(2));
    run_disk(&mut cl, &mut disk);
    // Acknowledged copies are gone after the next crash too.
    cl.drop_connection(s);
    run_disk(&mut cl, &mut disk);
    let mut disk = disk.crash_process();
    let mut cl = cluster_on(&mut disk, SyncMode::Process);
    let s = cl.connect(V311, "sub", persistent());
    assert!(matches!(cl.next(s), Some(Packet::ConnAck(a)) if a.session_present));
    cl.expect_nothing(s);
    // The subscription itself survived: a new message reaches the session.
    let p = cl.connect_ok(V311, "pub", ConnectOpts::default(), false);
    cl.publish(p, "t/4", "four", Q1, false, 1);
    run_disk(&mut cl, &mut disk);
    cl.expect(p, puback(1));
    cl.expect(s, pubp("t/4", "four", Q1, false, 1));
}

#[test]
fn clean_sessions_and_qos0_write_nothing_and_are_answered_at_once() {
    let mut disk = SimDisk::new();
    let mut cl = cluster_on(&mut disk, SyncMode::Fsync);
    let s = cl.connect_ok(V311, "clean-sub", ConnectOpts::default(), false);
    cl.subscribe(s, "t", Q1);
    let p = cl.connect_ok(V311, "clean-pub", ConnectOpts::default(), false);
    cl.publish(p, "t", "x", Q1, false, 5);
    cl.expect(p, puback(5));
    cl.expect(s, pubp("t", "x", Q1, false, 1));
    cl.send(s, puback(1));
    // A persistent session's QoS 0 traffic writes nothing either, beyond the
    // session and its subscription.
    let d = cl.connect_ok(V311, "durable", persistent(), false);
    sub_raw(&mut cl, d, "q0", Q0);
    run_disk(&mut cl, &mut disk);
    assert!(matches!(cl.next(d), Some(Packet::SubAck(_))));
    let before = cl.shards[0].stats().store_records;
    cl.publish(p, "q0", "y", Q0, false, 0);
    cl.expect(d, pubp("q0", "y", Q0, false, 0));
    assert_eq!(cl.shards[0].stats().store_records, before);
    assert_eq!(before, 2, "the session and its subscription");
    assert!(cl.shards[0].poll_store_op().is_none(), "nothing to write");
}

#[test]
fn a_failed_write_is_never_acknowledged() {
    let mut disk = SimDisk::new();
    let mut cl = cluster_on(&mut disk, SyncMode::Fsync);
    let s = cl.connect_ok(V5, "sub", persistent_v5(), false);
    sub_raw(&mut cl, s, "t", Q1);
    run_disk(&mut cl, &mut disk);
    assert!(matches!(cl.next(s), Some(Packet::SubAck(_))));
    cl.drop_connection(s);
    run_disk(&mut cl, &mut disk);
    let p5 = cl.connect_ok(V5, "pub5", ConnectOpts::default(), false);
    let p3 = cl.connect_ok(V311, "pub3", ConnectOpts::default(), false);
    cl.publish(p5, "t", "a", Q1, false, 1);
    cl.publish(p3, "t", "b", Q1, false, 2);
    disk.fail_next_write = Some(DiskError::NoSpace);
    run_disk(&mut cl, &mut disk);
    // MQTT 5: 0x97; 3.1.1: no acknowledgement at all.
    let mut refused = PubResp::new(1);
    refused.code = ReasonCode::QuotaExceeded;
    cl.expect(p5, Packet::PubAck(refused));
    cl.expect_nothing(p3);
    assert_eq!(cl.shards[0].stats().store_acks_refused, 2);
    assert_eq!(cl.shards[0].stats().store_write_errors, 1);
    // The log goes on: the next message is written and acknowledged.
    cl.publish(p3, "t", "c", Q1, false, 3);
    run_disk(&mut cl, &mut disk);
    cl.expect(p3, puback(3));
    // After a crash only the acknowledged message is there.
    let mut disk = disk.crash_process();
    let mut cl = cluster_on(&mut disk, SyncMode::Fsync);
    let s = cl.connect(V5, "sub", persistent_v5());
    run_disk(&mut cl, &mut disk);
    assert!(matches!(cl.next(s), Some(Packet::ConnAck(a)) if a.session_present));
    match cl.next(s) {
        Some(Packet::Publish(m)) => assert_eq!(&m.payload[..], b"c"),
        other => panic!("{other:?}"),
    }
    cl.expect_nothing(s);
}

#[test]
fn retained_messages_and_inbound_qos2_ids_survive_a_power_loss_once_synced() {
    let mut disk = SimDisk::new();
    let mut cl = cluster_on(&mut disk, SyncMode::Fsync);
    let p = cl.connect_ok(V311, "pub", persistent(), false);
    run_disk(&mut cl, &mut disk);
    cl.publish(p, "r/1", "kept", Q1, true, 1);
    cl.publish(p, "r/2", "cleared", Q0, true, 0);
    cl.publish(p, "r/2", "", Q0, true, 0);
    // QoS 2 received, PUBREC sent, PUBREL not yet: the id must survive, so the
    // resend after the restart is not delivered twice.
    cl.publish(p, "x", "q2", Q2, false, 9);
    run_disk(&mut cl, &mut disk);
    cl.expect(p, puback(1));
    cl.expect(p, pubrec(9));
    let mut disk = disk.crash_power(None);
    let mut cl = cluster_on(&mut disk, SyncMode::Fsync);
    let p = cl.connect(V311, "pub", persistent());
    assert!(matches!(cl.next(p), Some(Packet::ConnAck(a)) if a.session_present));
    let s = cl.connect_ok(V311, "late", ConnectOpts::default(), false);
    cl.subscribe(s, "r/#", Q1);
    cl.expect(s, pubp("r/1", "kept", Q1, true, 1));
    cl.expect_nothing(s);
    let o = cl.connect_ok(V311, "obs", ConnectOpts::default(), false);
    cl.subscribe(o, "x", Q2);
    let mut dup = publish("x", "q2", Q2, false, 9);
    dup.dup = true;
    cl.send(p, Packet::Publish(dup));
    run_disk(&mut cl, &mut disk);
    cl.expect(p, pubrec(9));
    cl.expect_nothing(o);
    cl.send(p, pubrel(9));
    run_disk(&mut cl, &mut disk);
    cl.expect(p, pubcomp(9));
}

fn persistent_v5() -> ConnectOpts {
    let mut o = ConnectOpts {
        clean: false,
        ..ConnectOpts::default()
    };
    o.properties.to_mut().session_expiry_interval_s = Some(3600);
    o
}

/// SUBSCRIBE without waiting for the SUBACK (it may be held).
fn sub_raw(cl: &mut Cluster, c: Cid, filter: &str, qos: QoS) {
    let options = crate::protocol::SubscriptionOptions {
        qos,
        ..Default::default()
    };
    cl.subscribe_with(c, filter, options, crate::protocol::Properties::default());
}

#[test]
fn snapshots_replace_the_log_behind_them_and_recover_the_same_sessions() {
    let mut disk = SimDisk::new();
    let mut cl = cluster_on(&mut disk, SyncMode::Fsync);
    cl.shards[0].set_snapshot_after_bytes(2048);
    let s = cl.connect_ok(V5, "sub", persistent_v5(), false);
    sub_raw(&mut cl, s, "t/#", Q2);
    run_disk(&mut cl, &mut disk);
    assert!(matches!(cl.next(s), Some(Packet::SubAck(_))));
    let p = cl.connect_ok(V311, "pub", ConnectOpts::default(), false);
    cl.publish(p, "r", "retained", Q1, true, 1);
    run_disk(&mut cl, &mut disk);
    cl.expect(p, puback(1));
    // 60 messages; the subscriber completes the first 20 and leaves the rest.
    for i in 0..60u16 {
        cl.publish(p, "t/x", &format!("m{i}"), Q1, false, 100 + i);
        run_disk(&mut cl, &mut disk);
        cl.expect(p, puback(100 + i));
        if i < 20 {
            match cl.next(s) {
                Some(Packet::Publish(m)) => cl.send(s, Packet::PubAck(PubResp::new(m.packet_id))),
                other => panic!("{other:?}"),
            }
            run_disk(&mut cl, &mut disk);
        }
    }
    cl.drop_connection(s);
    run_disk(&mut cl, &mut disk);
    let names = disk.names();
    let snaps: Vec<_> = names.iter().filter(|n| n.starts_with("snap-")).collect();
    assert_eq!(
        snaps.len(),
        1,
        "the newest snapshot replaced the older: {names:?}"
    );
    assert!(
        snaps[0].as_str() > "snap-00000000000000004096",
        "more than one was taken: {names:?}"
    );
    let mut disk = disk.crash_power(None);
    let mut cl = cluster_on(&mut disk, SyncMode::Fsync);
    let s = cl.connect(V5, "sub", persistent_v5());
    run_disk(&mut cl, &mut disk);
    assert!(matches!(cl.next(s), Some(Packet::ConnAck(a)) if a.session_present));
    let mut got = Vec::new();
    while let Some(Packet::Publish(m)) = cl.next(s) {
        got.push(String::from_utf8_lossy(&m.payload).into_owned());
        cl.send(s, Packet::PubAck(PubResp::new(m.packet_id)));
        run_disk(&mut cl, &mut disk);
    }
    let want: Vec<String> = (20..60).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
    let o = cl.connect_ok(V311, "obs", ConnectOpts::default(), false);
    cl.subscribe(o, "r", Q1);
    cl.expect(o, pubp("r", "retained", Q1, true, 1));
}

/// `load_store` hands a body shared by several sessions' copies to each of them
/// (moved to the last, cloned to the others), whether the ids are dense (a slot per
/// id) or far apart (the hashed table).
#[test]
fn a_recovered_body_shared_by_several_sessions_reaches_each_of_them() {
    use crate::store::record::{MsgRec, Record};
    use crate::store::StoreState;
    use bytes::Bytes;
    for ids in [[1u64, 2, 3], [7, 40_000_000, 90_000_000_000]] {
        let mut state = StoreState::default();
        for c in ["a", "b", "c"] {
            state.apply_owned(Record::SessionPut {
                client: Bytes::from(c),
                expiry_s: 3600,
                will: None,
            });
        }
        for (i, id) in ids.iter().enumerate() {
            state.apply_owned(Record::MsgPut {
                id: *id,
                msg: MsgRec {
                    topic: Bytes::from(format!("t/{i}")),
                    payload: Bytes::from(format!("m{i}")),
                    qos: 1,
                    retain: false,
                    props: Bytes::new(),
                    arrived_unix_ms: 1_700_000_000_000,
                },
            });
        }
        // Message 0 goes to all three sessions, 1 to "a" and "c", 2 to "b" only.
        for (msg, to) in [(0, "abc"), (1, "ac"), (2, "b")] {
            for c in to.chars() {
                state.apply_owned(Record::Enqueue {
                    client: Bytes::from(c.to_string()),
                    msg: ids[msg],
                    qos: 1,
                    retain: false,
                    sub_ids: vec![],
                });
            }
        }
        state.check().expect("a valid state");
        let mut disk = SimDisk::new();
        let mut cl = cluster_on(&mut disk, SyncMode::Process);
        let now = cl.now;
        cl.shards[0].load_store(state, now);
        for (c, want) in [("a", &[0, 1][..]), ("b", &[0, 2]), ("c", &[0, 1])] {
            let s = cl.connect(V311, c, persistent());
            run_disk(&mut cl, &mut disk);
            assert!(
                matches!(cl.next(s), Some(Packet::ConnAck(a)) if a.session_present),
                "{c} ({ids:?})"
            );
            for (k, i) in want.iter().enumerate() {
                let pid = k as u16 + 1;
                cl.expect(s, pubp(&format!("t/{i}"), &format!("m{i}"), Q1, false, pid));
            }
            cl.expect_nothing(s);
        }
    }
}
