//! MQTT-SN 1.2 (the OASIS-contributed IBM spec, 2013): the datagram codec (`codec`,
//! no state) and the gateway's per-loop client state machine (`gateway`, sans-IO).
//! No IO and no other broker module. One UDP datagram carries one message (or one
//! forwarder-encapsulated message); topic names, client ids and payloads are
//! zero-copy `Bytes` slices of the datagram.

mod codec;
mod downstream;
mod gateway;
mod link;
mod predefined;

pub use codec::{
    decode, encode, encode_to_bytes, encoded_len, Flags, Message, MsgType, QoS, ReturnCode,
    SnDecodeError, SnEncodeError, SubTopic, TopicIdType, TopicRef, WillTopic, MAX_MESSAGE_LEN,
};

pub use gateway::{BrokerQoS, Gateway, GatewayLimits, GatewayStats, Output, Upstream, Will};
pub use link::MqttLink;
pub use predefined::{parse_predefined, PredefinedError};

#[cfg(test)]
mod gateway_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod seam_tests;
#[cfg(test)]
mod tests;

/// The decoder's fuzz property (tests/fuzz `sn_decode`, replayed by `cargo test`):
/// any datagram decodes or errs without a panic, and whatever decodes re-encodes to
/// a datagram that decodes to the same message.
#[cfg(any(test, feature = "testkit"))]
#[doc(hidden)]
pub fn check_roundtrip(data: &[u8]) {
    let datagram = bytes::Bytes::copy_from_slice(data);
    if let Ok(m) = decode(&datagram) {
        let wire = encode_to_bytes(&m).expect("a decoded message fits the length field");
        assert_eq!(wire.len(), encoded_len(&m));
        assert_eq!(decode(&wire).as_ref(), Ok(&m), "re-decode of {data:02x?}");
    }
}
