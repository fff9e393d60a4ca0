//! io_uring backend on the raw `io-uring` crate.
//!
//! One loop owns `k` rings. Ring 0 blocks in `io_uring_enter`; rings 1..k are watched
//! by a multishot `POLL_ADD` on their fds submitted into ring 0, because each ring's
//! registered file table holds at most `RLIMIT_NOFILE` slots (docs/ARCHITECTURE.md: 2 loops × 3
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
//!   on the first ring with more than a margin left (`multi_accept_margin`); a ring's
//!   last slots are filled by descriptors other loops hand over and, once no ring is
//!   above its margin, by single-shot accepts, so a loop near full behaves exactly as
//!   in single-shot mode while a storm never waits for them. A multishot accept
//!   reports no peer address (`0.0.0.0:0`): the kernel has no per-completion sockaddr
//!   buffer for it, and a direct descriptor cannot be asked `getpeername`.
//!
//! Either way an armed accept holds one reservation in its ring's `RingRoom` for the
//! slot its next connection takes. A multishot accept takes a new one per connection
//! and is cancelled once its ring is down to the margin (or out of room); after its
//! last completion it is armed again on the first ring above the margin, so rings
//! still fill in order. The kernel accepts the whole backlog at once, so the tail of a burst can
//! land past its ring's room before the cancel does: kept in the ring's headroom,
//! charged to another ring's room (`borrow_room`), or, with none left anywhere, closed
//! and counted like the over-capacity accept's.
//!
//! This file owns the loop: its sockets and their states, closes, reaping and
//! dispatching completions, and the `EventLoop` entry points. One file per concept
//! beside it: `ring` (set-up, feature probing, submission), `recv` (the receive
//! path), `bufpool` (provided buffers), `accept` (both accept modes and their room
//! reservations), `send` (the send path), `handoff` (descriptors over `MSG_RING`,
//! doorbells), `connect` and `udp` (outbound connects, the gateway's UDP socket),
//! `file` (a durability log's write linked to its fdatasync),
//! `tests`.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::types::{Fd, Fixed, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue};
use slab::Slab;

use super::{
    BufRef, Completion, EventLoop, IoStats, LoopOptions, Remote, RemoteKind, RingRoom, SockId,
    Transfer,
};

mod accept;
mod bufpool;
mod connect;
mod file;
mod handoff;
mod recv;
mod ring;
mod send;
mod udp;

use accept::Listener;
use bufpool::BufPool;
use ring::{build_ring, transient, Ring, TABLE_HEADROOM};
pub use ring::{plan_rings, planned_capacity, probe_support, UringFeatures, MAX_RINGS};

/// Rings after the first get this fraction of `LoopOptions::sq_entries`.
const EXTRA_RING_QUEUE_DIVISOR: u32 = 4;
/// Rings after the first get this fraction of `recv_bufs_per_ring` provided buffers.
const EXTRA_RING_BUF_DIVISOR: usize = 4;
/// Most socket entries reserved up front per loop.
const SOCKS_PRESIZE_MAX: usize = 1 << 20;
/// Idle loops trim their buffer pools at most this often (see `BufPool::trim`).
const TRIM_INTERVAL: Duration = Duration::from_secs(1);

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
/// Another loop's `MSG_RING` note: a descriptor it sent landed unannounced here.
const K_LOST: u64 = 12;
/// Our note to another loop failed (success posts nothing: `SKIP_SUCCESS`).
const K_LOST_SENT: u64 = 13;
const K_PROBE: u64 = 14;
const K_ORPHAN_CLOSE: u64 = 15;
/// A lingering connection's `SHUT_WR` (see `shutdown_write`).
const K_SHUTDOWN: u64 = 16;
/// The UDP socket's multishot RECVMSG (`udp.rs`).
const K_UDP_RECV: u64 = 17;
/// One UDP SENDMSG; payload: its key in `Udp::sends`.
const K_UDP_SEND: u64 = 18;
/// An outbound connect's `SOCKET`, `CONNECT`, and the close of a failed one's slot
/// (see `connect`).
const K_SOCKET: u64 = 19;
const K_CONNECT: u64 = 20;
const K_CONNECT_CLOSE: u64 = 21;
/// The file write of `write_file` and its linked fdatasync (`file.rs`).
const K_FILE_WRITE: u64 = 22;
const K_FILE_SYNC: u64 = 23;

fn ud(kind: u64, payload: u64) -> u64 {
    (kind << KIND_SHIFT) | (payload & PAYLOAD_MASK)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SockState {
    Open,
    /// `close` called: waiting for receive/send to end before releasing.
    Closing,
    /// `migrate` called: waiting for the receive to end, then MSG_RING the slot.
    Migrating {
        to: u16,
    },
    /// The slot was sent into ring `ring` of loop `to`, where a slot was reserved;
    /// waiting for the MSG_RING result. `seq` is the ticket's own part
    /// (`UringLoop::ticket`): the loop id is this loop's, so the state stays 8 bytes
    /// and `Sock` 24 (issue #21: ≤ 300 B per idle connection).
    SendingFd {
        seq: u32,
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
    /// The one send in flight. Boxed: 8 bytes in every socket instead of 48 (the chain
    /// and the iovec array's pointer), for what exists only while a send is in flight
    /// (an idle connection has none; issue #21's ≤ 300 B per idle connection).
    tx: Option<Box<send::InFlight>>,
    /// The socket's rarer states, one bit each (`CLOSE_INFLIGHT` ...): seven bools
    /// took 7 bytes and made the struct 40 bytes, one byte of bits makes it 32.
    flags: SockFlags,
}

/// Bits of `Sock::flags`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SockFlags(u8);

impl SockFlags {
    #[inline]
    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    #[inline]
    fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.0 |= bit;
        } else {
            self.0 &= !bit;
        }
    }

    /// Clears `bit`, returning whether it was set (`std::mem::take` of a bool).
    #[inline]
    fn take(&mut self, bit: u8) -> bool {
        let was = self.has(bit);
        self.set(bit, false);
        was
    }
}

/// A close is in flight.
const CLOSE_INFLIGHT: u8 = 1 << 0;
/// The slot was closed (or never needs closing): release once nothing is in flight.
const SLOT_CLOSED: u8 = 1 << 1;
/// The worker knows this socket (false for connections dropped at accept).
const REPORTED: u8 = 1 << 2;
/// Waiting in its ring's `starved` list for its receive to be re-armed.
const STARVED: u8 = 1 << 3;
/// Its descriptor also sits, unannounced, in another loop's table (`on_send_fd`,
/// EOVERFLOW): the close shuts the connection down first, since closing our slot
/// alone would leave it open through the other reference.
const SHUTDOWN_ON_CLOSE: u8 = 1 << 4;
/// A `SHUT_WR` is in flight: the slot must not be closed before it completes (see
/// `shutdown_write`); a close asked for meanwhile waits in `CLOSE_AFTER_SHUTDOWN`.
const SHUTDOWN_INFLIGHT: u8 = 1 << 5;
const CLOSE_AFTER_SHUTDOWN: u8 = 1 << 6;

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
    /// The eventfd of `remote`, which owns it (and outlives us: we hold it).
    eventfd: RawFd,
    /// Fd-passing tickets: arrived before the worker claimed them, or claimed first.
    arrived: HashMap<u64, SockId>,
    /// Arrivals in order with the time their hand-off is due: one never claimed by then
    /// is closed (the sender could not deliver the hand-off), so it cannot leak.
    arrived_due: VecDeque<(Instant, u64)>,
    adopt_pair_timeout: Duration,
    claimed: std::collections::HashSet<u64>,
    /// Wraps at 2^32: a ticket only has to be unique among the hand-offs in flight.
    next_ticket: u32,
    stats: IoStats,
    cqes: Vec<(u8, u64, i32, u32)>,
    pending: Vec<Completion>,
    /// Outbound connects in progress (see `connect`).
    connects: Slab<connect::PendingConnect>,
    /// When the buffer pools were last trimmed (`BufPool::trim`).
    last_trim: Instant,
    /// Doorbells whose `MSG_RING` failed transiently: (target loop, attempts so far),
    /// sent again at the start of the next turn (see `on_doorbell_failed`).
    doorbell_retry: Vec<(usize, u64)>,
    /// Notes of unannounced descriptors whose `MSG_RING` failed transiently: (target
    /// loop, its ring, attempts so far), sent again next turn.
    lost_note_retry: Vec<(usize, usize, u64)>,
    /// The `add_udp` socket and its operations (`udp.rs`).
    udp: Option<udp::Udp>,
    /// The one `write_file` in flight (`file.rs`).
    file: Option<file::FileWrite>,
    /// Test-only failure injection: the next `n` descriptors we send report
    /// EOVERFLOW although they arrived (`on_send_fd`).
    #[cfg(test)]
    inject_send_fd_overflow: u32,
    /// Test-only failure injection: the next `n` descriptors that arrive here are
    /// not announced (their CQE is ignored, as if the kernel could not post it).
    #[cfg(test)]
    inject_lose_adopt_cqe: u32,
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
            // `backlog` (SQ) or the kernel's overflow list (CQ, moved back by the
            // enter `Ring::needs_enter` asks for), nothing is lost.
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
                sq_full: 0,
                starved: VecDeque::new(),
                known: vec![0; table_size.div_ceil(64) as usize],
                lost: 0,
                sweep_next: 0,
                sweep_inflight: 0,
                sweep_passes: 0,
                bufs,
            });
        }
        // SAFETY: eventfd with valid flags; checked for -1.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        let eventfd = owned.as_raw_fd();
        let remote = Arc::new(Remote {
            kind: RemoteKind::Uring {
                ring_fds: rings.iter().map(|r| r.uring.as_raw_fd()).collect(),
                room: rings
                    .iter()
                    .map(|r| RingRoom::new(r.table_size.saturating_sub(TABLE_HEADROOM)))
                    .collect(),
                eventfd: owned,
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
            connects: Slab::new(),
            last_trim: Instant::now(),
            doorbell_retry: Vec::new(),
            lost_note_retry: Vec::new(),
            udp: None,
            file: None,
            #[cfg(test)]
            inject_send_fd_overflow: 0,
            #[cfg(test)]
            inject_lose_adopt_cqe: 0,
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

    fn close_slot(&mut self, sock: SockId) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        if s.flags.has(CLOSE_INFLIGHT) || s.flags.has(SLOT_CLOSED) {
            return;
        }
        if s.flags.has(SHUTDOWN_INFLIGHT) {
            s.flags.set(CLOSE_AFTER_SHUTDOWN, true);
            return;
        }
        s.flags.set(CLOSE_INFLIGHT, true);
        let shutdown_first = s.flags.take(SHUTDOWN_ON_CLOSE);
        // Only what is armed: even a cancel that finds nothing walks a hash bucket of
        // the ring's armed polls (~70 long per 18k idle connections).
        let (recv_armed, send_inflight) = (s.recv_armed, s.tx.is_some());
        let (ring, slot) = (s.ring as usize, s.slot);
        // Cancel what may still be armed on the slot (the receive, a stuck send), then
        // close it; hard-linked so the close runs even when nothing was there to cancel.
        // By user_data, not by descriptor: the kernel finds a user_data in its cancel
        // hash, but matching a descriptor walks every armed poll of the ring (one per
        // idle connection), which made closes quadratic: a 100k connect storm spent
        // ~80% of the broker's CPU in `io_cancel_req_match`.
        let cancel = |kind| {
            opcode::AsyncCancel::new(ud(kind, sock as u64))
                .build()
                .flags(squeue::Flags::IO_HARDLINK)
                .user_data(ud(K_CANCEL, sock as u64))
        };
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
        if room < 4 && r.backlog.is_empty() {
            let _ = r.uring.submit();
        }
        if let Some(shutdown) = shutdown {
            r.push(shutdown);
        }
        if recv_armed {
            r.push(cancel(K_RECV));
        }
        if send_inflight {
            r.push(cancel(K_SEND));
        }
        r.push(close);
    }

    /// Releases the socket once nothing remains in flight.
    fn maybe_release(&mut self, sock: SockId) {
        let Some(s) = self.socks.get(sock as usize) else {
            return;
        };
        if s.flags.has(SLOT_CLOSED)
            && !s.recv_armed
            && s.tx.is_none()
            && !s.flags.has(CLOSE_INFLIGHT)
        {
            let (ring, room, reported) = (s.ring as usize, s.room as usize, s.flags.has(REPORTED));
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
                    s.flags.set(CLOSE_INFLIGHT, false);
                    s.flags.set(SLOT_CLOSED, true);
                    if res < 0 {
                        tracing::debug!(sock, errno = -res, "close failed");
                    }
                    // The slot is empty from here: the kernel may hand it out again.
                    let (r, slot) = (s.ring as usize, s.slot);
                    self.rings[r].set_known(slot, false);
                }
                self.maybe_release(sock);
            }
            K_SHUTDOWN => {
                let Some(s) = self.socks.get_mut(sock as usize) else {
                    return;
                };
                s.flags.set(SHUTDOWN_INFLIGHT, false);
                if s.flags.take(CLOSE_AFTER_SHUTDOWN) {
                    self.close_slot(sock);
                }
            }
            K_SEND_FD => self.on_send_fd(sock, res),
            K_SOCKET => self.on_socket(payload as usize, res),
            K_CONNECT => self.on_connect(payload as usize, res),
            K_CONNECT_CLOSE => self.on_connect_closed(payload as usize),
            K_ADOPT => self.on_adopt(ring, payload, res),
            K_LOST => self.on_lost_note(payload as usize),
            K_LOST_SENT if res < 0 => self.on_lost_note_failed(payload, -res),
            K_PROBE => self.on_probe(payload, res),
            K_ORPHAN_CLOSE => self.on_orphan_closed(payload, res),
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
            K_UDP_RECV => self.on_udp_recv(res, flags, out),
            K_UDP_SEND => self.on_udp_sent(payload, res, out),
            K_FILE_WRITE => self.on_file_cqe(false, res),
            K_FILE_SYNC => self.on_file_cqe(true, res),
            // Doorbells post a CQE here only on failure (`SKIP_SUCCESS`).
            K_DOORBELL if res < 0 => self.on_doorbell_failed(payload, -res),
            K_CANCEL | K_DOORBELL | K_LOST_SENT => {}
            other => tracing::warn!(kind = other, res, "unknown io_uring completion"),
        }
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
            flags: SockFlags(REPORTED),
        }) as SockId;
        self.rings[ring].live += 1;
        self.rings[ring].set_known(slot, true);
        sock
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
        self.listen_on(listener)
    }

    fn stop_accepting(&mut self) {
        self.stop_accepts();
    }

    fn start_recv(&mut self, sock: SockId) {
        // While receives wait in `starved` for buffers, a new socket queues behind
        // them instead of arming at once: armed at once, it took the buffers posted
        // for them, so in a storm the newest connections read their CONNECT first and
        // the oldest starved on until `connect_timeout_ms` closed them (675 of 100k).
        if let Some(s) = self.socks.get_mut(sock as usize) {
            let r = s.ring as usize;
            if !s.recv_armed
                && !s.flags.has(STARVED)
                && s.state == SockState::Open
                && !self.rings[r].starved.is_empty()
            {
                s.flags.set(STARVED, true);
                self.rings[r].starved.push_back(sock);
                return;
            }
        }
        self.arm_recv(sock);
    }

    fn send(&mut self, sock: SockId, data: crate::tx::TxChain) {
        self.queue_send(sock, data);
    }

    fn shutdown_write(&mut self, sock: SockId) {
        let Some(s) = self.socks.get(sock as usize) else {
            return;
        };
        if s.state != SockState::Open {
            return;
        }
        // The kernel always runs a shutdown in io-wq and looks the fixed slot up only
        // there, so a close issued before it ran would let it land on whatever socket
        // the next accept put in the slot (seen: a CONNACK answered EPIPE). The close
        // therefore waits for this completion (`close_after_shutdown`); its result is
        // otherwise ignored, as a failed shutdown (peer gone) leaves nothing to undo.
        if s.flags.has(SHUTDOWN_INFLIGHT) {
            return;
        }
        let e = opcode::Shutdown::new(Fixed(s.slot), libc::SHUT_WR)
            .build()
            .user_data(ud(K_SHUTDOWN, sock as u64));
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        s.flags.set(SHUTDOWN_INFLIGHT, true);
        let ring = s.ring as usize;
        self.rings[ring].push(e);
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

    fn connect(&mut self, addr: std::net::SocketAddr, token: u64) {
        self.start_connect(addr, token);
    }

    fn migrate(&mut self, sock: SockId, to: usize) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        if s.state != SockState::Open {
            return;
        }
        // A loop index beyond u16 cannot name a peer (`SendingFd::to` is a u16 too).
        let Ok(to) = u16::try_from(to) else {
            self.stats.migrate_failed += 1;
            self.pending.push(Completion::Migrated {
                sock,
                result: Err(libc::EINVAL),
            });
            return;
        };
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

    fn add_udp(&mut self, socket: std::net::UdpSocket) -> io::Result<()> {
        self.start_udp(socket)
    }

    fn send_to(&mut self, to: std::net::SocketAddr, data: bytes::Bytes) -> bool {
        self.udp_send_to(to, data)
    }

    fn write_file(
        &mut self,
        fd: RawFd,
        offset: u64,
        data: Vec<u8>,
        datasync: bool,
    ) -> Result<(), Vec<u8>> {
        self.start_file_write(fd, offset, data, datasync)
    }

    fn doorbell(&mut self, to: usize) {
        self.send_doorbell(to, 0);
    }

    fn buf(&self, buf: BufRef) -> &[u8] {
        // `offset`: a datagram's payload after the RECVMSG header and address.
        let (offset, len) = (buf.offset as usize, buf.len as usize);
        match self.rings.get(buf.group as usize) {
            Some(r) => r
                .bufs
                .slice(buf.bid, offset + len)
                .get(offset..)
                .unwrap_or(&[]),
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
        for (to, ring, attempt) in std::mem::take(&mut self.lost_note_retry) {
            self.send_lost_note(to, ring, attempt);
        }
        self.sweep_for_orphans();
        for ring in self.rings.iter_mut() {
            ring.drain_backlog();
        }
        self.reap_unpaired();
        self.rearm_starved();
        self.rearm_udp();
        self.arm_accepts();
        for r in 1..self.rings.len() {
            if self.rings[r].needs_enter() {
                if let Err(e) = self.rings[r].uring.submit() {
                    if !transient(&e) {
                        return Err(e);
                    }
                }
            }
        }
        let mut ready = self.poll_ready();
        let mut timeout = timeout;
        if !ready && timeout != Some(Duration::ZERO) {
            // About to wait: an idle moment, so the clock read costs nothing here.
            let now = Instant::now();
            if now.saturating_duration_since(self.last_trim) >= TRIM_INTERVAL {
                self.last_trim = now;
                for r in &mut self.rings {
                    r.bufs.trim();
                }
                self.shrink_handoff_tables();
                // Completions reported by the recall, or receives it starved, are
                // this turn's work: do not wait for more.
                ready = self.recall_posted_buffers(out)? || self.poll_ready();
            }
            // A pool not yet back to its idle window and pages wakes the loop for its
            // next trim: an idle loop may otherwise sleep until a keepalive deadline
            // minutes away, with a burst's buffers resident meanwhile.
            if !ready && !self.rings.iter().all(|r| r.bufs.settled()) {
                let left =
                    TRIM_INTERVAL.saturating_sub(now.saturating_duration_since(self.last_trim));
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
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
                    // Starved receives wait for a posted buffer (`rearm_starved`).
                    || (!r.starved.is_empty() && r.bufs.posted() > 0)
                    || (r.lost > 0 && r.sweep_inflight == 0)
                    || !r.uring.completion().is_empty()
                    || r.uring.submission().taskrun()
                    // Completions the kernel holds until the ring is entered.
                    || r.uring.submission().cq_overflow()
            })
    }

    fn stats(&self) -> IoStats {
        let mut stats = self.stats;
        for r in &self.rings {
            stats.sq_full += r.sq_full;
            // SAFETY: the loop is single-threaded and no `CompletionQueue` of this
            // ring is alive outside `turn`'s reaping, which cannot run while `&self`
            // is borrowed here.
            stats.cq_overflow += u64::from(unsafe { r.uring.completion_shared() }.overflow());
        }
        stats
    }

    fn name(&self) -> &'static str {
        "io_uring"
    }
}

impl Drop for UringLoop {
    fn drop(&mut self) {
        let busy = !self.socks.is_empty()
            || self.udp.is_some()
            || self.file.is_some()
            || self
                .listeners
                .iter()
                .any(|l| l.slots.iter().any(|s| s.armed));
        if !busy {
            return;
        }
        // Operations may still be in flight: the kernel tears them down asynchronously
        // after the ring fd closes, and until then may write into receive buffers and
        // accept address buffers and read send buffers. So whatever an operation may
        // still point to is leaked rather than freed: the buffer pools, the address
        // buffers of armed accepts, the data of sends in flight. Listening sockets
        // close (an accept in flight holds its own reference to the file).
        for ring in self.rings.drain(..) {
            let Ring { uring, bufs, .. } = ring;
            drop(uring);
            std::mem::forget(bufs);
        }
        for listener in std::mem::take(&mut self.listeners) {
            let Listener { socket, slots, .. } = listener;
            drop(socket);
            for slot in slots.into_iter().filter(|s| s.armed) {
                Box::leak(slot.addr);
            }
        }
        for (_, sock) in std::mem::take(&mut self.socks) {
            // The chain's bytes and the iovec array, which the kernel may still read.
            if let Some(tx) = sock.tx {
                std::mem::forget(tx);
            }
        }
        // The RECVMSG template and the headers and data of sends in flight.
        if let Some(u) = self.udp.take() {
            std::mem::forget(u);
        }
        // A file write's bytes, which the kernel may still read.
        if let Some(f) = self.file.take() {
            std::mem::forget(f.data);
        }
    }
}

#[cfg(test)]
mod tests;
