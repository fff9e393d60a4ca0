//! Store measurements for issue #13, printed, never asserted: disk bytes per queued
//! 64 B message, the fdatasync latency of the disk under the data directory, group
//! commit in fsync mode (records/s against 1/fsync latency), and recovery time for
//! N persistent sessions with one subscription each plus M queued messages.
//!
//! `store-measure DIR [SESSIONS] [MESSAGES]` (defaults 100000 and 1000000). DIR is
//! created and must not be in use; everything written goes under it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringmq::io::datadir::{DataDir, LoopDir};
use ringmq::store::wal::{SyncMode, Wal, WalEvent};
use ringmq::store::{recover, MsgRec, Record};

const SEGMENT_BYTES: u64 = 64 << 20;

fn drive(wal: &mut Wal, dir: &LoopDir) -> u64 {
    let mut durable = 0;
    while let Some(op) = wal.poll_op() {
        let res = dir.run(&op);
        wal.on_done(res);
        while let Some(ev) = wal.poll_event() {
            match ev {
                WalEvent::Durable(n) => durable = n,
                WalEvent::Failed { from, to } => panic!("write failed {from}..{to}"),
            }
        }
    }
    durable
}

fn open_wal(dir: &LoopDir, mode: SyncMode) -> Wal {
    let r = recover(dir, SEGMENT_BYTES).expect("recover");
    r.ops.iter().for_each(|op| dir.run(op).expect("op"));
    Wal::new(
        mode,
        SEGMENT_BYTES,
        r.segments,
        r.seg_len,
        r.next_lsn,
        r.snapshot,
    )
}

fn msg(i: u64) -> MsgRec {
    MsgRec {
        topic: Bytes::from(format!("devices/{:06}/telemetry", i % 100_000)),
        payload: Bytes::from(vec![0x5a; 64]),
        qos: 1,
        retain: false,
        props: Bytes::new(),
        arrived_unix_ms: 1_765_000_000_000 + i,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = PathBuf::from(
        args.get(1)
            .expect("usage: store-measure DIR [SESSIONS] [MESSAGES]"),
    );
    let sessions: u64 = args
        .get(2)
        .map_or(100_000, |s| s.parse().expect("SESSIONS"));
    let messages: u64 = args
        .get(3)
        .map_or(1_000_000, |s| s.parse().expect("MESSAGES"));
    let data = DataDir::open(&root).unwrap_or_else(|e| panic!("{e}"));

    // Disk bytes per queued message: its body, one session's copy, and the ack.
    let m = msg(1);
    let client = Bytes::from_static(b"device-000001");
    let mut w = Wal::new(SyncMode::Process, 1 << 20, vec![0], 1 << 20, 0, None);
    let a = w
        .append(&Record::MsgPut {
            id: 1,
            msg: m.clone(),
        })
        .unwrap_or(0);
    let b = w
        .append(&Record::Enqueue {
            client: client.clone(),
            msg: 1,
            qos: 1,
            retain: false,
            sub_ids: vec![],
        })
        .unwrap_or(0);
    let c = w
        .append(&Record::Ack {
            client: client.clone(),
            msg: 1,
        })
        .unwrap_or(0);
    println!(
        "bytes per queued message (topic {} B + payload {} B = {} B): body {a} + copy {} = {} B ({:.2}x); ack {} B",
        m.topic.len(),
        m.payload.len(),
        m.topic.len() + m.payload.len(),
        b - a,
        b,
        b as f64 / (m.topic.len() + m.payload.len()) as f64,
        c - b
    );

    // fdatasync latency: 4 KiB writes, each synced.
    let dir = data.loop_dir(0).expect("loop dir");
    let mut wal = open_wal(&dir, SyncMode::Fsync);
    let mut lat = Vec::new();
    for i in 0..200u64 {
        wal.append(&Record::RetainSet {
            msg: MsgRec {
                payload: Bytes::from(vec![1; 4000]),
                ..msg(i)
            },
        })
        .unwrap_or(0);
        let t = Instant::now();
        drive(&mut wal, &dir);
        lat.push(t.elapsed());
    }
    lat.sort();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize];
    println!(
        "write+fdatasync of 4 KiB: p50 {:?} p99 {:?} max {:?}",
        p(0.5),
        p(0.99),
        p(1.0)
    );

    // Group commit: 64 records per turn (a turn's worth of fan-in), one synced write each.
    let syncs_before = wal.stats.syncs;
    let t = Instant::now();
    let turns = 300u64;
    for i in 0..turns * 64 {
        wal.append(&Record::MsgPut {
            id: 10_000 + i,
            msg: msg(i),
        })
        .unwrap_or(0);
        if i % 64 == 63 {
            drive(&mut wal, &dir);
        }
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "fsync mode, 64 records per turn: {:.0} records/s, {} syncs ({:.0} syncs/s; 1/p50 fsync = {:.0}/s)",
        (turns * 64) as f64 / el,
        wal.stats.syncs - syncs_before,
        (wal.stats.syncs - syncs_before) as f64 / el,
        1.0 / p(0.5).as_secs_f64()
    );
    drop(wal);

    // Recovery: SESSIONS sessions with one subscription each, MESSAGES queued copies.
    let dir = data.loop_dir(1).expect("loop dir");
    let mut wal = open_wal(&dir, SyncMode::Process);
    let t = Instant::now();
    for s in 0..sessions {
        let client = Bytes::from(format!("device-{s:06}"));
        wal.append(&Record::SessionPut {
            client: client.clone(),
            expiry_s: 86_400,
            will: None,
        })
        .unwrap_or(0);
        let filter = Bytes::from(format!("devices/{s:06}/cmd"));
        wal.append(&Record::SubAdd {
            client,
            filter,
            options: 1,
            sub_id: 0,
        })
        .unwrap_or(0);
        if s % 1024 == 1023 {
            drive(&mut wal, &dir);
        }
    }
    for i in 0..messages {
        let client = Bytes::from(format!("device-{:06}", i % sessions.max(1)));
        wal.append(&Record::MsgPut {
            id: i + 1,
            msg: msg(i),
        })
        .unwrap_or(0);
        wal.append(&Record::Enqueue {
            client,
            msg: i + 1,
            qos: 1,
            retain: false,
            sub_ids: vec![],
        })
        .unwrap_or(0);
        if i % 1024 == 1023 {
            drive(&mut wal, &dir);
        }
    }
    let end = drive(&mut wal, &dir);
    println!(
        "wrote {} records, {} MB of log in {:.1?}",
        wal.stats.records,
        end >> 20,
        t.elapsed()
    );
    drop(wal);
    let t = Instant::now();
    let r = recover(&dir, SEGMENT_BYTES).expect("recover");
    let el: Duration = t.elapsed();
    let queued: usize = r.state.sessions.values().map(|s| s.copies.len()).sum();
    println!(
        "recovery: {} sessions, {} queued, {} records replayed in {:.2?} ({:.0} records/s)",
        r.state.sessions.len(),
        queued,
        r.replayed,
        el,
        r.replayed as f64 / el.as_secs_f64()
    );
}
