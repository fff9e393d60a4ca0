//! Backend tests over loopback: the same echo server drives both backends. This file
//! owns the harness (the echo worker, servers, clients); the tests sit beside it by
//! concept: `data` (receive and send paths, buffers, socket ids), `accept` (limits,
//! rings, both accept modes' accounting), `handoff` (migration, doorbells, wake-ups).

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

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
    /// `report.released` as the test thread sees it while the loop runs.
    released: Arc<AtomicUsize>,
}

impl Echo {
    fn new(mode: EchoMode, released: Arc<AtomicUsize>) -> Echo {
        Echo {
            mode,
            queued: HashMap::new(),
            sending: HashSet::new(),
            closing: HashSet::new(),
            echoed: HashMap::new(),
            live: HashSet::new(),
            report: EchoReport::default(),
            released,
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
                Completion::Accepted { sock, peer, .. } => {
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
                        lp.send(sock, Bytes::from_static(&[REFUSED_REPLY]).into());
                        self.closing.insert(sock);
                    }
                },
                Completion::Datagram { .. } | Completion::SendToFailed { .. } => {
                    panic!("no UDP socket here: {c:?}")
                }
                Completion::Connected { .. } => panic!("the echo server connects nowhere"),
                Completion::FileWritten { .. } => panic!("the echo server writes no file"),
                Completion::Released { sock } => {
                    assert!(self.live.remove(&sock), "released sock {sock} was not live");
                    self.report.released += 1;
                    self.released.store(self.report.released, Ordering::SeqCst);
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
            lp.send(sock, data.into());
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
    /// Per loop: sockets released so far.
    released: Vec<Arc<AtomicUsize>>,
}

impl Server {
    /// Waits until loop `id` has released `n` sockets in all, or [`WAIT`] passed (the
    /// caller's assertions on the report then say what is missing). A client's close
    /// reaches the loop in the loop's own time: on a loaded machine later than any
    /// fixed sleep, and a loop stopped before it gets there reports it as never released.
    fn wait_released(&self, id: usize, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.released[id].load(Ordering::SeqCst) < n && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
    }

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
    let released: Vec<Arc<AtomicUsize>> = (0..loops).map(|_| Arc::default()).collect();
    for (id, adopt_in) in adopt_rxs.into_iter().enumerate() {
        let (peers_tx, peers_rx) = mpsc::channel::<Vec<Arc<Remote>>>();
        peer_txs.push(peers_tx);
        let remote_tx = remote_tx.clone();
        let stop = stop.clone();
        let opts = loop_opts[id].clone();
        let released = released[id].clone();
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
            let mut echo = Echo::new(mode, released);
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
        released,
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
    // Every loop ends up releasing all 120: the serving loop after its close, loop 0
    // also after each hand-off.
    for id in 0..loops {
        srv.wait_released(id, 120);
    }
    srv.stop()
}

mod accept;
mod data;
mod handoff;
mod vectored;
