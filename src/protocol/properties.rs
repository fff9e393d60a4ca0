//! MQTT 5 properties: the small set PUBLISH carries (forwarded to subscribers), the
//! full set of the other packets, and the bitset that catches a duplicate property.

use bytes::Bytes;
use smallvec::SmallVec;

/// A UTF-8 string pair (property 0x26), kept in wire order; duplicates are allowed.
pub type UserProperty = (Bytes, Bytes);

/// Properties that may appear on PUBLISH (and are forwarded to subscribers).
/// Kept separate from [`Properties`] so the hot path stays small: the three
/// fixed-size ones are inline, the rest sit behind one pointer that is null when
/// none of them is present, so a PUBLISH without them moves in a few words.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProperties {
    /// 0x01
    pub payload_format_indicator: Option<u8>,
    /// 0x02, seconds
    pub message_expiry_interval_s: Option<u32>,
    /// 0x23
    pub topic_alias: Option<u16>,
    /// Response topic, correlation data, subscription identifiers, content type and
    /// user properties: read through `Deref`, written through `to_mut()`.
    pub rare: Sparse<PublishRare>,
}

impl PublishProperties {
    pub fn is_empty(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.message_expiry_interval_s.is_none()
            && self.topic_alias.is_none()
            && self.rare.is_empty()
    }
}

/// The PUBLISH properties that most messages do not carry (see [`PublishProperties`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishRare {
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

static NO_PUBLISH_RARE: PublishRare = PublishRare {
    response_topic: None,
    correlation_data: None,
    subscription_identifiers: SmallVec::new_const(),
    content_type: None,
    user_properties: Vec::new(),
};

impl SparseFields for PublishRare {
    fn empty() -> &'static Self {
        &NO_PUBLISH_RARE
    }
}

/// A set of fields that are usually all absent, stored as one pointer that is null
/// when they are. Every decoded packet carries one (its properties), so a packet
/// without properties costs a word instead of a few hundred bytes that each move of
/// the packet would copy. Reads go through `Deref` (to a shared empty value when
/// absent); writes through [`Sparse::to_mut`], which allocates on first use, so a
/// write is visible where it is made.
pub struct Sparse<T: SparseFields>(Option<Box<T>>);

/// A fields struct that [`Sparse`] can hold: it names its empty value, which reads of
/// an absent set are served from.
pub trait SparseFields: Default + PartialEq + 'static {
    fn empty() -> &'static Self;
}

impl<T: SparseFields> Sparse<T> {
    /// The fields if they were ever written: lets a reader skip them all at once.
    #[inline]
    pub fn get(&self) -> Option<&T> {
        self.0.as_deref()
    }

    /// The fields for changing those already present, without allocating.
    #[inline]
    pub fn get_mut(&mut self) -> Option<&mut T> {
        self.0.as_deref_mut()
    }

    /// The fields for writing, allocated (empty) on first use.
    pub fn to_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }

    /// No field is present (never allocated, or allocated and left empty).
    pub fn is_empty(&self) -> bool {
        match &self.0 {
            None => true,
            Some(b) => **b == *T::empty(),
        }
    }
}

impl<T: SparseFields> Default for Sparse<T> {
    fn default() -> Self {
        Sparse(None)
    }
}

/// Boxes `v` only when some field is present.
impl<T: SparseFields> From<T> for Sparse<T> {
    fn from(v: T) -> Self {
        if v == *T::empty() {
            Sparse(None)
        } else {
            Sparse(Some(Box::new(v)))
        }
    }
}

impl<T: SparseFields> std::ops::Deref for Sparse<T> {
    type Target = T;
    #[inline]
    fn deref(&self) -> &T {
        match &self.0 {
            Some(b) => b,
            None => T::empty(),
        }
    }
}

impl<T: SparseFields + Clone> Clone for Sparse<T> {
    fn clone(&self) -> Self {
        Sparse(self.0.clone())
    }
}

/// Equal when the fields are: an absent set equals an allocated empty one.
impl<T: SparseFields> PartialEq for Sparse<T> {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            _ => **self == **other,
        }
    }
}

impl<T: SparseFields + Eq> Eq for Sparse<T> {}

impl<T: SparseFields + std::fmt::Debug> std::fmt::Debug for Sparse<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// Every MQTT 5 property other than the PUBLISH-only set, as packets carry it: one
/// pointer, null when the packet has none (see [`Sparse`]). Build one with
/// `Properties::from(PropertyValues { .. })`; set a field with `to_mut()`.
pub type Properties = Sparse<PropertyValues>;

/// The fields of [`Properties`]. Which ones are legal depends on the packet; the
/// decoder rejects a property on the wrong packet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PropertyValues {
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

static NO_PROPERTIES: PropertyValues = PropertyValues {
    payload_format_indicator: None,
    message_expiry_interval_s: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    subscription_identifier: None,
    session_expiry_interval_s: None,
    assigned_client_identifier: None,
    server_keep_alive_s: None,
    authentication_method: None,
    authentication_data: None,
    request_problem_information: None,
    will_delay_interval_s: None,
    request_response_information: None,
    response_information: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    maximum_qos: None,
    retain_available: None,
    user_properties: Vec::new(),
    maximum_packet_size: None,
    wildcard_subscription_available: None,
    subscription_identifier_available: None,
    shared_subscription_available: None,
};

impl SparseFields for PropertyValues {
    fn empty() -> &'static Self {
        &NO_PROPERTIES
    }
}

/// MQTT 5 property identifiers (spec 2.2.2.2).
pub mod property_id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Which properties a packet may carry: one bit per identifier (all are < 64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropertySet(u64);

impl PropertySet {
    const fn of(ids: &[u8]) -> PropertySet {
        let mut bits = 0u64;
        let mut i = 0;
        while i < ids.len() {
            bits |= 1u64 << ids[i];
            i += 1;
        }
        PropertySet(bits)
    }

    #[inline]
    pub fn contains(self, id: u8) -> bool {
        id < 64 && self.0 & (1u64 << id) != 0
    }

    // The allowed sets, from the "used in" column of spec table 2.4 (section 2.2.2.2).
    pub const CONNECT: PropertySet =
        PropertySet::of(&[0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27]);
    pub const WILL: PropertySet = PropertySet::of(&[0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26]);
    pub const CONNACK: PropertySet = PropertySet::of(&[
        0x11, 0x12, 0x13, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x24, 0x25, 0x26, 0x27, 0x28,
        0x29, 0x2A,
    ]);
    pub const PUBLISH: PropertySet =
        PropertySet::of(&[0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26]);
    /// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK.
    pub const ACK: PropertySet = PropertySet::of(&[0x1F, 0x26]);
    pub const SUBSCRIBE: PropertySet = PropertySet::of(&[0x0B, 0x26]);
    pub const UNSUBSCRIBE: PropertySet = PropertySet::of(&[0x26]);
    pub const DISCONNECT: PropertySet = PropertySet::of(&[0x11, 0x1C, 0x1F, 0x26]);
    pub const AUTH: PropertySet = PropertySet::of(&[0x15, 0x16, 0x1F, 0x26]);
}
