//! The worker's completion dispatch: each IO completion (accept, receive, send, close,
//! a descriptor handed over by another loop) applied to the shard and to the
//! per-connection IO state, plus the helpers that map a socket to its connection
//! (`map`, `adopt_conn`) and pick a connection's next bytes (`next_tx`).
//! Split out of `worker/mod.rs`, unchanged; the loop that calls it lives there.

use super::*;

impl<L: EventLoop> Worker<L> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn adopt_conn(
        io: &mut L,
        shard: &mut Shard,
        conns: &mut Vec<Option<ConnIo>>,
        by_sock: &mut Vec<u32>,
        live: &mut usize,
        sock: SockId,
        handoff: Handoff,
        session: Option<Box<Transport>>,
        transforms: &mut Transforms,
        draining: &mut VecDeque<(Instant, ConnId, SockId)>,
        now: Instant,
    ) {
        // The certificate's username, read again from the TLS state that travelled.
        let cert_username = session.as_ref().and_then(|s| s.username());
        let conn = shard.adopt_as(handoff, cert_username, now);
        Self::map(conns, by_sock, live, conn, sock, session, transforms);
        io.start_recv(sock);
        // TLS records the old loop had not sent yet (session tickets) go out first.
        let Some(Some(c)) = conns.get_mut(conn) else {
            return;
        };
        let session = transforms.get_mut(&conn);
        let ended = session.as_ref().is_some_and(|s| s.ended());
        let wire = session.and_then(|s| s.take_wire());
        // The WebSocket ended while the connection was on its way (the peer's close
        // frame came in on the old loop): the session ends now, not when TCP closes.
        if ended {
            shard.on_closed(conn, now);
            c.state = State::Draining;
            draining.push_back((now + DRAIN_TIMEOUT, conn, sock));
        }
        match wire {
            Some(data) => {
                c.sending = true;
                io.send(sock, data.into());
            }
            None if c.state == State::Draining => {
                c.state = State::Closing;
                io.close(sock);
            }
            None => {}
        }
    }

    /// The next bytes to send on `c`: the shard's output as segments (shared
    /// payloads by reference), or through the connection's transforms when it has
    /// any (with any handshake, alert or control bytes they queued; a WebSocket frames
    /// the whole flush as one frame).
    pub(super) fn next_tx(
        shard: &mut Shard,
        c: &mut ConnIo,
        conn: ConnId,
        transforms: &mut Transforms,
    ) -> Option<TxChain> {
        let chain = shard.take_tx_chain(conn);
        c.read_at = if chain.is_some() {
            shard.taken_read_stamp()
        } else {
            0
        };
        if !c.transformed {
            return chain;
        }
        let Some(session) = transforms.get_mut(&conn) else {
            return chain;
        };
        if let Some(plain) = chain {
            session.encode_chain(plain);
        }
        session.take_wire().map(TxChain::from)
    }

    pub(super) fn map(
        conns: &mut Vec<Option<ConnIo>>,
        by_sock: &mut Vec<u32>,
        live: &mut usize,
        conn: ConnId,
        sock: SockId,
        tls: Option<Box<Transport>>,
        transforms: &mut Transforms,
    ) {
        if conns.len() <= conn {
            conns.resize_with(conn + 1, || None);
        }
        let s = sock as usize;
        if by_sock.len() <= s {
            by_sock.resize(s + 1, NO_CONN);
        }
        debug_assert!(conns[conn].is_none(), "conn id reused before release");
        debug_assert!(
            by_sock[s] == NO_CONN,
            "socket id reported again before its release"
        );
        let transformed = tls.is_some();
        match tls {
            Some(t) => {
                transforms.insert(conn, t);
            }
            // A stale entry of an earlier user of this id cannot be left behind
            // (`Released` removes it), but a plain connection must never find one.
            None => debug_assert!(!transforms.contains_key(&conn)),
        }
        conns[conn] = Some(ConnIo {
            sock,
            state: State::Open,
            sending: false,
            read_at: 0,
            transformed,
        });
        // A shard never holds 2^32 connections; `NO_CONN` would only lose the mapping.
        by_sock[s] = u32::try_from(conn).unwrap_or(NO_CONN);
        *live += 1;
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn dispatch(
        io: &mut L,
        shard: &mut Shard,
        conns: &mut Vec<Option<ConnIo>>,
        by_sock: &mut Vec<u32>,
        live: &mut usize,
        waiting_handoffs: &mut WaitingHandoffs,
        outgoing: &mut HashMap<SockId, (usize, Box<Handoff>)>,
        mesh: &mut Endpoint<WorkerMsg>,
        wake: &mut WakeSet,
        linger: &mut Linger,
        draining: &mut VecDeque<(Instant, ConnId, SockId)>,
        report: &mut WorkerReport,
        http: &mut Option<HttpServer>,
        shutting_down: bool,
        tls: &mut TlsIo,
        c: Completion,
        now: Instant,
    ) {
        let conn_of = |by_sock: &Vec<u32>, sock: SockId| {
            by_sock
                .get(sock as usize)
                .copied()
                .filter(|&c| c != NO_CONN)
                .map(|c| c as ConnId)
        };
        match c {
            Completion::Accepted {
                sock,
                peer,
                listener,
            } => {
                if shutting_down {
                    io.close(sock);
                    return;
                }
                if let Some(h) = http.as_mut().filter(|h| h.listener == Some(listener)) {
                    h.accept(io, sock, now);
                    return;
                }
                let index = usize::from(listener);
                let tls_session = match tls.listeners.get(index) {
                    Some(Some(lt)) => match TlsSession::from_material(&lt.current()) {
                        Ok(s) => Some(Box::new(s)),
                        Err(e) => {
                            tracing::warn!(shard = shard.id(), "tls session: {e}");
                            io.close(sock);
                            return;
                        }
                    },
                    _ => None,
                };
                let ws = match tls.ws_listeners.get(index) {
                    Some(Some(cfg)) => Some(WsSession::new(cfg.clone())),
                    _ => None,
                };
                let session = match (tls_session, ws) {
                    (None, None) => None,
                    (Some(t), None) => Some(Box::new(Transport::Tls(t))),
                    (None, Some(w)) => Some(Box::new(Transport::Ws(w))),
                    (Some(t), Some(w)) => Some(Box::new(Transport::Wss(t, w))),
                };
                let conn = shard.accept(peer, now);
                if let Some(&Some(allow)) = tls.anonymous.get(usize::from(listener)) {
                    shard.set_listener_anonymous(conn, Some(allow));
                }
                Self::map(conns, by_sock, live, conn, sock, session, &mut tls.by_conn);
                io.start_recv(sock);
            }
            Completion::Adopted { transfer, sock } => match waiting_handoffs.take(transfer) {
                Some(_) if shutting_down => io.close(sock),
                Some((handoff, session)) => Self::adopt_conn(
                    io,
                    shard,
                    conns,
                    by_sock,
                    live,
                    sock,
                    *handoff,
                    session,
                    &mut tls.by_conn,
                    draining,
                    now,
                ),
                None => {
                    tracing::warn!(shard = shard.id(), "socket arrived without its handoff");
                    io.close(sock);
                }
            },
            Completion::Recv { sock, buf } => {
                if let Some(conn) = conn_of(by_sock, sock) {
                    let Some(Some(c)) = conns.get_mut(conn) else {
                        io.recycle(buf);
                        return;
                    };
                    let session = if c.transformed {
                        tls.by_conn.get_mut(&conn)
                    } else {
                        None
                    };
                    match (c.state, session) {
                        (State::Open, None) => shard.on_read(conn, io.buf(buf), now),
                        (State::Open, Some(session)) => {
                            tls.plain.clear();
                            let handshaking = session.is_handshaking();
                            let result = session.on_recv(io.buf(buf), &mut tls.plain);
                            // The handshake just ended: the certificate's username is
                            // set before the CONNECT that may follow in these bytes.
                            if handshaking && result.is_ok() && !session.is_handshaking() {
                                if let Some(name) = session.username() {
                                    shard.set_cert_username(conn, name);
                                }
                            }
                            match result {
                                Ok(()) => {
                                    if !tls.plain.is_empty() {
                                        shard.on_read(conn, &tls.plain, now);
                                    }
                                    if session.ended() {
                                        // The WebSocket is over (the peer's close, a
                                        // protocol error, a refused upgrade): its
                                        // answer goes out, then the socket closes.
                                        if let Some(e) = session.ws_error() {
                                            report.ws_refused.count(e);
                                            tracing::debug!(
                                                shard = shard.id(),
                                                conn,
                                                "closing: {e}"
                                            );
                                        }
                                        shard.on_closed(conn, now);
                                        c.state = State::Draining;
                                        tls.closing.push((conn, sock));
                                    }
                                    // Handshake answers, pongs, close frames: sent now
                                    // (the shard's Flush takes them along otherwise).
                                    if !c.sending {
                                        if let Some(data) = session.take_wire() {
                                            c.sending = true;
                                            io.send(sock, data.into());
                                        } else if c.state == State::Draining {
                                            c.state = State::Closing;
                                            io.close(sock);
                                        }
                                    }
                                }
                                Err(e) => {
                                    report.tls_failed += 1;
                                    tracing::debug!(shard = shard.id(), conn, "closed: {e}");
                                    shard.on_closed(conn, now);
                                    // rustls queued the alert naming the failure: it is
                                    // written before the close (then the linger), so
                                    // the client reports why instead of a reset. The
                                    // drain deadline bounds a peer that never reads.
                                    c.state = State::Draining;
                                    if !c.sending {
                                        match session.take_wire() {
                                            Some(alert) => {
                                                c.sending = true;
                                                io.send(sock, alert.into());
                                            }
                                            None => {
                                                c.state = State::Closing;
                                                io.close(sock);
                                            }
                                        }
                                    }
                                    if c.state == State::Draining {
                                        draining.push_back((now + DRAIN_TIMEOUT, conn, sock));
                                    }
                                }
                            }
                            if tls.plain.capacity() > TLS_PLAIN_KEEP_BYTES {
                                tls.plain = Vec::new();
                            }
                        }
                        (State::Migrating, _) => {
                            // Bytes that arrived after the shard decided to migrate
                            // travel with the connection (through its transforms,
                            // which travel too).
                            if let Some((_, handoff)) = outgoing.get_mut(&sock) {
                                match tls.migrating.get_mut(&sock) {
                                    None => handoff.rx.extend_from_slice(io.buf(buf)),
                                    Some(session) => {
                                        let mut plain = Vec::new();
                                        if session.on_recv(io.buf(buf), &mut plain).is_err() {
                                            report.tls_failed += 1;
                                        }
                                        handoff.rx.extend_from_slice(&plain);
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                } else if let Some(h) = http.as_mut().filter(|h| h.owns(sock)) {
                    let data = io.buf(buf).to_vec();
                    h.on_recv(io, sock, &data);
                }
                io.recycle(buf);
            }
            Completion::RecvEnd { sock, errno } => {
                let Some(conn) = conn_of(by_sock, sock) else {
                    if let Some(h) = http.as_mut() {
                        h.on_recv_end(io, sock);
                    }
                    return;
                };
                let Some(Some(c)) = conns.get_mut(conn) else {
                    return;
                };
                if matches!(c.state, State::Open | State::Draining | State::Lingering) {
                    if errno != 0 {
                        tracing::debug!(shard = shard.id(), conn, errno, "receive failed");
                    }
                    if c.state == State::Open {
                        shard.on_closed(conn, now);
                    }
                    c.state = State::Closing;
                    io.close(sock);
                }
            }
            Completion::SendDone { sock, errno } => {
                let Some(conn) = conn_of(by_sock, sock) else {
                    if let Some(h) = http.as_mut() {
                        h.on_send_done(io, sock);
                    }
                    return;
                };
                let Some(Some(c)) = conns.get_mut(conn) else {
                    return;
                };
                c.sending = false;
                if c.read_at != 0 && errno == 0 {
                    let done = shard.latency_stamp(now);
                    report
                        .latency
                        .record_since(std::mem::take(&mut c.read_at), done);
                }
                match (c.state, errno) {
                    (State::Open, 0) | (State::Draining, 0) => {
                        if let Some(data) = Self::next_tx(shard, c, conn, &mut tls.by_conn) {
                            c.sending = true;
                            io.send(sock, data);
                        } else if c.state == State::Draining {
                            // All written: linger rather than close over bytes the
                            // client may still be sending (see `linger`).
                            if linger.start(now, conn, sock) {
                                c.state = State::Lingering;
                                io.shutdown_write(sock);
                            } else {
                                c.state = State::Closing;
                                io.close(sock);
                            }
                        }
                    }
                    (State::Open, e) | (State::Draining, e) => {
                        tracing::debug!(shard = shard.id(), conn, errno = e, "send failed");
                        if c.state == State::Open {
                            shard.on_closed(conn, now);
                        }
                        c.state = State::Closing;
                        io.close(sock);
                    }
                    _ => {}
                }
            }
            Completion::Migrated { sock, result } => {
                let Some((to, handoff)) = outgoing.remove(&sock) else {
                    return;
                };
                let session = tls.migrating.remove(&sock);
                tracing::debug!(shard = shard.id(), sock, to, ?result, "migrated");
                match result {
                    Ok(transfer) => {
                        report.migrations_out += 1;
                        // `Action::Migrate` reserved this place: a mesh that filled up
                        // since cannot refuse the hand-off of a socket already sent.
                        let msg = WorkerMsg::Adopt {
                            handoff,
                            transfer,
                            tls: session,
                        };
                        match mesh.send_reserved(to, msg) {
                            Ok(SendOutcome::QueuedWake) => wake.insert(to),
                            Ok(_) => {}
                            Err(e) => {
                                // Only a shard that is not in the mesh gets here. The
                                // socket already left us with no handoff to pair it
                                // with: io_uring's target closes it after a bound, epoll's
                                // fd is closed here.
                                report.mesh_rejected += 1;
                                report.migrations_failed += 1;
                                tracing::error!(
                                    shard = shard.id(),
                                    to,
                                    "handoff to a shard outside the mesh dropped"
                                );
                                if let WorkerMsg::Adopt { transfer, .. } = e.into_inner() {
                                    io.discard(transfer);
                                }
                            }
                        }
                    }
                    Err(errno) => {
                        mesh.unreserve(to);
                        // The socket is still ours (ENFILE: every table of the target
                        // loop is full): the shard refuses the CONNECT (Server busy)
                        // and closes; the client reconnects.
                        report.migrations_failed += 1;
                        if report.migrations_failed.is_power_of_two() {
                            tracing::warn!(
                                shard = shard.id(),
                                to,
                                errno,
                                failed = report.migrations_failed,
                                "socket handoff refused: connection refused as busy"
                            );
                        }
                        if let Some(conn) = conn_of(by_sock, sock) {
                            if let Some(Some(c)) = conns.get_mut(conn) {
                                c.state = State::Open;
                                if let Some(s) = session {
                                    c.transformed = true;
                                    tls.by_conn.insert(conn, s);
                                }
                            }
                            shard.on_migrate_refused(conn, now);
                        }
                    }
                }
            }
            // Taken by `run_loop` before dispatch.
            Completion::Datagram { buf, .. } => io.recycle(buf),
            Completion::SendToFailed { .. } => {}
            // Outbound connects are the bridges' (taken before dispatch).
            Completion::Connected { .. } => {}
            // Taken by the run loop for the store before dispatching.
            Completion::FileWritten { .. } => {}
            Completion::Released { sock } => {
                let Some(conn) = conn_of(by_sock, sock) else {
                    return;
                };
                by_sock[sock as usize] = NO_CONN;
                if let Some(slot) = conns.get_mut(conn) {
                    if slot.take().is_some_and(|c| c.transformed) {
                        tls.by_conn.remove(&conn);
                    }
                }
                *live = live.saturating_sub(1);
                shard.release(conn);
            }
        }
    }
}
