//! Fuzz seeds, generated from code so they stay in step with the codec: byte-exact
//! conformance vectors, inputs for the decoder target, and short scripted sessions
//! for the connection target ([`Script`]). `cargo test` replays every committed
//! seed and checks the generated ones are committed (`RINGMQ_WRITE_SEEDS=1`
//! rewrites them).

use super::testkit::op;

/// Builds [`fuzz_connection`] inputs.
#[derive(Default)]
pub struct Script(Vec<u8>);

impl Script {
    pub fn new(flags: u8) -> Script {
        Script(vec![flags])
    }
    pub fn accept(mut self, shard: u8, ip: u8) -> Script {
        self.0.extend_from_slice(&[op::ACCEPT, shard, ip]);
        self
    }
    pub fn read(mut self, peer: u8, bytes: &[u8]) -> Script {
        for chunk in bytes.chunks(255) {
            self.0
                .extend_from_slice(&[op::READ, peer, chunk.len() as u8]);
            self.0.extend_from_slice(chunk);
        }
        self
    }
    pub fn packet(mut self, peer: u8, kind: u8, arg: u8) -> Script {
        self.0.extend_from_slice(&[op::PACKET, peer, kind, arg]);
        self
    }
    pub fn closed(mut self, peer: u8) -> Script {
        self.0.extend_from_slice(&[op::CLOSED, peer]);
        self
    }
    pub fn advance(mut self, t: u8) -> Script {
        self.0.extend_from_slice(&[op::ADVANCE, t]);
        self
    }
    pub fn take(mut self, peer: u8) -> Script {
        self.0.extend_from_slice(&[op::TAKE, peer]);
        self
    }
    pub fn take_all(mut self) -> Script {
        self.0.push(op::TAKE_ALL);
        self
    }
    pub fn mesh(mut self) -> Script {
        self.0.push(op::MESH);
        self
    }
    pub fn handoffs(mut self, mode: u8) -> Script {
        self.0.extend_from_slice(&[op::HANDOFFS, mode]);
        self
    }
    pub fn adopt(mut self, newest: u8) -> Script {
        self.0.extend_from_slice(&[op::ADOPT, newest]);
        self
    }
    pub fn bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Conformance vectors (byte-exact wire forms from the codec tests).
pub mod vectors {
    pub const CONNECT_V31: &[u8] = &[
        0x10, 0x11, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 0x03, 0x02, 0x00, 0x3C, 0x00,
        0x03, b'a', b'b', b'c',
    ];
    pub const CONNECT_V311: &[u8] = &[
        0x10, 0x0F, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03, b'a',
        b'b', b'c',
    ];
    pub const CONNECT_V311_WILL: &[u8] = &[
        0x10, 0x1D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0xEE, 0x00, 0x3C, 0x00, 0x02, b'i',
        b'd', 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x02, b'h', b'i', 0x00, 0x01, b'u', 0x00, 0x01,
        b'p',
    ];
    pub const CONNECT_V5: &[u8] = &[
        0x10, 0x2B, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0xC6, 0x00, 0x3C, 0x08, 0x11, 0x00,
        0x00, 0x00, 0x78, 0x21, 0x00, 0x0A, 0x00, 0x02, b'c', b'1', 0x07, 0x01, 0x01, 0x18, 0x00,
        0x00, 0x00, 0x05, 0x00, 0x01, b'w', 0x00, 0x01, b'x', 0x00, 0x01, b'u', 0x00, 0x01, b'p',
    ];
    pub const PUBLISH_V311_QOS0: &[u8] = &[
        0x30, 0x0A, 0x00, 0x03, b'a', b'/', b'b', b'h', b'e', b'l', b'l', b'o',
    ];
    pub const PUBLISH_V311_QOS1_RETAIN: &[u8] =
        &[0x3B, 0x07, 0x00, 0x01, b't', 0x00, 0x0A, b'x', b'y'];
    pub const PUBLISH_V311_QOS2: &[u8] = &[0x34, 0x05, 0x00, 0x01, b't', 0x12, 0x34];
    pub const PUBLISH_V5_PROPS: &[u8] = &[
        0x32, 0x1A, 0x00, 0x01, b't', 0x00, 0x01, 0x13, 0x01, 0x01, 0x02, 0x00, 0x00, 0x00, 0x3C,
        0x0B, 0x05, 0x23, 0x00, 0x02, 0x26, 0x00, 0x01, b'k', 0x00, 0x01, b'v', b'p',
    ];
    pub const PUBLISH_V5_ALIAS_ONLY: &[u8] =
        &[0x30, 0x07, 0x00, 0x00, 0x03, 0x23, 0x00, 0x05, b'a'];
    pub const SUBSCRIBE_V311: &[u8] = &[
        0x82, 0x0E, 0x00, 0x01, 0x00, 0x03, b'a', b'/', b'b', 0x01, 0x00, 0x03, b'c', b'/', b'#',
        0x02,
    ];
    pub const SUBSCRIBE_V5: &[u8] = &[
        0x82, 0x09, 0x00, 0x02, 0x02, 0x0B, 0x07, 0x00, 0x01, b'+', 0x2D,
    ];
    pub const UNSUBSCRIBE_V311: &[u8] = &[
        0xA2, 0x0A, 0x00, 0x03, 0x00, 0x03, b'a', b'/', b'b', 0x00, 0x01, b'#',
    ];
    pub const PUBACK: &[u8] = &[0x40, 0x02, 0x00, 0x0A];
    pub const PUBREC: &[u8] = &[0x50, 0x02, 0x00, 0x0A];
    pub const PUBREL: &[u8] = &[0x62, 0x02, 0x12, 0x34];
    pub const PUBCOMP: &[u8] = &[0x70, 0x02, 0x00, 0x01];
    pub const PINGREQ: &[u8] = &[0xC0, 0x00];
    pub const DISCONNECT: &[u8] = &[0xE0, 0x00];
    pub const DISCONNECT_V5_WILL: &[u8] = &[0xE0, 0x01, 0x04];

    /// Every vector with the protocol version it belongs to (3 = 3.1, 4 = 3.1.1, 5).
    pub const ALL: &[(&str, u8, &[u8])] = &[
        ("connect-v31", 3, CONNECT_V31),
        ("connect-v311", 4, CONNECT_V311),
        ("connect-v311-will", 4, CONNECT_V311_WILL),
        ("connect-v5", 5, CONNECT_V5),
        ("publish-v311-qos0", 4, PUBLISH_V311_QOS0),
        ("publish-v311-qos1-retain", 4, PUBLISH_V311_QOS1_RETAIN),
        ("publish-v311-qos2", 4, PUBLISH_V311_QOS2),
        ("publish-v5-props", 5, PUBLISH_V5_PROPS),
        ("publish-v5-alias-only", 5, PUBLISH_V5_ALIAS_ONLY),
        ("subscribe-v311", 4, SUBSCRIBE_V311),
        ("subscribe-v5", 5, SUBSCRIBE_V5),
        ("unsubscribe-v311", 4, UNSUBSCRIBE_V311),
        ("puback", 4, PUBACK),
        ("pubrec", 4, PUBREC),
        ("pubrel", 4, PUBREL),
        ("pubcomp", 4, PUBCOMP),
        ("pingreq", 4, PINGREQ),
        ("disconnect", 4, DISCONNECT),
        ("disconnect-v5-will", 5, DISCONNECT_V5_WILL),
    ];
}

/// Seeds for the decoder target: each vector for its version, whole and in 1-byte
/// chunks.
pub fn decode_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, level, wire) in vectors::ALL {
        let v = match level {
            3 => 0u8,
            4 => 1,
            _ => 2,
        };
        for (tag, chunk) in [("whole", 80u8), ("bytewise", 1)] {
            let mut seed = vec![v + 3 * chunk];
            seed.extend_from_slice(wire);
            out.push((format!("{name}-{tag}"), seed));
        }
    }
    out
}

/// Seeds for the connection target: short sessions built from the vectors.
pub fn connection_seeds() -> Vec<(String, Vec<u8>)> {
    use vectors::*;
    let v311_qos = Script::new(0)
        .accept(0, 0)
        .read(0, CONNECT_V311)
        .read(0, SUBSCRIBE_V311)
        .accept(1, 1)
        .read(1, CONNECT_V311_WILL)
        .read(1, PUBLISH_V311_QOS0)
        .read(1, PUBLISH_V311_QOS1_RETAIN)
        .read(1, PUBLISH_V311_QOS2)
        .read(1, PUBREL)
        .mesh()
        .take_all()
        .read(0, PUBACK)
        .read(0, PUBREC)
        .read(0, PUBCOMP)
        .read(0, UNSUBSCRIBE_V311)
        .closed(1)
        .mesh()
        .take_all()
        .read(0, PINGREQ)
        .read(0, DISCONNECT)
        .bytes();
    let v5 = Script::new(0)
        .accept(1, 0)
        .read(0, CONNECT_V5)
        .read(0, SUBSCRIBE_V5)
        .accept(0, 2)
        .read(1, CONNECT_V31)
        .read(1, PUBLISH_V311_QOS0)
        .mesh()
        .read(0, PUBLISH_V5_PROPS)
        .read(0, PUBLISH_V5_ALIAS_ONLY)
        .take(0)
        .read(0, DISCONNECT_V5_WILL)
        .advance(200)
        .take_all()
        .bytes();
    // A subscriber that never reads while a publisher floods it.
    let mut stalled = Script::new(4)
        .accept(0, 0)
        .packet(0, 0, 0x10)
        .packet(0, 2, 0x01)
        .accept(1, 1)
        .packet(1, 1, 0x14);
    for _ in 0..40 {
        stalled = stalled.packet(1, 3, 0x31).mesh();
    }
    let stalled = stalled.take(1).bytes();
    // Half-open connections and a CONNECT trickling in byte by byte.
    let mut slow = Script::new(1).accept(0, 0).accept(1, 0).accept(0, 1);
    for b in CONNECT_V311.iter().take(6) {
        slow = slow.read(2, &[*b]).advance(4);
    }
    let slow = slow.advance(40).take_all().bytes();
    // Over the connection limits and the CONNECT rate.
    let mut crowd = Script::new(1);
    for i in 0..14u8 {
        crowd = crowd.accept(i % 2, 0).packet(i, 0, (i % 4) << 2 | 0x10);
    }
    let crowd = crowd.take_all().advance(240).take_all().bytes();
    // PINGREQ flood without reading.
    let mut pings = Script::new(0).accept(0, 0).read(0, CONNECT_V311);
    let flood = PINGREQ.repeat(120);
    for _ in 0..20 {
        pings = pings.read(0, &flood);
    }
    let pings = pings.bytes();
    // One client id connecting on both shards twice while hand-offs are slow; they
    // arrive newest first (the older one is superseded); then hand-offs are refused.
    let v5_a = 0x80; // MQTT 5, client id "a", session kept
    let v5_b = 0x80 | 1 << 2;
    let races = Script::new(0)
        .handoffs(2)
        .accept(0, 0)
        .packet(0, 0, v5_a)
        .accept(1, 1)
        .packet(1, 0, v5_a)
        .advance(1)
        .accept(0, 2)
        .packet(2, 0, v5_a)
        .accept(1, 0)
        .packet(3, 0, v5_a)
        .adopt(1)
        .adopt(0)
        .handoffs(1)
        .accept(0, 1)
        .packet(4, 0, v5_b)
        .accept(1, 2)
        .packet(5, 0, v5_b)
        .take_all()
        .bytes();
    vec![
        ("v311-qos-flows".to_string(), v311_qos),
        ("v5-props-will".to_string(), v5),
        ("stalled-subscriber".to_string(), stalled),
        ("half-open-slowloris".to_string(), slow),
        ("over-limits".to_string(), crowd),
        ("pingreq-flood".to_string(), pings),
        ("handoff-races".to_string(), races),
    ]
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::{Path, PathBuf};

    use bytes::BytesMut;

    use super::*;
    use crate::protocol::{decode_packet, ProtocolVersion};
    use crate::shard::testing::testkit::{fuzz_connection, fuzz_decode, run_connection};

    fn seeds_dir(target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz/seeds")
            .join(target)
    }

    /// Replays every committed seed (conformance vectors and fixed crashes) and
    /// checks the generated seeds are committed: `RINGMQ_WRITE_SEEDS=1` rewrites them.
    /// Shared by every fuzz target's seed test (the store's too).
    pub(crate) fn replay(target: &str, generated: Vec<(String, Vec<u8>)>, run: fn(&[u8])) {
        let dir = seeds_dir(target);
        if std::env::var_os("RINGMQ_WRITE_SEEDS").is_some() {
            std::fs::create_dir_all(&dir).expect("create seeds dir");
            for (name, bytes) in &generated {
                std::fs::write(dir.join(name), bytes).expect("write seed");
            }
        }
        for (name, bytes) in &generated {
            let committed = std::fs::read(dir.join(name)).unwrap_or_else(|e| {
                panic!("seed {target}/{name} missing ({e}); run with RINGMQ_WRITE_SEEDS=1")
            });
            assert_eq!(
                &committed, bytes,
                "seed {target}/{name} is stale; run with RINGMQ_WRITE_SEEDS=1"
            );
        }
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("seeds dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        files.sort();
        assert!(files.len() >= generated.len());
        for f in files {
            let bytes = std::fs::read(&f).expect("read seed");
            let r = std::panic::catch_unwind(|| run(&bytes));
            assert!(r.is_ok(), "seed {} fails", f.display());
        }
    }

    #[test]
    fn decode_seeds_replay() {
        replay("decode", decode_seeds(), fuzz_decode);
    }

    #[test]
    fn connection_seeds_replay() {
        replay("connection", connection_seeds(), fuzz_connection);
    }

    #[test]
    fn seeds_reach_the_limits() {
        let seeds: std::collections::HashMap<String, Vec<u8>> =
            connection_seeds().into_iter().collect();
        let stats = |name: &str| {
            let d = run_connection(&seeds[name]).expect("driver");
            let mut sum = crate::shard::ShardStats::default();
            for s in &d.shards {
                let st = s.stats();
                sum.closed_not_reading += st.closed_not_reading;
                sum.closed_slow_consumer += st.closed_slow_consumer;
                sum.dropped_queue_full += st.dropped_queue_full;
                sum.connect_timeouts += st.connect_timeouts;
                sum.refused_per_ip += st.refused_per_ip;
                sum.refused_rate += st.refused_rate;
                sum.refused_max_connections += st.refused_max_connections;
                sum.messages_in += st.messages_in;
                sum.messages_out += st.messages_out;
                sum.closed_superseded += st.closed_superseded;
                sum.refused_handoff += st.refused_handoff;
            }
            sum
        };
        assert_eq!(stats("pingreq-flood").closed_not_reading, 1);
        let s = stats("stalled-subscriber");
        assert_eq!((s.messages_in, s.closed_slow_consumer), (40, 1));
        assert!(s.dropped_queue_full >= 1);
        assert_eq!(stats("half-open-slowloris").connect_timeouts, 3);
        let s = stats("handoff-races");
        assert_eq!((s.closed_superseded, s.refused_handoff), (1, 1));
        let s = stats("over-limits");
        assert!(s.refused_rate + s.refused_per_ip + s.refused_max_connections > 0);
    }

    #[test]
    fn vectors_decode_as_their_version() {
        for (name, level, wire) in vectors::ALL {
            let version = match level {
                3 => ProtocolVersion::V31,
                4 => ProtocolVersion::V311,
                _ => ProtocolVersion::V5,
            };
            let mut b = BytesMut::from(*wire);
            let p = decode_packet(&mut b, version, usize::MAX);
            assert!(matches!(p, Ok(Some(_))), "{name}: {p:?}");
            assert!(b.is_empty(), "{name}");
        }
    }
}
