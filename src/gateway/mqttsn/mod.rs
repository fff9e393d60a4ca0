//! MQTT-SN 1.2 (the OASIS-contributed IBM spec, 2013): the datagram codec (`codec`,
//! no state) and the gateway's per-loop client state machine (`gateway`, sans-IO).
//! No IO; `node` joins a loop's gateway to that loop's shard (virtual connections). One UDP datagram carries one message (or one
//! forwarder-encapsulated message); topic names, client ids and payloads are
//! zero-copy `Bytes` slices of the datagram.

mod codec;
mod downstream;
mod gateway;
mod link;
mod node;
mod predefined;

pub use codec::{
    decode, encode, encode_to_bytes, encoded_len, Flags, Message, MsgType, QoS, ReturnCode,
    SnDecodeError, SnEncodeError, SubTopic, TopicIdType, TopicRef, WillTopic, MAX_MESSAGE_LEN,
};

pub use gateway::{BrokerQoS, Gateway, GatewayLimits, GatewayStats, Output, Upstream, Will};
pub use link::MqttLink;
pub use node::{SnNode, SnPeer};
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

/// The gateway's fuzz property (tests/fuzz `sn_gateway`): the input is a script of
/// datagrams from four peers, broker deliveries, ticks and output drains; after every
/// step the gateway's bounds and bookkeeping hold (`Gateway::check_invariants`) and
/// everything it sends decodes.
#[cfg(any(test, feature = "testkit"))]
#[doc(hidden)]
pub fn check_gateway_ops(data: &[u8]) {
    use std::time::{Duration, Instant};
    let limits = GatewayLimits {
        max_clients: 3,
        max_topic_ids: 3,
        max_buffered_msgs: 3,
        max_datagram_bytes: 64,
        retry_interval: Duration::from_millis(500),
        max_retries: 2,
        ..GatewayLimits::default()
    };
    let mut gw: Gateway<u8> = Gateway::new(limits);
    let mut now = Instant::now();
    let mut it = data.iter().copied();
    let ids = [&b"a"[..], b"b", b"c", b"d"];
    let topics = [
        &b"ab"[..],
        b"t/1",
        b"t/2",
        b"t/3/x",
        b"longer/topic/name/here",
    ];
    while let Some(op) = it.next() {
        let arg = it.next().unwrap_or(0);
        match op % 4 {
            0 => {
                let len = usize::from(arg % 48);
                let bytes: Vec<u8> = it.by_ref().take(len).collect();
                gw.on_datagram(op / 4 % 4, &bytes::Bytes::from(bytes), now);
            }
            1 => {
                now += Duration::from_millis(u64::from(arg) * 100);
                gw.on_tick(now);
            }
            2 => {
                let id = bytes::Bytes::from_static(ids[usize::from(arg % 4)]);
                let topic = bytes::Bytes::from_static(topics[usize::from(arg / 4 % 5)]);
                gw.on_deliver(
                    &id,
                    topic,
                    op / 4 % 3,
                    false,
                    bytes::Bytes::from_static(b"p"),
                    now,
                );
            }
            _ => {
                gw.check_invariants();
                gw.poll_output();
            }
        }
        gw.check_invariants();
    }
}
