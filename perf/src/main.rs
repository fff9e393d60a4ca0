//! Drives one broker hot path `iters` times so that callgrind can count its
//! instructions. `perf/budget.sh` runs each path twice (1 and 1+N iterations) and
//! divides the difference by N, so set-up and process start-up cancel out and the
//! result is instructions per operation, deterministic for a given binary.

mod driver;
mod loadgen_rx;
mod loadgen_tx;
mod share;

use std::hint::black_box;

use bytes::BytesMut;
use ringmq::protocol::{
    decode_packet, encode_packet, Packet, ProtocolVersion, Publish, PublishProperties, QoS,
};
use ringmq::ring::mesh;

// The broker binary's allocator, so allocation on the measured paths costs what it
// costs in the broker.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PATHS: &[&str] = &[
    "decode_publish_64b",
    "encode_publish_64b",
    "ring_hop",
    "route_publish_1_sub",
    "route_publish_100_subs",
    "route_publish_qos1_1_sub",
    "route_publish_acl100_1_sub",
    "cross_shard_hop",
    "loadgen_rx_100_qos0",
    "loadgen_rx_100_qos1",
    "loadgen_tx_100_qos0",
    "loadgen_tx_100_qos1",
    "queue_offline_qos1",
    "queue_offline_qos1_durable",
];

/// Payload of the routed PUBLISH paths.
const ROUTE_PAYLOAD_BYTES: usize = 64;

fn publish_64b() -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: bytes::Bytes::from_static(b"fleet/eu-west/device-000042/telemetry"),
        packet_id: 0,
        properties: PublishProperties::default(),
        payload: bytes::Bytes::from(vec![0x5a; 64]),
    })
}

/// One PUBLISH frame decoded from a receive buffer (v3.1.1, QoS 0, 64-byte payload).
fn decode_publish(iters: u64) {
    let mut wire = BytesMut::new();
    encode_packet(&publish_64b(), ProtocolVersion::V311, &mut wire);
    let frame = wire.freeze();
    let mut rx = BytesMut::with_capacity(frame.len() * 64);
    for _ in 0..iters {
        if rx.capacity() - rx.len() < frame.len() {
            rx = BytesMut::with_capacity(frame.len() * 64);
        }
        rx.extend_from_slice(&frame);
        let packet = decode_packet(&mut rx, ProtocolVersion::V311, 1 << 20);
        black_box(&packet);
    }
}

/// One PUBLISH encoded into a transmit buffer.
fn encode_publish(iters: u64) {
    let packet = publish_64b();
    let mut tx = BytesMut::with_capacity(1 << 16);
    for _ in 0..iters {
        if tx.len() > (1 << 16) - 256 {
            tx.clear();
        }
        encode_packet(black_box(&packet), ProtocolVersion::V311, &mut tx);
    }
    black_box(&tx);
}

/// One message pushed into the mesh by shard 0 and received by shard 1.
fn ring_hop(iters: u64) {
    let mut ends = mesh::<u64>(2, 1024, 1024)
        .expect("2-shard mesh")
        .into_iter();
    let (mut a, mut b) = (ends.next().expect("shard 0"), ends.next().expect("shard 1"));
    let mut got = 0u64;
    for i in 0..iters {
        let sent = a.send(1, black_box(i));
        black_box(&sent);
        b.recv_batch(16, |_, v| got = got.wrapping_add(v));
    }
    black_box(got);
}

/// Exits with an error unless `got` bytes were delivered: a path that stopped
/// delivering (a broken set-up, a dropped message) must not pass as "cheaper".
fn check_delivered(path: &str, got: usize, expected: usize) {
    if got != expected {
        eprintln!("callgrind-paths: {path} delivered {got} bytes, expected {expected}");
        std::process::exit(1);
    }
}

/// One QoS 0/1 PUBLISH (v3.1.1, 64-byte payload) from `on_read` of the publisher
/// to the encoded bytes in every subscriber's `take_tx` (QoS 1: plus the PUBACK to
/// the publisher and each subscriber's PUBACK handled).
fn route_publish(path: &str, subscribers: usize, qos: QoS, iters: u64) {
    let fanout = driver::Fanout::new(subscribers, qos, ROUTE_PAYLOAD_BYTES);
    run_fanout(path, fanout, iters)
}

/// `route_publish` with an ACL in force (write check on the PUBLISH, read check on
/// each copy).
fn route_publish_with(path: &str, subscribers: usize, qos: QoS, acl: Option<&str>, iters: u64) {
    let fanout = driver::Fanout::with_acl(subscribers, qos, ROUTE_PAYLOAD_BYTES, acl);
    run_fanout(path, fanout, iters)
}

fn run_fanout(path: &str, mut fanout: driver::Fanout, iters: u64) {
    let expected = fanout.expected_bytes();
    for _ in 0..iters {
        let got = fanout.publish_once();
        check_delivered(path, got, expected);
    }
    black_box(&fanout);
}

/// PUBLISH on shard 0 → `ShardMsg` through a real mesh → shard 1 `on_message` →
/// subscriber `take_tx`.
fn cross_shard_hop(iters: u64) {
    let mut x = driver::CrossShard::new(ROUTE_PAYLOAD_BYTES);
    let expected = x.expected_bytes();
    for _ in 0..iters {
        let got = x.hop_once();
        check_delivered("cross_shard_hop", got, expected);
    }
    black_box(&x);
}

/// loadgen's subscriber reading one receive buffer of `RX_PUBLISHES` PUBLISHes and
/// accounting each (`perf/src/loadgen_rx.rs`): the load generator's own cost per
/// message, kept in budget like the broker's. Per operation = per buffer.
fn loadgen_rx(path: &str, qos: QoS, iters: u64) {
    let mut rx = loadgen_rx::RxPath::new(qos);
    for _ in 0..iters {
        let got = rx.receive_once();
        if got != loadgen_rx::RX_PUBLISHES as u64 {
            eprintln!(
                "callgrind-paths: {path} counted {got} deliveries, expected {}",
                loadgen_rx::RX_PUBLISHES
            );
            std::process::exit(1);
        }
    }
    black_box(&rx);
}

/// A loadgen publisher appending one burst of `TX_PUBLISHES` PUBLISHes to its output
/// (`perf/src/loadgen_tx.rs`). Per operation = per burst.
fn loadgen_tx(path: &str, qos: QoS, iters: u64) {
    let mut tx = loadgen_tx::TxPath::new(qos);
    let mut bytes = 0;
    for i in 0..iters {
        bytes = tx.publish_once(black_box(1_000_000 + i));
    }
    if bytes < loadgen_tx::TX_PUBLISHES * 64 {
        eprintln!("callgrind-paths: {path} made {bytes} bytes for a burst");
        std::process::exit(1);
    }
    black_box(&tx);
}

/// One QoS 1 PUBLISH (v3.1.1, 64-byte payload) from `on_read` to the queue of an
/// offline persistent session (where it is copied out of the receive buffer,
/// `deliver::queued_arc`), plus the publisher's PUBACK.
fn queue_offline(path: &str, durable: bool, iters: u64) {
    let mut x = if durable {
        driver::Offline::durable(ROUTE_PAYLOAD_BYTES)
    } else {
        driver::Offline::new(ROUTE_PAYLOAD_BYTES)
    };
    for _ in 0..iters {
        let got = x.publish_once();
        check_delivered(path, got, 4);
    }
    if x.queued() == 0 {
        eprintln!("callgrind-paths: {path} queued nothing");
        std::process::exit(1);
    }
    black_box(&x);
}

/// `share_<q0|q1>_<bytes>_<shared|copied>`: one PUBLISH of that payload to
/// `share::SUBSCRIBERS` subscribers with the payload shared or copied
/// (`perf/share_threshold.sh`); not listed, so not a budget path.
fn share(path: &str, iters: u64) {
    let parts: Vec<&str> = path.split('_').collect();
    let (qos, len, shared) = match parts.as_slice() {
        ["share", q, n, mode] => {
            let qos = match *q {
                "q0" => QoS::AtMostOnce,
                "q1" => QoS::AtLeastOnce,
                _ => usage_share(path),
            };
            let Ok(len) = n.parse::<usize>() else {
                usage_share(path)
            };
            let shared = match *mode {
                "shared" => true,
                "copied" => false,
                _ => usage_share(path),
            };
            (qos, len, shared)
        }
        _ => usage_share(path),
    };
    ringmq::tx::set_share_min_bytes_for_measurement(if shared { 1 } else { usize::MAX });
    let mut x = share::Share::new(qos, len);
    let expected = x.expected_bytes();
    for _ in 0..iters {
        let got = x.publish_once();
        check_delivered(path, got, expected);
    }
    black_box(&x);
}

fn usage_share(path: &str) -> ! {
    eprintln!("callgrind-paths: {path:?} is not share_<q0|q1>_<payload bytes>_<shared|copied>");
    std::process::exit(2);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        eprintln!(
            "usage: callgrind-paths <path> <iterations>\npaths: {}",
            PATHS.join(", ")
        );
        std::process::exit(2);
    };
    if args.first().map(String::as_str) == Some("--list") {
        println!("{}", PATHS.join("\n"));
        return;
    }
    if args.len() != 2 {
        usage();
    }
    let iters: u64 = match args[1].parse() {
        Ok(n) => n,
        Err(_) => {
            eprintln!(
                "callgrind-paths: iterations must be a whole number, got {:?}",
                args[1]
            );
            std::process::exit(2);
        }
    };
    match args[0].as_str() {
        "decode_publish_64b" => decode_publish(iters),
        "encode_publish_64b" => encode_publish(iters),
        "ring_hop" => ring_hop(iters),
        "route_publish_1_sub" => route_publish(&args[0], 1, QoS::AtMostOnce, iters),
        "route_publish_100_subs" => route_publish(&args[0], 100, QoS::AtMostOnce, iters),
        "route_publish_qos1_1_sub" => route_publish(&args[0], 1, QoS::AtLeastOnce, iters),
        "route_publish_acl100_1_sub" => route_publish_with(
            &args[0],
            1,
            QoS::AtMostOnce,
            Some(&driver::acl_100_rules()),
            iters,
        ),
        "cross_shard_hop" => cross_shard_hop(iters),
        "loadgen_rx_100_qos0" => loadgen_rx(&args[0], QoS::AtMostOnce, iters),
        "loadgen_rx_100_qos1" => loadgen_rx(&args[0], QoS::AtLeastOnce, iters),
        "loadgen_tx_100_qos0" => loadgen_tx(&args[0], QoS::AtMostOnce, iters),
        "loadgen_tx_100_qos1" => loadgen_tx(&args[0], QoS::AtLeastOnce, iters),
        "queue_offline_qos1" => queue_offline(&args[0], false, iters),
        "queue_offline_qos1_durable" => queue_offline(&args[0], true, iters),
        other if other.starts_with("share_") => share(other, iters),
        other => {
            eprintln!("callgrind-paths: unknown path {other:?}");
            usage();
        }
    }
}
