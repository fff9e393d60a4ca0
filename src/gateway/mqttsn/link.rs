//! The seam between the gateway and the shard: each SN client's broker-side session is
//! an ordinary MQTT 3.1.1 session on a virtual connection. `MqttLink` turns the
//! gateway's [`Upstream`] operations into the MQTT packets that connection carries,
//! and the packets the shard sends on it into gateway deliveries and the acks the
//! shard expects back. No IO: the worker (or a test) moves the packets.
//!
//! Deliveries are acknowledged to the shard as soon as the gateway has queued them
//! (bounded, drops counted): from there the gateway owns the SN side's QoS exchange
//! and retransmission, as a TCP client's socket buffer would.

use std::collections::VecDeque;
use std::hash::Hash;
use std::time::Instant;

use bytes::Bytes;
use smallvec::smallvec;

use super::gateway::{Gateway, Upstream};
use crate::protocol::{
    Connect, Disconnect, Packet, Properties, ProtocolVersion, PubResp, Publish, PublishProperties,
    QoS, ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe,
};

/// Inbound QoS 2 packet ids held between PUBREC and PUBREL, so a redelivery with DUP
/// is acknowledged, not delivered twice. The shard keeps one client's QoS 2 window
/// far below this; older ids fall off first.
const QOS2_IDS_MAX: usize = 64;

/// One SN client's virtual MQTT connection, as the gateway's side of it.
#[derive(Debug, Default)]
pub struct MqttLink {
    next_packet_id: u16,
    qos2_ids: VecDeque<u16>,
}

fn qos(q: u8) -> QoS {
    QoS::from_u8(q.min(2)).unwrap_or_default()
}

fn resp(packet_id: u16) -> PubResp {
    PubResp {
        packet_id,
        code: ReasonCode::Success,
        properties: Properties::default(),
    }
}

impl MqttLink {
    pub fn new() -> MqttLink {
        MqttLink::default()
    }

    fn packet_id(&mut self) -> u16 {
        self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
        self.next_packet_id
    }

    /// The packet one gateway operation becomes on this client's connection.
    pub fn to_packet(&mut self, u: Upstream) -> Packet {
        match u {
            Upstream::Connect {
                client_id,
                clean_session,
                ..
            } => {
                Packet::Connect(Box::new(Connect {
                    protocol: ProtocolVersion::V311,
                    clean_start: clean_session,
                    // The gateway enforces the SN keepalive itself (1.5 × duration)
                    // and sends DISCONNECT for a lost client; the virtual connection
                    // has no idle socket to time out. (`SnNode` declares
                    // `keepalive_max_s` instead when one is set, and pings.)
                    keep_alive_s: 0,
                    client_id,
                    will: None,
                    username: None,
                    password: None,
                    properties: Properties::default(),
                }))
            }
            Upstream::Publish {
                topic,
                qos: q,
                retain,
                payload,
                ..
            } => {
                let packet_id = if q == 0 { 0 } else { self.packet_id() };
                Packet::Publish(Publish {
                    dup: false,
                    qos: qos(q),
                    retain,
                    topic,
                    packet_id,
                    properties: PublishProperties::default(),
                    payload,
                })
            }
            Upstream::PublishAnonymous {
                topic,
                retain,
                payload,
            } => Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain,
                topic,
                packet_id: 0,
                properties: PublishProperties::default(),
                payload,
            }),
            Upstream::Subscribe { filter, qos: q, .. } => Packet::Subscribe(Subscribe {
                packet_id: self.packet_id(),
                filters: smallvec![(
                    filter,
                    SubscriptionOptions {
                        qos: qos(q),
                        ..Default::default()
                    }
                )],
                properties: Properties::default(),
            }),
            Upstream::Unsubscribe { filter, .. } => Packet::Unsubscribe(Unsubscribe {
                packet_id: self.packet_id(),
                filters: smallvec![filter],
                properties: Properties::default(),
            }),
            Upstream::Disconnect { .. } => Packet::Disconnect(Disconnect {
                code: ReasonCode::Success,
                properties: Properties::default(),
            }),
        }
    }

    /// A packet the shard sent on `client_id`'s connection: a PUBLISH is handed to the
    /// gateway; the return value is the packet to send back to the shard, if any.
    pub fn from_broker<A: Clone + Eq + Hash>(
        &mut self,
        client_id: &Bytes,
        p: Packet,
        gw: &mut Gateway<A>,
        now: Instant,
    ) -> Option<Packet> {
        match p {
            Packet::Publish(p) => {
                let q = p.qos as u8;
                if p.qos == QoS::ExactlyOnce {
                    if self.qos2_ids.contains(&p.packet_id) {
                        return Some(Packet::PubRec(resp(p.packet_id)));
                    }
                    if self.qos2_ids.len() >= QOS2_IDS_MAX {
                        self.qos2_ids.pop_front();
                    }
                    self.qos2_ids.push_back(p.packet_id);
                }
                gw.on_deliver(client_id, p.topic, q, p.retain, p.payload, now);
                match p.qos {
                    QoS::AtMostOnce => None,
                    QoS::AtLeastOnce => Some(Packet::PubAck(resp(p.packet_id))),
                    QoS::ExactlyOnce => Some(Packet::PubRec(resp(p.packet_id))),
                }
            }
            Packet::PubRel(r) => {
                self.qos2_ids.retain(|id| *id != r.packet_id);
                Some(Packet::PubComp(resp(r.packet_id)))
            }
            // Our QoS 2 publish: release it.
            Packet::PubRec(r) => Some(Packet::PubRel(resp(r.packet_id))),
            // CONNACK, SUBACK, UNSUBACK, PUBACK, PUBCOMP, PINGRESP: the SN client was
            // answered when the gateway took the operation.
            _ => None,
        }
    }
}
