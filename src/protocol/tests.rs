//! Byte-exact vectors (both directions) and one test per validation rule.

use bytes::{Bytes, BytesMut};
use smallvec::smallvec;

use super::*;

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
    c.properties.session_expiry_interval_s = Some(120);
    c.properties.receive_maximum = Some(10);
    c.will = Some(LastWill {
        topic: b("w"),
        payload: b("x"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties {
            payload_format_indicator: Some(1),
            will_delay_interval_s: Some(5),
            ..Properties::default()
        },
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
            properties: Properties {
                assigned_client_identifier: Some(b("ab")),
                topic_alias_maximum: Some(10),
                maximum_qos: Some(1),
                ..Properties::default()
            },
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
        subscription_identifiers: smallvec![5],
        user_properties: vec![(b("k"), b("v"))],
        ..PublishProperties::default()
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
        content_type: Some(b("j")),
        response_topic: Some(b("r/s")),
        correlation_data: Some(Bytes::from_static(&[1, 2])),
        subscription_identifiers: smallvec![1, 268_435_455],
        ..PublishProperties::default()
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
    r.properties.reason_string = Some(b("bad"));
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
            properties: Properties {
                subscription_identifier: Some(7),
                ..Properties::default()
            },
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
            properties: Properties {
                user_properties: vec![(b("k"), b("v"))],
                ..Properties::default()
            },
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
            properties: Properties {
                server_reference: Some(b("s")),
                ..Properties::default()
            },
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
            properties: Properties {
                authentication_method: Some(b("SCRAM")),
                authentication_data: Some(Bytes::from_static(&[1, 2])),
                ..Properties::default()
            },
        }),
    );
}

#[test]
fn disallowed_properties_are_not_encoded() {
    // Topic alias maximum belongs to CONNECT/CONNACK, not PUBACK.
    let mut r = PubResp::new(10);
    r.properties.topic_alias_maximum = Some(5);
    encodes_to(Packet::PubAck(r), V5, &[0x40, 0x02, 0x00, 0x0A]);
}

// ---------------------------------------------------------------- framing

#[test]
fn incomplete_fixed_header_is_not_an_error() {
    assert_eq!(peek_frame(&[], 100), Ok(None));
    assert_eq!(peek_frame(&[0x30], 100), Ok(None));
    assert_eq!(peek_frame(&[0x30, 0x80], 1_000_000), Ok(None));
    assert_eq!(
        peek_frame(&[0x30, 0x80, 0x80, 0x80], 1_000_000_000),
        Ok(None)
    );
    let mut buf = BytesMut::from(&[0x30, 0x80][..]);
    assert_eq!(decode_packet(&mut buf, V311, 1_000_000), Ok(None));
    assert_eq!(buf.len(), 2);
}

#[test]
fn peek_frame_reports_header() {
    assert_eq!(
        peek_frame(&[0x30, 0xCB, 0x01, 0x00], 1000),
        Ok(Some(FrameHeader {
            first_byte: 0x30,
            remaining_len: 203,
            header_len: 3
        }))
    );
    assert_eq!(
        peek_frame(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], usize::MAX),
        Ok(Some(FrameHeader {
            first_byte: 0x30,
            remaining_len: MAX_REMAINING_LENGTH,
            header_len: 5
        }))
    );
}

#[test]
fn too_large_is_rejected_from_the_fixed_header_alone() {
    assert_eq!(
        peek_frame(&[0x30, 0xFF, 0xFF, 0x7F], 1000),
        Err(DecodeError::PacketTooLarge {
            size: 2_097_155,
            max: 1000
        })
    );
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(
        decode_packet(&mut buf, V311, 1000),
        Err(DecodeError::PacketTooLarge {
            size: 2_097_155,
            max: 1000
        })
    );
    // The whole frame counts: a 12-byte frame fits 12, not 11.
    let wire = [
        0x30, 0x0A, 0x00, 0x03, b'a', b'/', b'b', b'h', b'e', b'l', b'l', b'o',
    ];
    let mut buf = BytesMut::from(&wire[..]);
    assert!(decode_packet(&mut buf, V311, 12).unwrap().is_some());
    let mut buf = BytesMut::from(&wire[..]);
    assert_eq!(
        decode_packet(&mut buf, V311, 11),
        Err(DecodeError::PacketTooLarge { size: 12, max: 11 })
    );
    assert_eq!(
        DecodeError::PacketTooLarge { size: 12, max: 11 }.reason_code(),
        ReasonCode::PacketTooLarge
    );
}

#[test]
fn malformed_remaining_length() {
    // Four continuation bytes: an error once the fourth is visible, before any fifth.
    assert_eq!(
        peek_frame(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF], usize::MAX),
        Err(DecodeError::MalformedRemainingLength)
    );
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x80, 0x80, 0x80][..]);
    assert_eq!(
        decode_packet(&mut buf, V311, usize::MAX),
        Err(DecodeError::MalformedRemainingLength)
    );
    // Non-minimal: 0 spelled with two bytes.
    assert_eq!(
        err(&[0xC0, 0x80, 0x00], V311),
        DecodeError::MalformedRemainingLength
    );
}

#[test]
fn several_packets_in_one_buffer() {
    let mut buf = BytesMut::from(&[0xC0, 0x00, 0x40, 0x02, 0x00, 0x0A, 0xD0][..]);
    assert_eq!(
        decode_packet(&mut buf, V311, 100),
        Ok(Some(Packet::PingReq))
    );
    assert_eq!(
        decode_packet(&mut buf, V311, 100),
        Ok(Some(Packet::PubAck(PubResp::new(10))))
    );
    assert_eq!(decode_packet(&mut buf, V311, 100), Ok(None));
    assert_eq!(&buf[..], &[0xD0]);
}

// ---------------------------------------------------------------- fixed header rules

#[test]
fn invalid_packet_types() {
    assert_eq!(err(&[0x00, 0x00], V5), DecodeError::InvalidPacketType(0));
    assert_eq!(err(&[0xF0, 0x00], V311), DecodeError::InvalidPacketType(15));
    assert_eq!(err(&[0xF0, 0x00], V31), DecodeError::InvalidPacketType(15));
    // Known from the first byte alone.
    assert_eq!(err(&[0x00], V5), DecodeError::InvalidPacketType(0));
}

#[test]
fn reserved_fixed_header_flags() {
    let bad = |first: u8, version| {
        let e = err(&[first], version);
        assert_eq!(
            e,
            DecodeError::InvalidFixedHeaderFlags {
                packet_type: first >> 4,
                flags: first & 0x0F
            },
            "first byte {first:#04x}"
        );
        assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
    };
    for version in [V311, V5] {
        bad(0x60, version); // PUBREL needs 0b0010
        bad(0x80, version); // SUBSCRIBE
        bad(0xA0, version); // UNSUBSCRIBE
        bad(0xA3, version);
        bad(0x11, version);
        bad(0x22, version);
        bad(0x41, version);
        bad(0x58, version);
        bad(0x72, version);
        bad(0x92, version);
        bad(0xB2, version);
        bad(0xC1, version);
        bad(0xD4, version);
        bad(0xE2, version);
    }
    bad(0xF1, V5);
}

#[test]
fn publish_qos3_and_dup_on_qos0() {
    assert_eq!(err(&[0x36], V311), DecodeError::InvalidQoS(3));
    assert_eq!(
        err(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01], V5),
        DecodeError::InvalidQoS(3)
    );
    assert_eq!(
        err(&[0x38, 0x03, 0x00, 0x01, b't'], V311),
        DecodeError::DupOnQoS0
    );
    assert_eq!(
        DecodeError::InvalidQoS(3).reason_code(),
        ReasonCode::MalformedPacket
    );
}

// ---------------------------------------------------------------- packet identifiers

#[test]
fn zero_packet_id() {
    let cases: &[(&[u8], ProtocolVersion)] = &[
        (&[0x32, 0x05, 0x00, 0x01, b't', 0x00, 0x00], V311),
        (&[0x34, 0x06, 0x00, 0x01, b't', 0x00, 0x00, 0x00], V5),
        (&[0x40, 0x02, 0x00, 0x00], V311),
        (&[0x50, 0x02, 0x00, 0x00], V5),
        (&[0x62, 0x02, 0x00, 0x00], V311),
        (&[0x70, 0x02, 0x00, 0x00], V5),
        (&[0x82, 0x06, 0x00, 0x00, 0x00, 0x01, b'a', 0x00], V311),
        (&[0x90, 0x03, 0x00, 0x00, 0x00], V311),
        (&[0xA2, 0x05, 0x00, 0x00, 0x00, 0x01, b'a'], V311),
        (&[0xB0, 0x02, 0x00, 0x00], V311),
    ];
    for (wire, version) in cases {
        assert_eq!(
            err(wire, *version),
            DecodeError::ZeroPacketId,
            "{wire:02x?}"
        );
    }
    assert_eq!(
        DecodeError::ZeroPacketId.reason_code(),
        ReasonCode::ProtocolError
    );
}

// ---------------------------------------------------------------- UTF-8

#[test]
fn invalid_utf8_strings() {
    let cases: &[(&[u8], ProtocolVersion)] = &[
        // PUBLISH topic: invalid byte, U+0000.
        (&[0x30, 0x04, 0x00, 0x02, b'a', 0xFF], V311),
        (&[0x30, 0x04, 0x00, 0x02, b'a', 0x00], V311),
        // Surrogate U+D800 in a topic (ED A0 80).
        (&[0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80], V5),
        // CONNECT client id with U+0000 and with a truncated sequence.
        (
            &[
                0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x02,
                b'a', 0x00,
            ],
            V311,
        ),
        (
            &[
                0x10, 0x0E, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x02,
                b'a', 0xC3,
            ],
            V311,
        ),
        // CONNECT username.
        (
            &[
                0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x82, 0x00, 0x3C, 0x00, 0x00,
                0x00, 0x03, b'u', 0x00, b'v',
            ],
            V311,
        ),
        // SUBSCRIBE filter.
        (&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 0xFE, 0x00], V311),
        // UNSUBSCRIBE filter.
        (&[0xA2, 0x05, 0x00, 0x01, 0x00, 0x01, 0x00], V311),
        // User property key and value (PUBACK), content type (PUBLISH), reason string.
        (
            &[
                0x40, 0x0B, 0x00, 0x01, 0x00, 0x07, 0x26, 0x00, 0x01, 0x00, 0x00, 0x01, b'v',
            ],
            V5,
        ),
        (
            &[
                0x40, 0x0B, 0x00, 0x01, 0x00, 0x07, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, 0xFF,
            ],
            V5,
        ),
        (
            &[0x30, 0x08, 0x00, 0x01, b't', 0x04, 0x03, 0x00, 0x01, 0x00],
            V5,
        ),
        (
            &[0x40, 0x08, 0x00, 0x01, 0x80, 0x04, 0x1F, 0x00, 0x01, 0xC0],
            V5,
        ),
    ];
    for (wire, version) in cases {
        assert_eq!(err(wire, *version), DecodeError::InvalidUtf8, "{wire:02x?}");
    }
    assert_eq!(
        DecodeError::InvalidUtf8.reason_code(),
        ReasonCode::MalformedPacket
    );
}

#[test]
fn non_ascii_utf8_is_accepted() {
    // "é/€" as topic.
    let topic = "é/€".as_bytes();
    let mut wire = vec![0x30, (2 + topic.len()) as u8, 0x00, topic.len() as u8];
    wire.extend_from_slice(topic);
    let Packet::Publish(p) = decode_one(&wire, V311) else {
        panic!("not a publish")
    };
    assert_eq!(&p.topic[..], topic);
}

// ---------------------------------------------------------------- topics and filters

#[test]
fn publish_topic_names() {
    assert_eq!(
        err(&[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'+'], V311),
        DecodeError::InvalidTopicName
    );
    assert_eq!(
        err(&[0x30, 0x05, 0x00, 0x03, b'a', b'/', b'#'], V5),
        DecodeError::InvalidTopicName
    );
    // Wildcard beyond the first 16 bytes (the chunked scan).
    let mut wire = vec![0x30, 22, 0x00, 20];
    wire.extend_from_slice(b"aaaaaaaaaaaaaaaaaa+b");
    assert_eq!(err(&wire, V311), DecodeError::InvalidTopicName);
    // Empty topic: never in 3.x, in 5.0 only with a topic alias.
    assert_eq!(
        err(&[0x30, 0x02, 0x00, 0x00], V311),
        DecodeError::InvalidTopicName
    );
    assert_eq!(
        err(&[0x30, 0x03, 0x00, 0x00, 0x00], V5),
        DecodeError::InvalidTopicName
    );
    assert_eq!(
        err(&[0x30, 0x06, 0x00, 0x00, 0x02, 0x01, 0x00, b'x'], V5),
        DecodeError::InvalidTopicName
    );
    assert_eq!(
        DecodeError::InvalidTopicName.reason_code(),
        ReasonCode::TopicNameInvalid
    );
}

#[test]
fn will_topic_is_a_topic_name() {
    // Will flag, will topic "a/#".
    let wire = [
        0x10, 0x14, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x06, 0x00, 0x3C, 0x00, 0x00, 0x00,
        0x03, b'a', b'/', b'#', 0x00, 0x01, b'x',
    ];
    assert_eq!(err(&wire, V311), DecodeError::InvalidTopicName);
    let wire = [
        0x10, 0x11, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x06, 0x00, 0x3C, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x01, b'x',
    ];
    assert_eq!(err(&wire, V311), DecodeError::InvalidTopicName);
}

fn subscribe_v311(filter: &[u8]) -> Vec<u8> {
    let mut wire = vec![
        0x82,
        (5 + filter.len()) as u8,
        0x00,
        0x01,
        0x00,
        filter.len() as u8,
    ];
    wire.extend_from_slice(filter);
    wire.push(0x00);
    wire
}

fn unsubscribe_v311(filter: &[u8]) -> Vec<u8> {
    let mut wire = vec![
        0xA2,
        (4 + filter.len()) as u8,
        0x00,
        0x01,
        0x00,
        filter.len() as u8,
    ];
    wire.extend_from_slice(filter);
    wire
}

#[test]
fn topic_filters() {
    // Filter well-formedness is the broker's per-filter decision (SUBACK 0x8F / 0x80),
    // not a decode error: these all decode, and come back byte for byte.
    let bad: &[&[u8]] = &[
        b"", b"a/#/b", b"a#", b"#/", b"a/b#", b"a+", b"+a", b"a/+b/c", b"##", b"++",
    ];
    for filter in bad {
        match decode_one(&subscribe_v311(filter), V311) {
            Packet::Subscribe(s) => assert_eq!(&s.filters[0].0[..], *filter, "{filter:?}"),
            other => panic!("expected SUBSCRIBE, got {other:?}"),
        }
        match decode_one(&unsubscribe_v311(filter), V311) {
            Packet::Unsubscribe(u) => assert_eq!(&u.filters[0][..], *filter, "{filter:?}"),
            other => panic!("expected UNSUBSCRIBE, got {other:?}"),
        }
    }
    let good: &[&[u8]] = &[
        b"#",
        b"+",
        b"/",
        b"a/#",
        b"+/+",
        b"/+/",
        b"a//b",
        b"+/#",
        b"$share/g/a/+",
        b"$SYS/#",
    ];
    for filter in good {
        let Packet::Subscribe(s) = decode_one(&subscribe_v311(filter), V311) else {
            panic!()
        };
        assert_eq!(&s.filters[0].0[..], *filter);
        let Packet::Unsubscribe(u) = decode_one(&unsubscribe_v311(filter), V311) else {
            panic!()
        };
        assert_eq!(&u.filters[0][..], *filter);
    }
}

#[test]
fn subscribe_and_unsubscribe_need_filters() {
    assert_eq!(
        err(&[0x82, 0x02, 0x00, 0x01], V311),
        DecodeError::EmptySubscription
    );
    assert_eq!(
        err(&[0x82, 0x03, 0x00, 0x01, 0x00], V5),
        DecodeError::EmptySubscription
    );
    assert_eq!(
        err(&[0xA2, 0x02, 0x00, 0x01], V311),
        DecodeError::EmptySubscription
    );
    assert_eq!(
        err(&[0xA2, 0x03, 0x00, 0x01, 0x00], V5),
        DecodeError::EmptySubscription
    );
    // And their acks need codes.
    assert_eq!(
        err(&[0x90, 0x02, 0x00, 0x01], V311),
        DecodeError::EmptySubscription
    );
    assert_eq!(
        err(&[0xB0, 0x03, 0x00, 0x01, 0x00], V5),
        DecodeError::EmptySubscription
    );
    assert_eq!(
        DecodeError::EmptySubscription.reason_code(),
        ReasonCode::ProtocolError
    );
}

fn subscribe_with_options(options: u8, version: ProtocolVersion) -> Vec<u8> {
    if version.is_v5() {
        vec![0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', options]
    } else {
        vec![0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', options]
    }
}

#[test]
fn subscription_options() {
    use DecodeError::*;
    for options in [0x04, 0x08, 0x10, 0x20, 0x40, 0x80] {
        assert_eq!(
            err(&subscribe_with_options(options, V311), V311),
            InvalidSubscriptionOptions(options)
        );
    }
    assert_eq!(
        err(&subscribe_with_options(0x03, V311), V311),
        InvalidQoS(3)
    );
    assert_eq!(
        err(&subscribe_with_options(0x40, V5), V5),
        InvalidSubscriptionOptions(0x40)
    );
    assert_eq!(
        err(&subscribe_with_options(0x81, V5), V5),
        InvalidSubscriptionOptions(0x81)
    );
    assert_eq!(
        err(&subscribe_with_options(0x30, V5), V5),
        InvalidSubscriptionOptions(0x30)
    );
    assert_eq!(err(&subscribe_with_options(0x03, V5), V5), InvalidQoS(3));
    assert_eq!(
        InvalidSubscriptionOptions(0x30).reason_code(),
        ReasonCode::ProtocolError
    );
    assert_eq!(
        InvalidSubscriptionOptions(0x40).reason_code(),
        ReasonCode::MalformedPacket
    );
    // Every valid 5.0 combination decodes.
    for options in 0..0x30u8 {
        if options & 0x03 == 0x03 {
            continue;
        }
        let Packet::Subscribe(s) = decode_one(&subscribe_with_options(options, V5), V5) else {
            panic!()
        };
        let o = s.filters[0].1;
        assert_eq!(o.qos as u8, options & 3);
        assert_eq!(o.no_local, options & 4 != 0);
        assert_eq!(o.retain_as_published, options & 8 != 0);
        assert_eq!(o.retain_handling, options >> 4);
    }
}

#[test]
fn no_local_on_shared_subscription() {
    let filter = b"$share/g/a";
    let mut wire = vec![
        0x82,
        (6 + filter.len()) as u8,
        0x00,
        0x01,
        0x00,
        0x00,
        filter.len() as u8,
    ];
    wire.extend_from_slice(filter);
    wire.push(0x04);
    assert_eq!(err(&wire, V5), DecodeError::NoLocalOnSharedSubscription);
    assert_eq!(
        DecodeError::NoLocalOnSharedSubscription.reason_code(),
        ReasonCode::ProtocolError
    );
    *wire.last_mut().unwrap() = 0x00;
    assert!(matches!(decode_one(&wire, V5), Packet::Subscribe(_)));
}

// ---------------------------------------------------------------- CONNECT rules

fn connect_with(name: &[u8], level: u8, flags: u8, tail: &[u8]) -> Vec<u8> {
    let mut body = vec![0x00, name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(&[level, flags, 0x00, 0x3C]);
    body.extend_from_slice(tail);
    let mut wire = vec![0x10, body.len() as u8];
    wire.extend_from_slice(&body);
    wire
}

#[test]
fn connect_protocol_name_and_level() {
    use DecodeError::*;
    let id = [0x00, 0x01, b'c'];
    assert_eq!(
        err(&connect_with(b"MQTX", 4, 0x02, &id), V311),
        InvalidProtocolName
    );
    assert_eq!(
        err(&connect_with(b"mqtt", 4, 0x02, &id), V311),
        InvalidProtocolName
    );
    assert_eq!(
        err(&connect_with(b"MQTT", 3, 0x02, &id), V311),
        InvalidProtocolName
    );
    assert_eq!(
        err(&connect_with(b"MQIsdp", 4, 0x02, &id), V311),
        InvalidProtocolName
    );
    assert_eq!(
        err(&connect_with(b"MQIsdp", 5, 0x02, &id), V311),
        InvalidProtocolName
    );
    let e = err(&connect_with(b"MQTT", 6, 0x02, &id), V311);
    assert_eq!(e, UnsupportedProtocolLevel(6));
    assert_eq!(e.reason_code(), ReasonCode::UnsupportedProtocolVersion);
    assert_eq!(e.reason_code().v3_connack_code(), 1);
    // Whatever follows the level is not looked at.
    assert_eq!(
        err(&connect_with(b"MQTT", 0, 0xFF, &[]), V311),
        UnsupportedProtocolLevel(0)
    );
}

#[test]
fn connect_flags() {
    use DecodeError::*;
    let id = [0x00, 0x01, b'c'];
    // Reserved bit.
    assert_eq!(
        err(&connect_with(b"MQTT", 4, 0x03, &id), V311),
        InvalidConnectFlags(0x03)
    );
    assert_eq!(
        err(
            &connect_with(b"MQTT", 5, 0x01, &[0x00, 0x00, 0x01, b'c']),
            V5
        ),
        InvalidConnectFlags(0x01)
    );
    // Will QoS or will retain without the will flag.
    assert_eq!(
        err(&connect_with(b"MQTT", 4, 0x0A, &id), V311),
        InvalidConnectFlags(0x0A)
    );
    assert_eq!(
        err(&connect_with(b"MQTT", 4, 0x12, &id), V311),
        InvalidConnectFlags(0x12)
    );
    assert_eq!(
        err(&connect_with(b"MQTT", 4, 0x22, &id), V311),
        InvalidConnectFlags(0x22)
    );
    // Will QoS 3.
    let will = [0x00, 0x01, b'c', 0x00, 0x01, b't', 0x00, 0x00];
    assert_eq!(
        err(&connect_with(b"MQTT", 4, 0x1E, &will), V311),
        InvalidQoS(3)
    );
    // Password without username: refused in 3.1 and 3.1.1.
    let pw = [0x00, 0x01, b'c', 0x00, 0x01, b'p'];
    assert_eq!(
        err(&connect_with(b"MQTT", 4, 0x42, &pw), V311),
        InvalidConnectFlags(0x42)
    );
    assert_eq!(
        err(&connect_with(b"MQIsdp", 3, 0x42, &pw), V31),
        InvalidConnectFlags(0x42)
    );
    assert_eq!(
        InvalidConnectFlags(0x42).reason_code(),
        ReasonCode::MalformedPacket
    );
}

#[test]
fn connect_fields_must_fit_the_frame() {
    use DecodeError::*;
    // Username flag but no username.
    assert_eq!(
        err(&connect_with(b"MQTT", 4, 0x82, &[0x00, 0x01, b'c']), V311),
        UnexpectedEndOfFrame
    );
    // Client id length past the end.
    assert_eq!(
        err(&connect_with(b"MQTT", 4, 0x02, &[0x00, 0x05, b'c']), V311),
        UnexpectedEndOfFrame
    );
    // A byte after the last field.
    assert_eq!(
        err(
            &connect_with(b"MQTT", 4, 0x02, &[0x00, 0x01, b'c', 0x00]),
            V311
        ),
        TrailingBytes
    );
}

// ---------------------------------------------------------------- CONNACK rules

#[test]
fn connack_flags_and_codes() {
    use DecodeError::*;
    assert_eq!(
        err(&[0x20, 0x02, 0x02, 0x00], V311),
        InvalidConnAckFlags(0x02)
    );
    assert_eq!(
        err(&[0x20, 0x03, 0x80, 0x00, 0x00], V5),
        InvalidConnAckFlags(0x80)
    );
    // Session present with a refusal.
    assert_eq!(
        err(&[0x20, 0x02, 0x01, 0x05], V311),
        InvalidConnAckFlags(0x01)
    );
    assert_eq!(
        err(&[0x20, 0x03, 0x01, 0x87, 0x00], V5),
        InvalidConnAckFlags(0x01)
    );
    assert_eq!(
        err(&[0x20, 0x02, 0x00, 0x06], V311),
        InvalidReasonCode(0x06)
    );
    assert_eq!(
        err(&[0x20, 0x03, 0x00, 0x04, 0x00], V5),
        InvalidReasonCode(0x04)
    );
    assert_eq!(
        err(&[0x20, 0x03, 0x00, 0x8E, 0x00], V5),
        InvalidReasonCode(0x8E)
    );
    assert_eq!(err(&[0x20, 0x03, 0x00, 0x00, 0x00], V311), TrailingBytes);
}

// ---------------------------------------------------------------- reason codes

#[test]
fn reason_codes_must_belong_to_the_packet() {
    use DecodeError::InvalidReasonCode;
    let cases: &[(&[u8], u8)] = &[
        (&[0x40, 0x03, 0x00, 0x01, 0x92], 0x92),
        (&[0x50, 0x03, 0x00, 0x01, 0x05], 0x05),
        (&[0x62, 0x03, 0x00, 0x01, 0x10], 0x10),
        (&[0x70, 0x03, 0x00, 0x01, 0x80], 0x80),
        (&[0x90, 0x04, 0x00, 0x01, 0x00, 0x11], 0x11),
        (&[0xB0, 0x04, 0x00, 0x01, 0x00, 0x02], 0x02),
        (&[0xE0, 0x01, 0x18], 0x18),
        (&[0xE0, 0x01, 0x01], 0x01),
        (&[0xF0, 0x01, 0x04], 0x04),
        (&[0xF0, 0x02, 0x87, 0x00], 0x87),
    ];
    for (wire, code) in cases {
        assert_eq!(err(wire, V5), InvalidReasonCode(*code), "{wire:02x?}");
    }
    // 3.x SUBACK: 0, 1, 2, 0x80 only.
    assert_eq!(
        err(&[0x90, 0x03, 0x00, 0x01, 0x03], V311),
        InvalidReasonCode(0x03)
    );
    assert_eq!(
        err(&[0x90, 0x03, 0x00, 0x01, 0x87], V311),
        InvalidReasonCode(0x87)
    );
    assert_eq!(
        InvalidReasonCode(0x92).reason_code(),
        ReasonCode::MalformedPacket
    );
}

// ---------------------------------------------------------------- trailing bytes / truncation

#[test]
fn trailing_bytes_in_frame() {
    use DecodeError::TrailingBytes;
    assert_eq!(err(&[0xC0, 0x01, 0x00], V311), TrailingBytes);
    assert_eq!(err(&[0xD0, 0x01, 0x00], V5), TrailingBytes);
    assert_eq!(err(&[0x40, 0x03, 0x00, 0x01, 0x00], V311), TrailingBytes);
    assert_eq!(err(&[0x62, 0x03, 0x00, 0x01, 0x00], V31), TrailingBytes);
    assert_eq!(err(&[0xB0, 0x03, 0x00, 0x01, 0x00], V311), TrailingBytes);
    assert_eq!(err(&[0xE0, 0x01, 0x00], V311), TrailingBytes);
    // Property section shorter than the frame: the byte after it in a PUBACK.
    assert_eq!(
        err(&[0x40, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00], V5),
        TrailingBytes
    );
    assert_eq!(err(&[0xE0, 0x03, 0x00, 0x00, 0x00], V5), TrailingBytes);
    assert_eq!(TrailingBytes.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn fields_running_past_the_frame() {
    use DecodeError::UnexpectedEndOfFrame;
    // Topic length 5 in a 3-byte body.
    assert_eq!(
        err(&[0x30, 0x03, 0x00, 0x05, b'a'], V311),
        UnexpectedEndOfFrame
    );
    // QoS 1 without packet id.
    assert_eq!(
        err(&[0x32, 0x03, 0x00, 0x01, b't'], V311),
        UnexpectedEndOfFrame
    );
    // PUBACK with one byte.
    assert_eq!(err(&[0x40, 0x01, 0x00], V311), UnexpectedEndOfFrame);
    // Property length past the frame.
    assert_eq!(
        err(&[0x40, 0x05, 0x00, 0x01, 0x00, 0x05, 0x1F], V5),
        UnexpectedEndOfFrame
    );
    // A property value cut by the end of the property section.
    assert_eq!(
        err(&[0x30, 0x07, 0x00, 0x01, b't', 0x02, 0x02, 0x00, 0x00], V5),
        UnexpectedEndOfFrame
    );
    // SUBSCRIBE filter without options byte.
    assert_eq!(
        err(&[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], V311),
        UnexpectedEndOfFrame
    );
    // CONNACK with one byte.
    assert_eq!(err(&[0x20, 0x01, 0x00], V311), UnexpectedEndOfFrame);
    assert_eq!(
        UnexpectedEndOfFrame.reason_code(),
        ReasonCode::MalformedPacket
    );
}

// ---------------------------------------------------------------- properties

/// A v5 PUBACK (code 0x80) carrying the given property bytes.
fn puback_with(props: &[u8]) -> Vec<u8> {
    let mut wire = vec![
        0x40,
        (4 + props.len()) as u8,
        0x00,
        0x01,
        0x80,
        props.len() as u8,
    ];
    wire.extend_from_slice(props);
    wire
}

/// A v5 CONNECT (client id "c") carrying the given property bytes.
fn connect_v5_with(props: &[u8]) -> Vec<u8> {
    let mut tail = vec![props.len() as u8];
    tail.extend_from_slice(props);
    tail.extend_from_slice(&[0x00, 0x01, b'c']);
    connect_with(b"MQTT", 5, 0x02, &tail)
}

/// A v5 CONNACK (Success) carrying the given property bytes.
fn connack_with(props: &[u8]) -> Vec<u8> {
    let mut wire = vec![0x20, (3 + props.len()) as u8, 0x00, 0x00, props.len() as u8];
    wire.extend_from_slice(props);
    wire
}

/// A v5 QoS 0 PUBLISH to "t" carrying the given property bytes.
fn publish_with(props: &[u8]) -> Vec<u8> {
    let mut wire = vec![
        0x30,
        (4 + props.len()) as u8,
        0x00,
        0x01,
        b't',
        props.len() as u8,
    ];
    wire.extend_from_slice(props);
    wire
}

#[test]
fn unknown_and_misplaced_properties() {
    use DecodeError::InvalidProperty;
    assert_eq!(err(&puback_with(&[0x05, 0x00]), V5), InvalidProperty(0x05));
    assert_eq!(err(&puback_with(&[0x7F, 0x00]), V5), InvalidProperty(0x7F));
    assert_eq!(err(&puback_with(&[0xFF, 0x00]), V5), InvalidProperty(0xFF));
    assert_eq!(
        err(&puback_with(&[0x11, 0x00, 0x00, 0x00, 0x01]), V5),
        InvalidProperty(0x11)
    );
    assert_eq!(
        err(&connect_v5_with(&[0x23, 0x00, 0x01]), V5),
        InvalidProperty(0x23)
    );
    assert_eq!(
        err(&connect_v5_with(&[0x1F, 0x00, 0x00]), V5),
        InvalidProperty(0x1F)
    );
    assert_eq!(
        err(&publish_with(&[0x11, 0x00, 0x00, 0x00, 0x01]), V5),
        InvalidProperty(0x11)
    );
    assert_eq!(err(&connack_with(&[0x17, 0x01]), V5), InvalidProperty(0x17));
    // Subscription identifier belongs to SUBSCRIBE, not UNSUBSCRIBE.
    assert_eq!(
        err(
            &[0xA2, 0x08, 0x00, 0x01, 0x02, 0x0B, 0x01, 0x00, 0x01, b'a'][..],
            V5
        ),
        InvalidProperty(0x0B)
    );
    // Will delay belongs to will properties, not CONNECT properties.
    assert_eq!(
        err(&connect_v5_with(&[0x18, 0x00, 0x00, 0x00, 0x01]), V5),
        InvalidProperty(0x18)
    );
    assert_eq!(
        InvalidProperty(0x05).reason_code(),
        ReasonCode::MalformedPacket
    );
}

#[test]
fn duplicate_properties() {
    use DecodeError::DuplicateProperty;
    assert_eq!(
        err(&connect_v5_with(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]), V5),
        DuplicateProperty(0x11)
    );
    assert_eq!(
        err(&puback_with(&[0x1F, 0, 0, 0x1F, 0, 0]), V5),
        DuplicateProperty(0x1F)
    );
    assert_eq!(
        err(&publish_with(&[0x23, 0, 1, 0x23, 0, 1]), V5),
        DuplicateProperty(0x23)
    );
    assert_eq!(
        err(&publish_with(&[0x01, 0, 0x01, 0]), V5),
        DuplicateProperty(0x01)
    );
    // A second subscription identifier on SUBSCRIBE.
    assert_eq!(
        err(
            &[0x82, 0x0B, 0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, b'a', 0x00][..],
            V5
        ),
        DuplicateProperty(0x0B)
    );
    assert_eq!(
        DuplicateProperty(0x11).reason_code(),
        ReasonCode::ProtocolError
    );
    // User properties repeat anywhere, subscription identifiers on PUBLISH.
    let Packet::PubAck(r) = decode_one(
        &puback_with(&[0x26, 0, 1, b'a', 0, 0, 0x26, 0, 1, b'a', 0, 1, b'b']),
        V5,
    ) else {
        panic!()
    };
    assert_eq!(
        r.properties.user_properties,
        vec![(b("a"), b("")), (b("a"), b("b"))]
    );
    let Packet::Publish(p) = decode_one(&publish_with(&[0x0B, 0x01, 0x0B, 0x01]), V5) else {
        panic!()
    };
    assert_eq!(p.properties.subscription_identifiers.as_slice(), &[1, 1]);
}

#[test]
fn property_values_out_of_range() {
    use DecodeError::InvalidPropertyValue as V;
    assert_eq!(err(&connect_v5_with(&[0x21, 0x00, 0x00]), V5), V(0x21));
    assert_eq!(err(&connack_with(&[0x21, 0x00, 0x00]), V5), V(0x21));
    assert_eq!(err(&connect_v5_with(&[0x27, 0, 0, 0, 0]), V5), V(0x27));
    assert_eq!(err(&connack_with(&[0x27, 0, 0, 0, 0]), V5), V(0x27));
    assert_eq!(err(&connect_v5_with(&[0x17, 0x02]), V5), V(0x17));
    assert_eq!(err(&connect_v5_with(&[0x19, 0x02]), V5), V(0x19));
    assert_eq!(err(&connack_with(&[0x24, 0x02]), V5), V(0x24));
    assert_eq!(err(&connack_with(&[0x25, 0x02]), V5), V(0x25));
    assert_eq!(err(&connack_with(&[0x28, 0x02]), V5), V(0x28));
    assert_eq!(err(&connack_with(&[0x29, 0xFF]), V5), V(0x29));
    assert_eq!(err(&connack_with(&[0x2A, 0x02]), V5), V(0x2A));
    assert_eq!(err(&publish_with(&[0x01, 0x02]), V5), V(0x01));
    assert_eq!(err(&publish_with(&[0x0B, 0x00]), V5), V(0x0B));
    assert_eq!(err(&publish_with(&[0x23, 0x00, 0x00]), V5), V(0x23));
    assert_eq!(err(&publish_with(&[0x08, 0x00, 0x01, b'#']), V5), V(0x08));
    assert_eq!(err(&publish_with(&[0x08, 0x00, 0x00]), V5), V(0x08));
    assert_eq!(
        err(
            &[0x82, 0x09, 0x00, 0x01, 0x02, 0x0B, 0x00, 0x00, 0x01, b'a', 0x00][..],
            V5
        ),
        V(0x0B)
    );
    // Authentication data needs an authentication method.
    assert_eq!(
        err(&connect_v5_with(&[0x16, 0x00, 0x01, 0xAB]), V5),
        V(0x16)
    );
    assert_eq!(
        err(&[0xF0, 0x06, 0x18, 0x04, 0x16, 0x00, 0x01, 0xAB][..], V5),
        V(0x16)
    );
    // Will properties: payload format indicator 2.
    let tail = [
        0x00, 0x00, 0x01, b'c', 0x02, 0x01, 0x02, 0x00, 0x01, b't', 0x00, 0x00,
    ];
    assert_eq!(err(&connect_with(b"MQTT", 5, 0x06, &tail), V5), V(0x01));
    assert_eq!(V(0x21).reason_code(), ReasonCode::ProtocolError);
    assert_eq!(V(0x23).reason_code(), ReasonCode::TopicAliasInvalid);
    // The largest subscription identifier is accepted; a fifth VBI byte is not.
    let Packet::Publish(p) = decode_one(&publish_with(&[0x0B, 0xFF, 0xFF, 0xFF, 0x7F]), V5) else {
        panic!()
    };
    assert_eq!(
        p.properties.subscription_identifiers.as_slice(),
        &[268_435_455]
    );
    assert_eq!(
        err(&publish_with(&[0x0B, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), V5),
        DecodeError::MalformedVariableByteInteger
    );
}

#[test]
fn malformed_property_length() {
    // Property length 0 spelled in two bytes, and five continuation bytes.
    assert_eq!(
        err(&[0x40, 0x05, 0x00, 0x01, 0x80, 0x80, 0x00], V5),
        DecodeError::MalformedVariableByteInteger
    );
    assert_eq!(
        err(&[0x40, 0x07, 0x00, 0x01, 0x80, 0xFF, 0xFF, 0xFF, 0xFF], V5),
        DecodeError::MalformedVariableByteInteger
    );
    assert_eq!(
        DecodeError::MalformedVariableByteInteger.reason_code(),
        ReasonCode::MalformedPacket
    );
}

#[test]
fn all_properties_of_connack_round_trip() {
    let props = Properties {
        session_expiry_interval_s: Some(1),
        assigned_client_identifier: Some(b("id")),
        server_keep_alive_s: Some(30),
        authentication_method: Some(b("m")),
        authentication_data: Some(Bytes::from_static(&[0, 0xFF])),
        response_information: Some(b("ri")),
        server_reference: Some(b("sr")),
        reason_string: Some(b("rs")),
        receive_maximum: Some(100),
        topic_alias_maximum: Some(0),
        maximum_qos: Some(0),
        retain_available: Some(1),
        user_properties: vec![(b("k"), b("v")), (b("k"), b("w"))],
        maximum_packet_size: Some(1 << 20),
        wildcard_subscription_available: Some(0),
        subscription_identifier_available: Some(1),
        shared_subscription_available: Some(0),
        ..Properties::default()
    };
    let packet = Packet::ConnAck(ConnAck {
        session_present: true,
        code: ReasonCode::Success,
        properties: props,
    });
    let wire = encode_to_bytes(&packet, V5);
    assert_eq!(wire.len(), encoded_len(&packet, V5));
    assert_eq!(decode_one(&wire, V5), packet);
}

// ---------------------------------------------------------------- reason code mapping

#[test]
fn every_error_maps_to_one_reason_code() {
    use DecodeError::*;
    use ReasonCode as R;
    let cases = [
        (MalformedRemainingLength, R::MalformedPacket),
        (PacketTooLarge { size: 2, max: 1 }, R::PacketTooLarge),
        (InvalidPacketType(0), R::ProtocolError),
        (
            InvalidFixedHeaderFlags {
                packet_type: 6,
                flags: 0,
            },
            R::MalformedPacket,
        ),
        (UnexpectedEndOfFrame, R::MalformedPacket),
        (TrailingBytes, R::MalformedPacket),
        (InvalidUtf8, R::MalformedPacket),
        (InvalidProtocolName, R::UnsupportedProtocolVersion),
        (UnsupportedProtocolLevel(6), R::UnsupportedProtocolVersion),
        (InvalidConnectFlags(1), R::MalformedPacket),
        (InvalidQoS(3), R::MalformedPacket),
        (ZeroPacketId, R::ProtocolError),
        (InvalidTopicName, R::TopicNameInvalid),
        (EmptySubscription, R::ProtocolError),
        (InvalidSubscriptionOptions(0x30), R::ProtocolError),
        (InvalidSubscriptionOptions(0xC0), R::MalformedPacket),
        (InvalidProperty(5), R::MalformedPacket),
        (DuplicateProperty(0x11), R::ProtocolError),
        (InvalidPropertyValue(0x21), R::ProtocolError),
        (InvalidPropertyValue(0x23), R::TopicAliasInvalid),
        (InvalidReasonCode(0x05), R::MalformedPacket),
        (DupOnQoS0, R::MalformedPacket),
        (MalformedVariableByteInteger, R::MalformedPacket),
        (InvalidConnAckFlags(2), R::MalformedPacket),
        (NoLocalOnSharedSubscription, R::ProtocolError),
    ];
    for (e, code) in cases {
        assert_eq!(e.reason_code(), code, "{e}");
        assert!(
            code.is_valid_for(PacketType::Disconnect) || code == R::UnsupportedProtocolVersion,
            "{e}"
        );
        assert!(
            code.is_valid_for(PacketType::ConnAck) || code == R::TopicAliasInvalid,
            "{e}"
        );
    }
}
