//! Worker tests without sockets where possible: timeouts, control messages into a
//! full mesh, a hand-off whose socket never comes.

use super::*;
use crate::io::IoStats;

#[test]
fn a_mesh_message_is_no_larger_than_a_shard_message() {
    // Mesh ring slots are `WorkerMsg`s (see `WorkerMsg::Adopt`).
    assert_eq!(
        std::mem::size_of::<WorkerMsg>(),
        std::mem::size_of::<ShardMsg>()
    );
}

#[test]
fn a_backed_up_loop_waits_briefly_instead_of_spinning() {
    let ms = Duration::from_millis;
    assert_eq!(unparked_timeout(false, true, None), BACKED_UP_WAIT);
    assert_eq!(unparked_timeout(false, true, Some(ms(5))), BACKED_UP_WAIT);
    // A deadline sooner than the bound wins.
    assert_eq!(unparked_timeout(false, true, Some(us(20))), us(20));
    // Work waiting: no wait at all.
    assert_eq!(unparked_timeout(true, true, Some(ms(5))), Duration::ZERO);
    assert_eq!(unparked_timeout(false, false, None), Duration::ZERO);
}

/// A shard on shard 1 of 2 with one subscriber of `filter`, its route update to
/// shard 0 waiting in its control outbox.
fn shard_with_a_new_route(filter: &str) -> Shard {
    use crate::protocol::{encode_packet, Packet, Subscribe, SubscriptionOptions};
    use crate::shard::harness::{connect_packet, id_on, peer, ConnectOpts, V311};
    let now = Instant::now();
    let mut shard = Shard::new(1, 2, Arc::new(Config::default()));
    let conn = shard.accept(peer(), now);
    let mut bytes = bytes::BytesMut::new();
    let id = id_on(1, 2, "c");
    encode_packet(
        &connect_packet(V311, &id, &ConnectOpts::default()),
        V311,
        &mut bytes,
    );
    let mut filters = smallvec::SmallVec::new();
    filters.push((
        bytes::Bytes::copy_from_slice(filter.as_bytes()),
        SubscriptionOptions::default(),
    ));
    let subscribe = Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters,
        properties: Default::default(),
    });
    encode_packet(&subscribe, V311, &mut bytes);
    shard.on_read(conn, &bytes, now);
    while shard.poll_action().is_some() {}
    assert!(shard.control_waiting());
    shard
}

#[test]
fn control_messages_wait_for_room_in_a_full_mesh() {
    let mut eps = crate::ring::mesh::<WorkerMsg>(2, 2, 1).expect("valid mesh");
    let mut shard = shard_with_a_new_route("y");
    let mut wake = WakeSet::default();
    // Fill 1 -> 0 (ring 2 + overflow 1) with data.
    let data = |n: u8| {
        WorkerMsg::Shard(ShardMsg::RouteAck {
            seq: u64::from(n) + 100,
        })
    };
    for n in 0..3 {
        assert!(eps[1].send(0, data(n)).is_ok());
    }
    assert!(eps[1].is_full(0));
    Worker::<crate::io::epoll::EpollLoop>::send_control(1, &mut shard, &mut eps[1], &mut wake);
    assert!(shard.control_waiting(), "kept, not dropped");
    assert_eq!(eps[1].stats().rejected, 0);
    // Room frees: the route update follows the data, in order.
    let mut got = Vec::new();
    let mut take = |ep: &mut Endpoint<WorkerMsg>| {
        ep.recv_batch(16, |_, m| match m {
            WorkerMsg::Shard(ShardMsg::RouteAck { seq }) => got.push(format!("ack {seq}")),
            WorkerMsg::Shard(ShardMsg::Routes(batch)) => {
                for r in batch {
                    got.push(format!(
                        "route {} add={} seq={}",
                        String::from_utf8_lossy(&r.filter),
                        r.add,
                        r.seq
                    ))
                }
            }
            other => got.push(format!("{other:?}")),
        })
    };
    take(&mut eps[0]);
    eps[1].flush();
    Worker::<crate::io::epoll::EpollLoop>::send_control(1, &mut shard, &mut eps[1], &mut wake);
    assert!(!shard.control_waiting());
    eps[1].flush();
    take(&mut eps[0]);
    assert_eq!(
        got,
        ["ack 100", "ack 101", "ack 102", "route y add=true seq=1"]
    );
}

pub(super) fn handoff() -> Box<Handoff> {
    let now = Instant::now();
    Box::new(Handoff {
        peer: crate::shard::harness::peer(),
        rx: bytes::BytesMut::new(),
        accepted_at: now,
        connect_at: now,
        listener_anonymous: None,
    })
}

/// An event loop whose sockets sent by other loops never arrive (the io_uring
/// loop closed them as unpaired before their hand-off came); everything else is
/// an epoll loop's.
struct NeverArrives {
    inner: crate::io::epoll::EpollLoop,
    claimed: Vec<Transfer>,
    forgotten: Vec<Transfer>,
    closed: Vec<SockId>,
}

impl EventLoop for NeverArrives {
    fn remote(&self) -> Arc<Remote> {
        self.inner.remote()
    }
    fn set_peers(&mut self, peers: Vec<Arc<Remote>>) {
        self.inner.set_peers(peers)
    }
    fn add_listener(&mut self, listener: TcpListener) -> io::Result<()> {
        self.inner.add_listener(listener)
    }
    fn stop_accepting(&mut self) {
        self.inner.stop_accepting()
    }
    fn start_recv(&mut self, sock: SockId) {
        self.inner.start_recv(sock)
    }
    fn connect(&mut self, addr: std::net::SocketAddr, token: u64) {
        self.inner.connect(addr, token)
    }
    fn send(&mut self, sock: SockId, data: crate::tx::TxChain) {
        self.inner.send(sock, data)
    }
    fn shutdown_write(&mut self, sock: SockId) {
        self.inner.shutdown_write(sock)
    }
    fn close(&mut self, sock: SockId) {
        self.closed.push(sock);
    }
    fn migrate(&mut self, sock: SockId, to: usize) {
        self.inner.migrate(sock, to)
    }
    fn adopt(&mut self, transfer: Transfer) -> Option<SockId> {
        self.claimed.push(transfer);
        None
    }
    fn discard(&mut self, transfer: Transfer) {
        self.inner.discard(transfer)
    }
    fn forget(&mut self, transfer: Transfer) {
        self.forgotten.push(transfer);
    }
    fn add_udp(&mut self, socket: std::net::UdpSocket) -> io::Result<()> {
        self.inner.add_udp(socket)
    }
    fn send_to(&mut self, to: std::net::SocketAddr, data: bytes::Bytes) -> bool {
        self.inner.send_to(to, data)
    }
    fn doorbell(&mut self, to: usize) {
        self.inner.doorbell(to)
    }
    fn buf(&self, buf: crate::io::BufRef) -> &[u8] {
        self.inner.buf(buf)
    }
    fn recycle(&mut self, buf: crate::io::BufRef) {
        self.inner.recycle(buf)
    }
    fn turn(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        self.inner.turn(timeout, out)
    }
    fn stats(&self) -> IoStats {
        self.inner.stats()
    }
    fn name(&self) -> &'static str {
        "never-arrives"
    }
}

#[test]
fn a_handoff_whose_socket_never_comes_is_dropped_counted_and_forgotten() {
    let opts = LoopOptions::default();
    let io = NeverArrives {
        inner: crate::io::epoll::EpollLoop::new(1, &opts).expect("epoll loop"),
        claimed: Vec::new(),
        forgotten: Vec::new(),
        closed: Vec::new(),
    };
    let mut eps = crate::ring::mesh::<WorkerMsg>(2, 4, 1).expect("valid mesh");
    let mesh = eps.pop().expect("endpoint 1");
    let mut w = Worker {
        id: 1,
        io,
        shard: Shard::new(1, 2, Arc::new(Config::default())),
        mesh,
        conns: Vec::new(),
        by_sock: Vec::new(),
        live: 0,
        waiting_handoffs: WaitingHandoffs::new(Duration::from_millis(opts.adopt_pair_timeout_ms)),
        outgoing: HashMap::new(),
        wake: WakeSet::default(),
        auth: None,
        draining: VecDeque::new(),
        linger: Linger::new(Duration::ZERO, 1),
        report: WorkerReport::default(),
        shutting_down: false,
        busy_poll: BusyPoll::new(0),
        clock: LoopClock::new(Instant::now()),
        summary: Summary::new(Instant::now()),
        http: None,
        stats_requests: Vec::new(),
        tls: TlsIo {
            listeners: Vec::new(),
            ws_listeners: Vec::new(),
            closing: Vec::new(),
            anonymous: Vec::new(),
            plain: Vec::new(),
            migrating: HashMap::new(),
            by_conn: HashMap::new(),
        },
        sn: None,
        bridges: None,
        cluster: None,
        store: None,
        allocator: AllocatorCollect::new(None, Instant::now()),
    };
    let late = Transfer(7);
    let msg = WorkerMsg::Adopt {
        handoff: handoff(),
        transfer: late,
        tls: None,
    };
    assert!(eps[0].send(1, msg).is_ok());
    eps[0].flush();
    let t0 = Instant::now();
    w.drain_mesh(t0);
    assert_eq!(w.io.claimed, [late]);
    assert_eq!(w.waiting_handoffs.len(), 1);
    let wait = Duration::from_millis(opts.adopt_pair_timeout_ms);
    w.expire_handoffs(t0 + wait - Duration::from_millis(1));
    assert_eq!(w.waiting_handoffs.len(), 1, "still within the wait");
    w.expire_handoffs(t0 + wait);
    assert_eq!(w.waiting_handoffs.len(), 0);
    assert_eq!(w.report.handoffs_expired, 1);
    assert_eq!(w.io.forgotten, [late]);
    // Should the socket still come, it has no hand-off any more: closed.
    dispatch_on(
        &mut w,
        Completion::Adopted {
            transfer: late,
            sock: 3,
        },
        t0 + wait,
    );
    assert_eq!(w.io.closed, [3]);
    assert_eq!((w.live, w.shard.stats().connections), (0, 0));
}

fn us(n: u64) -> Duration {
    Duration::from_micros(n)
}

/// A worker on shard 1 of 2 over a plain epoll loop, and shard 0's mesh endpoint.
fn worker_of_two() -> (Worker<crate::io::epoll::EpollLoop>, Endpoint<WorkerMsg>) {
    let opts = LoopOptions::default();
    let mut eps = crate::ring::mesh::<WorkerMsg>(2, 4, 1).expect("valid mesh");
    let mesh = eps.pop().expect("endpoint 1");
    let w = Worker {
        id: 1,
        io: crate::io::epoll::EpollLoop::new(1, &opts).expect("epoll loop"),
        shard: Shard::new(1, 2, Arc::new(Config::default())),
        mesh,
        conns: Vec::new(),
        by_sock: Vec::new(),
        live: 0,
        waiting_handoffs: WaitingHandoffs::new(Duration::from_millis(opts.adopt_pair_timeout_ms)),
        outgoing: HashMap::new(),
        wake: WakeSet::default(),
        draining: VecDeque::new(),
        report: WorkerReport::default(),
        shutting_down: false,
        busy_poll: BusyPoll::new(0),
        clock: LoopClock::new(Instant::now()),
        summary: Summary::new(Instant::now()),
        http: None,
        stats_requests: Vec::new(),
        linger: Linger::new(Duration::ZERO, 1),
        auth: None,
        tls: TlsIo {
            listeners: Vec::new(),
            ws_listeners: Vec::new(),
            closing: Vec::new(),
            anonymous: Vec::new(),
            plain: Vec::new(),
            migrating: HashMap::new(),
            by_conn: HashMap::new(),
        },
        sn: None,
        bridges: None,
        cluster: None,
        store: None,
        allocator: AllocatorCollect::new(None, Instant::now()),
    };
    (w, eps.pop().expect("endpoint 0"))
}

#[test]
fn a_scrape_request_over_the_mesh_is_answered_with_this_loops_snapshot() {
    let (mut w, mut ep0) = worker_of_two();
    w.report.mesh_rejected = 3;
    assert!(ep0.send(1, WorkerMsg::StatsRequest { scrape: 9 }).is_ok());
    // Asked twice in one drain: answered once.
    assert!(ep0.send(1, WorkerMsg::StatsRequest { scrape: 9 }).is_ok());
    ep0.flush();
    let now = Instant::now();
    w.drain_mesh(now);
    w.answer_stats_requests(now);
    w.mesh.flush();
    let mut got = Vec::new();
    ep0.recv_batch(16, |from, msg| match msg {
        WorkerMsg::StatsReply { scrape, snapshot } => got.push((from, scrape, *snapshot)),
        other => panic!("unexpected {other:?}"),
    });
    assert_eq!(got.len(), 1, "{got:?}");
    let (from, scrape, snap) = &got[0];
    assert_eq!(
        (*from, *scrape, snap.shard, snap.mesh_rejected),
        (1, 9, 1, 3)
    );
    assert!(snap.wall_ns >= snap.busy_ns);
}

#[test]
fn a_scrape_counts_a_loop_that_never_answers_as_missing() {
    // Shard 1 owns the HTTP side; shard 0 (`_ep0`) never answers.
    let (mut w, _ep0) = worker_of_two();
    let t0 = Instant::now();
    w.http = Some(HttpServer::new(Some(0), Duration::ZERO, t0, "epoll"));
    w.start_scrape(t0);
    let scrape = w
        .http
        .as_ref()
        .and_then(|h| h.scrape_state())
        .expect("in flight");
    assert_eq!(scrape, (1, 1), "scrape 1, one loop to answer");
    w.http_turn(t0 + http::SCRAPE_TIMEOUT - Duration::from_millis(1));
    assert!(
        w.http.as_ref().unwrap().scrape_state().is_some(),
        "still waiting"
    );
    w.http_turn(t0 + http::SCRAPE_TIMEOUT);
    assert!(
        w.http.as_ref().unwrap().scrape_state().is_none(),
        "given up"
    );
    // The next scrape: a late answer to the first does not count, its own does,
    // and the scrape ends as soon as every loop answered.
    w.start_scrape(t0 + http::SCRAPE_TIMEOUT);
    assert_eq!(w.http.as_ref().unwrap().scrape_state(), Some((2, 1)));
    w.on_stats_reply(0, 1, crate::metrics::LoopSnapshot::default());
    assert_eq!(w.http.as_ref().unwrap().scrape_state(), Some((2, 1)));
    w.on_stats_reply(0, 2, crate::metrics::LoopSnapshot::default());
    assert_eq!(w.http.as_ref().unwrap().scrape_state(), Some((2, 0)));
    w.http_turn(t0 + http::SCRAPE_TIMEOUT);
    assert!(
        w.http.as_ref().unwrap().scrape_state().is_none(),
        "finished"
    );
}

/// Runs `w`'s actions and one IO turn, dispatching what completed.
fn turn_once(w: &mut Worker<crate::io::epoll::EpollLoop>, now: Instant) {
    w.drain_actions(now);
    let mut out = Vec::new();
    w.io.turn(Some(Duration::from_millis(20)), &mut out)
        .expect("epoll turn");
    for c in out {
        dispatch_on(w, c, now);
    }
}

/// Hands one completion to `w` as its running loop would. `Worker::dispatch` takes
/// the worker's fields one by one (the loop lends them apart); the tests lend them
/// here, in one place, so a new parameter changes one call.
fn dispatch_on<L: EventLoop>(w: &mut Worker<L>, c: Completion, now: Instant) {
    Worker::dispatch(
        &mut w.io,
        &mut w.shard,
        &mut w.conns,
        &mut w.by_sock,
        &mut w.live,
        &mut w.waiting_handoffs,
        &mut w.outgoing,
        &mut w.mesh,
        &mut w.wake,
        &mut w.linger,
        &mut w.draining,
        &mut w.report,
        &mut w.http,
        w.shutting_down,
        &mut w.tls,
        c,
        now,
    );
}

/// The peer's WebSocket close frame came in on the old loop while the connection was
/// on its way (`State::Migrating` feeds it to the transform that travels): the new
/// loop answers the close, and its shard ends the session at once (the will goes
/// out) instead of when the client closes TCP, which it may never do.
#[test]
fn a_websocket_closed_during_its_handoff_ends_its_session_on_adoption() {
    use crate::protocol::{encode_packet, Properties, QoS};
    use crate::shard::harness::{connect_packet, id_on, will, ConnectOpts, V311};
    use std::io::Read;
    use std::os::fd::IntoRawFd;

    let (mut w, mut ep0) = worker_of_two();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client =
        std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let (server, _) = listener.accept().expect("accept");
    server.set_nonblocking(true).expect("nonblocking");
    let transfer = Transfer(server.into_raw_fd() as u64);

    // What the old loop did: the upgrade (its 101 already sent), then the CONNECT (in
    // the hand-off's bytes), then, migrating, the peer's close frame (masked, 1000).
    let mut ws = Transport::Ws(WsSession::new(Arc::new(WsConfig::default())));
    let mut plain = Vec::new();
    let upgrade = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
                   Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";
    ws.on_recv(upgrade.as_bytes(), &mut plain).expect("upgrade");
    assert!(ws
        .take_wire()
        .is_some_and(|b| b.starts_with(b"HTTP/1.1 101")));
    ws.on_recv(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xe8], &mut plain)
        .expect("close frame");
    assert!(plain.is_empty() && ws.ended());

    let opts = ConnectOpts {
        will: Some(will(
            "ws/gone",
            "bye",
            QoS::AtMostOnce,
            false,
            Properties::default(),
        )),
        ..ConnectOpts::default()
    };
    let mut h = handoff();
    let connect = connect_packet(V311, &id_on(1, 2, "ws"), &opts);
    encode_packet(&connect, V311, &mut h.rx);
    let msg = WorkerMsg::Adopt {
        handoff: h,
        transfer,
        tls: Some(Box::new(ws)),
    };
    assert!(ep0.send(1, msg).is_ok());
    ep0.flush();
    let now = Instant::now();
    w.drain_mesh(now);
    assert_eq!(w.report.handoffs_in, 1);
    let stats = w.shard.stats();
    assert_eq!(
        (stats.sessions, stats.messages_in),
        (0, 1),
        "the session ended on adoption and its will was published"
    );

    // The close answer reaches the client, then the socket closes (no linger here).
    let mut got = Vec::new();
    for _ in 0..50 {
        turn_once(&mut w, now);
        if w.live == 0 {
            break;
        }
    }
    client.read_to_end(&mut got).expect("read until EOF");
    assert_eq!(got, [0x88, 0x02, 0x03, 0xe8], "the close frame, then EOF");
    assert_eq!((w.live, w.shard.stats().connections), (0, 0));
    assert!(
        w.tls.by_conn.is_empty(),
        "the released connection's transform left the side table"
    );
}

static COLLECTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_collect() {
    COLLECTS.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn the_allocator_is_collected_at_most_once_per_interval_and_only_with_a_hook() {
    let t0 = Instant::now();
    let mut none = AllocatorCollect::new(None, t0);
    assert!(!none.on_idle(t0 + ALLOCATOR_COLLECT_INTERVAL * 5));

    let mut hooked = AllocatorCollect::new(Some(count_collect), t0);
    let before = COLLECTS.load(Ordering::Relaxed);
    // A loop blocking between every message within the first interval: no collect.
    for ms in 0..1000 {
        assert!(!hooked.on_idle(t0 + Duration::from_millis(ms)));
    }
    assert!(hooked.on_idle(t0 + ALLOCATOR_COLLECT_INTERVAL));
    assert!(!hooked.on_idle(t0 + ALLOCATOR_COLLECT_INTERVAL + Duration::from_millis(999)));
    assert!(hooked.on_idle(t0 + ALLOCATOR_COLLECT_INTERVAL * 2));
    assert_eq!(COLLECTS.load(Ordering::Relaxed) - before, 2);
}

#[test]
fn a_connections_io_state_stays_small() {
    // 24 until session 11 moved the transforms (TLS, WebSocket) to the side table
    // `TlsIo::by_conn` (issue #21: ≤ 300 B per idle connection).
    assert_eq!(std::mem::size_of::<Option<ConnIo>>(), 12);
}
