//! The write side of one loop's log (sans-IO): records in, disk operations out,
//! "durable up to N" back.
//!
//! **Group commit.** `append` frames a record into the pending batch and returns the
//! log position its acknowledgement waits for. `poll_op` hands the IO side at most one
//! operation at a time: everything appended since the last write becomes one write
//! (with a linked fdatasync in `fsync` mode); records appended while it is in flight
//! join the next one. `on_done` reports the result; `poll_event` then says how far the
//! log is durable for the mode, or which positions failed.
//!
//! **Segments** are named by the log position they start at and created at full size
//! before the first write into them, so a write never extends a file (no size
//! metadata for fdatasync) and running out of space shows at creation, before any
//! record lands. A batch never spans two segments.
//!
//! **Failures.** A failed write (ENOSPC, EIO) acknowledges nothing it carried: the
//! positions from the last completed write to the end of what was appended are
//! reported `Failed`, and the log continues from the last completed write in a new
//! segment, leaving whatever the failed write put on disk behind. A failed fdatasync leaves the state of the written pages
//! unknown (the kernel may have dropped them), so the log stops: every later append
//! fails until a restart recovers from what is really on disk.
//!
//! **Snapshots** (`start_snapshot`): the snapshot waits until every record it covers
//! is written, then goes to a temporary file (written and synced), is renamed, the
//! directory synced, and only then are the segments wholly behind it and the previous
//! snapshot removed.

use std::collections::VecDeque;

use super::frame::{frame_bytes, put_frame, MAX_PAYLOAD_BYTES};
use super::record::Record;

/// When an acknowledgement may go (the `durability` setting, minus `none`, which
/// never builds a log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Acknowledged once written to the kernel: survives kill -9, not power loss.
    Process,
    /// Acknowledged after fdatasync: survives power loss.
    Fsync,
    /// Acknowledged once written, synced when the timer asks (`request_sync`).
    Interval,
}

/// One operation for the IO side. Paths are file names inside the loop's directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskOp {
    /// Create `name` (truncating a leftover of a failed attempt) with `len` bytes
    /// reserved as zeros, and sync it; on failure the IO side removes it again.
    Create {
        name: String,
        len: u64,
    },
    /// Write `data` at `offset` (creating the file if absent), then fdatasync it if
    /// `sync`.
    Write {
        name: String,
        offset: u64,
        data: Vec<u8>,
        sync: bool,
    },
    Sync {
        name: String,
    },
    SyncDir,
    Rename {
        from: String,
        to: String,
    },
    /// Remove `name`; an absent file is success.
    Remove {
        name: String,
    },
}

/// How an operation failed, as the IO side maps errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskError {
    /// ENOSPC, EDQUOT, EFBIG.
    NoSpace,
    /// EIO or anything else on a write or create.
    Io(i32),
    /// The fdatasync (alone or linked to a write) failed.
    SyncFailed(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalEvent {
    /// Every record ending at or before this position is durable for the mode.
    Durable(u64),
    /// Records ending in `(from, to]` will never be durable: answer them with an
    /// error (0x97 on MQTT 5) or no acknowledgement. Positions after `from` are
    /// written again by later records, so this event comes before any `Durable`
    /// that covers them.
    Failed { from: u64, to: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendError {
    /// An fdatasync failed earlier; nothing more is accepted until a restart.
    Stopped,
    /// The record is larger than a frame may be.
    TooLarge,
}

/// Counters for the loop's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WalStats {
    pub records: u64,
    pub writes: u64,
    pub bytes_written: u64,
    pub syncs: u64,
    pub failed_writes: u64,
    pub failed_records_bytes: u64,
    pub snapshots: u64,
    pub snapshots_failed: u64,
}

pub fn segment_name(base: u64) -> String {
    format!("wal-{base:020}.log")
}

pub fn snapshot_name(lsn: u64) -> String {
    format!("snap-{lsn:020}.snap")
}

pub fn snapshot_temp_name(lsn: u64) -> String {
    format!("snap-{lsn:020}.tmp")
}

#[derive(Debug)]
enum InFlight {
    Write {
        end: u64,
        sync: bool,
    },
    Sync {
        end: u64,
    },
    /// A create, rename, remove or directory sync; `snapshot` marks the snapshot's steps.
    Control {
        snapshot: bool,
    },
}

#[derive(Debug)]
struct Snapshot {
    lsn: u64,
    data: Option<Vec<u8>>,
}

pub struct Wal {
    mode: SyncMode,
    segment_bytes: u64,
    /// Bases of the segments on disk, oldest first; the last one is written.
    segments: VecDeque<u64>,
    /// Reserved size of the last segment.
    seg_len: u64,
    /// End of everything appended.
    next_lsn: u64,
    pending: Vec<u8>,
    /// Where `pending` starts (= the end of the last completed or in-flight write).
    pending_start: u64,
    written_lsn: u64,
    synced_lsn: u64,
    durable_reported: u64,
    in_flight: Option<InFlight>,
    /// Control operations in order; at most a roll's and a snapshot's steps.
    ops: VecDeque<DiskOp>,
    snapshot: Option<Snapshot>,
    /// The snapshot on disk now (removed once a newer one is in place).
    current_snapshot: Option<u64>,
    sync_requested: bool,
    stopped: bool,
    events: VecDeque<WalEvent>,
    scratch: Vec<u8>,
    pub stats: WalStats,
}

impl Wal {
    /// A writer continuing at `next_lsn` in segment `segments.last()` (recovery has
    /// created it); `seg_len` is its reserved size.
    pub fn new(
        mode: SyncMode,
        segment_bytes: u64,
        segments: Vec<u64>,
        seg_len: u64,
        next_lsn: u64,
        current_snapshot: Option<u64>,
    ) -> Wal {
        assert!(
            segments.last().is_some_and(|&b| b <= next_lsn),
            "writer needs its segment"
        );
        Wal {
            mode,
            segment_bytes,
            segments: segments.into(),
            seg_len,
            next_lsn,
            pending: Vec::new(),
            pending_start: next_lsn,
            written_lsn: next_lsn,
            synced_lsn: next_lsn,
            durable_reported: next_lsn,
            in_flight: None,
            ops: VecDeque::new(),
            snapshot: None,
            current_snapshot,
            sync_requested: false,
            stopped: false,
            events: VecDeque::new(),
            scratch: Vec::new(),
            stats: WalStats::default(),
        }
    }

    /// Frames `rec` into the pending batch; returns the position its acknowledgement
    /// waits for (`Durable(n)` with `n >=` it).
    pub fn append(&mut self, rec: &Record) -> Result<u64, AppendError> {
        if self.stopped {
            return Err(AppendError::Stopped);
        }
        self.scratch.clear();
        rec.encode(&mut self.scratch);
        if self.scratch.len() > MAX_PAYLOAD_BYTES {
            return Err(AppendError::TooLarge);
        }
        put_frame(&mut self.pending, self.next_lsn, &self.scratch);
        self.next_lsn += frame_bytes(self.scratch.len()) as u64;
        self.stats.records += 1;
        Ok(self.next_lsn)
    }

    pub fn next_lsn(&self) -> u64 {
        self.next_lsn
    }

    pub fn durable_lsn(&self) -> u64 {
        match self.mode {
            SyncMode::Fsync => self.synced_lsn,
            SyncMode::Process | SyncMode::Interval => self.written_lsn,
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// True while an operation is out or work is waiting (the loop must not park
    /// without a completion to wake it).
    pub fn busy(&self) -> bool {
        self.in_flight.is_some() || !self.pending.is_empty() || !self.ops.is_empty()
    }

    /// Interval mode: the timer fired; the next idle moment syncs what was written.
    pub fn request_sync(&mut self) {
        self.sync_requested = true;
    }

    /// Begins a snapshot of the state as of every record appended so far; `data`
    /// comes from a [`super::snapshot::SnapshotWriter`] built with `lsn = next_lsn()`.
    /// Refused (false) while one is in progress.
    pub fn start_snapshot(&mut self, lsn: u64, data: Vec<u8>) -> bool {
        if self.snapshot.is_some() || self.stopped || lsn != self.next_lsn {
            return false;
        }
        self.snapshot = Some(Snapshot {
            lsn,
            data: Some(data),
        });
        true
    }

    pub fn snapshot_in_progress(&self) -> bool {
        self.snapshot.is_some()
    }

    pub fn poll_event(&mut self) -> Option<WalEvent> {
        self.events.pop_front()
    }

    /// The next operation to submit, if none is in flight.
    pub fn poll_op(&mut self) -> Option<DiskOp> {
        if self.in_flight.is_some() {
            return None;
        }
        if let Some(op) = self.ops.pop_front() {
            // Roll steps and snapshot steps never share the queue: a snapshot's steps are
            // queued only when the queue is empty, and the queue drains before any write.
            let snapshot = self.snapshot.as_ref().is_some_and(|s| s.data.is_none());
            self.in_flight = Some(InFlight::Control { snapshot });
            return Some(op);
        }
        if !self.pending.is_empty() {
            let base = *self.segments.back().unwrap_or(&0);
            let used = self.pending_start - base;
            if used + self.pending.len() as u64 > self.seg_len {
                self.roll();
                return self.poll_op();
            }
            let data = std::mem::take(&mut self.pending);
            let end = self.pending_start + data.len() as u64;
            let sync = self.mode == SyncMode::Fsync;
            self.stats.writes += 1;
            self.stats.bytes_written += data.len() as u64;
            self.in_flight = Some(InFlight::Write { end, sync });
            self.pending_start = end;
            return Some(DiskOp::Write {
                name: segment_name(base),
                offset: used,
                data,
                sync,
            });
        }
        if self.mode == SyncMode::Interval
            && self.sync_requested
            && self.synced_lsn < self.written_lsn
        {
            self.sync_requested = false;
            self.in_flight = Some(InFlight::Sync {
                end: self.written_lsn,
            });
            let base = *self.segments.back().unwrap_or(&0);
            return Some(DiskOp::Sync {
                name: segment_name(base),
            });
        }
        self.sync_requested = false;
        if let Some(s) = &mut self.snapshot {
            if let Some(data) = s.data.take() {
                // Every record the snapshot covers is written (pending is empty and
                // nothing is in flight), so the snapshot never gets ahead of the log.
                let lsn = s.lsn;
                self.queue_snapshot_steps(lsn);
                self.in_flight = Some(InFlight::Control { snapshot: true });
                return Some(DiskOp::Write {
                    name: snapshot_temp_name(lsn),
                    offset: 0,
                    data,
                    sync: true,
                });
            }
        }
        None
    }

    fn roll(&mut self) {
        let base = self.pending_start;
        let old = *self.segments.back().unwrap_or(&0);
        if self.mode == SyncMode::Interval {
            // The old segment's unsynced tail must not outlive its place in the sync order.
            self.ops.push_back(DiskOp::Sync {
                name: segment_name(old),
            });
        }
        let len = self.segment_bytes.max(self.pending.len() as u64);
        self.ops.push_back(DiskOp::Create {
            name: segment_name(base),
            len,
        });
        self.ops.push_back(DiskOp::SyncDir);
        if base != old {
            self.segments.push_back(base);
        } // else: nothing was ever written in it; the create starts it afresh
        self.seg_len = len;
    }

    fn queue_snapshot_steps(&mut self, lsn: u64) {
        self.ops.push_back(DiskOp::Rename {
            from: snapshot_temp_name(lsn),
            to: snapshot_name(lsn),
        });
        self.ops.push_back(DiskOp::SyncDir);
        // Segments wholly behind the snapshot: those whose successor starts at or before it.
        while self.segments.len() > 1 && self.segments[1] <= lsn {
            let base = self.segments.pop_front().unwrap_or(0);
            self.ops.push_back(DiskOp::Remove {
                name: segment_name(base),
            });
        }
        // A snapshot at the position of the one before it (nothing appended since)
        // replaced that file by the rename: removing the "old" name would remove it.
        if let Some(old) = self.current_snapshot.replace(lsn).filter(|&old| old != lsn) {
            self.ops.push_back(DiskOp::Remove {
                name: snapshot_name(old),
            });
        }
    }

    /// The result of the operation `poll_op` returned last.
    pub fn on_done(&mut self, result: Result<(), DiskError>) {
        let Some(op) = self.in_flight.take() else {
            debug_assert!(false, "completion without an operation");
            return;
        };
        match (op, result) {
            (InFlight::Write { end, sync }, Ok(())) => {
                self.written_lsn = end;
                if sync {
                    self.synced_lsn = end;
                    self.stats.syncs += 1;
                }
                self.report_durable();
            }
            (InFlight::Sync { end }, Ok(())) => {
                self.synced_lsn = end;
                self.stats.syncs += 1;
            }
            (InFlight::Control { snapshot }, Ok(())) => {
                if snapshot && self.ops.is_empty() {
                    self.snapshot = None;
                    self.stats.snapshots += 1;
                }
            }
            (InFlight::Write { .. }, Err(DiskError::SyncFailed(_)))
            | (InFlight::Sync { .. }, Err(_)) => self.stop(),
            (InFlight::Write { .. }, Err(_)) => {
                self.stats.failed_writes += 1;
                self.fail_unwritten();
            }
            (InFlight::Control { snapshot: true }, Err(_)) => {
                // The log is untouched: drop the snapshot's remaining steps. Whatever
                // they left (a temp file, two snapshots, segments behind the newer one)
                // is cleaned by the next recovery, which keeps the newest whole
                // snapshot and removes what lies behind it.
                self.stats.snapshots_failed += 1;
                self.ops.clear();
                self.snapshot = None;
            }
            (InFlight::Control { snapshot: false }, Err(_)) => {
                // A roll failed (no room for the next segment): nothing of the batch was
                // written. Forget the segment that was not made and fail the batch.
                self.ops.retain(|op| !is_roll_op(op));
                self.segments.pop_back();
                self.seg_len = 0;
                self.stats.failed_writes += 1;
                self.fail_unwritten();
            }
        }
    }

    fn report_durable(&mut self) {
        let d = self.durable_lsn();
        if d > self.durable_reported {
            self.durable_reported = d;
            self.events.push_back(WalEvent::Durable(d));
        }
    }

    /// Everything appended past the last completed write fails; the log goes on from there.
    fn fail_unwritten(&mut self) {
        let from = self.written_lsn;
        let to = self.next_lsn;
        self.stats.failed_records_bytes += to - from;
        self.pending.clear();
        self.pending_start = from;
        self.next_lsn = from;
        // The failed write may have left frames at the positions the next records
        // take; written over in place, one could read back as ours. A new segment
        // starting here leaves them behind, where recovery stops and moves on.
        self.seg_len = 0;
        if self.snapshot.as_ref().is_some_and(|s| s.lsn > from) {
            // It covers records that failed; it would put them back after a restart.
            self.snapshot = None;
            self.stats.snapshots_failed += 1;
        }
        if to > from {
            self.events.push_back(WalEvent::Failed { from, to });
        }
    }

    fn stop(&mut self) {
        self.stopped = true;
        let from = self.durable_lsn();
        let to = self.next_lsn;
        self.pending.clear();
        self.ops.clear();
        self.snapshot = None;
        if to > from {
            self.events.push_back(WalEvent::Failed { from, to });
        }
    }
}

fn is_roll_op(op: &DiskOp) -> bool {
    match op {
        DiskOp::Create { .. } => true,
        DiskOp::Sync { name } => name.starts_with("wal-"),
        _ => false,
    }
}
