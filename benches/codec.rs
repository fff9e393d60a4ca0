//! Codec cost per packet type and payload size. Run: `cargo bench --bench codec`.
//!
//! Decoding starts from a receive buffer holding exactly one frame and yields
//! zero-copy `Bytes` slices of it; encoding appends to a reused transmit buffer.
//! Throughput is reported in frame bytes.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use divan::counter::BytesCount;
use divan::Bencher;
use ringmq::protocol::{
    decode_packet, encode_packet, ConnAck, Connect, Packet, PacketType, Properties, PropertyValues,
    ProtocolVersion, PubResp, Publish, PublishProperties, PublishRare, QoS, ReasonCode, SubAck,
    Subscribe, SubscriptionOptions, MAX_REMAINING_LENGTH,
};
use smallvec::SmallVec;

// The broker binary's allocator, so allocation on the measured paths costs what it
// costs in the broker.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

const PAYLOAD_SIZES: [usize; 4] = [16, 256, 4096, 65536];
const MAX_PACKET: usize = MAX_REMAINING_LENGTH + 5;
const TOPIC: &[u8] = b"fleet/eu-west/device-000042/telemetry";

/// A PUBLISH as devices send it: v3.1.1 with no properties, or v5 with the
/// properties request/response and typed payloads use.
fn publish(version: ProtocolVersion, payload_len: usize) -> Packet {
    let properties = if version.is_v5() {
        PublishProperties {
            payload_format_indicator: Some(1),
            message_expiry_interval_s: Some(3600),
            topic_alias: None,
            rare: PublishRare {
                response_topic: Some(Bytes::from_static(b"fleet/eu-west/device-000042/reply")),
                correlation_data: Some(Bytes::from_static(&[7; 16])),
                subscription_identifiers: SmallVec::new(),
                content_type: Some(Bytes::from_static(b"application/cbor")),
                user_properties: vec![
                    (Bytes::from_static(b"fw"), Bytes::from_static(b"2.4.1")),
                    (Bytes::from_static(b"site"), Bytes::from_static(b"ams-3")),
                ],
            }
            .into(),
        }
    } else {
        PublishProperties::default()
    };
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: Bytes::from_static(TOPIC),
        packet_id: 42,
        properties,
        payload: Bytes::from(vec![0x5a; payload_len]),
    })
}

fn connect(version: ProtocolVersion) -> Packet {
    let properties = if version.is_v5() {
        Properties::from(PropertyValues {
            session_expiry_interval_s: Some(3600),
            receive_maximum: Some(64),
            maximum_packet_size: Some(65536),
            topic_alias_maximum: Some(16),
            ..Default::default()
        })
    } else {
        Properties::default()
    };
    Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start: true,
        keep_alive_s: 60,
        client_id: Bytes::from_static(b"device-000042"),
        will: None,
        username: Some(Bytes::from_static(b"fleet-eu-west")),
        password: Some(Bytes::from_static(b"0123456789abcdef0123456789abcdef")),
        properties,
    }))
}

fn subscribe() -> Packet {
    let options = SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..Default::default()
    };
    let mut filters = SmallVec::new();
    filters.push((
        Bytes::from_static(b"fleet/eu-west/device-000042/cmd/#"),
        options,
    ));
    filters.push((Bytes::from_static(b"fleet/eu-west/broadcast/+"), options));
    Packet::Subscribe(Subscribe {
        packet_id: 7,
        filters,
        properties: Properties::default(),
    })
}

fn suback() -> Packet {
    Packet::SubAck(SubAck {
        packet_id: 7,
        codes: SmallVec::from_slice(&[ReasonCode::GrantedQoS1, ReasonCode::GrantedQoS1]),
        properties: Properties::default(),
    })
}

fn connack() -> Packet {
    Packet::ConnAck(ConnAck {
        session_present: false,
        code: ReasonCode::Success,
        properties: Properties::default(),
    })
}

/// The control packets benchmarked besides PUBLISH, by name.
const CONTROL: [&str; 7] = [
    "connect",
    "connack",
    "subscribe",
    "suback",
    "puback",
    "pingreq",
    "disconnect",
];

fn control(name: &str, version: ProtocolVersion) -> Packet {
    match name {
        "connect" => connect(version),
        "connack" => connack(),
        "subscribe" => subscribe(),
        "suback" => suback(),
        "puback" => Packet::PubAck(PubResp::new(42)),
        "pingreq" => Packet::PingReq,
        "disconnect" => Packet::Disconnect(ringmq::protocol::Disconnect {
            code: ReasonCode::Success,
            properties: Properties::default(),
        }),
        other => panic!("unknown control packet {other}"),
    }
}

fn frame(packet: &Packet, version: ProtocolVersion) -> Bytes {
    let mut buf = BytesMut::new();
    encode_packet(packet, version, &mut buf);
    buf.freeze()
}

/// Decodes `frame` again and again from a fresh receive buffer holding just it.
/// Copying the frame into the buffer happens outside the timed region.
fn bench_decode(bencher: Bencher, frame: Bytes, version: ProtocolVersion, kind: PacketType) {
    // The frame must decode to the packet type benchmarked, or the figure is meaningless.
    let mut check = BytesMut::from(&frame[..]);
    match decode_packet(&mut check, version, MAX_PACKET) {
        Ok(Some(p)) if p.packet_type() == kind && check.is_empty() => {}
        other => panic!("bench frame for {kind:?} does not decode: {other:?}"),
    }
    bencher
        .counter(BytesCount::new(frame.len()))
        .with_inputs(|| BytesMut::from(&frame[..]))
        .bench_local_refs(|rx| decode_packet(rx, version, MAX_PACKET));
}

/// Encodes `packet` into a transmit buffer cleared before each encode (capacity kept).
fn bench_encode(bencher: Bencher, packet: Packet, version: ProtocolVersion) {
    let len = frame(&packet, version).len();
    let mut tx = BytesMut::with_capacity(len);
    bencher.counter(BytesCount::new(len)).bench_local(|| {
        tx.clear();
        encode_packet(black_box(&packet), version, &mut tx);
        black_box(tx.len())
    });
}

mod decode {
    use super::*;

    #[divan::bench(args = PAYLOAD_SIZES)]
    fn publish_v311(bencher: Bencher, payload_bytes: usize) {
        let v = ProtocolVersion::V311;
        bench_decode(
            bencher,
            frame(&publish(v, payload_bytes), v),
            v,
            PacketType::Publish,
        );
    }

    #[divan::bench(args = PAYLOAD_SIZES)]
    fn publish_v5_props(bencher: Bencher, payload_bytes: usize) {
        let v = ProtocolVersion::V5;
        bench_decode(
            bencher,
            frame(&publish(v, payload_bytes), v),
            v,
            PacketType::Publish,
        );
    }

    #[divan::bench(args = CONTROL)]
    fn control_v311(bencher: Bencher, name: &str) {
        let v = ProtocolVersion::V311;
        let p = control(name, v);
        let kind = p.packet_type();
        bench_decode(bencher, frame(&p, v), v, kind);
    }

    #[divan::bench(args = CONTROL)]
    fn control_v5(bencher: Bencher, name: &str) {
        let v = ProtocolVersion::V5;
        let p = control(name, v);
        let kind = p.packet_type();
        bench_decode(bencher, frame(&p, v), v, kind);
    }
}

mod encode {
    use super::*;

    #[divan::bench(args = PAYLOAD_SIZES)]
    fn publish_v311(bencher: Bencher, payload_bytes: usize) {
        let v = ProtocolVersion::V311;
        bench_encode(bencher, publish(v, payload_bytes), v);
    }

    #[divan::bench(args = PAYLOAD_SIZES)]
    fn publish_v5_props(bencher: Bencher, payload_bytes: usize) {
        let v = ProtocolVersion::V5;
        bench_encode(bencher, publish(v, payload_bytes), v);
    }

    #[divan::bench(args = CONTROL)]
    fn control_v311(bencher: Bencher, name: &str) {
        let v = ProtocolVersion::V311;
        bench_encode(bencher, control(name, v), v);
    }

    #[divan::bench(args = CONTROL)]
    fn control_v5(bencher: Bencher, name: &str) {
        let v = ProtocolVersion::V5;
        bench_encode(bencher, control(name, v), v);
    }
}
