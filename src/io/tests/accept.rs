//! Accepting: the connection limit, rings sized from the fd limit, several rings per
//! loop, and the reservations of both io_uring accept modes, one at a time and in
//! bursts.

use super::*;

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
        srv.wait_released(0, 1);
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
        srv.wait_released(0, 24);
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
            Completion::Accepted { sock, peer, .. } => Some((*sock, *peer)),
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
        // Per ring: the multishot takes 7 and is cancelled with 8 left (the margin),
        // then armed on the next ring; once no ring is above the margin, single-shot
        // accepts (armed before the last cancel lands) take the last 9 of each ring.
        assert!(accepted[..14].iter().all(|(_, p)| *p == unknown));
        assert!(accepted[14..].iter().all(|(_, p)| p.ip().is_loopback()));
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

/// `set_tcp_timers` on a listener reaches the sockets it accepts: what both backends
/// rely on (io_uring's accepted direct descriptors cannot be given socket options).
#[test]
fn tcp_timers_set_on_the_listener_are_inherited_by_accepted_sockets() {
    let timers = crate::io::TcpTimers {
        keepalive_idle_s: 7,
        keepalive_interval_s: 3,
        keepalive_count: 4,
        user_timeout_ms: 12_345,
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    crate::io::set_tcp_timers(&listener, &timers).expect("set timers");
    let _client = connect(listener.local_addr().expect("addr"));
    let (accepted, _) = listener.accept().expect("accept");
    let s = socket2::SockRef::from(&accepted);
    assert!(s.keepalive().expect("SO_KEEPALIVE"));
    assert_eq!(s.keepalive_time().expect("idle"), Duration::from_secs(7));
    assert_eq!(
        s.keepalive_interval().expect("intvl"),
        Duration::from_secs(3)
    );
    assert_eq!(s.keepalive_retries().expect("cnt"), 4);
    assert_eq!(
        s.tcp_user_timeout().expect("TCP_USER_TIMEOUT"),
        Some(Duration::from_millis(12_345))
    );

    // Idle 0 switches keepalive off; user timeout 0 leaves the kernel's default.
    let off = crate::io::TcpTimers {
        keepalive_idle_s: 0,
        user_timeout_ms: 0,
        ..timers
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    crate::io::set_tcp_timers(&listener, &off).expect("set timers");
    let _client = connect(listener.local_addr().expect("addr"));
    let (accepted, _) = listener.accept().expect("accept");
    let s = socket2::SockRef::from(&accepted);
    assert!(!s.keepalive().expect("SO_KEEPALIVE"));
    assert_eq!(s.tcp_user_timeout().expect("TCP_USER_TIMEOUT"), None);
}
