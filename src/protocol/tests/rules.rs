//! Codec rules on CONNECT and CONNACK fields, reason codes per packet, and trailing
//! or truncated bytes inside a frame.

use super::*;

// ---------------------------------------------------------------- CONNECT rules

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
