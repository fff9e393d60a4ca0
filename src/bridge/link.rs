//! The bridge's local side: one MQTT 5 session on a virtual connection into the
//! owning loop's shard (no socket), as the MQTT-SN gateway's clients are. The shard
//! sees an ordinary client: it subscribes the `out` filters with No Local (so what
//! the bridge publishes locally never comes back to it), gets the matching messages
//! through ordinary fan-out (from any loop, over the mesh), and publishes what the
//! remote sends. `LocalLink` encodes what goes into that connection and decodes what
//! comes out; the worker moves the bytes. No IO, no clock.
//!
//! With a data directory (`open(.., persistent = true)`) the session is persistent,
//! so the shard logs every QoS 1/2 copy it queues for the bridge, and a delivery is
//! acknowledged locally only when the bridge is done with it (`ack`: the remote
//! acknowledged it, or the bridge dropped it); until then the copy stays in the
//! session, in the log, and a restart (kill -9 included) delivers it again. Without
//! one, deliveries are acknowledged as they are taken, as before.
//!
//! What the remote sends is published here at its QoS and kept (`pending`) until
//! the shard's PUBACK / PUBREC for it; that ack gives the remote token back
//! (`poll_remote_done`), and only then does the bridge acknowledge to the remote.
//! After a reopen the pending ones are published again (DUP when the session was
//! kept, so the shard's QoS 2 state takes each once) and a PUBREL still owed is sent
//! again.

use std::collections::VecDeque;

use ahash::{AHashMap, AHashSet};
use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::client::LocalPublish;
use crate::protocol::{
    decode_packet, encode_packet, Connect, Packet, Properties, PropertyValues, ProtocolVersion,
    PubResp, Publish, PublishProperties, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};

/// Largest packet taken from the shard on this connection.
const PACKET_BYTES_MAX: usize = 1 << 28;

/// A message the shard delivered to the bridge's session, for the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub topic: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub payload: Bytes,
    /// What `ack` takes once the bridge is done with it; 0: nothing owed (QoS 0, or
    /// acknowledged already because the session is not persistent).
    pub token: u32,
}

/// Why the virtual connection failed (the worker closes and reopens it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    Refused(ReasonCode),
    Malformed(String),
}

/// The bridge's side of its virtual connection into the shard.
#[derive(Debug, Default)]
pub struct LocalLink {
    rx: BytesMut,
    tx: BytesMut,
    next_packet_id: u16,
    up: bool,
    /// Server Keep Alive the shard imposed (keepalive_max_s / server_keep_alive_s): the
    /// worker sends PINGREQ at half of it.
    keepalive_s: u16,
    /// The session is persistent and deliveries are acknowledged by `ack` (above).
    persistent: bool,
    /// Which incarnation of the local session the held packet ids belong to: it
    /// changes when a CONNACK says the session was not present, so an `ack` for a
    /// message of a lost session never acknowledges a new one under the same id.
    /// Starts at 1 (a token of 0 means nothing owed).
    epoch: u16,
    /// Deliveries the bridge holds, by the session's packet id: the ack still owed.
    held: AHashMap<u16, QoS>,
    /// Acks owed while the connection was down: written after the next CONNACK.
    owed: Vec<(u16, QoS)>,
    /// Acknowledged right after a CONNACK: the retransmission (DUP) of these that the
    /// shard wrote behind that CONNACK is not delivered again.
    acked_on_connect: AHashSet<u16>,
    /// Remote messages published into the shard and not yet acknowledged by it, in
    /// publish order (acks mostly come in order, so removal is near the front).
    pending: VecDeque<(u16, LocalPublish)>,
    /// QoS 2 ids the shard PUBREC'd, PUBREL sent, PUBCOMP not yet come.
    released: AHashSet<u16>,
    /// Remote tokens of messages the shard acknowledged.
    remote_done: VecDeque<u32>,
    /// The shard's Receive Maximum (CONNACK): what `pending` may hold.
    receive_max: u16,
}

impl LocalLink {
    pub fn new() -> LocalLink {
        LocalLink::default()
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// The virtual connection is gone: acks wait for the next CONNACK.
    pub fn on_closed(&mut self) {
        self.up = false;
        self.tx.clear();
    }

    /// Seconds between PINGREQs the shard needs (0: none).
    pub fn ping_interval_s(&self) -> u16 {
        self.keepalive_s / 2
    }

    /// CONNECT and, behind it, SUBSCRIBE of `out_filters` with No Local (made again
    /// at each start, so a changed rule takes effect). Not `persistent`: clean start,
    /// nothing kept. `persistent`: the session and what it holds for the bridge are
    /// kept (Session Expiry "never", which the broker caps by
    /// `persistent_session_expiry_s`, counted from its last start), retained
    /// messages are sent only to a new subscription, and the deliveries still held
    /// carry over to the new connection.
    pub fn open(
        &mut self,
        client_id: &str,
        out_filters: &[(String, QoS)],
        persistent: bool,
    ) -> Bytes {
        let (epoch, held, owed) = (
            self.epoch,
            std::mem::take(&mut self.held),
            std::mem::take(&mut self.owed),
        );
        let (pending, released, remote_done, next_packet_id) = (
            std::mem::take(&mut self.pending),
            std::mem::take(&mut self.released),
            std::mem::take(&mut self.remote_done),
            self.next_packet_id,
        );
        *self = LocalLink::new();
        self.persistent = persistent;
        self.epoch = epoch.max(1);
        // The remote's messages not yet acknowledged locally go in again after the
        // CONNACK; their ids stay taken until then.
        self.pending = pending;
        self.released = released;
        self.remote_done = remote_done;
        self.next_packet_id = next_packet_id;
        if persistent {
            self.held = held;
            self.owed = owed;
        }
        let connect = Connect {
            protocol: ProtocolVersion::V5,
            clean_start: !persistent,
            keep_alive_s: 0,
            client_id: Bytes::copy_from_slice(client_id.as_bytes()),
            will: None,
            username: None,
            password: None,
            properties: Properties::from(PropertyValues {
                session_expiry_interval_s: persistent.then_some(u32::MAX),
                ..Default::default()
            }),
        };
        encode_packet(
            &Packet::Connect(Box::new(connect)),
            ProtocolVersion::V5,
            &mut self.tx,
        );
        if !out_filters.is_empty() {
            let filters: SmallVec<[(Bytes, SubscriptionOptions); 2]> = out_filters
                .iter()
                .map(|(f, q)| {
                    (
                        Bytes::copy_from_slice(f.as_bytes()),
                        SubscriptionOptions {
                            qos: *q,
                            no_local: true,
                            retain_as_published: true,
                            retain_handling: u8::from(persistent),
                        },
                    )
                })
                .collect();
            let packet_id = self.packet_id();
            self.encode(&Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties: Properties::default(),
            }));
        }
        self.tx.split().freeze()
    }

    /// A message from the remote, as a PUBLISH into the shard. QoS 1/2: kept until
    /// the shard acknowledged it (`poll_remote_done`).
    pub fn publish(&mut self, m: LocalPublish) -> Bytes {
        let packet_id = if m.qos == QoS::AtMostOnce {
            0
        } else {
            self.packet_id()
        };
        self.encode_publish(packet_id, &m, false);
        if packet_id != 0 {
            self.pending.push_back((packet_id, m));
        }
        self.tx.split().freeze()
    }

    /// Whether `publish` may be called: up, and the shard's window has room.
    pub fn can_publish(&self) -> bool {
        self.up && self.pending.len() + self.released.len() < usize::from(self.receive_max.max(1))
    }

    /// Remote messages published here that the shard has not acknowledged yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The next remote token whose message the shard acknowledged.
    pub fn poll_remote_done(&mut self) -> Option<u32> {
        self.remote_done.pop_front()
    }

    fn encode_publish(&mut self, packet_id: u16, m: &LocalPublish, dup: bool) {
        self.encode(&Packet::Publish(Publish {
            dup,
            qos: m.qos,
            retain: m.retain,
            topic: m.topic.clone(),
            packet_id,
            properties: PublishProperties::default(),
            payload: m.payload.clone(),
        }));
    }

    /// The shard acknowledged our publish `id`: its remote token is done.
    fn local_acked(&mut self, id: u16) -> bool {
        let Some(i) = self.pending.iter().position(|(p, _)| *p == id) else {
            return false;
        };
        if let Some((_, m)) = self.pending.remove(i) {
            if m.remote_token != 0 {
                self.remote_done.push_back(m.remote_token);
            }
        }
        true
    }

    /// The bridge is done with the delivery `token` names (the remote acknowledged
    /// it, or it was dropped): its PUBACK/PUBREC, from `take` (at once when up, else
    /// after the next CONNACK). A token of a lost session is ignored.
    pub fn ack(&mut self, token: u32) {
        let (epoch, id) = ((token >> 16) as u16, token as u16);
        if token == 0 || epoch != self.epoch {
            return;
        }
        let Some(q) = self.held.remove(&id) else {
            return;
        };
        if self.up {
            self.encode_ack(id, q);
        } else {
            self.owed.push((id, q));
        }
    }

    /// Deliveries held for the bridge, their acks owed.
    pub fn held(&self) -> usize {
        self.held.len() + self.owed.len()
    }

    /// Bytes for the shard encoded by `ack`.
    pub fn take(&mut self) -> Option<Bytes> {
        (!self.tx.is_empty()).then(|| self.tx.split().freeze())
    }

    pub fn ping(&mut self) -> Bytes {
        self.encode(&Packet::PingReq);
        self.tx.split().freeze()
    }

    /// Bytes the shard wrote on the connection: deliveries go to `deliver`, which
    /// says whether the bridge took it (a message not taken is acknowledged at once);
    /// the answers the shard expects (acks, PUBREL) are returned, to feed back in.
    pub fn on_shard_bytes(
        &mut self,
        data: &[u8],
        mut deliver: impl FnMut(Delivered) -> bool,
    ) -> Result<Option<Bytes>, LinkError> {
        self.rx.extend_from_slice(data);
        loop {
            let p = match decode_packet(&mut self.rx, ProtocolVersion::V5, PACKET_BYTES_MAX) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => return Err(LinkError::Malformed(format!("{e:?}"))),
            };
            match p {
                Packet::ConnAck(a) => {
                    if a.code != ReasonCode::Success {
                        return Err(LinkError::Refused(a.code));
                    }
                    self.up = true;
                    self.keepalive_s = a.properties.server_keep_alive_s.unwrap_or(0);
                    self.receive_max = a.properties.receive_maximum.unwrap_or(u16::MAX);
                    if !a.session_present {
                        // The shard forgot our QoS 2 exchanges: nothing to release.
                        self.released.clear();
                    }
                    // Not acknowledged on the old connection: again, DUP when the
                    // session (and its QoS 2 state) was kept.
                    for (id, m) in std::mem::take(&mut self.pending) {
                        self.encode_publish(id, &m, a.session_present);
                        self.pending.push_back((id, m));
                    }
                    let released: Vec<u16> = self.released.iter().copied().collect();
                    for id in released {
                        self.encode(&Packet::PubRel(PubResp::new(id)));
                    }
                    if self.persistent && !a.session_present {
                        // What the old session held is gone with it (expired): its
                        // ids mean nothing now, and the bridge's tokens for them
                        // must not acknowledge new messages.
                        self.held.clear();
                        self.owed.clear();
                        self.epoch = self.epoch.wrapping_add(1).max(1);
                    }
                    for (id, q) in std::mem::take(&mut self.owed) {
                        self.encode_ack(id, q);
                        self.acked_on_connect.insert(id);
                    }
                }
                Packet::Publish(p) => {
                    let (id, q) = (p.packet_id, p.qos);
                    // The shard retransmits only on a new connection (never on this
                    // one): a DUP of a delivery the bridge still holds, or whose ack
                    // went out just now, is not taken twice.
                    if q != QoS::AtMostOnce
                        && p.dup
                        && (self.held.contains_key(&id) || self.acked_on_connect.remove(&id))
                    {
                        continue;
                    }
                    let hold = self.persistent && q != QoS::AtMostOnce;
                    let token = if hold {
                        (u32::from(self.epoch) << 16) | u32::from(id)
                    } else {
                        0
                    };
                    let taken = deliver(Delivered {
                        topic: p.topic,
                        qos: q,
                        retain: p.retain,
                        payload: p.payload,
                        token,
                    });
                    if hold && taken {
                        self.held.insert(id, q);
                    } else {
                        self.encode_ack(id, q);
                    }
                }
                Packet::PubRel(r) => self.encode(&Packet::PubComp(PubResp::new(r.packet_id))),
                // The shard has our QoS 1 publish (in its log, with a data directory).
                Packet::PubAck(r) => {
                    let refused = self.local_acked(r.packet_id) && r.code as u8 >= 0x80;
                    if refused {
                        tracing::warn!("the broker refused a bridged message: {:?}", r.code);
                    }
                }
                // Our QoS 2 publish was taken (or refused, which ends the exchange):
                // release it.
                Packet::PubRec(r) => {
                    if self.local_acked(r.packet_id) && r.code as u8 >= 0x80 {
                        tracing::warn!("the broker refused a bridged message: {:?}", r.code);
                    } else {
                        self.released.insert(r.packet_id);
                        self.encode(&Packet::PubRel(PubResp::new(r.packet_id)));
                    }
                }
                Packet::PubComp(r) => {
                    self.released.remove(&r.packet_id);
                }
                Packet::SubAck(s) => {
                    if let Some(c) = s.codes.iter().find(|c| **c as u8 >= 0x80) {
                        return Err(LinkError::Refused(*c));
                    }
                }
                Packet::Disconnect(d) => return Err(LinkError::Refused(d.code)),
                // PINGRESP, UNSUBACK: nothing to answer.
                _ => {}
            }
        }
        Ok((!self.tx.is_empty()).then(|| self.tx.split().freeze()))
    }

    fn encode_ack(&mut self, id: u16, q: QoS) {
        match q {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.encode(&Packet::PubAck(PubResp::new(id))),
            QoS::ExactlyOnce => self.encode(&Packet::PubRec(PubResp::new(id))),
        }
    }

    /// An id not held by a publish the shard has not finished with (the window is
    /// far below the id space, so this ends).
    fn packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            let id = self.next_packet_id;
            if !self.released.contains(&id) && !self.pending.iter().any(|(p, _)| *p == id) {
                return id;
            }
        }
    }

    fn encode(&mut self, p: &Packet) {
        encode_packet(p, ProtocolVersion::V5, &mut self.tx);
    }
}
