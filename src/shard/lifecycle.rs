//! A connection's life on this shard, around the MQTT packets: accepted, or adopted
//! from the shard that accepted it (both counted against the admission limits,
//! `limits.rs`), its bytes read and split into frames for `inbound.rs` and
//! `connect.rs`, and its end: a failure answered with DISCONNECT, the peer
//! closing, release by the IO side, shutdown.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};

use super::conn::{Conn, ConnState};
use super::timer::TimerKind;
use super::{connect, Action, ConnId, Handoff, Shard};
use crate::protocol::{Disconnect, Packet, Properties, ReasonCode};
use crate::session::{Phase, SessionError};

/// Over the memory mark a connection may still hold this much of a partial frame
/// (any control packet, an ordinary PUBLISH); one whose frame grows past it is
/// closed with 0x89 Server busy. Without this bound connections that each send part
/// of a `max_packet_size` packet and stall could hold `connections × max_packet_size`.
pub(crate) const RX_OVER_MARK_BYTES: usize = 16 * 1024;

impl Shard {
    /// A TCP connection was accepted on this shard.
    ///
    /// Over `max_connections` / `max_connections_per_ip` the connection is still
    /// accepted (and counted until released) so that its CONNECT can be answered
    /// with a refusal; the connect timeout bounds how long it can stay.
    pub fn accept(&mut self, peer: SocketAddr, now: Instant) -> ConnId {
        self.new_conn(peer, now, now, false)
    }

    /// A connection handed over by another shard (see [`Action::Migrate`]). It was
    /// admitted by the accepting shard; only the memory mark is checked again here.
    pub fn adopt(&mut self, handoff: Handoff, now: Instant) -> ConnId {
        self.adopt_as(handoff, None, now)
    }

    /// [`adopt`](Self::adopt) a connection whose TLS client certificate names a user
    /// (see [`set_cert_username`](Self::set_cert_username)). Not a `Handoff` field: a
    /// `String` there made dropping every `Action` cost more (its drop glue stopped the
    /// compiler inlining it: +5% on route_publish_100_subs).
    pub fn adopt_as(
        &mut self,
        handoff: Handoff,
        cert_username: Option<String>,
        now: Instant,
    ) -> ConnId {
        let conn = self.new_conn(handoff.peer, handoff.accepted_at, now, true);
        if let Some(c) = self.conns.get_mut(conn) {
            c.rx = handoff.rx;
            if let Some(p) = c.pending_mut() {
                p.connect_at = Some(handoff.connect_at);
                p.cert_username = cert_username;
                p.listener_anonymous = handoff.listener_anonymous;
            }
        }
        self.process_rx(conn, now);
        self.bound_rx(conn, now);
        conn
    }

    /// The username a verified TLS client certificate gives, set by the IO side when
    /// the handshake ends (before any CONNECT); read at CONNECT by
    /// [`cert_username`](Self::cert_username). Ignored once CONNECT was processed.
    pub fn set_cert_username(&mut self, conn: ConnId, username: String) {
        if let Some(p) = self.conns.get_mut(conn).and_then(|c| c.pending_mut()) {
            p.cert_username = Some(username);
        }
    }

    /// The accepting listener's own `allow_anonymous` (a `[[listener]]` key), set by
    /// the IO side right after `accept`; it travels with a hand-off.
    pub fn set_listener_anonymous(&mut self, conn: ConnId, allow: Option<bool>) {
        if let Some(p) = self.conns.get_mut(conn).and_then(|c| c.pending_mut()) {
            p.listener_anonymous = allow;
        }
    }

    /// The certificate username of a connection still awaiting (or processing) its
    /// CONNECT: what the authentication check uses in place of the CONNECT's own.
    pub fn cert_username(&self, conn: ConnId) -> Option<&str> {
        self.conns
            .get(conn)
            .and_then(|c| c.pending())
            .and_then(|p| p.cert_username.as_deref())
    }

    pub(super) fn new_conn(
        &mut self,
        peer: SocketAddr,
        accepted_at: Instant,
        now: Instant,
        adopted: bool,
    ) -> ConnId {
        self.last_now = Some(now);
        let seen_ms = self.seen_ms(now);
        self.conn_generation = self.conn_generation.wrapping_add(1);
        let generation = self.conn_generation;
        let conn = self
            .conns
            .insert(Conn::new(peer, accepted_at, seen_ms, generation));
        let refusal = self.limits.admit(conn, peer);
        if let Some(p) = self.conns.get_mut(conn).and_then(|c| c.pending_mut()) {
            p.adopted = adopted;
            p.refusal = if adopted { None } else { refusal };
        }
        self.stats.connections = self.conns.len();
        if !adopted {
            self.stats.accepted += 1;
        }
        let deadline = accepted_at + Duration::from_millis(self.config.connect_timeout_ms);
        self.timers.push(
            now,
            deadline,
            TimerKind::ConnectTimeout,
            conn as u32,
            generation,
        );
        conn
    }

    /// The IO side could not hand `conn` to its owner shard (see [`Action::Migrate`]:
    /// the owner's socket table or the mesh was full) and still holds the socket. Its
    /// CONNECT is refused like any overload: CONNACK 0x89 Server busy (3.x: return
    /// code 3 Server unavailable), then `Action::Close`.
    pub fn on_migrate_refused(&mut self, conn: ConnId, now: Instant) {
        self.last_now = Some(now);
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if c.state != ConnState::Migrated {
            return;
        }
        // Back to the state a refusal is answered from; the bytes left with the
        // hand-off and nothing more is read.
        c.state = ConnState::AwaitConnect;
        c.rx = BytesMut::new();
        self.sync_rx(conn);
        self.stats.refused_handoff += 1;
        self.write_control(conn, &connect::connack(ReasonCode::ServerBusy));
        self.close(conn);
    }

    /// Bytes received on `conn`. Copied as needed; the caller may reuse `data`.
    pub fn on_read(&mut self, conn: ConnId, data: &[u8], now: Instant) {
        let seen_ms = self.seen_ms(now);
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if !c.is_live() {
            return;
        }
        c.rx.extend_from_slice(data);
        self.stats.bytes_in += data.len() as u64;
        c.last_seen_ms = seen_ms;
        self.last_now = Some(now);
        if c.state == ConnState::Verifying {
            // Nothing is decoded until the password is checked: hold at most one
            // packet's worth, as a partial frame would be.
            if c.rx.len() > self.config.max_packet_size as usize {
                self.stats.closed_packet_too_large += 1;
                self.close(conn);
            }
            return;
        }
        self.process_rx(conn, now);
        self.bound_rx(conn, now);
    }

    /// Counts what `conn`'s receive buffer holds after a read, and ends the
    /// connection if its partial frame is past `RX_OVER_MARK_BYTES` while the shard
    /// is over the memory mark.
    fn bound_rx(&mut self, conn: ConnId, now: Instant) {
        // `sync_rx` inlined: this runs after every read.
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let cap = u32::try_from(c.rx.capacity()).unwrap_or(u32::MAX);
        self.stats.bytes_rx = self.stats.bytes_rx + cap as usize - c.rx_counted as usize;
        c.rx_counted = cap;
        if c.rx.len() > RX_OVER_MARK_BYTES && c.is_live() && self.over_memory_mark() {
            self.fail(conn, SessionError::ServerBusy, now);
        }
    }

    /// Brings `stats.bytes_rx` up to date with `conn`'s receive buffer. Called
    /// wherever the buffer may have changed size; `release` takes back the rest.
    pub(super) fn sync_rx(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let cap = u32::try_from(c.rx.capacity()).unwrap_or(u32::MAX);
        self.stats.bytes_rx = self.stats.bytes_rx + cap as usize - c.rx_counted as usize;
        c.rx_counted = cap;
    }

    /// Decodes and handles every complete frame in `conn`'s receive buffer.
    pub(super) fn process_rx(&mut self, conn: ConnId, now: Instant) {
        let max_packet = self.config.max_packet_size as usize;
        // Each turn consumes one frame or returns, so this is bounded by the input.
        loop {
            let Some(c) = self.conns.get_mut(conn) else {
                return;
            };
            match c.state {
                ConnState::AwaitConnect => {
                    if !self.try_connect(conn, now) {
                        return;
                    }
                    continue;
                }
                ConnState::Connected => {}
                _ => return,
            }
            // The commonest frame of a QoS 1 stream, a PUBACK with reason Success and no
            // properties (remaining length 2, the same in every version), is read in
            // place: decoding it builds and drops a whole `Packet`. Anything else,
            // including packet id 0 and a max_packet_size below 4, takes the decoder.
            if max_packet >= 4 {
                if let [0x40, 0x02, hi, lo, ..] = c.rx[..] {
                    let packet_id = u16::from_be_bytes([hi, lo]);
                    if packet_id != 0 {
                        c.rx.advance(4);
                        if c.rx.is_empty() {
                            c.rx = BytesMut::new();
                        }
                        self.on_flow_end(conn, packet_id, Phase::AwaitAck, now);
                        self.drop_slow_consumers(now);
                        continue;
                    }
                }
            }
            let decoded = crate::protocol::decode_packet(&mut c.rx, c.version, max_packet);
            if c.rx.is_empty() {
                c.rx = BytesMut::new();
            }
            match decoded {
                Ok(None) => return,
                Ok(Some(packet)) => {
                    if let Err(e) = self.handle_packet(conn, packet, now) {
                        self.fail(conn, e, now);
                        self.drop_slow_consumers(now);
                        return;
                    }
                    // Replies this connection does not read, slow consumers of
                    // what it published: end them before the next frame.
                    self.drop_slow_consumers(now);
                }
                Err(e) => {
                    self.fail(conn, SessionError::Decode(e), now);
                    return;
                }
            }
        }
    }

    /// The peer closed or the socket failed. The IO side calls `release` afterwards.
    pub fn on_closed(&mut self, conn: ConnId, now: Instant) {
        self.last_now = Some(now);
        if let Some(c) = self.conns.get(conn).filter(|c| c.is_live()) {
            tracing::debug!(
                shard = self.id,
                conn,
                client_id = %self.client_id_of(c.session),
                "client connection closed by the peer (no DISCONNECT)"
            );
        }
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let was = c.state;
        c.state = ConnState::Closed;
        c.rx = BytesMut::new();
        self.sync_rx(conn);
        if was == ConnState::Connected {
            self.detach_session(conn, true, now);
        }
    }

    /// A session's client id for log lines (empty before CONNECT).
    pub(super) fn client_id_of(&self, session: u32) -> String {
        self.sessions
            .get(session)
            .map(|s| String::from_utf8_lossy(&s.client_id).into_owned())
            .unwrap_or_default()
    }

    /// The IO side has no more operations on `conn`; its id may be reused.
    pub fn release(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        if c.state == ConnState::Connected {
            // Released without on_closed: the socket is gone all the same. No `now`
            // here, so use the latest time the shard was given (`new_conn` gave one).
            if let Some(now) = self.last_now {
                self.detach_session(conn, true, now);
            }
        }
        let (unread, rx) = self
            .conns
            .get(conn)
            .map_or((0, 0), |c| (c.tx.own_len(), c.rx_counted as usize));
        self.stats.bytes_tx -= unread;
        self.stats.bytes_rx -= rx;
        self.conns.remove(conn);
        self.forget_identity(conn);
        self.limits.release(conn);
        self.stats.connections = self.conns.len();
    }

    /// Graceful shutdown: DISCONNECT 0x8B to MQTT 5 clients, close everything.
    pub fn shutdown(&mut self, now: Instant) {
        self.last_now = Some(now);
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_live())
            .map(|(k, _)| k)
            .collect();
        for conn in ids {
            self.fail(conn, SessionError::ServerShuttingDown, now);
        }
    }

    /// Ends `conn` because of `err`: DISCONNECT with its reason (MQTT 5), Close.
    pub(super) fn fail(&mut self, conn: ConnId, err: SessionError, now: Instant) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        if !c.is_live() {
            return;
        }
        let (state, v5) = (c.state, c.version.is_v5());
        tracing::debug!(
            shard = self.id,
            conn,
            client_id = %self.client_id_of(c.session),
            reason_code = format_args!("{:#04x}", err.reason_code() as u8),
            reason = ?err,
            "client disconnected by the broker"
        );
        self.count_failure(&err);
        if state != ConnState::Connected {
            self.close(conn);
            return;
        }
        // A peer that does not read would not see a DISCONNECT either.
        if v5 && err != SessionError::NotReading {
            let d = Disconnect {
                code: err.reason_code(),
                properties: Properties::default(),
            };
            self.write_control(conn, &Packet::Disconnect(d));
        }
        self.close(conn);
        self.detach_session(conn, err.publishes_will(), now);
    }

    pub(super) fn count_failure(&mut self, err: &SessionError) {
        let s = &mut self.stats;
        match err {
            SessionError::Decode(crate::protocol::DecodeError::PacketTooLarge { .. }) => {
                s.closed_packet_too_large += 1
            }
            SessionError::Decode(_)
            | SessionError::ProtocolError
            | SessionError::TopicAliasInvalid
            | SessionError::RetainNotSupported => s.closed_protocol_error += 1,
            SessionError::TopicNameInvalid => s.closed_topic_invalid += 1,
            SessionError::ReceiveMaximumExceeded => s.closed_receive_maximum += 1,
            SessionError::QuotaExceeded => s.closed_slow_consumer += 1,
            SessionError::NotReading => s.closed_not_reading += 1,
            SessionError::ServerBusy => s.closed_memory += 1,
            SessionError::TokenExpired => s.auth_jwt_expired += 1,
            SessionError::KeepAliveTimeout
            | SessionError::SessionTakenOver
            | SessionError::ServerShuttingDown => {}
        }
    }

    /// Emits `Close` once; input is ignored from here on. A connected connection's
    /// session is detached by the caller (`detach_session`).
    pub(super) fn close(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if !c.is_live() {
            return;
        }
        c.state = ConnState::Closing;
        c.rx = BytesMut::new();
        c.take_pending();
        self.actions.push_back(Action::Close(conn));
        self.sync_rx(conn);
    }
}
