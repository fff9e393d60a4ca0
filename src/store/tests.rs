//! The store core against the simulated disk: codec vectors, group commit, failures,
//! segments, snapshots, and recovery after kill -9, power loss at every byte of the
//! last write, and flipped bits; then a proptest over random operation sequences.

use bytes::Bytes;
use proptest::prelude::*;

use super::frame::{put_frame, read_frame, BadFrame, Frame};
use super::record::{MsgRec, Record, WillRec};
use super::recover::recover;
use super::sim::SimDisk;
use super::snapshot::{decode_snapshot, encode_snapshot, SnapshotError, SnapshotWriter};
use super::state::StoreState;
use super::testkit::{fuzz_store, same_state, seed_inputs};
use super::wal::{segment_name, AppendError, DiskError, DiskOp, SyncMode, Wal, WalEvent};

const SEG: u64 = 1024;

fn client(i: u8) -> Bytes {
    Bytes::from(format!("client-{i}"))
}

fn msg(topic: &str, payload: &[u8], qos: u8) -> MsgRec {
    MsgRec {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::copy_from_slice(payload),
        qos,
        retain: false,
        props: Bytes::from_static(&[0x02, 0, 0, 0, 60]),
        arrived_unix_ms: 1_765_000_000_000,
    }
}

fn every_kind() -> Vec<Record> {
    let c = client(1);
    vec![
        Record::SessionPut {
            client: c.clone(),
            expiry_s: 86_400,
            will: Some(WillRec {
                topic: Bytes::from_static(b"will/t"),
                payload: Bytes::from_static(b"gone"),
                qos: 2,
                retain: true,
                delay_s: 5,
                props: Bytes::new(),
            }),
        },
        Record::SubAdd {
            client: c.clone(),
            filter: Bytes::from_static(b"a/+/c"),
            options: 0b10_1110,
            sub_id: 42,
        },
        Record::MsgPut {
            id: 7,
            msg: msg("a/b/c", b"payload", 2),
        },
        Record::Enqueue {
            client: c.clone(),
            msg: 7,
            qos: 2,
            retain: false,
            sub_ids: vec![42, 43],
        },
        Record::Sent {
            client: c.clone(),
            msg: 7,
            packet_id: 300,
        },
        Record::Released {
            client: c.clone(),
            msg: 7,
        },
        Record::InboundQos2 {
            client: c.clone(),
            packet_id: 65_535,
        },
        Record::InboundDone {
            client: c.clone(),
            packet_id: 65_535,
        },
        Record::Ack {
            client: c.clone(),
            msg: 7,
        },
        Record::SubDel {
            client: c.clone(),
            filter: Bytes::from_static(b"a/+/c"),
        },
        Record::RetainSet {
            msg: msg("r/t", b"kept", 0),
        },
        Record::RetainClear {
            topic: Bytes::from_static(b"r/t"),
        },
        Record::MsgOrigin {
            msg: 7,
            key: u64::MAX,
        },
        Record::SessionDel { client: c },
    ]
}

#[test]
fn every_record_round_trips_and_refuses_every_truncation() {
    for rec in every_kind() {
        let mut buf = Vec::new();
        rec.encode(&mut buf);
        assert_eq!(Record::decode(&buf), Ok(rec.clone()));
        for cut in 0..buf.len() {
            assert!(
                Record::decode(&buf[..cut]).is_err(),
                "{rec:?} cut at {cut} decoded"
            );
        }
        buf.push(0);
        assert!(Record::decode(&buf).is_err(), "trailing byte accepted");
    }
}

#[test]
fn out_of_range_fields_are_refused() {
    let bad_qos = Record::Enqueue {
        client: client(1),
        msg: 1,
        qos: 3,
        retain: false,
        sub_ids: vec![],
    };
    let mut buf = Vec::new();
    bad_qos.encode(&mut buf);
    assert!(Record::decode(&buf).is_err());
    let qos0_copy = Record::Enqueue {
        client: client(1),
        msg: 1,
        qos: 0,
        retain: false,
        sub_ids: vec![],
    };
    buf.clear();
    qos0_copy.encode(&mut buf);
    assert!(
        Record::decode(&buf).is_err(),
        "a QoS 0 copy is never persisted"
    );
    let empty_client = Record::SessionDel {
        client: Bytes::new(),
    };
    buf.clear();
    empty_client.encode(&mut buf);
    assert!(Record::decode(&buf).is_err());
}

#[test]
fn frames_check_length_crc_and_position() {
    let mut buf = Vec::new();
    put_frame(&mut buf, 4096, b"xyz");
    assert_eq!(read_frame(&buf, 4096), Frame::Record(b"xyz"));
    assert_eq!(read_frame(&buf, 0), Frame::Bad(BadFrame::WrongPosition));
    assert_eq!(
        read_frame(&buf[..buf.len() - 1], 4096),
        Frame::Bad(BadFrame::Truncated)
    );
    assert_eq!(read_frame(&[0; 40], 4096), Frame::End);
    assert_eq!(read_frame(&[], 4096), Frame::End);
    for bit in 0..buf.len() * 8 {
        let mut b = buf.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(
            !matches!(read_frame(&b, 4096), Frame::Record(_)),
            "bit {bit} flipped and the frame still read"
        );
    }
}

/// The writer, the simulated disk, and every record appended, with the model state
/// after each prefix.
struct Driver {
    wal: Wal,
    disk: SimDisk,
    records: Vec<Record>,
    /// Log position at the end of each record.
    ends: Vec<u64>,
    durable: u64,
    failed: Vec<(u64, u64)>,
    model: StoreState,
}

impl Driver {
    fn new(mode: SyncMode) -> Driver {
        Driver::on(mode, SimDisk::new())
    }

    /// Recovers from `disk` and continues writing on it.
    fn on(mode: SyncMode, mut disk: SimDisk) -> Driver {
        let r = recover(&disk, SEG).expect("recovers");
        for op in &r.ops {
            disk.run(op).expect("recovery ops run");
        }
        let next = r.next_lsn;
        let wal = Wal::new(mode, SEG, r.segments, r.seg_len, next, r.snapshot);
        Driver {
            wal,
            disk,
            records: Vec::new(),
            ends: Vec::new(),
            durable: next,
            failed: Vec::new(),
            model: r.state,
        }
    }

    fn append(&mut self, rec: Record) {
        let end = self.wal.append(&rec).expect("append");
        self.model.apply(&rec);
        self.records.push(rec);
        self.ends.push(end);
    }

    /// Submits and completes operations until the writer is idle.
    fn settle(&mut self) {
        while let Some(op) = self.wal.poll_op() {
            let res = self.disk.run(&op);
            self.wal.on_done(res);
            self.drain_events();
        }
    }

    fn drain_events(&mut self) {
        while let Some(ev) = self.wal.poll_event() {
            match ev {
                WalEvent::Durable(n) => self.durable = n,
                WalEvent::Failed { from, to } => self.failed.push((from, to)),
            }
        }
    }

    fn acked(&self) -> usize {
        self.ends.iter().filter(|&&e| e <= self.durable).count()
    }

    fn snapshot(&mut self) {
        let lsn = self.wal.next_lsn();
        let mut w = SnapshotWriter::new(lsn, self.model.next_msg_id);
        self.model.to_records(|r| w.push(&r));
        assert!(self.wal.start_snapshot(lsn, w.finish()));
    }
}

fn model_after(base: &StoreState, records: &[Record]) -> StoreState {
    let mut s = base.clone();
    records.iter().for_each(|r| s.apply(r));
    s.finish();
    s
}

fn assert_recovers_to(disk: &SimDisk, want: &StoreState) -> super::Recovered {
    let r = recover(disk, SEG).expect("recovers");
    r.state.check().expect("valid state");
    assert!(
        same_state(&r.state, want),
        "recovered {:#?}\nwanted {:#?}",
        r.state,
        want
    );
    r
}

/// A realistic mix: sessions, subscriptions, QoS 1/2 fan-out with acks, inbound QoS 2,
/// retained; `seed` varies it.
fn workload(seed: u64, n: usize) -> Vec<Record> {
    workload_at(seed, n, 0)
}

/// As [`workload`], with message ids after `last_id` (ids are never reused, as the
/// shard's are not).
fn workload_at(seed: u64, n: usize, last_id: u64) -> Vec<Record> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::new();
    let mut msg_id = last_id;
    for i in 0..n {
        let c = client((next() % 4) as u8);
        let r = match next() % 10 {
            0 => Record::SessionPut {
                client: c,
                expiry_s: (next() % 100) as u32,
                will: None,
            },
            1 => Record::SubAdd {
                client: c,
                filter: Bytes::from(format!("t/{}", next() % 3)),
                options: 1,
                sub_id: 0,
            },
            2 | 3 => {
                msg_id += 1;
                out.push(Record::MsgPut {
                    id: msg_id,
                    msg: msg("t/x", &i.to_le_bytes(), 1 + (next() % 2) as u8),
                });
                Record::Enqueue {
                    client: c,
                    msg: msg_id,
                    qos: 1 + (next() % 2) as u8,
                    retain: false,
                    sub_ids: vec![],
                }
            }
            4 => Record::Sent {
                client: c,
                msg: 1 + next() % msg_id.max(1),
                packet_id: 1 + (next() % 100) as u16,
            },
            5 => Record::Ack {
                client: c,
                msg: 1 + next() % msg_id.max(1),
            },
            6 => Record::InboundQos2 {
                client: c,
                packet_id: 1 + (next() % 5) as u16,
            },
            7 => Record::InboundDone {
                client: c,
                packet_id: 1 + (next() % 5) as u16,
            },
            8 => Record::RetainSet {
                msg: msg(&format!("r/{}", next() % 3), b"v", 1),
            },
            _ => Record::Released {
                client: c,
                msg: 1 + next() % msg_id.max(1),
            },
        };
        out.push(r);
    }
    out
}

#[test]
fn group_commit_makes_one_write_per_turn_and_batches_what_arrives_meanwhile() {
    let mut d = Driver::new(SyncMode::Fsync);
    d.settle();
    let recs = workload(1, 6);
    let n = recs.len();
    for r in recs[..3].iter().cloned() {
        d.append(r);
    }
    let op = d.wal.poll_op().expect("a write");
    assert!(
        matches!(
            &op,
            DiskOp::Write {
                sync: true,
                offset: 0,
                ..
            }
        ),
        "{op:?}"
    );
    // While it is in flight nothing else goes out; new records wait for the next write.
    for r in recs[3..].iter().cloned() {
        d.append(r);
    }
    assert_eq!(d.wal.poll_op(), None, "at most one operation in flight");
    let res = d.disk.run(&op);
    d.wal.on_done(res);
    d.drain_events();
    assert_eq!(d.acked(), 3, "only the first batch is durable");
    let op2 = d.wal.poll_op().expect("the second batch");
    let DiskOp::Write { data, .. } = &op2 else {
        panic!("{op2:?}")
    };
    assert_eq!(data.len() as u64, d.ends[n - 1] - d.ends[2]);
    let res = d.disk.run(&op2);
    d.wal.on_done(res);
    d.drain_events();
    assert_eq!(d.acked(), n);
    assert_eq!(d.wal.stats.writes, 2);
    assert_eq!(d.wal.stats.syncs, 2);
}

#[test]
fn process_mode_acks_after_the_write_and_survives_kill_9_not_power_loss() {
    let mut d = Driver::new(SyncMode::Process);
    d.settle();
    let base = d.model.clone();
    for r in workload(2, 20) {
        d.append(r);
    }
    let op = d.wal.poll_op().expect("write");
    assert!(matches!(op, DiskOp::Write { sync: false, .. }));
    let res = d.disk.run(&op);
    d.wal.on_done(res);
    d.drain_events();
    assert_eq!(d.acked(), d.records.len());
    assert_recovers_to(&d.disk.crash_process(), &model_after(&base, &d.records));
    // Never synced: a power loss keeps none of it (process mode's documented window).
    assert_recovers_to(&d.disk.crash_power(None), &base);
}

#[test]
fn interval_mode_syncs_only_when_asked() {
    let mut d = Driver::new(SyncMode::Interval);
    d.settle();
    let base = d.model.clone();
    for r in workload(3, 10) {
        d.append(r);
    }
    d.settle();
    assert_eq!(d.acked(), d.records.len(), "acknowledged once written");
    assert_recovers_to(&d.disk.crash_power(None), &base);
    d.wal.request_sync();
    let op = d.wal.poll_op().expect("the timer's sync");
    assert!(matches!(op, DiskOp::Sync { .. }), "{op:?}");
    let res = d.disk.run(&op);
    d.wal.on_done(res);
    assert_recovers_to(&d.disk.crash_power(None), &model_after(&base, &d.records));
}

#[test]
fn a_failed_write_acknowledges_nothing_and_the_log_goes_on_over_it() {
    let mut d = Driver::new(SyncMode::Fsync);
    d.settle();
    let base = d.model.clone();
    let recs = workload(4, 12);
    for r in recs[..4].iter().cloned() {
        d.append(r);
    }
    d.settle();
    let good = d.records.clone();
    d.disk.fail_next_write = Some(DiskError::NoSpace);
    for r in recs[4..8].iter().cloned() {
        d.append(r);
    }
    d.settle();
    assert_eq!(d.acked(), 4);
    assert_eq!(d.failed, vec![(d.ends[3], d.ends[7])]);
    assert_eq!(
        d.wal.next_lsn(),
        d.ends[3],
        "the log continues where the last write ended"
    );
    // The failed records are not in the state; later ones are.
    for r in recs[8..].iter().cloned() {
        d.append(r);
    }
    d.settle();
    let mut want_recs = good.clone();
    want_recs.extend(recs[8..].iter().cloned());
    assert_recovers_to(&d.disk.crash_power(None), &model_after(&base, &want_recs));
}

#[test]
fn a_failed_fdatasync_stops_the_log() {
    let mut d = Driver::new(SyncMode::Fsync);
    d.settle();
    d.append(workload(5, 1).remove(0));
    d.disk.fail_next_write = Some(DiskError::SyncFailed(libc::EIO));
    d.settle();
    assert_eq!(d.failed.len(), 1);
    assert!(d.wal.is_stopped());
    assert_eq!(
        d.wal.append(&Record::SessionDel { client: client(1) }),
        Err(AppendError::Stopped)
    );
}

#[test]
fn no_room_for_a_new_segment_fails_the_batch_before_any_byte_is_written() {
    let mut d = Driver::new(SyncMode::Fsync);
    d.settle();
    d.disk.space_bytes = 0;
    let mut n = 0;
    while d.failed.is_empty() {
        d.append(Record::RetainSet {
            msg: msg("r/x", &[7; 100], 1),
        });
        d.settle();
        n += 1;
        assert!(n < 100, "segment never filled");
    }
    let written = d.acked();
    assert!(written > 0 && written < d.records.len());
    // Space comes back: the next batch goes to a new segment.
    d.disk.space_bytes = u64::MAX;
    d.failed.clear();
    d.append(Record::RetainClear {
        topic: Bytes::from_static(b"r/x"),
    });
    d.settle();
    assert!(d.failed.is_empty());
    let mut want = d.records[..written].to_vec();
    want.push(Record::RetainClear {
        topic: Bytes::from_static(b"r/x"),
    });
    assert_recovers_to(
        &d.disk.crash_power(None),
        &model_after(&StoreState::default(), &want),
    );
}

#[test]
fn segments_roll_and_snapshots_truncate_the_log_behind_them() {
    let mut d = Driver::new(SyncMode::Fsync);
    d.settle();
    for r in workload(6, 150) {
        d.append(r);
        d.settle();
    }
    let segs = d
        .disk
        .names()
        .iter()
        .filter(|n| n.starts_with("wal-"))
        .count();
    assert!(segs > 3, "only {segs} segments");
    assert_recovers_to(
        &d.disk.crash_power(None),
        &model_after(&StoreState::default(), &d.records),
    );
    d.snapshot();
    d.settle();
    assert!(!d.wal.snapshot_in_progress());
    let names = d.disk.names();
    assert_eq!(
        names.iter().filter(|n| n.starts_with("wal-")).count(),
        1,
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| n.starts_with("snap-")).count(),
        1,
        "{names:?}"
    );
    for r in workload_at(7, 40, d.model.next_msg_id) {
        d.append(r);
    }
    d.settle();
    let r = assert_recovers_to(&d.disk.crash_power(None), &{
        let mut m = d.model.clone();
        m.finish();
        m
    });
    assert!(
        r.replayed > 0 && r.replayed < 40 + 40,
        "replayed {}",
        r.replayed
    );
}

#[test]
fn a_damaged_snapshot_is_refused_by_name() {
    let mut state = StoreState::default();
    every_kind().iter().take(5).for_each(|r| state.apply(r));
    let snap = encode_snapshot(&state, 9);
    assert!(matches!(decode_snapshot(&snap), Ok((_, 9))));
    let mut wrong_version = snap.clone();
    wrong_version[8] = 2;
    assert_eq!(
        decode_snapshot(&wrong_version).err(),
        Some(SnapshotError::Version(2))
    );
    assert_eq!(
        decode_snapshot(&snap[..snap.len() - 1])
            .err()
            .map(|e| e.to_string().contains("damaged") || e == SnapshotError::Incomplete),
        Some(true)
    );
    let mut disk = SimDisk::new();
    disk.run(&DiskOp::Write {
        name: super::wal::snapshot_name(9),
        offset: 0,
        data: wrong_version,
        sync: true,
    })
    .unwrap();
    disk.run(&DiskOp::SyncDir).unwrap();
    let err = recover(&disk, SEG).expect_err("refused");
    assert!(
        err.to_string().contains("snapshot format version 2"),
        "{err}"
    );
}

/// Power loss during every write of a run, torn at every byte: recovery yields exactly
/// the records whose frames were wholly on the medium, never fewer than were
/// acknowledged, and the directory it leaves recovers the same again.
#[test]
fn power_loss_tearing_the_last_write_at_every_byte_recovers_exactly_the_durable_prefix() {
    for mode in [SyncMode::Fsync, SyncMode::Interval] {
        let recs = workload(8, 40);
        let mut d = Driver::new(mode);
        d.settle();
        let mut i = 0;
        let mut checked = 0;
        while i < recs.len() {
            // Batches of 1..4 records, one write each.
            for r in recs[i..(i + 1 + i % 4).min(recs.len())].iter().cloned() {
                d.append(r);
            }
            i = d.records.len();
            if mode == SyncMode::Interval && i % 3 == 0 {
                d.wal.request_sync();
            }
            while let Some(op) = d.wal.poll_op() {
                if let DiskOp::Write {
                    data, offset, name, ..
                } = &op
                {
                    if name.starts_with("wal-") {
                        let before = d.disk.clone();
                        let synced = synced_records(&d, mode);
                        for keep in 0..=data.len() {
                            let mut disk = before.clone();
                            disk.run_torn(&op, keep);
                            let start = d
                                .ends
                                .iter()
                                .position(|&e| e > *offset + base_of(name))
                                .unwrap_or(0);
                            let whole = start + whole_frames(data, keep);
                            let crashed = disk.crash_power(Some(keep));
                            let want = if mode == SyncMode::Fsync {
                                assert!(whole >= d.acked());
                                model_after(&StoreState::default(), &d.records[..whole])
                            } else {
                                // Unsynced writes may or may not have reached the medium:
                                // any prefix from the last sync on is right, nothing else.
                                let got = recover(&crashed, SEG).expect("recovers").state;
                                let n = (synced..=d.records.len())
                                    .find(|&n| {
                                        same_state(
                                            &got,
                                            &model_after(&StoreState::default(), &d.records[..n]),
                                        )
                                    })
                                    .expect("a prefix at least as long as the synced one");
                                model_after(&StoreState::default(), &d.records[..n])
                            };
                            let r = assert_recovers_to(&crashed, &want);
                            // What recovery leaves behind recovers the same again.
                            let mut again = crashed.clone();
                            r.ops.iter().for_each(|op| again.run(op).expect("ops run"));
                            assert_eq!(recover(&again, SEG).expect("again").damage, None);
                            assert_recovers_to(&again, &want);
                            checked += 1;
                        }
                    }
                }
                let res = d.disk.run(&op);
                d.wal.on_done(res);
                d.drain_events();
            }
        }
        assert!(checked > 500, "only {checked} crash points");
    }
}

fn base_of(segment: &str) -> u64 {
    segment[4..24].parse().expect("segment name")
}

/// Records wholly on the medium after the first `keep` bytes of a batch land.
fn whole_frames(data: &[u8], keep: usize) -> usize {
    let mut at = 0;
    let mut n = 0;
    while at + 16 <= data.len() {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        // A frame whose missing bytes were zeros anyway (the preallocated file holds
        // zeros there) is whole on the medium.
        let end = at + 16 + len;
        if end > keep && data[keep.max(at)..end].iter().any(|&b| b != 0) {
            break;
        }
        at += 16 + len;
        n += 1;
    }
    n
}

/// Records synced so far (fsync mode: acknowledged; interval mode: up to the last sync).
fn synced_records(d: &Driver, mode: SyncMode) -> usize {
    match mode {
        SyncMode::Fsync => d.acked(),
        _ => {
            let crashed = d.disk.crash_power(None);
            recover(&crashed, SEG)
                .map(|r| r.replayed as usize)
                .unwrap_or(0)
        }
    }
}

/// A flipped bit anywhere in the log: recovery keeps every record before the damaged
/// one, sets the rest aside, and the log then goes on and recovers with new records.
#[test]
fn a_flipped_bit_keeps_the_prefix_sets_the_tail_aside_and_the_log_goes_on() {
    let recs = workload(9, 12);
    let mut d = Driver::new(SyncMode::Fsync);
    d.settle();
    for r in recs.iter().cloned() {
        d.append(r);
        d.settle();
    }
    let seg = segment_name(0);
    let log_bytes = d.ends[d.ends.len() - 1] as usize;
    for bit in (0..log_bytes * 8).step_by(7) {
        let mut disk = d.disk.crash_power(None);
        disk.flip_bit(&seg, bit);
        let hit = d
            .ends
            .iter()
            .position(|&e| e as usize > bit / 8)
            .unwrap_or(0);
        let want = model_after(&StoreState::default(), &recs[..hit]);
        let r = assert_recovers_to(&disk, &want);
        let damage = r.damage.clone().expect("damage reported");
        let start = if hit == 0 { 0 } else { d.ends[hit - 1] };
        assert_eq!(damage.offset, start, "stopped at the damaged record");
        // Go on writing on the recovered disk, crash, recover: prefix + new records.
        let mut d2 = Driver::on(SyncMode::Fsync, disk);
        assert!(
            d2.disk.names().contains(&damage.aside) || damage.offset == 0,
            "tail set aside"
        );
        let more = workload_at(10, 5, 1000);
        for r in more.iter().cloned() {
            d2.append(r);
        }
        d2.settle();
        let mut all = recs[..hit].to_vec();
        all.extend(more);
        let r2 = assert_recovers_to(
            &d2.disk.crash_power(None),
            &model_after(&StoreState::default(), &all),
        );
        assert_eq!(r2.damage, None);
    }
}

/// Replays the committed seeds of the `store` fuzz target (and each with every byte
/// flipped), and checks the generated ones are committed: `RINGMQ_WRITE_SEEDS=1`
/// rewrites them.
#[test]
fn fuzz_seeds_replay() {
    crate::shard::testing::seeds::tests::replay("store", seed_inputs(), fuzz_store_with_flips);
}

/// A seed, then the same seed with each byte flipped in turn.
fn fuzz_store_with_flips(input: &[u8]) {
    fuzz_store(input);
    for i in 0..input.len() {
        let mut b = input.to_vec();
        b[i] ^= 0x41;
        fuzz_store(&b);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Rec(u64),
    Turn,
    Snapshot,
    FailWrite,
    Crash { power: bool, torn: Option<usize> },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<u64>().prop_map(Op::Rec),
        3 => Just(Op::Turn),
        1 => Just(Op::Snapshot),
        1 => Just(Op::FailWrite),
        1 => (any::<bool>(), proptest::option::of(0usize..200)).prop_map(|(power, torn)| Op::Crash { power, torn }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Random appends, turns, snapshots, failed writes and crashes: after every crash
    /// the recovered state is the model after some prefix of the records, at least
    /// every acknowledged one, and at most every written one (process crash: exactly
    /// the written ones).
    #[test]
    fn random_operation_sequences_recover_a_durable_prefix(
        fsync in any::<bool>(),
        ops in proptest::collection::vec(op_strategy(), 1..80),
    ) {
        // Process mode promises nothing across a power loss: only kill -9 there.
        let mode = if fsync { SyncMode::Fsync } else { SyncMode::Process };
        let mut d = Driver::new(mode);
        d.settle();
        let mut base = d.model.clone();
        let mut seq = 0u64;
        for op in ops {
            match op {
                Op::Rec(seed) => {
                    seq += 1;
                    for r in workload_at(seed ^ seq, 1, d.model.next_msg_id) {
                        d.append(r);
                    }
                }
                Op::Turn => {
                    if let Some(op) = d.wal.poll_op() {
                        let res = d.disk.run(&op);
                        d.wal.on_done(res);
                        d.drain_events();
                        if !d.failed.is_empty() {
                            // Failed records leave the model: keep what was written.
                            let keep = d.ends.iter().filter(|&&e| e <= d.wal.next_lsn()).count();
                            d.records.truncate(keep);
                            d.ends.truncate(keep);
                            d.model = model_after(&base, &d.records);
                            d.failed.clear();
                        }
                    }
                }
                Op::Snapshot => {
                    if !d.wal.snapshot_in_progress() {
                        d.snapshot();
                    }
                }
                Op::FailWrite => d.disk.fail_next_write = Some(DiskError::Io(libc::EIO)),
                Op::Crash { power, torn } => {
                    // The op in flight, if any, may have torn.
                    let power = power && fsync;
                    let crashed = if power { d.disk.crash_power(torn) } else { d.disk.crash_process() };
                    let r = recover(&crashed, SEG).expect("recovers");
                    prop_assert!(r.state.check().is_ok());
                    let acked = d.acked();
                    let found = (acked..=d.records.len())
                        .find(|&n| same_state(&r.state, &model_after(&base, &d.records[..n])));
                    prop_assert!(found.is_some(), "recovered state is no prefix >= {} acked of {}", acked, d.records.len());
                    if !power {
                        // kill -9 keeps every completed write: exactly what was written.
                        let written = d.ends.iter().filter(|&&e| e <= d.wal.durable_lsn()).count();
                        prop_assert!(same_state(&r.state, &model_after(&base, &d.records[..written])));
                    }
                    d = Driver::on(mode, crashed);
                    base = d.model.clone();
                }
            }
        }
    }
}
