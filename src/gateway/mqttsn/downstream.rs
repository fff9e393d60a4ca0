//! The downstream half of the MQTT-SN gateway core: broker deliveries queued per client
//! (bounded), the one in-flight slot per client (REGISTER for wildcard matches, then
//! PUBLISH QoS 0/1/2), retransmission with Tretry/Nretry, and lost clients and their
//! wills. The types and the upstream half live in `gateway.rs`.

use std::time::Instant;

use bytes::Bytes;

use super::codec::{encode_to_bytes, Message, QoS, ReturnCode, TopicRef};
use super::gateway::{BrokerQoS, Client, Gateway, InFlight, Output, Pending, State, Upstream};

impl<A: Clone + Eq + std::hash::Hash> Gateway<A> {
    /// A message the broker delivers to SN client `client_id` (its session matched
    /// `topic`). Queued, bounded; sent at once when the client is awake and its
    /// in-flight slot is free.
    pub fn on_deliver(
        &mut self,
        client_id: &Bytes,
        topic: Bytes,
        qos: BrokerQoS,
        retain: bool,
        payload: Bytes,
        now: Instant,
    ) {
        let max = self.limits.max_buffered_msgs;
        let Some(c) = self.clients.get_mut(client_id) else {
            self.stats.unexpected_msgs += 1;
            return;
        };
        // A message whose topic is being REGISTERed waits outside the queue and
        // goes back to its front on REGACK (or sleep), so it holds a slot too.
        let registering = matches!(c.in_flight, Some((InFlight::Register { .. }, ..)));
        if c.queue.len() + usize::from(registering) >= max {
            self.stats.buffered_dropped += 1;
            return;
        }
        c.queue.push_back(Pending {
            topic,
            qos: qos.min(2),
            retain,
            payload,
        });
        self.pump(client_id, now);
    }

    /// Sends queued deliveries while the client is awake and nothing is in flight;
    /// QoS 0 sends do not hold the slot. A sleeping client's wake-up ends with a
    /// PINGRESP once its buffer is empty (spec 6.14).
    pub(super) fn pump(&mut self, id: &Bytes, now: Instant) {
        loop {
            let Some(c) = self.clients.get_mut(id) else {
                return;
            };
            if !matches!(c.state, State::Active | State::Awake) || c.in_flight.is_some() {
                return;
            }
            let Some(p) = c.queue.pop_front() else {
                if c.state == State::Awake {
                    c.state = State::Asleep;
                    c.deadline = Some(now + super::gateway::grace(c.sleep));
                    let addr = c.addr.clone();
                    self.send(&addr, &Message::PingResp);
                }
                return;
            };
            let addr = c.addr.clone();
            let topic_ref = self.topic_ref_for(id, &p.topic);
            let c = self.clients.get_mut(id).expect("looked up");
            let topic = match topic_ref {
                Some(t) => t,
                None => {
                    // Spec 6.10: REGISTER the concrete topic of a wildcard match first.
                    if c.topic_by_id.len() >= self.limits.max_topic_ids {
                        self.stats.topic_ids_refused += 1;
                        self.stats.buffered_dropped += 1;
                        continue;
                    }
                    let topic_id = alloc_topic_id(c);
                    let msg_id = alloc_msg_id(c);
                    let m = Message::Register {
                        topic_id,
                        msg_id,
                        topic_name: p.topic.clone(),
                    };
                    c.in_flight = Some((
                        InFlight::Register {
                            msg_id,
                            topic_id,
                            pending: p,
                        },
                        now,
                        0,
                    ));
                    self.send(&addr, &m);
                    return;
                }
            };
            let msg_id = if p.qos == 0 { 0 } else { alloc_msg_id(c) };
            let m = Message::Publish {
                dup: false,
                qos: sn_qos(p.qos),
                retain: p.retain,
                topic,
                msg_id,
                data: p.payload,
            };
            let Ok(wire) = encode_to_bytes(&m) else {
                self.stats.oversize_deliveries_dropped += 1;
                continue;
            };
            if wire.len() > self.limits.max_datagram_bytes {
                self.stats.oversize_deliveries_dropped += 1;
                continue;
            }
            if p.qos > 0 {
                c.in_flight = Some((
                    InFlight::Publish {
                        msg_id,
                        wire: wire.clone(),
                    },
                    now,
                    0,
                ));
            }
            self.out.push(Output::Datagram {
                to: addr,
                bytes: wire,
            });
        }
    }

    pub(super) fn topic_ref_for(&self, id: &Bytes, topic: &Bytes) -> Option<TopicRef> {
        let c = self.clients.get(id)?;
        if let Some(t) = c.id_by_topic.get(topic) {
            return Some(TopicRef::Normal(*t));
        }
        if let Some(p) = self.predefined_ids.get(topic) {
            return Some(TopicRef::Predefined(*p));
        }
        if topic.len() == 2 {
            return Some(TopicRef::Short([topic[0], topic[1]]));
        }
        None
    }

    pub(super) fn on_regack(
        &mut self,
        id: &Bytes,
        msg_id: u16,
        topic_id: u16,
        code: ReturnCode,
        now: Instant,
    ) {
        let c = self.clients.get_mut(id).expect("looked up");
        let Some((
            InFlight::Register {
                msg_id: m,
                topic_id: t,
                pending,
            },
            ..,
        )) = &c.in_flight
        else {
            self.stats.unexpected_msgs += 1;
            return;
        };
        if *m != msg_id || *t != topic_id {
            self.stats.unexpected_msgs += 1;
            return;
        }
        let pending = pending.clone();
        c.in_flight = None;
        // While the REGISTER was out, the client's own REGISTERs may have taken this
        // topic (it then goes out under that id) or the last free ids.
        let known = c.id_by_topic.contains_key(&pending.topic);
        let full = c.topic_by_id.len() >= self.limits.max_topic_ids
            || c.topic_by_id.contains_key(&topic_id);
        if code == ReturnCode::Accepted && (known || !full) {
            if !known {
                c.topic_by_id.insert(topic_id, pending.topic.clone());
                c.id_by_topic.insert(pending.topic.clone(), topic_id);
            }
            c.queue.push_front(pending);
        } else if code == ReturnCode::Accepted {
            self.stats.topic_ids_refused += 1;
            self.stats.buffered_dropped += 1;
        } else {
            // The client refused the topic: the message cannot be delivered.
            self.stats.buffered_dropped += 1;
        }
        self.pump(id, now);
    }

    pub(super) fn on_ack(
        &mut self,
        id: &Bytes,
        msg_id: u16,
        code: ReturnCode,
        pubrec: bool,
        now: Instant,
    ) {
        let c = self.clients.get_mut(id).expect("looked up");
        let matches =
            matches!(&c.in_flight, Some((InFlight::Publish { msg_id: m, .. }, ..)) if *m == msg_id);
        if !matches {
            self.stats.unexpected_msgs += 1;
            return;
        }
        if pubrec {
            c.in_flight = Some((InFlight::PubRel { msg_id }, now, 0));
            let addr = c.addr.clone();
            self.send(&addr, &Message::PubRel { msg_id });
            return;
        }
        if code != ReturnCode::Accepted {
            // Spec 6.7: the client does not know the id; nothing is retried.
            self.stats.buffered_dropped += 1;
        }
        c.in_flight = None;
        self.pump(id, now);
    }

    /// Retransmissions (Tretry/Nretry, spec 6.13) and lost clients (keepalive and
    /// sleep deadlines). Call at or after [`Gateway::next_deadline`].
    pub fn on_tick(&mut self, now: Instant) {
        if let Some(every) = self.limits.advertise_interval {
            if !matches!(self.next_advertise, Some(t) if now < t) {
                let m = Message::Advertise {
                    gw_id: self.limits.gw_id,
                    duration: u16::try_from(every.as_secs()).unwrap_or(u16::MAX),
                };
                if let Ok(bytes) = encode_to_bytes(&m) {
                    self.out.push(Output::Broadcast { bytes });
                }
                self.next_advertise = Some(now + every);
            }
        }
        let retry = self.limits.retry_interval;
        let max_retries = self.limits.max_retries;
        let mut lost = Vec::new();
        let mut resend = Vec::new();
        for (id, c) in self.clients.iter_mut() {
            if c.deadline.is_some_and(|d| now >= d) {
                lost.push(id.clone());
                continue;
            }
            if let Some((f, at, n)) = &mut c.in_flight {
                if now >= *at + retry {
                    if *n >= max_retries {
                        lost.push(id.clone());
                        continue;
                    }
                    *n += 1;
                    *at = now;
                    let wire = match f {
                        InFlight::Publish { wire, .. } => {
                            // Retransmissions carry DUP (spec 5.3.4): bit 7 of the flags octet,
                            // which follows the 1- or 3-octet Length and the MsgType.
                            let mut w = wire.to_vec();
                            let at = if w[0] == 0x01 { 4 } else { 2 };
                            w[at] |= 0x80;
                            Bytes::from(w)
                        }
                        InFlight::Register {
                            msg_id,
                            topic_id,
                            pending,
                        } => {
                            match encode_to_bytes(&Message::Register {
                                topic_id: *topic_id,
                                msg_id: *msg_id,
                                topic_name: pending.topic.clone(),
                            }) {
                                Ok(b) => b,
                                Err(_) => continue,
                            }
                        }
                        InFlight::PubRel { msg_id } => {
                            match encode_to_bytes(&Message::PubRel { msg_id: *msg_id }) {
                                Ok(b) => b,
                                Err(_) => continue,
                            }
                        }
                    };
                    resend.push(Output::Datagram {
                        to: c.addr.clone(),
                        bytes: wire,
                    });
                }
            }
        }
        self.stats.retransmits += resend.len() as u64;
        self.out.extend(resend);
        for id in lost {
            self.stats.clients_lost += 1;
            self.drop_client(&id, true);
        }
    }

    /// Removes a client; a lost one (`lost`) has its will published first.
    pub(super) fn drop_client(&mut self, id: &Bytes, lost: bool) {
        let Some(c) = self.clients.remove(id) else {
            return;
        };
        if self.by_addr.get(&c.addr) == Some(id) {
            self.by_addr.remove(&c.addr);
        }
        if lost {
            if let Some(w) = c.will {
                self.stats.wills_published += 1;
                self.up(Upstream::Publish {
                    client_id: id.clone(),
                    topic: w.topic,
                    qos: w.qos,
                    retain: w.retain,
                    payload: w.payload,
                });
            }
        }
        self.up(Upstream::Disconnect {
            client_id: id.clone(),
        });
    }

    /// The broker ended client `id`'s session itself (another connection took the
    /// client id over, the CONNECT was refused upstream, shutdown): the client is
    /// told with a DISCONNECT (spec 6.13's gateway-initiated one) and forgotten. No
    /// will: the session did not end by the client's silence.
    pub fn end_session(&mut self, id: &Bytes) {
        let Some(c) = self.clients.remove(id) else {
            return;
        };
        if self.by_addr.get(&c.addr) == Some(id) {
            self.by_addr.remove(&c.addr);
        }
        self.send(&c.addr, &Message::Disconnect { duration: None });
    }

    /// The broker refused client `id`'s CONNECT: the refusing CONNACK told it, so it
    /// is forgotten without a DISCONNECT, and without its will (it never connected).
    pub fn forget_session(&mut self, id: &Bytes) {
        let Some(c) = self.clients.remove(id) else {
            return;
        };
        if self.by_addr.get(&c.addr) == Some(id) {
            self.by_addr.remove(&c.addr);
        }
    }

    /// The in-flight message id of a client, for tests of the retransmission rules.
    #[cfg(test)]
    pub(crate) fn in_flight_msg_id(&self, id: &[u8]) -> Option<u16> {
        self.clients
            .get(id)?
            .in_flight
            .as_ref()
            .map(|(f, ..)| f.msg_id())
    }
}

/// A fresh normal topic id, skipping 0 and ids in use (the bound keeps this short).
pub(super) fn alloc_topic_id<A>(c: &mut Client<A>) -> u16 {
    loop {
        let t = c.next_topic_id;
        c.next_topic_id = c.next_topic_id.wrapping_add(1).max(1);
        if !c.topic_by_id.contains_key(&t) {
            return t;
        }
    }
}

fn alloc_msg_id<A>(c: &mut Client<A>) -> u16 {
    let m = c.next_msg_id;
    c.next_msg_id = c.next_msg_id.wrapping_add(1).max(1);
    m
}

fn sn_qos(q: BrokerQoS) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

#[cfg(any(test, feature = "testkit"))]
impl<A: Clone + Eq + std::hash::Hash + std::fmt::Debug> Gateway<A> {
    /// The bounds and bookkeeping every call must leave true (the `sn_gateway` fuzz
    /// target checks them after each step).
    pub fn check_invariants(&self) {
        assert!(self.clients.len() <= self.limits.max_clients);
        for (id, c) in &self.clients {
            assert!(
                c.queue.len() <= self.limits.max_buffered_msgs,
                "{id:?} queue"
            );
            assert!(
                c.topic_by_id.len() <= self.limits.max_topic_ids,
                "{id:?} topic ids"
            );
            assert_eq!(
                c.topic_by_id.len(),
                c.id_by_topic.len(),
                "{id:?} registry halves"
            );
            assert!(!c.topic_by_id.contains_key(&0), "{id:?} topic id 0");
            assert_eq!(
                self.by_addr.get(&c.addr),
                Some(id),
                "{id:?} address binding"
            );
        }
        for (addr, id) in &self.by_addr {
            assert!(
                self.clients.get(id).is_some_and(|c| &c.addr == addr),
                "{addr:?} dangling"
            );
        }
        for o in &self.out {
            if let Output::Datagram { bytes, .. } | Output::Broadcast { bytes } = o {
                assert!(bytes.len() <= self.limits.max_datagram_bytes);
                assert!(
                    super::codec::decode(bytes).is_ok(),
                    "gateway sent {bytes:02x?}"
                );
            }
        }
    }
}
