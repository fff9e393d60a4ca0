//! Property tests: strategies for valid packets of every type and version, the
//! encode/decode identity, exact `encoded_len`, no panics on arbitrary input, and
//! incremental decoding of a stream cut at every byte.

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::Union;

use super::properties::property_id as id;
use super::*;

const MAX_PACKET: usize = MAX_REMAINING_LENGTH + 5;

fn version() -> impl Strategy<Value = ProtocolVersion> {
    select(vec![
        ProtocolVersion::V31,
        ProtocolVersion::V311,
        ProtocolVersion::V5,
    ])
}

/// Any MQTT UTF-8 string, wildcards and multi-byte characters included.
fn utf8() -> impl Strategy<Value = Bytes> {
    "[a-zA-Z0-9 /+#_é€😀-]{0,12}".prop_map(Bytes::from)
}

/// A non-empty topic name without wildcards; empty levels allowed.
fn topic_name() -> impl Strategy<Value = Bytes> {
    "[a-z0-9é€$]{0,4}(/[a-z0-9é€]{0,4}){0,3}"
        .prop_filter("topic names are not empty", |s| !s.is_empty())
        .prop_map(Bytes::from)
}

/// A well-formed filter: `+` as whole levels, `#` as the whole last level.
fn topic_filter() -> impl Strategy<Value = Bytes> {
    let level = prop_oneof![Just("+".to_string()), "[a-z0-9é]{0,4}"];
    (vec(level, 1..4), any::<bool>()).prop_map(|(levels, hash)| {
        let mut filter = levels.join("/");
        if hash {
            filter.push_str(if filter.is_empty() { "#" } else { "/#" });
        } else if filter.is_empty() {
            filter.push('+');
        }
        Bytes::from(filter)
    })
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..12).prop_map(Bytes::from)
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn user_properties() -> impl Strategy<Value = Vec<UserProperty>> {
    vec((utf8(), utf8()), 0..3)
}

fn flag() -> impl Strategy<Value = Option<u8>> {
    of(0..=1u8)
}

/// Valid values for every property, then only those `allowed` keeps.
fn properties(allowed: PropertySet) -> impl Strategy<Value = Properties> {
    let a = (
        flag(),
        of(any::<u32>()),
        of(utf8()),
        of(topic_name()),
        of(binary()),
        of(1..=268_435_455u32),
        of(any::<u32>()),
        of(utf8()),
        of(any::<u16>()),
        of(utf8()),
        of(binary()),
        flag(),
    );
    let b = (
        of(any::<u32>()),
        flag(),
        of(utf8()),
        of(utf8()),
        of(utf8()),
        of(1..=u16::MAX),
        of(any::<u16>()),
        flag(),
        flag(),
        user_properties(),
        of(1..=u32::MAX),
        flag(),
    );
    let c = (flag(), flag());
    (a, b, c).prop_map(move |(a, b, c)| {
        let p = PropertyValues {
            payload_format_indicator: a.0,
            message_expiry_interval_s: a.1,
            content_type: a.2,
            response_topic: a.3,
            correlation_data: a.4,
            subscription_identifier: a.5,
            session_expiry_interval_s: a.6,
            assigned_client_identifier: a.7,
            server_keep_alive_s: a.8,
            authentication_method: a.9,
            authentication_data: a.10,
            request_problem_information: a.11,
            will_delay_interval_s: b.0,
            request_response_information: b.1,
            response_information: b.2,
            server_reference: b.3,
            reason_string: b.4,
            receive_maximum: b.5,
            topic_alias_maximum: b.6,
            maximum_qos: b.7,
            retain_available: b.8,
            user_properties: b.9,
            maximum_packet_size: b.10,
            wildcard_subscription_available: b.11,
            subscription_identifier_available: c.0,
            shared_subscription_available: c.1,
        };
        let mut p = keep_allowed(p, allowed);
        if p.authentication_method.is_none() {
            p.authentication_data = None;
        }
        Properties::from(p)
    })
}

fn keep_allowed(mut p: PropertyValues, allowed: PropertySet) -> PropertyValues {
    fn keep<T>(field: &mut Option<T>, pid: u8, allowed: PropertySet) {
        if !allowed.contains(pid) {
            *field = None;
        }
    }
    keep(
        &mut p.payload_format_indicator,
        id::PAYLOAD_FORMAT_INDICATOR,
        allowed,
    );
    keep(
        &mut p.message_expiry_interval_s,
        id::MESSAGE_EXPIRY_INTERVAL,
        allowed,
    );
    keep(&mut p.content_type, id::CONTENT_TYPE, allowed);
    keep(&mut p.response_topic, id::RESPONSE_TOPIC, allowed);
    keep(&mut p.correlation_data, id::CORRELATION_DATA, allowed);
    keep(
        &mut p.subscription_identifier,
        id::SUBSCRIPTION_IDENTIFIER,
        allowed,
    );
    keep(
        &mut p.session_expiry_interval_s,
        id::SESSION_EXPIRY_INTERVAL,
        allowed,
    );
    keep(
        &mut p.assigned_client_identifier,
        id::ASSIGNED_CLIENT_IDENTIFIER,
        allowed,
    );
    keep(&mut p.server_keep_alive_s, id::SERVER_KEEP_ALIVE, allowed);
    keep(
        &mut p.authentication_method,
        id::AUTHENTICATION_METHOD,
        allowed,
    );
    keep(&mut p.authentication_data, id::AUTHENTICATION_DATA, allowed);
    keep(
        &mut p.request_problem_information,
        id::REQUEST_PROBLEM_INFORMATION,
        allowed,
    );
    keep(
        &mut p.will_delay_interval_s,
        id::WILL_DELAY_INTERVAL,
        allowed,
    );
    keep(
        &mut p.request_response_information,
        id::REQUEST_RESPONSE_INFORMATION,
        allowed,
    );
    keep(
        &mut p.response_information,
        id::RESPONSE_INFORMATION,
        allowed,
    );
    keep(&mut p.server_reference, id::SERVER_REFERENCE, allowed);
    keep(&mut p.reason_string, id::REASON_STRING, allowed);
    keep(&mut p.receive_maximum, id::RECEIVE_MAXIMUM, allowed);
    keep(&mut p.topic_alias_maximum, id::TOPIC_ALIAS_MAXIMUM, allowed);
    keep(&mut p.maximum_qos, id::MAXIMUM_QOS, allowed);
    keep(&mut p.retain_available, id::RETAIN_AVAILABLE, allowed);
    if !allowed.contains(id::USER_PROPERTY) {
        p.user_properties.clear();
    }
    keep(&mut p.maximum_packet_size, id::MAXIMUM_PACKET_SIZE, allowed);
    keep(
        &mut p.wildcard_subscription_available,
        id::WILDCARD_SUBSCRIPTION_AVAILABLE,
        allowed,
    );
    keep(
        &mut p.subscription_identifier_available,
        id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        allowed,
    );
    keep(
        &mut p.shared_subscription_available,
        id::SHARED_SUBSCRIPTION_AVAILABLE,
        allowed,
    );
    p
}

/// Properties for `version`: none before 5.0.
fn properties_for(version: ProtocolVersion, allowed: PropertySet) -> BoxedStrategy<Properties> {
    if version.is_v5() {
        properties(allowed).boxed()
    } else {
        Just(Properties::default()).boxed()
    }
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        flag(),
        of(any::<u32>()),
        of(1..=u16::MAX),
        of(topic_name()),
        of(binary()),
        vec(1..=268_435_455u32, 0..3),
        of(utf8()),
        user_properties(),
    )
        .prop_map(|p| PublishProperties {
            payload_format_indicator: p.0,
            message_expiry_interval_s: p.1,
            topic_alias: p.2,
            rare: PublishRare {
                response_topic: p.3,
                correlation_data: p.4,
                subscription_identifiers: p.5.into(),
                content_type: p.6,
                user_properties: p.7,
            }
            .into(),
        })
}

/// The MQTT 5 codes defined for `packet_type`.
fn code_for(packet_type: PacketType) -> impl Strategy<Value = ReasonCode> {
    let codes: Vec<ReasonCode> = (0..=u8::MAX)
        .filter_map(ReasonCode::from_u8)
        .filter(|code| code.is_valid_for(packet_type))
        .collect();
    select(codes)
}

fn connect(version: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let will = (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        properties_for(version, PropertySet::WILL),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    (
        any::<bool>(),
        any::<u16>(),
        utf8(),
        of(will),
        of(utf8()),
        of(binary()),
        properties_for(version, PropertySet::CONNECT),
    )
        .prop_map(
            move |(clean_start, keep_alive_s, client_id, will, username, password, properties)| {
                // 3.x has no password without a username.
                let password = if version.is_v5() || username.is_some() {
                    password
                } else {
                    None
                };
                Packet::Connect(Box::new(Connect {
                    protocol: version,
                    clean_start,
                    keep_alive_s,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }))
            },
        )
}

fn connack(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let code = if version.is_v5() {
        code_for(PacketType::ConnAck).boxed()
    } else {
        select(
            (0..=5)
                .filter_map(ReasonCode::from_v3_connack_code)
                .collect::<Vec<_>>(),
        )
        .boxed()
    };
    (
        any::<bool>(),
        code,
        properties_for(version, PropertySet::CONNACK),
    )
        .prop_map(|(session, code, properties)| {
            Packet::ConnAck(ConnAck {
                session_present: session && code == ReasonCode::Success,
                code,
                properties,
            })
        })
        .boxed()
}

fn publish(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let props = if version.is_v5() {
        publish_properties().boxed()
    } else {
        Just(PublishProperties::default()).boxed()
    };
    (
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic_name(),
        packet_id(),
        props,
        binary(),
        any::<bool>(),
    )
        .prop_map(
            move |(qos, dup, retain, topic, packet_id, mut properties, payload, empty)| {
                let topic = if version.is_v5() && empty {
                    properties.topic_alias.get_or_insert(1);
                    Bytes::new()
                } else {
                    topic
                };
                let qos0 = qos == QoS::AtMostOnce;
                Packet::Publish(Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic,
                    packet_id: if qos0 { 0 } else { packet_id },
                    properties,
                    payload,
                })
            },
        )
        .boxed()
}

fn pub_resp(version: ProtocolVersion, packet_type: PacketType) -> BoxedStrategy<Packet> {
    let code = if version.is_v5() {
        code_for(packet_type).boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    };
    (packet_id(), code, properties_for(version, PropertySet::ACK))
        .prop_map(move |(packet_id, code, properties)| {
            let r = PubResp {
                packet_id,
                code,
                properties,
            };
            match packet_type {
                PacketType::PubAck => Packet::PubAck(r),
                PacketType::PubRec => Packet::PubRec(r),
                PacketType::PubRel => Packet::PubRel(r),
                _ => Packet::PubComp(r),
            }
        })
        .boxed()
}

fn subscription_options(version: ProtocolVersion) -> BoxedStrategy<SubscriptionOptions> {
    if version.is_v5() {
        (qos(), any::<bool>(), any::<bool>(), 0..=2u8)
            .prop_map(
                |(qos, no_local, retain_as_published, retain_handling)| SubscriptionOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                },
            )
            .boxed()
    } else {
        qos()
            .prop_map(|qos| SubscriptionOptions {
                qos,
                ..SubscriptionOptions::default()
            })
            .boxed()
    }
}

fn subscribe(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    (
        packet_id(),
        vec((topic_filter(), subscription_options(version)), 1..4),
        properties_for(version, PropertySet::SUBSCRIBE),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Subscribe(Subscribe {
                packet_id,
                filters: filters.into(),
                properties,
            })
        })
        .boxed()
}

fn suback(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let code = if version.is_v5() {
        code_for(PacketType::SubAck).boxed()
    } else {
        select(vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2,
            ReasonCode::UnspecifiedError,
        ])
        .boxed()
    };
    (
        packet_id(),
        vec(code, 1..4),
        properties_for(version, PropertySet::ACK),
    )
        .prop_map(|(packet_id, codes, properties)| {
            Packet::SubAck(SubAck {
                packet_id,
                codes: codes.into(),
                properties,
            })
        })
        .boxed()
}

fn unsubscribe(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    (
        packet_id(),
        vec(topic_filter(), 1..4),
        properties_for(version, PropertySet::UNSUBSCRIBE),
    )
        .prop_map(|(packet_id, filters, properties)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters: filters.into(),
                properties,
            })
        })
        .boxed()
}

fn unsuback(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let codes = if version.is_v5() {
        vec(code_for(PacketType::UnsubAck), 1..4).boxed()
    } else {
        Just(Vec::new()).boxed()
    };
    (
        packet_id(),
        codes,
        properties_for(version, PropertySet::ACK),
    )
        .prop_map(|(packet_id, codes, properties)| {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                codes: codes.into(),
                properties,
            })
        })
        .boxed()
}

fn disconnect(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let code = if version.is_v5() {
        code_for(PacketType::Disconnect).boxed()
    } else {
        Just(ReasonCode::Success).boxed()
    };
    (code, properties_for(version, PropertySet::DISCONNECT))
        .prop_map(|(code, properties)| Packet::Disconnect(Disconnect { code, properties }))
        .boxed()
}

fn auth() -> BoxedStrategy<Packet> {
    (code_for(PacketType::Auth), properties(PropertySet::AUTH))
        .prop_map(|(code, properties)| Packet::Auth(Auth { code, properties }))
        .boxed()
}

/// Any valid packet for `version` (AUTH only in 5.0).
fn packet(version: ProtocolVersion) -> BoxedStrategy<Packet> {
    let mut all = vec![
        connect(version).boxed(),
        connack(version),
        publish(version),
        pub_resp(version, PacketType::PubAck),
        pub_resp(version, PacketType::PubRec),
        pub_resp(version, PacketType::PubRel),
        pub_resp(version, PacketType::PubComp),
        subscribe(version),
        suback(version),
        unsubscribe(version),
        unsuback(version),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect(version),
    ];
    if version.is_v5() {
        all.push(auth());
    }
    Union::new(all).boxed()
}

fn versioned_packet() -> impl Strategy<Value = (ProtocolVersion, Packet)> {
    version().prop_flat_map(|v| (Just(v), packet(v)))
}

fn versioned_packets() -> impl Strategy<Value = (ProtocolVersion, Vec<Packet>)> {
    version().prop_flat_map(|v| (Just(v), vec(packet(v), 1..5)))
}

/// Decodes until the buffer holds no complete frame; `Err` ends the loop. Each success
/// consumes at least two bytes, so this terminates.
fn drain(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    out: &mut Vec<Packet>,
) -> Result<(), DecodeError> {
    while let Some(packet) = decode_packet(buf, version, MAX_PACKET)? {
        out.push(packet);
    }
    Ok(())
}

/// Whatever the decoder accepts, the encoder writes back to something that decodes
/// to the same packet.
fn assert_reencodes(packet: &Packet, version: ProtocolVersion) -> Result<(), TestCaseError> {
    let wire = encode_to_bytes(packet, version);
    prop_assert_eq!(wire.len(), encoded_len(packet, version));
    let mut buf = BytesMut::from(&wire[..]);
    prop_assert_eq!(
        decode_packet(&mut buf, version, MAX_PACKET),
        Ok(Some(packet.clone()))
    );
    prop_assert!(buf.is_empty());
    Ok(())
}

/// A first byte whose type and flags pass the fixed-header check for `version`.
fn valid_first_byte(version: ProtocolVersion) -> impl Strategy<Value = u8> {
    let max_type = if version.is_v5() { 15u8 } else { 14 };
    (1..=max_type, qos(), any::<bool>(), any::<bool>()).prop_map(|(t, qos, dup, retain)| match t {
        3 => {
            let dup = dup && qos != QoS::AtMostOnce;
            0x30 | (u8::from(dup) << 3) | ((qos as u8) << 1) | u8::from(retain)
        }
        6 | 8 | 10 => (t << 4) | 0b0010,
        _ => t << 4,
    })
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut wire = vec![first];
    let mut n = body.len();
    loop {
        let byte = (n & 0x7F) as u8;
        n >>= 7;
        wire.push(if n > 0 { byte | 0x80 } else { byte });
        if n == 0 {
            break;
        }
    }
    wire.extend_from_slice(body);
    wire
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn encode_then_decode_is_identity((version, packet) in versioned_packet()) {
        let mut out = BytesMut::new();
        encode_packet(&packet, version, &mut out);
        prop_assert_eq!(out.len(), encoded_len(&packet, version));
        let wire = out.clone();
        let decoded = decode_packet(&mut out, version, MAX_PACKET);
        prop_assert_eq!(decoded, Ok(Some(packet.clone())), "wire {:02x?}", &wire[..]);
        prop_assert!(out.is_empty());
        // Exactly the frame size is accepted, one byte less is refused up front.
        let mut again = wire.clone();
        prop_assert_eq!(decode_packet(&mut again, version, wire.len()), Ok(Some(packet)));
        let mut again = wire.clone();
        prop_assert_eq!(
            decode_packet(&mut again, version, wire.len() - 1),
            Err(DecodeError::PacketTooLarge { size: wire.len(), max: wire.len() - 1 })
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic(version in version(), bytes in vec(any::<u8>(), 0..256)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let mut packets = Vec::new();
        let _ = drain(&mut buf, version, &mut packets);
        for packet in &packets {
            assert_reencodes(packet, version)?;
        }
    }

    #[test]
    fn arbitrary_body_behind_a_valid_fixed_header(
        (version, first) in version().prop_flat_map(|v| (Just(v), valid_first_byte(v))),
        body in vec(any::<u8>(), 0..96),
    ) {
        let wire = frame(first, &body);
        let mut buf = BytesMut::from(&wire[..]);
        match decode_packet(&mut buf, version, MAX_PACKET) {
            Ok(Some(packet)) => {
                prop_assert!(buf.is_empty());
                assert_reencodes(&packet, version)?;
            }
            // A complete frame is never "incomplete".
            Ok(None) => prop_assert!(false, "complete frame reported incomplete"),
            Err(_) => {}
        }
    }

    #[test]
    fn mutated_valid_packets_never_panic(
        (version, packet) in versioned_packet(),
        index in any::<prop::sample::Index>(),
        value in any::<u8>(),
    ) {
        let mut wire = encode_to_bytes(&packet, version).to_vec();
        let i = index.index(wire.len());
        wire[i] = value;
        let mut buf = BytesMut::from(&wire[..]);
        let mut packets = Vec::new();
        let _ = drain(&mut buf, version, &mut packets);
        for packet in &packets {
            assert_reencodes(packet, version)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn stream_split_at_every_byte_decodes_the_same((version, packets) in versioned_packets()) {
        let mut wire = BytesMut::new();
        for packet in &packets {
            encode_packet(packet, version, &mut wire);
        }
        for cut in 0..=wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            prop_assert_eq!(drain(&mut buf, version, &mut got), Ok(()));
            buf.extend_from_slice(&wire[cut..]);
            prop_assert_eq!(drain(&mut buf, version, &mut got), Ok(()));
            prop_assert!(buf.is_empty(), "cut {}", cut);
            prop_assert_eq!(&got, &packets, "cut {}", cut);
        }
    }
}
