//! One loop's MQTT-SN gateway joined to that loop's shard (sans-IO): each SN client's
//! session is an ordinary MQTT 3.1.1 session on a *virtual connection* of the shard,
//! one `ConnId` with no socket behind it. The worker hands this the datagrams that
//! belong to the loop, the shard's `Flush`/`Close` actions on virtual connections,
//! and a periodic tick; it returns the datagrams to send.
//!
//! The worker routes an SN client's datagrams to the loop that owns its client id
//! (as TCP connections are handed to their owner), so a virtual connection is always
//! opened on its session's owner and the shard never migrates one. QoS −1 publishes
//! go through one extra virtual connection per loop, under a client id this loop owns.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::{Bytes, BytesMut};

use super::codec::{decode as decode_sn, encode_to_bytes as encode_sn, Message, ReturnCode};
use super::gateway::{Gateway, GatewayLimits, Output, Upstream};
use super::link::MqttLink;
use crate::protocol::{decode_packet, encode_to_bytes, Packet, ProtocolVersion, ReasonCode};
use crate::shard::{ConnId, Shard};

/// How often the gateway's timers (keepalive, sleep, Tretry, ADVERTISE) are checked
/// while it holds clients: they are seconds-scale, and one check walks every client.
pub const TICK: Duration = Duration::from_millis(100);

/// Where an SN client speaks from: a UDP address, and behind a forwarder (spec 5.5)
/// the wireless node id the forwarder encapsulates its messages with. Replies to a
/// node are encapsulated again for the forwarder.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SnPeer {
    pub addr: SocketAddr,
    pub node: Option<Bytes>,
}

impl SnPeer {
    fn direct(addr: SocketAddr) -> SnPeer {
        SnPeer { addr, node: None }
    }

    /// The peer a datagram from `from` comes from, and the MQTT-SN message inside it
    /// (the datagram itself unless a forwarder encapsulated it). A malformed
    /// encapsulation is returned as is, for the gateway to count as bad.
    pub fn of(from: SocketAddr, data: &Bytes) -> (SnPeer, Bytes) {
        // The type follows a 1-byte length, or 0x01 and a 2-byte length (spec 5.2.1).
        let ty = if data.first() == Some(&0x01) {
            data.get(3)
        } else {
            data.get(1)
        };
        const ENCAPSULATED: u8 = 0xFE;
        if ty == Some(&ENCAPSULATED) {
            if let Ok(Message::Encapsulated { node_id, inner, .. }) = decode_sn(data) {
                let peer = SnPeer {
                    addr: from,
                    node: Some(node_id),
                };
                return (peer, inner);
            }
        }
        (SnPeer::direct(from), data.clone())
    }
}

/// A virtual connection: whose session it carries and the MQTT side of it.
struct VConn {
    client_id: Bytes,
    link: MqttLink,
    /// Bytes of a packet the shard wrote in parts (it writes whole packets; kept
    /// for safety, bounded by the shard's own packet size).
    rx: BytesMut,
    /// The gateway's SUBACKs, held until the shard's SUBACK for the same SUBSCRIBE
    /// (in order): the shard sends it once every loop routes the filter here, so
    /// a client that holds its SUBACK gets what is published after, as over TCP.
    held_subacks: VecDeque<(SnPeer, Bytes)>,
    /// The SN client's address, where its CONNACK goes.
    addr: SnPeer,
    /// From the CONNECT until the shard's CONNACK: the gateway's CONNACK and whatever
    /// else is due to the client wait here, so the client hears the broker's verdict
    /// (password file, `allow_anonymous`, ACL on the will, limits) and nothing after
    /// a refusal. `None` once the verdict is in (and on the anonymous connection).
    held: Option<Vec<Bytes>>,
    /// The shard refused the CONNECT: the refusing CONNACK told the client, so the
    /// close that follows ends it without a DISCONNECT.
    refused: bool,
}

/// Datagrams held for one client while its CONNACK waits; past it they are dropped
/// (the gateway's Tretry sends QoS 1/2 ones again).
const HELD_DATAGRAMS_MAX: usize = 64;
/// MQTT-SN CONNACK message type (spec 5.3).
const SN_CONNACK: u8 = 0x05;

/// The MQTT-SN return code (spec 5.3.10) for the broker's CONNACK: the one mapping of
/// the broker's verdict to what an SN client can be told. MQTT-SN has no "not
/// authorized": a refusal for credentials, ACL or client id is "not supported", a
/// busy or unavailable server is "congestion" (the client may retry later).
pub(super) fn sn_connack_code(code: ReasonCode) -> ReturnCode {
    match code.v3_connack_code() {
        0 => ReturnCode::Accepted,
        3 => ReturnCode::Congestion,
        _ => ReturnCode::NotSupported,
    }
}

/// SUBACKs held per virtual connection; past it they go out at once (a client
/// that floods SUBSCRIBEs gets answers that may precede the routes).
const HELD_SUBACKS_MAX: usize = 64;
/// MQTT-SN SUBACK: message type (spec 5.3), and the offset of its return code in
/// the 8-byte short form.
const SN_SUBACK: u8 = 0x13;
const SN_SUBACK_CODE_AT: usize = 7;
/// MQTT-SN return code 0x03, "rejected: not supported".
const SN_REJECTED_NOT_SUPPORTED: u8 = 0x03;

pub struct SnNode {
    gw: Gateway<SnPeer>,
    /// The session's current virtual connection, by client id.
    by_client: AHashMap<Bytes, ConnId>,
    vconns: AHashMap<ConnId, VConn>,
    /// The virtual connection that carries QoS −1 publishes, and its client id.
    anon: Option<ConnId>,
    anon_id: Bytes,
    /// The UDP address: the peer address of the anonymous connection.
    local: SocketAddr,
    /// The sender of the datagram being handled: the peer address of a virtual
    /// connection its CONNECT opens (per-IP connection limits then apply).
    from: Option<SnPeer>,
    /// The virtual connection a SUBSCRIBE was just fed to: the gateway's SUBACK that
    /// follows it in the output is held (see `VConn::held_subacks`).
    hold_suback: Option<ConnId>,
    out: Vec<(SnPeer, Bytes)>,
    /// ADVERTISE messages due (spec 6.1); the IO side knows the broadcast address.
    broadcasts: Vec<Bytes>,
    /// Whether ADVERTISE is configured: the timer then runs with no client too.
    advertising: bool,
    /// Client address → its virtual connection while that one's CONNACK is held.
    awaiting_connack: AHashMap<SnPeer, ConnId>,
    /// Keepalive the virtual connections declare: `keepalive_max_s` when set (a 3.1.1
    /// CONNECT with 0 would be refused), else 0. The gateway enforces the SN
    /// client's own duration; the node pings every virtual connection at half of it.
    vconn_keepalive_s: u16,
    next_ping: Instant,
    next_tick: Instant,
    /// Upstream operations for a client whose virtual connection the shard had
    /// already closed (taken over by a TCP client with the same id, refused, shut
    /// down): dropped.
    pub orphaned: u64,
}

impl SnNode {
    pub fn new(limits: GatewayLimits, shard: &Shard, local: SocketAddr, now: Instant) -> SnNode {
        // An id this loop owns, so the anonymous connection is never handed off.
        let anon_id = (0u32..)
            .map(|n| format!("$sn-gw-{}-{n}", shard.id()))
            .find(|id| shard.owner_of(id.as_bytes()) == shard.id())
            .unwrap_or_default();
        SnNode {
            advertising: limits.advertise_interval.is_some(),
            broadcasts: Vec::new(),
            gw: Gateway::new(limits),
            by_client: AHashMap::new(),
            vconns: AHashMap::new(),
            anon: None,
            anon_id: Bytes::from(anon_id),
            local,
            from: None,
            hold_suback: None,
            out: Vec::new(),
            awaiting_connack: AHashMap::new(),
            vconn_keepalive_s: shard.config().keepalive_max_s,
            next_ping: now,
            next_tick: now + TICK,
            orphaned: 0,
        }
    }

    /// Whether the client a datagram from `from` comes from is held here.
    pub fn knows(&self, from: SocketAddr, data: &Bytes) -> bool {
        self.gw.knows(&SnPeer::of(from, data).0)
    }

    /// Whether `conn` is one of this gateway's virtual connections.
    pub fn owns(&self, conn: ConnId) -> bool {
        self.vconns.contains_key(&conn)
    }

    /// One datagram from `from` that belongs to this loop.
    pub fn on_datagram(&mut self, shard: &mut Shard, from: SocketAddr, data: &Bytes, now: Instant) {
        let (peer, msg) = SnPeer::of(from, data);
        self.from = Some(peer.clone());
        self.gw.on_datagram(peer, &msg, now);
        self.pump(shard, now);
        self.from = None;
    }

    /// The gateway's timers, at most every `TICK`.
    pub fn on_timer(&mut self, shard: &mut Shard, now: Instant) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TICK;
        self.gw.on_tick(now);
        self.pump(shard, now);
        if self.vconn_keepalive_s > 0 && now >= self.next_ping {
            let every = Duration::from_secs(u64::from(self.vconn_keepalive_s / 2).max(1));
            self.next_ping = now + every;
            let conns: Vec<ConnId> = self.vconns.keys().copied().collect();
            for conn in conns {
                feed(shard, conn, &Packet::PingReq, now);
            }
        }
    }

    /// When `on_timer` next has work; `None` while the gateway holds no client, no
    /// virtual connection needs pinging and nothing is advertised.
    pub fn next_deadline(&self) -> Option<Instant> {
        let pinging = self.vconn_keepalive_s > 0 && !self.vconns.is_empty();
        (self.gw.client_count() > 0 || pinging || self.advertising).then_some(self.next_tick)
    }

    /// The shard wrote to virtual connection `conn` (`Action::Flush`).
    pub fn on_flush(&mut self, shard: &mut Shard, conn: ConnId, now: Instant) {
        self.drain(shard, conn, now);
        self.pump(shard, now);
    }

    /// The shard closed virtual connection `conn` (`Action::Close`): its last packets
    /// are taken and the connection is released at once (no socket to wait for).
    pub fn on_close(&mut self, shard: &mut Shard, conn: ConnId, now: Instant) {
        self.drain(shard, conn, now);
        if let Some(mut vc) = self.vconns.remove(&conn) {
            if self.awaiting_connack.get(&vc.addr) == Some(&conn) {
                self.awaiting_connack.remove(&vc.addr);
            }
            if vc.held.take().is_some() {
                // Closed with no CONNACK at all (shutdown, a limit): the client is
                // told to come back later rather than left waiting.
                vc.refused = true;
                let nack = Message::ConnAck {
                    code: ReturnCode::Congestion,
                };
                if let Ok(bytes) = encode_sn(&nack) {
                    self.out.push((vc.addr.clone(), bytes));
                }
            }
            // Still the client's current connection: the broker, not the client,
            // ended it (takeover by another connection, refusal, shutdown).
            if self.by_client.get(&vc.client_id) == Some(&conn) {
                self.by_client.remove(&vc.client_id);
                if vc.refused {
                    self.gw.forget_session(&vc.client_id);
                } else {
                    self.gw.end_session(&vc.client_id);
                }
            }
        }
        if self.anon == Some(conn) {
            self.anon = None;
        }
        shard.release(conn);
        self.pump(shard, now);
    }

    /// The datagrams to send since the last call; those for a node behind a
    /// forwarder encapsulated for it (spec 5.5: radius 0, the node's id).
    pub fn take_datagrams(&mut self) -> Vec<(SocketAddr, Bytes)> {
        let mut wrapped_too_long = 0;
        let out = std::mem::take(&mut self.out)
            .into_iter()
            .filter_map(|(to, bytes)| match to.node {
                None => Some((to.addr, bytes)),
                Some(node_id) => {
                    let m = Message::Encapsulated {
                        radius: 0,
                        node_id,
                        inner: bytes,
                    };
                    match encode_sn(&m) {
                        Ok(b) => Some((to.addr, b)),
                        Err(_) => {
                            wrapped_too_long += 1;
                            None
                        }
                    }
                }
            })
            .collect();
        self.gw.stats.oversize_deliveries_dropped += wrapped_too_long;
        out
    }

    /// The ADVERTISE messages due since the last call, for the broadcast address.
    pub fn take_broadcasts(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.broadcasts)
    }

    /// The shard's packets on `conn` into the gateway, and the acks back.
    fn drain(&mut self, shard: &mut Shard, conn: ConnId, now: Instant) {
        let Some(vc) = self.vconns.get_mut(&conn) else {
            return;
        };
        while let Some(tx) = shard.take_tx(conn) {
            vc.rx.extend_from_slice(&tx);
            loop {
                match decode_packet(&mut vc.rx, ProtocolVersion::V311, usize::MAX) {
                    Ok(Some(Packet::ConnAck(ack))) => {
                        let Some(held) = vc.held.take() else {
                            continue;
                        };
                        if self.awaiting_connack.get(&vc.addr) == Some(&conn) {
                            self.awaiting_connack.remove(&vc.addr);
                        }
                        let code = sn_connack_code(ack.code);
                        if code == ReturnCode::Accepted {
                            let to = &vc.addr;
                            self.out.extend(held.into_iter().map(|b| (to.clone(), b)));
                            continue;
                        }
                        // Refused: the client hears the verdict and nothing else;
                        // the shard closes the connection next.
                        vc.refused = true;
                        if let Ok(bytes) = encode_sn(&Message::ConnAck { code }) {
                            self.out.push((vc.addr.clone(), bytes));
                        }
                    }
                    Ok(Some(Packet::SubAck(ack))) => {
                        if let Some((to, mut bytes)) = vc.held_subacks.pop_front() {
                            if ack.codes.iter().any(|c| c.is_error()) {
                                // Refused upstream (ACL, limits): say so (spec 5.4.16).
                                let mut b = BytesMut::from(&bytes[..]);
                                if let Some(code) = b.get_mut(SN_SUBACK_CODE_AT) {
                                    *code = SN_REJECTED_NOT_SUPPORTED;
                                }
                                bytes = b.freeze();
                            }
                            self.out.push((to, bytes));
                        }
                    }
                    Ok(Some(p)) => {
                        if let Some(reply) =
                            vc.link.from_broker(&vc.client_id, p, &mut self.gw, now)
                        {
                            feed(shard, conn, &reply, now);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // Our own shard's encoding: cannot happen short of a bug.
                        tracing::error!(conn, "undecodable packet on a virtual connection: {e}");
                        vc.rx.clear();
                        break;
                    }
                }
            }
        }
    }

    /// The gateway's output: datagrams out, upstream operations into the shard,
    /// until the gateway has nothing more (a delivery can produce a REGISTER, an
    /// upstream operation a delivery).
    fn pump(&mut self, shard: &mut Shard, now: Instant) {
        loop {
            let outputs = self.gw.poll_output();
            if outputs.is_empty() {
                return;
            }
            for o in outputs {
                match o {
                    Output::Datagram { to, bytes } => {
                        let waiting = self
                            .awaiting_connack
                            .get(&to)
                            .and_then(|conn| self.vconns.get_mut(conn))
                            .and_then(|vc| vc.held.as_mut());
                        if let Some(held) = waiting {
                            if held.len() < HELD_DATAGRAMS_MAX || bytes.get(1) == Some(&SN_CONNACK)
                            {
                                held.push(bytes);
                            }
                            continue;
                        }
                        let held = self
                            .hold_suback
                            .take()
                            .filter(|_| bytes.get(1) == Some(&SN_SUBACK))
                            .and_then(|conn| self.vconns.get_mut(&conn))
                            .filter(|vc| vc.held_subacks.len() < HELD_SUBACKS_MAX);
                        match held {
                            Some(vc) => vc.held_subacks.push_back((to, bytes)),
                            None => self.out.push((to, bytes)),
                        }
                    }
                    Output::Broadcast { bytes } => self.broadcasts.push(bytes),
                    Output::Upstream(u) => self.upstream(shard, u, now),
                }
            }
        }
    }

    fn open(&mut self, shard: &mut Shard, client_id: Bytes, peer: SnPeer, now: Instant) -> ConnId {
        let conn = shard.accept(peer.addr, now);
        self.vconns.insert(
            conn,
            VConn {
                client_id,
                link: MqttLink::new(),
                rx: BytesMut::new(),
                held_subacks: VecDeque::new(),
                addr: peer,
                held: None,
                refused: false,
            },
        );
        conn
    }

    fn upstream(&mut self, shard: &mut Shard, u: Upstream, now: Instant) {
        let conn = match &u {
            Upstream::Connect { client_id, .. } => {
                // A new CONNECT from a client already connected opens a new virtual
                // connection; the shard's takeover closes the old one.
                let peer = self
                    .from
                    .clone()
                    .unwrap_or_else(|| SnPeer::direct(self.local));
                let conn = self.open(shard, client_id.clone(), peer.clone(), now);
                self.by_client.insert(client_id.clone(), conn);
                if let Some(vc) = self.vconns.get_mut(&conn) {
                    vc.held = Some(Vec::new());
                }
                self.awaiting_connack.insert(peer, conn);
                conn
            }
            Upstream::PublishAnonymous { .. } => match self.anon {
                Some(conn) => conn,
                None => {
                    let local = SnPeer::direct(self.local);
                    let conn = self.open(shard, self.anon_id.clone(), local, now);
                    let connect = Upstream::Connect {
                        client_id: self.anon_id.clone(),
                        clean_session: true,
                        keepalive_s: 0,
                    };
                    if let Some(vc) = self.vconns.get_mut(&conn) {
                        let mut p = vc.link.to_packet(connect);
                        if let Packet::Connect(c) = &mut p {
                            c.keep_alive_s = self.vconn_keepalive_s;
                        }
                        feed(shard, conn, &p, now);
                    }
                    self.anon = Some(conn);
                    conn
                }
            },
            Upstream::Publish { client_id, .. }
            | Upstream::Subscribe { client_id, .. }
            | Upstream::Unsubscribe { client_id, .. }
            | Upstream::Disconnect { client_id } => {
                let conn = self.by_client.get(client_id).copied();
                if matches!(u, Upstream::Disconnect { .. }) {
                    self.by_client.remove(client_id);
                }
                match conn {
                    Some(c) => c,
                    None => {
                        self.orphaned += 1;
                        return;
                    }
                }
            }
        };
        let Some(vc) = self.vconns.get_mut(&conn) else {
            self.orphaned += 1;
            return;
        };
        if matches!(u, Upstream::Subscribe { .. }) {
            self.hold_suback = Some(conn);
        }
        let mut p = vc.link.to_packet(u);
        if let Packet::Connect(c) = &mut p {
            c.keep_alive_s = self.vconn_keepalive_s;
        }
        feed(shard, conn, &p, now);
    }

    /// Copies the gateway's counters into the shard's `SnStats` (the worker counts
    /// the socket side there itself).
    pub fn sync_stats(&self, shard: &mut Shard) {
        let g = &self.gw.stats;
        let s = shard.sn_stats_mut();
        s.clients = self.gw.client_count();
        s.bad_datagrams = g.bad_datagrams;
        s.unexpected_msgs = g.unexpected_msgs + self.orphaned;
        s.connects_refused_full = g.connects_refused_full;
        s.topic_ids_refused = g.topic_ids_refused;
        s.buffered_dropped = g.buffered_dropped;
        s.oversize_dropped = g.oversize_deliveries_dropped;
        s.retransmits = g.retransmits;
        s.clients_lost = g.clients_lost;
        s.wills_published = g.wills_published;
    }
}

/// One packet into the shard on virtual connection `conn`, as if read from it.
fn feed(shard: &mut Shard, conn: ConnId, p: &Packet, now: Instant) {
    let bytes = encode_to_bytes(p, ProtocolVersion::V311);
    shard.on_read(conn, &bytes, now);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The broker's CONNACK verdicts as an SN client hears them (spec 5.3.10 has only
    /// congestion, invalid topic id and not supported).
    #[test]
    fn broker_verdicts_map_to_sn_return_codes() {
        use ReasonCode::*;
        assert_eq!(sn_connack_code(Success), ReturnCode::Accepted);
        for busy in [
            ServerUnavailable,
            ServerBusy,
            QuotaExceeded,
            ConnectionRateExceeded,
        ] {
            assert_eq!(sn_connack_code(busy), ReturnCode::Congestion, "{busy:?}");
        }
        for refused in [
            NotAuthorized,
            BadUserNameOrPassword,
            ClientIdentifierNotValid,
            Banned,
        ] {
            assert_eq!(
                sn_connack_code(refused),
                ReturnCode::NotSupported,
                "{refused:?}"
            );
        }
    }

    /// Spec 5.5: an encapsulated message is unwrapped and its peer is the forwarder's
    /// address with the node id; a plain one, or a malformed wrapper (left for the
    /// gateway to count as bad), is the address alone.
    #[test]
    fn peers_behind_a_forwarder_are_told_apart_by_node_id() {
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let inner = encode_sn(&Message::PingReq { client_id: None }).unwrap();
        let wrapped = encode_sn(&Message::Encapsulated {
            radius: 2,
            node_id: Bytes::from_static(b"\x0a\x07"),
            inner: inner.clone(),
        })
        .unwrap();
        let (peer, msg) = SnPeer::of(from, &wrapped);
        assert_eq!(peer.node.as_deref(), Some(&b"\x0a\x07"[..]));
        assert_eq!((peer.addr, msg), (from, inner.clone()));
        assert_eq!(SnPeer::of(from, &inner), (SnPeer::direct(from), inner));
        let truncated = wrapped.slice(..3);
        assert_eq!(
            SnPeer::of(from, &truncated),
            (SnPeer::direct(from), truncated.clone())
        );
    }
}
