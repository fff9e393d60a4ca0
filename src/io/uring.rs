//! io_uring backend on the raw `io-uring` crate.
//!
//! One loop owns `k` rings. Ring 0 blocks in `io_uring_enter`; rings 1..k are watched
//! by a multishot `POLL_ADD` on their fds submitted into ring 0, because each ring's
//! registered file table holds at most `RLIMIT_NOFILE` slots (DESIGN.md: 2 loops × 3
//! rings held 100k connections with a 20k fd limit).
//!
//! Per ring: a sparse registered file table; accepted sockets go straight into it as
//! direct descriptors (`IORING_FILE_INDEX_ALLOC`), so a connection costs no process fd.
//! Receives are multishot with a provided-buffer ring, so an idle connection parks no
//! buffer. Sends: one `SEND` in flight per socket, resubmitted on a short write.
//!
//! Accepts, two modes (`LoopOptions::accept_peer_addr`):
//! - single-shot (the per-IP limit needs the address): a few armed per ring and
//!   listener, each with its own sockaddr buffer. Re-arming a few accepts per turn costs
//!   nothing next to the TCP handshake.
//! - multishot (the default, no per-IP limit): one multishot accept per listener, armed
//!   on the first ring with room while that ring has more than a margin left
//!   (`multi_accept_margin`); a ring's last slots are filled by single-shot accepts, so
//!   a loop near full behaves exactly as in single-shot mode. A multishot accept
//!   reports no peer address (`0.0.0.0:0`): the kernel has no per-completion sockaddr
//!   buffer for it, and a direct descriptor cannot be asked `getpeername`.
//!
//! Either way an armed accept holds one reservation in its ring's `RingRoom` for the
//! slot its next connection takes. A multishot accept takes a new one per connection
//! and is cancelled once its ring is down to the margin (or out of room); after its
//! last completion it is armed again on the first ring with room, so rings still fill
//! in order. The kernel accepts the whole backlog at once, so the tail of a burst can
//! land past its ring's room before the cancel does: kept in the ring's headroom,
//! charged to another ring's room (`borrow_room`), or, with none left anywhere, closed
//! and counted like the over-capacity accept's.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use io_uring::types::{
    BufRingEntry, CancelBuilder, DestinationSlot, Fd, Fixed, SubmitArgs, Timespec,
};
use io_uring::{cqueue, opcode, squeue, IoUring, Probe};
use slab::Slab;

use super::{
    sockaddr_to_std, BufRef, Completion, EventLoop, IoStats, LoopOptions, Remote, RemoteKind,
    RingRoom, SockId, Transfer,
};

/// Most rings one loop may own (each is one process fd and one registered table).
pub const MAX_RINGS: usize = 16;
/// Rings after the first get this fraction of `LoopOptions::sq_entries`.
const EXTRA_RING_QUEUE_DIVISOR: u32 = 4;
/// Rings after the first get this fraction of `recv_bufs_per_ring` provided buffers.
const EXTRA_RING_BUF_DIVISOR: usize = 4;
/// Most socket entries reserved up front per loop.
const SOCKS_PRESIZE_MAX: usize = 1 << 20;
/// Idle loops trim their buffer pools at most this often (see `BufPool::trim`).
const TRIM_INTERVAL: Duration = Duration::from_secs(1);
/// Capacity the hand-off tables may keep while empty (see `shrink_handoff_tables`).
const HANDOFF_TABLE_KEPT: usize = 64;
/// Single-shot accepts kept armed per ring and listener.
const ACCEPTS_PER_RING: usize = 4;
/// Table slots per ring never handed out through the ring's `RingRoom`: they absorb the
/// one accept kept armed on a full loop (closed at once) and are a margin against
/// accounting slips. Accepts and sockets migrating in reserve their slot first.
const TABLE_HEADROOM: u32 = 64;
/// At most this many slots of a ring are filled by single-shot accepts in multishot
/// mode (see `UringLoop::multi_accept_margin`): a whole listen backlog, which bounds
/// what one multishot takes before its completions are read, and some to spare.
const MULTI_ACCEPT_MARGIN: i64 = super::LISTEN_BACKLOG as i64 + 256;

// user_data layout: kind in the top byte, payload below.
const KIND_SHIFT: u32 = 56;
const PAYLOAD_MASK: u64 = (1 << KIND_SHIFT) - 1;
const K_ACCEPT: u64 = 1;
const K_RECV: u64 = 2;
const K_SEND: u64 = 3;
const K_CLOSE: u64 = 4;
const K_CANCEL: u64 = 5;
const K_SEND_FD: u64 = 6;
const K_ADOPT: u64 = 7;
const K_DOORBELL: u64 = 8;
const K_RING_POLL: u64 = 9;
const K_EVENTFD: u64 = 10;
const K_ACCEPT_MULTI: u64 = 11;

fn ud(kind: u64, payload: u64) -> u64 {
    (kind << KIND_SHIFT) | (payload & PAYLOAD_MASK)
}

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
fn build_ring(sq_entries: u32) -> io::Result<IoUring> {
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
    let mut limit = super::nofile_limit().min(u64::from(u32::MAX)) as u32;
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

/// An anonymous private mapping, unmapped on drop.
struct Mmap {
    ptr: *mut u8,
    len: usize,
}

impl Mmap {
    fn new(len: usize) -> io::Result<Mmap> {
        // SAFETY: anonymous private mapping with no address hint; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmap {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap and nothing refers to it any more
        // (owners leak the mapping instead when the kernel may still write to it).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// A provided-buffer ring: `count` buffers of `size` bytes, handed to the kernel through
/// a shared ring of `BufRingEntry`; the kernel picks one per multishot receive.
///
/// The kernel takes entries in ring order, so with every free buffer posted it cycles
/// through the whole pool and every page of it becomes resident (2 MiB for 512 × 4 KiB,
/// ~200 B per connection at 10k idle connections). Instead only `window` entries are
/// posted; the other free buffers wait in `spare`, most recently returned on top, and
/// refill the ring as the kernel takes entries. So the same few warm buffers circulate
/// and the pool's resident size follows the receive concurrency, not the pool size.
/// Running out of posted entries is `ENOBUFS` (the receive is re-armed after the turn,
/// see `rearm_starved`), and widens the window, up to the whole pool. A burst (a
/// connect storm) still warms the whole pool, so `trim`, run when the loop is idle,
/// narrows the window again and releases the pages of buffers that sat in `spare`
/// for a whole trim interval.
struct BufPool {
    ring: Mmap,
    data: Mmap,
    count: u16,
    size: usize,
    /// The system page size: `trim` releases whole pages only.
    page: usize,
    /// Our copy of the tail; published to the kernel with a release store.
    tail: u16,
    /// Free buffers not posted to the kernel; the last one was returned most recently.
    spare: Vec<u16>,
    /// Entries posted and not yet taken by the kernel (`taken`).
    posted: u16,
    /// Entries kept posted while `spare` has buffers.
    window: u16,
    initial_window: u16,
    /// Smallest `spare.len()` since the last `trim`: `spare[..spare_low]` were not
    /// used during the whole interval.
    spare_low: usize,
    /// `spare[..trimmed]` have had their pages released and were not used since.
    trimmed: usize,
    /// A receive starved since the last `trim`.
    starved: bool,
}

/// The system page size (4 KiB if it cannot be read).
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page)
        .ok()
        .filter(|p| *p > 0)
        .unwrap_or(4096)
}

/// A pool posts this share of its buffers at first (and at least `WINDOW_MIN`).
const WINDOW_DIVISOR: usize = 4;
const WINDOW_MIN: usize = 64;

impl BufPool {
    fn new(count: usize, size: usize) -> io::Result<BufPool> {
        assert!(
            count.is_power_of_two() && count <= 32768,
            "buffer count must be a power of two <= 32768"
        );
        let ring = Mmap::new(count * std::mem::size_of::<BufRingEntry>())?;
        let data = Mmap::new(count * size)?;
        let window = (count / WINDOW_DIVISOR).max(WINDOW_MIN).min(count);
        let mut pool = BufPool {
            ring,
            data,
            count: count as u16,
            size,
            page: page_size(),
            tail: 0,
            // Lowest ids on top: the first buffers used are the first pages.
            spare: (0..count as u16).rev().collect(),
            posted: 0,
            window: window as u16,
            initial_window: window as u16,
            spare_low: count,
            trimmed: 0,
            starved: false,
        };
        pool.top_up();
        Ok(pool)
    }

    /// Posts spare buffers until `window` entries are available to the kernel.
    fn top_up(&mut self) {
        let mut any = false;
        while self.posted < self.window {
            let Some(bid) = self.spare.pop() else { break };
            self.write_entry(bid);
            self.posted += 1;
            any = true;
        }
        if any {
            self.spare_low = self.spare_low.min(self.spare.len());
            self.trimmed = self.trimmed.min(self.spare.len());
            self.publish();
        }
    }

    /// The kernel took a posted entry (a completion carried buffer `bid`).
    fn taken(&mut self) {
        self.posted = self.posted.saturating_sub(1);
        self.top_up();
    }

    /// A receive found no posted buffer: post more from now on. Each starved receive
    /// is one buffer short (a multishot receive ends at its first `ENOBUFS`), so the
    /// window grows by about the shortfall of a burst, not by doubling per starved
    /// socket.
    fn widen(&mut self) {
        self.window = self.window.saturating_add(2).min(self.count);
        self.starved = true;
        self.top_up();
    }

    /// Ends a trim interval: halves a widened window unless a receive starved during
    /// the interval, and releases the pages of the spare buffers unused throughout
    /// it. Only whole pages that hold nothing but such buffers are released: a buffer
    /// size that is not a multiple of the page size (or a page larger than the
    /// buffer) makes neighbours share a page, and one of them may be posted (the
    /// kernel may be writing a receive into it) or lent. Returns how many newly cold
    /// buffers lost all their pages.
    fn trim(&mut self) -> usize {
        if !self.starved {
            self.window = (self.window / 2).max(self.initial_window);
        }
        self.starved = false;
        let cold = self.spare_low.min(self.spare.len());
        let first_new = self.trimmed.min(cold);
        let mut released = 0;
        if first_new < cold {
            // Every cold buffer, marked newly cold or not: a page shared by a buffer
            // that went cold earlier and one that went cold now is released now.
            let mut bids: Vec<(u16, bool)> = self.spare[..cold]
                .iter()
                .enumerate()
                .map(|(i, &bid)| (bid, i >= first_new))
                .collect();
            bids.sort_unstable();
            // Adjacent buffers are one range: one call each.
            let mut i = 0;
            while i < bids.len() {
                let mut j = i + 1;
                while j < bids.len() && bids[j].0 == bids[j - 1].0 + 1 {
                    j += 1;
                }
                if bids[i..j].iter().any(|&(_, new)| new) {
                    released += self.release(&bids[i..j]);
                }
                i = j;
            }
        }
        self.trimmed = cold;
        self.spare_low = self.spare.len();
        released
    }

    /// Releases the pages lying wholly inside `run`, buffers with consecutive ids
    /// that all sat in `spare[..spare_low]` for the interval. Returns how many of the
    /// newly cold ones lost all their pages.
    fn release(&self, run: &[(u16, bool)]) -> usize {
        let (Some(&(first, _)), Some(&(last, _))) = (run.first(), run.last()) else {
            return 0;
        };
        let start = usize::from(first) * self.size;
        let end = (usize::from(last) + 1) * self.size;
        // Inward to page boundaries: `madvise` acts on whole pages.
        let lo = start.div_ceil(self.page) * self.page;
        let hi = end / self.page * self.page;
        if lo >= hi {
            return 0;
        }
        // SAFETY: `data` is page-aligned (mmap) and `[lo, hi)` is a whole number of
        // pages inside `[start, end)`, which lies inside the mapping (bid < count).
        // Every byte of those pages belongs to a buffer of `run`; they are in
        // `spare`: neither posted to the kernel nor lent to the caller, so nothing
        // reads or writes them until they are posted again, and a private anonymous
        // page released here reads back as zeros.
        unsafe {
            libc::madvise(self.data.ptr.add(lo).cast(), hi - lo, libc::MADV_DONTNEED);
        }
        run.iter()
            .filter(|&&(bid, new)| {
                let s = usize::from(bid) * self.size;
                new && s >= lo && s + self.size <= hi
            })
            .count()
    }

    fn ring_addr(&self) -> u64 {
        self.ring.ptr as u64
    }

    fn entries(&self) -> *mut BufRingEntry {
        self.ring.ptr.cast()
    }

    fn write_entry(&mut self, bid: u16) {
        let mask = self.count.wrapping_sub(1);
        let idx = (self.tail & mask) as usize;
        // SAFETY: idx < count, inside the ring mapping; the kernel only reads entries
        // between its head and our published tail, and this one is beyond the tail.
        unsafe {
            let e = &mut *self.entries().add(idx);
            e.set_addr(self.data.ptr.add(bid as usize * self.size) as u64);
            e.set_len(self.size as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives in entry 0 of the page-aligned ring mapping; the
        // kernel reads it concurrently, hence the atomic release store, which makes the
        // entries written before it visible.
        unsafe {
            let tail = BufRingEntry::tail(self.entries()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn give_back(&mut self, bid: u16) {
        self.spare.push(bid);
        self.top_up();
    }

    fn slice(&self, bid: u16, len: usize) -> &[u8] {
        let len = len.min(self.size);
        let bid = (bid as usize).min(self.count as usize - 1);
        // SAFETY: bid < count and len <= size, so the range is inside the data mapping;
        // the kernel wrote these bytes before posting the completion and does not touch
        // this buffer again until it is given back.
        unsafe { std::slice::from_raw_parts(self.data.ptr.add(bid * self.size), len) }
    }
}

struct Ring {
    uring: IoUring,
    table_size: u32,
    /// Table slots holding sockets of this ring.
    live: u32,
    /// Accepts in flight on this ring (each may take a slot).
    accepts_armed: u32,
    /// Sockets in this table whose reservation is in another ring's room (`borrow_room`).
    borrowed: u32,
    /// Entries that did not fit into a full submission queue, in order.
    backlog: std::collections::VecDeque<squeue::Entry>,
    /// Sockets whose receive ended with ENOBUFS, to re-arm as buffers come back
    /// (`Sock::starved` marks the live entries; a released id is skipped).
    starved: VecDeque<SockId>,
    /// Declared after `uring` so the ring is torn down before the buffers are unmapped.
    bufs: BufPool,
}

impl Ring {
    /// Queues an operation. When the submission queue is full it is handed to the
    /// kernel at once; if that does not make room (CQ overflow backlog), the entry
    /// waits in `backlog` for the next turn, after completions were reaped.
    fn push(&mut self, entry: squeue::Entry) {
        if self.backlog.is_empty() && self.try_push(&entry) {
            return;
        }
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

    fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: every pointer an entry carries (send data, sockaddr buffers) is owned
        // by the loop and outlives the operation; see the builders in `UringLoop`.
        unsafe { self.uring.submission().push(entry) }.is_ok()
    }

    /// Moves backlogged entries into the submission queue, submitting when full.
    fn drain_backlog(&mut self) {
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

    /// Whether the table has a slot left, counting what is reserved in no `RingRoom`.
    fn physically_free(&self) -> bool {
        self.table_size > self.live + self.accepts_armed
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SockState {
    Open,
    /// `close` called: waiting for receive/send to end before releasing.
    Closing,
    /// `migrate` called: waiting for the receive to end, then MSG_RING the slot.
    Migrating {
        to: usize,
    },
    /// The slot was sent into ring `ring` of loop `to`, where a slot was reserved;
    /// waiting for the MSG_RING result.
    SendingFd {
        ticket: u64,
        to: u16,
        ring: u8,
    },
}

struct Sock {
    ring: u8,
    /// The ring whose `RingRoom` holds this socket's reservation: `ring`, or another
    /// one it was borrowed from (see `borrow_room`).
    room: u8,
    slot: u32,
    state: SockState,
    recv_armed: bool,
    /// The rest of the one send in flight.
    tx: Option<Bytes>,
    close_inflight: bool,
    /// The slot was closed (or never needs closing): release once nothing is in flight.
    slot_closed: bool,
    /// The worker knows this socket (false for connections dropped at accept).
    reported: bool,
    /// Waiting in its ring's `starved` list for its receive to be re-armed.
    starved: bool,
    /// Its descriptor also sits, unannounced, in another loop's table (`on_send_fd`,
    /// EOVERFLOW): the close shuts the connection down first, since closing our slot
    /// alone would leave it open through the other reference.
    shutdown_on_close: bool,
}

struct AcceptSlot {
    ring: u8,
    armed: bool,
    /// The armed accept reserved a slot in its ring's `RingRoom` (false: the one
    /// over-capacity accept of a full loop).
    counted: bool,
    /// Boxed so the kernel's pointer stays valid while the slot vector grows.
    addr: Box<(libc::sockaddr_storage, libc::socklen_t)>,
}

/// The multishot accept of one listener (multishot mode).
#[derive(Default)]
struct MultiAccept {
    ring: u8,
    armed: bool,
    /// Holds a reservation in its ring's `RingRoom` for the next connection (false: its
    /// ring ran out of room, or accepting stopped, and a cancel is on its way).
    counted: bool,
    cancel_sent: bool,
    /// Bumped at every arming, so a cancel names only the accept it was meant for.
    generation: u16,
}

struct Listener {
    socket: Option<TcpListener>,
    slots: Vec<AcceptSlot>,
    multi: MultiAccept,
}

impl Listener {
    fn any_armed(&self) -> bool {
        self.multi.armed || self.slots.iter().any(|s| s.armed)
    }
}

fn multi_payload(li: usize, generation: u16) -> u64 {
    (u64::from(generation) << 16) | li as u64
}

pub struct UringLoop {
    id: usize,
    rings: Vec<Ring>,
    socks: Slab<Sock>,
    listeners: Vec<Listener>,
    /// One multishot accept per listener rather than single-shot ones (see module doc).
    multishot_accept: bool,
    accepting: bool,
    peers: Vec<Arc<Remote>>,
    remote: Arc<Remote>,
    eventfd: RawFd,
    /// Fd-passing tickets: arrived before the worker claimed them, or claimed first.
    arrived: HashMap<u64, SockId>,
    /// Arrivals in order with the time their hand-off is due: one never claimed by then
    /// is closed (the sender could not deliver the hand-off), so it cannot leak.
    arrived_due: VecDeque<(Instant, u64)>,
    adopt_pair_timeout: Duration,
    claimed: std::collections::HashSet<u64>,
    next_ticket: u64,
    stats: IoStats,
    cqes: Vec<(u8, u64, i32, u32)>,
    pending: Vec<Completion>,
    /// When the buffer pools were last trimmed (`BufPool::trim`).
    last_trim: Instant,
    /// Doorbells whose `MSG_RING` failed transiently: (target loop, attempts so far),
    /// sent again at the start of the next turn (see `on_doorbell_failed`).
    doorbell_retry: Vec<(usize, u64)>,
}

/// Attempts at one doorbell before giving up on it (each is one turn apart).
const DOORBELL_ATTEMPTS_MAX: u64 = 64;

/// Whether a failed doorbell `MSG_RING` is worth sending again: the target's CQE could
/// not be posted now (EOVERFLOW: no memory for the CQ overflow list; ENOMEM; EAGAIN,
/// EBUSY, EINTR), as opposed to a target ring that is gone or not a ring (EBADFD,
/// EBADF, EINVAL, ...), where a retry cannot help.
fn doorbell_retryable(errno: i32) -> bool {
    matches!(
        errno,
        libc::EOVERFLOW | libc::ENOMEM | libc::EAGAIN | libc::EBUSY | libc::EINTR
    )
}

/// Enter errors that only mean "try again next turn": a signal, CQ overflow backlog
/// (EBUSY), or a momentary kernel allocation failure (EAGAIN). What was not submitted
/// stays in the submission queue.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
    )
}

impl UringLoop {
    /// Builds the rings of loop `id`. Must run on the thread that drives the loop.
    pub fn new(id: usize, opts: &LoopOptions) -> io::Result<UringLoop> {
        let (ring_count, table_size) = plan_rings(opts)?;
        let bufs_per_ring = opts.recv_bufs_per_ring.clamp(1, 32768).next_power_of_two();

        let mut rings = Vec::with_capacity(ring_count);
        for r in 0..ring_count {
            // A ring's queues are kernel pages mapped into the process (1024 SQEs and
            // 4096 CQEs: ~130 KiB), resident from setup whether or not the ring is
            // used. Rings 1.. exist for connection count, not throughput (a default
            // start makes 16 per loop), so they get a quarter; a fuller burst waits in
            // `backlog` (SQ) or the kernel's overflow list (CQ), nothing is lost.
            let sq_entries = if r == 0 {
                opts.sq_entries
            } else {
                (opts.sq_entries / EXTRA_RING_QUEUE_DIVISOR).max(4.min(opts.sq_entries))
            };
            let uring = build_ring(sq_entries)?;
            uring.submitter().register_files_sparse(table_size)?;
            // Rings 1.. only fill once ring 0 holds a full table of (mostly idle, in the
            // IoT case) connections; the kernel cycles through a pool, so every buffer
            // of it ends up resident (2 MiB for 512 × 4 KiB). A smaller pool there keeps
            // 100k connections from costing ~100 B each in buffers; a burst that
            // outruns it is `recv_nobufs`, re-armed after this turn's buffers return.
            let count = if r == 0 {
                bufs_per_ring
            } else {
                (bufs_per_ring / EXTRA_RING_BUF_DIVISOR).max(16.min(bufs_per_ring))
            };
            let bufs = BufPool::new(count, opts.recv_buf_size_bytes)?;
            // SAFETY: the pool's mappings live in the same `Ring` as the io_uring and are
            // dropped after it (field order), or leaked when operations may remain.
            unsafe {
                uring.submitter().register_buf_ring_with_flags(
                    bufs.ring_addr(),
                    bufs.count,
                    0,
                    0,
                )?;
            }
            rings.push(Ring {
                uring,
                table_size,
                live: 0,
                accepts_armed: 0,
                borrowed: 0,
                backlog: Default::default(),
                starved: VecDeque::new(),
                bufs,
            });
        }
        // SAFETY: eventfd with valid flags; checked for -1.
        let eventfd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if eventfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let remote = Arc::new(Remote {
            kind: RemoteKind::Uring {
                ring_fds: rings.iter().map(|r| r.uring.as_raw_fd()).collect(),
                room: rings
                    .iter()
                    .map(|r| RingRoom::new(r.table_size.saturating_sub(TABLE_HEADROOM)))
                    .collect(),
                eventfd,
            },
        });
        let mut lp = UringLoop {
            id,
            rings,
            // Sized up front (address space only until used): growing by doubling would
            // copy, and leave the old block with the allocator, at every power of two.
            socks: Slab::with_capacity(
                planned_capacity(ring_count, table_size).min(SOCKS_PRESIZE_MAX),
            ),
            listeners: Vec::new(),
            multishot_accept: !opts.accept_peer_addr,
            accepting: true,
            peers: Vec::new(),
            remote,
            eventfd,
            arrived: HashMap::new(),
            arrived_due: VecDeque::new(),
            adopt_pair_timeout: Duration::from_millis(opts.adopt_pair_timeout_ms),
            claimed: Default::default(),
            next_ticket: 0,
            stats: IoStats::default(),
            cqes: Vec::with_capacity(1024),
            pending: Vec::new(),
            last_trim: Instant::now(),
            doorbell_retry: Vec::new(),
        };
        for r in 1..lp.rings.len() {
            lp.arm_ring_poll(r);
        }
        lp.arm_eventfd();
        tracing::debug!(
            loop_id = id,
            rings = ring_count,
            table_size,
            bufs_per_ring,
            buf_size = opts.recv_buf_size_bytes,
            accept = if opts.accept_peer_addr {
                "single-shot"
            } else {
                "multishot"
            },
            "io_uring loop ready"
        );
        Ok(lp)
    }

    pub fn ring_count(&self) -> usize {
        self.rings.len()
    }

    pub fn table_size(&self) -> u32 {
        self.rings[0].table_size
    }

    /// Whether accepts are multishot (see the module doc).
    pub fn multishot_accept(&self) -> bool {
        self.multishot_accept
    }

    /// Sockets in each ring's table.
    pub fn ring_live(&self) -> Vec<u32> {
        self.rings.iter().map(|r| r.live).collect()
    }

    /// The ring whose table holds `sock`.
    pub fn sock_ring(&self, sock: SockId) -> Option<usize> {
        self.socks.get(sock as usize).map(|s| usize::from(s.ring))
    }

    /// Free-slot counter of ring `r`, shared with the loops that send descriptors.
    fn room(&self, r: usize) -> &RingRoom {
        match &self.remote.kind {
            RemoteKind::Uring { room, .. } => &room[r],
            RemoteKind::Epoll { .. } => unreachable!("an io_uring loop has an io_uring remote"),
        }
    }

    fn arm_ring_poll(&mut self, r: usize) {
        let fd = self.rings[r].uring.as_raw_fd();
        let e = opcode::PollAdd::new(Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(ud(K_RING_POLL, r as u64));
        self.rings[0].push(e);
    }

    fn arm_eventfd(&mut self) {
        let e = opcode::PollAdd::new(Fd(self.eventfd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(ud(K_EVENTFD, 0));
        self.rings[0].push(e);
    }

    fn drain_eventfd(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd.
        unsafe {
            libc::read(self.eventfd, (&mut v as *mut u64).cast(), 8);
        }
    }

    fn arm_recv(&mut self, sock: SockId) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        if s.recv_armed || s.state != SockState::Open {
            return;
        }
        s.recv_armed = true;
        let (ring, slot) = (s.ring as usize, s.slot);
        let e = opcode::RecvMulti::new(Fixed(slot), 0)
            .build()
            .user_data(ud(K_RECV, sock as u64));
        self.rings[ring].push(e);
    }

    fn submit_send(&mut self, sock: SockId) {
        let Some(s) = self.socks.get(sock as usize) else {
            return;
        };
        let Some(tx) = &s.tx else { return };
        let len = tx.len().min(u32::MAX as usize) as u32;
        let e = opcode::Send::new(Fixed(s.slot), tx.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud(K_SEND, sock as u64));
        let ring = s.ring as usize;
        self.rings[ring].push(e);
    }

    fn cancel_recv(&mut self, sock: SockId) {
        let Some(s) = self.socks.get(sock as usize) else {
            return;
        };
        if !s.recv_armed {
            return;
        }
        let e = opcode::AsyncCancel::new(ud(K_RECV, sock as u64))
            .build()
            .user_data(ud(K_CANCEL, sock as u64));
        let ring = s.ring as usize;
        self.rings[ring].push(e);
    }

    fn close_slot(&mut self, sock: SockId) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        if s.close_inflight || s.slot_closed {
            return;
        }
        s.close_inflight = true;
        let shutdown_first = std::mem::take(&mut s.shutdown_on_close);
        let (ring, slot) = (s.ring as usize, s.slot);
        // Cancel whatever is still armed on the slot (receive, a stuck send), then
        // close it; hard-linked so the close runs even when nothing was there to cancel.
        let cancel = opcode::AsyncCancel2::new(CancelBuilder::fd(Fixed(slot)).all())
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(ud(K_CANCEL, sock as u64));
        let close = opcode::Close::new(Fixed(slot))
            .build()
            .user_data(ud(K_CLOSE, sock as u64));
        let shutdown = shutdown_first.then(|| {
            opcode::Shutdown::new(Fixed(slot), libc::SHUT_RDWR)
                .build()
                .flags(squeue::Flags::IO_HARDLINK)
                .user_data(ud(K_CANCEL, sock as u64))
        });
        let r = &mut self.rings[ring];
        // Both should land in the same submission for the link to hold (if they are
        // split, the close still runs, after the cancel).
        let room = {
            let sq = r.uring.submission();
            sq.capacity() - sq.len()
        };
        if room < 3 && r.backlog.is_empty() {
            let _ = r.uring.submit();
        }
        if let Some(shutdown) = shutdown {
            r.push(shutdown);
        }
        r.push(cancel);
        r.push(close);
    }

    /// Releases the socket once nothing remains in flight.
    fn maybe_release(&mut self, sock: SockId) {
        let Some(s) = self.socks.get(sock as usize) else {
            return;
        };
        if s.slot_closed && !s.recv_armed && s.tx.is_none() && !s.close_inflight {
            let (ring, room, reported) = (s.ring as usize, s.room as usize, s.reported);
            self.socks.remove(sock as usize);
            self.rings[ring].live = self.rings[ring].live.saturating_sub(1);
            if room != ring {
                self.rings[ring].borrowed = self.rings[ring].borrowed.saturating_sub(1);
            }
            // Every socket in the table holds one reservation (its accept's or its
            // sender's, in `room`); the slot is free again.
            self.room(room).give_back();
            if reported {
                self.pending.push(Completion::Released { sock });
            }
        }
    }

    /// Continues a migration once the receive has stopped and no send is in flight.
    fn maybe_send_fd(&mut self, sock: SockId) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        let SockState::Migrating { to } = s.state else {
            return;
        };
        if s.recv_armed || s.tx.is_some() {
            return;
        }
        // Reserve the target slot before sending: a MSG_RING into a full table fails
        // (ENFILE) after the socket already left our receive path.
        let target = match self.peers.get(to) {
            None => Err(libc::EINVAL),
            Some(p) => p.reserve_adopt_slot().ok_or(libc::ENFILE),
        };
        let (ring_fd, target_ring) = match target {
            Ok(t) => t,
            Err(errno) => {
                if errno == libc::ENFILE {
                    self.stats.migrate_refused_full += 1;
                } else {
                    self.stats.migrate_failed += 1;
                }
                // The socket never left: it stays open (not receiving) so the
                // worker can answer the client before closing it.
                s.state = SockState::Open;
                self.pending.push(Completion::Migrated {
                    sock,
                    result: Err(errno),
                });
                return;
            }
        };
        let ticket = ((self.id as u64) << 40) | (self.next_ticket & ((1 << 40) - 1));
        self.next_ticket += 1;
        s.state = SockState::SendingFd {
            ticket,
            to: to as u16,
            ring: target_ring as u8,
        };
        let (ring, slot) = (s.ring as usize, s.slot);
        // The ticket rides in the target's CQE user_data; the worker sends it along
        // with the handoff so the target can pair the two.
        let e = opcode::MsgRingSendFd::new(
            Fd(ring_fd),
            Fixed(slot),
            DestinationSlot::auto_target(),
            ud(K_ADOPT, ticket),
        )
        .build()
        .user_data(ud(K_SEND_FD, sock as u64));
        self.rings[ring].push(e);
    }

    fn arm_accepts(&mut self) {
        if !self.accepting {
            return;
        }
        // Rings fill in order (accepts go to the first ring with room only), so the
        // buffer pools of later rings stay untouched until they are needed. Each armed
        // accept holds a reservation in its ring's `RingRoom`, shared with the loops
        // that send us descriptors, so the two can never overrun a table together.
        let room_ring = (0..self.rings.len()).find(|&r| self.room(r).free() > 0);
        // Multishot only while that ring has more than the margin left: its last slots
        // are filled by single-shot accepts (see `multi_accept_margin`).
        let multi_ring = room_ring
            .filter(|&r| self.multishot_accept && self.room(r).free() > self.multi_accept_margin());
        for li in 0..self.listeners.len() {
            let Some(fd) = self.listeners[li].socket.as_ref().map(|l| l.as_raw_fd()) else {
                continue;
            };
            let m = &self.listeners[li].multi;
            if m.armed {
                // On another ring than the one to fill now (an earlier one has room
                // again, or its own is down to the margin): cancelled there, armed
                // again after its last completion.
                if m.counted && !m.cancel_sent && multi_ring != Some(m.ring as usize) {
                    self.cancel_accept_multi(li);
                }
            } else if let Some(r) = multi_ring {
                if self.room(r).try_take() {
                    self.arm_accept_multi(li, r, fd);
                }
            }
            for si in 0..self.listeners[li].slots.len() {
                let slot = &self.listeners[li].slots[si];
                let ring = slot.ring as usize;
                if slot.armed && !slot.counted {
                    // The over-capacity accept becomes a normal one once its ring has
                    // room again (else it would drop the next connection while a
                    // counted accept armed beside it holds the room).
                    if self.room(ring).try_take() {
                        self.listeners[li].slots[si].counted = true;
                    }
                    continue;
                }
                if multi_ring.is_some()
                    || slot.armed
                    || room_ring != Some(ring)
                    || !self.room(ring).try_take()
                {
                    continue;
                }
                self.arm_accept(li, si, fd, true);
            }
            // Nothing armed (every table is full, or other loops took the room first):
            // keep one accept armed anyway in the headroom. What it takes is kept if
            // room came back meanwhile, else closed at once and counted, rather than
            // left to time out in the backlog.
            if !self.listeners[li].any_armed() {
                let si = self.listeners[li]
                    .slots
                    .iter()
                    .position(|s| self.rings[s.ring as usize].physically_free());
                if let Some(si) = si {
                    self.arm_accept(li, si, fd, false);
                }
            }
        }
    }

    fn arm_accept(&mut self, li: usize, si: usize, fd: RawFd, counted: bool) {
        let slot = &mut self.listeners[li].slots[si];
        let ring = slot.ring as usize;
        slot.armed = true;
        slot.counted = counted;
        slot.addr.1 = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let addr_ptr = (&mut slot.addr.0 as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
        let len_ptr = &mut slot.addr.1 as *mut libc::socklen_t;
        let e = opcode::Accept::new(Fd(fd), addr_ptr, len_ptr)
            .file_index(Some(DestinationSlot::auto_target()))
            .build()
            .user_data(ud(K_ACCEPT, ((li as u64) << 16) | si as u64));
        self.rings[ring].accepts_armed += 1;
        self.rings[ring].push(e);
    }

    /// Slots of a ring left to single-shot accepts in multishot mode. A multishot accept
    /// takes the whole listen backlog in one go, before its completions are read: a
    /// burst larger than its ring's room lands in the headroom, over capacity, closed
    /// and counted (or ENFILE, dropped by the kernel and counted) although the next
    /// ring may have room. Stopping it a listen backlog before the end means a connect
    /// storm (100k devices reconnecting after a restart) cannot overrun a ring, and keeps
    /// a loop near full on exactly the single-shot path (one over-capacity accept at a
    /// time). Tables too small for that (tests) keep half for single-shot.
    fn multi_accept_margin(&self) -> i64 {
        let per_ring = i64::from(self.rings[0].table_size.saturating_sub(TABLE_HEADROOM));
        (per_ring / 2).min(MULTI_ACCEPT_MARGIN)
    }

    /// Arms listener `li`'s multishot accept on `ring`, which reserved a slot for it.
    fn arm_accept_multi(&mut self, li: usize, ring: usize, fd: RawFd) {
        let m = &mut self.listeners[li].multi;
        m.ring = ring as u8;
        m.armed = true;
        m.counted = true;
        m.cancel_sent = false;
        m.generation = m.generation.wrapping_add(1);
        let e = opcode::AcceptMulti::new(Fd(fd))
            .allocate_file_index(true)
            .build()
            .user_data(ud(K_ACCEPT_MULTI, multi_payload(li, m.generation)));
        self.rings[ring].accepts_armed += 1;
        self.rings[ring].push(e);
        self.stats.accept_multi_armed += 1;
    }

    /// Cancels listener `li`'s multishot accept (once); its last completion re-arms it.
    fn cancel_accept_multi(&mut self, li: usize) {
        let m = &mut self.listeners[li].multi;
        if !m.armed || m.cancel_sent {
            return;
        }
        m.cancel_sent = true;
        let ring = m.ring as usize;
        let e = opcode::AsyncCancel::new(ud(K_ACCEPT_MULTI, multi_payload(li, m.generation)))
            .build()
            .user_data(ud(K_CANCEL, u64::from(u32::MAX)));
        self.rings[ring].push(e);
    }

    /// Makes a counted accept of listener `li` armed on `ring` uncounted, handing its
    /// reservation to the caller (a multishot accept giving it up is cancelled).
    fn steal_accept_reservation(&mut self, li: usize, ring: usize) -> bool {
        let Some(listener) = self.listeners.get_mut(li) else {
            return false;
        };
        if let Some(s) = listener
            .slots
            .iter_mut()
            .find(|s| s.armed && s.counted && s.ring as usize == ring)
        {
            s.counted = false;
            return true;
        }
        let m = &mut listener.multi;
        if m.armed && m.counted && m.ring as usize == ring {
            m.counted = false;
            self.cancel_accept_multi(li);
            return true;
        }
        false
    }

    /// Re-arms receives that ran out of buffers, at most a quarter of each ring's pool
    /// per turn: the buffers used last turn were given back during its dispatch.
    /// A connect storm grows the hand-off tables to the number of hand-offs in flight;
    /// once they are empty again, an idle loop gives that memory back.
    fn shrink_handoff_tables(&mut self) {
        if self.arrived.is_empty() && self.arrived.capacity() > HANDOFF_TABLE_KEPT {
            self.arrived.shrink_to(0);
        }
        if self.claimed.is_empty() && self.claimed.capacity() > HANDOFF_TABLE_KEPT {
            self.claimed.shrink_to(0);
        }
        if self.arrived_due.is_empty() && self.arrived_due.capacity() > HANDOFF_TABLE_KEPT {
            self.arrived_due.shrink_to(0);
        }
    }

    fn rearm_starved(&mut self) {
        for r in 0..self.rings.len() {
            let mut budget = (usize::from(self.rings[r].bufs.count) / 4).max(1);
            while budget > 0 {
                let Some(sock) = self.rings[r].starved.pop_front() else {
                    break;
                };
                let Some(s) = self.socks.get_mut(sock as usize) else {
                    continue;
                };
                if !s.starved || s.ring as usize != r {
                    continue;
                }
                s.starved = false;
                budget -= 1;
                self.arm_recv(sock);
            }
        }
    }

    /// `MSG_RING`s a doorbell to loop `to`; `attempt` rides in the user data so a
    /// failure knows how often it was tried.
    fn send_doorbell(&mut self, to: usize, attempt: u64) {
        let Some(peer) = self.peers.get(to) else {
            return;
        };
        let RemoteKind::Uring { ring_fds, .. } = &peer.kind else {
            return;
        };
        let Some(&fd) = ring_fds.first() else { return };
        let e = opcode::MsgRingData::new(Fd(fd), 0, ud(K_DOORBELL, self.id as u64), None)
            .build()
            .flags(squeue::Flags::SKIP_SUCCESS)
            .user_data(ud(K_DOORBELL, (attempt << 16) | (to as u64 & 0xffff)));
        self.rings[0].push(e);
    }

    /// A doorbell did not reach loop `to`, which may be blocked with messages in its
    /// mesh ring: try again next turn, a bounded number of times.
    fn on_doorbell_failed(&mut self, payload: u64, errno: i32) {
        let (to, attempt) = ((payload & 0xffff) as usize, payload >> 16);
        if doorbell_retryable(errno) && attempt + 1 < DOORBELL_ATTEMPTS_MAX {
            self.stats.doorbell_retried += 1;
            if !self.doorbell_retry.iter().any(|&(t, _)| t == to) {
                self.doorbell_retry.push((to, attempt + 1));
            }
            return;
        }
        self.stats.doorbell_failed += 1;
        tracing::error!(loop_id = self.id, to, errno, attempt, "doorbell lost");
    }

    /// Closes sockets sent to us whose hand-off did not come in time.
    fn reap_unpaired(&mut self) {
        let Some(&(due, _)) = self.arrived_due.front() else {
            return;
        };
        let now = Instant::now();
        if due > now {
            return;
        }
        while let Some(&(due, ticket)) = self.arrived_due.front() {
            if due > now {
                break;
            }
            self.arrived_due.pop_front();
            // Claimed meanwhile (the usual case): nothing to do.
            let Some(sock) = self.arrived.remove(&ticket) else {
                continue;
            };
            self.stats.adopt_unpaired_reaped += 1;
            tracing::warn!(
                loop_id = self.id,
                ticket,
                "socket arrived without its hand-off: closed"
            );
            if let Some(s) = self.socks.get_mut(sock as usize) {
                // The worker never saw this id: no `Released` for it.
                s.reported = false;
                s.state = SockState::Closing;
            }
            self.close_slot(sock);
        }
    }

    fn reap(&mut self, out: &mut Vec<Completion>) {
        // Copy completions out of every ring first, then dispatch.
        self.cqes.clear();
        for (r, ring) in self.rings.iter_mut().enumerate() {
            for cqe in ring.uring.completion() {
                self.cqes
                    .push((r as u8, cqe.user_data(), cqe.result(), cqe.flags()));
            }
        }
        // Completions keep causal order: a `Released` must reach the worker before an
        // `Accepted`/`Adopted` that reuses the same socket id. Events raised between
        // turns go first, then each CQE's events in turn.
        out.append(&mut self.pending);
        let cqes = std::mem::take(&mut self.cqes);
        for &(ring, user_data, res, flags) in &cqes {
            self.dispatch(ring as usize, user_data, res, flags, out);
            out.append(&mut self.pending);
        }
        self.cqes = cqes;
    }

    fn dispatch(
        &mut self,
        ring: usize,
        user_data: u64,
        res: i32,
        flags: u32,
        out: &mut Vec<Completion>,
    ) {
        let payload = user_data & PAYLOAD_MASK;
        let sock = payload as SockId;
        match user_data >> KIND_SHIFT {
            K_RECV => self.on_recv(ring, sock, res, flags, out),
            K_SEND => self.on_send(sock, res),
            K_ACCEPT => self.on_accept(
                ring,
                (payload >> 16) as usize,
                (payload & 0xffff) as usize,
                res,
                out,
            ),
            K_ACCEPT_MULTI => self.on_accept_multi(
                ring,
                (payload & 0xffff) as usize,
                res,
                cqueue::more(flags),
                out,
            ),
            K_CLOSE => {
                if let Some(s) = self.socks.get_mut(sock as usize) {
                    s.close_inflight = false;
                    s.slot_closed = true;
                    if res < 0 {
                        tracing::debug!(sock, errno = -res, "close failed");
                    }
                }
                self.maybe_release(sock);
            }
            K_SEND_FD => self.on_send_fd(sock, res),
            K_ADOPT => self.on_adopt(ring, payload, res),
            K_RING_POLL => {
                if !cqueue::more(flags) {
                    self.arm_ring_poll(payload as usize);
                }
            }
            K_EVENTFD => {
                self.drain_eventfd();
                if !cqueue::more(flags) {
                    self.arm_eventfd();
                }
            }
            // Doorbells post a CQE here only on failure (`SKIP_SUCCESS`).
            K_DOORBELL if res < 0 => self.on_doorbell_failed(payload, -res),
            K_CANCEL | K_DOORBELL => {}
            other => tracing::warn!(kind = other, res, "unknown io_uring completion"),
        }
    }

    fn on_recv(
        &mut self,
        ring: usize,
        sock: SockId,
        res: i32,
        flags: u32,
        out: &mut Vec<Completion>,
    ) {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        if bid.is_some() {
            self.rings[ring].bufs.taken();
        }
        let Some(s) = self.socks.get_mut(sock as usize) else {
            // Cannot happen: a socket is released only after its receive ended. Keep the
            // buffer anyway.
            if let Some(bid) = bid {
                self.rings[ring].bufs.give_back(bid);
            }
            return;
        };
        if !more {
            s.recv_armed = false;
        }
        let state = s.state;
        if res > 0 {
            match bid {
                Some(bid) => out.push(Completion::Recv {
                    sock,
                    buf: BufRef {
                        group: ring as u16,
                        bid,
                        offset: 0,
                        len: res as u32,
                    },
                }),
                None => tracing::warn!(sock, res, "recv completion without a buffer"),
            }
            if !more {
                match state {
                    SockState::Open => self.arm_recv(sock),
                    SockState::Migrating { .. } => self.maybe_send_fd(sock),
                    _ => self.maybe_release(sock),
                }
            }
            return;
        }
        if let Some(bid) = bid {
            self.rings[ring].bufs.give_back(bid);
        }
        match state {
            SockState::Open => {
                if res == -libc::ENOBUFS {
                    // Out of provided buffers. Re-arming at once would send every
                    // starved socket of a burst back into the same empty pool (a storm
                    // of 100k connects made a million ENOBUFS completions); they wait
                    // in `starved` and are re-armed a pool's share per turn.
                    self.stats.recv_nobufs += 1;
                    self.rings[ring].bufs.widen();
                    if !more {
                        if let Some(s) = self.socks.get_mut(sock as usize) {
                            if !s.starved {
                                s.starved = true;
                                self.rings[ring].starved.push_back(sock);
                            }
                        }
                    }
                } else if !more {
                    out.push(Completion::RecvEnd { sock, errno: -res });
                }
            }
            SockState::Migrating { .. } => self.maybe_send_fd(sock),
            SockState::Closing | SockState::SendingFd { .. } => self.maybe_release(sock),
        }
    }

    fn on_send(&mut self, sock: SockId, res: i32) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        let Some(tx) = s.tx.as_mut() else { return };
        if res >= 0 && (res as usize) < tx.len() && s.state == SockState::Open {
            // Short write: send the rest.
            let _ = tx.split_to(res as usize);
            self.submit_send(sock);
            return;
        }
        let errno = if res < 0 { -res } else { 0 };
        s.tx = None;
        match s.state {
            SockState::Open => self.pending.push(Completion::SendDone { sock, errno }),
            SockState::Migrating { .. } => {
                self.pending.push(Completion::SendDone { sock, errno });
                self.maybe_send_fd(sock);
            }
            SockState::Closing | SockState::SendingFd { .. } => self.maybe_release(sock),
        }
    }

    fn on_send_fd(&mut self, sock: SockId, res: i32) {
        tracing::debug!(loop_id = self.id, sock, res, "descriptor sent");
        let sent = match self.socks.get(sock as usize).map(|s| s.state) {
            Some(SockState::SendingFd { ticket, to, ring }) => Some((ticket, to, ring)),
            _ => None,
        };
        let result = match (res >= 0, sent) {
            (true, Some((ticket, _, _))) => Ok(Transfer(ticket)),
            (false, Some((ticket, to, _))) if res == -libc::EOVERFLOW => {
                // The kernel installed the descriptor in the target's table but could
                // not post its CQE, and the slot number is lost with it: nobody can
                // adopt or close that copy. Its reserved slot stays taken (it is in
                // use), and our close shuts the connection down so the client is not
                // left hanging on it. One table slot leaks per occurrence.
                self.stats.migrate_descriptor_lost += 1;
                self.stats.migrate_failed += 1;
                tracing::error!(
                    loop_id = self.id,
                    sock,
                    to,
                    ticket,
                    "socket handoff: descriptor installed unannounced (EOVERFLOW), connection refused"
                );
                Err(libc::EOVERFLOW)
            }
            (_, sent) => {
                // The descriptor did not arrive: its reserved slot is free again.
                if let Some((_, to, ring)) = sent {
                    if let Some(p) = self.peers.get(to as usize) {
                        p.release_adopt_slot(ring as usize);
                    }
                }
                self.stats.migrate_failed += 1;
                Err(if res < 0 { -res } else { libc::EINVAL })
            }
        };
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        s.shutdown_on_close = result == Err(libc::EOVERFLOW) && sent.is_some();
        if result.is_err() && sent.is_some() {
            // Our slot still holds the socket: it stays open (not receiving) so the
            // worker can answer the client before closing it.
            s.state = SockState::Open;
            self.pending.push(Completion::Migrated { sock, result });
            return;
        }
        s.state = SockState::Closing;
        self.pending.push(Completion::Migrated { sock, result });
        // The target holds its own reference now; drop ours.
        self.close_slot(sock);
    }

    /// A socket that just landed in `ring`'s table at `slot` (accepted or adopted),
    /// open and not yet receiving; counted as live in its ring.
    fn insert_open(&mut self, ring: usize, slot: u32) -> SockId {
        let sock = self.socks.insert(Sock {
            ring: ring as u8,
            room: ring as u8,
            slot,
            state: SockState::Open,
            recv_armed: false,
            tx: None,
            close_inflight: false,
            slot_closed: false,
            reported: true,
            starved: false,
            shutdown_on_close: false,
        }) as SockId;
        self.rings[ring].live += 1;
        sock
    }

    fn on_adopt(&mut self, ring: usize, ticket: u64, res: i32) {
        tracing::debug!(
            loop_id = self.id,
            ring,
            ticket,
            res,
            claimed = self.claimed.contains(&ticket),
            "descriptor arrived"
        );
        if res < 0 {
            tracing::warn!(ticket, errno = -res, "socket handoff arrived with an error");
            return;
        }
        // The sender reserved this slot in our `RingRoom`; it is ours to give back.
        let sock = self.insert_open(ring, res as u32);
        if self.claimed.remove(&ticket) {
            self.pending.push(Completion::Adopted {
                transfer: Transfer(ticket),
                sock,
            });
        } else {
            self.arrived.insert(ticket, sock);
            self.arrived_due
                .push_back((Instant::now() + self.adopt_pair_timeout, ticket));
        }
    }

    fn on_accept(
        &mut self,
        ring: usize,
        li: usize,
        si: usize,
        res: i32,
        out: &mut Vec<Completion>,
    ) {
        self.rings[ring].accepts_armed = self.rings[ring].accepts_armed.saturating_sub(1);
        let Some(listener) = self.listeners.get_mut(li) else {
            return;
        };
        let Some(slot) = listener.slots.get_mut(si) else {
            return;
        };
        slot.armed = false;
        let counted = slot.counted;
        let peer = sockaddr_to_std(&slot.addr.0).unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        // A listener whose accepts have all ended may close once we stopped accepting.
        if !self.accepting && !listener.any_armed() {
            listener.socket = None;
        }
        if res < 0 {
            if counted {
                self.room(ring).give_back();
            }
            self.on_accept_error(ring, -res);
            return;
        }
        let sock = self.insert_open(ring, res as u32);
        // The over-capacity accept keeps its connection only if room came back, or by
        // taking over the reservation of a counted accept armed on the same ring.
        let keep = self.accepting
            && (counted || self.room(ring).try_take() || self.steal_accept_reservation(li, ring));
        self.settle_accepted(ring, sock, counted, keep, peer, out);
    }

    /// A completion of listener `li`'s multishot accept on `ring`; `more`: it stays armed.
    fn on_accept_multi(
        &mut self,
        ring: usize,
        li: usize,
        res: i32,
        more: bool,
        out: &mut Vec<Completion>,
    ) {
        let Some(listener) = self.listeners.get_mut(li) else {
            return;
        };
        let m = &mut listener.multi;
        if !m.armed || m.ring as usize != ring {
            tracing::warn!(
                loop_id = self.id,
                ring,
                li,
                res,
                "stray multishot accept completion"
            );
            return;
        }
        let counted = m.counted;
        if !more {
            m.armed = false;
            m.counted = false;
            m.cancel_sent = false;
            self.rings[ring].accepts_armed = self.rings[ring].accepts_armed.saturating_sub(1);
            if !self.accepting && !listener.any_armed() {
                listener.socket = None;
            }
        }
        if res < 0 {
            // Errors always end a multishot accept: the spare reservation is unused.
            if counted {
                self.room(ring).give_back();
            }
            self.on_accept_error(ring, -res);
            return;
        }
        let sock = self.insert_open(ring, res as u32);
        // A counted accept's reservation goes to this connection. Still armed, it needs
        // one for the next; none left: cancelled, and until the cancel lands it is the
        // over-capacity accept.
        if counted && more {
            let refill = self.accepting && self.room(ring).try_take();
            if !refill {
                self.listeners[li].multi.counted = false;
            }
            if !refill || self.room(ring).free() <= self.multi_accept_margin() {
                self.cancel_accept_multi(li);
            }
        }
        let keep = self.accepting
            && (counted
                || self.room(ring).try_take()
                || self.steal_accept_reservation(li, ring)
                || self.borrow_room(ring, sock));
        self.settle_accepted(
            ring,
            sock,
            counted,
            keep,
            SocketAddr::from(([0, 0, 0, 0], 0)),
            out,
        );
    }

    /// Keeps `sock`, which a multishot accept took into `ring`'s headroom after the
    /// ring's room ran out (the tail of a burst, before the cancel landed), by charging
    /// it to another ring's room: the loop stays within its capacity, and `ring` keeps
    /// at least half its headroom for the over-capacity accept and accounting slips.
    fn borrow_room(&mut self, ring: usize, sock: SockId) -> bool {
        if self.rings[ring].borrowed >= TABLE_HEADROOM / 2 {
            return false;
        }
        let Some(from) = (0..self.rings.len()).find(|&r| r != ring && self.room(r).try_take())
        else {
            return false;
        };
        if let Some(s) = self.socks.get_mut(sock as usize) {
            s.room = from as u8;
        }
        self.rings[ring].borrowed += 1;
        true
    }

    fn on_accept_error(&mut self, ring: usize, errno: i32) {
        match errno {
            libc::ENFILE | libc::EMFILE => {
                // The table is full: the kernel already dropped this connection.
                self.stats.accept_dropped_full += 1;
                tracing::warn!(
                    loop_id = self.id,
                    ring,
                    "file table full: connection dropped"
                );
            }
            libc::ECANCELED | libc::EINTR | libc::EAGAIN | libc::ECONNABORTED | libc::EPROTO => {}
            errno => {
                self.stats.accept_errors += 1;
                tracing::warn!(errno, "accept failed");
            }
        }
    }

    /// A connection accepted into `ring` as `sock`: reported, or (`keep` false) closed
    /// and counted. `counted`: its accept had reserved its slot.
    fn settle_accepted(
        &mut self,
        ring: usize,
        sock: SockId,
        counted: bool,
        keep: bool,
        peer: SocketAddr,
        out: &mut Vec<Completion>,
    ) {
        if !counted && !keep {
            // Borrowed from the headroom; the release gives it back.
            self.room(ring).take_anyway();
        }
        if !keep {
            // Over capacity (the overflow accept), or accepted after shutdown began:
            // dropped and counted.
            self.stats.accept_dropped_full += 1;
            tracing::warn!(
                loop_id = self.id,
                "connection limit reached: connection dropped"
            );
            if let Some(s) = self.socks.get_mut(sock as usize) {
                s.reported = false;
                s.state = SockState::Closing;
            }
            self.close_slot(sock);
        } else {
            self.stats.accepted += 1;
            out.push(Completion::Accepted { sock, peer });
        }
    }
}

impl EventLoop for UringLoop {
    fn remote(&self) -> Arc<Remote> {
        self.remote.clone()
    }

    fn set_peers(&mut self, peers: Vec<Arc<Remote>>) {
        self.peers = peers;
    }

    fn add_listener(&mut self, listener: TcpListener) -> io::Result<()> {
        let mut slots = Vec::new();
        for ring in 0..self.rings.len() {
            for _ in 0..ACCEPTS_PER_RING {
                slots.push(AcceptSlot {
                    ring: ring as u8,
                    armed: false,
                    counted: false,
                    // SAFETY: sockaddr_storage is plain old data; all zeroes is valid.
                    addr: Box::new((unsafe { std::mem::zeroed() }, 0)),
                });
            }
        }
        self.listeners.push(Listener {
            socket: Some(listener),
            slots,
            multi: MultiAccept::default(),
        });
        Ok(())
    }

    fn stop_accepting(&mut self) {
        if !self.accepting {
            return;
        }
        self.accepting = false;
        for li in 0..self.listeners.len() {
            let Some(fd) = self.listeners[li].socket.as_ref().map(|l| l.as_raw_fd()) else {
                continue;
            };
            if !self.listeners[li].any_armed() {
                self.listeners[li].socket = None;
                continue;
            }
            // The cancel by fd below ends it; it must not take a reservation meanwhile.
            let m = &mut self.listeners[li].multi;
            if m.armed && m.counted {
                m.counted = false;
                m.cancel_sent = true;
                let ring = m.ring as usize;
                self.room(ring).give_back();
            }
            for r in 0..self.rings.len() {
                let e = opcode::AsyncCancel2::new(CancelBuilder::fd(Fd(fd)).all())
                    .build()
                    .user_data(ud(K_CANCEL, u64::from(u32::MAX)));
                self.rings[r].push(e);
            }
        }
    }

    fn start_recv(&mut self, sock: SockId) {
        self.arm_recv(sock);
    }

    fn send(&mut self, sock: SockId, data: Bytes) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        if data.is_empty() || s.state != SockState::Open {
            return;
        }
        if s.tx.is_some() {
            // The worker keeps one send in flight per socket; if that ever slips, the
            // bytes are lost, so say so loudly rather than silently.
            self.stats.send_refused_busy += 1;
            tracing::error!(
                loop_id = self.id,
                sock,
                "send while one is in flight: dropped"
            );
            return;
        }
        s.tx = Some(data);
        self.submit_send(sock);
    }

    fn close(&mut self, sock: SockId) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        if s.state != SockState::Open {
            return;
        }
        s.state = SockState::Closing;
        self.close_slot(sock);
    }

    fn migrate(&mut self, sock: SockId, to: usize) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        if s.state != SockState::Open {
            return;
        }
        s.state = SockState::Migrating { to };
        if s.recv_armed {
            self.cancel_recv(sock);
        } else {
            self.maybe_send_fd(sock);
        }
    }

    fn adopt(&mut self, transfer: Transfer) -> Option<SockId> {
        if let Some(sock) = self.arrived.remove(&transfer.0) {
            return Some(sock);
        }
        self.claimed.insert(transfer.0);
        None
    }

    fn forget(&mut self, transfer: Transfer) {
        self.claimed.remove(&transfer.0);
    }

    fn discard(&mut self, transfer: Transfer) {
        // The descriptor sits in the target's table; the target closes it when its
        // hand-off does not come (`reap_unpaired`).
        let _ = transfer;
    }

    fn doorbell(&mut self, to: usize) {
        self.send_doorbell(to, 0);
    }

    fn buf(&self, buf: BufRef) -> &[u8] {
        match self.rings.get(buf.group as usize) {
            Some(r) => r.bufs.slice(buf.bid, buf.len as usize),
            None => &[],
        }
    }

    fn recycle(&mut self, buf: BufRef) {
        if let Some(r) = self.rings.get_mut(buf.group as usize) {
            r.bufs.give_back(buf.bid);
        }
    }

    fn turn(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        for (to, attempt) in std::mem::take(&mut self.doorbell_retry) {
            self.send_doorbell(to, attempt);
        }
        for ring in self.rings.iter_mut() {
            ring.drain_backlog();
        }
        self.reap_unpaired();
        self.rearm_starved();
        self.arm_accepts();
        for r in 1..self.rings.len() {
            if !self.rings[r].uring.submission().is_empty() {
                if let Err(e) = self.rings[r].uring.submit() {
                    if !transient(&e) {
                        return Err(e);
                    }
                }
            }
        }
        let ready = self.poll_ready();
        if !ready && timeout != Some(Duration::ZERO) {
            // About to wait: an idle moment, so the clock read costs nothing here.
            let now = Instant::now();
            if now.saturating_duration_since(self.last_trim) >= TRIM_INTERVAL {
                self.last_trim = now;
                for r in &mut self.rings {
                    r.bufs.trim();
                }
                self.shrink_handoff_tables();
            }
        }
        let ring0 = &self.rings[0].uring;
        let res = match timeout {
            _ if ready => ring0.submit(),
            Some(t) if t.is_zero() => ring0.submit(),
            Some(t) => {
                let ts = Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos());
                let args = SubmitArgs::new().timespec(&ts);
                ring0.submitter().submit_with_args(1, &args)
            }
            None => ring0.submit_and_wait(1),
        };
        match res {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETIME) || transient(&e) => {}
            Err(e) => return Err(e),
        }
        self.reap(out);
        Ok(())
    }

    fn poll_ready(&mut self) -> bool {
        // `taskrun`: completions the kernel holds until we next enter it (cooperative
        // task running, see `build_ring`); the next turn's submit posts them.
        !self.pending.is_empty()
            || self.rings.iter_mut().any(|r| {
                !r.backlog.is_empty()
                    || !r.starved.is_empty()
                    || !r.uring.completion().is_empty()
                    || r.uring.submission().taskrun()
            })
    }

    fn stats(&self) -> IoStats {
        self.stats
    }

    fn name(&self) -> &'static str {
        "io_uring"
    }
}

impl Drop for UringLoop {
    fn drop(&mut self) {
        let busy = !self.socks.is_empty()
            || self
                .listeners
                .iter()
                .any(|l| l.slots.iter().any(|s| s.armed));
        if busy {
            // Operations may still be in flight; the kernel tears them down
            // asynchronously after the ring fd closes and could still write into
            // receive buffers, so those mappings are leaked rather than unmapped.
            for ring in self.rings.drain(..) {
                let Ring { uring, bufs, .. } = ring;
                drop(uring);
                std::mem::forget(bufs);
            }
        }
        // SAFETY: our eventfd, closed once; peers only write to it while every loop runs.
        unsafe {
            libc::close(self.eventfd);
        }
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;
    use std::collections::{BTreeSet, VecDeque};

    /// Plays the kernel: takes posted entries in ring order (no real io_uring).
    struct FakeKernel {
        head: u16,
    }

    impl FakeKernel {
        /// The next posted buffer, as a multishot receive would pick it; `None` is
        /// `ENOBUFS`.
        fn take(&mut self, pool: &mut BufPool) -> Option<u16> {
            if pool.posted == 0 {
                return None;
            }
            let idx = (self.head & (pool.count - 1)) as usize;
            // SAFETY: idx < count, inside the ring mapping; the pool wrote this entry
            // (it is between our head and its tail) and nothing else touches it.
            let e = unsafe { &*pool.entries().add(idx) };
            let bid = e.bid();
            assert_eq!(e.len() as usize, pool.size);
            assert_eq!(
                e.addr(),
                pool.data.ptr as u64 + u64::from(bid) * pool.size as u64
            );
            self.head = self.head.wrapping_add(1);
            pool.taken();
            Some(bid)
        }
    }

    /// Buffers are conserved (posted + spare + held = count), only `window` are
    /// posted, and one receive at a time keeps reusing the same warm buffers
    /// Hand-off tables grown by a connect storm are given back once empty, at the
    /// first idle trim.
    #[test]
    fn doorbell_errors_worth_a_retry() {
        for errno in [
            libc::EOVERFLOW,
            libc::ENOMEM,
            libc::EAGAIN,
            libc::EBUSY,
            libc::EINTR,
        ] {
            assert!(doorbell_retryable(errno), "{errno}");
        }
        for errno in [libc::EBADFD, libc::EBADF, libc::EINVAL, libc::EOWNERDEAD] {
            assert!(!doorbell_retryable(errno), "{errno}");
        }
    }

    /// A doorbell that failed transiently is sent again on the next turn (and reaches
    /// the peer); after `DOORBELL_ATTEMPTS_MAX` attempts it is given up and counted.
    #[test]
    fn a_transiently_failed_doorbell_is_sent_again_next_turn() {
        let opts = LoopOptions {
            max_connections: 100,
            ..LoopOptions::default()
        };
        let mut lp = UringLoop::new(0, &opts).expect("loop");
        let mut peer = UringLoop::new(1, &opts).expect("peer loop");
        lp.set_peers(vec![lp.remote(), peer.remote()]);
        lp.on_doorbell_failed(1, libc::EOVERFLOW);
        lp.on_doorbell_failed(1, libc::EOVERFLOW);
        assert_eq!(lp.doorbell_retry, [(1, 1)], "one retry per target");
        assert_eq!(lp.stats.doorbell_retried, 2);
        assert!(!peer.poll_ready());
        let mut out = Vec::new();
        lp.turn(Some(Duration::ZERO), &mut out).expect("turn");
        assert!(lp.doorbell_retry.is_empty());
        assert!(peer.poll_ready(), "the retried doorbell rang");
        peer.turn(Some(Duration::ZERO), &mut out)
            .expect("peer turn");
        // The last attempt is not retried.
        lp.on_doorbell_failed(((DOORBELL_ATTEMPTS_MAX - 1) << 16) | 1, libc::EOVERFLOW);
        assert!(lp.doorbell_retry.is_empty());
        assert_eq!(lp.stats.doorbell_failed, 1);
    }

    /// A doorbell to something that is not a ring fails with EBADFD: counted, not
    /// retried.
    #[test]
    fn a_doorbell_that_cannot_arrive_is_counted() {
        let opts = LoopOptions {
            max_connections: 100,
            ..LoopOptions::default()
        };
        let mut lp = UringLoop::new(0, &opts).expect("loop");
        // SAFETY: eventfd takes no pointers; the result is checked.
        let not_a_ring = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(not_a_ring >= 0);
        let bogus = Arc::new(Remote {
            kind: RemoteKind::Uring {
                ring_fds: vec![not_a_ring],
                room: vec![RingRoom::new(0)],
                eventfd: not_a_ring,
            },
        });
        lp.set_peers(vec![lp.remote(), bogus]);
        lp.doorbell(1);
        let mut out = Vec::new();
        for _ in 0..3 {
            lp.turn(Some(Duration::ZERO), &mut out).expect("turn");
        }
        assert_eq!(
            (lp.stats.doorbell_failed, lp.stats.doorbell_retried),
            (1, 0)
        );
        assert!(lp.doorbell_retry.is_empty());
        // SAFETY: we own this fd and nothing uses it any more.
        unsafe { libc::close(not_a_ring) };
    }

    #[test]
    fn idle_loop_shrinks_emptied_handoff_tables() {
        let opts = LoopOptions {
            max_connections: 100,
            ..LoopOptions::default()
        };
        let mut lp = UringLoop::new(0, &opts).expect("loop");
        let now = Instant::now();
        for t in 0..1000u64 {
            lp.arrived.insert(t, t as SockId);
            lp.claimed.insert(t);
            lp.arrived_due.push_back((now, t));
        }
        lp.shrink_handoff_tables();
        assert_eq!(lp.arrived.len(), 1000, "tables in use are kept");
        lp.arrived.clear();
        lp.claimed.clear();
        lp.arrived_due.clear();
        assert!(lp.arrived.capacity() >= 1000);
        lp.shrink_handoff_tables();
        assert_eq!(
            (
                lp.arrived.capacity(),
                lp.claimed.capacity(),
                lp.arrived_due.capacity()
            ),
            (0, 0, 0)
        );
    }

    /// instead of cycling through the pool.
    #[test]
    fn a_quiet_pool_reuses_a_window_of_warm_buffers() {
        let mut pool = BufPool::new(512, 64).expect("mmap");
        assert_eq!(
            (pool.window, pool.posted, pool.spare.len()),
            (128, 128, 384)
        );
        let mut k = FakeKernel { head: 0 };
        let mut used = BTreeSet::new();
        for _ in 0..10_000 {
            let bid = k.take(&mut pool).expect("posted");
            used.insert(bid);
            assert_eq!(usize::from(pool.posted) + pool.spare.len() + 1, 512);
            pool.give_back(bid);
        }
        assert_eq!(usize::from(pool.posted) + pool.spare.len(), 512);
        assert_eq!(used.len(), 129, "the window plus the one in hand");
        assert_eq!(used.iter().max(), Some(&128));
    }

    /// Buffers held by the application do not shrink what the kernel can take:
    /// spare ones are posted instead, until the pool is exhausted; then `ENOBUFS`.
    #[test]
    fn held_buffers_are_replaced_from_spare_until_exhausted() {
        let mut pool = BufPool::new(256, 64).expect("mmap");
        assert_eq!(pool.window, 64);
        let mut k = FakeKernel { head: 0 };
        let mut held = VecDeque::new();
        for _ in 0..256 {
            held.push_back(k.take(&mut pool).expect("a buffer"));
        }
        assert_eq!(k.take(&mut pool), None, "all 256 held");
        assert_eq!(held.iter().collect::<BTreeSet<_>>().len(), 256);
        // Returned buffers are posted again at once (the window is not full).
        let first = held.pop_front().expect("held");
        pool.give_back(first);
        assert_eq!(k.take(&mut pool), Some(first));
    }

    /// Each starved receive widens the window by two, up to the pool size.
    #[test]
    fn starvation_widens_the_window_up_to_the_pool() {
        let mut pool = BufPool::new(128, 64).expect("mmap");
        assert_eq!(pool.window, 64);
        let mut k = FakeKernel { head: 0 };
        let mut held = Vec::new();
        for _ in 0..64 {
            held.push(k.take(&mut pool).expect("posted"));
        }
        // Spare buffers were posted as entries were taken.
        assert_eq!((pool.posted, pool.spare.len()), (64, 0));
        pool.widen();
        assert_eq!(pool.window, 66);
        for _ in 0..40 {
            pool.widen();
        }
        assert_eq!(pool.window, 128);
        for bid in held {
            pool.give_back(bid);
        }
        assert_eq!((pool.posted, pool.spare.len()), (128, 0));
    }

    fn fill(pool: &BufPool, bid: u16, byte: u8) {
        // SAFETY: the buffer is inside the data mapping and held by the test.
        unsafe {
            std::ptr::write_bytes(
                pool.data.ptr.add(usize::from(bid) * pool.size),
                byte,
                pool.size,
            )
        }
    }

    /// After a burst widened the window to the whole pool, idle trims narrow it
    /// again, and buffers unused for a whole interval lose their pages (they read
    /// back as zeros), while the warm ones keep theirs.
    #[test]
    fn trims_narrow_the_window_and_release_cold_buffers() {
        let mut pool = BufPool::new(256, 4096).expect("mmap");
        let mut k = FakeKernel { head: 0 };
        // A burst: every buffer taken and written, receives starving meanwhile.
        let held: Vec<u16> = (0..256)
            .map(|_| k.take(&mut pool).expect("a buffer"))
            .collect();
        for &bid in &held {
            fill(&pool, bid, 0xAB);
        }
        for _ in 0..100 {
            pool.widen();
        }
        for &bid in &held {
            pool.give_back(bid);
        }
        assert_eq!((pool.window, pool.posted), (256, 256));
        assert_eq!(pool.trim(), 0, "a starved interval keeps the window");
        assert_eq!(pool.window, 256);
        assert_eq!(pool.trim(), 0, "everything is posted: nothing spare");
        assert_eq!(pool.window, 128);
        assert_eq!(pool.trim(), 0);
        assert_eq!(pool.window, 64, "back to the initial window");
        // Quiet traffic, one buffer at a time: the posted entries drain to the
        // window, returned buffers pile up in spare and only the top one circulates.
        let mut warm = BTreeSet::new();
        for _ in 0..1000 {
            let bid = k.take(&mut pool).expect("posted");
            warm.insert(bid);
            pool.give_back(bid);
        }
        assert_eq!((pool.posted, pool.spare.len()), (64, 192));
        // Spare filled up during this interval (its low mark is 0): nothing is
        // known to be cold yet.
        assert_eq!(pool.trim(), 0);
        warm.clear();
        for _ in 0..1000 {
            let bid = k.take(&mut pool).expect("posted");
            warm.insert(bid);
            pool.give_back(bid);
        }
        // This interval used only the top of spare: the rest is released.
        assert_eq!(pool.trim(), 191, "all spare but the circulating top one");
        assert_eq!(warm.len(), 256 - 191, "the window and the top of spare");
        let zeroed = pool.spare[..191]
            .iter()
            .filter(|&&bid| pool.slice(bid, 4096).iter().all(|&b| b == 0))
            .count();
        assert_eq!(zeroed, 191);
        let top = pool.spare[191];
        assert!(
            pool.slice(top, 4096).iter().all(|&b| b == 0xAB),
            "warm buffer kept"
        );
        // A wholly idle interval: the last spare buffer goes too, and none twice.
        assert_eq!(pool.trim(), 1);
        assert_eq!(pool.trim(), 0);
    }

    /// Buffers smaller than a page share it (so do 4 KiB buffers on a 16 or 64 KiB
    /// page kernel): a trim never releases a page that also holds a buffer in use
    /// (here lent to the caller; a posted one may be receiving), and releases it once
    /// every buffer on it is cold.
    #[test]
    fn trim_releases_only_pages_holding_nothing_but_cold_buffers() {
        let size = page_size() / 2;
        let mut pool = BufPool::new(256, size).expect("mmap");
        let mut k = FakeKernel { head: 0 };
        // Buffers 0 and 1 share the first page; 1 stays with the caller.
        assert_eq!((k.take(&mut pool), k.take(&mut pool)), (Some(0), Some(1)));
        fill(&pool, 0, 0xAB);
        fill(&pool, 1, 0xCD);
        pool.give_back(0);
        // 0 was in use during the first interval, cold during the second.
        pool.trim();
        pool.trim();
        assert!(
            pool.slice(1, size).iter().all(|&b| b == 0xCD),
            "buffer 1, lent to the caller, was zeroed by a trim of buffer 0"
        );
        // Once 1 is cold too, their page goes.
        pool.give_back(1);
        assert_eq!(pool.trim(), 0, "1 was in use during this interval");
        assert_eq!(pool.trim(), 1);
        assert!(pool.slice(0, size).iter().all(|&b| b == 0));
        assert!(pool.slice(1, size).iter().all(|&b| b == 0));
    }
}
