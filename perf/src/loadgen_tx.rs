//! The load generator's publish path as one operation, shared by the callgrind budget
//! (`perf/src/main.rs`) and loadgen's divan bench (`loadgen/benches/tx.rs`): one
//! publisher's burst of `TX_PUBLISHES` PUBLISHes (v3.1.1, topic `lg/fanin/42`,
//! 64-byte loadgen payloads) appended to its output by `loadgen::tx::append` from
//! the pre-encoded frame, as `publish_some` does, then the output taken for a send.

use bytes::{Bytes, BytesMut};
use loadgen::tx::{self, Template};
use ringmq::protocol::{encode_packet, Packet, ProtocolVersion, Publish, PublishProperties, QoS};

/// Messages per burst: a half window at `--window 200`, the order of a fan-in send.
pub const TX_PUBLISHES: usize = 100;
const PAYLOAD_BYTES: usize = 64;
const TOPIC: &str = "lg/fanin/42";

pub struct TxPath {
    template: Template,
    qos: QoS,
    out: Vec<u8>,
    seq: u64,
    pid: u16,
}

impl TxPath {
    pub fn new(qos: QoS) -> TxPath {
        let p = Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: Bytes::from_static(TOPIC.as_bytes()),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
            properties: PublishProperties::default(),
            payload: Bytes::from(vec![0u8; PAYLOAD_BYTES]),
        });
        let mut frame = BytesMut::new();
        encode_packet(&p, ProtocolVersion::V311, &mut frame);
        TxPath {
            template: Template {
                frame: frame.to_vec(),
                // 1-byte fixed header, 1-byte remaining length, topic length, topic.
                pid_off: 2 + 2 + TOPIC.len(),
                payload_len: PAYLOAD_BYTES,
                stream: 42,
            },
            qos,
            out: Vec::with_capacity(TX_PUBLISHES * 128),
            seq: 0,
            pid: 0,
        }
    }

    /// Appends one burst and takes it for a send; returns the bytes it made.
    pub fn publish_once(&mut self, now_ns: u64) -> usize {
        self.out.clear();
        for _ in 0..TX_PUBLISHES {
            let pid = (self.qos != QoS::AtMostOnce).then(|| {
                self.pid = self.pid.checked_add(1).unwrap_or(1);
                self.pid
            });
            tx::append(&mut self.out, &self.template, pid, self.seq, now_ns);
            self.seq += 1;
        }
        self.out.len()
    }
}
