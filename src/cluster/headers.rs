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
/// On a forwarded QoS 2 message: its publisher's client id, packet id and DUP flag
/// (`Publisher`, review10 H5).
pub const PUBLISHER: &str = "Mqtt-Pub";

/// Bounds a property header on decode (a frame of properties only; MQTT's own bound is
/// far larger, but a cluster peer has no reason to send more).
const PROPS_MAX_BYTES: usize = 256 * 1024;

/// The MQTT side of one forwarded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub qos: QoS,
    pub retain: bool,
    /// The node incarnation that published it (`origin_of`: its `cluster_node_name`
    /// and the process's random incarnation).
    pub origin: String,
    /// The origin incarnation's sequence number of this message: with `origin`, the
    /// key that identifies one forwarded message (it drops the second copy NATS sends
    /// for a second matching subscription).
    pub id: u64,
    pub properties: PublishProperties,
}

/// A forwarded message's identity as every node computes it from its headers
/// (`Message::cluster_key`): FNV-1a over the origin node's name and its sequence
/// number, never 0 (0: none, a message that never goes to NATS). The publishing loop
/// computes the same key for its own copies (`Shard::cluster_stamp`, review10 M8).
/// Stable across builds (not a seeded hasher), since two nodes compare the keys they
/// computed apart; a collision needs two of the few messages in one hand-over's
/// window to share a 64-bit hash.
pub fn message_key(origin: &str, id: u64) -> u64 {
    message_key_with(origin_key(origin), id)
}

const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// The FNV-1a state `message_key` reaches after the origin and its separator, so a
/// publishing loop hashes only the id per message.
pub fn origin_key(origin: &str) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    let mut h = FNV_OFFSET;
    for &b in origin.as_bytes().iter().chain([0xff].iter()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// `message_key` of message `id` from the origin whose `origin_key` is `origin`.
pub fn message_key_with(origin: u64, id: u64) -> u64 {
    let mut h = origin;
    for b in id.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h.max(1)
}

/// The `Mqtt-Origin` of a node's forwarded messages: its name and its process
/// incarnation (review10 H2). The ids restart at 1 in every process, so with the name
/// alone a restarted node's new messages would carry (origin, id) pairs its peers
/// still remember from before, and be dropped as duplicates.
pub fn origin_of(node: &str, incarnation: u64) -> String {
    format!("{node}.{incarnation:016x}")
}

/// The length of `origin_of(node, _)`.
pub fn origin_len(node: &str) -> usize {
    node.len() + 17
}

/// A random number per call (per process, as the callers use it): this process's
/// incarnation, told apart from the same node name's earlier processes.
pub fn new_incarnation() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

/// The (origin, id) pairs of the last `cap` forwarded messages received, to drop a
/// second copy of one message (NATS sends one per matching subscription; the copies
/// arrive together, so a short window is enough).
pub struct SeenWindow {
    cap: usize,
    seen: std::collections::HashSet<(u64, u64)>,
    order: std::collections::VecDeque<(u64, u64)>,
}

impl SeenWindow {
    pub fn new(cap: usize) -> SeenWindow {
        SeenWindow {
            cap,
            seen: Default::default(),
            order: Default::default(),
        }
    }

    /// Whether (origin, id) was seen in the window; remembers it if not.
    pub fn seen_before(&mut self, origin: &str, id: u64) -> bool {
        let o = ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one(origin);
        if !self.seen.insert((o, id)) {
            return true;
        }
        self.order.push_back((o, id));
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        false
    }
}

/// Who published a QoS 2 message, and with which packet id (review10 H5). A client
/// whose node died before its PUBREC re-sends the message (DUP = 1) to another node,
/// which does not have the dead node's inbound QoS 2 state; nodes that saw the first
/// copy recognise the re-send by this pair (`Qos2Window`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publisher {
    pub client_id: Bytes,
    pub packet_id: u16,
    pub dup: bool,
}

/// `Mqtt-Pub`'s value: base64url of the client id, the packet id, and 1 for DUP.
pub fn encode_publisher(p: &Publisher) -> String {
    let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&p.client_id);
    format!("{id} {} {}", p.packet_id, u8::from(p.dup))
}

/// The `Publisher` an `Mqtt-Pub` value names; `None` for one ringmq did not make.
pub fn decode_publisher(v: &str) -> Option<Publisher> {
    let mut parts = v.split(' ');
    let (id, packet_id, dup) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let client_id = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(id.as_bytes())
        .ok()?;
    let dup = match dup {
        "0" => false,
        "1" => true,
        _ => return None,
    };
    Some(Publisher {
        client_id: Bytes::from(client_id),
        packet_id: packet_id.parse().ok()?,
        dup,
    })
}

/// How long, and for how many messages, a node remembers QoS 2 publishers' packet
/// ids: a client re-sends within its reconnect time, which is seconds.
pub const QOS2_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);
pub const QOS2_WINDOW_MAX: usize = 65_536;

type Qos2Key = (u64, u16);

/// The (client id, packet id) of the QoS 2 messages a node received lately, with a
/// hash of their topic and payload, bounded in time and count (review10 H5).
#[derive(Debug, Default)]
pub struct Qos2Window {
    entries: std::collections::HashMap<Qos2Key, (u64, std::time::Instant)>,
    order: std::collections::VecDeque<(Qos2Key, std::time::Instant)>,
}

impl Qos2Window {
    /// Records a QoS 2 message of `publisher` with `topic` and `payload` at `now`.
    /// Returns `true`, without recording, when it is a re-send (DUP = 1) of the message
    /// recorded for that pair within the window: acknowledge it, do not deliver it.
    /// A packet id reused after PUBCOMP comes with DUP = 0 and always passes; a DUP = 1
    /// message whose content differs from the recorded one passes too.
    pub fn resent(
        &mut self,
        publisher: &Publisher,
        topic: &[u8],
        payload: &[u8],
        now: std::time::Instant,
    ) -> bool {
        use std::hash::{BuildHasher, Hash, Hasher};
        let state = ahash::RandomState::with_seeds(5, 6, 7, 8);
        while let Some(&(key, at)) = self.order.front() {
            let old = now.saturating_duration_since(at) > QOS2_WINDOW;
            if !old && self.order.len() <= QOS2_WINDOW_MAX {
                break;
            }
            self.order.pop_front();
            // A later record of the same pair keeps its entry.
            if self.entries.get(&key).is_some_and(|e| e.1 == at) {
                self.entries.remove(&key);
            }
        }
        let key = (
            state.hash_one(&publisher.client_id[..]),
            publisher.packet_id,
        );
        let mut h = state.build_hasher();
        topic.hash(&mut h);
        payload.hash(&mut h);
        let content = h.finish();
        if publisher.dup && self.entries.get(&key).is_some_and(|e| e.0 == content) {
            return true;
        }
        self.entries.insert(key, (content, now));
        self.order.push_back((key, now));
        false
    }
}

/// NATS's default `max_payload` (1 MiB), assumed until the server says otherwise.
pub const NATS_MAX_PAYLOAD_DEFAULT: usize = 1 << 20;

/// Headers of a forwarded message besides `Mqtt-Origin`'s value and `Mqtt-Props`:
/// the `NATS/1.0` line, the names, a u64 id, QoS and retain, with room to spare.
const HEADERS_FIXED_BYTES: usize = 160;

/// An upper bound of what NATS counts against `max_payload` for one forwarded
/// message (headers and payload, review10 H3: nats-server closes the connection of a
/// client that sends more; async-nats checks the payload alone), and for a retained
/// one, of its KV value too. Encodes the properties only when there are any.
pub fn forward_bytes(
    origin_len: usize,
    properties: &PublishProperties,
    payload_len: usize,
    retain: bool,
) -> usize {
    let props = if properties.is_empty() {
        0
    } else {
        properties_frame(properties).len()
    };
    let headers = HEADERS_FIXED_BYTES + origin_len + props.div_ceil(3) * 4;
    let forwarded = headers + payload_len;
    if retain {
        // The KV value (`encode_retained`) carries the raw frame, not base64.
        forwarded.max(6 + props + payload_len)
    } else {
        forwarded
    }
}

/// The header pairs for `meta`, in `MetaRef::encode_each`'s order: the tests' view
/// of what the writer puts in a NATS header map.
#[cfg(test)]
pub fn encode(meta: &Meta) -> Vec<(&'static str, String)> {
    let mut h = Vec::with_capacity(5);
    MetaRef {
        qos: meta.qos,
        retain: meta.retain,
        origin: &meta.origin,
        id: meta.id,
        properties: &meta.properties,
    }
    .encode_each(|name, value| h.push((name, value)));
    h
}

/// A `Meta` borrowed from the message it describes: what the forwarding path
/// encodes, once per message, without copying the origin or the properties first.
#[derive(Debug, Clone, Copy)]
pub struct MetaRef<'a> {
    pub qos: QoS,
    pub retain: bool,
    pub origin: &'a str,
    pub id: u64,
    pub properties: &'a PublishProperties,
}

impl MetaRef<'_> {
    /// Hands each header pair to `put`, in a fixed order: the writer puts them
    /// straight into the NATS header map, with no list of pairs in between.
    pub fn encode_each(&self, mut put: impl FnMut(&'static str, String)) {
        put(QOS, (self.qos as u8).to_string());
        if self.retain {
            put(RETAIN, "1".to_owned());
        }
        put(ORIGIN, self.origin.to_owned());
        put(ID, self.id.to_string());
        if !self.properties.is_empty() {
            put(PROPS, B64.encode(properties_frame(self.properties)));
        }
    }
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
