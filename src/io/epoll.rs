//! epoll backend (via `mio`, edge-triggered), behind the same seam as io_uring. Used
//! when `io_uring_setup` fails (seccomp, `kernel.io_uring_disabled`) or on request.
//!
//! Connections are plain fds here, so this backend holds at most `RLIMIT_NOFILE` minus a
//! small reserve. Reads go into one receive arena per loop, filled by every readable
//! socket in a turn and reused on the next turn (no buffer parked per idle connection).
//! Writes wait for the next `turn`, so they reach the socket after the mesh flush
//! the worker makes just before it (an ack must not overtake the retained update it
//! follows: see `shard/retained.rs`, "Order with acks"; io_uring submits at `turn`
//! likewise). Closing, shutting down or migrating a socket first writes what waits.
//! What the socket does not take waits for writability.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, IntoRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use bytes::Bytes;

use crate::tx::{TxChain, MAX_IOV};

use super::{
    BufRef, Completion, EventLoop, IoStats, LoopOptions, Remote, RemoteKind, SockId, Transfer,
};

const WAKER_TOKEN: Token = Token(usize::MAX);
/// Listener `i` has token `LISTENER_BASE - i`.
const LISTENER_BASE: usize = usize::MAX - 1;
/// The `add_udp` socket: far above socket ids (u32), below the listeners' tokens.
const UDP_TOKEN: Token = Token(1 << 40);
/// Datagrams read per turn, so a flood cannot starve the loop's other work.
const UDP_BATCH: usize = 1024;
/// Fds kept for everything that is not a connection (listeners, poll, stdio, spare).
const FD_RESERVE: u64 = 64;
/// Bound on accepts per listener per turn, so a connection storm cannot starve IO.
const ACCEPTS_PER_TURN: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The peer closed or reading failed; no further reads.
    RecvEnded,
    /// Closed or migrated: the id stays taken until `Released` is reported next turn,
    /// so it cannot be reused before the worker has seen the release.
    Dead,
}

/// One per connection, so kept to 16 bytes (a size test holds it): the send in
/// flight and an outbound connect's token live in side tables, which only sockets
/// with a send waiting or a connect in progress use. Inline they were 40 + 16 bytes
/// in every idle connection's entry (issue #21).
struct Sock {
    /// `None` once dead.
    stream: Option<TcpStream>,
    /// Key of the rest of the one send in flight in `EpollLoop::sending` (`NO_TX`: none).
    tx: u32,
    state: State,
    /// The worker called `start_recv`.
    recv_on: bool,
    /// Queued in `readable`.
    queued: bool,
    /// `tx` was handed over by `send` and not written yet (listed in `unwritten`).
    unwritten: bool,
    /// An outbound connect is in progress (its token in `EpollLoop::connecting`).
    connecting: bool,
}

/// `Sock::tx` when no send is in flight.
const NO_TX: u32 = u32::MAX;

impl Sock {
    /// Ends the send in flight, if any (written, failed, or its socket gone): its
    /// rest leaves `sending`.
    #[inline]
    fn drop_tx(&mut self, sending: &mut Slab<TxChain>) {
        if self.tx != NO_TX {
            sending.remove(std::mem::replace(&mut self.tx, NO_TX) as usize);
        }
    }
}

pub struct EpollLoop {
    id: usize,
    poll: Poll,
    events: Events,
    socks: Slab<Sock>,
    /// The send in flight of each socket that has one (`Sock::tx`): at most one per
    /// socket, so bounded by `socks`. Keeps the capacity of the most sends ever in
    /// flight at once (a fan-out), which is still below what the field cost inline.
    sending: Slab<TxChain>,
    /// Outbound connects in progress: the worker's token, reported with `Connected`
    /// when the socket turns writable.
    connecting: HashMap<SockId, u64>,
    listeners: Vec<Option<mio::net::TcpListener>>,
    listener_ready: Vec<bool>,
    accepting: bool,
    max_connections: usize,
    /// Receive arena for one turn; `BufRef`s point into it until the next `turn`.
    arena: Box<[u8]>,
    arena_used: usize,
    chunk: usize,
    /// Sockets with data still to read (arena was full, or just started).
    readable: VecDeque<SockId>,
    /// Sockets whose send waits for the next `turn` (at most one entry per socket:
    /// one send in flight each).
    unwritten: Vec<SockId>,
    /// Closed or migrated sockets to report as `Released` at the next turn.
    dead: Vec<SockId>,
    pending: Vec<Completion>,
    remote: Arc<Remote>,
    peers: Vec<Arc<Remote>>,
    /// The `add_udp` socket, and whether it may hold datagrams not read yet.
    udp: Option<mio::net::UdpSocket>,
    udp_ready: bool,
    /// Reserved fd, given up to accept-and-drop a connection when fds run out.
    spare_fd: Option<std::fs::File>,
    stats: IoStats,
}

impl EpollLoop {
    pub fn new(id: usize, opts: &LoopOptions) -> io::Result<EpollLoop> {
        let poll = Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER_TOKEN)?;
        let fd_cap = super::nofile_limit().saturating_sub(FD_RESERVE).max(1) as usize;
        let chunk = opts.recv_buf_size_bytes.max(512);
        // Enough arena for a good batch per turn without keeping much memory.
        let arena_len = chunk * 64;
        Ok(EpollLoop {
            id,
            poll,
            events: Events::with_capacity(1024),
            // Sized up front (address space only until used): growing by doubling would
            // copy, and leave the old block with the allocator, at every power of two.
            socks: Slab::with_capacity(opts.max_connections.min(fd_cap).min(1 << 20)),
            sending: Slab::new(),
            connecting: HashMap::new(),
            listeners: Vec::new(),
            listener_ready: Vec::new(),
            accepting: true,
            max_connections: opts.max_connections.min(fd_cap),
            arena: vec![0u8; arena_len].into_boxed_slice(),
            arena_used: 0,
            chunk,
            readable: VecDeque::new(),
            unwritten: Vec::new(),
            dead: Vec::new(),
            pending: Vec::new(),
            remote: Arc::new(Remote {
                kind: RemoteKind::Epoll { waker },
            }),
            peers: Vec::new(),
            udp: None,
            udp_ready: false,
            spare_fd: std::fs::File::open("/dev/null").ok(),
            stats: IoStats::default(),
        })
    }

    /// Connections this loop can hold (bounded by the fd limit).
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    fn insert(&mut self, stream: TcpStream) -> io::Result<SockId> {
        let entry = self.socks.vacant_entry();
        let sock = entry.key();
        let mut stream = stream;
        self.poll.registry().register(
            &mut stream,
            Token(sock),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(Sock {
            stream: Some(stream),
            state: State::Open,
            tx: NO_TX,
            recv_on: false,
            queued: false,
            unwritten: false,
            connecting: false,
        });
        Ok(sock as SockId)
    }

    /// A connecting socket turned writable (or failed): report how the connect ended.
    /// A failed one is removed at once: the worker never saw its id.
    fn finish_connect(&mut self, sock: SockId) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        if !s.connecting {
            return;
        }
        let Some(stream) = s.stream.as_mut() else {
            return;
        };
        let errno = match stream.take_error() {
            Ok(Some(e)) | Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => 0,
                // Spurious wake-up: still connecting.
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
            },
        };
        s.connecting = false;
        let token = self.connecting.remove(&sock).unwrap_or_default();
        if errno == 0 {
            self.pending.push(Completion::Connected {
                token,
                result: Ok(sock),
            });
            return;
        }
        let mut s = self.socks.remove(sock as usize);
        s.drop_tx(&mut self.sending);
        if let Some(mut stream) = s.stream.take() {
            let _ = self.poll.registry().deregister(&mut stream);
        }
        self.pending.push(Completion::Connected {
            token,
            result: Err(errno),
        });
    }

    fn accept_ready(&mut self, out: &mut Vec<Completion>) {
        for li in 0..self.listeners.len() {
            if !self.listener_ready[li] {
                continue;
            }
            let mut budget = ACCEPTS_PER_TURN;
            loop {
                if budget == 0 || !self.accepting {
                    break;
                }
                budget -= 1;
                let Some(listener) = self.listeners[li].as_ref() else {
                    break;
                };
                match listener.accept() {
                    Ok((stream, peer)) => {
                        if self.socks.len() >= self.max_connections {
                            self.stats.accept_dropped_full += 1;
                            tracing::warn!(
                                loop_id = self.id,
                                "connection limit reached: connection dropped"
                            );
                            drop(stream);
                            continue;
                        }
                        let _ = stream.set_nodelay(true);
                        match self.insert(stream) {
                            Ok(sock) => {
                                self.stats.accepted += 1;
                                out.push(Completion::Accepted {
                                    sock,
                                    peer,
                                    listener: li as u8,
                                });
                            }
                            Err(e) => {
                                self.stats.accept_errors += 1;
                                tracing::warn!("register accepted socket: {e}");
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.listener_ready[li] = false;
                        break;
                    }
                    Err(e)
                        if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) =>
                    {
                        // Out of fds: give up the spare to accept the connection and drop
                        // it, so it does not sit in the backlog waking us forever.
                        self.stats.accept_dropped_full += 1;
                        tracing::warn!(loop_id = self.id, "fd limit reached: connection dropped");
                        self.spare_fd = None;
                        if let Some(l) = self.listeners[li].as_ref() {
                            drop(l.accept());
                        }
                        self.spare_fd = std::fs::File::open("/dev/null").ok();
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                        ) => {}
                    Err(e) => {
                        self.stats.accept_errors += 1;
                        tracing::warn!("accept failed: {e}");
                        self.listener_ready[li] = false;
                        break;
                    }
                }
            }
        }
    }

    /// A batch of datagrams from the UDP socket into the arena.
    fn read_udp(&mut self, out: &mut Vec<Completion>) {
        if !self.udp_ready {
            return;
        }
        let Some(u) = self.udp.as_ref() else {
            return;
        };
        for _ in 0..UDP_BATCH {
            if self.arena.len() - self.arena_used < self.chunk {
                // Arena full: the rest next turn (`udp_ready` stays set).
                return;
            }
            let start = self.arena_used;
            match u.recv_from(&mut self.arena[start..start + self.chunk]) {
                Ok((n, from)) => {
                    self.arena_used += n;
                    out.push(Completion::Datagram {
                        from,
                        buf: BufRef {
                            group: 0,
                            bid: 0,
                            offset: start as u32,
                            len: n as u32,
                        },
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.udp_ready = false;
                    return;
                }
                // ECONNREFUSED and the like: an ICMP error for an earlier send,
                // reported on this read; nothing was received.
                Err(_) => {}
            }
        }
    }

    fn read_ready(&mut self, out: &mut Vec<Completion>) {
        while let Some(sock) = self.readable.pop_front() {
            if self.arena.len() - self.arena_used < self.chunk {
                // Arena full: continue with this socket next turn.
                self.readable.push_front(sock);
                return;
            }
            let Some(s) = self.socks.get_mut(sock as usize) else {
                continue;
            };
            s.queued = false;
            if !s.recv_on || s.state != State::Open {
                continue;
            }
            loop {
                if self.arena.len() - self.arena_used < self.chunk {
                    s.queued = true;
                    self.readable.push_front(sock);
                    return;
                }
                let start = self.arena_used;
                let Some(stream) = s.stream.as_mut() else {
                    break;
                };
                match stream.read(&mut self.arena[start..start + self.chunk]) {
                    Ok(0) => {
                        s.state = State::RecvEnded;
                        out.push(Completion::RecvEnd { sock, errno: 0 });
                        break;
                    }
                    Ok(n) => {
                        self.arena_used += n;
                        out.push(Completion::Recv {
                            sock,
                            buf: BufRef {
                                group: 0,
                                bid: 0,
                                offset: start as u32,
                                len: n as u32,
                            },
                        });
                        if n < self.chunk {
                            // A short read drained the socket; new data raises a new edge.
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        s.state = State::RecvEnded;
                        out.push(Completion::RecvEnd {
                            sock,
                            errno: e.raw_os_error().unwrap_or(libc::EIO),
                        });
                        break;
                    }
                }
            }
        }
    }

    /// Writes the sends handed over since the last turn.
    fn write_unwritten(&mut self) {
        let mut socks = std::mem::take(&mut self.unwritten);
        for sock in socks.drain(..) {
            self.write_first(sock);
        }
        // Keep the capacity for the next turn.
        self.unwritten = socks;
    }

    /// The first write of a send `send` deferred; nothing if it was already made
    /// (a close, shutdown or migration of the socket made it early).
    fn write_first(&mut self, sock: SockId) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        if std::mem::take(&mut s.unwritten) {
            self.write_some(sock);
        }
    }

    /// Writes as much of the pending send as the socket takes.
    fn write_some(&mut self, sock: SockId) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        let Some(tx) = self.sending.get_mut(s.tx as usize) else {
            return;
        };
        loop {
            let Some(stream) = s.stream.as_mut() else {
                return;
            };
            // One segment: `write`; several (headers and shared payloads): `writev`
            // from the segments themselves, at most `MAX_IOV` at a time.
            let res = if tx.segments() <= 1 {
                stream.write(tx.chunks().next().unwrap_or(&[]))
            } else {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let mut n = 0;
                for (slot, chunk) in iov.iter_mut().zip(tx.chunks()) {
                    *slot = IoSlice::new(chunk);
                    n += 1;
                }
                stream.write_vectored(&iov[..n])
            };
            match res {
                Ok(n) => {
                    tx.advance(n);
                    if tx.is_empty() {
                        s.drop_tx(&mut self.sending);
                        self.pending.push(Completion::SendDone { sock, errno: 0 });
                        return;
                    }
                    if n == 0 {
                        // Cannot happen on a stream socket with bytes to write; treat as
                        // a broken connection rather than spin.
                        s.drop_tx(&mut self.sending);
                        self.pending.push(Completion::SendDone {
                            sock,
                            errno: libc::EPIPE,
                        });
                        return;
                    }
                    self.stats.sends_resumed += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    s.drop_tx(&mut self.sending);
                    self.pending.push(Completion::SendDone {
                        sock,
                        errno: e.raw_os_error().unwrap_or(libc::EIO),
                    });
                    return;
                }
            }
        }
    }

    fn enqueue_read(&mut self, sock: SockId) {
        if let Some(s) = self.socks.get_mut(sock as usize) {
            if s.recv_on && !s.queued && s.state == State::Open {
                s.queued = true;
                self.readable.push_back(sock);
            }
        }
    }

    /// Takes the stream out and marks the socket dead; `Released` follows next turn.
    fn kill(&mut self, sock: SockId) -> Option<TcpStream> {
        let s = self.socks.get_mut(sock as usize)?;
        let mut stream = s.stream.take()?;
        s.state = State::Dead;
        s.drop_tx(&mut self.sending);
        if std::mem::take(&mut s.connecting) {
            self.connecting.remove(&sock);
        }
        let _ = self.poll.registry().deregister(&mut stream);
        self.dead.push(sock);
        Some(stream)
    }
}

impl EventLoop for EpollLoop {
    fn remote(&self) -> Arc<Remote> {
        self.remote.clone()
    }

    fn set_peers(&mut self, peers: Vec<Arc<Remote>>) {
        self.peers = peers;
    }

    fn add_listener(&mut self, listener: TcpListener) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        let mut l = mio::net::TcpListener::from_std(listener);
        let idx = self.listeners.len();
        self.poll
            .registry()
            .register(&mut l, Token(LISTENER_BASE - idx), Interest::READABLE)?;
        self.listeners.push(Some(l));
        // Connections may already wait in the backlog.
        self.listener_ready.push(true);
        Ok(())
    }

    fn add_udp(&mut self, socket: std::net::UdpSocket) -> io::Result<()> {
        if self.udp.is_some() {
            return Err(io::Error::other("this loop already has a UDP socket"));
        }
        socket.set_nonblocking(true)?;
        let mut s = mio::net::UdpSocket::from_std(socket);
        self.poll
            .registry()
            .register(&mut s, UDP_TOKEN, Interest::READABLE)?;
        self.udp = Some(s);
        // Datagrams may be waiting already (edge-triggered: no event for them).
        self.udp_ready = true;
        Ok(())
    }

    fn send_to(&mut self, to: SocketAddr, data: Bytes) -> bool {
        self.udp
            .as_ref()
            .is_some_and(|u| u.send_to(&data, to).is_ok())
    }

    fn stop_accepting(&mut self) {
        self.accepting = false;
        for l in self.listeners.iter_mut() {
            if let Some(mut l) = l.take() {
                let _ = self.poll.registry().deregister(&mut l);
            }
        }
    }

    fn start_recv(&mut self, sock: SockId) {
        if let Some(s) = self.socks.get_mut(sock as usize) {
            s.recv_on = true;
        }
        // Data may have arrived before; its readiness edge is gone.
        self.enqueue_read(sock);
    }

    fn send(&mut self, sock: SockId, data: TxChain) {
        let Some(s) = self.socks.get_mut(sock as usize) else {
            return;
        };
        if data.is_empty() || s.state == State::Dead {
            return;
        }
        if s.tx != NO_TX {
            // The worker keeps one send in flight per socket; if that ever slips, the
            // bytes are lost, so say so loudly rather than silently.
            self.stats.send_refused_busy += 1;
            tracing::error!(sock, "send while one is in flight: dropped");
            return;
        }
        s.tx = self.sending.insert(data) as u32;
        s.unwritten = true;
        self.unwritten.push(sock);
    }

    fn shutdown_write(&mut self, sock: SockId) {
        self.write_first(sock);
        let Some(stream) = self
            .socks
            .get(sock as usize)
            .and_then(|s| s.stream.as_ref())
        else {
            return;
        };
        if let Err(e) = stream.shutdown(std::net::Shutdown::Write) {
            // The peer is gone (ENOTCONN): the close that follows ends it anyway.
            tracing::debug!(sock, "shutdown(SHUT_WR) failed: {e}");
        }
    }

    fn close(&mut self, sock: SockId) {
        // A reply sent just before (a refusal, an alert) goes out before the close.
        self.write_first(sock);
        drop(self.kill(sock));
    }

    fn connect(&mut self, addr: std::net::SocketAddr, token: u64) {
        // mio's connect is non-blocking: EINPROGRESS, then writability says how it went.
        let result = TcpStream::connect(addr).and_then(|stream| {
            let _ = stream.set_nodelay(true);
            self.insert(stream)
        });
        match result {
            Ok(sock) => {
                if let Some(s) = self.socks.get_mut(sock as usize) {
                    s.connecting = true;
                    self.connecting.insert(sock, token);
                }
            }
            Err(e) => self.pending.push(Completion::Connected {
                token,
                result: Err(e.raw_os_error().unwrap_or(libc::EIO)),
            }),
        }
    }

    fn migrate(&mut self, sock: SockId, to: usize) {
        let _ = to;
        self.write_first(sock);
        let Some(stream) = self.kill(sock) else {
            return;
        };
        let fd = stream.into_raw_fd();
        self.pending.push(Completion::Migrated {
            sock,
            result: Ok(Transfer(fd as u64)),
        });
    }

    fn adopt(&mut self, transfer: Transfer) -> Option<SockId> {
        let fd = transfer.0 as RawFd;
        // SAFETY: the fd was detached from a loop's stream with `into_raw_fd` in `migrate`
        // and travels to exactly one `adopt`; we take ownership of it here.
        let std_stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        match self.insert(TcpStream::from_std(std_stream)) {
            Ok(sock) => Some(sock),
            Err(e) => {
                // Registration failed (fd limits): the stream was dropped and closed.
                self.stats.migrate_failed += 1;
                tracing::warn!("adopt socket: {e}");
                None
            }
        }
    }

    fn discard(&mut self, transfer: Transfer) {
        let fd = transfer.0 as RawFd;
        // SAFETY: the fd was detached in `migrate` and its hand-off never reached
        // `adopt`, so nobody else owns it; dropping the stream closes it.
        drop(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        self.stats.migrate_failed += 1;
    }

    fn doorbell(&mut self, to: usize) {
        if let Some(peer) = self.peers.get(to) {
            peer.wake();
        }
    }

    fn buf(&self, buf: BufRef) -> &[u8] {
        let start = buf.offset as usize;
        let end = start.saturating_add(buf.len as usize);
        self.arena.get(start..end).unwrap_or(&[])
    }

    fn recycle(&mut self, buf: BufRef) {
        // The arena is reset as a whole at the next turn.
        let _ = buf;
    }

    fn turn(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        self.arena_used = 0;
        // The worker calls `turn` after its mesh flush: now its sends may go out.
        self.write_unwritten();
        // Events raised between turns (`Released` from `close`) go first: an `Accepted`
        // below may reuse the same socket id.
        let ready_before = !self.pending.is_empty() || !self.dead.is_empty();
        out.append(&mut self.pending);
        for sock in self.dead.drain(..) {
            self.socks.remove(sock as usize);
            out.push(Completion::Released { sock });
        }
        let busy = ready_before
            || self.udp_ready
            || !self.readable.is_empty()
            || (self.accepting && self.listener_ready.iter().any(|r| *r));
        let timeout = if busy { Some(Duration::ZERO) } else { timeout };
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        let mut writable = Vec::new();
        let mut readable = Vec::new();
        for ev in self.events.iter() {
            let token = ev.token();
            if token == WAKER_TOKEN {
                continue;
            }
            if token == UDP_TOKEN {
                self.udp_ready = true;
                continue;
            }
            if token.0 > LISTENER_BASE - self.listeners.len() && token.0 <= LISTENER_BASE {
                self.listener_ready[LISTENER_BASE - token.0] = true;
                continue;
            }
            let sock = token.0 as SockId;
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                readable.push(sock);
            }
            if ev.is_writable() || ev.is_write_closed() {
                writable.push(sock);
            }
        }
        for sock in readable {
            self.enqueue_read(sock);
        }
        for sock in writable {
            if self.socks.get(sock as usize).is_some_and(|s| s.connecting) {
                self.finish_connect(sock);
                continue;
            }
            self.write_some(sock);
        }
        if self.accepting {
            self.accept_ready(out);
        }
        self.read_ready(out);
        self.read_udp(out);
        out.append(&mut self.pending);
        Ok(())
    }

    fn stats(&self) -> IoStats {
        self.stats
    }

    fn name(&self) -> &'static str {
        "epoll"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One per connection: the in-flight send and a connect's token are not inline.
    #[test]
    fn sock_is_16_bytes() {
        // mio's `TcpStream` is the 4-byte fd in release builds; with debug assertions
        // it also carries an 8-byte selector id.
        let limit = if cfg!(debug_assertions) { 32 } else { 16 };
        assert!(
            std::mem::size_of::<Sock>() <= limit,
            "{}",
            std::mem::size_of::<Sock>()
        );
    }

    fn accept_one(lp: &mut EpollLoop, out: &mut Vec<Completion>) -> SockId {
        for _ in 0..1000 {
            out.clear();
            lp.turn(Some(Duration::from_millis(10)), out).expect("turn");
            if let Some(sock) = out.iter().find_map(|c| match c {
                Completion::Accepted { sock, .. } => Some(*sock),
                _ => None,
            }) {
                return sock;
            }
        }
        panic!("nothing accepted");
    }

    /// The side table of sends in flight holds a send until the socket took all of
    /// it, and gives it up when the socket closes with bytes still unwritten: it
    /// never outgrows the sockets that have a send waiting.
    #[test]
    fn a_send_leaves_the_side_table_when_written_or_closed() {
        let mut lp = EpollLoop::new(0, &LoopOptions::default()).expect("loop");
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        lp.add_listener(l).expect("listen");
        let mut out = Vec::new();
        let mut small_peer = std::net::TcpStream::connect(addr).expect("connect");
        let small = accept_one(&mut lp, &mut out);
        let _stalled_peer = std::net::TcpStream::connect(addr).expect("connect");
        let stalled = accept_one(&mut lp, &mut out);

        lp.send(small, Bytes::from_static(b"connack").into());
        // Larger than the socket buffers, never read: stays in flight.
        lp.send(stalled, Bytes::from(vec![7u8; 16 << 20]).into());
        assert_eq!(lp.sending.len(), 2);
        out.clear();
        lp.turn(Some(Duration::ZERO), &mut out).expect("turn");
        assert!(
            out.iter()
                .any(|c| matches!(c, Completion::SendDone { sock, errno: 0 } if *sock == small)),
            "{out:?}"
        );
        assert_eq!(lp.sending.len(), 1, "the stalled send is still held");
        let mut got = [0u8; 7];
        small_peer.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"connack");

        lp.close(stalled);
        assert_eq!(lp.sending.len(), 0, "closed with bytes unwritten");
        assert!(lp.connecting.is_empty());
    }
}
