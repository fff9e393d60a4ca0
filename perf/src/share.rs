//! The share threshold's measurement (`perf/share_threshold.sh`): one PUBLISH of a
//! given payload size fanned out to `SUBSCRIBERS` v3.1.1 subscribers, taken as the
//! worker takes it (`take_tx_chain`, every segment read as a vectored send reads its
//! iovec), with the payload either copied into each connection's buffer or shared
//! as a segment (`tx::set_share_min_bytes_for_measurement`). Not a budget path:
//! `perf/budget.sh` does not list it.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ringmq::config::Config;
use ringmq::protocol::QoS;
use ringmq::shard::{Action, ConnId, Shard};

use crate::driver::{client_id_on, connect, publish_frame, subscribe_frame, TOPIC};

/// Subscribers of the measured fan-out: per-delivery costs dominate, the
/// publisher's decode is spread over them.
pub const SUBSCRIBERS: usize = 16;

pub struct Share {
    shard: Shard,
    publisher: ConnId,
    qos: QoS,
    frame: Bytes,
    now: Instant,
    acks: Vec<(ConnId, [u8; 4])>,
}

/// Takes every flush as a chain and reads its segments; returns the bytes and
/// records the QoS 1 acks owed.
fn drain(
    shard: &mut Shard,
    publisher: ConnId,
    qos: QoS,
    acks: &mut Vec<(ConnId, [u8; 4])>,
) -> usize {
    let mut written = 0;
    while let Some(action) = shard.poll_action() {
        match action {
            Action::Flush(conn) => {
                let Some(chain) = shard.take_tx_chain(conn) else {
                    continue;
                };
                // What a vectored send reads: one (pointer, length) per segment.
                for c in chain.chunks() {
                    written += c.len();
                    black_box(c.as_ptr());
                }
                if qos != QoS::AtMostOnce && conn != publisher {
                    let first = chain.chunks().next().unwrap_or(&[]);
                    let id = packet_id(first);
                    acks.push((conn, [0x40, 0x02, id[0], id[1]]));
                }
                black_box(&chain);
            }
            other => panic!("share set-up: unexpected action {other:?}"),
        }
    }
    written
}

/// The packet id of a v3.1.1 QoS 1 PUBLISH at the start of `frame`.
fn packet_id(frame: &[u8]) -> [u8; 2] {
    let mut i = 1;
    while frame.get(i).is_some_and(|b| b & 0x80 != 0) {
        i += 1;
    }
    i += 1;
    let topic_len = usize::from(u16::from_be_bytes([frame[i], frame[i + 1]]));
    let at = i + 2 + topic_len;
    [frame[at], frame[at + 1]]
}

impl Share {
    pub fn new(qos: QoS, payload_len: usize) -> Share {
        let now = Instant::now();
        let mut shard = Shard::new(0, 1, Arc::new(Config::default()));
        let publisher = connect(&mut shard, client_id_on(0, 1, "pub", 0), now);
        for n in 0..SUBSCRIBERS {
            let sub = connect(&mut shard, client_id_on(0, 1, "sub", n), now);
            shard.on_read(sub, &subscribe_frame(TOPIC, qos), now);
        }
        let mut acks = Vec::with_capacity(SUBSCRIBERS);
        drain(&mut shard, publisher, QoS::AtMostOnce, &mut acks);
        Share {
            shard,
            publisher,
            qos,
            frame: publish_frame(qos, payload_len),
            now,
            acks,
        }
    }

    /// One PUBLISH through to every subscriber's chain (QoS 1: and every PUBACK
    /// back). Returns the bytes taken.
    pub fn publish_once(&mut self) -> usize {
        self.shard.on_read(self.publisher, &self.frame, self.now);
        let written = drain(&mut self.shard, self.publisher, self.qos, &mut self.acks);
        for (conn, ack) in self.acks.drain(..) {
            self.shard.on_read(conn, &ack, self.now);
        }
        drain(
            &mut self.shard,
            self.publisher,
            QoS::AtMostOnce,
            &mut Vec::new(),
        );
        written
    }

    pub fn expected_bytes(&self) -> usize {
        match self.qos {
            QoS::AtMostOnce => SUBSCRIBERS * self.frame.len(),
            _ => SUBSCRIBERS * self.frame.len() + 4,
        }
    }
}
