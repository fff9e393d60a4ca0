//! IO backends (io_uring, epoll): sockets, buffers, timers. Knows nothing of MQTT.
//!
//! Both backends sit behind [`EventLoop`], driven by one thread (the worker):
//! queue operations (`start_recv`, `send`, `close`, `migrate`, `doorbell`), then call
//! [`EventLoop::turn`], which submits everything queued in one go, waits for at least one
//! event (bounded by a timeout), and copies completions out into a `Vec<Completion>`.
//! The worker then dispatches them; received bytes stay in a loop-owned buffer until the
//! worker calls [`EventLoop::recycle`] right after copying them out.
//!
//! Sockets are named by [`SockId`], an index into the backend's own table, valid from
//! `Accepted`/`adopt` until `Released`. Rules the worker follows:
//! - at most one `send` in flight per socket (gather everything pending, send once);
//! - after `close` or `migrate`, no further operations on the socket; wait for `Released`.
//! - completions are in causal order: the `Released` of an id comes before any
//!   `Accepted`/`Adopted` reusing it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Listen backlog of every listener (the kernel caps it at `net.core.somaxconn`). It
/// bounds how many connections a multishot accept takes before the loop reads them.
pub const LISTEN_BACKLOG: i32 = 4096;
pub mod datadir;
pub mod epoll;
pub mod store_thread;
pub mod uring;

/// A socket owned by one loop; index into that loop's socket table.
pub type SockId = u32;

/// Received bytes held by the loop until [`EventLoop::recycle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufRef {
    /// io_uring: ring index; epoll: unused.
    pub(crate) group: u16,
    /// io_uring: buffer id; epoll: unused.
    pub(crate) bid: u16,
    /// epoll: offset into the loop's receive arena.
    pub(crate) offset: u32,
    pub(crate) len: u32,
}

impl BufRef {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Names a socket in flight between two loops. io_uring: a ticket that pairs the
/// descriptor sent with `MSG_RING` with the handoff sent over the mesh; epoll: the raw fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transfer(pub u64);

/// An event copied out of the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// A new connection; nothing is read until `start_recv`. `peer` is `0.0.0.0:0` when
    /// unknown (io_uring multishot accepts, `LoopOptions::accept_peer_addr` off).
    /// `listener`: the index of the listener that accepted it, in `add_listener` order
    /// (the worker tells the MQTT listeners from the HTTP one by it).
    Accepted {
        sock: SockId,
        peer: SocketAddr,
        listener: u8,
    },
    /// A descriptor sent by another loop arrived after the worker's `adopt` returned `None`.
    Adopted { transfer: Transfer, sock: SockId },
    /// Bytes received; `recycle(buf)` once copied.
    Recv { sock: SockId, buf: BufRef },
    /// No more bytes will be received: `errno` 0 is an orderly EOF.
    RecvEnd { sock: SockId, errno: i32 },
    /// The one send in flight finished: all bytes written, or failed with `errno`.
    SendDone { sock: SockId, errno: i32 },
    /// `migrate` finished: `Ok` carries what the target loop must `adopt`, and
    /// `Released` follows. `Err(errno)`: the socket never left (ENFILE: every table
    /// of the target loop is full); it stays open here, not receiving, so the worker
    /// can `send` a last reply, and must `close` it.
    Migrated {
        sock: SockId,
        result: Result<Transfer, i32>,
    },
    /// No operation remains on `sock`; its id may be reused.
    Released { sock: SockId },
    /// A datagram on the loop's UDP socket (`add_udp`) from `from`; `recycle(buf)` once
    /// copied.
    Datagram { from: SocketAddr, buf: BufRef },
    /// A `send_to` the kernel refused after taking it (errno).
    SendToFailed { errno: i32 },
    /// The outbound connection `connect(addr, token)` asked for: `Ok` is an open
    /// socket, not receiving until `start_recv`; `Err(errno)` left nothing behind.
    Connected {
        token: u64,
        result: Result<SockId, i32>,
    },
    /// The `write_file` in flight finished: `errno` 0 when every byte was written,
    /// `sync_errno` 0 when the fdatasync asked for succeeded (or none was asked).
    FileWritten { errno: i32, sync_errno: i32 },
}

/// Counters for what the backend dropped or failed; reported at shutdown.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoStats {
    pub accepted: u64,
    /// Connections dropped because the descriptor table (or fd limit) was full.
    pub accept_dropped_full: u64,
    pub accept_errors: u64,
    /// io_uring multishot accepts armed (each listener re-arms its one after it ended:
    /// its ring ran low, or an earlier ring has room again).
    pub accept_multi_armed: u64,
    /// Multishot receives that ran out of provided buffers and were re-armed.
    pub recv_nobufs: u64,
    pub migrate_failed: u64,
    /// Hand-offs refused because every table of the target loop was full.
    pub migrate_refused_full: u64,
    /// Sockets sent by another loop whose hand-off never came: closed after
    /// `LoopOptions::adopt_pair_timeout_ms`.
    pub adopt_unpaired_reaped: u64,
    /// Hand-offs whose descriptor the kernel installed in the target's table without
    /// telling it (`MSG_RING` EOVERFLOW): refused and shut down; the target is told,
    /// and closes the copy (`migrate_slot_reclaimed` there).
    pub migrate_descriptor_lost: u64,
    /// Descriptors installed here unannounced (another loop's EOVERFLOW) that a sweep
    /// of the table found and closed, giving their slot back.
    pub migrate_slot_reclaimed: u64,
    /// Doorbells sent again after a transient `MSG_RING` failure.
    pub doorbell_retried: u64,
    /// Doorbells given up on (permanent error, or too many attempts).
    pub doorbell_failed: u64,
    /// `send` calls refused because a send was already in flight (a worker bug: the
    /// bytes are lost).
    pub send_refused_busy: u64,
    /// Sends resubmitted with the rest of their bytes: a short write, or a chain
    /// of more segments than one vectored send takes (`tx::MAX_IOV`).
    pub sends_resumed: u64,
    /// Completions the kernel could not post because a completion queue was full
    /// (io_uring's CQ overflow counter, summed over the loop's rings).
    pub cq_overflow: u64,
    /// Submissions that found the submission queue full and waited in the backlog.
    pub sq_full: u64,
}

/// How a backend is sized. Derived from `Config` by the worker.
#[derive(Debug, Clone)]
pub struct LoopOptions {
    /// Connections this loop must be able to hold.
    pub max_connections: usize,
    /// Receive buffer size in bytes (one provided buffer / one read chunk).
    pub recv_buf_size_bytes: usize,
    /// Provided buffers per io_uring ring (power of two, <= 32768).
    pub recv_bufs_per_ring: usize,
    /// Submission queue entries per ring.
    pub sq_entries: u32,
    /// Cap on registered file table slots per ring; 0: `RLIMIT_NOFILE` (the kernel's cap).
    pub table_slots_max: u32,
    /// How long a socket sent by another loop may wait for its hand-off (the mesh
    /// message) before it is closed: the sender may have failed to deliver it.
    pub adopt_pair_timeout_ms: u64,
    /// Accepted connections must carry their peer address (the per-IP limit counts
    /// it). io_uring: single-shot accepts, each with its own sockaddr buffer; otherwise
    /// one multishot accept per listener, whose connections report `0.0.0.0:0` (each
    /// ring's last slots still go through single-shot accepts, which report it).
    pub accept_peer_addr: bool,
}

impl Default for LoopOptions {
    fn default() -> Self {
        LoopOptions {
            max_connections: 10_000,
            recv_buf_size_bytes: 4096,
            recv_bufs_per_ring: 512,
            sq_entries: 1024,
            table_slots_max: 0,
            adopt_pair_timeout_ms: 5_000,
            accept_peer_addr: false,
        }
    }
}

/// The per-core event loop, one implementation per backend.
pub trait EventLoop {
    /// The handle other threads use to wake this loop or send it sockets.
    fn remote(&self) -> std::sync::Arc<Remote>;
    /// Handles of every loop (including this one), indexed by loop id.
    fn set_peers(&mut self, peers: Vec<std::sync::Arc<Remote>>);
    /// Starts accepting on `listener` (already bound and listening).
    fn add_listener(&mut self, listener: std::net::TcpListener) -> io::Result<()>;
    /// Stops accepting: listeners are closed; pending accepts are cancelled.
    fn stop_accepting(&mut self);
    /// Starts receiving on an accepted or adopted socket.
    fn start_recv(&mut self, sock: SockId);
    /// Writes all of `data`; at most one send in flight per socket.
    fn send(&mut self, sock: SockId, data: crate::tx::TxChain);
    /// Shuts down the write side (the peer reads EOF after the bytes already sent);
    /// receiving goes on. Call only when no send is in flight: the shutdown must
    /// follow the last bytes. For a lingering close (see `worker::linger`).
    fn shutdown_write(&mut self, sock: SockId);
    /// Stops receiving, closes the socket, then reports `Released`.
    fn close(&mut self, sock: SockId);
    /// Opens an outbound TCP connection to `addr` without blocking (the MQTT bridge's
    /// link to a remote broker); reports `Connected` with `token`.
    fn connect(&mut self, addr: SocketAddr, token: u64);
    /// Stops receiving and hands the socket to loop `to`; reports `Migrated` then
    /// `Released` (or, when refused, `Migrated` with an error and the socket kept
    /// open). Bytes received before the receive stopped are still reported.
    fn migrate(&mut self, sock: SockId, to: usize);
    /// Claims a socket sent by another loop. `None`: it has not arrived yet and will be
    /// reported as `Completion::Adopted`. Call only after dispatching every completion
    /// of the last `turn`: the id returned may be one whose `Released` was among them.
    fn adopt(&mut self, transfer: Transfer) -> Option<SockId>;
    /// The hand-off naming `transfer` (from `Migrated`) could not be delivered to the
    /// target loop. epoll: closes the fd, which nobody else will; io_uring: nothing, the
    /// target closes the unpaired socket after `adopt_pair_timeout_ms`.
    fn discard(&mut self, transfer: Transfer);
    /// The worker gave up on `transfer`, claimed with `adopt` (which returned `None`),
    /// because its socket did not come within `adopt_pair_timeout_ms`: typically the
    /// hand-off arrived after this loop had closed the socket as unpaired. Forget the
    /// claim; a socket that still arrives for it is then closed as unpaired. Default:
    /// nothing, for a backend that keeps no claims (epoll adopts at once).
    fn forget(&mut self, transfer: Transfer) {
        let _ = transfer;
    }
    /// Starts receiving on `socket` (bound; one per loop: the MQTT-SN gateway's), each
    /// datagram reported as `Datagram`. io_uring: one multishot `RECVMSG` into the
    /// provided buffers of the loop's first ring; epoll: non-blocking `recv_from` into
    /// the receive arena, a bounded batch per turn.
    fn add_udp(&mut self, socket: std::net::UdpSocket) -> io::Result<()>;
    /// Sends one datagram on the `add_udp` socket. `false`: dropped at once (no UDP
    /// socket, too many sends in flight, or the socket buffer is full); a failure
    /// the kernel reports later comes as `SendToFailed`.
    fn send_to(&mut self, to: SocketAddr, data: bytes::Bytes) -> bool;
    /// Writes all of `data` at `offset` of the regular file `fd`, then, when
    /// `datasync`, fdatasyncs it, without blocking the loop; reports `FileWritten`.
    /// One at a time; `fd` must stay open until the completion. io_uring: on the
    /// loop's own ring, the write linked to an `IORING_FSYNC_DATASYNC`. `Err(data)`:
    /// not started (a write is in flight, or the backend has no file IO: epoll, whose
    /// loops write their log through a disk thread instead).
    fn write_file(
        &mut self,
        fd: RawFd,
        offset: u64,
        data: Vec<u8>,
        datasync: bool,
    ) -> Result<(), Vec<u8>> {
        let _ = (fd, offset, datasync);
        Err(data)
    }
    /// Wakes loop `to` (which published "parked").
    fn doorbell(&mut self, to: usize);
    /// Bytes of a `Recv` completion.
    fn buf(&self, buf: BufRef) -> &[u8];
    /// Gives a receive buffer back.
    fn recycle(&mut self, buf: BufRef);
    /// Submits everything queued, waits up to `timeout` (`None`: until an event) when
    /// nothing is ready, and appends the completions to `out`.
    fn turn(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()>;
    /// Whether a non-blocking `turn` may find something, checked without a system
    /// call where the backend can (io_uring reads its completion queues). Polled by a
    /// busy-polling loop; `true` when the backend cannot tell without a system call.
    fn poll_ready(&mut self) -> bool {
        true
    }
    fn stats(&self) -> IoStats;
    /// Backend name for logs.
    fn name(&self) -> &'static str;
}

/// What other threads hold of a loop: enough to wake it and to send it sockets.
#[derive(Debug)]
pub struct Remote {
    pub(crate) kind: RemoteKind,
}

#[derive(Debug)]
pub(crate) enum RemoteKind {
    Uring {
        /// Fds of the loop's rings; ring 0 is the one that blocks.
        ring_fds: Vec<RawFd>,
        /// Per ring (same index): table slots still free for new sockets. Accepts
        /// (owner) and descriptors sent by other loops (`MSG_RING`) both reserve here
        /// before taking a slot, so a connection storm from several loops can never
        /// overrun a table; see [`RingRoom`].
        room: Vec<RingRoom>,
        /// Wakes ring 0 from threads without a ring (signal handling, and `main` after a
        /// loop failed). Owned here rather than by the loop: a handle may outlive the
        /// loop (`main` wakes every loop when one fails, some of them already gone), and
        /// a number the loop had closed could by then name another file.
        eventfd: OwnedFd,
    },
    Epoll {
        waker: mio::Waker,
    },
}

/// Free slots of one ring's registered file table, shared by the owner loop and every
/// loop that sends it descriptors. Counted in deltas, never stored: a slot is taken
/// ([`RingRoom::try_take`]) before an accept is armed or a descriptor is sent, and given
/// back ([`RingRoom::give_back`]) when the socket using it is released, the accept ends
/// without a socket, or the send fails. It may dip below zero only when the owner keeps
/// an accept armed on a full ring (that connection is closed at once, in the headroom).
/// Padded so two rings' counters never share a cache line (written by different loops).
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct RingRoom(AtomicI64);

impl RingRoom {
    pub(crate) fn new(slots: u32) -> RingRoom {
        RingRoom(AtomicI64::new(i64::from(slots)))
    }

    /// Takes one slot when one is free.
    pub(crate) fn try_take(&self) -> bool {
        let mut cur = self.0.load(Ordering::Relaxed);
        while cur > 0 {
            match self
                .0
                .compare_exchange_weak(cur, cur - 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
        false
    }

    /// Takes one slot even when none is free (the owner's over-capacity accept).
    pub(crate) fn take_anyway(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn give_back(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn free(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }
}

impl Remote {
    /// Wakes the loop from any thread. Slower than `EventLoop::doorbell`; for signals.
    pub fn wake(&self) {
        match &self.kind {
            RemoteKind::Uring { eventfd, .. } => {
                let one: u64 = 1;
                // SAFETY: writes 8 bytes from a live u64 to the eventfd this handle owns,
                // open as long as `self` (a loop that has exited leaves it unread: harmless).
                let rc =
                    unsafe { libc::write(eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
                if rc != 8 {
                    tracing::debug!("eventfd wake failed: {}", io::Error::last_os_error());
                }
            }
            RemoteKind::Epoll { waker } => {
                if let Err(e) = waker.wake() {
                    tracing::debug!("waker failed: {e}");
                }
            }
        }
    }

    /// Reserves a table slot in the first of this loop's rings that has one (rings fill
    /// in order, so later rings' buffer pools stay untouched). `None`: every table is
    /// full (or this is not an io_uring loop); the caller refuses the hand-off.
    pub(crate) fn reserve_adopt_slot(&self) -> Option<(RawFd, usize)> {
        match &self.kind {
            RemoteKind::Uring { ring_fds, room, .. } => room
                .iter()
                .position(RingRoom::try_take)
                .and_then(|r| ring_fds.get(r).map(|fd| (*fd, r))),
            RemoteKind::Epoll { .. } => None,
        }
    }

    /// Returns a slot taken with `reserve_adopt_slot` whose descriptor never arrived.
    pub(crate) fn release_adopt_slot(&self, ring: usize) {
        if let RemoteKind::Uring { room, .. } = &self.kind {
            if let Some(r) = room.get(ring) {
                r.give_back();
            }
        }
    }

    /// Free table slots per ring (io_uring; empty for epoll). For tests and logs.
    pub fn ring_room(&self) -> Vec<i64> {
        match &self.kind {
            RemoteKind::Uring { room, .. } => room.iter().map(RingRoom::free).collect(),
            RemoteKind::Epoll { .. } => Vec::new(),
        }
    }
}

/// TCP timers that find dead peers: keepalive probes on an idle connection (a client
/// with MQTT keepalive 0 that vanished behind a NAT would otherwise hold its socket
/// and session forever) and `TCP_USER_TIMEOUT`, how long sent data may stay
/// unacknowledged (without it, retransmissions to a vanished peer go on for about
/// 15 minutes, `tcp_retries2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpTimers {
    /// Idle time before the first probe; 0 = no keepalive.
    pub keepalive_idle_s: u32,
    pub keepalive_interval_s: u32,
    pub keepalive_count: u32,
    /// 0 = the kernel's default (retransmissions decide).
    pub user_timeout_ms: u32,
}

/// Sets `timers` on a listening socket (before `listen`, so no connection in the
/// backlog misses them). Linux copies `SO_KEEPALIVE`, `TCP_KEEPIDLE`,
/// `TCP_KEEPINTVL`, `TCP_KEEPCNT` and `TCP_USER_TIMEOUT` from the listener to every
/// socket it accepts, so both backends get them with no work per connection. For
/// io_uring the alternative would be `opcode::SetSockOpt` (io-uring 0.7.16: an
/// `IORING_OP_URING_CMD` with `SOCKET_URING_OP_SETSOCKOPT`, kernel 6.7+), five SQEs
/// per accepted connection, since its accepted sockets are direct descriptors that
/// `setsockopt(2)` cannot name. (`io::tests` checks the inheritance on this kernel.)
pub fn set_tcp_timers(listener: &impl std::os::fd::AsFd, timers: &TcpTimers) -> io::Result<()> {
    let sock = socket2::SockRef::from(listener);
    if timers.keepalive_idle_s == 0 {
        sock.set_keepalive(false)?;
    } else {
        let ka = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(u64::from(timers.keepalive_idle_s)))
            .with_interval(Duration::from_secs(u64::from(timers.keepalive_interval_s)))
            .with_retries(timers.keepalive_count);
        sock.set_tcp_keepalive(&ka)?;
    }
    let user_timeout = (timers.user_timeout_ms > 0)
        .then(|| Duration::from_millis(u64::from(timers.user_timeout_ms)));
    sock.set_tcp_user_timeout(user_timeout)
}

/// Whether this process may use io_uring: `io_uring_setup` can fail with ENOSYS
/// (old kernel), EPERM (seccomp, `kernel.io_uring_disabled`) or ENOMEM.
pub fn uring_available() -> Result<(), io::Error> {
    uring::probe_support().map(|_| ())
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
/// A registered file table may hold at most this many slots, and epoll connections
/// are plain fds, so both backends are bounded by it.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit; raising soft up to hard needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
    }
    Ok(lim.rlim_cur)
}

/// The current soft `RLIMIT_NOFILE`.
pub fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// Reads a socket address the kernel wrote into `storage`.
pub(crate) fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is
            // large and aligned enough for.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
