//! The MQTT-SN gateway's sans-IO core for one loop: the SN clients it owns (keyed by
//! address, then by client id once CONNECT names one), their topic-id registries, QoS
//! exchanges both ways, sleeping-client buffers, wills, keepalive and retransmission.
//! It takes datagrams and broker deliveries with a `now`, and returns datagrams to send
//! and [`Upstream`] operations for the broker side; it never reads a clock or a socket.
//!
//! The gateway is a transparent gateway (spec 4.1): each SN client becomes one
//! broker-side session named by its client id. Wills are kept here, not upstream,
//! because MQTT-SN can change them mid-session (WILLTOPICUPD/WILLMSGUPD) and MQTT
//! cannot; a lost client's will is published by the gateway itself.

use std::collections::VecDeque;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use bytes::Bytes;

use super::codec::{
    decode, encode_to_bytes, Message, QoS, ReturnCode, SubTopic, TopicRef, WillTopic,
};
use super::downstream::alloc_topic_id;

/// The gateway's bounds and protocol constants. Every bound has a counter in
/// [`GatewayStats`].
#[derive(Debug, Clone)]
pub struct GatewayLimits {
    pub gw_id: u8,
    /// Clients (awake, asleep or mid-CONNECT) this loop holds at once.
    pub max_clients: usize,
    /// Normal topic ids (REGISTER either way) per client.
    pub max_topic_ids: usize,
    /// Messages queued for one client while it sleeps or while its one in-flight
    /// message waits for an ack.
    pub max_buffered_msgs: usize,
    /// Datagrams larger than this are dropped on receipt, and deliveries that would
    /// encode larger are dropped (counted) instead of sent.
    pub max_datagram_bytes: usize,
    /// Tretry (spec 6.13): wait for an ack before retransmitting.
    pub retry_interval: Duration,
    /// Nretry (spec 6.13): retransmissions before the client is considered lost.
    pub max_retries: u32,
    /// Predefined topic ids (spec 3/6.6), shared by every client and every loop.
    pub predefined: Arc<AHashMap<u16, Bytes>>,
    /// ADVERTISE period (spec 6.1; its Duration field says when the next one comes);
    /// `None`: the gateway only answers SEARCHGW.
    pub advertise_interval: Option<Duration>,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        GatewayLimits {
            gw_id: 1,
            max_clients: 10_000,
            max_topic_ids: 256,
            max_buffered_msgs: 64,
            max_datagram_bytes: 1_024,
            retry_interval: Duration::from_secs(10),
            max_retries: 5,
            predefined: Arc::default(),
            advertise_interval: None,
        }
    }
}

/// A message's QoS as the broker sees it (0..2).
pub type BrokerQoS = u8;

/// A will held by the gateway until the client is lost or disconnects cleanly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: Bytes,
    pub qos: BrokerQoS,
    pub retain: bool,
    pub payload: Bytes,
}

/// What the gateway asks of the broker side, on behalf of client `client_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// Open (or resume, `clean_session: false`) the client's session.
    Connect {
        client_id: Bytes,
        clean_session: bool,
        keepalive_s: u16,
    },
    Publish {
        client_id: Bytes,
        topic: Bytes,
        qos: BrokerQoS,
        retain: bool,
        payload: Bytes,
    },
    /// QoS −1 (spec 6.8): a publish from no session at all.
    PublishAnonymous {
        topic: Bytes,
        retain: bool,
        payload: Bytes,
    },
    Subscribe {
        client_id: Bytes,
        filter: Bytes,
        qos: BrokerQoS,
    },
    Unsubscribe {
        client_id: Bytes,
        filter: Bytes,
    },
    /// Close the session; the gateway has already published the will if one was due.
    Disconnect {
        client_id: Bytes,
    },
}

/// One thing the loop must do after a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<A> {
    Datagram {
        to: A,
        bytes: Bytes,
    },
    /// An ADVERTISE for the IO side to send to the network's broadcast address.
    Broadcast {
        bytes: Bytes,
    },
    Upstream(Upstream),
}

/// Counters; plain u64s read by the loop's metrics snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Datagrams that failed to decode, or were over `max_datagram_bytes`.
    pub bad_datagrams: u64,
    /// Well-formed messages that make no sense in the sender's state (no session,
    /// unexpected ack): dropped.
    pub unexpected_msgs: u64,
    pub connects_refused_full: u64,
    pub topic_ids_refused: u64,
    pub buffered_dropped: u64,
    pub oversize_deliveries_dropped: u64,
    pub retransmits: u64,
    pub clients_lost: u64,
    pub wills_published: u64,
}

/// Where a client stands (spec 6.14, figure 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// CONNECT with Will set: waiting for WILLTOPIC.
    AwaitWillTopic,
    /// Waiting for WILLMSG.
    AwaitWillMsg,
    Active,
    /// Sleeping until the deadline; deliveries are buffered.
    Asleep,
    /// Woken by a PINGREQ: the buffer drains, then PINGRESP sends it back to sleep.
    Awake,
}

/// A downstream message waiting for, or in, the one in-flight slot.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub(super) topic: Bytes,
    pub(super) qos: BrokerQoS,
    pub(super) retain: bool,
    pub(super) payload: Bytes,
}

/// What the in-flight slot is waiting for.
#[derive(Debug, Clone)]
pub(super) enum InFlight {
    /// REGISTER sent for `pending`'s topic; REGACK frees the slot and sends the PUBLISH.
    Register {
        msg_id: u16,
        topic_id: u16,
        pending: Pending,
    },
    /// PUBLISH QoS 1 or 2 sent; PUBACK or PUBREC answers it.
    Publish { msg_id: u16, wire: Bytes },
    /// PUBREL sent; PUBCOMP answers it.
    PubRel { msg_id: u16 },
}

impl InFlight {
    #[cfg(test)]
    pub(super) fn msg_id(&self) -> u16 {
        match self {
            InFlight::Register { msg_id, .. }
            | InFlight::Publish { msg_id, .. }
            | InFlight::PubRel { msg_id } => *msg_id,
        }
    }
}

pub(super) struct Client<A> {
    pub(super) addr: A,
    pub(super) state: State,
    pub(super) keepalive: Duration,
    /// Keepalive or sleep deadline: past it, the client is lost. `None`: keepalive 0,
    /// no deadline (MQTT's meaning of 0).
    pub(super) deadline: Option<Instant>,
    /// The duration of the last DISCONNECT with duration: each return to sleep after
    /// a wake-up restarts this deadline.
    pub(super) sleep: Duration,
    pub(super) will: Option<Will>,
    /// Held between WILLTOPIC and WILLMSG.
    pub(super) will_topic: Option<WillTopic>,
    pub(super) clean_session: bool,
    /// Normal topic ids both ways; bounded by `max_topic_ids`.
    pub(super) topic_by_id: AHashMap<u16, Bytes>,
    pub(super) id_by_topic: AHashMap<Bytes, u16>,
    pub(super) next_topic_id: u16,
    pub(super) next_msg_id: u16,
    /// Inbound QoS 2 message ids between PUBREC and PUBREL: a retransmitted PUBLISH
    /// with one of these is acknowledged, not published again. At most 64 are kept
    /// (a client has one exchange in flight; the rest are stragglers).
    pub(super) inbound_qos2: VecDeque<u16>,
    pub(super) queue: VecDeque<Pending>,
    pub(super) in_flight: Option<(InFlight, Instant, u32)>,
}

/// The core for one loop. `A` is the peer address type (`SocketAddr` in the
/// binary, anything hashable in tests).
pub struct Gateway<A> {
    pub(super) limits: GatewayLimits,
    pub(super) clients: AHashMap<Bytes, Client<A>>,
    pub(super) by_addr: AHashMap<A, Bytes>,
    pub stats: GatewayStats,
    pub(super) out: Vec<Output<A>>,
    /// `limits.predefined` the other way round, for deliveries (name → id).
    pub(super) predefined_ids: AHashMap<Bytes, u16>,
    /// When the next ADVERTISE is due; `None` until the first tick sends one.
    pub(super) next_advertise: Option<Instant>,
}

const INBOUND_QOS2_MAX: usize = 64;

fn qos_num(q: QoS) -> BrokerQoS {
    match q {
        QoS::AtMostOnce | QoS::MinusOne => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

/// Spec 6.3: a client unheard of for 1.5 × its keepalive (or past its sleep
/// duration by the same margin) is lost.
pub(super) fn grace(d: Duration) -> Duration {
    d + d / 2
}

/// The keepalive deadline from `now`; none for keepalive 0.
fn alive_until(keepalive: Duration, now: Instant) -> Option<Instant> {
    (!keepalive.is_zero()).then(|| now + grace(keepalive))
}

impl<A: Clone + Eq + Hash> Gateway<A> {
    pub fn new(limits: GatewayLimits) -> Self {
        let predefined_ids = limits
            .predefined
            .iter()
            .map(|(id, n)| (n.clone(), *id))
            .collect();
        Gateway {
            limits,
            clients: AHashMap::new(),
            by_addr: AHashMap::new(),
            stats: GatewayStats::default(),
            out: Vec::new(),
            predefined_ids,
            next_advertise: None,
        }
    }

    /// Everything to send since the last call.
    pub fn poll_output(&mut self) -> Vec<Output<A>> {
        std::mem::take(&mut self.out)
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Whether a client of this gateway speaks from `addr`.
    pub fn knows(&self, addr: &A) -> bool {
        self.by_addr.contains_key(addr)
    }

    /// The next time [`Gateway::on_tick`] has work: a retransmission or a deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        let retry = self.limits.retry_interval;
        self.clients
            .values()
            .flat_map(|c| {
                let r = c.in_flight.as_ref().map(|(_, at, _)| *at + retry);
                [c.deadline, r]
            })
            .flatten()
            .chain(self.next_advertise)
            .min()
    }

    pub(super) fn send(&mut self, to: &A, m: &Message) {
        match encode_to_bytes(m) {
            Ok(bytes) if bytes.len() <= self.limits.max_datagram_bytes => {
                self.out.push(Output::Datagram {
                    to: to.clone(),
                    bytes,
                })
            }
            _ => self.stats.oversize_deliveries_dropped += 1,
        }
    }

    pub(super) fn up(&mut self, u: Upstream) {
        self.out.push(Output::Upstream(u));
    }

    /// One received datagram from `from`.
    pub fn on_datagram(&mut self, from: A, datagram: &Bytes, now: Instant) {
        if datagram.len() > self.limits.max_datagram_bytes {
            self.stats.bad_datagrams += 1;
            return;
        }
        let msg = match decode(datagram) {
            // Forwarder encapsulation (5.5) is taken off by the caller, which knows
            // how to address the node behind it (`SnNode`, `SnPeer`); one reaching
            // here is nested or unwrapped by nobody: count and drop.
            Ok(Message::Encapsulated { .. }) | Err(_) => {
                self.stats.bad_datagrams += 1;
                return;
            }
            Ok(m) => m,
        };
        self.on_message(from, msg, now);
    }

    fn on_message(&mut self, from: A, msg: Message, now: Instant) {
        // Messages that need no session come first.
        match msg {
            Message::SearchGw { .. } => {
                let gw_id = self.limits.gw_id;
                return self.send(
                    &from,
                    &Message::GwInfo {
                        gw_id,
                        gw_add: Bytes::new(),
                    },
                );
            }
            Message::Connect {
                will,
                clean_session,
                duration,
                client_id,
            } => return self.on_connect(from, will, clean_session, duration, client_id, now),
            Message::Publish {
                qos: QoS::MinusOne,
                retain,
                topic,
                data,
                ..
            } => return self.on_publish_minus_one(topic, retain, data),
            Message::PingReq {
                client_id: Some(id),
            } => return self.on_wake(from, id, now),
            _ => {}
        }
        let Some(id) = self.by_addr.get(&from).cloned() else {
            self.stats.unexpected_msgs += 1;
            return;
        };
        let Some(c) = self.clients.get_mut(&id) else {
            self.stats.unexpected_msgs += 1;
            return;
        };
        if c.state == State::Active {
            c.deadline = alive_until(c.keepalive, now);
        }
        match (c.state, msg) {
            (State::AwaitWillTopic, Message::WillTopic(w)) => {
                match w {
                    Some(w) => {
                        c.will_topic = Some(w);
                        c.state = State::AwaitWillMsg;
                        self.send(&from, &Message::WillMsgReq);
                    }
                    // An empty WILLTOPIC during CONNECT means no will after all.
                    None => self.finish_connect(&id, now),
                }
            }
            (State::AwaitWillMsg, Message::WillMsg { msg }) => {
                if let Some(w) = c.will_topic.take() {
                    c.will = Some(Will {
                        topic: w.topic,
                        qos: qos_num(w.qos),
                        retain: w.retain,
                        payload: msg,
                    });
                }
                self.finish_connect(&id, now);
            }
            (State::AwaitWillTopic | State::AwaitWillMsg, _) => self.stats.unexpected_msgs += 1,
            (_, m) => self.on_session_message(&id, m, now),
        }
    }

    fn on_connect(
        &mut self,
        from: A,
        will: bool,
        clean_session: bool,
        duration: u16,
        client_id: Bytes,
        now: Instant,
    ) {
        // Spec 5.3.1: 1 to 23 characters; the broker side needs UTF-8.
        if client_id.is_empty() || client_id.len() > 23 || std::str::from_utf8(&client_id).is_err()
        {
            return self.send(
                &from,
                &Message::ConnAck {
                    code: ReturnCode::NotSupported,
                },
            );
        }
        // A new address for a known client id, or a new client id at a known address,
        // replaces the old binding (the device rebooted or moved).
        if let Some(old) = self.by_addr.remove(&from) {
            if old != client_id {
                self.drop_client(&old, false);
            }
        }
        let existing = self.clients.remove(&client_id);
        if let Some(old) = &existing {
            if old.addr != from {
                self.by_addr.remove(&old.addr);
            }
        }
        if existing.is_none() && self.clients.len() >= self.limits.max_clients {
            self.stats.connects_refused_full += 1;
            return self.send(
                &from,
                &Message::ConnAck {
                    code: ReturnCode::Congestion,
                },
            );
        }
        let keepalive = Duration::from_secs(u64::from(duration));
        let mut c = match existing {
            // clean_session false keeps the topic registry, queue and will (spec 6.3).
            Some(mut c) if !clean_session => {
                c.addr = from.clone();
                c.in_flight = None;
                c
            }
            _ => Client {
                addr: from.clone(),
                state: State::Active,
                keepalive,
                deadline: None,
                sleep: Duration::ZERO,
                will: None,
                will_topic: None,
                clean_session,
                topic_by_id: AHashMap::new(),
                id_by_topic: AHashMap::new(),
                next_topic_id: 1,
                next_msg_id: 1,
                inbound_qos2: VecDeque::new(),
                queue: VecDeque::new(),
                in_flight: None,
            },
        };
        c.keepalive = keepalive;
        c.clean_session = clean_session;
        // The will exchange gets at least Tretry per step, whatever the keepalive.
        c.deadline = Some(now + grace(keepalive.max(self.limits.retry_interval)));
        c.state = if will {
            State::AwaitWillTopic
        } else {
            State::Active
        };
        if will {
            c.will = None;
        }
        self.by_addr.insert(from.clone(), client_id.clone());
        self.clients.insert(client_id.clone(), c);
        if will {
            self.send(&from, &Message::WillTopicReq);
        } else {
            self.finish_connect(&client_id, now);
        }
    }

    pub(super) fn finish_connect(&mut self, id: &Bytes, now: Instant) {
        let Some(c) = self.clients.get_mut(id) else {
            return;
        };
        c.state = State::Active;
        c.deadline = alive_until(c.keepalive, now);
        let (addr, clean, ka) = (c.addr.clone(), c.clean_session, c.keepalive);
        let keepalive_s = u16::try_from(ka.as_secs()).unwrap_or(u16::MAX);
        self.up(Upstream::Connect {
            client_id: id.clone(),
            clean_session: clean,
            keepalive_s,
        });
        self.send(
            &addr,
            &Message::ConnAck {
                code: ReturnCode::Accepted,
            },
        );
        self.pump(id, now);
    }

    fn on_publish_minus_one(&mut self, topic: TopicRef, retain: bool, data: Bytes) {
        // Spec 6.8: QoS −1 uses predefined ids or short names only.
        let name = match topic {
            TopicRef::Predefined(id) => self.limits.predefined.get(&id).cloned(),
            TopicRef::Short(s) => Some(Bytes::copy_from_slice(&s)),
            TopicRef::Normal(_) => None,
        };
        match name {
            Some(topic) => self.up(Upstream::PublishAnonymous {
                topic,
                retain,
                payload: data,
            }),
            None => self.stats.unexpected_msgs += 1,
        }
    }

    /// The topic name a PUBLISH refers to, or the return code refusing it.
    fn resolve(&self, c: &Client<A>, t: TopicRef) -> Result<Bytes, ReturnCode> {
        match t {
            TopicRef::Normal(id) => c.topic_by_id.get(&id).cloned(),
            TopicRef::Predefined(id) => self.limits.predefined.get(&id).cloned(),
            TopicRef::Short(s) => Some(Bytes::copy_from_slice(&s)),
        }
        .ok_or(ReturnCode::InvalidTopicId)
    }

    fn on_session_message(&mut self, id: &Bytes, m: Message, now: Instant) {
        let c = self.clients.get(id).expect("caller looked it up");
        let addr = c.addr.clone();
        match m {
            Message::PingReq { client_id: None } => self.send(&addr, &Message::PingResp),
            Message::Register {
                msg_id, topic_name, ..
            } => {
                let (topic_id, code) = self.register_topic(id, topic_name);
                self.send(
                    &addr,
                    &Message::RegAck {
                        topic_id,
                        msg_id,
                        code,
                    },
                );
            }
            Message::Publish {
                qos,
                retain,
                topic,
                msg_id,
                data,
                ..
            } => self.on_publish(id, addr, qos, retain, topic, msg_id, data),
            Message::PubRel { msg_id } => {
                let c = self.clients.get_mut(id).expect("looked up");
                c.inbound_qos2.retain(|m| *m != msg_id);
                self.send(&addr, &Message::PubComp { msg_id });
            }
            Message::Subscribe {
                qos, msg_id, topic, ..
            } => self.on_subscribe(id, addr, qos, msg_id, topic),
            Message::Unsubscribe { msg_id, topic } => {
                let filter = match topic {
                    SubTopic::Name(n) => Some(n),
                    SubTopic::Predefined(p) => self.limits.predefined.get(&p).cloned(),
                    SubTopic::Short(s) => Some(Bytes::copy_from_slice(&s)),
                };
                if let Some(filter) = filter {
                    self.up(Upstream::Unsubscribe {
                        client_id: id.clone(),
                        filter,
                    });
                }
                self.send(&addr, &Message::UnsubAck { msg_id });
            }
            Message::Disconnect { duration: None } => {
                self.send(&addr, &Message::Disconnect { duration: None });
                self.drop_client(id, false);
            }
            Message::Disconnect { duration: Some(d) } => {
                // Spec 6.14: asleep for `d` seconds; buffered deliveries wait for the
                // wake-up PINGREQ.
                let c = self.clients.get_mut(id).expect("looked up");
                c.state = State::Asleep;
                c.sleep = Duration::from_secs(u64::from(d));
                c.deadline = Some(now + grace(c.sleep));
                // A REGISTER in flight is asked again on wake-up; a PUBLISH the
                // client never acked before sleeping is dropped, counted (its wire
                // form holds a message id the client may reuse after waking).
                match c.in_flight.take() {
                    Some((InFlight::Register { pending, .. }, ..)) => c.queue.push_front(pending),
                    Some((InFlight::Publish { .. }, ..)) => self.stats.buffered_dropped += 1,
                    _ => {}
                }
                self.send(&addr, &Message::Disconnect { duration: None });
            }
            Message::WillTopicUpd(w) => {
                let c = self.clients.get_mut(id).expect("looked up");
                match w {
                    None => c.will = None,
                    Some(w) => {
                        let payload = c.will.take().map(|w| w.payload).unwrap_or_default();
                        c.will = Some(Will {
                            topic: w.topic,
                            qos: qos_num(w.qos),
                            retain: w.retain,
                            payload,
                        });
                    }
                }
                self.send(
                    &addr,
                    &Message::WillTopicResp {
                        code: ReturnCode::Accepted,
                    },
                );
            }
            Message::WillMsgUpd { msg } => {
                let c = self.clients.get_mut(id).expect("looked up");
                let code = match &mut c.will {
                    Some(w) => {
                        w.payload = msg;
                        ReturnCode::Accepted
                    }
                    // No will topic to attach the message to.
                    None => ReturnCode::NotSupported,
                };
                self.send(&addr, &Message::WillMsgResp { code });
            }
            Message::RegAck {
                msg_id,
                topic_id,
                code,
            } => self.on_regack(id, msg_id, topic_id, code, now),
            Message::PubAck { msg_id, code, .. } => self.on_ack(id, msg_id, code, false, now),
            Message::PubRec { msg_id } => self.on_ack(id, msg_id, ReturnCode::Accepted, true, now),
            Message::PubComp { msg_id } => {
                let c = self.clients.get_mut(id).expect("looked up");
                if matches!(&c.in_flight, Some((InFlight::PubRel { msg_id: m }, ..)) if *m == msg_id)
                {
                    c.in_flight = None;
                    self.pump(id, now);
                } else {
                    self.stats.unexpected_msgs += 1;
                }
            }
            _ => self.stats.unexpected_msgs += 1,
        }
    }

    /// REGISTER from the client (spec 6.5): the existing id for a known name, a new one
    /// while under `max_topic_ids`, otherwise Congestion.
    pub(super) fn register_topic(&mut self, id: &Bytes, name: Bytes) -> (u16, ReturnCode) {
        if std::str::from_utf8(&name).is_err() || name.iter().any(|b| matches!(b, b'+' | b'#')) {
            return (0, ReturnCode::NotSupported);
        }
        let max = self.limits.max_topic_ids;
        let c = self.clients.get_mut(id).expect("looked up");
        if let Some(t) = c.id_by_topic.get(&name) {
            return (*t, ReturnCode::Accepted);
        }
        if c.topic_by_id.len() >= max {
            self.stats.topic_ids_refused += 1;
            return (0, ReturnCode::Congestion);
        }
        let t = alloc_topic_id(c);
        c.topic_by_id.insert(t, name.clone());
        c.id_by_topic.insert(name, t);
        (t, ReturnCode::Accepted)
    }

    #[allow(clippy::too_many_arguments)]
    fn on_publish(
        &mut self,
        id: &Bytes,
        addr: A,
        qos: QoS,
        retain: bool,
        topic: TopicRef,
        msg_id: u16,
        data: Bytes,
    ) {
        let c = self.clients.get(id).expect("looked up");
        let topic_id = match topic {
            TopicRef::Normal(t) | TopicRef::Predefined(t) => t,
            TopicRef::Short(s) => u16::from_be_bytes(s),
        };
        let name = match self.resolve(c, topic) {
            Ok(n) => n,
            Err(code) => {
                // Spec 6.7: an unknown id is answered with PUBACK Invalid topic ID,
                // whatever the QoS.
                return self.send(
                    &addr,
                    &Message::PubAck {
                        topic_id,
                        msg_id,
                        code,
                    },
                );
            }
        };
        let q = qos_num(qos);
        if q == 2 {
            let c = self.clients.get_mut(id).expect("looked up");
            if c.inbound_qos2.contains(&msg_id) {
                return self.send(&addr, &Message::PubRec { msg_id });
            }
            if c.inbound_qos2.len() >= INBOUND_QOS2_MAX {
                c.inbound_qos2.pop_front();
            }
            c.inbound_qos2.push_back(msg_id);
        }
        self.up(Upstream::Publish {
            client_id: id.clone(),
            topic: name,
            qos: q,
            retain,
            payload: data,
        });
        match q {
            1 => self.send(
                &addr,
                &Message::PubAck {
                    topic_id,
                    msg_id,
                    code: ReturnCode::Accepted,
                },
            ),
            2 => self.send(&addr, &Message::PubRec { msg_id }),
            _ => {}
        }
    }

    fn on_subscribe(&mut self, id: &Bytes, addr: A, qos: QoS, msg_id: u16, topic: SubTopic) {
        let q = qos_num(qos);
        let (filter, topic_id) = match topic {
            SubTopic::Name(n) => {
                if std::str::from_utf8(&n).is_err() {
                    let code = ReturnCode::NotSupported;
                    return self.send(
                        &addr,
                        &Message::SubAck {
                            qos,
                            topic_id: 0,
                            msg_id,
                            code,
                        },
                    );
                }
                // Spec 6.9: a name without wildcards gets its topic id in the SUBACK;
                // a wildcard filter gets 0x0000 and REGISTERs come per concrete topic.
                if n.iter().any(|b| matches!(b, b'+' | b'#')) {
                    (n, 0)
                } else {
                    match self.register_topic(id, n.clone()) {
                        (t, ReturnCode::Accepted) => (n, t),
                        (_, code) => {
                            return self.send(
                                &addr,
                                &Message::SubAck {
                                    qos,
                                    topic_id: 0,
                                    msg_id,
                                    code,
                                },
                            )
                        }
                    }
                }
            }
            SubTopic::Predefined(p) => match self.limits.predefined.get(&p) {
                Some(n) => (n.clone(), p),
                None => {
                    let code = ReturnCode::InvalidTopicId;
                    return self.send(
                        &addr,
                        &Message::SubAck {
                            qos,
                            topic_id: 0,
                            msg_id,
                            code,
                        },
                    );
                }
            },
            SubTopic::Short(s) => (Bytes::copy_from_slice(&s), 0),
        };
        self.up(Upstream::Subscribe {
            client_id: id.clone(),
            filter,
            qos: q,
        });
        let code = ReturnCode::Accepted;
        self.send(
            &addr,
            &Message::SubAck {
                qos,
                topic_id,
                msg_id,
                code,
            },
        );
    }

    /// The wake-up PINGREQ with a client id (spec 6.14): deliver what was buffered,
    /// then PINGRESP.
    fn on_wake(&mut self, from: A, id: Bytes, now: Instant) {
        let Some(c) = self.clients.get_mut(&id) else {
            self.stats.unexpected_msgs += 1;
            return;
        };
        if !matches!(c.state, State::Asleep | State::Awake) {
            // An awake client naming itself: an ordinary PINGREQ.
            if c.addr == from {
                c.deadline = alive_until(c.keepalive, now);
                return self.send(&from, &Message::PingResp);
            }
            self.stats.unexpected_msgs += 1;
            return;
        }
        let old = std::mem::replace(&mut c.addr, from.clone());
        c.state = State::Awake;
        // Awake only while the buffer drains: bounded by the keepalive or Tretry,
        // whichever is longer; PINGRESP restarts the sleep deadline.
        c.deadline = Some(now + grace(c.keepalive.max(self.limits.retry_interval)));
        if old != from {
            if self.by_addr.get(&old) == Some(&id) {
                self.by_addr.remove(&old);
            }
            // An address is one client's: whoever held the new one is replaced, as
            // a CONNECT from it would replace them.
            if let Some(other) = self.by_addr.get(&from).cloned() {
                if other != id {
                    self.drop_client(&other, false);
                }
            }
        }
        self.by_addr.insert(from, id.clone());
        self.pump(&id, now);
    }
}
