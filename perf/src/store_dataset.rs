//! Builds the recovery data set of issue #13 in a data directory, laid out as a
//! broker of LOOPS loops writes it: SESSIONS persistent sessions (`device-NNNNNN`,
//! one subscription `devices/NNNNNN/cmd` each) placed on their owner loop with the
//! directory's placement seed, and MESSAGES queued QoS 1 64 B messages spread over
//! them. `perf/recovery.sh` then times a broker's restart on it.
//!
//! `store-dataset DIR LOOPS SESSIONS MESSAGES snapshot|log`: `snapshot` writes each
//! loop's state as its snapshot (a broker restarting after its periodic snapshot),
//! `log` writes it all as log records through the store's writer (no snapshot: the
//! worst case, every record replayed).

use std::path::PathBuf;

use bytes::Bytes;
use ringmq::io::datadir::DataDir;
use ringmq::shard::owner_shard;
use ringmq::store::snapshot::encode_snapshot;
use ringmq::store::wal::{snapshot_name, SyncMode, Wal, WalEvent};
use ringmq::store::{recover, MsgRec, Record, StoreState};
use ringmq::worker::store::SEGMENT_BYTES;

fn client(s: u64) -> Bytes {
    Bytes::from(format!("device-{s:06}"))
}

fn records(
    sessions: u64,
    messages: u64,
    loop_of: impl Fn(&[u8]) -> usize,
    mut emit: impl FnMut(usize, Record),
) {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for s in 0..sessions {
        let c = client(s);
        let l = loop_of(&c);
        emit(
            l,
            Record::SessionPut {
                client: c.clone(),
                expiry_s: 86_400 * 30,
                will: None,
            },
        );
        emit(
            l,
            Record::SubAdd {
                client: c,
                filter: Bytes::from(format!("devices/{s:06}/cmd")),
                options: 1,
                sub_id: 0,
            },
        );
    }
    let payload = Bytes::from(vec![0x5a; 64]);
    for i in 0..messages {
        let s = i % sessions.max(1);
        let c = client(s);
        let l = loop_of(&c);
        emit(
            l,
            Record::MsgPut {
                id: i + 1,
                msg: MsgRec {
                    topic: Bytes::from(format!("devices/{s:06}/cmd")),
                    payload: payload.clone(),
                    qos: 1,
                    retain: false,
                    props: Bytes::new(),
                    arrived_unix_ms: now_ms,
                },
            },
        );
        emit(
            l,
            Record::Enqueue {
                client: c,
                msg: i + 1,
                qos: 1,
                retain: false,
                sub_ids: vec![],
            },
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: store-dataset DIR LOOPS SESSIONS MESSAGES snapshot|log";
    let root = PathBuf::from(args.get(1).expect(usage));
    let num = |i: usize| -> u64 {
        args.get(i)
            .expect(usage)
            .parse()
            .unwrap_or_else(|_| panic!("{usage}: {} is not a number", args[i]))
    };
    let (loops, sessions, messages) = (num(2) as usize, num(3), num(4));
    let form = args.get(5).map(String::as_str).expect(usage);
    let data = DataDir::open(&root).unwrap_or_else(|e| panic!("{e}"));
    let seed = data.placement_seed(1).unwrap_or_else(|e| panic!("{e}"));
    let loop_of = |c: &[u8]| owner_shard(seed, c, loops);
    let dirs: Vec<_> = (0..loops)
        .map(|i| data.loop_dir(i).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    match form {
        "snapshot" => {
            let mut states = vec![StoreState::default(); loops];
            records(sessions, messages, loop_of, |l, r| states[l].apply(&r));
            for (st, dir) in states.iter_mut().zip(&dirs) {
                st.finish();
                let f = dir.path().join(snapshot_name(0));
                std::fs::write(&f, encode_snapshot(st, 0)).expect("write snapshot");
            }
        }
        "log" => {
            let mut wals: Vec<Wal> = dirs
                .iter()
                .map(|dir| {
                    let r = recover(dir, SEGMENT_BYTES).expect("recover");
                    r.ops.iter().for_each(|op| dir.run(op).expect("op"));
                    Wal::new(
                        SyncMode::Process,
                        SEGMENT_BYTES,
                        r.segments,
                        r.seg_len,
                        r.next_lsn,
                        r.snapshot,
                    )
                })
                .collect();
            let mut n = 0u64;
            let drive = |wal: &mut Wal, dir: &ringmq::io::datadir::LoopDir| {
                while let Some(op) = wal.poll_op() {
                    let res = dir.run(&op);
                    wal.on_done(res);
                    while let Some(ev) = wal.poll_event() {
                        if let WalEvent::Failed { from, to } = ev {
                            panic!("write failed {from}..{to}");
                        }
                    }
                }
            };
            records(sessions, messages, loop_of, |l, r| {
                wals[l].append(&r).expect("append");
                n += 1;
                if n.is_multiple_of(4096) {
                    for (w, d) in wals.iter_mut().zip(&dirs) {
                        drive(w, d);
                    }
                }
            });
            for (w, d) in wals.iter_mut().zip(&dirs) {
                drive(w, d);
            }
        }
        other => panic!("{usage}: unknown form {other}"),
    }
    let bytes: u64 = walk(&root);
    println!(
        "{}: {loops} loops, {sessions} sessions, {messages} queued messages as {form}, {} MB on disk",
        root.display(),
        bytes >> 20
    );
}

fn walk(p: &std::path::Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = e.metadata().expect("metadata");
            n += if m.is_dir() { walk(&e.path()) } else { m.len() };
        }
    }
    n
}
