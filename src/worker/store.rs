//! A loop's durability IO: recovering its directory at start-up (`recover_loops`,
//! run by `main` before any loop starts), and at run time moving the shard's log
//! operations to the loop's disk thread (`io/store_thread.rs`) and their results
//! back, once per turn, so a turn's records leave as one group commit and the loop
//! never blocks on the disk. In `interval:MS` mode it also asks for the periodic
//! fdatasync.
//!
//! Both backends use the disk thread. io_uring could submit the write linked to an
//! `IORING_FSYNC_DATASYNC` itself; the thread costs one wake-up per group commit,
//! which the loop pays once per turn, not per record (docs/ARCHITECTURE.md).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Config, Durability};
use crate::io::datadir::{DataDir, LoopDir};
use crate::io::store_thread::StoreThread;
use crate::io::Remote;
use crate::shard::{owner_shard, Shard};
use crate::store::recover::Recovered;
use crate::store::rehome::rehome;
use crate::store::snapshot::encode_snapshot;
use crate::store::wal::{snapshot_name, SyncMode};
use crate::store::{recover, Wal};

/// Size of a log segment: created at full size before the first write into it.
/// Recovery reads the last one whole (its zero fill included), so it stays small.
pub const SEGMENT_BYTES: u64 = 8 << 20;

/// What one loop starts its log from.
pub struct LoopStore {
    pub dir: LoopDir,
    pub recovered: Recovered,
    pub mode: SyncMode,
    pub interval: Option<Duration>,
}

/// The worker's side at run time.
pub(super) struct StoreIo {
    thread: StoreThread,
    interval: Option<Duration>,
    next_sync: Option<Instant>,
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Recovers every loop's directory for a broker of `shards` loops. The sessions of
/// a directory written with another loop count (or another placement seed) are
/// re-homed first: each new loop's state is written as its snapshot into a fresh
/// directory, and the old directories are renamed aside only once all are in place.
pub fn recover_loops(
    data: &DataDir,
    config: &Config,
    shards: usize,
) -> Result<Vec<LoopStore>, String> {
    let (mode, interval) = match config.durability {
        Durability::None => return Ok(Vec::new()),
        Durability::Process => (SyncMode::Process, None),
        Durability::Fsync => (SyncMode::Fsync, None),
        Durability::IntervalMs(ms) => (
            SyncMode::Interval,
            Some(Duration::from_millis(u64::from(ms))),
        ),
    };
    let seed = config.placement_seed.unwrap_or(0);
    let started = Instant::now();
    let old = existing_loops(data.path());
    let mut found = Vec::with_capacity(old);
    let mut misplaced = old != shards && old > 0;
    // One thread per loop directory: reading and decoding them is independent.
    let results: Vec<Result<(LoopDir, Recovered), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..old)
            .map(|i| s.spawn(move || recover_one(data, i)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("recovering a loop directory panicked".into()))
            })
            .collect()
    });
    for (i, res) in results.into_iter().enumerate() {
        let (dir, r) = res?;
        misplaced = misplaced
            || r.state
                .sessions
                .keys()
                .any(|c| owner_shard(seed, c, shards) != i);
        found.push((dir, r));
    }
    if misplaced {
        let olds: Vec<_> = found.into_iter().map(|(_, r)| r.state).collect();
        let (new, dropped) = rehome(&olds, shards, |c| owner_shard(seed, c, shards));
        tracing::info!(
            "data directory {}: {old} loop log(s) re-homed onto {shards} loop(s) ({} \
             sessions; {dropped} duplicate ids dropped)",
            data.path().display(),
            new.iter().map(|s| s.sessions.len()).sum::<usize>()
        );
        write_rehomed(data, old, &new)?;
        found = Vec::new();
    }
    let mut out = Vec::with_capacity(shards);
    let mut records = 0u64;
    let mut sessions = 0usize;
    let mut found = found.into_iter();
    for i in 0..shards {
        let (dir, r) = match found.next() {
            Some(x) => x,
            None => recover_one(data, i)?,
        };
        for op in &r.ops {
            dir.run(op).map_err(|e| {
                format!(
                    "data directory {}: cannot prepare the log ({}): {}",
                    dir.path().display(),
                    op_name(op),
                    disk_error_text(e)
                )
            })?;
        }
        records += r.replayed;
        sessions += r.state.sessions.len();
        out.push(LoopStore {
            dir,
            recovered: r,
            mode,
            interval,
        });
    }
    tracing::info!(
        "data directory {}: recovered {sessions} sessions, {records} log records replayed \
         in {} ms; durability {}",
        data.path().display(),
        started.elapsed().as_millis(),
        config.durability.name()
    );
    Ok(out)
}

fn disk_error_text(e: crate::store::DiskError) -> String {
    use crate::store::DiskError;
    match e {
        DiskError::NoSpace => "no space left (ENOSPC, EDQUOT or EFBIG)".into(),
        DiskError::Io(errno) => format!("{}", std::io::Error::from_raw_os_error(errno)),
        DiskError::SyncFailed(errno) => {
            format!("fsync failed: {}", std::io::Error::from_raw_os_error(errno))
        }
    }
}

fn op_name(op: &crate::store::DiskOp) -> String {
    use crate::store::DiskOp;
    match op {
        DiskOp::Create { name, len } => format!("create {name} of {len} bytes"),
        DiskOp::Write { name, .. } => format!("write {name}"),
        DiskOp::Sync { name } => format!("sync {name}"),
        DiskOp::SyncDir => "sync the directory".into(),
        DiskOp::Rename { from, to } => format!("rename {from} to {to}"),
        DiskOp::Remove { name } => format!("remove {name}"),
    }
}

fn recover_one(data: &DataDir, i: usize) -> Result<(LoopDir, Recovered), String> {
    let dir = data.loop_dir(i).map_err(|e| e.to_string())?;
    let r = recover(&dir, SEGMENT_BYTES)
        .map_err(|e| format!("data directory {}: {e}", dir.path().display()))?;
    if let Some(d) = &r.damage {
        tracing::warn!(
            "data directory {}: log damaged in {} at offset {} ({}); kept what came \
             before, the rest set aside as {}",
            dir.path().display(),
            d.segment,
            d.offset,
            d.why,
            d.aside
        );
    }
    Ok((dir, r))
}

/// How many `loop-<i>` directories hold something (segments or snapshots).
fn existing_loops(path: &Path) -> usize {
    let mut n = 0;
    while let Ok(mut rd) = std::fs::read_dir(path.join(format!("loop-{n}"))) {
        if rd.next().is_none() {
            break;
        }
        n += 1;
    }
    n
}

/// Writes each new loop's state as its snapshot in `loop-<i>.rehome`, then moves
/// the old directories to `rehomed-<unix ms>/` and the new ones into place.
fn write_rehomed(
    data: &DataDir,
    old: usize,
    new: &[crate::store::StoreState],
) -> Result<(), String> {
    use std::fs;
    let root = data.path();
    let err = |what: &str, p: &Path, e: std::io::Error| {
        format!("data directory {}: cannot {what}: {e}", p.display())
    };
    for (i, st) in new.iter().enumerate() {
        let p = root.join(format!("loop-{i}.rehome"));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).map_err(|e| err("create", &p, e))?;
        let f = p.join(snapshot_name(0));
        fs::write(&f, encode_snapshot(st, 0)).map_err(|e| err("write", &f, e))?;
        fs::File::open(&f)
            .and_then(|f| f.sync_all())
            .map_err(|e| err("sync", &f, e))?;
        fs::File::open(&p)
            .and_then(|d| d.sync_all())
            .map_err(|e| err("sync", &p, e))?;
    }
    let aside = root.join(format!("rehomed-{}", unix_ms_now()));
    fs::create_dir_all(&aside).map_err(|e| err("create", &aside, e))?;
    for i in 0..old {
        let p = root.join(format!("loop-{i}"));
        if p.exists() {
            fs::rename(&p, aside.join(format!("loop-{i}"))).map_err(|e| err("move", &p, e))?;
        }
    }
    for i in 0..new.len() {
        let p = root.join(format!("loop-{i}.rehome"));
        fs::rename(&p, root.join(format!("loop-{i}"))).map_err(|e| err("move", &p, e))?;
    }
    fs::File::open(root)
        .and_then(|d| d.sync_all())
        .map_err(|e| err("sync", root, e))?;
    tracing::info!(
        "data directory {}: the old loop logs are kept in {}",
        root.display(),
        aside.display()
    );
    Ok(())
}

impl StoreIo {
    /// Gives `shard` its log and recovered state and starts the loop's disk thread.
    pub(super) fn start(
        id: usize,
        shard: &mut Shard,
        store: LoopStore,
        remote: Arc<Remote>,
    ) -> std::io::Result<StoreIo> {
        let LoopStore {
            dir,
            recovered: r,
            mode,
            interval,
        } = store;
        let now = Instant::now();
        let wal = Wal::new(
            mode,
            SEGMENT_BYTES,
            r.segments,
            r.seg_len,
            r.next_lsn,
            r.snapshot,
        );
        shard.attach_store(wal, r.state.next_msg_id, now, unix_ms_now());
        shard.load_store(r.state, now);
        let thread = StoreThread::spawn(
            dir,
            format!("ringmq-disk-{id}"),
            Box::new(move || remote.wake()),
        )?;
        Ok(StoreIo {
            thread,
            interval,
            next_sync: interval.map(|i| now + i),
        })
    }

    /// Once per turn, before the shard's actions are taken: the disk thread's
    /// result (held replies go out), and in interval mode the periodic sync.
    pub(super) fn collect(&mut self, shard: &mut Shard, now: Instant) {
        if let Some(res) = self.thread.poll() {
            shard.on_store_done(res, now);
        }
        if let (Some(at), Some(i)) = (self.next_sync, self.interval) {
            if now >= at {
                shard.store_request_sync();
                self.next_sync = Some(now + i);
            }
        }
    }

    /// Once per turn, after everything the turn appended: the next operation (one
    /// write for all of it) goes to the disk thread.
    pub(super) fn submit(&mut self, shard: &mut Shard) {
        if self.thread.in_flight() {
            return;
        }
        if let Some(op) = shard.poll_store_op() {
            if self.thread.submit(op).is_err() {
                // Cannot happen with one operation out at a time; fail it rather
                // than leave the writer waiting forever.
                shard.on_store_done(Err(crate::store::DiskError::Io(libc::EIO)), Instant::now());
            }
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.next_sync
    }
}
