//! The codec's one error enum ([`DecodeError`]) and its single mapping to reason codes.

use super::reason::ReasonCode;

/// Everything that can be wrong with bytes on the wire. The one mapping to a reason
/// code is [`DecodeError::reason_code`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Remaining length encoded in more than 4 bytes or non-minimally terminated.
    MalformedRemainingLength,
    /// Remaining length exceeds the configured maximum packet size.
    PacketTooLarge { size: usize, max: usize },
    /// Packet type 0, or 15 (AUTH) before MQTT 5.
    InvalidPacketType(u8),
    /// Fixed-header flag bits that the spec reserves have the wrong value.
    InvalidFixedHeaderFlags { packet_type: u8, flags: u8 },
    /// Fewer bytes inside the frame than a field needs.
    UnexpectedEndOfFrame,
    /// Bytes left over inside a frame after the last field.
    TrailingBytes,
    /// A UTF-8 string that is not valid UTF-8 or contains U+0000.
    InvalidUtf8,
    /// Protocol name not "MQTT" / "MQIsdp", or not matching the level.
    InvalidProtocolName,
    /// Protocol level not 3, 4 or 5.
    UnsupportedProtocolLevel(u8),
    /// CONNECT flags: reserved bit set, will flags inconsistent, password without username (3.1.1).
    InvalidConnectFlags(u8),
    /// QoS value 3 (publish flags, will QoS, subscription options).
    InvalidQoS(u8),
    /// Packet identifier 0 where one is required.
    ZeroPacketId,
    /// PUBLISH topic containing `+` or `#`, or empty without a topic alias.
    InvalidTopicName,
    /// SUBSCRIBE/UNSUBSCRIBE with no filters, or SUBACK/UNSUBACK (5.0) with no codes.
    EmptySubscription,
    /// Subscription options with reserved bits set, or retain handling 3.
    InvalidSubscriptionOptions(u8),
    /// Unknown property identifier, or one not allowed on this packet.
    InvalidProperty(u8),
    /// A property that may appear once appeared twice.
    DuplicateProperty(u8),
    /// A property value outside its allowed range (e.g. receive maximum 0, topic
    /// alias 0, a response topic with wildcards).
    InvalidPropertyValue(u8),
    /// A reason code that is not defined for this packet (3.x CONNACK/SUBACK: a
    /// return code outside the 3.x table).
    InvalidReasonCode(u8),
    /// QoS 0 PUBLISH with DUP set.
    DupOnQoS0,
    /// A variable byte integer inside a packet (property length, subscription
    /// identifier) longer than 4 bytes or not minimally encoded.
    MalformedVariableByteInteger,
    /// CONNACK acknowledge flags with a reserved bit set, or Session Present with a
    /// refusal code (MQTT-3.2.2-4, MQTT-3.2.2-6).
    InvalidConnAckFlags(u8),
    /// No Local set on a `$share/` subscription (MQTT 5, 3.8.3.1).
    NoLocalOnSharedSubscription,
}

impl DecodeError {
    /// The reason code sent (CONNACK or DISCONNECT) when this error ends a connection.
    pub fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocolLevel(_) | InvalidProtocolName => {
                ReasonCode::UnsupportedProtocolVersion
            }
            InvalidTopicName => ReasonCode::TopicNameInvalid,
            // 3.3.2.3.4: a topic alias of 0 is answered with "Topic Alias invalid".
            InvalidPropertyValue(0x23) => ReasonCode::TopicAliasInvalid,
            // The spec calls these "Protocol Error" rather than "Malformed Packet"
            // (e.g. 3.1.2.11: receive maximum 0; 3.8.3: retain handling 3; 3.8.3: a
            // SUBSCRIBE without payload).
            DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | ZeroPacketId
            | InvalidPacketType(_)
            | EmptySubscription
            | NoLocalOnSharedSubscription => ReasonCode::ProtocolError,
            InvalidSubscriptionOptions(b) if b & 0xC0 == 0 && b & 0x30 == 0x30 => {
                ReasonCode::ProtocolError
            }
            MalformedRemainingLength
            | InvalidFixedHeaderFlags { .. }
            | UnexpectedEndOfFrame
            | TrailingBytes
            | InvalidUtf8
            | InvalidConnectFlags(_)
            | InvalidQoS(_)
            | InvalidSubscriptionOptions(_)
            | InvalidProperty(_)
            | InvalidReasonCode(_)
            | DupOnQoS0
            | MalformedVariableByteInteger
            | InvalidConnAckFlags(_) => ReasonCode::MalformedPacket,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::error::Error for DecodeError {}
