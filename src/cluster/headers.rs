//! What travels with an MQTT message on NATS (sans-IO): the header names and values of a
//! forwarded PUBLISH, and the value format of a retained entry in the KV bucket.
//!
//! The NATS payload is the MQTT payload unchanged, so any NATS client can read it; the
//! MQTT metadata rides in headers. MQTT 5 properties (user properties may hold any
//! UTF-8) are carried as one header: base64 of a PUBLISH frame, in the broker codec's
//! own encoding, that holds only the properties, so no second property codec exists.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::{Bytes, BytesMut};

use super::ClusterError;
use crate::protocol::{
    decode_packet, encode_to_bytes, Packet, ProtocolVersion, Publish, PublishProperties, QoS,
};

pub const QOS: &str = "Mqtt-Qos";
pub const RETAIN: &str = "Mqtt-Retain";
pub const ORIGIN: &str = "Mqtt-Origin";
pub const ID: &str = "Mqtt-Id";
pub const PROPS: &str = "Mqtt-Props";

/// Bounds a property header on decode (a frame of properties only; MQTT's own bound is
/// far larger, but a cluster peer has no reason to send more).
const PROPS_MAX_BYTES: usize = 256 * 1024;

/// The MQTT side of one forwarded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub qos: QoS,
    pub retain: bool,
    /// The node that published it (its `cluster_node_name`).
    pub origin: String,
    /// The origin node's sequence number of this message: with `origin`, the key that
    /// drops the second copy NATS sends for a second matching subscription.
    pub id: u64,
    pub properties: PublishProperties,
}

/// A forwarded message's identity as every node computes it from its headers
/// (`Message::cluster_key`): FNV-1a over the origin node's name and its sequence
/// number, never 0 (0 marks a message published on this node). Stable across builds
/// (not a seeded hasher), since two nodes compare the keys they computed apart; a
/// collision needs two of the few messages in one hand-over's grace window to share
/// a 64-bit hash.
pub fn message_key(origin: &str, id: u64) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0100_0000_01b3;
    let mut h = FNV_OFFSET;
    for &b in origin
        .as_bytes()
        .iter()
        .chain([0xff].iter())
        .chain(&id.to_le_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h.max(1)
}

/// The header pairs for `meta`, in a fixed order.
pub fn encode(meta: &Meta) -> Vec<(&'static str, String)> {
    let mut h = Vec::with_capacity(5);
    h.push((QOS, (meta.qos as u8).to_string()));
    if meta.retain {
        h.push((RETAIN, "1".to_owned()));
    }
    h.push((ORIGIN, meta.origin.clone()));
    h.push((ID, meta.id.to_string()));
    if !meta.properties.is_empty() {
        h.push((PROPS, B64.encode(properties_frame(&meta.properties))));
    }
    h
}

/// The metadata from headers read through `get`; `Err` names what was wrong.
pub fn decode<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Meta, ClusterError> {
    let qos = get(QOS)
        .and_then(|v| v.parse::<u8>().ok())
        .and_then(QoS::from_u8)
        .ok_or(ClusterError::BadHeader(QOS))?;
    let retain = match get(RETAIN) {
        None | Some("0") => false,
        Some("1") => true,
        Some(_) => return Err(ClusterError::BadHeader(RETAIN)),
    };
    let origin = get(ORIGIN)
        .filter(|o| !o.is_empty())
        .ok_or(ClusterError::BadHeader(ORIGIN))?
        .to_owned();
    let id = get(ID)
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or(ClusterError::BadHeader(ID))?;
    let properties = match get(PROPS) {
        None => PublishProperties::default(),
        Some(v) => {
            let raw = B64
                .decode(v.as_bytes())
                .map_err(|_| ClusterError::BadHeader(PROPS))?;
            properties_from_frame(&raw).ok_or(ClusterError::BadHeader(PROPS))?
        }
    };
    Ok(Meta {
        qos,
        retain,
        origin,
        id,
        properties,
    })
}

/// A QoS 0 MQTT 5 PUBLISH frame with topic `p`, no payload and `properties` (topic
/// alias and subscription identifiers are per connection and never forwarded).
fn properties_frame(properties: &PublishProperties) -> Bytes {
    let mut properties = properties.clone();
    properties.topic_alias = None;
    if let Some(r) = properties.rare.get_mut() {
        r.subscription_identifiers.clear();
    }
    let p = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: Bytes::from_static(b"p"),
        packet_id: 0,
        properties,
        payload: Bytes::new(),
    };
    encode_to_bytes(&Packet::Publish(p), ProtocolVersion::V5)
}

fn properties_from_frame(raw: &[u8]) -> Option<PublishProperties> {
    if raw.len() > PROPS_MAX_BYTES {
        return None;
    }
    let mut buf = BytesMut::from(raw);
    match decode_packet(&mut buf, ProtocolVersion::V5, PROPS_MAX_BYTES) {
        Ok(Some(Packet::Publish(p))) if buf.is_empty() => Some(p.properties),
        _ => None,
    }
}

/// Version byte of a retained entry's value.
const RETAINED_V1: u8 = 1;

/// A retained message as the value of its KV entry: version, QoS, properties length
/// (u32 BE) and frame, then the payload. The key is the topic (see `retained_key`).
pub fn encode_retained(qos: QoS, properties: &PublishProperties, payload: &[u8]) -> Vec<u8> {
    let props = if properties.is_empty() {
        Bytes::new()
    } else {
        properties_frame(properties)
    };
    let mut v = Vec::with_capacity(6 + props.len() + payload.len());
    v.push(RETAINED_V1);
    v.push(qos as u8);
    v.extend_from_slice(&(props.len() as u32).to_be_bytes());
    v.extend_from_slice(&props);
    v.extend_from_slice(payload);
    v
}

/// The (QoS, properties, payload) of a retained entry's value.
pub fn decode_retained(v: &[u8]) -> Result<(QoS, PublishProperties, Bytes), ClusterError> {
    let bad = ClusterError::BadRetained;
    let [ver, qos, rest @ ..] = v else {
        return Err(bad);
    };
    if *ver != RETAINED_V1 {
        return Err(bad);
    }
    let qos = QoS::from_u8(*qos).ok_or(bad.clone())?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or(bad.clone())?;
    let len = u32::from_be_bytes(*len) as usize;
    if len > rest.len() {
        return Err(bad);
    }
    let (props, payload) = rest.split_at(len);
    let properties = if len == 0 {
        PublishProperties::default()
    } else {
        properties_from_frame(props).ok_or(bad)?
    };
    Ok((qos, properties, Bytes::copy_from_slice(payload)))
}

/// The KV key of a retained topic: base64url without padding (KV keys allow only
/// `[-/_=.a-zA-Z0-9]`, and `.` would split it into tokens).
pub fn retained_key(topic: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(topic)
}

/// The topic a retained key names.
pub fn retained_topic(key: &str) -> Result<Vec<u8>, ClusterError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key.as_bytes())
        .map_err(|_| ClusterError::BadRetained)
}
