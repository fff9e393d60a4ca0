//! Receive and send paths over loopback: echo, large transfers over recycled buffers,
//! closes from either side, socket-id reuse under churn, tiny queues, starved
//! receives, and the one-send-in-flight rule.

use super::*;

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
        srv.wait_released(0, 200);
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
        srv.wait_released(0, 1);
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
        srv.wait_released(0, 1);
        let reports = srv.stop();
        assert_eq!((reports[0].accepted, reports[0].released), (1, 1), "{name}");
    }
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
    srv.wait_released(0, 100);
    let reports = srv.stop();
    assert_eq!((reports[0].accepted, reports[0].released), (100, 100));
    assert_eq!(reports[0].bytes_in, 100 * 64 * 3);
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
    srv.wait_released(0, 60);
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
        lp.send(sock, Bytes::from(first.clone()).into());
        lp.send(sock, Bytes::from_static(b"second").into());
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

/// The worker flushes the mesh between its sends and the next `turn`, and an ack
/// must not reach the client before the retained update it follows has left
/// (`shard/retained.rs`, "Order with acks"): epoll writes a send at the next `turn`,
/// as io_uring submits it then. A close right after a send still delivers the bytes.
#[test]
fn epoll_writes_a_send_at_the_next_turn_and_before_a_close() {
    let mut lp = new_epoll(0, &opts()).expect("loop");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    lp.add_listener(l).expect("listen");
    let mut socks = Vec::new();
    let mut clients = [connect(addr), connect(addr)];
    let mut out = Vec::new();
    for _ in 0..1000 {
        out.clear();
        lp.turn(Some(Duration::from_millis(10)), &mut out)
            .expect("turn");
        socks.extend(out.iter().filter_map(|c| match c {
            Completion::Accepted { sock, .. } => Some(*sock),
            _ => None,
        }));
        if socks.len() == 2 {
            break;
        }
    }
    assert_eq!(socks.len(), 2, "both accepted");
    // Accepted in connect order on one listener: socks[i] is clients[i]'s.
    lp.send(socks[0], Bytes::from_static(b"puback").into());
    clients[0].set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 16];
    let before = clients[0].read(&mut buf);
    assert!(
        matches!(&before, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "nothing written before the turn: {before:?}"
    );
    clients[0].set_nonblocking(false).expect("blocking");
    out.clear();
    lp.turn(Some(Duration::ZERO), &mut out).expect("turn");
    assert!(
        out.iter()
            .any(|c| matches!(c, Completion::SendDone { sock, errno: 0 } if *sock == socks[0])),
        "written at the turn: {out:?}"
    );
    assert_eq!(read_exact(&mut clients[0], 6), b"puback");
    // Send then close in one turn (a refusal): the bytes, then end of stream.
    lp.send(socks[1], Bytes::from_static(b"refused").into());
    lp.close(socks[1]);
    assert_eq!(read_exact(&mut clients[1], 7), b"refused");
    let mut rest = Vec::new();
    clients[1].read_to_end(&mut rest).expect("eof");
    assert!(rest.is_empty(), "nothing after the close: {rest:?}");
    lp.close(socks[0]);
    out.clear();
    lp.turn(Some(Duration::ZERO), &mut out).expect("turn");
}

/// `add_udp` and `send_to` (the MQTT-SN gateway's socket), on every backend: each
/// datagram arrives once with its sender and bytes (empty and 1,500-byte ones too),
/// and a datagram sent goes out from the loop's socket.
#[test]
fn udp_socket_receives_and_sends_datagrams() {
    for (name, ctor) in backends() {
        let mut lp = ctor(0, &opts()).expect("loop");
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let local = rx.local_addr().unwrap();
        lp.add_udp(rx).expect("add_udp");
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        peer.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let sent: Vec<Vec<u8>> = vec![vec![], vec![1], pattern(7, 1500), vec![2, 3]];
        for d in &sent {
            peer.send_to(d, local).unwrap();
        }
        let mut got = Vec::new();
        // Bounded: the datagrams are queued already; 100 turns of 100 ms is far more
        // than any backend needs.
        for _ in 0..100 {
            let mut out = Vec::new();
            lp.turn(Some(Duration::from_millis(100)), &mut out)
                .expect("turn");
            for c in out {
                match c {
                    Completion::Datagram { from, buf } => {
                        assert_eq!(from, peer.local_addr().unwrap(), "{name}");
                        got.push(lp.buf(buf).to_vec());
                        lp.recycle(buf);
                    }
                    other => panic!("{name}: {other:?}"),
                }
            }
            if got.len() == sent.len() {
                break;
            }
        }
        assert_eq!(got, sent, "{name}");
        // Larger than a receive buffer: passed on truncated, its first bytes intact.
        let big = pattern(9, 5000);
        peer.send_to(&big, local).unwrap();
        let mut cut = None;
        for _ in 0..100 {
            let mut out = Vec::new();
            lp.turn(Some(Duration::from_millis(100)), &mut out)
                .expect("turn");
            if let Some(Completion::Datagram { buf, .. }) = out.first().copied() {
                cut = Some(lp.buf(buf).to_vec());
                lp.recycle(buf);
                break;
            }
        }
        let cut = cut.expect("the large datagram");
        assert!(
            !cut.is_empty() && cut.len() < big.len(),
            "{name}: {}",
            cut.len()
        );
        assert_eq!(&big[..cut.len()], &cut[..], "{name}");
        assert!(lp.send_to(peer.local_addr().unwrap(), Bytes::from_static(b"back")));
        let mut out = Vec::new();
        lp.turn(Some(Duration::ZERO), &mut out).expect("turn");
        let mut buf = [0u8; 16];
        let (n, from) = peer.recv_from(&mut buf).expect("the datagram sent");
        assert_eq!((&buf[..n], from), (&b"back"[..], local), "{name}");
    }
}

/// A UDP burst larger than the provided-buffer pool: the receive runs out of buffers
/// (io_uring `ENOBUFS`), is armed again on a later turn, and every datagram still
/// arrives (the socket buffer holds them meanwhile).
#[test]
fn udp_burst_beyond_the_buffer_pool_loses_nothing() {
    for (name, ctor) in backends() {
        let o = LoopOptions {
            recv_bufs_per_ring: 4,
            ..opts()
        };
        let mut lp = ctor(0, &o).expect("loop");
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let local = rx.local_addr().unwrap();
        lp.add_udp(rx).expect("add_udp");
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        for i in 0..64u8 {
            peer.send_to(&[i; 8], local).unwrap();
        }
        let mut got = Vec::new();
        for _ in 0..200 {
            let mut out = Vec::new();
            lp.turn(Some(Duration::from_millis(50)), &mut out)
                .expect("turn");
            // Held until the turn's end, as the worker's batch would.
            for c in &out {
                if let Completion::Datagram { buf, .. } = *c {
                    got.push(lp.buf(buf)[0]);
                }
            }
            for c in out {
                if let Completion::Datagram { buf, .. } = c {
                    lp.recycle(buf);
                }
            }
            if got.len() == 64 {
                break;
            }
        }
        assert_eq!(got, (0..64u8).collect::<Vec<_>>(), "{name}");
        if name.starts_with("uring") {
            assert!(lp.stats().recv_nobufs > 0, "{name}: the pool never ran out");
        }
    }
}

/// A pool that stays empty (every buffer held) does not make starved receives bounce:
/// a multishot receive picks its buffer when armed, so one re-armed into an empty pool
/// ends at once with `ENOBUFS` again. They wait (the counter stands still) and, once
/// the buffers come back, every one is re-armed and every byte arrives in order.
/// Driven turn by turn, like the UDP test, so the buffers can be held across turns.
#[test]
fn uring_starved_receives_wait_for_buffers_then_all_arrive() {
    const CLIENTS: usize = 8;
    const LEN: usize = 600;
    let (mut lp, _, clients, mut s) = starved_pool(CLIENTS, LEN);
    assert!(lp.stats().recv_nobufs > 0, "the pool never ran out");
    for _ in 0..5 {
        s.turn(&mut lp, true);
    }
    let starved = lp.stats().recv_nobufs;
    for _ in 0..20 {
        s.turn(&mut lp, true);
    }
    assert_eq!(
        lp.stats().recv_nobufs,
        starved,
        "receives were re-armed into an empty pool"
    );
    // Buffers back: every starved receive is re-armed and completes.
    for _ in 0..500 {
        s.turn(&mut lp, false);
        if s.got.values().map(Vec::len).sum::<usize>() == CLIENTS * LEN {
            break;
        }
    }
    for (sock, i) in &s.socks {
        let bytes = s.got.get(sock).map(Vec::as_slice).unwrap_or_default();
        assert!(
            bytes == pattern(*i, LEN),
            "client {i}: {} bytes",
            bytes.len()
        );
    }
    drop(clients);
}

/// A connection accepted while receives are starved queues behind them: its bytes
/// arrive after the first bytes of every socket that was waiting before it. Armed at
/// once, it took the buffers given back for them (in a 100k reconnect storm the oldest
/// waited until `connect_timeout_ms` closed them).
#[test]
fn uring_a_new_connection_queues_behind_starved_receives() {
    const CLIENTS: usize = 8;
    const LEN: usize = 600;
    let (mut lp, addr, mut clients, mut s) = starved_pool(CLIENTS, LEN);
    for _ in 0..5 {
        s.turn(&mut lp, true);
    }
    let waiting: Vec<SockId> = s
        .socks
        .keys()
        .copied()
        .filter(|k| s.got.get(k).map_or(0, Vec::len) < LEN)
        .collect();
    assert!(waiting.len() >= CLIENTS - 2, "{} starved", waiting.len());
    // The late one is accepted (and its receive started) in the turn that gives every
    // buffer back.
    let mut late = connect(addr);
    late.write_all(&pattern(CLIENTS, LEN)).expect("write");
    clients.push(late);
    for _ in 0..500 {
        s.turn(&mut lp, true);
        if s.socks.len() == CLIENTS + 1 {
            break;
        }
    }
    assert_eq!(s.socks.len(), CLIENTS + 1);
    let late_sock = s
        .socks
        .iter()
        .find_map(|(k, i)| (*i == CLIENTS).then_some(*k))
        .expect("late socket");
    for buf in s.held.drain(..) {
        lp.recycle(buf);
    }
    let mut order: Vec<SockId> = Vec::new();
    for _ in 0..500 {
        let before: HashMap<SockId, usize> = s.got.iter().map(|(k, v)| (*k, v.len())).collect();
        s.turn(&mut lp, false);
        for (k, v) in &s.got {
            if v.len() > before.get(k).copied().unwrap_or(0) && !order.contains(k) {
                order.push(*k);
            }
        }
        if s.got.values().map(Vec::len).sum::<usize>() == (CLIENTS + 1) * LEN {
            break;
        }
    }
    let at = |k: SockId| {
        order
            .iter()
            .position(|o| *o == k)
            .expect("no bytes arrived")
    };
    for w in &waiting {
        assert!(
            at(*w) < at(late_sock),
            "socket {w}, waiting since before, read after the late one: {order:?}"
        );
    }
    for (sock, i) in &s.socks {
        assert!(
            s.got.get(sock).is_some_and(|b| *b == pattern(*i, LEN)),
            "client {i}"
        );
    }
}

/// An io_uring loop with a receive pool of four 512-byte buffers, `clients` accepted
/// connections whose `len` bytes each (`pattern`) wait in their sockets, and every
/// buffer held by `Starving`: the pool is dry with bytes still waiting. Each client
/// needs two buffers, so before the loop arms any receive they all wait.
fn starved_pool(
    clients: usize,
    len: usize,
) -> (Box<dyn EventLoop>, SocketAddr, Vec<TcpStream>, Starving) {
    let o = LoopOptions {
        recv_buf_size_bytes: 512,
        recv_bufs_per_ring: 4,
        ..opts()
    };
    let mut lp = new_uring(0, &o).expect("uring loop");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    lp.add_listener(listener).expect("add_listener");
    let streams: Vec<TcpStream> = (0..clients)
        .map(|i| {
            let mut c = connect(addr);
            c.write_all(&pattern(i, len)).expect("write");
            c
        })
        .collect();
    let mut s = Starving::default();
    for _ in 0..500 {
        s.turn(&mut lp, true);
        if s.socks.len() == clients && s.held.len() == 4 {
            break;
        }
    }
    assert_eq!(
        (s.socks.len(), s.held.len()),
        (clients, 4),
        "accepted, held"
    );
    (lp, addr, streams, s)
}

/// The server side of `uring_starved_receives_wait_for_buffers_then_all_arrive`.
#[derive(Default)]
struct Starving {
    /// Accepted sockets, by accept order.
    socks: HashMap<SockId, usize>,
    got: HashMap<SockId, Vec<u8>>,
    /// Buffers not given back yet.
    held: Vec<BufRef>,
}

impl Starving {
    /// One turn; `keep` holds the buffers received instead of giving them back.
    fn turn(&mut self, lp: &mut Box<dyn EventLoop>, keep: bool) {
        let mut out = Vec::new();
        lp.turn(Some(Duration::from_millis(20)), &mut out)
            .expect("turn");
        for c in out {
            match c {
                Completion::Accepted { sock, .. } => {
                    let n = self.socks.len();
                    self.socks.insert(sock, n);
                    lp.start_recv(sock);
                }
                Completion::Recv { sock, buf } => {
                    self.got
                        .entry(sock)
                        .or_default()
                        .extend_from_slice(lp.buf(buf));
                    self.held.push(buf);
                }
                other => panic!("unexpected completion {other:?}"),
            }
        }
        if !keep {
            for buf in self.held.drain(..) {
                lp.recycle(buf);
            }
        }
    }
}
