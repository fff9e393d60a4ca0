use bytes::Bytes;
use smallvec::SmallVec;

/// A UTF-8 string pair (property 0x26), kept in wire order; duplicates are allowed.
pub type UserProperty = (Bytes, Bytes);

/// Properties that may appear on PUBLISH (and are forwarded to subscribers).
/// Kept separate from [`Properties`] so the hot path stays small.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProperties {
    /// 0x01
    pub payload_format_indicator: Option<u8>,
    /// 0x02, seconds
    pub message_expiry_interval_s: Option<u32>,
    /// 0x23
    pub topic_alias: Option<u16>,
    /// 0x08
    pub response_topic: Option<Bytes>,
    /// 0x09
    pub correlation_data: Option<Bytes>,
    /// 0x0B, may repeat on server→client PUBLISH; not allowed client→server.
    pub subscription_identifiers: SmallVec<[u32; 1]>,
    /// 0x03
    pub content_type: Option<Bytes>,
    /// 0x26
    pub user_properties: Vec<UserProperty>,
}

impl PublishProperties {
    pub fn is_empty(&self) -> bool {
        *self == PublishProperties::default()
    }
}

/// Every MQTT 5 property other than the PUBLISH-only set. Which ones are legal
/// depends on the packet; the decoder rejects a property on the wrong packet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    /// 0x01 (will properties)
    pub payload_format_indicator: Option<u8>,
    /// 0x02 (will properties), seconds
    pub message_expiry_interval_s: Option<u32>,
    /// 0x03 (will properties)
    pub content_type: Option<Bytes>,
    /// 0x08 (will properties)
    pub response_topic: Option<Bytes>,
    /// 0x09 (will properties)
    pub correlation_data: Option<Bytes>,
    /// 0x0B (SUBSCRIBE: at most one, 1..=268,435,455)
    pub subscription_identifier: Option<u32>,
    /// 0x11 (CONNECT, CONNACK, DISCONNECT), seconds
    pub session_expiry_interval_s: Option<u32>,
    /// 0x12 (CONNACK)
    pub assigned_client_identifier: Option<Bytes>,
    /// 0x13 (CONNACK), seconds
    pub server_keep_alive_s: Option<u16>,
    /// 0x15 (CONNECT, CONNACK, AUTH)
    pub authentication_method: Option<Bytes>,
    /// 0x16 (CONNECT, CONNACK, AUTH)
    pub authentication_data: Option<Bytes>,
    /// 0x17 (CONNECT)
    pub request_problem_information: Option<u8>,
    /// 0x18 (will properties), seconds
    pub will_delay_interval_s: Option<u32>,
    /// 0x19 (CONNECT)
    pub request_response_information: Option<u8>,
    /// 0x1A (CONNACK)
    pub response_information: Option<Bytes>,
    /// 0x1C (CONNACK, DISCONNECT)
    pub server_reference: Option<Bytes>,
    /// 0x1F (acks, CONNACK, DISCONNECT, AUTH)
    pub reason_string: Option<Bytes>,
    /// 0x21 (CONNECT, CONNACK)
    pub receive_maximum: Option<u16>,
    /// 0x22 (CONNECT, CONNACK)
    pub topic_alias_maximum: Option<u16>,
    /// 0x24 (CONNACK)
    pub maximum_qos: Option<u8>,
    /// 0x25 (CONNACK)
    pub retain_available: Option<u8>,
    /// 0x26
    pub user_properties: Vec<UserProperty>,
    /// 0x27 (CONNECT, CONNACK)
    pub maximum_packet_size: Option<u32>,
    /// 0x28 (CONNACK)
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29 (CONNACK)
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A (CONNACK)
    pub shared_subscription_available: Option<u8>,
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }
}
