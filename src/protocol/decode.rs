//! Decoding: the fixed header first (`peek_frame`, which rejects an oversized remaining
//! length before anything is buffered), then one packet of a known version from a
//! complete frame, with every validation rule of the spec applied on the way.

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::error::DecodeError;
use super::packet::{
    Auth, ConnAck, Connect, Disconnect, LastWill, Packet, ProtocolVersion, PubResp, Publish, QoS,
    SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use super::packet_type::PacketType;
use super::properties::{
    property_id as id, Properties, PropertySet, PropertyValues, PublishProperties,
};
use super::reason::ReasonCode;

/// Fixed header of one frame: the first byte, and the remaining length with the
/// number of bytes it took to encode, so the frame is `header_len + remaining_len` long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub first_byte: u8,
    pub remaining_len: usize,
    pub header_len: usize,
}

impl FrameHeader {
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Reads the fixed header if enough bytes are present. `Ok(None)`: need more bytes.
/// A frame longer than `max_packet_size` (counting the fixed header, as MQTT 5's
/// "Maximum Packet Size" does) is rejected here, before it is buffered. A remaining
/// length that would need a fifth byte is rejected as soon as the fourth is visible.
pub fn peek_frame(buf: &[u8], max_packet_size: usize) -> Result<Option<FrameHeader>, DecodeError> {
    let Some(&first_byte) = buf.first() else {
        return Ok(None);
    };
    let mut remaining_len = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else {
            return Ok(None);
        };
        remaining_len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            // A final 0 after a continuation byte is a non-minimal encoding (1.5.5).
            if i > 0 && b == 0 {
                return Err(DecodeError::MalformedRemainingLength);
            }
            let header = FrameHeader {
                first_byte,
                remaining_len,
                header_len: 2 + i,
            };
            if header.frame_len() > max_packet_size {
                return Err(DecodeError::PacketTooLarge {
                    size: header.frame_len(),
                    max: max_packet_size,
                });
            }
            return Ok(Some(header));
        }
    }
    Err(DecodeError::MalformedRemainingLength)
}

/// Decodes one packet from the front of `buf`, consuming its bytes on success.
/// `Ok(None)`: the frame is incomplete; nothing is consumed. `version` is the
/// connection's negotiated version (CONNECT itself is decoded whatever it is, so
/// before CONNECT any version may be passed).
///
/// The fixed header (type, flags, size) is checked as soon as it is visible, before
/// the body arrives. After an error the connection must be closed: the bad frame may
/// or may not have been consumed.
pub fn decode_packet(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    check_first_byte(first, version)?;
    let Some(header) = peek_frame(buf, max_packet_size)? else {
        return Ok(None);
    };
    let frame_len = header.frame_len();
    if buf.len() < frame_len {
        return Ok(None);
    }
    let frame = buf.split_to(frame_len).freeze();
    let mut r = Reader {
        frame: &frame,
        pos: header.header_len,
        end: frame_len,
    };
    decode_body(first, &mut r, version).map(Some)
}

/// Packet type known in `version`, and reserved flag bits as the spec fixes them (2.1.3).
fn check_first_byte(first: u8, version: ProtocolVersion) -> Result<(), DecodeError> {
    let packet_type = first >> 4;
    let flags = first & 0x0F;
    match packet_type {
        0 => Err(DecodeError::InvalidPacketType(0)),
        3 => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                Err(DecodeError::InvalidQoS(3))
            } else if qos == 0 && flags & 0b1000 != 0 {
                Err(DecodeError::DupOnQoS0)
            } else {
                Ok(())
            }
        }
        15 if !version.is_v5() => Err(DecodeError::InvalidPacketType(15)),
        6 | 8 | 10 if flags != 0b0010 => {
            Err(DecodeError::InvalidFixedHeaderFlags { packet_type, flags })
        }
        6 | 8 | 10 => Ok(()),
        _ if flags != 0 => Err(DecodeError::InvalidFixedHeaderFlags { packet_type, flags }),
        _ => Ok(()),
    }
}

fn decode_body(
    first: u8,
    r: &mut Reader<'_>,
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let v5 = version.is_v5();
    let packet = match first >> 4 {
        1 => Packet::Connect(Box::new(decode_connect(r)?)),
        2 => Packet::ConnAck(decode_connack(r, v5)?),
        3 => Packet::Publish(decode_publish(first, r, v5)?),
        4 => Packet::PubAck(decode_pub_resp(r, v5, PacketType::PubAck)?),
        5 => Packet::PubRec(decode_pub_resp(r, v5, PacketType::PubRec)?),
        6 => Packet::PubRel(decode_pub_resp(r, v5, PacketType::PubRel)?),
        7 => Packet::PubComp(decode_pub_resp(r, v5, PacketType::PubComp)?),
        8 => Packet::Subscribe(decode_subscribe(r, v5)?),
        9 => Packet::SubAck(decode_suback(r, v5)?),
        10 => Packet::Unsubscribe(decode_unsubscribe(r, v5)?),
        11 => Packet::UnsubAck(decode_unsuback(r, v5)?),
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => {
            let (code, properties) =
                decode_code_and_properties(r, v5, PacketType::Disconnect, PropertySet::DISCONNECT)?;
            Packet::Disconnect(Disconnect { code, properties })
        }
        15 => {
            let (code, properties) =
                decode_code_and_properties(r, v5, PacketType::Auth, PropertySet::AUTH)?;
            Packet::Auth(Auth { code, properties })
        }
        other => return Err(DecodeError::InvalidPacketType(other)),
    };
    r.finish()?;
    Ok(packet)
}

fn decode_connect(r: &mut Reader<'_>) -> Result<Connect, DecodeError> {
    let name = r.binary()?;
    let level = r.u8()?;
    let is_mqtt = &name[..] == b"MQTT";
    if !is_mqtt && &name[..] != b"MQIsdp" {
        return Err(DecodeError::InvalidProtocolName);
    }
    let protocol = match level {
        3 => ProtocolVersion::V31,
        4 => ProtocolVersion::V311,
        5 => ProtocolVersion::V5,
        other => return Err(DecodeError::UnsupportedProtocolLevel(other)),
    };
    // "MQIsdp" belongs to level 3 only, "MQTT" to levels 4 and 5.
    if is_mqtt == (protocol == ProtocolVersion::V31) {
        return Err(DecodeError::InvalidProtocolName);
    }
    let v5 = protocol.is_v5();

    let flags = r.u8()?;
    let has_will = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let has_password = flags & 0x40 != 0;
    let has_username = flags & 0x80 != 0;
    if flags & 0x01 != 0 || (!has_will && (will_qos != 0 || will_retain)) {
        return Err(DecodeError::InvalidConnectFlags(flags));
    }
    if has_password && !has_username && !v5 {
        return Err(DecodeError::InvalidConnectFlags(flags));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidQoS(will_qos))?;
    let keep_alive_s = r.u16()?;
    let properties = if v5 {
        decode_properties(r, PropertySet::CONNECT)?
    } else {
        Properties::default()
    };
    let client_id = r.utf8()?;
    let will = if has_will {
        let properties = if v5 {
            decode_properties(r, PropertySet::WILL)?
        } else {
            Properties::default()
        };
        let topic = r.binary()?;
        check_topic_name(&topic)?;
        if topic.is_empty() {
            return Err(DecodeError::InvalidTopicName);
        }
        let payload = r.binary()?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = if has_username { Some(r.utf8()?) } else { None };
    let password = if has_password {
        Some(r.binary()?)
    } else {
        None
    };
    Ok(Connect {
        protocol,
        clean_start: flags & 0x02 != 0,
        keep_alive_s,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn decode_connack(r: &mut Reader<'_>, v5: bool) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::InvalidConnAckFlags(flags));
    }
    let raw = r.u8()?;
    let code = if v5 {
        reason_for(raw, PacketType::ConnAck)?
    } else {
        ReasonCode::from_v3_connack_code(raw).ok_or(DecodeError::InvalidReasonCode(raw))?
    };
    let session_present = flags & 0x01 != 0;
    // MQTT-3.2.2-4 / MQTT-3.2.2-6: a refused connection never has a session.
    if session_present && code != ReasonCode::Success {
        return Err(DecodeError::InvalidConnAckFlags(flags));
    }
    let properties = if v5 {
        decode_properties(r, PropertySet::CONNACK)?
    } else {
        Properties::default()
    };
    Ok(ConnAck {
        session_present,
        code,
        properties,
    })
}

fn decode_publish(first: u8, r: &mut Reader<'_>, v5: bool) -> Result<Publish, DecodeError> {
    // QoS 3 and DUP on QoS 0 were refused by `check_first_byte`.
    let qos = QoS::from_u8((first >> 1) & 0b11).ok_or(DecodeError::InvalidQoS(3))?;
    let topic = r.binary()?;
    check_topic_name(&topic)?;
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    let properties = if v5 {
        decode_publish_properties(r)?
    } else {
        PublishProperties::default()
    };
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::InvalidTopicName);
    }
    Ok(Publish {
        dup: first & 0b1000 != 0,
        qos,
        retain: first & 0b0001 != 0,
        topic,
        packet_id,
        properties,
        payload: r.rest(),
    })
}

fn decode_pub_resp(
    r: &mut Reader<'_>,
    v5: bool,
    packet_type: PacketType,
) -> Result<PubResp, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut resp = PubResp::new(packet_id);
    // 3.4.2.1: with remaining length 2 the code is Success; below 4 there are no properties.
    if v5 && r.remaining() > 0 {
        resp.code = reason_for(r.u8()?, packet_type)?;
        if r.remaining() > 0 {
            resp.properties = decode_properties(r, PropertySet::ACK)?;
        }
    }
    Ok(resp)
}

fn decode_subscribe(r: &mut Reader<'_>, v5: bool) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if v5 {
        decode_properties(r, PropertySet::SUBSCRIBE)?
    } else {
        Properties::default()
    };
    let mut filters = SmallVec::new();
    while r.remaining() > 0 {
        // Wildcard placement is judged per filter by the broker (SUBACK 0x8F / 0x80),
        // so one bad filter does not cost the client its connection.
        let filter = r.utf8()?;
        let options = decode_subscription_options(r.u8()?, v5)?;
        if options.no_local && filter.starts_with(b"$share/") {
            return Err(DecodeError::NoLocalOnSharedSubscription);
        }
        filters.push((filter, options));
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptySubscription);
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_subscription_options(b: u8, v5: bool) -> Result<SubscriptionOptions, DecodeError> {
    // 3.x reserves everything but the QoS bits; 5.0 reserves bits 6-7 and retain handling 3.
    let reserved = if v5 { 0xC0 } else { 0xFC };
    let retain_handling = (b >> 4) & 0b11;
    if b & reserved != 0 || retain_handling == 3 {
        return Err(DecodeError::InvalidSubscriptionOptions(b));
    }
    let qos = QoS::from_u8(b & 0b11).ok_or(DecodeError::InvalidQoS(b & 0b11))?;
    Ok(SubscriptionOptions {
        qos,
        no_local: b & 0x04 != 0,
        retain_as_published: b & 0x08 != 0,
        retain_handling,
    })
}

fn decode_suback(r: &mut Reader<'_>, v5: bool) -> Result<SubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if v5 {
        decode_properties(r, PropertySet::ACK)?
    } else {
        Properties::default()
    };
    let mut codes = SmallVec::new();
    while r.remaining() > 0 {
        let raw = r.u8()?;
        let code = if v5 {
            reason_for(raw, PacketType::SubAck)?
        } else {
            match raw {
                0 => ReasonCode::Success,
                1 => ReasonCode::GrantedQoS1,
                2 => ReasonCode::GrantedQoS2,
                0x80 => ReasonCode::UnspecifiedError,
                other => return Err(DecodeError::InvalidReasonCode(other)),
            }
        };
        codes.push(code);
    }
    if codes.is_empty() {
        return Err(DecodeError::EmptySubscription);
    }
    Ok(SubAck {
        packet_id,
        codes,
        properties,
    })
}

fn decode_unsubscribe(r: &mut Reader<'_>, v5: bool) -> Result<Unsubscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = if v5 {
        decode_properties(r, PropertySet::UNSUBSCRIBE)?
    } else {
        Properties::default()
    };
    let mut filters = SmallVec::new();
    while r.remaining() > 0 {
        // Wildcard placement is judged per filter by the broker (SUBACK 0x8F / 0x80),
        // so one bad filter does not cost the client its connection.
        let filter = r.utf8()?;
        filters.push(filter);
    }
    if filters.is_empty() {
        return Err(DecodeError::EmptySubscription);
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

fn decode_unsuback(r: &mut Reader<'_>, v5: bool) -> Result<UnsubAck, DecodeError> {
    let packet_id = r.packet_id()?;
    let mut ack = UnsubAck {
        packet_id,
        codes: SmallVec::new(),
        properties: Properties::default(),
    };
    if !v5 {
        return Ok(ack);
    }
    ack.properties = decode_properties(r, PropertySet::ACK)?;
    while r.remaining() > 0 {
        ack.codes.push(reason_for(r.u8()?, PacketType::UnsubAck)?);
    }
    if ack.codes.is_empty() {
        return Err(DecodeError::EmptySubscription);
    }
    Ok(ack)
}

/// DISCONNECT and AUTH: empty before 5.0; in 5.0 remaining length 0 means Success
/// with no properties and a lone reason code means no properties (3.14.2.2.1).
fn decode_code_and_properties(
    r: &mut Reader<'_>,
    v5: bool,
    packet_type: PacketType,
    allowed: PropertySet,
) -> Result<(ReasonCode, Properties), DecodeError> {
    if !v5 || r.remaining() == 0 {
        return Ok((ReasonCode::Success, Properties::default()));
    }
    let code = reason_for(r.u8()?, packet_type)?;
    let properties = if r.remaining() > 0 {
        decode_properties(r, allowed)?
    } else {
        Properties::default()
    };
    Ok((code, properties))
}

fn reason_for(raw: u8, packet_type: PacketType) -> Result<ReasonCode, DecodeError> {
    ReasonCode::from_u8(raw)
        .filter(|code| code.is_valid_for(packet_type))
        .ok_or(DecodeError::InvalidReasonCode(raw))
}

/// Properties of every packet but PUBLISH. Unknown identifiers and identifiers not
/// in `allowed` are refused, as are repeats of anything but user properties.
fn decode_properties(r: &mut Reader<'_>, allowed: PropertySet) -> Result<Properties, DecodeError> {
    let len = r.vbi()? as usize;
    let mut p = r.sub(len)?;
    if p.remaining() == 0 {
        return Ok(Properties::default());
    }
    let mut props = PropertyValues::default();
    let mut seen = 0u64;
    while p.remaining() > 0 {
        let pid = p.u8()?;
        if !allowed.contains(pid) {
            return Err(DecodeError::InvalidProperty(pid));
        }
        if pid != id::USER_PROPERTY {
            if seen & (1 << pid) != 0 {
                return Err(DecodeError::DuplicateProperty(pid));
            }
            seen |= 1 << pid;
        }
        match pid {
            id::PAYLOAD_FORMAT_INDICATOR => {
                props.payload_format_indicator = Some(p.flag_byte(pid)?)
            }
            id::MESSAGE_EXPIRY_INTERVAL => props.message_expiry_interval_s = Some(p.u32()?),
            id::CONTENT_TYPE => props.content_type = Some(p.utf8()?),
            id::RESPONSE_TOPIC => props.response_topic = Some(p.response_topic()?),
            id::CORRELATION_DATA => props.correlation_data = Some(p.binary()?),
            id::SUBSCRIPTION_IDENTIFIER => {
                props.subscription_identifier = Some(p.subscription_id()?)
            }
            id::SESSION_EXPIRY_INTERVAL => props.session_expiry_interval_s = Some(p.u32()?),
            id::ASSIGNED_CLIENT_IDENTIFIER => props.assigned_client_identifier = Some(p.utf8()?),
            id::SERVER_KEEP_ALIVE => props.server_keep_alive_s = Some(p.u16()?),
            id::AUTHENTICATION_METHOD => props.authentication_method = Some(p.utf8()?),
            id::AUTHENTICATION_DATA => props.authentication_data = Some(p.binary()?),
            id::REQUEST_PROBLEM_INFORMATION => {
                props.request_problem_information = Some(p.flag_byte(pid)?)
            }
            id::WILL_DELAY_INTERVAL => props.will_delay_interval_s = Some(p.u32()?),
            id::REQUEST_RESPONSE_INFORMATION => {
                props.request_response_information = Some(p.flag_byte(pid)?)
            }
            id::RESPONSE_INFORMATION => props.response_information = Some(p.utf8()?),
            id::SERVER_REFERENCE => props.server_reference = Some(p.utf8()?),
            id::REASON_STRING => props.reason_string = Some(p.utf8()?),
            id::RECEIVE_MAXIMUM => props.receive_maximum = Some(p.nonzero_u16(pid)?),
            id::TOPIC_ALIAS_MAXIMUM => props.topic_alias_maximum = Some(p.u16()?),
            id::MAXIMUM_QOS => props.maximum_qos = Some(p.flag_byte(pid)?),
            id::RETAIN_AVAILABLE => props.retain_available = Some(p.flag_byte(pid)?),
            id::USER_PROPERTY => props.user_properties.push((p.utf8()?, p.utf8()?)),
            id::MAXIMUM_PACKET_SIZE => props.maximum_packet_size = Some(p.nonzero_u32(pid)?),
            id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
                props.wildcard_subscription_available = Some(p.flag_byte(pid)?)
            }
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                props.subscription_identifier_available = Some(p.flag_byte(pid)?)
            }
            id::SHARED_SUBSCRIPTION_AVAILABLE => {
                props.shared_subscription_available = Some(p.flag_byte(pid)?)
            }
            other => return Err(DecodeError::InvalidProperty(other)),
        }
    }
    // 3.1.2.11.10: authentication data without a method is a protocol error.
    if props.authentication_data.is_some() && props.authentication_method.is_none() {
        return Err(DecodeError::InvalidPropertyValue(id::AUTHENTICATION_DATA));
    }
    Ok(Properties::from(props))
}

/// PUBLISH properties: subscription identifiers and user properties may repeat.
fn decode_publish_properties(r: &mut Reader<'_>) -> Result<PublishProperties, DecodeError> {
    let len = r.vbi()? as usize;
    let mut p = r.sub(len)?;
    let mut props = PublishProperties::default();
    let mut seen = 0u64;
    while p.remaining() > 0 {
        let pid = p.u8()?;
        if !PropertySet::PUBLISH.contains(pid) {
            return Err(DecodeError::InvalidProperty(pid));
        }
        if pid != id::USER_PROPERTY && pid != id::SUBSCRIPTION_IDENTIFIER {
            if seen & (1 << pid) != 0 {
                return Err(DecodeError::DuplicateProperty(pid));
            }
            seen |= 1 << pid;
        }
        match pid {
            id::PAYLOAD_FORMAT_INDICATOR => {
                props.payload_format_indicator = Some(p.flag_byte(pid)?)
            }
            id::MESSAGE_EXPIRY_INTERVAL => props.message_expiry_interval_s = Some(p.u32()?),
            id::CONTENT_TYPE => props.rare.to_mut().content_type = Some(p.utf8()?),
            id::RESPONSE_TOPIC => props.rare.to_mut().response_topic = Some(p.response_topic()?),
            id::CORRELATION_DATA => props.rare.to_mut().correlation_data = Some(p.binary()?),
            id::SUBSCRIPTION_IDENTIFIER => {
                let v = p.subscription_id()?;
                props.rare.to_mut().subscription_identifiers.push(v)
            }
            // 3.3.2.3.4: a topic alias of 0 is not permitted.
            id::TOPIC_ALIAS => props.topic_alias = Some(p.nonzero_u16(pid)?),
            id::USER_PROPERTY => {
                let pair = (p.utf8()?, p.utf8()?);
                props.rare.to_mut().user_properties.push(pair)
            }
            other => return Err(DecodeError::InvalidProperty(other)),
        }
    }
    Ok(props)
}

/// A UTF-8 string as MQTT defines it (1.5.4): well-formed UTF-8 (which already
/// excludes surrogates) without U+0000.
fn check_utf8(s: &[u8]) -> Result<(), DecodeError> {
    // `contains` on bytes is memchr; `from_utf8` has an ASCII fast path.
    if s.contains(&0) || std::str::from_utf8(s).is_err() {
        return Err(DecodeError::InvalidUtf8);
    }
    Ok(())
}

/// A PUBLISH (or will) topic: a valid UTF-8 string without wildcards. Emptiness is
/// the caller's check, since MQTT 5 allows it together with a topic alias.
#[inline]
fn check_topic_name(topic: &[u8]) -> Result<(), DecodeError> {
    if std::str::from_utf8(topic).is_err() {
        return Err(DecodeError::InvalidUtf8);
    }
    if contains_any3(topic, 0, b'+', b'#') {
        return Err(if topic.contains(&0) {
            DecodeError::InvalidUtf8
        } else {
            DecodeError::InvalidTopicName
        });
    }
    Ok(())
}

/// Whether `s` holds any of three byte values. Branch-free over 16-byte chunks so the
/// compiler vectorizes it; this runs on every PUBLISH topic.
#[inline]
fn contains_any3(s: &[u8], a: u8, b: u8, c: u8) -> bool {
    let mut chunks = s.chunks_exact(16);
    for chunk in &mut chunks {
        let hit = chunk
            .iter()
            .fold(false, |hit, &x| hit | (x == a) | (x == b) | (x == c));
        if hit {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&x| x == a || x == b || x == c)
}

/// A bounded cursor over one frame (or a property section of it). `end` never
/// exceeds the frame's length, so every read is bounds-checked against `end`.
struct Reader<'a> {
    frame: &'a Bytes,
    pos: usize,
    end: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    fn remaining(&self) -> usize {
        self.end - self.pos
    }

    #[inline]
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.remaining() < n {
            return Err(DecodeError::UnexpectedEndOfFrame);
        }
        let frame: &'a Bytes = self.frame;
        let s = frame
            .get(self.pos..self.pos + n)
            .ok_or(DecodeError::UnexpectedEndOfFrame)?;
        self.pos += n;
        Ok(s)
    }

    #[inline]
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes(1)?[0])
    }

    #[inline]
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let s = self.bytes(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }

    #[inline]
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.bytes(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    #[inline]
    fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId),
            packet_id => Ok(packet_id),
        }
    }

    /// Variable byte integer (1.5.5): at most 4 bytes, minimally encoded.
    fn vbi(&mut self) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4 {
            let b = self.u8()?;
            value |= u32::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(DecodeError::MalformedVariableByteInteger);
                }
                return Ok(value);
            }
        }
        Err(DecodeError::MalformedVariableByteInteger)
    }

    /// The next `n` bytes as a zero-copy slice of the frame.
    #[inline]
    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        self.bytes(n)?;
        Ok(self.frame.slice(start..self.pos))
    }

    /// Binary data: two-byte length, then the bytes.
    #[inline]
    fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }

    #[inline]
    fn utf8(&mut self) -> Result<Bytes, DecodeError> {
        let s = self.binary()?;
        check_utf8(&s)?;
        Ok(s)
    }

    /// Everything up to `end`.
    #[inline]
    fn rest(&mut self) -> Bytes {
        let start = self.pos;
        self.pos = self.end;
        self.frame.slice(start..self.end)
    }

    /// A reader over the next `len` bytes, which this reader skips.
    fn sub(&mut self, len: usize) -> Result<Reader<'a>, DecodeError> {
        if self.remaining() < len {
            return Err(DecodeError::UnexpectedEndOfFrame);
        }
        let sub = Reader {
            frame: self.frame,
            pos: self.pos,
            end: self.pos + len,
        };
        self.pos += len;
        Ok(sub)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.remaining() != 0 {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(())
    }

    /// A byte property whose only values are 0 and 1.
    fn flag_byte(&mut self, pid: u8) -> Result<u8, DecodeError> {
        match self.u8()? {
            v @ (0 | 1) => Ok(v),
            _ => Err(DecodeError::InvalidPropertyValue(pid)),
        }
    }

    fn nonzero_u16(&mut self, pid: u8) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::InvalidPropertyValue(pid)),
            v => Ok(v),
        }
    }

    fn nonzero_u32(&mut self, pid: u8) -> Result<u32, DecodeError> {
        match self.u32()? {
            0 => Err(DecodeError::InvalidPropertyValue(pid)),
            v => Ok(v),
        }
    }

    /// 1..=268,435,455 (the VBI range excluding 0).
    fn subscription_id(&mut self) -> Result<u32, DecodeError> {
        match self.vbi()? {
            0 => Err(DecodeError::InvalidPropertyValue(
                id::SUBSCRIPTION_IDENTIFIER,
            )),
            v => Ok(v),
        }
    }

    /// Response topic (0x08) is a topic name: no wildcards (MQTT-3.3.2-14).
    fn response_topic(&mut self) -> Result<Bytes, DecodeError> {
        let topic = self.utf8()?;
        if topic.is_empty() || contains_any3(&topic, b'+', b'#', b'+') {
            return Err(DecodeError::InvalidPropertyValue(id::RESPONSE_TOPIC));
        }
        Ok(topic)
    }
}
