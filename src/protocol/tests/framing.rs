//! Codec rules on framing: partial and oversized frames, remaining length, fixed-header
//! types and flags, packet identifiers, UTF-8 strings.

use super::*;

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
