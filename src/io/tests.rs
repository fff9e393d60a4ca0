//! Backend tests over loopback: the same echo server drives both backends.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::epoll::EpollLoop;
use super::uring::UringLoop;
use super::*;

const WAIT: Duration = Duration::from_secs(10);

/// io_uring in the mode `opts` asks for (multishot accept by default).
fn new_uring(id: usize, opts: &LoopOptions) -> io::Result<Box<dyn EventLoop>> {
    Ok(Box::new(UringLoop::new(id, opts)?))
}

/// io_uring with single-shot accepts that report the peer address (the per-IP limit).
fn new_uring_single(id: usize, opts: &LoopOptions) -> io::Result<Box<dyn EventLoop>> {
    let opts = LoopOptions {
        accept_peer_addr: true,
        ..opts.clone()
    };
    Ok(Box::new(UringLoop::new(id, &opts)?))
}

/// Both io_uring accept modes.
fn uring_modes() -> [(&'static str, Ctor); 2] {
    [("uring", new_uring), ("uring-single", new_uring_single)]
}

fn new_epoll(id: usize, opts: &LoopOptions) -> io::Result<Box<dyn EventLoop>> {
    Ok(Box::new(EpollLoop::new(id, opts)?))
}

type Ctor = fn(usize, &LoopOptions) -> io::Result<Box<dyn EventLoop>>;

fn backends() -> Vec<(&'static str, Ctor)> {
    let mut v: Vec<(&'static str, Ctor)> = vec![("epoll", new_epoll)];
    if uring_available().is_ok() {
        v.extend(uring_modes());
    } else {
        // The io_uring tests need io_uring; say so loudly instead of passing silently.
        panic!(
            "io_uring unavailable on this machine: {:?}",
            uring_available()
        );
    }
    v
}

/// What the echo server saw, returned when it stops.
#[derive(Debug, Default)]
struct EchoReport {
    accepted: usize,
    released: usize,
    bytes_in: usize,
    /// `Migrated` with an error: the hand-off was refused; the socket was answered
    /// with `REFUSED_REPLY` and closed.
    migrate_refused: usize,
    /// `Accepted` with a loopback peer address, and with none (`0.0.0.0:0`).
    peers_known: usize,
    peers_unknown: usize,
    stats: IoStats,
}

/// What the echo server sends on a socket whose hand-off was refused.
const REFUSED_REPLY: u8 = 0xEE;

/// Echo server behaviour knobs.
#[derive(Clone, Copy, Default)]
struct EchoMode {
    /// Close the connection after echoing this many bytes.
    close_after: Option<usize>,
    /// Hand every accepted connection to loop 1 (loop 0 only).
    migrate_to: Option<usize>,
    /// Migrate, then drop the hand-off (as a worker does when the mesh is full).
    drop_transfers: bool,
}

/// A minimal worker: echo every byte back, one send in flight per socket.
struct Echo {
    mode: EchoMode,
    queued: HashMap<SockId, BytesMut>,
    sending: HashSet<SockId>,
    closing: HashSet<SockId>,
    echoed: HashMap<SockId, usize>,
    /// Socket ids between Accepted/Adopted and Released: an id must never be reported
    /// again before its release.
    live: HashSet<SockId>,
    report: EchoReport,
}

impl Echo {
    fn new(mode: EchoMode) -> Echo {
        Echo {
            mode,
            queued: HashMap::new(),
            sending: HashSet::new(),
            closing: HashSet::new(),
            echoed: HashMap::new(),
            live: HashSet::new(),
            report: EchoReport::default(),
        }
    }

    fn turn(
        &mut self,
        lp: &mut dyn EventLoop,
        adopted_out: &mpsc::Sender<Transfer>,
        adopt_in: &mpsc::Receiver<Transfer>,
    ) {
        let mut out = Vec::new();
        lp.turn(Some(Duration::from_millis(20)), &mut out)
            .expect("turn");
        for c in out {
            match c {
                Completion::Accepted { sock, peer } => {
                    assert!(self.live.insert(sock), "accepted sock {sock} still live");
                    if peer.ip().is_loopback() {
                        self.report.peers_known += 1;
                    } else {
                        assert_eq!(peer, SocketAddr::from(([0, 0, 0, 0], 0)));
                        self.report.peers_unknown += 1;
                    }
                    if let Some(to) = self.mode.migrate_to {
                        lp.migrate(sock, to);
                    } else {
                        self.report.accepted += 1;
                        lp.start_recv(sock);
                    }
                }
                Completion::Adopted { sock, .. } => {
                    assert!(self.live.insert(sock), "adopted sock {sock} still live");
                    self.report.accepted += 1;
                    lp.start_recv(sock);
                }
                Completion::Recv { sock, buf } => {
                    let data = lp.buf(buf).to_vec();
                    lp.recycle(buf);
                    self.report.bytes_in += data.len();
                    self.queued
                        .entry(sock)
                        .or_default()
                        .extend_from_slice(&data);
                }
                Completion::RecvEnd { sock, .. } => {
                    self.closing.insert(sock);
                }
                Completion::SendDone { sock, errno } => {
                    self.sending.remove(&sock);
                    if errno != 0 {
                        self.closing.insert(sock);
                        self.queued.remove(&sock);
                    }
                }
                Completion::Migrated { sock, result } => match result {
                    Ok(t) if self.mode.drop_transfers => lp.discard(t),
                    Ok(t) => adopted_out.send(t).expect("adopt channel"),
                    Err(_) => {
                        // The socket stayed here: answer, then close (as the worker
                        // refuses the CONNECT).
                        self.report.migrate_refused += 1;
                        self.sending.insert(sock);
                        lp.send(sock, Bytes::from_static(&[REFUSED_REPLY]));
                        self.closing.insert(sock);
                    }
                },
                Completion::Released { sock } => {
                    assert!(self.live.remove(&sock), "released sock {sock} was not live");
                    self.report.released += 1;
                    self.queued.remove(&sock);
                    self.sending.remove(&sock);
                    self.closing.remove(&sock);
                    self.echoed.remove(&sock);
                }
            }
        }
        // Like the worker: adopt only after this turn's completions were dispatched.
        while let Ok(t) = adopt_in.try_recv() {
            if let Some(sock) = lp.adopt(t) {
                assert!(self.live.insert(sock), "adopted sock {sock} still live");
                self.report.accepted += 1;
                lp.start_recv(sock);
            }
        }
        // Flush: one send per socket per turn with everything queued.
        let socks: Vec<SockId> = self.queued.keys().copied().collect();
        for sock in socks {
            if self.sending.contains(&sock) {
                continue;
            }
            let Some(q) = self.queued.get_mut(&sock) else {
                continue;
            };
            if q.is_empty() {
                continue;
            }
            let data: Bytes = q.split().freeze();
            let n = data.len();
            self.sending.insert(sock);
            lp.send(sock, data);
            let e = self.echoed.entry(sock).or_default();
            *e += n;
            if let Some(limit) = self.mode.close_after {
                if *e >= limit {
                    self.closing.insert(sock);
                }
            }
        }
        let closing: Vec<SockId> = self.closing.iter().copied().collect();
        for sock in closing {
            if !self.sending.contains(&sock) && self.queued.get(&sock).is_none_or(|q| q.is_empty())
            {
                self.closing.remove(&sock);
                lp.close(sock);
            }
        }
    }
}

struct Server {
    addr: SocketAddr,
    remotes: Vec<Arc<Remote>>,
    stop: Arc<AtomicBool>,
    handles: Vec<thread::JoinHandle<EchoReport>>,
}

impl Server {
    fn stop(self) -> Vec<EchoReport> {
        self.stop.store(true, Ordering::SeqCst);
        self.handles
            .into_iter()
            .map(|h| h.join().expect("server thread"))
            .collect()
    }
}

/// Starts `loops` echo loops; loop 0 accepts on a fresh 127.0.0.1 port.
fn start(ctor: Ctor, opts: LoopOptions, loops: usize, mode: EchoMode) -> Server {
    start_each(ctor, vec![opts; loops], mode)
}

/// As `start`, with options per loop.
fn start_each(ctor: Ctor, loop_opts: Vec<LoopOptions>, mode: EchoMode) -> Server {
    let loops = loop_opts.len();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = Arc::new(AtomicBool::new(false));
    let (remote_tx, remote_rx) = mpsc::channel();
    let mut peer_txs = Vec::new();
    let (adopt_txs, adopt_rxs): (Vec<_>, Vec<_>) =
        (0..loops).map(|_| mpsc::channel::<Transfer>()).unzip();
    let mut listener = Some(listener);
    let mut handles = Vec::new();
    for (id, adopt_in) in adopt_rxs.into_iter().enumerate() {
        let (peers_tx, peers_rx) = mpsc::channel::<Vec<Arc<Remote>>>();
        peer_txs.push(peers_tx);
        let remote_tx = remote_tx.clone();
        let stop = stop.clone();
        let opts = loop_opts[id].clone();
        let l = if id == 0 { listener.take() } else { None };
        let adopt_out = adopt_txs[mode.migrate_to.unwrap_or(0)].clone();
        let mode = if id == 0 {
            mode
        } else {
            EchoMode {
                migrate_to: None,
                drop_transfers: false,
                ..mode
            }
        };
        handles.push(thread::spawn(move || {
            let mut lp = ctor(id, &opts).expect("loop");
            remote_tx.send((id, lp.remote())).expect("remote");
            let peers = peers_rx.recv().expect("peers");
            lp.set_peers(peers);
            if let Some(l) = l {
                lp.add_listener(l).expect("listen");
            }
            let mut echo = Echo::new(mode);
            while !stop.load(Ordering::SeqCst) {
                echo.turn(lp.as_mut(), &adopt_out, &adopt_in);
            }
            echo.report.stats = lp.stats();
            echo.report
        }));
    }
    let mut remotes: Vec<(usize, Arc<Remote>)> = (0..loops)
        .map(|_| remote_rx.recv().expect("remote"))
        .collect();
    remotes.sort_by_key(|(id, _)| *id);
    let remotes: Vec<Arc<Remote>> = remotes.into_iter().map(|(_, r)| r).collect();
    for tx in peer_txs {
        tx.send(remotes.clone()).expect("peers");
    }
    Server {
        addr,
        remotes,
        stop,
        handles,
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    s
}

fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).expect("read echo");
    buf
}

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed * 7) % 251) as u8)
        .collect()
}

fn opts() -> LoopOptions {
    LoopOptions {
        max_connections: 1000,
        recv_buf_size_bytes: 4096,
        recv_bufs_per_ring: 64,
        sq_entries: 256,
        table_slots_max: 0,
        adopt_pair_timeout_ms: 5_000,
        accept_peer_addr: false,
    }
}

#[test]
fn echo_one_connection() {
    for (name, ctor) in backends() {
        let srv = start(ctor, opts(), 1, EchoMode::default());
        let mut c = connect(srv.addr);
        c.write_all(b"hello ringmq").expect("write");
        assert_eq!(read_exact(&mut c, 12), b"hello ringmq", "{name}");
        drop(c);
        let reports = srv.stop();
        assert_eq!(reports[0].accepted, 1, "{name}");
        assert_eq!(reports[0].bytes_in, 12, "{name}");
    }
}

#[test]
fn echo_many_connections() {
    for (name, ctor) in backends() {
        let srv = start(ctor, opts(), 1, EchoMode::default());
        let mut conns: Vec<TcpStream> = (0..200).map(|_| connect(srv.addr)).collect();
        for (i, c) in conns.iter_mut().enumerate() {
            c.write_all(&pattern(i, 100 + i)).expect("write");
        }
        for (i, c) in conns.iter_mut().enumerate() {
            assert_eq!(
                read_exact(c, 100 + i),
                pattern(i, 100 + i),
                "{name} conn {i}"
            );
        }
        drop(conns);
        // Give the server time to see every close before stopping it.
        thread::sleep(Duration::from_millis(200));
        let reports = srv.stop();
        assert_eq!(reports[0].accepted, 200, "{name}");
        assert_eq!(reports[0].released, 200, "{name}");
        // Tables of 1000 (margin 256): every one through the multishot accept.
        let peers = (reports[0].peers_known, reports[0].peers_unknown);
        if name == "uring" {
            assert_eq!(peers, (0, 200), "{name}");
        } else {
            assert_eq!(peers, (200, 0), "{name}");
        }
        assert_eq!(
            reports[0].bytes_in,
            (0..200).map(|i| 100 + i).sum::<usize>(),
            "{name}"
        );
    }
}

#[test]
fn buffer_ring_reuse_large_transfer() {
    // 8 MiB through a pool of 16 × 4 KiB buffers: every buffer is reused hundreds of
    // times, and running out of buffers (ENOBUFS) re-arms the receive.
    for (name, ctor) in backends() {
        let o = LoopOptions {
            recv_bufs_per_ring: 16,
            ..opts()
        };
        let srv = start(ctor, o, 1, EchoMode::default());
        let total = 8 << 20;
        let data = pattern(3, total);
        let mut c = connect(srv.addr);
        let mut w = c.try_clone().expect("clone");
        let d2 = data.clone();
        let writer = thread::spawn(move || w.write_all(&d2).expect("write"));
        let got = read_exact(&mut c, total);
        writer.join().expect("writer");
        assert!(got == data, "{name}: echoed bytes differ");
        drop(c);
        let reports = srv.stop();
        assert_eq!(reports[0].bytes_in, total, "{name}");
        eprintln!("{name}: recv_nobufs={}", reports[0].stats.recv_nobufs);
    }
}

#[test]
fn server_close_after_echo_gives_eof() {
    for (name, ctor) in backends() {
        let mode = EchoMode {
            close_after: Some(5),
            ..Default::default()
        };
        let srv = start(ctor, opts(), 1, mode);
        let mut c = connect(srv.addr);
        c.write_all(b"bye!!").expect("write");
        let mut all = Vec::new();
        c.read_to_end(&mut all).expect("read to eof");
        assert_eq!(all, b"bye!!", "{name}");
        thread::sleep(Duration::from_millis(100));
        let reports = srv.stop();
        assert_eq!(reports[0].released, 1, "{name}");
    }
}

#[test]
fn client_close_releases_socket() {
    for (name, ctor) in backends() {
        let srv = start(ctor, opts(), 1, EchoMode::default());
        let c = connect(srv.addr);
        // Make sure the server accepted before closing.
        let mut c = c;
        c.write_all(b"x").expect("write");
        assert_eq!(read_exact(&mut c, 1), b"x");
        drop(c);
        thread::sleep(Duration::from_millis(200));
        let reports = srv.stop();
        assert_eq!((reports[0].accepted, reports[0].released), (1, 1), "{name}");
    }
}

#[test]
fn connection_limit_drops_and_keeps_running() {
    for (name, ctor) in backends() {
        let o = LoopOptions {
            max_connections: 4,
            ..opts()
        };
        let srv = start(ctor, o, 1, EchoMode::default());
        let mut kept = Vec::new();
        for i in 0..4 {
            let mut c = connect(srv.addr);
            c.write_all(&[i]).expect("write");
            assert_eq!(read_exact(&mut c, 1), [i], "{name}");
            kept.push(c);
        }
        // Two more: accepted by the kernel, dropped by the loop.
        for _ in 0..2 {
            let mut c = connect(srv.addr);
            let _ = c.write_all(b"z");
            let mut buf = [0u8; 1];
            let r = c.read(&mut buf);
            assert!(
                matches!(r, Ok(0) | Err(_)),
                "{name}: over-limit connection got {r:?}"
            );
        }
        // After one closes, a new connection is served again.
        drop(kept.pop());
        thread::sleep(Duration::from_millis(200));
        let mut c = connect(srv.addr);
        c.write_all(b"ok").expect("write");
        assert_eq!(read_exact(&mut c, 2), b"ok", "{name}");
        drop(c);
        drop(kept);
        let reports = srv.stop();
        assert_eq!(reports[0].stats.accept_dropped_full, 2, "{name}");
        assert_eq!(reports[0].accepted, 5, "{name}");
    }
}

#[test]
fn migrate_between_loops() {
    for (name, ctor) in backends() {
        let mode = EchoMode {
            migrate_to: Some(1),
            ..Default::default()
        };
        let srv = start(ctor, opts(), 2, mode);
        let mut conns: Vec<TcpStream> = (0..20).map(|_| connect(srv.addr)).collect();
        for (i, c) in conns.iter_mut().enumerate() {
            c.write_all(&pattern(i, 300)).expect("write");
        }
        for (i, c) in conns.iter_mut().enumerate() {
            assert_eq!(read_exact(c, 300), pattern(i, 300), "{name} conn {i}");
        }
        drop(conns);
        thread::sleep(Duration::from_millis(200));
        let reports = srv.stop();
        // Loop 0 accepted and released all 20 after handing them over; loop 1 served them.
        assert_eq!(
            (reports[0].accepted, reports[0].released),
            (0, 20),
            "{name}"
        );
        assert_eq!(
            (
                reports[1].accepted,
                reports[1].released,
                reports[1].bytes_in
            ),
            (20, 20, 6000),
            "{name}"
        );
    }
}

#[test]
fn doorbell_wakes_parked_loop() {
    for (name, ctor) in backends() {
        let (remote_tx, remote_rx) = mpsc::channel();
        let (woke_tx, woke_rx) = mpsc::channel();
        let (peers_tx0, peers_rx0) = mpsc::channel::<Vec<Arc<Remote>>>();
        let (peers_tx1, peers_rx1) = mpsc::channel::<Vec<Arc<Remote>>>();
        let (ring_tx, ring_rx) = mpsc::channel::<()>();
        let r0 = remote_tx.clone();
        let parked = thread::spawn(move || {
            let mut lp = ctor(0, &opts()).expect("loop");
            r0.send((0, lp.remote())).expect("remote");
            lp.set_peers(peers_rx0.recv().expect("peers"));
            let mut out = Vec::new();
            // Blocks with no timeout until the doorbell.
            lp.turn(None, &mut out).expect("turn");
            woke_tx.send(()).expect("woke");
        });
        let ringer = thread::spawn(move || {
            let mut lp = ctor(1, &opts()).expect("loop");
            remote_tx.send((1, lp.remote())).expect("remote");
            lp.set_peers(peers_rx1.recv().expect("peers"));
            ring_rx.recv().expect("go");
            lp.doorbell(0);
            let mut out = Vec::new();
            lp.turn(Some(Duration::ZERO), &mut out).expect("turn");
            // Keep this loop (and its ring) alive until the parked loop woke.
            ring_rx.recv().expect("done");
        });
        let mut remotes: Vec<(usize, Arc<Remote>)> =
            (0..2).map(|_| remote_rx.recv().expect("r")).collect();
        remotes.sort_by_key(|(i, _)| *i);
        let remotes: Vec<Arc<Remote>> = remotes.into_iter().map(|(_, r)| r).collect();
        peers_tx0.send(remotes.clone()).expect("p");
        peers_tx1.send(remotes).expect("p");
        thread::sleep(Duration::from_millis(100));
        assert!(
            woke_rx.try_recv().is_err(),
            "{name}: woke without a doorbell"
        );
        ring_tx.send(()).expect("go");
        woke_rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("{name}: doorbell did not wake the loop"));
        ring_tx.send(()).expect("done");
        parked.join().expect("parked");
        ringer.join().expect("ringer");
    }
}

#[test]
fn remote_wake_from_plain_thread() {
    for (name, ctor) in backends() {
        let (remote_tx, remote_rx) = mpsc::channel();
        let (woke_tx, woke_rx) = mpsc::channel();
        let t = thread::spawn(move || {
            let mut lp = ctor(0, &opts()).expect("loop");
            remote_tx.send(lp.remote()).expect("remote");
            let mut out = Vec::new();
            lp.turn(None, &mut out).expect("turn");
            woke_tx.send(()).expect("woke");
        });
        let remote = remote_rx.recv().expect("remote");
        thread::sleep(Duration::from_millis(50));
        remote.wake();
        woke_rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("{name}: wake did not wake the loop"));
        t.join().expect("join");
    }
}

#[test]
fn uring_sizes_rings_from_fd_limit() {
    let nofile = nofile_limit();
    let big = LoopOptions {
        max_connections: (nofile as usize) * 2,
        ..opts()
    };
    let lp = UringLoop::new(0, &big).expect("loop");
    assert_eq!(lp.ring_count(), 3);
    assert!(u64::from(lp.table_size()) <= nofile);
    let small = UringLoop::new(0, &opts()).expect("loop");
    assert_eq!((small.ring_count(), small.table_size()), (1, 1000 + 64));
}

#[test]
fn uring_loop_with_several_rings_serves_all() {
    // Tables of 72 slots (64 headroom): 8 connections per ring, so 24 need 3 rings,
    // and rings 1 and 2 are only seen through their POLL_ADD in ring 0. The 24 arrive
    // in a burst: a multishot accept takes what is in the backlog at once, past its
    // ring's room (kept, charged to the later rings' room).
    for (name, ctor) in uring_modes() {
        let o = LoopOptions {
            max_connections: 24,
            table_slots_max: 72,
            ..opts()
        };
        let lp = UringLoop::new(0, &o).expect("loop");
        assert_eq!(lp.ring_count(), 3);
        drop(lp);
        let srv = start(ctor, o, 1, EchoMode::default());
        let mut conns: Vec<TcpStream> = (0..24).map(|_| connect(srv.addr)).collect();
        for round in 0..3 {
            for (i, c) in conns.iter_mut().enumerate() {
                c.write_all(&pattern(i + round, 50)).expect("write");
            }
            for (i, c) in conns.iter_mut().enumerate() {
                assert_eq!(
                    read_exact(c, 50),
                    pattern(i + round, 50),
                    "{name} conn {i} round {round}"
                );
            }
        }
        // The 25th does not fit: dropped and counted.
        let mut extra = connect(srv.addr);
        let _ = extra.write_all(b"z");
        let mut b = [0u8; 1];
        assert!(matches!(extra.read(&mut b), Ok(0) | Err(_)), "{name}");
        drop(conns);
        thread::sleep(Duration::from_millis(200));
        let reports = srv.stop();
        assert_eq!(
            (reports[0].accepted, reports[0].released),
            (24, 24),
            "{name}"
        );
        assert_eq!(reports[0].stats.accept_dropped_full, 1, "{name}");
        assert_eq!(
            reports[0].peers_known + reports[0].peers_unknown,
            24,
            "{name}"
        );
        if name == "uring-single" {
            assert_eq!(reports[0].peers_unknown, 0, "{name}");
            assert_eq!(reports[0].stats.accept_multi_armed, 0, "{name}");
        }
    }
}

/// Turns `lp` until it reports the next accepted connection, then a few more times so
/// that what that accept left to do (a cancel, a re-arm) is done before the next one.
fn accept_next(lp: &mut UringLoop) -> (SockId, SocketAddr) {
    let mut out = Vec::new();
    for _ in 0..1000 {
        out.clear();
        lp.turn(Some(Duration::from_millis(10)), &mut out)
            .expect("turn");
        let got = out.iter().find_map(|c| match c {
            Completion::Accepted { sock, peer } => Some((*sock, *peer)),
            _ => None,
        });
        if let Some(got) = got {
            assert_eq!(out.len(), 1, "{out:?}");
            settle(lp);
            return got;
        }
    }
    panic!("no connection accepted");
}

/// A few turns in which nothing may be accepted.
fn settle(lp: &mut UringLoop) {
    let mut out = Vec::new();
    for _ in 0..4 {
        lp.turn(Some(Duration::from_millis(10)), &mut out)
            .expect("turn");
    }
    assert!(
        out.iter()
            .all(|c| !matches!(c, Completion::Accepted { .. })),
        "{out:?}"
    );
}

/// Closes `socks` and turns until each was released.
fn close_all(lp: &mut UringLoop, socks: &[SockId]) {
    for &s in socks {
        lp.close(s);
    }
    let mut released = 0;
    let mut out = Vec::new();
    for _ in 0..1000 {
        out.clear();
        lp.turn(Some(Duration::from_millis(10)), &mut out)
            .expect("turn");
        released += out
            .iter()
            .filter(|c| matches!(c, Completion::Released { .. }))
            .count();
        if released == socks.len() {
            return;
        }
    }
    panic!("released {released} of {}", socks.len());
}

/// Two rings of 16 (margin 8), connections arriving one at a time: which accept takes
/// each one, where it lands, what is refused, and that every reservation comes back.
fn uring_accept_accounting(multishot: bool) {
    let o = LoopOptions {
        max_connections: 32,
        table_slots_max: 80,
        accept_peer_addr: !multishot,
        ..opts()
    };
    let mut lp = UringLoop::new(0, &o).expect("loop");
    assert_eq!(
        (lp.ring_count(), lp.table_size(), lp.multishot_accept()),
        (2, 80, multishot)
    );
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    lp.add_listener(l).expect("listen");
    let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut clients = Vec::new();
    let mut accepted = Vec::new();
    for _ in 0..32 {
        clients.push(connect(addr));
        accepted.push(accept_next(&mut lp));
    }
    // Rings fill in order, each to its room.
    assert_eq!(lp.ring_live(), vec![16, 16]);
    let peers_on = |lp: &UringLoop, ring: usize| {
        let on: Vec<_> = accepted
            .iter()
            .filter(|(s, _)| lp.sock_ring(*s) == Some(ring))
            .collect();
        assert!(on
            .iter()
            .all(|(_, p)| *p == unknown || p.ip().is_loopback()));
        let unknown = on.iter().filter(|(_, p)| *p == unknown).count();
        (on.len() - unknown, unknown)
    };
    if multishot {
        // Per ring: the multishot takes 7 and is cancelled with 8 left (the margin);
        // single-shot accepts, armed before the cancel lands, take the last 9.
        assert!(accepted[..7].iter().all(|(_, p)| *p == unknown));
        assert!(accepted[7..16].iter().all(|(_, p)| p.ip().is_loopback()));
        assert_eq!((peers_on(&lp, 0), peers_on(&lp, 1)), ((9, 7), (9, 7)));
        assert_eq!(lp.stats().accept_multi_armed, 2);
    } else {
        assert_eq!((peers_on(&lp, 0), peers_on(&lp, 1)), ((16, 0), (16, 0)));
        assert_eq!(lp.stats().accept_multi_armed, 0);
    }
    // Full: the 33rd is accepted by the over-capacity accept, closed and counted.
    let mut extra = connect(addr);
    let mut out = Vec::new();
    for _ in 0..1000 {
        if lp.stats().accept_dropped_full == 1 {
            break;
        }
        out.clear();
        lp.turn(Some(Duration::from_millis(10)), &mut out)
            .expect("turn");
        assert!(out.is_empty(), "{out:?}");
    }
    assert_eq!(lp.stats().accept_dropped_full, 1);
    let mut b = [0u8; 1];
    assert!(matches!(extra.read(&mut b), Ok(0) | Err(_)));
    // One on ring 0 leaves: the next one is served, into the room it left (a
    // single-shot accept: far below the margin).
    close_all(&mut lp, &[accepted[0].0]);
    clients.push(connect(addr));
    let (sock, peer) = accept_next(&mut lp);
    assert_eq!(
        (lp.sock_ring(sock), peer.ip().is_loopback()),
        (Some(0), true)
    );
    accepted[0] = (sock, peer);
    assert_eq!(lp.ring_live(), vec![16, 16]);
    // Everyone leaves, ring 0 first: the multishot accept is armed again on ring 0.
    let (on0, on1): (Vec<_>, Vec<_>) = accepted
        .iter()
        .map(|(s, _)| *s)
        .partition(|s| lp.sock_ring(*s) == Some(0));
    close_all(&mut lp, &on0);
    close_all(&mut lp, &on1);
    settle(&mut lp);
    assert_eq!(lp.ring_live(), vec![0, 0]);
    assert_eq!(lp.stats().accept_multi_armed, if multishot { 3 } else { 0 });
    clients.push(connect(addr));
    let (sock, _) = accept_next(&mut lp);
    assert_eq!(lp.sock_ring(sock), Some(0));
    // No reservation leaked: once the accepts are cancelled and the last socket is
    // gone, every ring's room is whole again.
    lp.stop_accepting();
    close_all(&mut lp, &[sock]);
    settle(&mut lp);
    assert_eq!(lp.ring_live(), vec![0, 0]);
    assert_eq!(lp.remote().ring_room(), vec![16, 16]);
    let st = lp.stats();
    assert_eq!(
        (st.accepted, st.accept_dropped_full, st.accept_errors),
        (34, 1, 0)
    );
}

/// 30 connections waiting in the backlog of a loop with 3 rings of 8: 24 are kept, 6
/// closed and counted, and every reservation comes back. A multishot accept takes the
/// whole backlog at once into ring 0: its room, then the tail charged to rings 1 and 2.
fn uring_accept_burst(multishot: bool) {
    let o = LoopOptions {
        max_connections: 24,
        table_slots_max: 72,
        accept_peer_addr: !multishot,
        ..opts()
    };
    let mut lp = UringLoop::new(0, &o).expect("loop");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    lp.add_listener(l).expect("listen");
    let clients: Vec<TcpStream> = (0..30).map(|_| connect(addr)).collect();
    // Let the server side of every handshake reach the backlog before the first turn.
    thread::sleep(Duration::from_millis(100));
    let mut socks = Vec::new();
    let mut out = Vec::new();
    for _ in 0..1000 {
        if socks.len() == 24 && lp.stats().accept_dropped_full == 6 {
            break;
        }
        out.clear();
        lp.turn(Some(Duration::from_millis(10)), &mut out)
            .expect("turn");
        for c in &out {
            if let Completion::Accepted { sock, .. } = c {
                socks.push(*sock);
            }
        }
    }
    settle(&mut lp);
    assert_eq!((socks.len(), lp.stats().accept_dropped_full), (24, 6));
    let live = if multishot {
        vec![24, 0, 0]
    } else {
        vec![8, 8, 8]
    };
    assert_eq!(lp.ring_live(), live);
    assert_eq!(lp.remote().ring_room(), vec![0, 0, 0]);
    close_all(&mut lp, &socks);
    lp.stop_accepting();
    settle(&mut lp);
    assert_eq!(lp.ring_live(), vec![0, 0, 0]);
    assert_eq!(lp.remote().ring_room(), vec![8, 8, 8]);
    drop(clients);
}

#[test]
fn uring_multishot_accept_burst() {
    uring_accept_burst(true);
}

#[test]
fn uring_single_shot_accept_burst() {
    uring_accept_burst(false);
}

#[test]
fn uring_multishot_accept_accounting() {
    uring_accept_accounting(true);
}

#[test]
fn uring_single_shot_accept_accounting() {
    uring_accept_accounting(false);
}

/// Connections closing while others arrive: socket ids are reused, and the echo
/// harness asserts an id is never reported again before its `Released`.
fn churn(ctor: Ctor, loops: usize, migrate_to: Option<usize>) -> Vec<EchoReport> {
    let mode = EchoMode {
        close_after: Some(5),
        migrate_to,
        ..Default::default()
    };
    let srv = start(ctor, opts(), loops, mode);
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let addr = srv.addr;
            thread::spawn(move || {
                for i in 0..30 {
                    let mut c = connect(addr);
                    let msg = [t as u8, i as u8, 1, 2, 3];
                    c.write_all(&msg).expect("write");
                    let mut all = Vec::new();
                    c.read_to_end(&mut all).expect("read to eof");
                    assert_eq!(all, msg);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    thread::sleep(Duration::from_millis(200));
    srv.stop()
}

#[test]
fn churn_reuses_socket_ids_in_order() {
    for (name, ctor) in backends() {
        let reports = churn(ctor, 1, None);
        assert_eq!(
            (reports[0].accepted, reports[0].released),
            (120, 120),
            "{name}"
        );
    }
}

#[test]
fn churn_with_migration_reuses_socket_ids_in_order() {
    for (name, ctor) in backends() {
        let reports = churn(ctor, 2, Some(1));
        assert_eq!(
            (reports[0].accepted, reports[0].released),
            (0, 120),
            "{name}"
        );
        assert_eq!(
            (reports[1].accepted, reports[1].released),
            (120, 120),
            "{name}"
        );
    }
}

#[test]
fn uring_tiny_queues_lose_nothing() {
    // 4 SQ / 16 CQ entries for 100 connections: the submission queue fills mid-turn
    // (submitted early) and completions overflow into the kernel's overflow list;
    // nothing may be lost.
    let o = LoopOptions {
        sq_entries: 4,
        ..opts()
    };
    let srv = start(new_uring, o, 1, EchoMode::default());
    let mut conns: Vec<TcpStream> = (0..100).map(|_| connect(srv.addr)).collect();
    for round in 0..3 {
        for (i, c) in conns.iter_mut().enumerate() {
            c.write_all(&pattern(i * 3 + round, 64)).expect("write");
        }
        for (i, c) in conns.iter_mut().enumerate() {
            assert_eq!(
                read_exact(c, 64),
                pattern(i * 3 + round, 64),
                "conn {i} round {round}"
            );
        }
    }
    drop(conns);
    thread::sleep(Duration::from_millis(300));
    let reports = srv.stop();
    assert_eq!((reports[0].accepted, reports[0].released), (100, 100));
    assert_eq!(reports[0].bytes_in, 100 * 64 * 3);
}

/// Writes one byte on each connection; returns how many echoed it (the others must
/// have been closed by the server: EOF or reset).
fn count_served(conns: &mut [TcpStream], name: &str) -> usize {
    count_served_refused(conns, name).0
}

/// [`count_served`], and how many got `REFUSED_REPLY` (a refused hand-off) instead.
fn count_served_refused(conns: &mut [TcpStream], name: &str) -> (usize, usize) {
    let (mut served, mut refused) = (0, 0);
    for (i, c) in conns.iter_mut().enumerate() {
        assert!(i < usize::from(REFUSED_REPLY));
        let _ = c.write_all(&[i as u8]);
        let mut b = [0u8; 1];
        match c.read(&mut b) {
            Ok(1) if b[0] == REFUSED_REPLY => refused += 1,
            Ok(1) => {
                assert_eq!(b[0], i as u8, "{name} conn {i}");
                served += 1;
            }
            Ok(0) => {}
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "{name} conn {i}: {e}"
            ),
            Ok(n) => panic!("{name} conn {i}: read {n}"),
        }
    }
    (served, refused)
}

#[test]
fn uring_handoffs_never_overrun_target_tables() {
    // Loop 1 holds 24 sockets: 3 rings of 72 slots, 64 of them headroom. 40 connections
    // arrive at loop 0 in a burst and are all handed to loop 1: 24 must be adopted
    // (spread over the three rings, although the burst outruns loop 1's turns) and 16
    // cleanly refused: answered on the source loop, then closed; then every
    // reservation must be back.
    let target = LoopOptions {
        max_connections: 24,
        table_slots_max: 72,
        ..opts()
    };
    let mode = EchoMode {
        migrate_to: Some(1),
        ..Default::default()
    };
    let srv = start_each(new_uring, vec![opts(), target], mode);
    let mut conns: Vec<TcpStream> = (0..40).map(|_| connect(srv.addr)).collect();
    assert_eq!(count_served_refused(&mut conns, "first wave"), (24, 16));
    drop(conns);
    // Room comes back as the adopted sockets close: a second wave is served in full.
    let deadline = std::time::Instant::now() + WAIT;
    while srv.remotes[1].ring_room() != vec![8, 8, 8] {
        assert!(std::time::Instant::now() < deadline, "room not returned");
        thread::sleep(Duration::from_millis(20));
    }
    let mut conns: Vec<TcpStream> = (0..24).map(|_| connect(srv.addr)).collect();
    assert_eq!(count_served(&mut conns, "second wave"), 24);
    drop(conns);
    thread::sleep(Duration::from_millis(300));
    let remotes = srv.remotes.clone();
    let reports = srv.stop();
    assert_eq!(
        (
            reports[0].released,
            reports[0].migrate_refused,
            reports[0].stats.migrate_refused_full,
            reports[0].stats.migrate_failed
        ),
        (64, 16, 16, 0)
    );
    assert_eq!(
        (
            reports[1].accepted,
            reports[1].released,
            reports[1].stats.adopt_unpaired_reaped
        ),
        (48, 48, 0)
    );
    assert_eq!(remotes[1].ring_room(), vec![8, 8, 8]);
}

#[test]
fn unpaired_handoff_is_closed_not_leaked() {
    for (name, ctor) in backends() {
        let target = LoopOptions {
            adopt_pair_timeout_ms: 100,
            ..opts()
        };
        let mode = EchoMode {
            migrate_to: Some(1),
            drop_transfers: true,
            ..Default::default()
        };
        let srv = start_each(ctor, vec![opts(), target], mode);
        let mut conns: Vec<TcpStream> = (0..5).map(|_| connect(srv.addr)).collect();
        // Nobody serves them, and each one is closed (EOF) rather than held open.
        assert_eq!(count_served(&mut conns, name), 0, "{name}");
        drop(conns);
        thread::sleep(Duration::from_millis(300));
        let remotes = srv.remotes.clone();
        let reports = srv.stop();
        assert_eq!((reports[0].released, reports[1].released), (5, 0), "{name}");
        assert_eq!(reports[1].accepted, 0, "{name}");
        if name.starts_with("uring") {
            assert_eq!(reports[1].stats.adopt_unpaired_reaped, 5, "{name}");
            assert_eq!(remotes[1].ring_room(), vec![1000], "{name}");
        } else {
            assert_eq!(reports[0].stats.migrate_failed, 5, "{name}");
        }
    }
}

#[test]
fn uring_starved_receives_lose_nothing() {
    // 4 provided buffers of 512 bytes for 60 connections sending at once: receives run
    // out of buffers (ENOBUFS), wait in the starved list and are re-armed a few per
    // turn; every byte must still be echoed, in order.
    let o = LoopOptions {
        recv_buf_size_bytes: 512,
        recv_bufs_per_ring: 4,
        ..opts()
    };
    let srv = start(new_uring, o, 1, EchoMode::default());
    let mut conns: Vec<TcpStream> = (0..60).map(|_| connect(srv.addr)).collect();
    for round in 0..3 {
        for (i, c) in conns.iter_mut().enumerate() {
            c.write_all(&pattern(i * 5 + round, 2000)).expect("write");
        }
        for (i, c) in conns.iter_mut().enumerate() {
            assert_eq!(
                read_exact(c, 2000),
                pattern(i * 5 + round, 2000),
                "conn {i} round {round}"
            );
        }
    }
    drop(conns);
    thread::sleep(Duration::from_millis(300));
    let reports = srv.stop();
    assert_eq!((reports[0].accepted, reports[0].released), (60, 60));
    assert_eq!(reports[0].bytes_in, 60 * 2000 * 3);
}

/// A second `send` while one is in flight cannot queue (one in flight per socket): it
/// is refused and counted, never dropped silently; the first one arrives whole.
#[test]
fn send_while_one_is_in_flight_is_counted() {
    for (name, ctor) in backends() {
        let mut lp = ctor(0, &opts()).expect("loop");
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        lp.add_listener(l).expect("listen");
        let mut c = connect(addr);
        let mut out = Vec::new();
        let mut sock = None;
        for _ in 0..1000 {
            lp.turn(Some(Duration::from_millis(10)), &mut out)
                .expect("turn");
            sock = out.iter().find_map(|c| match c {
                Completion::Accepted { sock, .. } => Some(*sock),
                _ => None,
            });
            if sock.is_some() {
                break;
            }
        }
        let sock = sock.expect("accepted");
        // Larger than the socket buffers: the first send stays in flight (epoll
        // writes what fits and keeps the rest; io_uring until its completion).
        let first = pattern(1, 8 << 20);
        lp.send(sock, Bytes::from(first.clone()));
        lp.send(sock, Bytes::from_static(b"second"));
        assert_eq!(lp.stats().send_refused_busy, 1, "{name}");
        let reader = thread::spawn(move || read_exact(&mut c, 8 << 20));
        let mut done = false;
        for _ in 0..10_000 {
            out.clear();
            lp.turn(Some(Duration::from_millis(10)), &mut out)
                .expect("turn");
            if out
                .iter()
                .any(|c| matches!(c, Completion::SendDone { errno: 0, .. }))
            {
                done = true;
                break;
            }
        }
        assert!(done, "{name}: first send never completed");
        assert!(reader.join().expect("reader") == first, "{name}");
        lp.close(sock);
        for _ in 0..100 {
            out.clear();
            lp.turn(Some(Duration::from_millis(1)), &mut out)
                .expect("turn");
            if out.iter().any(|c| matches!(c, Completion::Released { .. })) {
                break;
            }
        }
    }
}
