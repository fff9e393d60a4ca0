//! What a loop tells a scrape: its busy clock (time not waiting for work over wall
//! time), the snapshot of its counters it hands out over the mesh, and the process
//! figures read from `/proc` for the loop that renders the answer. Also the loop's
//! once-per-interval summary log line, which says at info what moved instead of a
//! line per event.

use std::time::{Duration, Instant};

use crate::io::EventLoop;
use crate::metrics::families::{families, total, CLOSED, DROPPED, REFUSED};
use crate::metrics::{process, LoopSnapshot, ProcessInfo};

use super::{Worker, WorkerReport};

/// Busy time of one loop: the CPU time of its thread. Time blocked in the kernel
/// waiting for events costs none; the work the kernel does for the loop's own
/// submissions (a loopback send runs inside `io_uring_enter`) counts, as it should.
/// A spinning loop (`busy_poll_us`) counts as busy while it spins.
#[derive(Debug)]
pub(super) struct LoopClock {
    started: Instant,
    cpu_started_ns: u64,
    turns: u64,
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call to fill;
    // CLOCK_THREAD_CPUTIME_ID needs nothing else.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

impl LoopClock {
    /// Made on the loop's own thread: its CPU time is read from the calling thread.
    pub(super) fn new(now: Instant) -> LoopClock {
        LoopClock {
            started: now,
            cpu_started_ns: thread_cpu_ns(),
            turns: 0,
        }
    }

    #[inline]
    pub(super) fn turn(&mut self) {
        self.turns += 1;
    }

    /// `(busy_ns, wall_ns, turns)` at `now`; called on the loop's thread.
    pub(super) fn figures(&self, now: Instant) -> (u64, u64, u64) {
        let wall = now.saturating_duration_since(self.started).as_nanos() as u64;
        let busy = thread_cpu_ns().saturating_sub(self.cpu_started_ns);
        (busy.min(wall), wall, self.turns)
    }
}

/// How often a loop may log its summary line (only when something moved).
pub(super) const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// What the last summary line had seen.
#[derive(Debug)]
pub(super) struct Summary {
    pub(super) next: Instant,
    messages_in: u64,
    messages_out: u64,
    dropped: u64,
    refused: u64,
    closed: u64,
    busy_ns: u64,
    wall_ns: u64,
}

impl Summary {
    pub(super) fn new(now: Instant) -> Summary {
        Summary {
            next: now + SUMMARY_INTERVAL,
            messages_in: 0,
            messages_out: 0,
            dropped: 0,
            refused: 0,
            closed: 0,
            busy_ns: 0,
            wall_ns: 0,
        }
    }
}

/// The totals the summary line reports, from the metrics' family table.
fn totals(l: &LoopSnapshot) -> (u64, u64, u64) {
    let f = families(l);
    (total(&f, DROPPED), total(&f, REFUSED), total(&f, CLOSED))
}

impl<L: EventLoop> Worker<L> {
    /// Logs at info what this loop did since its last summary, if anything moved
    /// (an idle broker stays quiet). Called when `summary.next` has passed.
    pub(super) fn log_summary(&mut self, now: Instant) {
        let l = self.counters(now);
        let s = &l.core;
        let (busy_ns, wall_ns) = (l.busy_ns, l.wall_ns);
        let (dropped, refused, closed) = totals(&l);
        let p = &mut self.summary;
        p.next = now + SUMMARY_INTERVAL;
        let (d_in, d_out) = (
            s.messages_in - p.messages_in,
            s.messages_out - p.messages_out,
        );
        let d_drop = dropped - p.dropped;
        let (d_ref, d_closed) = (refused - p.refused, closed - p.closed);
        let busy = (busy_ns - p.busy_ns) as f64 / (wall_ns - p.wall_ns).max(1) as f64;
        if d_in + d_out + d_drop + d_ref + d_closed > 0 {
            tracing::info!(
                shard = self.id,
                connections = s.connections,
                messages_in = d_in,
                messages_out = d_out,
                dropped = d_drop,
                refused = d_ref,
                closed = d_closed,
                busy = format_args!("{busy:.3}"),
                seconds = (wall_ns - p.wall_ns) / 1_000_000_000,
                "loop summary since the last one"
            );
        }
        p.messages_in = s.messages_in;
        p.messages_out = s.messages_out;
        p.dropped = dropped;
        p.refused = refused;
        p.closed = closed;
        p.busy_ns = busy_ns;
        p.wall_ns = wall_ns;
    }

    /// This loop's counters for a scrape (walks the shard's sessions once).
    pub(super) fn snapshot(&mut self, now: Instant) -> LoopSnapshot {
        let mut l = self.counters(now);
        l.core = self.shard.stats_snapshot();
        l.bridges = self
            .bridges
            .as_ref()
            .map_or_else(Vec::new, |b| b.snapshot());
        l
    }

    /// This loop's counters without the gauges a walk of the sessions fills.
    fn counters(&self, now: Instant) -> LoopSnapshot {
        let (busy_ns, wall_ns, turns) = self.clock.figures(now);
        // Destructured without `..`: a counter added to the report does not compile
        // until it is exported here or said not to be.
        let WorkerReport {
            shard: _,
            // Read from the backend itself (the report's copy is filled at exit).
            io: _,
            mesh_rejected,
            migrations_out,
            migrations_failed,
            handoffs_in,
            tls_failed,
            ws_refused,
            handoffs_expired,
            // Only at shutdown, after the last scrape.
            forced_closes: _,
            drain_timeouts,
            // Filled at exit; the linger keeps the live figures.
            lingered: _,
            linger_refused_full: _,
            // The shard's own counters, read below.
            core: _,
            latency,
        } = &self.report;
        LoopSnapshot {
            shard: self.id,
            core: self.shard.stats().clone(),
            io: self.io.stats(),
            mesh: self.mesh.stats(),
            mesh_inbound_waiting: self.mesh.inbound_len() as u64,
            mesh_rejected: *mesh_rejected,
            migrations_out: *migrations_out,
            migrations_failed: *migrations_failed,
            handoffs_in: *handoffs_in,
            handoffs_expired: *handoffs_expired,
            drain_timeouts: *drain_timeouts,
            tls_failed: *tls_failed,
            ws_refused: *ws_refused,
            lingered: self.linger.started,
            linger_refused_full: self.linger.refused_full,
            busy_ns,
            wall_ns,
            turns,
            latency: *latency,
            bridges: Vec::new(),
        }
    }
}

/// The process figures from `/proc` (Linux); `None` if they cannot be read.
pub(super) fn read_process_info() -> Option<ProcessInfo> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = process::parse_boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
    // SAFETY: sysconf reads a constant of the system; no pointers are involved.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let mut info = process::parse_stat(&stat, boot, ticks.max(1) as u64, page.max(1) as u64)?;
    info.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the call to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        info.max_fds = lim.rlim_cur;
    }
    Some(info)
}
