//! Codec rules on topic names and filters, SUBSCRIBE/UNSUBSCRIBE payloads and
//! subscription options.

use super::*;

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
