//! Property tests: every message decodes to itself after encoding, `encoded_len` is
//! exact, and arbitrary datagrams never panic the decoder.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use proptest::sample::select;

use super::*;

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn non_empty(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 1..max).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![
        QoS::AtMostOnce,
        QoS::AtLeastOnce,
        QoS::ExactlyOnce,
        QoS::MinusOne,
    ])
}

fn qos012() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn will() -> impl Strategy<Value = WillTopic> {
    (qos012(), any::<bool>(), non_empty(40)).prop_map(|(qos, retain, topic)| WillTopic {
        qos,
        retain,
        topic,
    })
}

fn code() -> impl Strategy<Value = ReturnCode> {
    any::<u8>().prop_map(ReturnCode::from_u8)
}

fn topic_ref() -> impl Strategy<Value = TopicRef> {
    prop_oneof![
        any::<u16>().prop_map(TopicRef::Normal),
        any::<u16>().prop_map(TopicRef::Predefined),
        any::<[u8; 2]>().prop_map(TopicRef::Short),
    ]
}

fn sub_topic() -> impl Strategy<Value = SubTopic> {
    prop_oneof![
        non_empty(40).prop_map(SubTopic::Name),
        any::<u16>().prop_map(SubTopic::Predefined),
        any::<[u8; 2]>().prop_map(SubTopic::Short),
    ]
}

/// Every message type; payloads reach past 255 octets so both length forms occur.
fn message() -> impl Strategy<Value = Message> {
    use Message as M;
    let plain = prop_oneof![
        (any::<u8>(), any::<u16>()).prop_map(|(gw_id, duration)| M::Advertise { gw_id, duration }),
        any::<u8>().prop_map(|radius| M::SearchGw { radius }),
        (any::<u8>(), bytes(20)).prop_map(|(gw_id, gw_add)| M::GwInfo { gw_id, gw_add }),
        (any::<bool>(), any::<bool>(), any::<u16>(), bytes(30)).prop_map(|(w, c, d, id)| {
            M::Connect {
                will: w,
                clean_session: c,
                duration: d,
                client_id: id,
            }
        }),
        code().prop_map(|code| M::ConnAck { code }),
        Just(M::WillTopicReq),
        of(will()).prop_map(M::WillTopic),
        Just(M::WillMsgReq),
        bytes(300).prop_map(|msg| M::WillMsg { msg }),
        (any::<u16>(), any::<u16>(), non_empty(300)).prop_map(|(t, m, n)| M::Register {
            topic_id: t,
            msg_id: m,
            topic_name: n
        }),
        (any::<u16>(), any::<u16>(), code()).prop_map(|(topic_id, msg_id, code)| M::RegAck {
            topic_id,
            msg_id,
            code
        }),
        (
            any::<bool>(),
            qos(),
            any::<bool>(),
            topic_ref(),
            any::<u16>(),
            bytes(600)
        )
            .prop_map(|(dup, qos, retain, topic, msg_id, data)| M::Publish {
                dup,
                qos,
                retain,
                topic,
                msg_id,
                data
            }),
        (any::<u16>(), any::<u16>(), code()).prop_map(|(topic_id, msg_id, code)| M::PubAck {
            topic_id,
            msg_id,
            code
        }),
    ];
    let more = prop_oneof![
        any::<u16>().prop_map(|msg_id| M::PubRec { msg_id }),
        any::<u16>().prop_map(|msg_id| M::PubRel { msg_id }),
        any::<u16>().prop_map(|msg_id| M::PubComp { msg_id }),
        (any::<bool>(), qos012(), any::<u16>(), sub_topic()).prop_map(
            |(dup, qos, msg_id, topic)| M::Subscribe {
                dup,
                qos,
                msg_id,
                topic
            }
        ),
        (qos012(), any::<u16>(), any::<u16>(), code()).prop_map(|(qos, topic_id, msg_id, code)| {
            M::SubAck {
                qos,
                topic_id,
                msg_id,
                code,
            }
        }),
        (any::<u16>(), sub_topic()).prop_map(|(msg_id, topic)| M::Unsubscribe { msg_id, topic }),
        any::<u16>().prop_map(|msg_id| M::UnsubAck { msg_id }),
        of(non_empty(24)).prop_map(|client_id| M::PingReq { client_id }),
        Just(M::PingResp),
        of(any::<u16>()).prop_map(|duration| M::Disconnect { duration }),
        of(will()).prop_map(M::WillTopicUpd),
        code().prop_map(|code| M::WillTopicResp { code }),
        bytes(300).prop_map(|msg| M::WillMsgUpd { msg }),
        code().prop_map(|code| M::WillMsgResp { code }),
    ];
    prop_oneof![plain, more]
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(m in message()) {
        let wire = encode_to_bytes(&m).unwrap();
        prop_assert_eq!(wire.len(), encoded_len(&m));
        prop_assert_eq!(decode(&wire), Ok(m));
    }

    #[test]
    fn encapsulated_identity(radius in 0u8..4, node in bytes(8), m in message()) {
        let inner = encode_to_bytes(&m).unwrap();
        let e = Message::Encapsulated { radius, node_id: node, inner };
        let wire = encode_to_bytes(&e).unwrap();
        prop_assert_eq!(wire.len(), encoded_len(&e));
        prop_assert_eq!(decode(&wire), Ok(e));
    }

    #[test]
    fn arbitrary_datagrams_never_panic(data in vec(any::<u8>(), 0..400)) {
        check_roundtrip(&data);
    }

    /// A valid datagram with its first bytes kept and a correct length octet still
    /// only decodes or errs: truncation is never a panic.
    #[test]
    fn truncated_messages_are_errors(m in message(), cut in 0usize..64) {
        let wire = encode_to_bytes(&m).unwrap();
        let n = wire.len().saturating_sub(cut).max(1);
        let mut t = wire[..n].to_vec();
        if t[0] != 0x01 {
            t[0] = n as u8;
        }
        check_roundtrip(&t);
    }
}
