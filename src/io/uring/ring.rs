//! One ring of a loop: building it, probing what the kernel supports, planning how
//! many rings and table slots a loop needs, and queueing submissions (with a backlog
//! for a full submission queue).

use std::collections::VecDeque;
use std::io;

use io_uring::{cqueue, opcode, squeue, IoUring, Probe};

use super::bufpool::BufPool;
use crate::io::{LoopOptions, SockId};

/// Most rings one loop may own (each is one process fd and one registered table).
pub const MAX_RINGS: usize = 16;

/// Table slots per ring never handed out through the ring's `RingRoom`: they absorb the
/// one accept kept armed on a full loop (closed at once) and are a margin against
/// accounting slips. Accepts and sockets migrating in reserve their slot first.
pub(super) const TABLE_HEADROOM: u32 = 64;

/// What `probe_support` found; logged at startup.
#[derive(Debug, Clone)]
pub struct UringFeatures {
    pub kernel: String,
    pub ext_arg: bool,
    pub nodrop: bool,
    pub fast_poll: bool,
    pub msg_ring: bool,
    pub send_zc: bool,
    pub recv_bundle: bool,
    pub pbuf_ring: bool,
    /// Rings are built with COOP_TASKRUN + TASKRUN_FLAG (see `build_ring`).
    pub coop_taskrun: bool,
}

impl std::fmt::Display for UringFeatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "kernel {}, ext_arg={} nodrop={} fast_poll={} msg_ring={} pbuf_ring={} coop_taskrun={} send_zc={} recv_bundle={}",
            self.kernel,
            self.ext_arg,
            self.nodrop,
            self.fast_poll,
            self.msg_ring,
            self.pbuf_ring,
            self.coop_taskrun,
            self.send_zc,
            self.recv_bundle
        )
    }
}

fn kernel_release() -> String {
    // SAFETY: uname fills a zeroed utsname; release is NUL-terminated by the kernel.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return "unknown".into();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty());
    let ma: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let mi: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (ma, mi) >= (major, minor)
}

/// A ring that never interrupts the loop: completions (a receive, a finished send)
/// are run as task work at the loop's next kernel entry instead of by an IPI to a
/// core busy in user space. Profiled under QoS 1 fan-in, those interrupts were ~24%
/// of the loop's core (VM exits) plus socket-lock contention. The loop enters the
/// kernel every turn and, when it spins, watches `IORING_SQ_TASKRUN`; a sleeping loop
/// is still woken. Kernels before 5.19 reject the flags: plain ring then.
pub(super) fn build_ring(sq_entries: u32) -> io::Result<IoUring> {
    match IoUring::builder()
        .setup_cqsize(sq_entries * 4)
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(sq_entries)
    {
        Ok(ring) => Ok(ring),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .setup_cqsize(sq_entries * 4)
            .build(sq_entries),
        Err(e) => Err(e),
    }
}

/// See `Ring::needs_enter`.
pub(super) fn needs_enter(uring: &mut IoUring) -> bool {
    let sq = uring.submission();
    !sq.is_empty() || sq.cq_overflow()
}

/// Sets up a small ring and checks every opcode and feature this backend relies on.
/// Fails when io_uring is unusable here (ENOSYS, EPERM from seccomp or
/// `kernel.io_uring_disabled`) or too old (multishot recv and `MSG_RING` fd passing
/// need 6.0).
pub fn probe_support() -> io::Result<UringFeatures> {
    let ring: IoUring = IoUring::new(8)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    let needed = [
        (opcode::Accept::CODE, "ACCEPT"),
        (opcode::Recv::CODE, "RECV"),
        (opcode::Send::CODE, "SEND"),
        (opcode::Close::CODE, "CLOSE"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
        (opcode::MsgRingData::CODE, "MSG_RING"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
    ];
    for (code, name) in needed {
        if !probe.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("io_uring lacks {name}"),
            ));
        }
    }
    let kernel = kernel_release();
    if !kernel_at_least(&kernel, 6, 0) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("kernel {kernel}: multishot recv and MSG_RING fd passing need 6.0"),
        ));
    }
    let params = ring.params().clone();
    if !params.is_feature_ext_arg() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring lacks EXT_ARG",
        ));
    }
    // A provided-buffer ring is a flag-level feature no probe reports: register one.
    let pool = BufPool::new(8, 64)?;
    // SAFETY: the pool's ring memory stays mapped until after it is unregistered below.
    let pbuf_ring = unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(pool.ring_addr(), 8, 0, 0)
    }
    .is_ok();
    if pbuf_ring {
        let _ = ring.submitter().unregister_buf_ring(0);
    }
    drop(ring);
    drop(pool);
    if !pbuf_ring {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring lacks provided-buffer rings",
        ));
    }
    Ok(UringFeatures {
        kernel,
        ext_arg: params.is_feature_ext_arg(),
        nodrop: params.is_feature_nodrop(),
        fast_poll: params.is_feature_fast_poll(),
        msg_ring: true,
        send_zc: probe.is_supported(opcode::SendZc::CODE),
        recv_bundle: params.is_feature_recvsend_bundle(),
        pbuf_ring,
        coop_taskrun: IoUring::<squeue::Entry, cqueue::Entry>::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(8)
            .is_ok(),
    })
}

/// Rings per loop and table slots per ring for `opts`: each table holds at most
/// `RLIMIT_NOFILE` slots (or `opts.table_slots_max`), `TABLE_HEADROOM` of them kept
/// free; as many rings as needed for `opts.max_connections`, at most `MAX_RINGS`.
pub fn plan_rings(opts: &LoopOptions) -> io::Result<(usize, u32)> {
    let mut limit = crate::io::nofile_limit().min(u64::from(u32::MAX)) as u32;
    if opts.table_slots_max > 0 {
        limit = limit.min(opts.table_slots_max);
    }
    if limit <= TABLE_HEADROOM {
        return Err(io::Error::other(format!(
            "file table limit {limit} too low (headroom {TABLE_HEADROOM})"
        )));
    }
    let per_ring_max = limit - TABLE_HEADROOM;
    let wanted = opts.max_connections.max(1) as u64;
    let ring_count = wanted
        .div_ceil(u64::from(per_ring_max))
        .clamp(1, MAX_RINGS as u64) as usize;
    let per_ring = wanted
        .div_ceil(ring_count as u64)
        .min(u64::from(per_ring_max)) as u32;
    Ok((ring_count, (per_ring + TABLE_HEADROOM).min(limit)))
}

/// Connections a loop planned with `plan_rings` holds.
pub fn planned_capacity(rings: usize, table_size: u32) -> usize {
    rings * table_size.saturating_sub(TABLE_HEADROOM) as usize
}

pub(super) struct Ring {
    pub(super) uring: IoUring,
    pub(super) table_size: u32,
    /// Table slots holding sockets of this ring.
    pub(super) live: u32,
    /// Accepts in flight on this ring (each may take a slot).
    pub(super) accepts_armed: u32,
    /// Sockets in this table whose reservation is in another ring's room (`borrow_room`).
    pub(super) borrowed: u32,
    /// Entries that did not fit into a full submission queue, in order.
    pub(super) backlog: std::collections::VecDeque<squeue::Entry>,
    /// Pushes that found the submission queue full (an SQ-full stall: the queue was
    /// handed to the kernel early, or the entry waited in `backlog`).
    pub(super) sq_full: u64,
    /// Sockets whose receive ended with ENOBUFS, to re-arm as buffers come back
    /// (`Sock::starved` marks the live entries; a released id is skipped).
    pub(super) starved: VecDeque<SockId>,
    /// One bit per table slot: set while a socket we know of holds the slot (from
    /// its accept or adoption to its close). A slot that is occupied and not known is
    /// a descriptor installed unannounced (`MSG_RING` EOVERFLOW), see `handoff.rs`.
    pub(super) known: Vec<u64>,
    /// Descriptors other loops reported installed into this table unannounced, not
    /// yet found and closed by the sweep.
    pub(super) lost: u32,
    /// Next slot the sweep probes (it runs while `lost > 0`).
    pub(super) sweep_next: u32,
    /// Sweep probes and orphan closes in flight.
    pub(super) sweep_inflight: u32,
    /// Whole passes over the table the sweep may still start (see `on_lost_note`).
    pub(super) sweep_passes: u8,
    /// Declared after `uring` so the ring is torn down before the buffers are unmapped.
    pub(super) bufs: BufPool,
}

impl Ring {
    /// Queues an operation. When the submission queue is full it is handed to the
    /// kernel at once; if that does not make room (CQ overflow backlog), the entry
    /// waits in `backlog` for the next turn, after completions were reaped.
    pub(super) fn push(&mut self, entry: squeue::Entry) {
        if self.backlog.is_empty() && self.try_push(&entry) {
            return;
        }
        self.sq_full += 1;
        if self.backlog.is_empty() {
            if let Err(e) = self.uring.submit() {
                if !transient(&e) {
                    tracing::warn!("io_uring submit (queue full) failed: {e}");
                }
            }
            if self.try_push(&entry) {
                return;
            }
        }
        self.backlog.push_back(entry);
    }

    /// Queues `first` (flagged `IO_LINK`) and `second` in the same submission, or
    /// neither: a link split between two submissions does not hold, and the second
    /// could run before the first finished. Hands the queue to the kernel first when
    /// it has no room for both; `false` when that did not make room.
    pub(super) fn push_linked(&mut self, first: squeue::Entry, second: squeue::Entry) -> bool {
        let room = |u: &mut IoUring| {
            let sq = u.submission();
            sq.capacity() - sq.len()
        };
        if room(&mut self.uring) < 2 {
            self.sq_full += 1;
            if let Err(e) = self.uring.submit() {
                if !transient(&e) {
                    tracing::warn!("io_uring submit (queue full) failed: {e}");
                }
            }
        }
        // SAFETY: as `try_push`: the loop owns what the entries point to until their
        // completions.
        unsafe { self.uring.submission().push_multiple(&[first, second]) }.is_ok()
    }

    fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: every pointer an entry carries (send data, sockaddr buffers) is owned
        // by the loop and outlives the operation; see the builders in `UringLoop`.
        unsafe { self.uring.submission().push(entry) }.is_ok()
    }

    /// Whether the kernel must be entered for this ring: entries to submit, or
    /// completions held in the kernel's overflow list. Once a completion queue has
    /// overflowed, every later completion of the ring joins that list too, and the
    /// kernel moves them into the queue only in an `io_uring_enter` with GETEVENTS
    /// (`submit` adds it when it sees `IORING_SQ_CQ_OVERFLOW`). Rings 1.. are otherwise
    /// entered only to submit, so a ring that overflowed while its loop was short of
    /// CPU stalled every socket in its table until something was next queued there:
    /// in a 100k storm, 4,629 hand-over descriptors reached their loop 60 s late, at
    /// teardown, and their clients were lost.
    pub(super) fn needs_enter(&mut self) -> bool {
        needs_enter(&mut self.uring)
    }

    /// Moves backlogged entries into the submission queue, submitting when full.
    pub(super) fn drain_backlog(&mut self) {
        while let Some(entry) = self.backlog.pop_front() {
            if self.try_push(&entry) {
                continue;
            }
            let _ = self.uring.submit();
            if !self.try_push(&entry) {
                self.backlog.push_front(entry);
                return;
            }
        }
    }

    /// Records whether a socket we know of holds `slot`.
    pub(super) fn set_known(&mut self, slot: u32, held: bool) {
        let (word, bit) = ((slot / 64) as usize, slot % 64);
        if let Some(w) = self.known.get_mut(word) {
            if held {
                *w |= 1 << bit;
            } else {
                *w &= !(1 << bit);
            }
        }
    }

    pub(super) fn is_known(&self, slot: u32) -> bool {
        let (word, bit) = ((slot / 64) as usize, slot % 64);
        self.known.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    /// Whether the table has a slot left, counting what is reserved in no `RingRoom`.
    pub(super) fn physically_free(&self) -> bool {
        self.table_size > self.live + self.accepts_armed
    }
}

/// Enter errors that only mean "try again next turn": a signal, CQ overflow backlog
/// (EBUSY), or a momentary kernel allocation failure (EAGAIN). What was not submitted
/// stays in the submission queue.
pub(super) fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
    )
}
