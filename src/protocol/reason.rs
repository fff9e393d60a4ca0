//! MQTT 5 reason codes, which of them each packet type allows, and their 3.x
//! return-code equivalents.

use super::packet_type::PacketType;

/// MQTT 5 reason codes (spec 2.4). 3.x return codes are mapped from these by the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ReasonCode {
    /// Also "Normal disconnection" and "Granted QoS 0".
    Success = 0x00,
    GrantedQoS1 = 0x01,
    GrantedQoS2 = 0x02,
    DisconnectWithWillMessage = 0x04,
    NoMatchingSubscribers = 0x10,
    NoSubscriptionExisted = 0x11,
    ContinueAuthentication = 0x18,
    ReAuthenticate = 0x19,
    UnspecifiedError = 0x80,
    MalformedPacket = 0x81,
    ProtocolError = 0x82,
    ImplementationSpecificError = 0x83,
    UnsupportedProtocolVersion = 0x84,
    ClientIdentifierNotValid = 0x85,
    BadUserNameOrPassword = 0x86,
    NotAuthorized = 0x87,
    ServerUnavailable = 0x88,
    ServerBusy = 0x89,
    Banned = 0x8A,
    ServerShuttingDown = 0x8B,
    BadAuthenticationMethod = 0x8C,
    KeepAliveTimeout = 0x8D,
    SessionTakenOver = 0x8E,
    TopicFilterInvalid = 0x8F,
    TopicNameInvalid = 0x90,
    PacketIdentifierInUse = 0x91,
    PacketIdentifierNotFound = 0x92,
    ReceiveMaximumExceeded = 0x93,
    TopicAliasInvalid = 0x94,
    PacketTooLarge = 0x95,
    MessageRateTooHigh = 0x96,
    QuotaExceeded = 0x97,
    AdministrativeAction = 0x98,
    PayloadFormatInvalid = 0x99,
    RetainNotSupported = 0x9A,
    QoSNotSupported = 0x9B,
    UseAnotherServer = 0x9C,
    ServerMoved = 0x9D,
    SharedSubscriptionsNotSupported = 0x9E,
    ConnectionRateExceeded = 0x9F,
    MaximumConnectTime = 0xA0,
    SubscriptionIdentifiersNotSupported = 0xA1,
    WildcardSubscriptionsNotSupported = 0xA2,
}

impl ReasonCode {
    pub fn from_u8(v: u8) -> Option<ReasonCode> {
        use ReasonCode::*;
        Some(match v {
            0x00 => Success,
            0x01 => GrantedQoS1,
            0x02 => GrantedQoS2,
            0x04 => DisconnectWithWillMessage,
            0x10 => NoMatchingSubscribers,
            0x11 => NoSubscriptionExisted,
            0x18 => ContinueAuthentication,
            0x19 => ReAuthenticate,
            0x80 => UnspecifiedError,
            0x81 => MalformedPacket,
            0x82 => ProtocolError,
            0x83 => ImplementationSpecificError,
            0x84 => UnsupportedProtocolVersion,
            0x85 => ClientIdentifierNotValid,
            0x86 => BadUserNameOrPassword,
            0x87 => NotAuthorized,
            0x88 => ServerUnavailable,
            0x89 => ServerBusy,
            0x8A => Banned,
            0x8B => ServerShuttingDown,
            0x8C => BadAuthenticationMethod,
            0x8D => KeepAliveTimeout,
            0x8E => SessionTakenOver,
            0x8F => TopicFilterInvalid,
            0x90 => TopicNameInvalid,
            0x91 => PacketIdentifierInUse,
            0x92 => PacketIdentifierNotFound,
            0x93 => ReceiveMaximumExceeded,
            0x94 => TopicAliasInvalid,
            0x95 => PacketTooLarge,
            0x96 => MessageRateTooHigh,
            0x97 => QuotaExceeded,
            0x98 => AdministrativeAction,
            0x99 => PayloadFormatInvalid,
            0x9A => RetainNotSupported,
            0x9B => QoSNotSupported,
            0x9C => UseAnotherServer,
            0x9D => ServerMoved,
            0x9E => SharedSubscriptionsNotSupported,
            0x9F => ConnectionRateExceeded,
            0xA0 => MaximumConnectTime,
            0xA1 => SubscriptionIdentifiersNotSupported,
            0xA2 => WildcardSubscriptionsNotSupported,
            _ => return None,
        })
    }

    pub fn is_error(self) -> bool {
        (self as u8) >= 0x80
    }

    /// MQTT 3.1/3.1.1 CONNACK return code for this reason (spec 3.1.1 table 3.1).
    pub fn v3_connack_code(self) -> u8 {
        use ReasonCode::*;
        match self {
            Success => 0,
            UnsupportedProtocolVersion => 1,
            ClientIdentifierNotValid => 2,
            ServerUnavailable
            | ServerBusy
            | ServerShuttingDown
            | QuotaExceeded
            | ConnectionRateExceeded => 3,
            BadUserNameOrPassword | BadAuthenticationMethod => 4,
            _ => 5,
        }
    }
}

/// A set of reason code bytes, one bit per value.
#[derive(Clone, Copy)]
struct CodeSet([u64; 4]);

impl CodeSet {
    const fn of(codes: &[u8]) -> CodeSet {
        let mut bits = [0u64; 4];
        let mut i = 0;
        while i < codes.len() {
            let c = codes[i];
            bits[(c >> 6) as usize] |= 1u64 << (c & 63);
            i += 1;
        }
        CodeSet(bits)
    }

    const fn contains(self, code: u8) -> bool {
        self.0[(code >> 6) as usize] & (1u64 << (code & 63)) != 0
    }
}

// MQTT 5 spec, the reason code table of each packet (3.2.2.2, 3.4.2.1, 3.5.2.1,
// 3.6.2.1, 3.7.2.1, 3.9.3, 3.11.3, 3.14.2.1, 3.15.2.1).
const CONNACK_CODES: CodeSet = CodeSet::of(&[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
]);
const PUBACK_CODES: CodeSet = CodeSet::of(&[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]);
const PUBREL_CODES: CodeSet = CodeSet::of(&[0x00, 0x92]);
const SUBACK_CODES: CodeSet = CodeSet::of(&[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
]);
const UNSUBACK_CODES: CodeSet = CodeSet::of(&[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91]);
const DISCONNECT_CODES: CodeSet = CodeSet::of(&[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
]);
const AUTH_CODES: CodeSet = CodeSet::of(&[0x00, 0x18, 0x19]);
const NO_CODES: CodeSet = CodeSet::of(&[]);

impl ReasonCode {
    /// Whether MQTT 5 defines this reason code for `packet_type` (packets without a
    /// reason code accept none).
    pub fn is_valid_for(self, packet_type: PacketType) -> bool {
        code_set(packet_type).contains(self as u8)
    }

    /// The reason code for a 3.1/3.1.1 CONNACK return code (0..=5), the inverse of
    /// [`ReasonCode::v3_connack_code`] on its canonical values.
    pub fn from_v3_connack_code(code: u8) -> Option<ReasonCode> {
        use ReasonCode::*;
        Some(match code {
            0 => Success,
            1 => UnsupportedProtocolVersion,
            2 => ClientIdentifierNotValid,
            3 => ServerUnavailable,
            4 => BadUserNameOrPassword,
            5 => NotAuthorized,
            _ => return None,
        })
    }

    /// 3.1/3.1.1 SUBACK return code: the granted QoS, or 0x80 for any failure.
    pub fn v3_suback_code(self) -> u8 {
        match self {
            ReasonCode::Success => 0,
            ReasonCode::GrantedQoS1 => 1,
            ReasonCode::GrantedQoS2 => 2,
            _ => 0x80,
        }
    }
}

fn code_set(packet_type: PacketType) -> CodeSet {
    match packet_type {
        PacketType::ConnAck => CONNACK_CODES,
        PacketType::PubAck | PacketType::PubRec => PUBACK_CODES,
        PacketType::PubRel | PacketType::PubComp => PUBREL_CODES,
        PacketType::SubAck => SUBACK_CODES,
        PacketType::UnsubAck => UNSUBACK_CODES,
        PacketType::Disconnect => DISCONNECT_CODES,
        PacketType::Auth => AUTH_CODES,
        _ => NO_CODES,
    }
}
