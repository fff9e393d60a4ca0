//! Byte-exact vectors (both directions) and one test per validation rule.
//!
//! This file holds the shared helpers and the vectors, packet by packet; the rules
//! are in `tests/`: `framing`, `topics`, `rules` (CONNECT/CONNACK fields, reason
//! codes, trailing bytes) and `properties`.

use bytes::{Bytes, BytesMut};
use smallvec::smallvec;

use super::*;

mod framing;
mod properties;
mod rules;
mod topics;

const V31: ProtocolVersion = ProtocolVersion::V31;
const V311: ProtocolVersion = ProtocolVersion::V311;
const V5: ProtocolVersion = ProtocolVersion::V5;

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn decode_all(bytes: &[u8], version: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    let packet = decode_packet(&mut buf, version, usize::MAX)?;
    if packet.is_some() {
        assert!(buf.is_empty(), "frame not fully consumed");
    }
    Ok(packet)
}

fn decode_one(bytes: &[u8], version: ProtocolVersion) -> Packet {
    decode_all(bytes, version)
        .expect("valid vector")
        .expect("complete vector")
}

fn err(bytes: &[u8], version: ProtocolVersion) -> DecodeError {
    decode_all(bytes, version).expect_err("invalid vector")
}

/// Decoding `wire` gives `packet`, encoding `packet` gives `wire`, and every strict
/// prefix of `wire` is incomplete without consuming anything.
fn vector(wire: &[u8], version: ProtocolVersion, packet: Packet) {
    assert_eq!(decode_one(wire, version), packet, "decode");
    assert_eq!(&encode_to_bytes(&packet, version)[..], wire, "encode");
    assert_eq!(encoded_len(&packet, version), wire.len(), "encoded_len");
    for cut in 0..wire.len() {
        let mut buf = BytesMut::from(&wire[..cut]);
        assert_eq!(
            decode_packet(&mut buf, version, usize::MAX),
            Ok(None),
            "prefix {cut}"
        );
        assert_eq!(buf.len(), cut, "prefix {cut} consumed bytes");
    }
}

/// Only the encoder direction: `packet` encodes to `wire` for `version`.
fn encodes_to(packet: Packet, version: ProtocolVersion, wire: &[u8]) {
    assert_eq!(&encode_to_bytes(&packet, version)[..], wire);
    assert_eq!(encoded_len(&packet, version), wire.len());
}

fn connect(protocol: ProtocolVersion, client_id: &'static str) -> Connect {
    Connect {
        protocol,
        clean_start: true,
        keep_alive_s: 60,
        client_id: b(client_id),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

fn publish(topic: &'static str, qos: QoS, packet_id: u16, payload: &'static str) -> Publish {
    Publish {
        dup: false,
        qos,
        retain: false,
        topic: b(topic),
        packet_id,
        properties: PublishProperties::default(),
        payload: b(payload),
    }
}

fn resp(packet_id: u16, code: ReasonCode) -> PubResp {
    PubResp {
        packet_id,
        code,
        properties: Properties::default(),
    }
}

/// A CONNECT frame with the given protocol name, level and flags, then `tail`.
fn connect_with(name: &[u8], level: u8, flags: u8, tail: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0x00, 0x3C]);
    body.extend_from_slice(tail);
    let mut wire = vec![0x10, body.len() as u8];
    wire.extend_from_slice(&body);
    wire
}

// ---------------------------------------------------------------- CONNECT

#[test]
fn connect_v31_vector() {
    let wire = [
        0x10, 0x11, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3C, 0x00,
        0x03, b'a', b'b', b'c',
    ];
    vector(&wire, V31, Packet::Connect(Box::new(connect(V31, "abc"))));
}

#[test]
fn connect_v311_minimal_vector() {
    let wire = [
        0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03, b'a',
        b'b', b'c',
    ];
    vector(&wire, V311, Packet::Connect(Box::new(connect(V311, "abc"))));
}

#[test]
fn connect_v311_full_vector() {
    // Flags 0xEE: username, password, will retain, will QoS 1, will, clean session.
    let wire = [
        0x10, 0x1D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xEE, 0x00, 0x3C, 0x00, 0x02, b'i',
        b'd', 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x02, b'h', b'i', 0x00, 0x01, b'u', 0x00, 0x01,
        b'p',
    ];
    let mut c = connect(V311, "id");
    c.will = Some(LastWill {
        topic: b("a/b"),
        payload: b("hi"),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: Properties::default(),
    });
    c.username = Some(b("u"));
    c.password = Some(b("p"));
    vector(&wire, V311, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_v5_vector() {
    // Flags 0xC6: username, password, will QoS 0, will, clean start.
    let wire = [
        0x10, 0x2B, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0xC6, 0x00, 0x3C, // header
        0x08, 0x11, 0x00, 0x00, 0x00, 0x78, 0x21, 0x00, 0x0A, // properties
        0x00, 0x02, b'c', b'1', // client id
        0x07, 0x01, 0x01, 0x18, 0x00, 0x00, 0x00, 0x05, // will properties
        0x00, 0x01, b'w', 0x00, 0x01, b'x', // will topic, payload
        0x00, 0x01, b'u', 0x00, 0x01, b'p', // username, password
    ];
    let mut c = connect(V5, "c1");
    c.properties.to_mut().session_expiry_interval_s = Some(120);
    c.properties.to_mut().receive_maximum = Some(10);
    c.will = Some(LastWill {
        topic: b("w"),
        payload: b("x"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::from(PropertyValues {
            payload_format_indicator: Some(1),
            will_delay_interval_s: Some(5),
            ..Default::default()
        }),
    });
    c.username = Some(b("u"));
    c.password = Some(b("p"));
    vector(&wire, V5, Packet::Connect(Box::new(c)));
}

#[test]
fn connect_decodes_its_own_version_whatever_the_connection_version() {
    let wire = [
        0x10, 0x11, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3C, 0x00,
        0x03, b'a', b'b', b'c',
    ];
    assert_eq!(
        decode_one(&wire, V5),
        Packet::Connect(Box::new(connect(V31, "abc")))
    );
}

#[test]
fn connect_v5_password_without_username_is_allowed() {
    let wire = [
        0x10, 0x10, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x42, 0x00, 0x3C, 0x00, 0x00, 0x00,
        0x00, 0x01, b'p',
    ];
    let mut c = connect(V5, "");
    c.password = Some(b("p"));
    vector(&wire, V5, Packet::Connect(Box::new(c)));
}

// ---------------------------------------------------------------- CONNACK

#[test]
fn connack_v311_vectors() {
    vector(
        &[0x20, 0x02, 0x01, 0x00],
        V311,
        Packet::ConnAck(ConnAck {
            session_present: true,
            code: ReasonCode::Success,
            properties: Properties::default(),
        }),
    );
    vector(
        &[0x20, 0x02, 0x00, 0x05],
        V311,
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: ReasonCode::NotAuthorized,
            properties: Properties::default(),
        }),
    );
    vector(
        &[0x20, 0x02, 0x00, 0x01],
        V31,
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: ReasonCode::UnsupportedProtocolVersion,
            properties: Properties::default(),
        }),
    );
}

#[test]
fn connack_v3_maps_v5_codes() {
    let ack = |code| {
        Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties: Properties::default(),
        })
    };
    encodes_to(
        ack(ReasonCode::BadAuthenticationMethod),
        V311,
        &[0x20, 0x02, 0x00, 0x04],
    );
    encodes_to(ack(ReasonCode::ServerBusy), V311, &[0x20, 0x02, 0x00, 0x03]);
    encodes_to(ack(ReasonCode::Banned), V311, &[0x20, 0x02, 0x00, 0x05]);
    encodes_to(
        ack(ReasonCode::ClientIdentifierNotValid),
        V31,
        &[0x20, 0x02, 0x00, 0x02],
    );
}

#[test]
fn connack_v5_vectors() {
    let wire = [
        0x20, 0x0D, 0x00, 0x00, 0x0A, 0x12, 0x00, 0x02, b'a', b'b', 0x22, 0x00, 0x0A, 0x24, 0x01,
    ];
    vector(
        &wire,
        V5,
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: ReasonCode::Success,
            properties: Properties::from(PropertyValues {
                assigned_client_identifier: Some(b("ab")),
                topic_alias_maximum: Some(10),
                maximum_qos: Some(1),
                ..Default::default()
            }),
        }),
    );
    vector(
        &[0x20, 0x03, 0x00, 0x87, 0x00],
        V5,
        Packet::ConnAck(ConnAck {
            session_present: false,
            code: ReasonCode::NotAuthorized,
            properties: Properties::default(),
        }),
    );
}

// ---------------------------------------------------------------- PUBLISH

#[test]
fn publish_v311_vectors() {
    vector(
        &[
            0x30, 0x0A, 0x00, 0x03, b'a', b'/', b'b', b'h', b'e', b'l', b'l', b'o',
        ],
        V311,
        Packet::Publish(publish("a/b", QoS::AtMostOnce, 0, "hello")),
    );
    let mut p = publish("t", QoS::AtLeastOnce, 10, "xy");
    p.dup = true;
    p.retain = true;
    vector(
        &[0x3B, 0x07, 0x00, 0x01, b't', 0x00, 0x0A, b'x', b'y'],
        V311,
        Packet::Publish(p),
    );
    vector(
        &[0x34, 0x05, 0x00, 0x01, b't', 0x12, 0x34],
        V311,
        Packet::Publish(publish("t", QoS::ExactlyOnce, 0x1234, "")),
    );
}

#[test]
fn publish_two_byte_remaining_length_vector() {
    let payload = vec![0xA5u8; 200];
    let mut wire = vec![0x30, 0xCB, 0x01, 0x00, 0x01, b't'];
    wire.extend_from_slice(&payload);
    let mut p = publish("t", QoS::AtMostOnce, 0, "");
    p.payload = Bytes::from(payload);
    vector(&wire, V311, Packet::Publish(p));
}

#[test]
fn publish_v5_vectors() {
    let wire = [
        0x32, 0x1A, 0x00, 0x01, b't', 0x00, 0x01, // topic, packet id
        0x13, 0x01, 0x01, 0x02, 0x00, 0x00, 0x00, 0x3C, 0x0B, 0x05, 0x23, 0x00, 0x02, 0x26, 0x00,
        0x01, b'k', 0x00, 0x01, b'v', // properties
        b'p',
    ];
    let mut p = publish("t", QoS::AtLeastOnce, 1, "p");
    p.properties = PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval_s: Some(60),
        topic_alias: Some(2),
        rare: PublishRare {
            subscription_identifiers: smallvec![5],
            user_properties: vec![(b("k"), b("v"))],
            ..Default::default()
        }
        .into(),
    };
    vector(&wire, V5, Packet::Publish(p));

    // Empty topic with a topic alias.
    let mut p = publish("", QoS::AtMostOnce, 0, "a");
    p.properties.topic_alias = Some(5);
    vector(
        &[0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x05, b'a'],
        V5,
        Packet::Publish(p),
    );

    // Repeated subscription identifiers, content type, response topic, correlation data.
    let wire = [
        0x30, 0x1A, 0x00, 0x01, b't', 0x16, 0x03, 0x00, 0x01, b'j', 0x08, 0x00, 0x03, b'r', b'/',
        b's', 0x09, 0x00, 0x02, 0x01, 0x02, 0x0B, 0x01, 0x0B, 0xFF, 0xFF, 0xFF, 0x7F,
    ];
    let mut p = publish("t", QoS::AtMostOnce, 0, "");
    p.properties = PublishProperties {
        rare: PublishRare {
            content_type: Some(b("j")),
            response_topic: Some(b("r/s")),
            correlation_data: Some(Bytes::from_static(&[1, 2])),
            subscription_identifiers: smallvec![1, 268_435_455],
            ..Default::default()
        }
        .into(),
        ..Default::default()
    };
    vector(&wire, V5, Packet::Publish(p));
}

#[test]
fn publish_decode_is_zero_copy() {
    let wire = [
        0x30, 0x0A, 0x00, 0x03, b'a', b'/', b'b', b'h', b'e', b'l', b'l', b'o',
    ];
    let mut buf = BytesMut::from(&wire[..]);
    let base = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode_packet(&mut buf, V311, 1024).unwrap() else {
        panic!("not a publish");
    };
    assert_eq!(p.topic.as_ptr() as usize, base + 4);
    assert_eq!(p.payload.as_ptr() as usize, base + 7);
}

// ---------------------------------------------------------------- PUBACK .. PUBCOMP

#[test]
fn pub_resp_v311_vectors() {
    vector(
        &[0x40, 0x02, 0x00, 0x0A],
        V311,
        Packet::PubAck(PubResp::new(10)),
    );
    vector(
        &[0x50, 0x02, 0x00, 0x0A],
        V311,
        Packet::PubRec(PubResp::new(10)),
    );
    vector(
        &[0x62, 0x02, 0x00, 0x0A],
        V311,
        Packet::PubRel(PubResp::new(10)),
    );
    vector(
        &[0x70, 0x02, 0xFF, 0xFF],
        V311,
        Packet::PubComp(PubResp::new(0xFFFF)),
    );
    // A 5.0 code cannot be carried by 3.x: only the packet id is written.
    encodes_to(
        Packet::PubAck(resp(10, ReasonCode::NoMatchingSubscribers)),
        V311,
        &[0x40, 0x02, 0x00, 0x0A],
    );
}

#[test]
fn pub_resp_v5_vectors() {
    vector(
        &[0x40, 0x02, 0x00, 0x0A],
        V5,
        Packet::PubAck(PubResp::new(10)),
    );
    vector(
        &[0x40, 0x03, 0x00, 0x0A, 0x10],
        V5,
        Packet::PubAck(resp(10, ReasonCode::NoMatchingSubscribers)),
    );
    let mut r = resp(10, ReasonCode::UnspecifiedError);
    r.properties.to_mut().reason_string = Some(b("bad"));
    vector(
        &[
            0x40, 0x0A, 0x00, 0x0A, 0x80, 0x06, 0x1F, 0x00, 0x03, b'b', b'a', b'd',
        ],
        V5,
        Packet::PubAck(r),
    );
    vector(
        &[0x50, 0x03, 0x00, 0x0A, 0x10],
        V5,
        Packet::PubRec(resp(10, ReasonCode::NoMatchingSubscribers)),
    );
    vector(
        &[0x62, 0x03, 0x00, 0x0A, 0x92],
        V5,
        Packet::PubRel(resp(10, ReasonCode::PacketIdentifierNotFound)),
    );
    vector(
        &[0x70, 0x02, 0x00, 0x0A],
        V5,
        Packet::PubComp(PubResp::new(10)),
    );
}

#[test]
fn pub_resp_v5_long_forms_decode() {
    // Code and an empty property section spelled out: the encoder's short form is shorter.
    assert_eq!(
        decode_one(&[0x40, 0x04, 0x00, 0x0A, 0x00, 0x00], V5),
        Packet::PubAck(PubResp::new(10))
    );
    assert_eq!(
        decode_one(&[0x70, 0x03, 0x00, 0x0A, 0x00], V5),
        Packet::PubComp(PubResp::new(10))
    );
}

// ---------------------------------------------------------------- SUBSCRIBE / SUBACK

#[test]
fn subscribe_v311_vector() {
    let wire = [
        0x82, 0x0E, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x03, b'c', b'/', b'#',
        0x02,
    ];
    let opts = |qos| SubscriptionOptions {
        qos,
        ..SubscriptionOptions::default()
    };
    vector(
        &wire,
        V311,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: smallvec![
                (b("a/b"), opts(QoS::AtLeastOnce)),
                (b("c/#"), opts(QoS::ExactlyOnce))
            ],
            properties: Properties::default(),
        }),
    );
}

#[test]
fn subscribe_v5_vector() {
    let wire = [
        0x82, 0x09, 0x00, 0x02, 0x02, 0x0B, 0x07, 0x00, 0x01, b'+', 0x2D,
    ];
    vector(
        &wire,
        V5,
        Packet::Subscribe(Subscribe {
            packet_id: 2,
            filters: smallvec![(
                b("+"),
                SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: 2,
                }
            )],
            properties: Properties::from(PropertyValues {
                subscription_identifier: Some(7),
                ..Default::default()
            }),
        }),
    );
}

#[test]
fn suback_vectors() {
    vector(
        &[0x90, 0x05, 0x00, 0x01, 0x00, 0x01, 0x80],
        V311,
        Packet::SubAck(SubAck {
            packet_id: 1,
            codes: smallvec![
                ReasonCode::Success,
                ReasonCode::GrantedQoS1,
                ReasonCode::UnspecifiedError
            ],
            properties: Properties::default(),
        }),
    );
    vector(
        &[0x90, 0x06, 0x00, 0x01, 0x00, 0x02, 0x8F, 0xA2],
        V5,
        Packet::SubAck(SubAck {
            packet_id: 1,
            codes: smallvec![
                ReasonCode::GrantedQoS2,
                ReasonCode::TopicFilterInvalid,
                ReasonCode::WildcardSubscriptionsNotSupported
            ],
            properties: Properties::default(),
        }),
    );
    // 3.x has one failure code.
    encodes_to(
        Packet::SubAck(SubAck {
            packet_id: 1,
            codes: smallvec![ReasonCode::GrantedQoS2, ReasonCode::NotAuthorized],
            properties: Properties::default(),
        }),
        V311,
        &[0x90, 0x04, 0x00, 0x01, 0x02, 0x80],
    );
}

// ---------------------------------------------------------------- UNSUBSCRIBE / UNSUBACK

#[test]
fn unsubscribe_vectors() {
    vector(
        &[
            0xA2, 0x0A, 0x00, 0x03, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01, b'#',
        ],
        V311,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 3,
            filters: smallvec![b("a/b"), b("#")],
            properties: Properties::default(),
        }),
    );
    vector(
        &[
            0xA2, 0x0D, 0x00, 0x03, 0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', 0x00, 0x01,
            b'x',
        ],
        V5,
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 3,
            filters: smallvec![b("x")],
            properties: Properties::from(PropertyValues {
                user_properties: vec![(b("k"), b("v"))],
                ..Default::default()
            }),
        }),
    );
}

#[test]
fn unsuback_vectors() {
    vector(
        &[0xB0, 0x02, 0x00, 0x03],
        V311,
        Packet::UnsubAck(UnsubAck {
            packet_id: 3,
            codes: smallvec![],
            properties: Properties::default(),
        }),
    );
    vector(
        &[0xB0, 0x05, 0x00, 0x03, 0x00, 0x00, 0x11],
        V5,
        Packet::UnsubAck(UnsubAck {
            packet_id: 3,
            codes: smallvec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted],
            properties: Properties::default(),
        }),
    );
    // 3.x has no codes: they are dropped.
    encodes_to(
        Packet::UnsubAck(UnsubAck {
            packet_id: 3,
            codes: smallvec![ReasonCode::Success],
            properties: Properties::default(),
        }),
        V311,
        &[0xB0, 0x02, 0x00, 0x03],
    );
}

// ---------------------------------------------------------------- PING, DISCONNECT, AUTH

#[test]
fn ping_vectors() {
    for version in [V31, V311, V5] {
        vector(&[0xC0, 0x00], version, Packet::PingReq);
        vector(&[0xD0, 0x00], version, Packet::PingResp);
    }
}

fn disconnect(code: ReasonCode) -> Packet {
    Packet::Disconnect(Disconnect {
        code,
        properties: Properties::default(),
    })
}

#[test]
fn disconnect_vectors() {
    vector(&[0xE0, 0x00], V311, disconnect(ReasonCode::Success));
    vector(&[0xE0, 0x00], V31, disconnect(ReasonCode::Success));
    encodes_to(
        disconnect(ReasonCode::ServerShuttingDown),
        V311,
        &[0xE0, 0x00],
    );
    vector(&[0xE0, 0x00], V5, disconnect(ReasonCode::Success));
    vector(
        &[0xE0, 0x01, 0x04],
        V5,
        disconnect(ReasonCode::DisconnectWithWillMessage),
    );
    vector(
        &[0xE0, 0x06, 0x9C, 0x04, 0x1C, 0x00, 0x01, b's'],
        V5,
        Packet::Disconnect(Disconnect {
            code: ReasonCode::UseAnotherServer,
            properties: Properties::from(PropertyValues {
                server_reference: Some(b("s")),
                ..Default::default()
            }),
        }),
    );
    assert_eq!(
        decode_one(&[0xE0, 0x02, 0x00, 0x00], V5),
        disconnect(ReasonCode::Success)
    );
}

#[test]
fn auth_vectors() {
    vector(
        &[0xF0, 0x00],
        V5,
        Packet::Auth(Auth {
            code: ReasonCode::Success,
            properties: Properties::default(),
        }),
    );
    vector(
        &[0xF0, 0x02, 0x18, 0x00],
        V5,
        Packet::Auth(Auth {
            code: ReasonCode::ContinueAuthentication,
            properties: Properties::default(),
        }),
    );
    vector(
        &[
            0xF0, 0x0F, 0x18, 0x0D, 0x15, 0x00, 0x05, b'S', b'C', b'R', b'A', b'M', 0x16, 0x00,
            0x02, 0x01, 0x02,
        ],
        V5,
        Packet::Auth(Auth {
            code: ReasonCode::ContinueAuthentication,
            properties: Properties::from(PropertyValues {
                authentication_method: Some(b("SCRAM")),
                authentication_data: Some(Bytes::from_static(&[1, 2])),
                ..Default::default()
            }),
        }),
    );
}

#[test]
fn disallowed_properties_are_not_encoded() {
    // Topic alias maximum belongs to CONNECT/CONNACK, not PUBACK.
    let mut r = PubResp::new(10);
    r.properties.to_mut().topic_alias_maximum = Some(5);
    encodes_to(Packet::PubAck(r), V5, &[0x40, 0x02, 0x00, 0x0A]);
}
