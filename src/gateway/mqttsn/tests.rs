//! Byte-exact vectors for every MQTT-SN 1.2 message, named by spec section, and the
//! decoder's refusals. Each vector is checked both ways: decode(bytes) == message and
//! encode(message) == bytes.

use bytes::Bytes;

use super::*;

fn b(s: &'static [u8]) -> Bytes {
    Bytes::from_static(s)
}

fn both_ways(wire: &'static [u8], m: Message) {
    assert_eq!(decode(&b(wire)), Ok(m.clone()), "decode {wire:02x?}");
    assert_eq!(encode_to_bytes(&m).unwrap(), b(wire), "encode {m:?}");
    assert_eq!(encoded_len(&m), wire.len());
}

#[test]
fn s5_4_1_advertise() {
    both_ways(
        &[5, 0x00, 7, 0x03, 0x84],
        Message::Advertise {
            gw_id: 7,
            duration: 900,
        },
    );
}

#[test]
fn s5_4_2_searchgw() {
    both_ways(&[3, 0x01, 1], Message::SearchGw { radius: 1 });
}

#[test]
fn s5_4_3_gwinfo_from_gateway_and_from_client() {
    both_ways(
        &[3, 0x02, 9],
        Message::GwInfo {
            gw_id: 9,
            gw_add: Bytes::new(),
        },
    );
    both_ways(
        &[7, 0x02, 9, 127, 0, 0, 1],
        Message::GwInfo {
            gw_id: 9,
            gw_add: b(&[127, 0, 0, 1]),
        },
    );
}

#[test]
fn s5_4_4_connect_flags_protocol_id_duration_client_id() {
    // Flags: Will (0x08) | CleanSession (0x04); ProtocolId 0x01; Duration 60.
    both_ways(
        b"\x0b\x04\x0c\x01\x00\x3csn-01",
        Message::Connect {
            will: true,
            clean_session: true,
            duration: 60,
            client_id: b(b"sn-01"),
        },
    );
    assert_eq!(
        decode(&b(b"\x0b\x04\x0c\x02\x00\x3csn-01")),
        Err(SnDecodeError::InvalidProtocolId(2))
    );
}

#[test]
fn s5_4_5_connack_and_5_3_10_return_codes() {
    for (code, rc) in [
        (0u8, ReturnCode::Accepted),
        (1, ReturnCode::Congestion),
        (2, ReturnCode::InvalidTopicId),
        (3, ReturnCode::NotSupported),
        (0x42, ReturnCode::Other(0x42)),
    ] {
        let wire: &'static [u8] = Box::leak(Box::new([3, 0x05, code]));
        both_ways(wire, Message::ConnAck { code: rc });
    }
}

#[test]
fn s5_4_6_to_5_4_9_will_handshake() {
    both_ways(&[2, 0x06], Message::WillTopicReq);
    // QoS 1 (0x20) | Retain (0x10).
    both_ways(
        b"\x07\x07\x30last",
        Message::WillTopic(Some(WillTopic {
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: b(b"last"),
        })),
    );
    // The empty WILLTOPIC (exactly 2 octets) deletes the will.
    both_ways(&[2, 0x07], Message::WillTopic(None));
    both_ways(&[2, 0x08], Message::WillMsgReq);
    both_ways(b"\x05\x09bye", Message::WillMsg { msg: b(b"bye") });
    assert_eq!(
        decode(&b(b"\x07\x07\x60last")),
        Err(SnDecodeError::InvalidQoS)
    );
    assert_eq!(
        decode(&b(b"\x03\x07\x20")),
        Err(SnDecodeError::InvalidTopic)
    );
}

#[test]
fn s5_4_10_register_and_5_4_11_regack() {
    both_ways(
        b"\x0b\x0a\x00\x00\x00\x01a/b/c",
        Message::Register {
            topic_id: 0,
            msg_id: 1,
            topic_name: b(b"a/b/c"),
        },
    );
    both_ways(
        &[7, 0x0B, 0x00, 0x05, 0x00, 0x01, 0x00],
        Message::RegAck {
            topic_id: 5,
            msg_id: 1,
            code: ReturnCode::Accepted,
        },
    );
    assert_eq!(
        decode(&b(&[6, 0x0A, 0, 0, 0, 1])),
        Err(SnDecodeError::InvalidTopic)
    );
}

#[test]
fn s5_4_12_publish_each_qos_and_topic_id_type() {
    // QoS 0, normal id 5, msg id 0.
    both_ways(
        b"\x09\x0c\x00\x00\x05\x00\x00hi",
        Message::Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: TopicRef::Normal(5),
            msg_id: 0,
            data: b(b"hi"),
        },
    );
    // DUP | QoS 2 | Retain, predefined id 0x0102, msg id 7.
    both_ways(
        b"\x08\x0c\xd1\x01\x02\x00\x07x",
        Message::Publish {
            dup: true,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: TopicRef::Predefined(0x0102),
            msg_id: 7,
            data: b(b"x"),
        },
    );
    // QoS −1 (0x60), short topic "ab".
    both_ways(
        b"\x07\x0c\x62ab\x00\x00",
        Message::Publish {
            dup: false,
            qos: QoS::MinusOne,
            retain: false,
            topic: TopicRef::Short(*b"ab"),
            msg_id: 0,
            data: Bytes::new(),
        },
    );
    // QoS 1 (0x20), normal id.
    both_ways(
        b"\x08\x0c\x20\x00\x09\x12\x34z",
        Message::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: TopicRef::Normal(9),
            msg_id: 0x1234,
            data: b(b"z"),
        },
    );
    assert_eq!(
        decode(&b(b"\x07\x0c\x03ab\x00\x00")),
        Err(SnDecodeError::ReservedTopicIdType)
    );
}

#[test]
fn s5_4_13_puback_and_5_4_14_pubrec_pubrel_pubcomp() {
    both_ways(
        &[7, 0x0D, 0, 5, 0, 9, 2],
        Message::PubAck {
            topic_id: 5,
            msg_id: 9,
            code: ReturnCode::InvalidTopicId,
        },
    );
    both_ways(&[4, 0x0F, 0, 9], Message::PubRec { msg_id: 9 });
    both_ways(&[4, 0x10, 0, 9], Message::PubRel { msg_id: 9 });
    both_ways(&[4, 0x0E, 0, 9], Message::PubComp { msg_id: 9 });
}

#[test]
fn s5_4_15_subscribe_name_predefined_short_and_5_4_16_suback() {
    both_ways(
        b"\x08\x12\x20\x00\x01a/#",
        Message::Subscribe {
            dup: false,
            qos: QoS::AtLeastOnce,
            msg_id: 1,
            topic: SubTopic::Name(b(b"a/#")),
        },
    );
    both_ways(
        &[7, 0x12, 0xC1, 0, 2, 0, 7],
        Message::Subscribe {
            dup: true,
            qos: QoS::ExactlyOnce,
            msg_id: 2,
            topic: SubTopic::Predefined(7),
        },
    );
    both_ways(
        b"\x07\x12\x02\x00\x03zz",
        Message::Subscribe {
            dup: false,
            qos: QoS::AtMostOnce,
            msg_id: 3,
            topic: SubTopic::Short(*b"zz"),
        },
    );
    both_ways(
        &[8, 0x13, 0x20, 0, 5, 0, 1, 0],
        Message::SubAck {
            qos: QoS::AtLeastOnce,
            topic_id: 5,
            msg_id: 1,
            code: ReturnCode::Accepted,
        },
    );
    assert_eq!(
        decode(&b(b"\x08\x12\x60\x00\x01a/#")),
        Err(SnDecodeError::InvalidQoS)
    );
    assert_eq!(
        decode(&b(&[5, 0x12, 0x00, 0, 1])),
        Err(SnDecodeError::InvalidTopic)
    );
    assert_eq!(
        decode(&b(&[6, 0x12, 0x01, 0, 1, 7])),
        Err(SnDecodeError::UnexpectedEnd)
    );
}

#[test]
fn s5_4_17_unsubscribe_and_5_4_18_unsuback() {
    both_ways(
        b"\x08\x14\x00\x00\x04a/+",
        Message::Unsubscribe {
            msg_id: 4,
            topic: SubTopic::Name(b(b"a/+")),
        },
    );
    both_ways(
        &[7, 0x14, 0x01, 0, 4, 0, 8],
        Message::Unsubscribe {
            msg_id: 4,
            topic: SubTopic::Predefined(8),
        },
    );
    both_ways(&[4, 0x15, 0, 4], Message::UnsubAck { msg_id: 4 });
}

#[test]
fn s5_4_19_pingreq_with_and_without_client_id_and_5_4_20_pingresp() {
    both_ways(&[2, 0x16], Message::PingReq { client_id: None });
    both_ways(
        b"\x06\x16dev1",
        Message::PingReq {
            client_id: Some(b(b"dev1")),
        },
    );
    both_ways(&[2, 0x17], Message::PingResp);
}

#[test]
fn s5_4_21_disconnect_with_and_without_duration() {
    both_ways(&[2, 0x18], Message::Disconnect { duration: None });
    both_ways(
        &[4, 0x18, 0x0E, 0x10],
        Message::Disconnect {
            duration: Some(3600),
        },
    );
    assert_eq!(
        decode(&b(&[3, 0x18, 0x0E])),
        Err(SnDecodeError::UnexpectedEnd)
    );
}

#[test]
fn s5_4_22_to_5_4_25_will_updates() {
    both_ways(
        b"\x05\x1a\x40t/",
        Message::WillTopicUpd(Some(WillTopic {
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: b(b"t/"),
        })),
    );
    both_ways(&[2, 0x1A], Message::WillTopicUpd(None));
    both_ways(
        &[3, 0x1B, 0],
        Message::WillTopicResp {
            code: ReturnCode::Accepted,
        },
    );
    both_ways(b"\x04\x1cmm", Message::WillMsgUpd { msg: b(b"mm") });
    both_ways(
        &[3, 0x1D, 3],
        Message::WillMsgResp {
            code: ReturnCode::NotSupported,
        },
    );
}

#[test]
fn s5_5_forwarder_encapsulation() {
    // Length 5 covers Length, MsgType 0xFE, Ctrl (radius 1) and a 2-octet node id;
    // the inner PINGREQ follows.
    both_ways(
        &[5, 0xFE, 0x01, 0xAA, 0xBB, 2, 0x16],
        Message::Encapsulated {
            radius: 1,
            node_id: b(&[0xAA, 0xBB]),
            inner: b(&[2, 0x16]),
        },
    );
    // A wrapper around garbage or around another wrapper is refused.
    assert_eq!(
        decode(&b(&[3, 0xFE, 0x01, 2, 0x03])),
        Err(SnDecodeError::ReservedMsgType(3))
    );
    assert_eq!(
        decode(&b(&[3, 0xFE, 0x01, 3, 0xFE, 0x01, 2, 0x16])),
        Err(SnDecodeError::NestedEncapsulation)
    );
}

#[test]
fn s5_2_1_three_octet_length_form() {
    // A 300-octet PUBLISH must use 0x01 + 2-octet length.
    let data = Bytes::from(vec![b'p'; 300 - 9]);
    let m = Message::Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: TopicRef::Normal(1),
        msg_id: 0,
        data,
    };
    let wire = encode_to_bytes(&m).unwrap();
    assert_eq!(wire.len(), 300);
    assert_eq!(&wire[..4], &[0x01, 0x01, 0x2C, 0x0C]);
    assert_eq!(decode(&wire), Ok(m));
    // The 3-octet form "may" also carry a short message; the encoder uses 1 octet.
    assert_eq!(
        decode(&b(&[0x01, 0x00, 0x04, 0x16])),
        Ok(Message::PingReq { client_id: None })
    );
    // The boundary: 255 octets is 1-octet form, 256 is 3-octet form.
    for (len, first) in [(255usize, 255u8), (256, 0x01)] {
        let m = Message::WillMsg {
            msg: Bytes::from(vec![0; len - 2]),
        };
        let wire = encode_to_bytes(&m).unwrap();
        let want = if len == 255 { len } else { len + 2 };
        assert_eq!((wire.len(), wire[0]), (want, first));
        assert_eq!(decode(&wire), Ok(m));
    }
}

#[test]
fn s5_2_1_too_long_refused_by_encoder() {
    let m = Message::WillMsg {
        msg: Bytes::from(vec![0; MAX_MESSAGE_LEN]),
    };
    assert_eq!(
        encode_to_bytes(&m),
        Err(SnEncodeError::TooLong(MAX_MESSAGE_LEN + 4))
    );
}

#[test]
fn s5_2_bad_headers_are_errors_not_panics() {
    assert_eq!(decode(&Bytes::new()), Err(SnDecodeError::TooShort));
    assert_eq!(decode(&b(&[2])), Err(SnDecodeError::TooShort));
    assert_eq!(
        decode(&b(&[0x01, 0x00, 0x04])),
        Err(SnDecodeError::TooShort)
    );
    assert_eq!(decode(&b(&[0, 0x16])), Err(SnDecodeError::InvalidLength(0)));
    assert_eq!(
        decode(&b(&[0x01, 0x00, 0x03, 0x16])),
        Err(SnDecodeError::InvalidLength(3))
    );
    assert_eq!(
        decode(&b(&[3, 0x16])),
        Err(SnDecodeError::LengthMismatch {
            declared: 3,
            actual: 2
        })
    );
    assert_eq!(
        decode(&b(&[2, 0x17, 0])),
        Err(SnDecodeError::LengthMismatch {
            declared: 2,
            actual: 3
        })
    );
    for reserved in [0x03u8, 0x11, 0x19, 0x1E, 0x80, 0xFD, 0xFF] {
        assert_eq!(
            decode(&Bytes::from(vec![2, reserved])),
            Err(SnDecodeError::ReservedMsgType(reserved))
        );
    }
    assert_eq!(decode(&b(&[3, 0x17, 0])), Err(SnDecodeError::TrailingBytes));
    assert_eq!(
        decode(&b(&[5, 0x0F, 0, 1, 0])),
        Err(SnDecodeError::TrailingBytes)
    );
}

/// The fuzz seeds are conformance vectors too: each must decode or fail without a
/// panic, and whatever decodes must survive encode → decode unchanged.
#[test]
fn fuzz_seeds_replay() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fuzz/seeds/sn_decode");
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{dir}: {e}"));
    let mut n = 0;
    for e in entries {
        let data = std::fs::read(e.unwrap().path()).unwrap();
        check_roundtrip(&data);
        n += 1;
    }
    assert!(n >= 20, "only {n} seeds in {dir}");
}
