//! The load generator's receive path as one operation, shared by the callgrind budget
//! (`perf/src/main.rs`) and loadgen's divan bench (`loadgen/benches/rx.rs`): one
//! receive buffer of `RX_PUBLISHES` PUBLISHes (v3.1.1, 64-byte loadgen payloads, one
//! per fan-in publisher stream) read in place by `loadgen::rx::scan`, each delivery
//! accounted (sequence tracking, latency into the HDR histogram, QoS 1 PUBACK
//! written), then the per-stream delivery counts published to the shared atomics
//! as the engine does once per reap.

use std::sync::atomic::AtomicU64;

use bytes::{Bytes, BytesMut};
use loadgen::payload::{self, Header, KIND_DATA};
use loadgen::rx::{self, Conn, RxStats, Stop, Streams};
use ringmq::protocol::{encode_packet, Packet, ProtocolVersion, Publish, PublishProperties, QoS};

/// PUBLISHes per receive buffer: one per publisher of the fan-in scenario
/// (~8 KiB, half of one of loadgen's 16 KiB provided buffers).
pub const RX_PUBLISHES: usize = 100;
const PAYLOAD_BYTES: usize = 64;
const MAX_PACKET_BYTES: usize = 64 * 1024 * 1024;
/// Latency of every message: its send stamp is this long before the receive time.
const LATENCY_NS: u64 = 50_000;

pub struct RxPath {
    wire: Vec<u8>,
    /// Offset of each message's `seq` field in `wire`.
    seq_at: Vec<usize>,
    seq: u64,
    streams: Streams,
    out: Vec<u8>,
    rx: RxStats,
    delivered: Vec<AtomicU64>,
    acks_per_buffer: usize,
}

impl RxPath {
    pub fn new(qos: QoS) -> RxPath {
        let mut wire = BytesMut::new();
        let mut seq_at = Vec::with_capacity(RX_PUBLISHES);
        for stream in 0..RX_PUBLISHES as u32 {
            let h = Header {
                kind: KIND_DATA,
                stream,
                seq: 0,
                // Spread over histogram buckets as real arrivals are.
                send_ns: 1_000_000 + u64::from(stream) * 97,
            };
            let p = Packet::Publish(Publish {
                dup: false,
                qos,
                retain: false,
                topic: Bytes::from(format!("lg/fanin/{stream}").into_bytes()),
                packet_id: if qos == QoS::AtMostOnce {
                    0
                } else {
                    1 + stream as u16
                },
                properties: PublishProperties::default(),
                payload: Bytes::from(payload::encode(&h, PAYLOAD_BYTES)),
            });
            encode_packet(&p, ProtocolVersion::V311, &mut wire);
            // seq sits 8 bytes into the payload, which ends the frame.
            seq_at.push(wire.len() - PAYLOAD_BYTES + 8);
        }
        let mut rx = RxStats::new(RX_PUBLISHES, rx::new_histogram());
        rx.measuring = true;
        rx.measure_start_ns = 0;
        RxPath {
            wire: wire.to_vec(),
            seq_at,
            seq: 0,
            streams: Streams::new((0, RX_PUBLISHES as u32)),
            out: Vec::with_capacity(4 * RX_PUBLISHES),
            rx,
            delivered: (0..RX_PUBLISHES).map(|_| AtomicU64::new(0)).collect(),
            acks_per_buffer: if qos == QoS::AtMostOnce {
                0
            } else {
                RX_PUBLISHES
            },
        }
    }

    /// Reads and accounts one buffer; returns the unique deliveries it counted (every
    /// message is the next of its stream, so `RX_PUBLISHES` unless something broke).
    pub fn receive_once(&mut self) -> u64 {
        // The next sequence number of every stream, so each arrival is in order as in
        // a loss-free run (a replayed buffer would be all duplicates).
        let seq = self.seq.to_le_bytes();
        for &at in &self.seq_at {
            self.wire[at..at + 8].copy_from_slice(&seq);
        }
        self.seq += 1;
        self.out.clear();
        let mut conn = Conn {
            v5: false,
            plain_subscriber: true,
            streams: &mut self.streams,
            out: &mut self.out,
        };
        let now = 1_000_000 + LATENCY_NS;
        let s = rx::scan(&self.wire, &mut conn, &mut self.rx, MAX_PACKET_BYTES, now);
        self.rx.publish_delivered(&self.delivered);
        if s.consumed != self.wire.len()
            || s.stop != Stop::End
            || self.out.len() != 4 * self.acks_per_buffer
        {
            return 0;
        }
        std::mem::take(&mut self.rx.unique_pending)
    }
}
