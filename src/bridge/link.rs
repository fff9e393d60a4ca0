//! The bridge's local side: one MQTT 5 session on a virtual connection into the
//! owning loop's shard (no socket), as the MQTT-SN gateway's clients are. The shard
//! sees an ordinary client: it subscribes the `out` filters with No Local (so what
//! the bridge publishes locally never comes back to it), gets the matching messages
//! through ordinary fan-out (from any loop, over the mesh), and publishes what the
//! remote sends. `LocalLink` encodes what goes into that connection and decodes what
//! comes out; the worker moves the bytes. No IO, no clock.

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::client::LocalPublish;
use crate::protocol::{
    decode_packet, encode_packet, Connect, Packet, Properties, ProtocolVersion, PubResp, Publish,
    PublishProperties, QoS, ReasonCode, Subscribe, SubscriptionOptions,
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
}

impl LocalLink {
    pub fn new() -> LocalLink {
        LocalLink::default()
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Seconds between PINGREQs the shard needs (0: none).
    pub fn ping_interval_s(&self) -> u16 {
        self.keepalive_s / 2
    }

    /// CONNECT (clean start: nothing to keep locally; the subscriptions are made again
    /// at each start) and, behind it, SUBSCRIBE of `out_filters` with No Local.
    pub fn open(&mut self, client_id: &str, out_filters: &[(String, QoS)]) -> Bytes {
        *self = LocalLink::new();
        let connect = Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive_s: 0,
            client_id: Bytes::copy_from_slice(client_id.as_bytes()),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
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
                            retain_handling: 0,
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

    /// A message from the remote, as a PUBLISH into the shard.
    pub fn publish(&mut self, m: LocalPublish) -> Bytes {
        let packet_id = if m.qos == QoS::AtMostOnce {
            0
        } else {
            self.packet_id()
        };
        self.encode(&Packet::Publish(Publish {
            dup: false,
            qos: m.qos,
            retain: m.retain,
            topic: m.topic,
            packet_id,
            properties: PublishProperties::default(),
            payload: m.payload,
        }));
        self.tx.split().freeze()
    }

    pub fn ping(&mut self) -> Bytes {
        self.encode(&Packet::PingReq);
        self.tx.split().freeze()
    }

    /// Bytes the shard wrote on the connection: deliveries go to `deliver`; the
    /// answers the shard expects (acks, PUBREL) are returned, to feed back in.
    pub fn on_shard_bytes(
        &mut self,
        data: &[u8],
        mut deliver: impl FnMut(Delivered),
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
                }
                Packet::Publish(p) => {
                    let (id, q) = (p.packet_id, p.qos);
                    // The shard retransmits only on a new connection (never on this
                    // one), so a QoS 2 delivery is not seen twice here.
                    deliver(Delivered {
                        topic: p.topic,
                        qos: q,
                        retain: p.retain,
                        payload: p.payload,
                    });
                    match q {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => self.encode(&Packet::PubAck(PubResp::new(id))),
                        QoS::ExactlyOnce => self.encode(&Packet::PubRec(PubResp::new(id))),
                    }
                }
                Packet::PubRel(r) => self.encode(&Packet::PubComp(PubResp::new(r.packet_id))),
                // Our QoS 2 publish was taken: release it.
                Packet::PubRec(r) => self.encode(&Packet::PubRel(PubResp::new(r.packet_id))),
                Packet::SubAck(s) => {
                    if let Some(c) = s.codes.iter().find(|c| **c as u8 >= 0x80) {
                        return Err(LinkError::Refused(*c));
                    }
                }
                Packet::Disconnect(d) => return Err(LinkError::Refused(d.code)),
                // PUBACK, PUBCOMP, PINGRESP: nothing to answer.
                _ => {}
            }
        }
        Ok((!self.tx.is_empty()).then(|| self.tx.split().freeze()))
    }

    fn packet_id(&mut self) -> u16 {
        self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
        self.next_packet_id
    }

    fn encode(&mut self, p: &Packet) {
        encode_packet(p, ProtocolVersion::V5, &mut self.tx);
    }
}
