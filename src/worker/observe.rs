//! What a loop tells a scrape: its busy clock (time not waiting for work over wall
//! time), the snapshot of its counters it hands out over the mesh, and the process
//! figures read from `/proc` for the loop that renders the answer.

use std::time::Instant;

use crate::io::EventLoop;
use crate::metrics::{process, LoopSnapshot, ProcessInfo};

use super::Worker;

/// Busy time of one loop, from one extra clock read per turn that may block.
#[derive(Debug)]
pub(super) struct LoopClock {
    started: Instant,
    idle_ns: u64,
    /// When the loop started waiting (spinning idle or blocked), until its next turn.
    wait_from: Option<Instant>,
    turns: u64,
}

impl LoopClock {
    pub(super) fn new(now: Instant) -> LoopClock {
        LoopClock {
            started: now,
            idle_ns: 0,
            wait_from: None,
            turns: 0,
        }
    }

    /// A turn starts at `now`: a wait before it ends.
    #[inline]
    pub(super) fn turn(&mut self, now: Instant) {
        self.turns += 1;
        if let Some(t) = self.wait_from.take() {
            self.idle_ns += now.saturating_duration_since(t).as_nanos() as u64;
        }
    }

    /// The loop found nothing to do and is about to spin or block.
    pub(super) fn waiting(&mut self, at: Instant) {
        self.wait_from = Some(at);
    }

    /// `(busy_ns, wall_ns, turns)` at `now`.
    pub(super) fn figures(&self, now: Instant) -> (u64, u64, u64) {
        let wall = now.saturating_duration_since(self.started).as_nanos() as u64;
        (wall.saturating_sub(self.idle_ns), wall, self.turns)
    }
}

impl<L: EventLoop> Worker<L> {
    /// This loop's counters for a scrape (walks the shard's sessions once).
    pub(super) fn snapshot(&mut self, now: Instant) -> LoopSnapshot {
        let (busy_ns, wall_ns, turns) = self.clock.figures(now);
        LoopSnapshot {
            shard: self.id,
            core: self.shard.stats_snapshot(),
            io: self.io.stats(),
            mesh: self.mesh.stats(),
            mesh_inbound_waiting: self.mesh.inbound_len() as u64,
            mesh_rejected: self.report.mesh_rejected,
            migrations_out: self.report.migrations_out,
            migrations_failed: self.report.migrations_failed,
            handoffs_in: self.report.handoffs_in,
            handoffs_expired: self.report.handoffs_expired,
            drain_timeouts: self.report.drain_timeouts,
            busy_ns,
            wall_ns,
            turns,
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
