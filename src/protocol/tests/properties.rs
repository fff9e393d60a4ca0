//! Codec rules on MQTT 5 properties (unknown, misplaced, duplicate, out of range,
//! malformed length) and the one mapping from decode errors to reason codes.

use super::*;

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
    assert_eq!(
        p.properties.rare.subscription_identifiers.as_slice(),
        &[1, 1]
    );
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
        p.properties.rare.subscription_identifiers.as_slice(),
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
    let props = Properties::from(PropertyValues {
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
        ..Default::default()
    });
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

// ------------------------------------------------------------- sizes, sparse sets

/// A decoded PUBLISH moves by value several times on its way (decoder, dispatch,
/// routing): the rare MQTT 5 properties sit behind one pointer, and every other
/// packet's properties too, so those moves copy a few words, not ~400 bytes.
#[test]
fn decoded_packets_stay_a_few_words() {
    use std::mem::size_of;
    assert_eq!(size_of::<Properties>(), 8);
    assert!(
        size_of::<PublishProperties>() <= 24,
        "{}",
        size_of::<PublishProperties>()
    );
    assert!(size_of::<Publish>() <= 96, "{}", size_of::<Publish>());
    assert!(size_of::<Packet>() <= 112, "{}", size_of::<Packet>());
}

/// The common PUBLISH (no rare property) allocates nothing for them, in either
/// version; one rare property allocates the set, and the set round-trips.
#[test]
fn rare_publish_properties_allocate_only_when_present() {
    let Packet::Publish(p) = decode_one(&publish_with(&[0x23, 0x00, 0x01]), V5) else {
        panic!("not a PUBLISH");
    };
    assert_eq!(p.properties.topic_alias, Some(1));
    assert!(p.properties.rare.get().is_none());
    let Packet::Publish(p) = decode_one(&publish_with(&[0x03, 0x00, 0x01, b'j']), V5) else {
        panic!("not a PUBLISH");
    };
    assert_eq!(p.properties.rare.get().unwrap().content_type, Some(b("j")));
    assert!(!p.properties.is_empty());
}

/// An absent set and an allocated empty one are the same properties: equal, empty,
/// and encoded alike (nothing).
#[test]
fn an_allocated_empty_set_equals_an_absent_one() {
    let absent = Properties::default();
    let mut allocated = Properties::default();
    allocated.to_mut().reason_string = Some(b("x"));
    assert_ne!(absent, allocated);
    allocated.to_mut().reason_string = None;
    assert!(allocated.get().is_some());
    assert!(allocated.is_empty());
    assert_eq!(absent, allocated);
    assert_eq!(Properties::from(PropertyValues::default()).get(), None);
    let mut r = resp(1, ReasonCode::UnspecifiedError);
    let plain = encode_to_bytes(&Packet::PubAck(r.clone()), V5);
    r.properties = allocated;
    assert_eq!(encode_to_bytes(&Packet::PubAck(r), V5), plain);
}
