//! One bridge's MQTT client towards the remote broker, sans-IO: the worker tells it
//! that the transport connected, closed or delivered bytes, hands it local messages
//! that match its `out` rules, and passes `now`; it answers with bytes to send,
//! transport actions (connect, close), messages to publish locally, and the next
//! instant it needs to be woken at. It never reads a clock or a socket.
//!
//! Lifecycle: `Idle` (waiting for the reconnect instant) → `Connecting` (the worker is
//! opening the TCP/TLS transport) → `Handshake` (CONNECT sent) → `Up` (CONNACK
//! accepted, `in` rules subscribed, the outgoing queue pumped) → back to `Idle` on any
//! failure, with exponential backoff and jitter. Outgoing QoS 1/2 messages stay held
//! until acknowledged and are sent again (DUP) after a reconnect; everything held is
//! bounded by `queue_max_messages`, and drops beyond it are counted. A message that
//! carries a local token (the local session holds it in the log, `link.rs`) gives
//! the token back (`poll_local_done`) once the remote acknowledged it, or once it
//! was sent at QoS 0 or dropped: only then is it acknowledged locally.
//!
//! Inbound, the other way round: a remote QoS 1/2 message goes to the local side
//! with a remote token (`LocalPublish::remote_token`) and is acknowledged to the
//! remote (PUBACK / PUBREC) only when `local_acked` gives the token back, i.e. once
//! the local broker acknowledged its copy (which with a data directory waits for
//! the log). A resend of an id still waiting is not forwarded again. At most
//! `inflight_max` wait: MQTT 5 announces it as our Receive Maximum, and either way
//! decoding stops while the window is full (the bytes wait in the receive buffer).
//!
//! Loop prevention, remote side: MQTT 5 subscribes with No Local; 3.1.1 announces a
//! bridge (protocol level 0x84, Mosquitto's `try_private`), which makes a Mosquitto
//! remote skip messages whose publisher is this client. The local side is the
//! worker's: it subscribes the `out` filters with No Local on the session that
//! publishes what comes in (see `mod.rs`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::config::BridgeConfig;
use super::rules::Rules;
use crate::protocol::{
    decode_packet, encode_packet, Connect, Disconnect, Packet, Properties, PropertyValues,
    ProtocolVersion, PubResp, Publish, PublishProperties, QoS, ReasonCode, Subscribe,
    SubscriptionOptions,
};

/// Largest packet accepted from the remote. A bigger one ends the connection: the
/// receive buffer never holds more than this plus one read.
pub const RX_PACKET_BYTES_MAX: usize = 1 << 20;
/// Bytes encoded and not yet taken by the worker before the pump waits: with one
/// send in flight per socket this bounds what a slow remote makes us hold outside
/// the message queue.
const TX_BYTES_MAX: usize = 256 * 1024;
/// Inbound QoS 2 ids held between PUBREC and PUBREL (the remote's window is far below).
const IN_QOS2_IDS_MAX: usize = 1024;
/// Remote messages waiting to be taken by the local side (QoS 0 ones included)
/// before decoding pauses: bounds `local` while the local session is down.
const LOCAL_QUEUE_MAX: usize = 4096;

/// What the worker does with the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Open a connection to the remote (TCP, then TLS if configured); answer with
    /// `on_connected` or `on_closed`.
    Connect,
    /// Close it (after sending what `poll_transmit` returned); answer with `on_closed`.
    Close,
}

/// A message from the remote for the local broker, its topic already mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPublish {
    pub topic: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub payload: Bytes,
    /// What `local_acked` takes once the local broker acknowledged this message; 0:
    /// nothing owed to the remote (QoS 0).
    pub remote_token: u32,
}

/// Plain per-bridge counters (read at scrape time).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BridgeStats {
    pub connect_attempts: u64,
    /// CONNACKs that accepted us.
    pub connects: u64,
    /// Attempts that ended before `Up` (transport, refusal, timeout).
    pub connect_failures: u64,
    /// `Up` connections that ended.
    pub disconnects: u64,
    /// Local messages taken for the remote.
    pub out_queued: u64,
    /// PUBLISHes sent to the remote (resends included).
    pub out_sent: u64,
    /// QoS 1/2 messages the remote acknowledged (PUBACK or PUBCOMP).
    pub out_acked: u64,
    /// Local messages dropped because `queue_max_messages` were already held.
    pub out_dropped_queue_full: u64,
    /// PUBLISHes received from the remote (duplicates of QoS 2 not counted).
    pub in_received: u64,
    /// Remote messages that matched no `in` rule (the remote sent what we did not ask).
    pub in_unmatched: u64,
    /// Subscriptions the remote refused (SUBACK failure codes).
    pub subscribe_refused: u64,
    /// Connections ended for a malformed or unexpected packet from the remote.
    pub protocol_errors: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle {
        retry_at: Instant,
    },
    Connecting {
        deadline: Instant,
    },
    Handshake {
        deadline: Instant,
    },
    Up,
    /// `Close` asked; waiting for `on_closed`.
    Closing,
}

#[derive(Debug, Clone)]
struct OutMsg {
    topic: Bytes,
    qos: QoS,
    retain: bool,
    payload: Bytes,
    /// The local session's token for this message (0: none), given back when done.
    local_token: u32,
}

#[derive(Debug, Clone)]
struct Inflight {
    msg: OutMsg,
    /// QoS 2: PUBREC came, PUBREL sent; waiting for PUBCOMP.
    released: bool,
}

/// One bridge's client. See the module comment.
#[derive(Debug)]
pub struct BridgeClient {
    cfg: BridgeConfig,
    rules: Rules,
    state: State,
    /// Failed attempts since the last accepted CONNACK (the backoff exponent).
    attempts: u32,
    rng: u64,
    /// 3.1.1: announce 0x84 on the next CONNECT (cleared when a remote refuses it).
    private_next: bool,
    /// The private announcement was on the CONNECT now pending.
    private_sent: bool,
    version: ProtocolVersion,
    rx: BytesMut,
    tx: BytesMut,
    transport: VecDeque<Transport>,
    local: VecDeque<LocalPublish>,
    /// Local tokens of messages done with (bounded by what is held).
    local_done: VecDeque<u32>,
    queue: VecDeque<OutMsg>,
    /// Sent and unacknowledged, by packet id; kept across reconnects.
    inflight: AHashMap<u16, Inflight>,
    /// Ids in send order, to resend in that order.
    inflight_order: VecDeque<u16>,
    inflight_max: u16,
    next_packet_id: u16,
    in_qos2: VecDeque<u16>,
    /// Remote QoS 1/2 messages handed to the local side whose local ack has not come
    /// yet, by the remote's packet id: their remote ack is owed. Kept across
    /// reconnects (the remote resends them, and a resend is not forwarded twice);
    /// cleared when the remote lost our session.
    in_wait: AHashMap<u16, QoS>,
    /// Incarnation of the remote session the waiting ids belong to (in the token,
    /// so the local ack of a lost session's message acknowledges nothing).
    in_epoch: u16,
    /// Room opened in the inbound window: `read_on` decodes what waits in `rx`.
    resume_decode: bool,
    last_tx: Instant,
    last_rx: Instant,
    ping_outstanding: bool,
    stats: BridgeStats,
}

impl BridgeClient {
    /// A bridge that will connect at `now`. `seed` drives the jitter (the worker
    /// passes something random; tests a constant).
    pub fn new(cfg: BridgeConfig, seed: u64, now: Instant) -> BridgeClient {
        let rules = Rules::new(&cfg.topics);
        BridgeClient {
            private_next: cfg.try_private && cfg.protocol == ProtocolVersion::V311,
            private_sent: false,
            version: cfg.protocol,
            inflight_max: cfg.inflight_max,
            rules,
            state: State::Idle { retry_at: now },
            attempts: 0,
            rng: seed | 1,
            rx: BytesMut::new(),
            tx: BytesMut::new(),
            transport: VecDeque::new(),
            local: VecDeque::new(),
            local_done: VecDeque::new(),
            queue: VecDeque::new(),
            inflight: AHashMap::new(),
            inflight_order: VecDeque::new(),
            next_packet_id: 0,
            in_qos2: VecDeque::new(),
            in_wait: AHashMap::new(),
            in_epoch: 1,
            resume_decode: false,
            last_tx: now,
            last_rx: now,
            ping_outstanding: false,
            stats: BridgeStats::default(),
            cfg,
        }
    }

    pub fn config(&self) -> &BridgeConfig {
        &self.cfg
    }

    pub fn stats(&self) -> BridgeStats {
        self.stats
    }

    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// Messages held for the remote: queued plus in flight.
    pub fn held(&self) -> usize {
        self.queue.len() + self.inflight.len()
    }

    /// Local filters to subscribe (with No Local) and the QoS to ask for: the `out` rules.
    pub fn local_subscriptions(&self) -> Vec<(String, QoS)> {
        self.cfg
            .topics
            .iter()
            .filter(|r| r.direction.is_out())
            .map(|r| (r.local_filter(), qos(r.qos)))
            .collect()
    }

    // ---- inputs ------------------------------------------------------------------

    /// A local message: forwarded if an `out` rule matches (at the lower of its QoS
    /// and the rule's), queued while the remote is down, dropped and counted when
    /// `queue_max_messages` are already held. Returns whether it was taken.
    pub fn publish_out(
        &mut self,
        topic: &[u8],
        q: QoS,
        retain: bool,
        payload: Bytes,
        now: Instant,
    ) -> bool {
        self.forward(topic, q, retain, payload, 0, now)
    }

    /// `publish_out` of a message the local session holds under `local_token`
    /// (non-zero): once taken, the token comes back from `poll_local_done` when the
    /// message is done with. Not taken: nothing comes back (the caller acknowledges).
    pub fn forward(
        &mut self,
        topic: &[u8],
        q: QoS,
        retain: bool,
        payload: Bytes,
        local_token: u32,
        now: Instant,
    ) -> bool {
        let Some((remote_topic, rule_qos)) = self.rules.outbound(topic) else {
            return false;
        };
        if self.held() >= self.cfg.queue_max_messages {
            self.stats.out_dropped_queue_full += 1;
            return false;
        }
        self.stats.out_queued += 1;
        self.queue.push_back(OutMsg {
            topic: remote_topic,
            qos: q.min(rule_qos),
            retain,
            payload,
            local_token,
        });
        self.pump(now);
        true
    }

    /// The transport asked for with `Transport::Connect` is open: send CONNECT.
    pub fn on_connected(&mut self, now: Instant) {
        let State::Connecting { deadline } = self.state else {
            return;
        };
        self.rx.clear();
        self.tx.clear();
        self.state = State::Handshake { deadline };
        let connect = Connect {
            protocol: self.version,
            clean_start: self.cfg.clean_session,
            keep_alive_s: self.cfg.keepalive_s,
            client_id: Bytes::from(self.cfg.client_id.clone()),
            will: None,
            username: self.cfg.username.clone().map(Bytes::from),
            password: self.cfg.password.clone().map(Bytes::from),
            properties: if self.version.is_v5() {
                Properties::from(PropertyValues {
                    // Keep the session as long as the 3.1.1 remote would (clean
                    // session false means forever there).
                    session_expiry_interval_s: (!self.cfg.clean_session).then_some(u32::MAX),
                    // What may wait for the local ack (`in_wait`).
                    receive_maximum: Some(self.cfg.inflight_max.max(1)),
                    ..Default::default()
                })
            } else {
                Properties::default()
            },
        };
        let start = self.tx.len();
        encode_packet(
            &Packet::Connect(Box::new(connect)),
            self.version,
            &mut self.tx,
        );
        self.private_sent = self.private_next;
        if self.private_sent {
            mark_bridge(&mut self.tx[start..]);
        }
        self.last_tx = now;
        self.last_rx = now;
    }

    /// Bytes from the remote.
    pub fn on_bytes(&mut self, data: &[u8], now: Instant) {
        if !matches!(self.state, State::Handshake { .. } | State::Up) {
            return;
        }
        self.last_rx = now;
        self.rx.extend_from_slice(data);
        self.decode(now);
    }

    /// Decodes what `rx` holds, pausing while the inbound window is full (MQTT
    /// 3.1.1 has no Receive Maximum: not reading is its flow control).
    fn decode(&mut self, now: Instant) {
        loop {
            if self.in_wait.len() >= usize::from(self.cfg.inflight_max.max(1))
                || self.local.len() >= LOCAL_QUEUE_MAX
            {
                break;
            }
            match decode_packet(&mut self.rx, self.version, RX_PACKET_BYTES_MAX) {
                Ok(Some(p)) => {
                    if !self.on_packet(p, now) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(bridge = %self.cfg.name, "bad packet from the remote: {e:?}");
                    self.stats.protocol_errors += 1;
                    self.close(now);
                    return;
                }
            }
        }
        self.pump(now);
    }

    /// The transport is gone (closed by either side, or the connect failed).
    pub fn on_closed(&mut self, now: Instant) {
        match self.state {
            State::Idle { .. } => return,
            State::Up => self.stats.disconnects += 1,
            State::Connecting { .. } | State::Handshake { .. } => self.stats.connect_failures += 1,
            State::Closing => {}
        }
        self.rx.clear();
        self.tx.clear();
        self.ping_outstanding = false;
        let delay = self.backoff();
        self.state = State::Idle {
            retry_at: now + delay,
        };
    }

    /// Timers: reconnect, connect timeout, keepalive.
    pub fn on_timeout(&mut self, now: Instant) {
        match self.state {
            State::Idle { retry_at } if now >= retry_at => {
                self.stats.connect_attempts += 1;
                self.state = State::Connecting {
                    deadline: now + Duration::from_millis(self.cfg.connect_timeout_ms),
                };
                self.transport.push_back(Transport::Connect);
            }
            State::Connecting { deadline } | State::Handshake { deadline } if now >= deadline => {
                tracing::warn!(bridge = %self.cfg.name, "no CONNACK within connect_timeout_ms");
                self.close(now);
            }
            State::Up => {
                let ka = Duration::from_secs(u64::from(self.cfg.keepalive_s));
                // 1.5 × keepalive of silence, as a broker judges a client.
                if now.saturating_duration_since(self.last_rx) >= ka + ka / 2 {
                    tracing::warn!(bridge = %self.cfg.name, "remote silent for 1.5 × keepalive");
                    self.close(now);
                } else if now.saturating_duration_since(self.last_tx) >= ka
                    && !self.ping_outstanding
                {
                    self.send(&Packet::PingReq, now);
                    self.ping_outstanding = true;
                }
            }
            _ => {}
        }
    }

    // ---- outputs -----------------------------------------------------------------

    /// The next transport action.
    pub fn poll_transport(&mut self) -> Option<Transport> {
        self.transport.pop_front()
    }

    /// Bytes to write to the remote, all of them, in one send.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.tx.is_empty()).then(|| self.tx.split().freeze())
    }

    /// The send of what `poll_transmit` returned finished: more may be encoded now.
    pub fn on_sent(&mut self, now: Instant) {
        self.pump(now);
    }

    /// The next local token whose message is done with (see `forward`).
    pub fn poll_local_done(&mut self) -> Option<u32> {
        self.local_done.pop_front()
    }

    /// The next message for the local broker.
    pub fn poll_local(&mut self) -> Option<LocalPublish> {
        let m = self.local.pop_front();
        if m.is_some() && self.local.len() + 1 == LOCAL_QUEUE_MAX {
            self.resume_decode = true;
        }
        m
    }

    /// Gives back what `poll_local` returned when the local side could not take it
    /// (its session is down or its window full): it goes first next time.
    pub fn unpoll_local(&mut self, m: LocalPublish) {
        self.local.push_front(m);
    }

    /// The local broker acknowledged the message `token` names (`LocalPublish::
    /// remote_token`): acknowledge it to the remote, and read on if the window was
    /// full. A token of a lost remote session, or of one already done, does nothing.
    pub fn local_acked(&mut self, token: u32, now: Instant) {
        let (epoch, id) = ((token >> 16) as u16, token as u16);
        if token == 0 || epoch != self.in_epoch {
            return;
        }
        let Some(q) = self.in_wait.remove(&id) else {
            return;
        };
        self.ack_remote(id, q, now);
        self.resume_decode = true;
    }

    /// Inbound messages waiting for their local ack.
    pub fn in_waiting(&self) -> usize {
        self.in_wait.len()
    }

    /// Decoding paused on a full window: go on now that there is room (called by the
    /// worker once per turn after `local_acked`/`poll_local`).
    pub fn read_on(&mut self, now: Instant) {
        if std::mem::take(&mut self.resume_decode)
            && matches!(self.state, State::Handshake { .. } | State::Up)
        {
            self.decode(now);
            self.pump(now);
        }
    }

    /// When `on_timeout` must be called next.
    pub fn next_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Idle { retry_at } => Some(retry_at),
            State::Connecting { deadline } | State::Handshake { deadline } => Some(deadline),
            State::Up => {
                let ka = Duration::from_secs(u64::from(self.cfg.keepalive_s));
                let ping = if self.ping_outstanding {
                    self.last_rx + ka + ka / 2
                } else {
                    self.last_tx + ka
                };
                Some(ping.min(self.last_rx + ka + ka / 2))
            }
            State::Closing => None,
        }
    }

    // ---- internals ---------------------------------------------------------------

    /// Returns `false` when the connection was closed.
    fn on_packet(&mut self, p: Packet, now: Instant) -> bool {
        let handshake = matches!(self.state, State::Handshake { .. });
        match p {
            Packet::ConnAck(ack) if handshake => {
                if ack.code != ReasonCode::Success {
                    if ack.code == ReasonCode::UnsupportedProtocolVersion && self.private_sent {
                        // Not a Mosquitto (or a bridge-refusing one): plain 3.1.1 next
                        // time, which loses the remote-side loop prevention (README).
                        tracing::warn!(bridge = %self.cfg.name, "remote refused the bridge protocol level 0x84; retrying as plain 3.1.1");
                        self.private_next = false;
                    } else {
                        tracing::warn!(bridge = %self.cfg.name, "remote refused CONNECT: {:?}", ack.code);
                    }
                    self.close(now);
                    return false;
                }
                if self.version.is_v5() {
                    if let Some(rm) = ack.properties.receive_maximum {
                        self.inflight_max = self.cfg.inflight_max.min(rm.max(1));
                    }
                }
                if !ack.session_present {
                    // The remote forgot its half of the inbound exchanges: it will
                    // not resend what waits, and may reuse those ids for new
                    // messages, so they must not look like resends.
                    self.in_wait.clear();
                    self.in_qos2.clear();
                    self.in_epoch = self.in_epoch.wrapping_add(1).max(1);
                }
                self.state = State::Up;
                self.attempts = 0;
                self.stats.connects += 1;
                self.subscribe_in(now);
                self.resume(ack.session_present, now);
            }
            Packet::ConnAck(_) => return self.protocol_error(now, "CONNACK twice"),
            _ if handshake => return self.protocol_error(now, "packet before CONNACK"),
            Packet::Publish(p) => self.on_remote_publish(p, now),
            Packet::PubRel(r) => {
                self.in_qos2.retain(|id| *id != r.packet_id);
                self.send(&Packet::PubComp(PubResp::new(r.packet_id)), now);
            }
            Packet::PubAck(r) => {
                if self
                    .inflight
                    .get(&r.packet_id)
                    .is_some_and(|i| i.msg.qos == QoS::AtLeastOnce)
                {
                    self.acked(r.packet_id);
                }
            }
            Packet::PubRec(r) => {
                let Some(inf) = self.inflight.get_mut(&r.packet_id) else {
                    // Not ours (any more): tell the remote to forget it.
                    self.send(&Packet::PubRel(PubResp::new(r.packet_id)), now);
                    return true;
                };
                if inf.msg.qos != QoS::ExactlyOnce {
                    return self.protocol_error(now, "PUBREC for a QoS 1 message");
                }
                if r.code as u8 >= 0x80 {
                    // Refused by the remote: it will not deliver it; done.
                    self.acked(r.packet_id);
                } else {
                    inf.released = true;
                    self.send(&Packet::PubRel(PubResp::new(r.packet_id)), now);
                }
            }
            Packet::PubComp(r) => {
                if self.inflight.get(&r.packet_id).is_some_and(|i| i.released) {
                    self.acked(r.packet_id);
                }
            }
            Packet::SubAck(s) => {
                let refused = s.codes.iter().filter(|c| **c as u8 >= 0x80).count();
                if refused > 0 {
                    tracing::warn!(bridge = %self.cfg.name, "remote refused {refused} subscription(s)");
                    self.stats.subscribe_refused += refused as u64;
                }
            }
            Packet::PingResp => self.ping_outstanding = false,
            Packet::UnsubAck(_) => {}
            Packet::Disconnect(d) => {
                tracing::warn!(bridge = %self.cfg.name, "remote sent DISCONNECT: {:?}", d.code);
                self.close(now);
                return false;
            }
            _ => return self.protocol_error(now, "a packet a server does not send"),
        }
        true
    }

    fn protocol_error(&mut self, now: Instant, what: &str) -> bool {
        tracing::warn!(bridge = %self.cfg.name, "protocol error from the remote: {what}");
        self.stats.protocol_errors += 1;
        self.close(now);
        false
    }

    fn on_remote_publish(&mut self, p: Publish, now: Instant) {
        let id = p.packet_id;
        if p.qos != QoS::AtMostOnce && self.in_wait.contains_key(&id) {
            // A resend (the remote cannot reuse an id we have not acknowledged) of a
            // message the local broker has not acknowledged yet: its ack follows that.
            return;
        }
        if p.qos == QoS::ExactlyOnce && self.in_qos2.contains(&id) {
            // PUBREC'd already, PUBREL not yet come: taken once, answered again.
            self.send(&Packet::PubRec(PubResp::new(id)), now);
            return;
        }
        self.stats.in_received += 1;
        let Some(topic) = self.rules.inbound(&p.topic) else {
            self.stats.in_unmatched += 1;
            self.ack_remote(id, p.qos, now);
            return;
        };
        let remote_token = if p.qos == QoS::AtMostOnce {
            0
        } else {
            self.in_wait.insert(id, p.qos);
            (u32::from(self.in_epoch) << 16) | u32::from(id)
        };
        self.local.push_back(LocalPublish {
            topic,
            qos: p.qos,
            retain: p.retain,
            payload: p.payload,
            remote_token,
        });
    }

    /// The remote's PUBACK / PUBREC for its message `id`, once the local broker has
    /// it. Written only while `Up`; otherwise the remote resends it after the
    /// reconnect (QoS 2: remembered in `in_qos2`, so the resend is answered, not
    /// delivered again; QoS 1: delivered again, which at least once allows).
    fn ack_remote(&mut self, id: u16, q: QoS, now: Instant) {
        match q {
            QoS::AtMostOnce => return,
            QoS::AtLeastOnce => {}
            QoS::ExactlyOnce => {
                if !self.in_qos2.contains(&id) {
                    if self.in_qos2.len() >= IN_QOS2_IDS_MAX {
                        self.in_qos2.pop_front();
                    }
                    self.in_qos2.push_back(id);
                }
            }
        }
        if self.state != State::Up {
            return;
        }
        let ack = PubResp::new(id);
        self.send(
            &if q == QoS::AtLeastOnce {
                Packet::PubAck(ack)
            } else {
                Packet::PubRec(ack)
            },
            now,
        );
    }

    fn subscribe_in(&mut self, now: Instant) {
        let v5 = self.version.is_v5();
        let filters: SmallVec<[(Bytes, SubscriptionOptions); 2]> = self
            .cfg
            .topics
            .iter()
            .filter(|r| r.direction.is_in())
            .map(|r| {
                (
                    Bytes::from(r.remote_filter()),
                    SubscriptionOptions {
                        qos: qos(r.qos),
                        no_local: v5,
                        retain_as_published: v5,
                        retain_handling: 0,
                    },
                )
            })
            .collect();
        if filters.is_empty() {
            return;
        }
        let packet_id = self.packet_id();
        self.send(
            &Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties: Properties::default(),
            }),
            now,
        );
    }

    /// After CONNACK: resend what was in flight (the remote kept our session) or
    /// requeue it (the remote lost it; a QoS 2 message already PUBREC'd was delivered
    /// by the remote and is done).
    fn resume(&mut self, session_present: bool, now: Instant) {
        let order: Vec<u16> = self.inflight_order.iter().copied().collect();
        if session_present {
            for id in order {
                let Some(inf) = self.inflight.get(&id) else {
                    continue;
                };
                let p = if inf.released {
                    Packet::PubRel(PubResp::new(id))
                } else {
                    self.stats.out_sent += 1;
                    Packet::Publish(to_publish(&inf.msg, id, true))
                };
                self.send(&p, now);
            }
        } else {
            let mut requeue = Vec::new();
            for id in order {
                if let Some(inf) = self.inflight.remove(&id) {
                    if inf.released {
                        self.stats.out_acked += 1;
                        self.done(inf.msg.local_token);
                    } else {
                        requeue.push(inf.msg);
                    }
                }
            }
            self.inflight_order.clear();
            for m in requeue.into_iter().rev() {
                self.queue.push_front(m);
            }
        }
        self.pump(now);
    }

    fn pump(&mut self, now: Instant) {
        if self.state != State::Up {
            return;
        }
        while self.tx.len() < TX_BYTES_MAX {
            let Some(front) = self.queue.front() else {
                break;
            };
            if front.qos != QoS::AtMostOnce && self.inflight.len() >= usize::from(self.inflight_max)
            {
                break;
            }
            let Some(msg) = self.queue.pop_front() else {
                break;
            };
            let id = if msg.qos == QoS::AtMostOnce {
                0
            } else {
                self.packet_id()
            };
            self.stats.out_sent += 1;
            self.send(&Packet::Publish(to_publish(&msg, id, false)), now);
            if id == 0 {
                // QoS 0 towards the remote: done once written.
                self.done(msg.local_token);
            } else {
                self.inflight.insert(
                    id,
                    Inflight {
                        msg,
                        released: false,
                    },
                );
                self.inflight_order.push_back(id);
            }
        }
    }

    fn acked(&mut self, id: u16) {
        if let Some(inf) = self.inflight.remove(&id) {
            self.stats.out_acked += 1;
            self.inflight_order.retain(|i| *i != id);
            self.done(inf.msg.local_token);
        }
    }

    fn done(&mut self, local_token: u32) {
        if local_token != 0 {
            self.local_done.push_back(local_token);
        }
    }

    /// A packet id free in both directions' tables (ids are per direction in MQTT,
    /// but SUBSCRIBE shares ours with PUBLISH).
    fn packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.next_packet_id) {
                return self.next_packet_id;
            }
        }
    }

    fn send(&mut self, p: &Packet, now: Instant) {
        encode_packet(p, self.version, &mut self.tx);
        self.last_tx = now;
    }

    fn close(&mut self, now: Instant) {
        match self.state {
            State::Idle { .. } | State::Closing => return,
            State::Up => {
                self.stats.disconnects += 1;
                self.send(
                    &Packet::Disconnect(Disconnect {
                        code: ReasonCode::Success,
                        properties: Properties::default(),
                    }),
                    now,
                );
            }
            State::Connecting { .. } | State::Handshake { .. } => self.stats.connect_failures += 1,
        }
        self.state = State::Closing;
        self.transport.push_back(Transport::Close);
    }

    /// The next reconnect delay: `reconnect_min_ms × 2^attempts` capped at
    /// `reconnect_max_ms`, then a uniform draw in [delay/2, delay].
    fn backoff(&mut self) -> Duration {
        let shift = self.attempts.min(30);
        self.attempts = self.attempts.saturating_add(1);
        let base = self
            .cfg
            .reconnect_min_ms
            .saturating_mul(1u64 << shift)
            .min(self.cfg.reconnect_max_ms);
        // xorshift64: jitter needs spread, not secrecy.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = base / 2;
        Duration::from_millis(base - half + self.rng % (half + 1))
    }
}

fn qos(q: u8) -> QoS {
    QoS::from_u8(q.min(2)).unwrap_or_default()
}

fn to_publish(m: &OutMsg, packet_id: u16, dup: bool) -> Publish {
    Publish {
        dup,
        qos: m.qos,
        retain: m.retain,
        topic: m.topic.clone(),
        packet_id,
        properties: PublishProperties::default(),
        payload: m.payload.clone(),
    }
}

/// Sets the bridge bit (0x80) on the protocol level of an encoded 3.1.1 CONNECT: the
/// level follows the fixed header (1 byte + remaining length) and the protocol name
/// (2 + 4 bytes, "MQTT").
fn mark_bridge(connect: &mut [u8]) {
    let mut i = 1;
    while connect.get(i).is_some_and(|b| b & 0x80 != 0) {
        i += 1;
    }
    if let Some(level) = connect.get_mut(i + 1 + 6) {
        *level |= 0x80;
    }
}
