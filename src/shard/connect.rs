//! CONNECT: owner check and migration, client id rules, takeover, session
//! create/resume, CONNACK; and the other end of a connection's life: detaching the
//! session, wills, session end.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::conn::{ConnState, MAX_OUTBOUND_ALIASES};
use super::events;
use super::limits::Refusal;
use super::timer::TimerKind;
use super::{Action, ConnId, Handoff, Shard};
use crate::config::Config;
use crate::protocol::{
    decode_packet, peek_frame, ConnAck, Connect, DecodeError, Disconnect, Packet, Properties,
    PropertyValues, ProtocolVersion, PublishProperties, PublishRare, ReasonCode,
};
use crate::session::{Message, Will, NONE};

/// Protocol level byte of a CONNECT frame at the start of `buf`, if readable:
/// lets a CONNECT that fails to decode be answered in the client's own format.
fn peek_connect_level(buf: &[u8]) -> Option<u8> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let mut i = 1;
    while buf.get(i)? & 0x80 != 0 {
        i += 1;
        if i > 4 {
            return None;
        }
    }
    let name_at = i + 1;
    let name_len = u16::from_be_bytes([*buf.get(name_at)?, *buf.get(name_at + 1)?]) as usize;
    buf.get(name_at + 2 + name_len).copied()
}

/// The expiry a session gets when its client asks for `requested_s`: "never"
/// (`u32::MAX`) becomes `persistent_session_expiry_s`, and every interval is capped
/// by `max_session_expiry_s`.
pub(crate) fn granted_expiry_s(cfg: &crate::config::Config, requested_s: u32) -> u32 {
    let s = if requested_s == u32::MAX {
        cfg.persistent_session_expiry_s.unwrap_or(u32::MAX)
    } else {
        requested_s
    };
    s.min(cfg.max_session_expiry_s)
}

pub(crate) fn connack(code: ReasonCode) -> Packet {
    Packet::ConnAck(ConnAck {
        session_present: false,
        code,
        properties: Properties::default(),
    })
}

/// The highest keepalive an MQTT 5 client keeps; one asking for more, or for none (0),
/// is given this as Server Keep Alive. The lower of `server_keep_alive_s` (a cap for
/// MQTT 5 only, so one profile serves 3.x clients with keepalive 0 too) and
/// `keepalive_max_s` (which also refuses 3.x clients outside it). `None`: no cap.
pub(crate) fn v5_keepalive_cap_s(cfg: &Config) -> Option<u16> {
    let max = (cfg.keepalive_max_s > 0).then_some(cfg.keepalive_max_s);
    match (cfg.server_keep_alive_s, max) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Will properties arrive as general `Properties`; the will is published with the
/// PUBLISH subset.
fn will_publish_properties(p: &Properties) -> PublishProperties {
    PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval_s: p.message_expiry_interval_s,
        topic_alias: None,
        rare: PublishRare {
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            subscription_identifiers: Default::default(),
            content_type: p.content_type.clone(),
            user_properties: p.user_properties.clone(),
        }
        .into(),
    }
}

impl Shard {
    /// Handles the first frame of a connection. Returns `true` when the connection
    /// is now connected and further frames should be decoded.
    pub(crate) fn try_connect(&mut self, conn: ConnId, now: Instant) -> bool {
        // Until CONNECT completes only a CONNECT-sized packet is buffered: a peer
        // that has not even identified itself cannot make us hold `max_packet_size`.
        let max_packet =
            (self.config.max_packet_size as usize).min(self.config.max_connect_packet_bytes);
        let Some(c) = self.conns.get_mut(conn) else {
            return false;
        };
        // Only copy once the whole frame is here (a handoff needs the raw bytes).
        match peek_frame(&c.rx, max_packet) {
            Ok(None) => return false,
            Ok(Some(_)) => {}
            Err(e) => {
                self.refuse_connect(conn, e);
                return false;
            }
        }
        let mut copy = BytesMut::from(&c.rx[..]);
        let packet = match decode_packet(&mut copy, ProtocolVersion::V311, max_packet) {
            Ok(Some(p)) => p,
            Ok(None) => return false,
            Err(e) => {
                self.refuse_connect(conn, e);
                return false;
            }
        };
        let Packet::Connect(connect) = packet else {
            // First packet must be CONNECT [MQTT-3.1.0-1]: close without a reply.
            self.close(conn);
            return false;
        };
        let version = connect.protocol;
        c.version = version;
        if let Some(r) = self.admission(conn, now) {
            let s = &mut self.stats;
            match r {
                Refusal::TooManyConnections => s.refused_max_connections += 1,
                Refusal::TooManyFromIp => s.refused_per_ip += 1,
                Refusal::Rate => s.refused_rate += 1,
                Refusal::Busy => s.refused_busy += 1,
            }
            self.write_control(conn, &connack(r.reason_code()));
            self.close(conn);
            return false;
        }
        let id_len = connect.client_id.len();
        if id_len > self.config.max_client_id_len
            || (id_len == 0 && version == ProtocolVersion::V31)
            || (id_len == 0 && version == ProtocolVersion::V311 && !connect.clean_start)
        {
            self.write_control(conn, &connack(ReasonCode::ClientIdentifierNotValid));
            self.close(conn);
            return false;
        }
        // `$bridge/NAME` is a bridge's own local session (worker::bridges), whose
        // connection carries that identity: a network client may not take it over.
        if connect.client_id.starts_with(b"$bridge/")
            && self.cert_username(conn).map(str::as_bytes) != Some(&connect.client_id[..])
        {
            self.write_control(conn, &connack(ReasonCode::ClientIdentifierNotValid));
            self.close(conn);
            return false;
        }
        // A 3.x client cannot be told a lower keepalive (MQTT 5 gets Server Keep
        // Alive): with a cap set, one asking for more, or for none (0), is refused
        // with return code 2, as Mosquitto's `max_keepalive` does. Refused here,
        // before any session is taken over.
        let cap_s = self.config.keepalive_max_s;
        if !version.is_v5() && cap_s > 0 && !(1..=cap_s).contains(&connect.keep_alive_s) {
            self.stats.refused_keepalive += 1;
            self.write_control(conn, &connack(ReasonCode::ClientIdentifierNotValid));
            self.close(conn);
            return false;
        }
        // The will is published later under this topic: hold it to the limits a
        // PUBLISH topic meets now (the decoder already refused wildcards and NUL).
        if let Some(w) = &connect.will {
            let (max_len, max_levels) = (self.config.max_topic_len, self.config.max_topic_levels);
            if crate::topic::validate_decoded_name(&w.topic, max_len, max_levels).is_err() {
                self.stats.closed_topic_invalid += 1;
                if version.is_v5() {
                    // 3.x has no CONNACK code for it: the connection is just closed.
                    self.write_control(conn, &connack(ReasonCode::TopicNameInvalid));
                }
                self.close(conn);
                return false;
            }
        }
        if version.is_v5() && connect.properties.authentication_method.is_some() {
            // No enhanced authentication (yet).
            self.write_control(conn, &connack(ReasonCode::BadAuthenticationMethod));
            self.close(conn);
            return false;
        }
        if id_len > 0 {
            let owner = self.placement.owner(&connect.client_id, self.shard_count);
            if owner != self.id {
                let Some(c) = self.conns.get_mut(conn) else {
                    return false;
                };
                let rx = std::mem::take(&mut c.rx);
                let pending = c.take_pending();
                c.state = ConnState::Migrated;
                // A certificate username stays behind: the owner's IO side reads it
                // again from the TLS state that travels (`Shard::adopt_as`).
                let (peer, accepted_at, listener_anonymous) = match pending {
                    Some(p) => (p.peer, p.accepted_at, p.listener_anonymous),
                    None => (std::net::SocketAddr::from(([0, 0, 0, 0], 0)), now, None),
                };
                self.actions.push_back(Action::Migrate {
                    conn,
                    to: owner,
                    handoff: Box::new(Handoff {
                        peer,
                        rx,
                        accepted_at,
                        connect_at: now,
                        listener_anonymous,
                    }),
                });
                return false;
            }
        }
        let Some(c) = self.conns.get_mut(conn) else {
            return false;
        };
        c.rx = if copy.is_empty() {
            BytesMut::new()
        } else {
            copy
        };
        // On the owner only: the ACL is compiled where the connection will live.
        let Some(connect) = self.authenticate(conn, connect, now) else {
            return false;
        };
        self.handle_connect(conn, connect, now);
        self.conns
            .get(conn)
            .is_some_and(|c| c.state == ConnState::Connected)
    }

    /// A CONNECT that waited for the verifier pool goes on, then the frames that
    /// arrived meanwhile are decoded.
    pub(super) fn finish_connect(&mut self, conn: ConnId, connect: Box<Connect>, now: Instant) {
        self.handle_connect(conn, connect, now);
        if self
            .conns
            .get(conn)
            .is_some_and(|c| c.state == ConnState::Connected)
        {
            self.process_rx(conn, now);
        }
    }

    /// Whether `conn`'s CONNECT is refused: a connection limit hit at accept, the
    /// CONNECT rate (charged on the accepting shard only), the memory mark (checked
    /// on the accepting shard and again on the owner, where the session lives).
    fn admission(&mut self, conn: ConnId, now: Instant) -> Option<Refusal> {
        let (refusal, adopted) = self
            .conns
            .get(conn)
            .and_then(|c| c.pending())
            .map_or((None, false), |p| (p.refusal, p.adopted));
        if refusal.is_some() {
            return refusal;
        }
        if !adopted
            && !self
                .limits
                .rate
                .try_take(self.config.connect_rate_per_s, now)
        {
            return Some(Refusal::Rate);
        }
        if self.over_memory_mark() {
            return Some(Refusal::Busy);
        }
        None
    }

    /// CONNECT that failed to decode: CONNACK in the client's format where the
    /// spec wants one, then close.
    fn refuse_connect(&mut self, conn: ConnId, e: DecodeError) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let reply = match e {
            // 3.1.1 [MQTT-3.1.2-2]: return code 1. 5.0 only says MAY send 0x84, and a
            // client of an unknown level can at least parse the 4-byte 3.1.1 form.
            DecodeError::UnsupportedProtocolLevel(_) => Some(ProtocolVersion::V311),
            _ if peek_connect_level(&c.rx) == Some(5) => Some(ProtocolVersion::V5),
            _ => None,
        };
        if let Some(v) = reply {
            c.version = v;
            self.write_control(conn, &connack(e.reason_code()));
        }
        if matches!(e, DecodeError::PacketTooLarge { .. }) {
            self.stats.closed_packet_too_large += 1;
        } else {
            self.stats.closed_protocol_error += 1;
        }
        self.close(conn);
    }

    /// A client id for an empty one: unique on this shard and owned by it, so the
    /// connection does not migrate.
    fn assign_client_id(&mut self) -> Bytes {
        loop {
            self.assigned_ids += 1;
            let id = format!("ringmq-{}-{:x}", self.id, self.assigned_ids);
            if self.placement.owner(id.as_bytes(), self.shard_count) == self.id
                && self.sessions.find(id.as_bytes()).is_none()
            {
                return Bytes::from(id);
            }
        }
    }

    fn handle_connect(&mut self, conn: ConnId, connect: Box<Connect>, now: Instant) {
        // On a cluster node the session is first claimed from the cluster
        // (`cluster_session.rs`), which answers through `continue_connect`.
        let Some(connect) = self.hold_connect_cluster(conn, connect) else {
            return;
        };
        self.continue_connect(conn, connect, now);
    }

    pub(super) fn continue_connect(&mut self, conn: ConnId, connect: Box<Connect>, now: Instant) {
        // Resuming a session waits until what it is made of is durable (`durable.rs`).
        let Some(connect) = self.hold_connect(conn, connect) else {
            return;
        };
        self.handle_connect_now(conn, *connect, now);
    }

    /// A CONNECT that waited for the log goes on, then the frames that arrived
    /// meanwhile are decoded.
    pub(super) fn finish_connect_durable(&mut self, conn: ConnId, connect: Connect, now: Instant) {
        self.handle_connect_now(conn, connect, now);
        if self
            .conns
            .get(conn)
            .is_some_and(|c| c.state == ConnState::Connected)
        {
            self.process_rx(conn, now);
        }
    }

    fn handle_connect_now(&mut self, conn: ConnId, connect: Connect, now: Instant) {
        let cfg = self.config.clone();
        let version = connect.protocol;
        let v5 = version.is_v5();
        let mut assigned = None;
        let client_id = if connect.client_id.is_empty() {
            let id = self.assign_client_id();
            assigned = Some(id.clone());
            id
        } else {
            // Own copy: the decoded id is a slice of the receive buffer.
            Bytes::copy_from_slice(&connect.client_id)
        };

        // Keepalive: MQTT 5 clients can be told a lower one (Server Keep Alive). Only
        // lowered: a client asking for less keeps it, so its will fires when it asked.
        let mut keepalive_s = connect.keep_alive_s;
        let mut server_keep_alive = None;
        if let Some(cap_s) = v5.then(|| v5_keepalive_cap_s(&cfg)).flatten() {
            if keepalive_s == 0 || keepalive_s > cap_s {
                server_keep_alive = Some(cap_s);
                keepalive_s = cap_s;
            }
        }
        let requested_s = if v5 {
            connect.properties.session_expiry_interval_s.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        let expiry_s = granted_expiry_s(&cfg, requested_s);

        // When the node read this CONNECT: a hand-off may arrive after a CONNECT for
        // the same id that was read later (on this shard, or by a faster hand-off).
        let read_at = self
            .conns
            .get(conn)
            .and_then(|c| c.pending())
            .and_then(|p| p.connect_at)
            .unwrap_or(now);

        let connect_ns = self.stamp_ns(read_at);

        // Existing session: takeover of its connection, clean start, or resume. A
        // session last taken by a CONNECT the node read after this one (which then
        // arrived late, by hand-off) stays with it; offline too, since the newer
        // connection may have come and gone while the hand-off travelled.
        let mut session = self.sessions.find(&client_id);
        // Refused before anything is taken over: a new session would pass
        // `max_sessions` (a clean start on an existing one replaces it, no more).
        if session.is_none() && self.limits.sessions_full() {
            self.stats.refused_max_sessions += 1;
            self.write_control(conn, &connack(ReasonCode::QuotaExceeded));
            self.close(conn);
            return;
        }
        if let Some(s) = session {
            if self
                .sessions
                .get(s)
                .is_some_and(|x| x.connect_ns > connect_ns)
            {
                self.answer_superseded(conn, v5, server_keep_alive);
                return;
            }
            self.take_over(s, connect.clean_start, now);
            if connect.clean_start {
                self.end_session(s, now);
                session = None;
            }
        }
        let session_present = session.is_some();
        let was_persistent = session.is_some_and(|s| self.is_persistent(s));
        let session = match session {
            Some(s) => s,
            None => {
                let s = self.sessions.create(&client_id);
                self.limits.session_added();
                self.stats.sessions = self.sessions.len();
                s
            }
        };

        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        c.state = ConnState::Connected;
        let (peer, accepted_at) = c.pending().map(|p| (p.peer, p.accepted_at)).unzip();
        c.take_pending();
        c.session = session;
        c.version = version;
        c.keepalive_s = keepalive_s;
        // A bridge's session (only a bridge has a `$bridge/` id, checked above)
        // holds each message until the remote acknowledged it: its window is
        // the packet id space, and the bridge's `queue_max_messages` bounds it.
        let window_max = if connect.client_id.starts_with(b"$bridge/") {
            u16::MAX
        } else {
            self.config.max_inflight
        };
        c.client_receive_max = window_max;
        if v5 {
            let p = &connect.properties;
            c.client_receive_max = p.receive_maximum.unwrap_or(u16::MAX).min(window_max);
            c.client_max_packet = p.maximum_packet_size.unwrap_or(u32::MAX);
            // Aliases beyond our own cap would never be used: the cap fits a byte.
            c.client_alias_max = p
                .topic_alias_maximum
                .unwrap_or(0)
                .min(MAX_OUTBOUND_ALIASES as u16) as u8;
        }
        if let Some(s) = self.sessions.get_mut(session) {
            s.conn = conn as u32;
            s.connect_ns = connect_ns;
            s.expiry_s = expiry_s;
            s.expires_ns = i64::MAX;
            s.will = connect.will.as_ref().map(|w| {
                Box::new(Will {
                    topic: Bytes::copy_from_slice(&w.topic),
                    payload: Bytes::copy_from_slice(&w.payload),
                    qos: w.qos,
                    retain: w.retain,
                    properties: will_publish_properties(&w.properties),
                    delay_s: if v5 {
                        w.properties.will_delay_interval_s.unwrap_or(0)
                    } else {
                        0
                    },
                    at: None,
                })
            });
        }
        if session_present {
            // A kept session's subscriptions decide whether live delivery may skip
            // the read check, as after a SUBSCRIBE.
            self.refresh_read_grant(conn, session);
        }

        self.cluster_will_set(session);
        if session_present {
            self.cluster_session_resumed(session);
        }
        if expiry_s > 0 {
            self.log_session(session);
        } else if was_persistent {
            self.log_session_del(&client_id);
        }

        let mut properties = Properties::default();
        if v5 {
            properties = self.connack_properties(server_keep_alive);
            properties.to_mut().assigned_client_identifier = assigned;
            // 3.2.2.3.2: the client is told when its interval was not used.
            if expiry_s != requested_s {
                properties.to_mut().session_expiry_interval_s = Some(expiry_s);
            }
        }
        let ack = ConnAck {
            session_present,
            code: ReasonCode::Success,
            properties,
        };
        self.write_control(conn, &Packet::ConnAck(ack));
        self.arm_keepalive(conn, accepted_at, now);
        if self.config.sys_client_events {
            let e = events::Connected {
                client_id: &client_id[..],
                peer,
                protocol: version as u8,
                clean_start: connect.clean_start,
                keepalive_s,
            };
            self.event_connected(e, now);
        }
        if session_present {
            self.resend_inflight(session, now);
            self.pump(session, now);
        }
    }

    /// The properties of an accepting MQTT 5 CONNACK.
    fn connack_properties(&self, server_keep_alive: Option<u16>) -> Properties {
        let cfg = &self.config;
        let mut properties = Properties::from(PropertyValues {
            receive_maximum: Some(cfg.receive_maximum),
            maximum_packet_size: Some(cfg.max_packet_size),
            server_keep_alive_s: server_keep_alive,
            ..Default::default()
        });
        if cfg.topic_alias_maximum > 0 {
            properties.to_mut().topic_alias_maximum = Some(cfg.topic_alias_maximum);
        }
        // Feature flags are sent only when a feature is off (absent = available).
        if !cfg.retain_available {
            properties.to_mut().retain_available = Some(0);
        }
        if !cfg.wildcard_subscription_available {
            properties.to_mut().wildcard_subscription_available = Some(0);
        }
        if !cfg.subscription_identifier_available {
            properties.to_mut().subscription_identifier_available = Some(0);
        }
        if !cfg.shared_subscription_available {
            properties.to_mut().shared_subscription_available = Some(0);
        }
        properties
    }

    /// A CONNECT overtaken by a later one for the same client id: answered as if it
    /// had connected and been taken over at once (CONNACK, then DISCONNECT 0x8E for
    /// MQTT 5), then closed. The session and the newer connection are left alone,
    /// and this CONNECT's will is discarded (it never held the session).
    fn answer_superseded(&mut self, conn: ConnId, v5: bool, server_keep_alive: Option<u16>) {
        self.stats.closed_superseded += 1;
        let properties = if v5 {
            self.connack_properties(server_keep_alive)
        } else {
            Properties::default()
        };
        let ack = ConnAck {
            session_present: false,
            code: ReasonCode::Success,
            properties,
        };
        self.write_control(conn, &Packet::ConnAck(ack));
        self.close_taken_over(conn, v5);
    }

    /// Closes a connection whose session another CONNECT took: MQTT 5 is told so
    /// first (DISCONNECT 0x8E); 3.x has no such packet.
    fn close_taken_over(&mut self, conn: ConnId, v5: bool) {
        if v5 {
            let d = Disconnect {
                code: ReasonCode::SessionTakenOver,
                properties: Properties::default(),
            };
            self.write_control(conn, &Packet::Disconnect(d));
        }
        self.close(conn);
    }

    /// A new CONNECT for an existing session: the old connection (if any) gets
    /// DISCONNECT 0x8E and is closed; a pending will is published or cancelled.
    ///
    /// Will rules: 3.1.1 publishes the will whenever the server closes the old
    /// connection; 5.0 publishes it when the Will Delay Interval is 0 or the session
    /// ends now (clean start), and otherwise the reconnect cancels it.
    pub(super) fn take_over(&mut self, session: u32, clean_start: bool, now: Instant) {
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        let old = s.conn;
        s.conn = NONE;
        let will = s.will.take();
        if will.is_some() {
            self.cluster_will_gone(session);
        }
        let mut publish_will = false;
        if old != NONE {
            let old = old as usize;
            if let Some(c) = self.conns.get_mut(old) {
                c.session = NONE;
                let v5 = c.version.is_v5();
                if let Some(w) = &will {
                    publish_will = !v5 || w.delay_s == 0 || clean_start;
                }
                self.close_taken_over(old, v5);
            }
        } else {
            // Offline with a will still waiting for its delay: the session ending now
            // publishes it, a resume cancels it.
            publish_will = will.is_some() && clean_start;
        }
        if publish_will {
            if let Some(w) = will {
                self.publish_will_now(session, *w, now);
            }
        }
    }

    /// The connection `conn` is gone (or going): detach its session and apply the
    /// will and session-expiry rules. `abnormal`: anything but DISCONNECT 0x00.
    pub(crate) fn detach_session(&mut self, conn: ConnId, abnormal: bool, now: Instant) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let session = c.session;
        c.session = NONE;
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        if s.conn != conn as u32 {
            return;
        }
        s.conn = NONE;
        let had_will = s.will.is_some();
        if self.config.sys_client_events {
            let id = s.client_id.clone();
            self.event_disconnected(&id, !abnormal, now);
        }
        if had_will {
            self.cluster_will_gone(session);
        }
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        let expiry_s = s.expiry_s;
        let will_delay_s = s.will.as_ref().map(|w| w.delay_s);
        if !abnormal {
            s.will = None;
        }
        if expiry_s == 0 {
            self.end_session(session, now);
            return;
        }
        self.cluster_session_offline(session);
        // Offline, its in-flight messages wait like queued ones (see
        // `deliver::queued_arc`): each gets a copy that owns its bytes.
        if let Some(d) = self
            .sessions
            .get_mut(session)
            .and_then(|s| s.delivery.as_deref_mut())
        {
            for f in d.inflight.iter_mut().filter(|f| !f.out.msg.owned) {
                f.out.msg = std::sync::Arc::new(f.out.msg.compacted());
            }
        }
        if expiry_s != u32::MAX {
            let at = now + Duration::from_secs(u64::from(expiry_s));
            let at_ns = self.stamp_ns(at);
            if let Some(s) = self.sessions.get_mut(session) {
                s.expires_ns = at_ns;
            }
            self.arm_session_timer(session, TimerKind::SessionExpiry, at, now);
        }
        match will_delay_s {
            Some(0) if abnormal => self.publish_will(session, now),
            Some(d) if abnormal => {
                // Published at the delay or at session end, whichever is first; the
                // session-expiry timer covers the latter.
                let at = now + Duration::from_secs(u64::from(d));
                if let Some(w) = self.sessions.get_mut(session).and_then(|s| s.will.as_mut()) {
                    w.at = Some(at);
                }
                self.arm_session_timer(session, TimerKind::WillDelay, at, now);
            }
            _ => {}
        }
        if will_delay_s.is_some() && self.sessions.get(session).is_some_and(|s| s.will.is_none()) {
            // Dropped (normal disconnection) or published: gone on disk too.
            self.log_session(session);
        }
    }

    /// Publishes and removes the session's stored will, if any.
    pub(crate) fn publish_will(&mut self, session: u32, now: Instant) {
        let Some(s) = self.sessions.get_mut(session) else {
            return;
        };
        if let Some(w) = s.will.take() {
            // A delayed will's session stays; recorded without it before it goes out.
            self.log_session(session);
            self.publish_will_now(session, *w, now);
        }
    }

    fn publish_will_now(&mut self, session: u32, w: Will, now: Instant) {
        if w.retain && !self.config.retain_available {
            return;
        }
        let msg = Message {
            topic: w.topic,
            payload: w.payload,
            qos: w.qos,
            retain: w.retain,
            properties: w.properties,
            arrived_at: now,
            origin_shard: self.id,
            origin_session: session,
            // Topic and payload were copied at CONNECT; the properties are slices
            // of the CONNECT frame.
            owned: false,
            cluster_key: 0,
        };
        self.publish(msg, now);
        self.drop_slow_consumers(now);
    }

    /// Ends a session: pending will published, subscriptions and queue dropped.
    pub(crate) fn end_session(&mut self, session: u32, now: Instant) {
        self.publish_will(session, now);
        if self.sessions.get(session).is_some_and(|s| s.expiry_s > 0) {
            // Only a persistent session was saved (a clean one never is, and its
            // end costs the cluster nothing).
            self.cluster_session_ended(session);
        }
        if self.is_persistent(session) {
            if let Some(id) = self.sessions.get(session).map(|s| s.client_id.clone()) {
                self.log_session_del(&id);
            }
        }
        if !self.cluster_detached.is_empty() {
            // A held copy `on_handover_unconfirmed` detached ends detached: nothing
            // is left to reattach.
            if let Some(s) = self.sessions.get(session) {
                self.cluster_detached.remove(&s.client_id[..]);
            }
        }
        self.remove_all_subs(session);
        if let Some(s) = self.sessions.remove(session) {
            self.limits.session_removed();
            if let Some(d) = s.delivery {
                self.stats.bytes_queued -= d.queued_bytes;
            }
        }
        self.stats.sessions = self.sessions.len();
    }
}

#[cfg(test)]
mod tests {
    use super::peek_connect_level;

    #[test]
    fn peeks_protocol_level() {
        assert_eq!(
            peek_connect_level(&[0x10, 10, 0, 4, b'M', b'Q', b'T', b'T', 5]),
            Some(5)
        );
        assert_eq!(peek_connect_level(&[0x10, 10, 0, 4, b'M']), None);
        assert_eq!(
            peek_connect_level(&[0x30, 10, 0, 4, b'M', b'Q', b'T', b'T', 5]),
            None
        );
    }
}
