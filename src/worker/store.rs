//! A loop's durability IO: recovering its directory at start-up (`recover_loops`,
//! run by `main` before any loop starts), and at run time moving the shard's log
//! operations to the disk and their results back, once per turn, so a turn's
//! records leave as one group commit and the loop never blocks on the disk. In
//! `interval:MS` mode it also asks for the periodic fdatasync.
//!
//! Where an operation runs is `DiskRoute`'s choice: on io_uring the group commits
//! go through the loop's own ring (a write linked to an `IORING_FSYNC_DATASYNC` in
//! `fsync` mode), the rare steps through the loop's disk thread
//! (`io/store_thread.rs`); on epoll the thread runs them all (docs/ARCHITECTURE.md,
//! "Durability").

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Config, Durability};
use crate::io::datadir::disk_error;
use crate::io::datadir::{DataDir, LoopDir};
use crate::io::store_thread::StoreThread;
use crate::io::{EventLoop, Remote};
use crate::shard::{owner_shard, PeerRoutes, Shard};
use crate::store::recover::Recovered;
use crate::store::rehome::rehome;
use crate::store::snapshot::encode_snapshot;
use crate::store::wal::{segment_name, snapshot_name, SyncMode};
use crate::store::{recover, DiskError, DiskOp, Wal};

/// Size of a log segment: created at full size before the first write into it.
/// Recovery reads the last one whole (its zero fill included), so it stays small.
pub const SEGMENT_BYTES: u64 = 8 << 20;

/// What one loop starts its log from.
pub struct LoopStore {
    pub dir: LoopDir,
    pub recovered: Recovered,
    pub mode: SyncMode,
    pub interval: Option<Duration>,
    /// Every loop's recovered routes (one table shared by all loops), so this loop
    /// routes to the other loops' recovered subscribers from its first turn.
    pub peer_routes: Arc<PeerRoutes>,
}

/// The worker's side at run time.
pub(super) struct StoreIo {
    route: DiskRoute,
    interval: Option<Duration>,
    next_sync: Option<Instant>,
}

/// Where the log's one operation in flight runs, and its result back. io_uring: the
/// writes into the current segment (and `interval:MS`'s fdatasync of it) go through
/// the loop's own ring (`EventLoop::write_file`, a write linked to an
/// `IORING_FSYNC_DATASYNC` in `fsync` mode); everything else (creating a segment,
/// directory syncs, a snapshot's write and rename, removals) goes to the disk thread,
/// which also opens each segment it creates for the ring. epoll, or a segment the
/// loop holds no descriptor for: the thread does it all.
///
/// The rarer steps stay on the thread: a segment is created once per
/// `SEGMENT_BYTES` of log and a snapshot once per `SNAPSHOT_AFTER_BYTES`, and
/// `fallocate`, `rename` and a multi-megabyte snapshot write on the ring would add
/// code for no measurable gain, while every group commit (every loop turn with a
/// persistent change) goes through the ring.
pub(crate) struct DiskRoute {
    thread: StoreThread,
    /// The segment the log writes into, open for writing, and its name.
    segment: Option<(String, File)>,
    out: Out,
    /// The ring's answer to the write in flight (`on_file_written`).
    ring_result: Option<Result<(), DiskError>>,
    /// Operations run through the ring and through the thread (tests, and the
    /// shutdown report).
    pub(crate) ring_ops: u64,
    pub(crate) thread_ops: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    Idle,
    Thread,
    Ring,
}

impl DiskRoute {
    /// `segment`: the name of the segment the log continues in (recovery made it);
    /// opened here, at start-up, where blocking is allowed, before `dir` goes to
    /// the thread.
    pub(crate) fn new(
        dir: LoopDir,
        segment: String,
        spawn: impl FnOnce(LoopDir) -> std::io::Result<StoreThread>,
    ) -> std::io::Result<DiskRoute> {
        let segment = match dir.open_segment(&segment) {
            Ok(f) => Some((segment, f)),
            Err(e) => {
                // Not fatal: the thread writes it by name.
                tracing::warn!(
                    "data directory {}: cannot open {segment} for the loop's own writes \
                     ({e}); the disk thread writes it",
                    dir.path().display()
                );
                None
            }
        };
        Ok(DiskRoute {
            thread: spawn(dir)?,
            segment,
            out: Out::Idle,
            ring_result: None,
            ring_ops: 0,
            thread_ops: 0,
        })
    }

    pub(crate) fn idle(&self) -> bool {
        self.out == Out::Idle
    }

    /// Starts `op`; refused (given back) while one is in flight.
    pub(crate) fn submit<L: EventLoop + ?Sized>(
        &mut self,
        op: DiskOp,
        io: &mut L,
    ) -> Result<(), DiskOp> {
        if self.out != Out::Idle {
            return Err(op);
        }
        // A segment write (or its sync) goes through the ring when the loop has the
        // segment open and the backend writes files; anything else, to the thread.
        let op = match op {
            DiskOp::Write {
                name,
                offset,
                data,
                sync,
            } => {
                let data = match self.segment_fd(&name) {
                    Some(fd) => match io.write_file(fd, offset, data, sync) {
                        Ok(()) => {
                            self.started(Out::Ring);
                            return Ok(());
                        }
                        Err(data) => data,
                    },
                    None => data,
                };
                DiskOp::Write {
                    name,
                    offset,
                    data,
                    sync,
                }
            }
            DiskOp::Sync { name } => {
                if let Some(fd) = self.segment_fd(&name) {
                    if io.write_file(fd, 0, Vec::new(), true).is_ok() {
                        self.started(Out::Ring);
                        return Ok(());
                    }
                }
                DiskOp::Sync { name }
            }
            op => op,
        };
        self.thread.submit(op)?;
        self.started(Out::Thread);
        Ok(())
    }

    fn started(&mut self, out: Out) {
        self.out = out;
        match out {
            Out::Ring => self.ring_ops += 1,
            Out::Thread => self.thread_ops += 1,
            Out::Idle => {}
        }
    }

    fn segment_fd(&self, name: &str) -> Option<RawFd> {
        self.segment
            .as_ref()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.as_raw_fd())
    }

    /// The ring's `Completion::FileWritten` for the write in flight.
    pub(crate) fn on_file_written(&mut self, errno: i32, sync_errno: i32) {
        if self.out != Out::Ring {
            tracing::warn!(
                errno,
                sync_errno,
                "a file write completed that this loop did not start"
            );
            return;
        }
        self.ring_result = Some(if errno != 0 {
            Err(disk_error(&std::io::Error::from_raw_os_error(errno)))
        } else if sync_errno != 0 {
            Err(DiskError::SyncFailed(sync_errno))
        } else {
            Ok(())
        });
    }

    /// The result of the operation in flight, once it has come.
    pub(crate) fn poll(&mut self) -> Option<Result<(), DiskError>> {
        let res = match self.out {
            Out::Idle => None,
            Out::Ring => self.ring_result.take(),
            Out::Thread => self.thread.poll().map(|(res, opened)| {
                if let Some(seg) = opened {
                    // A new segment: the ring writes into it from now on.
                    self.segment = Some(seg);
                }
                res
            }),
        };
        if res.is_some() {
            self.out = Out::Idle;
        }
        res
    }
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
    let mut loops = Vec::with_capacity(shards);
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
        loops.push((dir, r));
    }
    let peer_routes = Arc::new(PeerRoutes::of(loops.iter().map(|(_, r)| &r.state)));
    let out = loops
        .into_iter()
        .map(|(dir, recovered)| LoopStore {
            dir,
            recovered,
            mode,
            interval,
            peer_routes: peer_routes.clone(),
        })
        .collect();
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
            peer_routes,
        } = store;
        let now = Instant::now();
        let segment = segment_name(*r.segments.last().unwrap_or(&0));
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
        shard.load_peer_routes(&peer_routes);
        let route = DiskRoute::new(dir, segment, |dir| {
            StoreThread::spawn(
                dir,
                format!("ringmq-disk-{id}"),
                Box::new(move || remote.wake()),
            )
        })?;
        Ok(StoreIo {
            route,
            interval,
            next_sync: interval.map(|i| now + i),
        })
    }

    /// Once per turn, before the shard's actions are taken: the disk thread's
    /// result (held replies go out), and in interval mode the periodic sync.
    pub(super) fn collect(&mut self, shard: &mut Shard, now: Instant) {
        if let Some(res) = self.route.poll() {
            shard.on_store_done(res, now);
        }
        if let (Some(at), Some(i)) = (self.next_sync, self.interval) {
            if now >= at {
                shard.store_request_sync();
                self.next_sync = Some(now + i);
            }
        }
    }

    /// The ring's answer to the log write in flight.
    pub(super) fn on_file_written(&mut self, errno: i32, sync_errno: i32) {
        self.route.on_file_written(errno, sync_errno);
    }

    /// Once per turn, after everything the turn appended: the next operation (one
    /// write for all of it) goes to the ring or the disk thread.
    pub(super) fn submit<L: EventLoop>(&mut self, shard: &mut Shard, io: &mut L) {
        if !self.route.idle() {
            return;
        }
        if let Some(op) = shard.poll_store_op() {
            if self.route.submit(op, io).is_err() {
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use bytes::Bytes;

    use super::*;
    use crate::io::datadir::DataDir;
    use crate::io::{epoll::EpollLoop, uring::UringLoop, Completion, LoopOptions};
    use crate::store::{Record, WalEvent};

    /// Small segments, so the log rolls (a create on the thread, the new segment
    /// opened for the ring) several times in a run.
    const SEG: u64 = 16 << 10;
    const TURNS: u32 = 200;

    /// A loop's log through `DiskRoute` on a real backend: records appended each
    /// "turn", the turn's write submitted, the loop turned (the thread wakes it
    /// through its `Remote`), completions fed back. Returns the route's counts.
    fn run_log(io: &mut dyn EventLoop, tag: &str) -> (u64, u64) {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "ringmq-route-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        let data = DataDir::open(&p).expect("open");
        let dir = data.loop_dir(0).expect("loop dir");
        let r = recover(&dir, SEG).expect("recover");
        r.ops.iter().for_each(|op| dir.run(op).expect("op"));
        let segment = segment_name(*r.segments.last().expect("a segment"));
        let mut wal = Wal::new(
            SyncMode::Fsync,
            SEG,
            r.segments,
            r.seg_len,
            r.next_lsn,
            r.snapshot,
        );
        let remote = io.remote();
        let mut route = DiskRoute::new(dir, segment, |dir| {
            StoreThread::spawn(dir, "route-test".into(), Box::new(move || remote.wake()))
        })
        .expect("route");
        let mut out = Vec::new();
        let (mut last, mut durable) = (0, 0);
        let mut turn = 0u32;
        while durable < last || turn < TURNS {
            if turn < TURNS {
                for i in 0..10u32 {
                    last = wal
                        .append(&Record::SessionPut {
                            client: Bytes::from(format!("c{turn}-{i}")),
                            expiry_s: 60,
                            will: None,
                        })
                        .expect("append");
                }
            }
            turn += 1;
            assert!(turn < 100_000, "the log never caught up");
            if route.idle() {
                if let Some(op) = wal.poll_op() {
                    route.submit(op, io).expect("idle route takes it");
                }
            }
            io.turn(Some(std::time::Duration::from_millis(20)), &mut out)
                .expect("turn");
            for c in out.drain(..) {
                if let Completion::FileWritten { errno, sync_errno } = c {
                    route.on_file_written(errno, sync_errno);
                }
            }
            if let Some(res) = route.poll() {
                wal.on_done(res);
            }
            while let Some(ev) = wal.poll_event() {
                match ev {
                    WalEvent::Durable(n) => durable = n,
                    WalEvent::Failed { from, to } => panic!("failed {from}..{to}"),
                }
            }
        }
        assert_eq!(durable, last, "every record durable");
        let counts = (route.ring_ops, route.thread_ops);
        drop(route);
        let back = recover(&data.loop_dir(0).expect("dir"), SEG).expect("recover");
        assert_eq!(
            back.state.sessions.len(),
            TURNS as usize * 10,
            "{tag}: all recovered"
        );
        assert!(back.damage.is_none(), "{tag}: {:?}", back.damage);
        drop(data);
        let _ = std::fs::remove_dir_all(&p);
        counts
    }

    /// io_uring: every group commit goes through the ring, also after the log
    /// rolled into segments the thread created and opened; only the creates and
    /// directory syncs go to the thread. epoll: the thread does everything.
    #[test]
    fn group_commits_go_through_the_ring_on_io_uring_and_the_thread_on_epoll() {
        let opts = LoopOptions::default();
        let mut uring = UringLoop::new(0, &opts).expect("io_uring");
        let (ring, thread) = run_log(&mut uring, "uring");
        assert!(ring > 0, "writes through the ring");
        assert!(thread >= 2, "segments rolled: {thread} thread ops");
        assert_eq!(
            thread % 2,
            0,
            "only creates and their directory syncs on the thread ({ring} ring, {thread} thread)"
        );
        let mut epoll = EpollLoop::new(0, &opts).expect("epoll");
        let (ring, thread) = run_log(&mut epoll, "epoll");
        assert_eq!(ring, 0);
        assert!(thread > 0);
    }
}
