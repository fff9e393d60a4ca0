//! Encoding: the exact length of a packet for a version (`encoded_len`), then its bytes
//! written in one pass into the caller's buffer.

use bytes::{BufMut, Bytes, BytesMut};

use super::packet::{
    Auth, Connect, Disconnect, Packet, ProtocolVersion, PubResp, SubscriptionOptions,
};
use super::properties::{property_id as id, Properties, PropertySet, PublishProperties};
use super::reason::ReasonCode;

/// Exact number of bytes `encode_packet` will write for this packet and version.
pub fn encoded_len(packet: &Packet, version: ProtocolVersion) -> usize {
    let remaining = layout(packet, version).remaining;
    1 + remaining_length_len(remaining) + remaining
}

/// Bytes needed to encode `remaining` as a variable byte integer (1..=4).
pub fn remaining_length_len(remaining: usize) -> usize {
    match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Appends the wire form of `packet` for `version` to `out`, reserving once.
/// Fields that do not exist in `version` (properties, reason codes before 5.0) are
/// left out; a 3.x CONNACK code is mapped with `ReasonCode::v3_connack_code`, a 3.x
/// SUBACK code with `ReasonCode::v3_suback_code`. A property that the packet type
/// does not allow is not written. CONNECT is written for its own `protocol` field.
///
/// In 5.0 an ack with Success and no properties is written without code and
/// properties, one with only a code without properties; DISCONNECT and AUTH with
/// Success and no properties have remaining length 0.
///
/// The caller keeps strings and binary fields within 65,535 bytes and the packet
/// within [`super::MAX_REMAINING_LENGTH`]; the decoder refuses anything else.
pub fn encode_packet(packet: &Packet, version: ProtocolVersion, out: &mut BytesMut) {
    let layout = layout(packet, version);
    let remaining = layout.remaining;
    debug_assert!(
        remaining <= super::MAX_REMAINING_LENGTH,
        "packet too large to encode"
    );
    out.reserve(1 + remaining_length_len(remaining) + remaining);
    let start = out.len();
    let v5 = version.is_v5();
    match packet {
        Packet::Connect(c) => {
            out.put_u8(0x10);
            put_vbi(out, remaining);
            write_connect(out, c, &layout);
        }
        Packet::ConnAck(c) => {
            out.put_u8(0x20);
            put_vbi(out, remaining);
            out.put_u8(u8::from(c.session_present));
            out.put_u8(if v5 {
                c.code as u8
            } else {
                c.code.v3_connack_code()
            });
            if v5 {
                write_properties(out, &c.properties, PropertySet::CONNACK, layout.props);
            }
        }
        Packet::Publish(p) => {
            let first = 0x30 | (u8::from(p.dup) << 3) | ((p.qos as u8) << 1) | u8::from(p.retain);
            out.put_u8(first);
            put_vbi(out, remaining);
            put_binary(out, &p.topic);
            if p.qos as u8 > 0 {
                out.put_u16(p.packet_id);
            }
            if v5 {
                put_vbi(out, layout.props);
                visit_publish_properties(&p.properties, &mut Writer(out));
            }
            out.put_slice(&p.payload);
        }
        Packet::PubAck(r) => write_pub_resp(out, 0x40, r, &layout),
        Packet::PubRec(r) => write_pub_resp(out, 0x50, r, &layout),
        Packet::PubRel(r) => write_pub_resp(out, 0x62, r, &layout),
        Packet::PubComp(r) => write_pub_resp(out, 0x70, r, &layout),
        Packet::Subscribe(s) => {
            out.put_u8(0x82);
            put_vbi(out, remaining);
            out.put_u16(s.packet_id);
            if v5 {
                write_properties(out, &s.properties, PropertySet::SUBSCRIBE, layout.props);
            }
            for (filter, options) in &s.filters {
                put_binary(out, filter);
                out.put_u8(options_byte(options, v5));
            }
        }
        Packet::SubAck(s) => {
            out.put_u8(0x90);
            put_vbi(out, remaining);
            out.put_u16(s.packet_id);
            if v5 {
                write_properties(out, &s.properties, PropertySet::ACK, layout.props);
            }
            for code in &s.codes {
                out.put_u8(if v5 {
                    *code as u8
                } else {
                    code.v3_suback_code()
                });
            }
        }
        Packet::Unsubscribe(u) => {
            out.put_u8(0xA2);
            put_vbi(out, remaining);
            out.put_u16(u.packet_id);
            if v5 {
                write_properties(out, &u.properties, PropertySet::UNSUBSCRIBE, layout.props);
            }
            for filter in &u.filters {
                put_binary(out, filter);
            }
        }
        Packet::UnsubAck(u) => {
            out.put_u8(0xB0);
            put_vbi(out, remaining);
            out.put_u16(u.packet_id);
            if v5 {
                write_properties(out, &u.properties, PropertySet::ACK, layout.props);
                for code in &u.codes {
                    out.put_u8(*code as u8);
                }
            }
        }
        Packet::PingReq => out.put_slice(&[0xC0, 0x00]),
        Packet::PingResp => out.put_slice(&[0xD0, 0x00]),
        Packet::Disconnect(d) => write_code_and_properties(
            out,
            0xE0,
            d.code,
            &d.properties,
            PropertySet::DISCONNECT,
            &layout,
        ),
        Packet::Auth(a) => {
            write_code_and_properties(out, 0xF0, a.code, &a.properties, PropertySet::AUTH, &layout)
        }
    }
    debug_assert_eq!(
        out.len() - start,
        1 + remaining_length_len(remaining) + remaining
    );
}

/// The whole packet as one `Bytes`, allocated at its exact size.
pub fn encode_to_bytes(packet: &Packet, version: ProtocolVersion) -> Bytes {
    let mut out = BytesMut::with_capacity(encoded_len(packet, version));
    encode_packet(packet, version, &mut out);
    out.freeze()
}

impl Packet {
    /// See [`encode_to_bytes`].
    pub fn encode_to_bytes(&self, version: ProtocolVersion) -> Bytes {
        encode_to_bytes(self, version)
    }

    /// See [`encoded_len`].
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        encoded_len(self, version)
    }
}

/// Sizes computed once and shared by `encoded_len` and `encode_packet`, so both
/// make the same choices about optional fields.
struct Layout {
    remaining: usize,
    /// Length of the property section content (without its own length prefix).
    props: usize,
    /// Same for will properties (CONNECT).
    will_props: usize,
    /// Optional reason code written (5.0 acks, DISCONNECT, AUTH).
    code: bool,
    /// Property section written (5.0 acks, DISCONNECT, AUTH).
    with_props: bool,
}

fn layout(packet: &Packet, version: ProtocolVersion) -> Layout {
    let v5 = version.is_v5();
    let mut l = Layout {
        remaining: 0,
        props: 0,
        will_props: 0,
        code: false,
        with_props: false,
    };
    l.remaining = match packet {
        Packet::Connect(c) => {
            let cv5 = c.protocol.is_v5();
            let name_len = if c.protocol == ProtocolVersion::V31 {
                6
            } else {
                4
            };
            let mut n = 2 + name_len + 1 + 1 + 2 + 2 + c.client_id.len();
            if cv5 {
                l.props = properties_len(&c.properties, PropertySet::CONNECT);
                n += vbi_len(l.props) + l.props;
            }
            if let Some(w) = &c.will {
                if cv5 {
                    l.will_props = properties_len(&w.properties, PropertySet::WILL);
                    n += vbi_len(l.will_props) + l.will_props;
                }
                n += 2 + w.topic.len() + 2 + w.payload.len();
            }
            n += c.username.as_ref().map_or(0, |u| 2 + u.len());
            n + c.password.as_ref().map_or(0, |p| 2 + p.len())
        }
        Packet::ConnAck(c) => {
            if v5 {
                l.props = properties_len(&c.properties, PropertySet::CONNACK);
                2 + vbi_len(l.props) + l.props
            } else {
                2
            }
        }
        Packet::Publish(p) => {
            let mut n = 2 + p.topic.len() + p.payload.len();
            if p.qos as u8 > 0 {
                n += 2;
            }
            if v5 {
                let mut counter = Counter(0);
                visit_publish_properties(&p.properties, &mut counter);
                l.props = counter.0;
                n += vbi_len(l.props) + l.props;
            }
            n
        }
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => {
            pub_resp_layout(&mut l, r, v5)
        }
        Packet::Subscribe(s) => {
            let mut n = 2 + s
                .filters
                .iter()
                .map(|(f, _)| 2 + f.len() + 1)
                .sum::<usize>();
            if v5 {
                l.props = properties_len(&s.properties, PropertySet::SUBSCRIBE);
                n += vbi_len(l.props) + l.props;
            }
            n
        }
        Packet::SubAck(s) => {
            let mut n = 2 + s.codes.len();
            if v5 {
                l.props = properties_len(&s.properties, PropertySet::ACK);
                n += vbi_len(l.props) + l.props;
            }
            n
        }
        Packet::Unsubscribe(u) => {
            let mut n = 2 + u.filters.iter().map(|f| 2 + f.len()).sum::<usize>();
            if v5 {
                l.props = properties_len(&u.properties, PropertySet::UNSUBSCRIBE);
                n += vbi_len(l.props) + l.props;
            }
            n
        }
        Packet::UnsubAck(u) => {
            if v5 {
                l.props = properties_len(&u.properties, PropertySet::ACK);
                2 + vbi_len(l.props) + l.props + u.codes.len()
            } else {
                2
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(Disconnect { code, properties }) => {
            code_and_properties_layout(&mut l, *code, properties, PropertySet::DISCONNECT, v5, true)
        }
        Packet::Auth(Auth { code, properties }) => {
            // AUTH has no "code only" short form in the spec (3.15.2.2.1), unlike DISCONNECT.
            code_and_properties_layout(&mut l, *code, properties, PropertySet::AUTH, v5, false)
        }
    };
    l
}

fn pub_resp_layout(l: &mut Layout, r: &PubResp, v5: bool) -> usize {
    if !v5 {
        return 2;
    }
    l.props = properties_len(&r.properties, PropertySet::ACK);
    l.with_props = l.props > 0;
    l.code = l.with_props || r.code != ReasonCode::Success;
    2 + usize::from(l.code)
        + if l.with_props {
            vbi_len(l.props) + l.props
        } else {
            0
        }
}

fn code_and_properties_layout(
    l: &mut Layout,
    code: ReasonCode,
    properties: &Properties,
    allowed: PropertySet,
    v5: bool,
    code_only_form: bool,
) -> usize {
    if !v5 {
        return 0;
    }
    l.props = properties_len(properties, allowed);
    l.code = l.props > 0 || code != ReasonCode::Success;
    l.with_props = l.props > 0 || (l.code && !code_only_form);
    usize::from(l.code)
        + if l.with_props {
            vbi_len(l.props) + l.props
        } else {
            0
        }
}

fn write_connect(out: &mut BytesMut, c: &Connect, layout: &Layout) {
    let (name, level): (&[u8], u8) = match c.protocol {
        ProtocolVersion::V31 => (b"MQIsdp", 3),
        ProtocolVersion::V311 => (b"MQTT", 4),
        ProtocolVersion::V5 => (b"MQTT", 5),
    };
    put_binary(out, name);
    out.put_u8(level);
    let mut flags = u8::from(c.clean_start) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | ((w.qos as u8) << 3) | (u8::from(w.retain) << 5);
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    out.put_u8(flags);
    out.put_u16(c.keep_alive_s);
    let v5 = c.protocol.is_v5();
    if v5 {
        write_properties(out, &c.properties, PropertySet::CONNECT, layout.props);
    }
    put_binary(out, &c.client_id);
    if let Some(w) = &c.will {
        if v5 {
            write_properties(out, &w.properties, PropertySet::WILL, layout.will_props);
        }
        put_binary(out, &w.topic);
        put_binary(out, &w.payload);
    }
    if let Some(u) = &c.username {
        put_binary(out, u);
    }
    if let Some(p) = &c.password {
        put_binary(out, p);
    }
}

fn write_pub_resp(out: &mut BytesMut, first: u8, r: &PubResp, layout: &Layout) {
    out.put_u8(first);
    put_vbi(out, layout.remaining);
    out.put_u16(r.packet_id);
    if layout.code {
        out.put_u8(r.code as u8);
    }
    if layout.with_props {
        write_properties(out, &r.properties, PropertySet::ACK, layout.props);
    }
}

fn write_code_and_properties(
    out: &mut BytesMut,
    first: u8,
    code: ReasonCode,
    properties: &Properties,
    allowed: PropertySet,
    layout: &Layout,
) {
    out.put_u8(first);
    put_vbi(out, layout.remaining);
    if layout.code {
        out.put_u8(code as u8);
    }
    if layout.with_props {
        write_properties(out, properties, allowed, layout.props);
    }
}

fn options_byte(o: &SubscriptionOptions, v5: bool) -> u8 {
    let qos = o.qos as u8;
    if !v5 {
        return qos;
    }
    qos | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling & 0b11) << 4)
}

fn put_vbi(out: &mut BytesMut, mut value: usize) {
    loop {
        let mut b = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if value == 0 {
            return;
        }
    }
}

fn vbi_len(value: usize) -> usize {
    remaining_length_len(value)
}

fn put_binary(out: &mut BytesMut, s: &[u8]) {
    debug_assert!(
        s.len() <= usize::from(u16::MAX),
        "string longer than 65535 bytes"
    );
    out.put_u16(s.len() as u16);
    out.put_slice(s);
}

fn properties_len(p: &Properties, allowed: PropertySet) -> usize {
    let mut counter = Counter(0);
    visit_properties(p, allowed, &mut counter);
    counter.0
}

fn write_properties(out: &mut BytesMut, p: &Properties, allowed: PropertySet, len: usize) {
    put_vbi(out, len);
    visit_properties(p, allowed, &mut Writer(out));
}

/// Receives properties in wire order; one walk serves both sizing and writing so
/// the two cannot disagree.
trait PropertySink {
    fn byte(&mut self, pid: u8, v: u8);
    fn u16(&mut self, pid: u8, v: u16);
    fn u32(&mut self, pid: u8, v: u32);
    fn vbi(&mut self, pid: u8, v: u32);
    fn binary(&mut self, pid: u8, v: &[u8]);
    fn pair(&mut self, pid: u8, k: &[u8], v: &[u8]);
}

struct Counter(usize);

impl PropertySink for Counter {
    fn byte(&mut self, _: u8, _: u8) {
        self.0 += 2;
    }
    fn u16(&mut self, _: u8, _: u16) {
        self.0 += 3;
    }
    fn u32(&mut self, _: u8, _: u32) {
        self.0 += 5;
    }
    fn vbi(&mut self, _: u8, v: u32) {
        self.0 += 1 + vbi_len(v as usize);
    }
    fn binary(&mut self, _: u8, v: &[u8]) {
        self.0 += 3 + v.len();
    }
    fn pair(&mut self, _: u8, k: &[u8], v: &[u8]) {
        self.0 += 5 + k.len() + v.len();
    }
}

struct Writer<'a>(&'a mut BytesMut);

impl PropertySink for Writer<'_> {
    fn byte(&mut self, pid: u8, v: u8) {
        self.0.put_u8(pid);
        self.0.put_u8(v);
    }
    fn u16(&mut self, pid: u8, v: u16) {
        self.0.put_u8(pid);
        self.0.put_u16(v);
    }
    fn u32(&mut self, pid: u8, v: u32) {
        self.0.put_u8(pid);
        self.0.put_u32(v);
    }
    fn vbi(&mut self, pid: u8, v: u32) {
        self.0.put_u8(pid);
        put_vbi(self.0, v as usize);
    }
    fn binary(&mut self, pid: u8, v: &[u8]) {
        self.0.put_u8(pid);
        put_binary(self.0, v);
    }
    fn pair(&mut self, pid: u8, k: &[u8], v: &[u8]) {
        self.0.put_u8(pid);
        put_binary(self.0, k);
        put_binary(self.0, v);
    }
}

/// Properties in ascending identifier order, skipping those `allowed` excludes.
fn visit_properties(p: &Properties, allowed: PropertySet, s: &mut impl PropertySink) {
    let ok = |pid: u8| allowed.contains(pid);
    if let (Some(v), true) = (p.payload_format_indicator, ok(id::PAYLOAD_FORMAT_INDICATOR)) {
        s.byte(id::PAYLOAD_FORMAT_INDICATOR, v);
    }
    if let (Some(v), true) = (p.message_expiry_interval_s, ok(id::MESSAGE_EXPIRY_INTERVAL)) {
        s.u32(id::MESSAGE_EXPIRY_INTERVAL, v);
    }
    if let (Some(v), true) = (&p.content_type, ok(id::CONTENT_TYPE)) {
        s.binary(id::CONTENT_TYPE, v);
    }
    if let (Some(v), true) = (&p.response_topic, ok(id::RESPONSE_TOPIC)) {
        s.binary(id::RESPONSE_TOPIC, v);
    }
    if let (Some(v), true) = (&p.correlation_data, ok(id::CORRELATION_DATA)) {
        s.binary(id::CORRELATION_DATA, v);
    }
    if let (Some(v), true) = (p.subscription_identifier, ok(id::SUBSCRIPTION_IDENTIFIER)) {
        s.vbi(id::SUBSCRIPTION_IDENTIFIER, v);
    }
    if let (Some(v), true) = (p.session_expiry_interval_s, ok(id::SESSION_EXPIRY_INTERVAL)) {
        s.u32(id::SESSION_EXPIRY_INTERVAL, v);
    }
    if let (Some(v), true) = (
        &p.assigned_client_identifier,
        ok(id::ASSIGNED_CLIENT_IDENTIFIER),
    ) {
        s.binary(id::ASSIGNED_CLIENT_IDENTIFIER, v);
    }
    if let (Some(v), true) = (p.server_keep_alive_s, ok(id::SERVER_KEEP_ALIVE)) {
        s.u16(id::SERVER_KEEP_ALIVE, v);
    }
    if let (Some(v), true) = (&p.authentication_method, ok(id::AUTHENTICATION_METHOD)) {
        s.binary(id::AUTHENTICATION_METHOD, v);
    }
    if let (Some(v), true) = (&p.authentication_data, ok(id::AUTHENTICATION_DATA)) {
        s.binary(id::AUTHENTICATION_DATA, v);
    }
    if let (Some(v), true) = (
        p.request_problem_information,
        ok(id::REQUEST_PROBLEM_INFORMATION),
    ) {
        s.byte(id::REQUEST_PROBLEM_INFORMATION, v);
    }
    if let (Some(v), true) = (p.will_delay_interval_s, ok(id::WILL_DELAY_INTERVAL)) {
        s.u32(id::WILL_DELAY_INTERVAL, v);
    }
    if let (Some(v), true) = (
        p.request_response_information,
        ok(id::REQUEST_RESPONSE_INFORMATION),
    ) {
        s.byte(id::REQUEST_RESPONSE_INFORMATION, v);
    }
    if let (Some(v), true) = (&p.response_information, ok(id::RESPONSE_INFORMATION)) {
        s.binary(id::RESPONSE_INFORMATION, v);
    }
    if let (Some(v), true) = (&p.server_reference, ok(id::SERVER_REFERENCE)) {
        s.binary(id::SERVER_REFERENCE, v);
    }
    if let (Some(v), true) = (&p.reason_string, ok(id::REASON_STRING)) {
        s.binary(id::REASON_STRING, v);
    }
    if let (Some(v), true) = (p.receive_maximum, ok(id::RECEIVE_MAXIMUM)) {
        s.u16(id::RECEIVE_MAXIMUM, v);
    }
    if let (Some(v), true) = (p.topic_alias_maximum, ok(id::TOPIC_ALIAS_MAXIMUM)) {
        s.u16(id::TOPIC_ALIAS_MAXIMUM, v);
    }
    if let (Some(v), true) = (p.maximum_qos, ok(id::MAXIMUM_QOS)) {
        s.byte(id::MAXIMUM_QOS, v);
    }
    if let (Some(v), true) = (p.retain_available, ok(id::RETAIN_AVAILABLE)) {
        s.byte(id::RETAIN_AVAILABLE, v);
    }
    if ok(id::USER_PROPERTY) {
        for (k, v) in &p.user_properties {
            s.pair(id::USER_PROPERTY, k, v);
        }
    }
    if let (Some(v), true) = (p.maximum_packet_size, ok(id::MAXIMUM_PACKET_SIZE)) {
        s.u32(id::MAXIMUM_PACKET_SIZE, v);
    }
    if let (Some(v), true) = (
        p.wildcard_subscription_available,
        ok(id::WILDCARD_SUBSCRIPTION_AVAILABLE),
    ) {
        s.byte(id::WILDCARD_SUBSCRIPTION_AVAILABLE, v);
    }
    if let (Some(v), true) = (
        p.subscription_identifier_available,
        ok(id::SUBSCRIPTION_IDENTIFIER_AVAILABLE),
    ) {
        s.byte(id::SUBSCRIPTION_IDENTIFIER_AVAILABLE, v);
    }
    if let (Some(v), true) = (
        p.shared_subscription_available,
        ok(id::SHARED_SUBSCRIPTION_AVAILABLE),
    ) {
        s.byte(id::SHARED_SUBSCRIPTION_AVAILABLE, v);
    }
}

/// PUBLISH properties in ascending identifier order.
fn visit_publish_properties(p: &PublishProperties, s: &mut impl PropertySink) {
    let rare = p.rare.get();
    if let Some(v) = p.payload_format_indicator {
        s.byte(id::PAYLOAD_FORMAT_INDICATOR, v);
    }
    if let Some(v) = p.message_expiry_interval_s {
        s.u32(id::MESSAGE_EXPIRY_INTERVAL, v);
    }
    if let Some(r) = rare {
        if let Some(v) = &r.content_type {
            s.binary(id::CONTENT_TYPE, v);
        }
        if let Some(v) = &r.response_topic {
            s.binary(id::RESPONSE_TOPIC, v);
        }
        if let Some(v) = &r.correlation_data {
            s.binary(id::CORRELATION_DATA, v);
        }
        for &v in &r.subscription_identifiers {
            s.vbi(id::SUBSCRIPTION_IDENTIFIER, v);
        }
    }
    if let Some(v) = p.topic_alias {
        s.u16(id::TOPIC_ALIAS, v);
    }
    if let Some(r) = rare {
        for (k, v) in &r.user_properties {
            s.pair(id::USER_PROPERTY, k, v);
        }
    }
}
