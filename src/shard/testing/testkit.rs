//! Fuzzing entry points shared by the cargo-fuzz targets (`tests/fuzz`) and by
//! `cargo test`, which replays every committed seed through the same code so a
//! fixed crash stays fixed without the fuzzer. Compiled for tests and behind the
//! `testkit` feature only; not part of the broker's API.
//!
//! [`fuzz_connection`] drives a 2-shard set of [`Shard`]s the way the worker
//! does, but lets the input choose every step — accept, bytes in, peer close,
//! time, socket writability, mesh delivery, refused and delayed hand-offs (through
//! the `Wiring` shared with the test harness) — and checks invariants as it goes:
//! no panic, unread output bounded (on every take), byte gauges and counts exact
//! (every 8th step and at the end), server output decodable, no `ConnId` handed
//! out twice before its release.
//!
//! The seeds (`Script`, conformance `vectors`, `decode_seeds`, `connection_seeds`)
//! live in `seeds.rs` and are re-exported here.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use smallvec::smallvec;

pub use super::seeds::{connection_seeds, decode_seeds, vectors, Script};
use super::wiring::{self, Moved, TestMesh, Wiring};
use crate::config::{Config, SlowConsumerPolicy};
use crate::protocol::{
    decode_packet, encode_packet, Connect, Packet, Properties, ProtocolVersion, PubResp, Publish,
    PublishProperties, QoS, Subscribe, SubscriptionOptions, Unsubscribe, MAX_REMAINING_LENGTH,
};
use crate::shard::{Action, ConnId, Shard, ShardId};
pub use crate::transport::testkit::{fuzz_tls, tls_seeds};

/// Arbitrary bytes into the decoder for every protocol version in arbitrary chunks:
/// never panics, consumes only whole frames, and every packet it returns encodes
/// back to bytes that decode to the same packet. The first byte picks the version
/// (`% 3`) and the chunk size (`/ 3`).
pub fn fuzz_decode(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let version = match selector % 3 {
        0 => ProtocolVersion::V31,
        1 => ProtocolVersion::V311,
        _ => ProtocolVersion::V5,
    };
    let chunk = usize::from(selector / 3).max(1);
    let mut rx = BytesMut::new();
    for piece in rest.chunks(chunk) {
        rx.extend_from_slice(piece);
        loop {
            let before = rx.len();
            match decode_packet(&mut rx, version, 4096) {
                Ok(Some(packet)) => {
                    assert!(
                        rx.len() < before,
                        "a packet was returned without consuming bytes"
                    );
                    let mut wire = BytesMut::new();
                    encode_packet(&packet, version, &mut wire);
                    let again = decode_packet(&mut wire, version, usize::MAX)
                        .expect("re-encoded packet decodes")
                        .expect("re-encoded packet is complete");
                    assert_eq!(again, packet, "encode/decode round trip changed the packet");
                    assert!(wire.is_empty(), "re-encoded packet left trailing bytes");
                }
                Ok(None) => {
                    assert_eq!(rx.len(), before, "an incomplete frame consumed bytes");
                    break;
                }
                Err(_) => return,
            }
        }
    }
}

// ---- connection state machine ------------------------------------------------

/// Operation codes of the [`fuzz_connection`] input (the op byte modulo `OPS`).
pub mod op {
    /// `shard, ip`: a TCP connection is accepted.
    pub const ACCEPT: u8 = 0;
    /// `peer, len, bytes…`: bytes arrive on a connection.
    pub const READ: u8 = 1;
    /// `peer`: the peer closes (`on_closed`, then `release`).
    pub const CLOSED: u8 = 2;
    /// `t`: time moves on (`t * 50 ms`, or minutes for `t >= 240`), timers run.
    pub const ADVANCE: u8 = 3;
    /// `peer`: the socket is writable once (`take_tx`).
    pub const TAKE: u8 = 4;
    /// Delivers the oldest shard-to-shard message.
    pub const MESH: u8 = 5;
    /// `peer, kind, arg`: a well-formed packet from a small dictionary arrives.
    pub const PACKET: u8 = 6;
    /// Every socket is writable once.
    pub const TAKE_ALL: u8 = 7;
    /// `mode`: from now on hand-offs are refused (bit 0: owner's table or mesh
    /// full) or held in flight (bit 1) until `ADOPT`; neither: adopted at once.
    pub const HANDOFFS: u8 = 8;
    /// `newest`: one held hand-off (the newest if bit 0, else the oldest) arrives.
    pub const ADOPT: u8 = 9;
    pub const OPS: u8 = 10;
}

const SHARDS: usize = 2;
const MAX_OUTBOUND_BYTES: usize = 2048;
const MAX_PACKET_BYTES: u32 = 4096;
const MAX_INFLIGHT: u16 = 4;

/// Small limits so that every bound is reached within a few kilobytes of input.
/// `flags` (the input's first byte) varies the policies.
pub fn fuzz_config(flags: u8) -> Config {
    Config {
        max_connections: 12,
        max_connections_per_ip: 6,
        connect_rate_per_s: if flags & 1 != 0 { 4 } else { 0 },
        connect_timeout_ms: 1000,
        max_packet_size: MAX_PACKET_BYTES,
        receive_maximum: 4,
        max_inflight: MAX_INFLIGHT,
        topic_alias_maximum: 4,
        max_topic_levels: 4,
        max_topic_len: 32,
        max_subscriptions_per_client: 4,
        max_client_id_len: 16,
        max_session_expiry_s: 600,
        max_queued_messages: 8,
        max_queued_bytes: 2048,
        queue_qos0_offline: flags & 2 != 0,
        max_outbound_bytes: MAX_OUTBOUND_BYTES,
        slow_consumer_policy: if flags & 4 != 0 {
            SlowConsumerPolicy::Disconnect
        } else {
            SlowConsumerPolicy::Drop
        },
        memory_high_water_bytes: if flags & 8 != 0 { 16 * 1024 } else { 0 },
        max_retained_messages: 8,
        ..Config::default()
    }
}

/// What the IO side knows about one connection.
struct Peer {
    shard: ShardId,
    conn: ConnId,
    /// Not released and not in flight between shards: operations may name it.
    open: bool,
    /// Server output not yet decoded (a packet may straddle two takes).
    undecoded: BytesMut,
}

/// A set of shards driven step by step, with the worker's duties done in between.
pub struct Driver {
    pub shards: Vec<Shard>,
    now: Instant,
    peers: Vec<Peer>,
    wiring: Wiring,
    mesh: TestMesh,
    max_tx: usize,
}

impl Driver {
    pub fn new(config: Config) -> Driver {
        // Resends of the inflight window skip the buffer bound (they are bounded by
        // the window instead); control replies may use the allowance.
        let max_tx = config.max_outbound_bytes
            + crate::shard::control_allowance(config.max_outbound_bytes)
            + usize::from(config.max_inflight) * (config.max_packet_size as usize + 64);
        let config = Arc::new(config);
        let node = crate::shard::NodeCounters::new();
        Driver {
            shards: (0..SHARDS)
                .map(|i| Shard::in_node(i, SHARDS, config.clone(), node.clone()))
                .collect(),
            now: Instant::now(),
            peers: Vec::new(),
            wiring: Wiring::default(),
            mesh: VecDeque::new(),
            max_tx,
        }
    }

    fn peer(&self, sel: u8) -> Option<usize> {
        if self.peers.is_empty() {
            return None;
        }
        let i = usize::from(sel) % self.peers.len();
        self.peers[i].open.then_some(i)
    }

    pub fn accept(&mut self, shard: ShardId, ip: u8) {
        let peer = SocketAddr::from(([127, 0, 0, 1 + ip % 3], 40000));
        let conn = self.shards[shard].accept(peer, self.now);
        let p = self.peers.len();
        self.wiring.bind(shard, conn, p);
        self.peers.push(Peer {
            shard,
            conn,
            open: true,
            undecoded: BytesMut::new(),
        });
    }

    pub fn read(&mut self, p: usize, bytes: &[u8]) {
        let (s, c) = (self.peers[p].shard, self.peers[p].conn);
        self.shards[s].on_read(c, bytes, self.now);
    }

    pub fn closed(&mut self, p: usize) {
        let (s, c) = (self.peers[p].shard, self.peers[p].conn);
        self.shards[s].on_closed(c, self.now);
        self.take(p);
        self.release(p);
    }

    fn release(&mut self, p: usize) {
        let (s, c) = (self.peers[p].shard, self.peers[p].conn);
        self.wiring.release(&mut self.shards, s, c);
        self.peers[p].open = false;
    }

    /// How hand-offs go from now on (see [`op::HANDOFFS`]).
    pub fn handoffs(&mut self, mode: u8) {
        self.wiring.refuse_migrations = mode & 1 != 0;
        self.wiring.hold_migrations = mode & 2 != 0;
    }

    /// One held hand-off arrives at its owner.
    pub fn adopt_held(&mut self, newest_first: bool) {
        if let Some(m) = self
            .wiring
            .adopt_held(&mut self.shards, newest_first, self.now)
        {
            self.moved(m);
        }
    }

    fn moved(&mut self, m: Moved) {
        let p = &mut self.peers[m.peer];
        p.shard = m.shard;
        p.conn = m.conn;
        p.open = true;
    }

    pub fn advance(&mut self, t: u8) {
        self.now += if t >= 240 {
            Duration::from_secs(60 * u64::from(t - 239))
        } else {
            Duration::from_millis(50 * u64::from(t))
        };
        for s in &mut self.shards {
            if s.next_deadline().is_some_and(|d| d <= self.now) {
                s.on_timer(self.now);
            }
        }
    }

    /// One writable event: takes what is pending and checks it is valid MQTT.
    pub fn take(&mut self, p: usize) {
        let (s, c) = (self.peers[p].shard, self.peers[p].conn);
        let Some(out) = self.shards[s].take_tx(c) else {
            return;
        };
        assert!(
            out.len() <= self.max_tx,
            "conn {c} on shard {s} had {} unread bytes (bound {})",
            out.len(),
            self.max_tx
        );
        let version = self.shards[s]
            .conns
            .get(c)
            .map_or(ProtocolVersion::V311, |c| c.version);
        let buf = &mut self.peers[p].undecoded;
        buf.extend_from_slice(&out);
        // Each turn consumes a frame or stops.
        loop {
            match decode_packet(buf, version, MAX_REMAINING_LENGTH + 5) {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => panic!("server sent bytes a {version:?} client cannot decode: {e:?}"),
            }
        }
    }

    pub fn deliver_one(&mut self) {
        if let Some((from, to, msg)) = self.mesh.pop_front() {
            self.shards[to].on_message(from, msg, self.now);
        }
    }

    /// The worker's turn: performs every pending action. `Flush` is left to the
    /// input (`TAKE`), so sockets that never become writable are modelled.
    pub fn settle(&mut self) {
        // Each turn performs one action; actions only come from earlier input or
        // from adopting (which parses bytes already received), so this ends.
        for _ in 0..1_000_000 {
            let mut moved = false;
            for s in 0..self.shards.len() {
                if self.shards[s].streams_pending() {
                    moved = true;
                    self.shards[s].run_streams(self.now);
                }
                // Like the worker: control messages go to the mesh after the actions.
                let Some(a) = self.shards[s].poll_action() else {
                    moved |= self.take_control(s);
                    continue;
                };
                moved = true;
                self.perform(s, a);
            }
            if !moved {
                return;
            }
        }
        panic!("actions do not settle");
    }

    fn perform(&mut self, s: ShardId, a: Action) {
        match a {
            Action::Flush(_) => {}
            Action::Verify { conn, generation } => {
                if let Some(job) = self.shards[s].take_verify_job(conn, generation) {
                    let ok = job.run(crate::shard::testing::UNIX_NOW_S);
                    let now = self.now;
                    self.shards[s].on_verified(conn, generation, Some(ok), now);
                }
            }
            Action::Close(conn) => {
                if let Some(p) = self.find(s, conn) {
                    self.take(p);
                    self.release(p);
                } else {
                    panic!("Close for conn {conn} on shard {s}, which the IO side does not hold");
                }
            }
            Action::Migrate { conn, to, handoff } => {
                assert!(to < SHARDS && to != s, "migrate from {s} to {to}");
                let p = self
                    .find(s, conn)
                    .unwrap_or_else(|| panic!("Migrate of unknown conn {conn} on shard {s}"));
                // Held: in flight, nothing may name it until it is adopted.
                self.peers[p].open = false;
                let now = self.now;
                match self
                    .wiring
                    .migrate(&mut self.shards, s, conn, to, *handoff, now)
                {
                    Some(m) => self.moved(m),
                    // Refused: still here, answered, and a `Close` follows.
                    None if self.wiring.peer(s, conn) == Some(p) => self.peers[p].open = true,
                    None => {}
                }
            }
            Action::Send { to, msg } => {
                assert!(to < SHARDS && to != s, "send from {s} to {to}");
                self.mesh.push_back((s, to, msg));
            }
        }
    }

    /// Like the worker, with an unbounded mesh: every waiting control message enters it.
    fn take_control(&mut self, s: ShardId) -> bool {
        wiring::take_control(&mut self.shards, s, &mut self.mesh, None)
    }

    fn find(&self, s: ShardId, conn: ConnId) -> Option<usize> {
        self.wiring.peer(s, conn)
    }

    /// Bounds and bookkeeping that must hold between any two operations.
    pub fn check(&self) {
        for (i, sh) in self.shards.iter().enumerate() {
            let (mut tx, mut rx) = (0, 0);
            for (id, c) in sh.conns.iter() {
                assert!(
                    c.tx.len() <= self.max_tx,
                    "conn {id} on shard {i} holds {} unread bytes (bound {})",
                    c.tx.len(),
                    self.max_tx
                );
                assert!(
                    c.rx.len() <= sh.config.max_packet_size as usize + 5,
                    "conn {id} on shard {i} buffers {} received bytes",
                    c.rx.len()
                );
                assert_eq!(
                    c.rx_counted as usize,
                    c.rx.capacity(),
                    "conn {id} on shard {i}: receive buffer not counted"
                );
                // The gauge counts each connection's own bytes; shared payload
                // segments are counted once per node (`bytes_shared`).
                tx += c.tx.own_len();
                rx += c.rx.capacity();
            }
            let st = sh.stats();
            assert_eq!(st.bytes_tx, tx, "bytes_tx gauge on shard {i}");
            assert_eq!(st.bytes_rx, rx, "bytes_rx gauge on shard {i}");
            let queued: usize = sh
                .sessions
                .iter()
                .filter_map(|(_, s)| s.delivery.as_ref())
                .map(|d| {
                    assert!(d.queue.len() <= sh.config.max_queued_messages);
                    assert!(d.queued_bytes <= sh.config.max_queued_bytes);
                    assert!(d.inflight.len() <= usize::from(sh.config.max_inflight));
                    d.queued_bytes
                })
                .sum();
            assert_eq!(st.bytes_queued, queued, "bytes_queued gauge on shard {i}");
            let mut retained = 0;
            sh.retained.for_each(|_, m| retained += m.body.cost_bytes());
            assert_eq!(
                st.bytes_retained, retained,
                "bytes_retained gauge on shard {i}"
            );
            let live = self.wiring.live_on(i);
            assert_eq!(st.connections, live, "connections gauge on shard {i}");
        }
    }

    /// End of input: everything in flight is delivered and every socket drained.
    pub fn finish(&mut self) {
        self.handoffs(0);
        for _ in 0..10_000 {
            self.settle();
            if self.mesh.is_empty() && self.wiring.in_flight() == 0 {
                break;
            }
            while self.wiring.in_flight() > 0 {
                self.adopt_held(false);
            }
            while !self.mesh.is_empty() {
                self.deliver_one();
            }
        }
        for p in 0..self.peers.len() {
            if self.peers[p].open {
                self.take(p);
            }
        }
        self.settle();
        self.check();
    }
}

const IDS: [&str; 4] = ["a", "b", "c", ""];

/// A well-formed packet from a small dictionary, so the fuzzer reaches sessions,
/// QoS flows and fan-out quickly. `arg` picks the variant.
pub fn dictionary_packet(kind: u8, arg: u8) -> (Packet, ProtocolVersion) {
    let version = if arg & 0x80 != 0 {
        ProtocolVersion::V5
    } else {
        ProtocolVersion::V311
    };
    let qos = match arg % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let packet_id = u16::from(arg % 8) + 1;
    let filter = |i: u8| match i % 4 {
        0 => Bytes::from_static(b"t/#"),
        1 => Bytes::from_static(b"t/+"),
        2 => Bytes::from_static(b"$share/g/t/x"),
        _ => Bytes::from_static(b"#"),
    };
    let packet = match kind % 10 {
        0 | 1 => {
            let mut properties = Properties::default();
            if version.is_v5() {
                properties.to_mut().session_expiry_interval_s = Some(u32::from(arg % 4) * 30);
                properties.to_mut().receive_maximum = Some(2);
                properties.to_mut().topic_alias_maximum = Some(u16::from(arg % 3));
                properties.to_mut().maximum_packet_size =
                    Some(if arg & 8 != 0 { 64 } else { 1024 });
            }
            Packet::Connect(Box::new(Connect {
                protocol: version,
                clean_start: arg & 0x10 != 0,
                keep_alive_s: u16::from(arg % 3),
                client_id: Bytes::from_static(IDS[usize::from(arg >> 2) % IDS.len()].as_bytes()),
                will: (arg & 0x20 != 0).then(|| crate::protocol::LastWill {
                    topic: Bytes::from_static(b"t/will"),
                    payload: Bytes::from_static(b"w"),
                    qos,
                    retain: arg & 0x40 != 0,
                    properties: Properties::default(),
                }),
                username: None,
                password: None,
                properties,
            }))
        }
        2 => Packet::Subscribe(Subscribe {
            packet_id,
            filters: smallvec![(
                filter(arg >> 3),
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                }
            )],
            properties: Properties::default(),
        }),
        3 | 4 => Packet::Publish(Publish {
            dup: false,
            qos,
            retain: arg & 0x40 != 0,
            topic: Bytes::from_static(if arg & 8 != 0 { b"t/x" } else { b"t/y/z" }),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { packet_id },
            properties: PublishProperties::default(),
            payload: Bytes::from(vec![b'p'; usize::from(arg & 0x30) * 8]),
        }),
        5 => Packet::PubAck(PubResp::new(packet_id)),
        6 => match arg % 3 {
            0 => Packet::PubRec(PubResp::new(packet_id)),
            1 => Packet::PubRel(PubResp::new(packet_id)),
            _ => Packet::PubComp(PubResp::new(packet_id)),
        },
        7 => Packet::PingReq,
        8 => Packet::Unsubscribe(Unsubscribe {
            packet_id,
            filters: smallvec![filter(arg >> 3)],
            properties: Properties::default(),
        }),
        _ => Packet::Disconnect(crate::protocol::Disconnect {
            code: crate::protocol::ReasonCode::Success,
            properties: Properties::default(),
        }),
    };
    (packet, version)
}

/// Runs one fuzz input (see [`op`]) and checks the invariants along the way.
pub fn fuzz_connection(data: &[u8]) {
    run_connection(data);
}

/// [`fuzz_connection`], returning the finished driver for inspection.
pub fn run_connection(data: &[u8]) -> Option<Driver> {
    let (&flags, mut rest) = data.split_first()?;
    let mut next = move || {
        let (&b, r) = rest.split_first()?;
        rest = r;
        Some(b)
    };
    let mut d = Driver::new(fuzz_config(flags));
    // Each turn consumes at least one input byte.
    let mut ops = 0u32;
    while let Some(code) = next() {
        match code % op::OPS {
            op::ACCEPT => {
                let (Some(s), Some(ip)) = (next(), next()) else {
                    break;
                };
                d.accept(usize::from(s) % SHARDS, ip);
            }
            op::READ => {
                let (Some(p), Some(len)) = (next(), next()) else {
                    break;
                };
                let mut chunk = Vec::with_capacity(usize::from(len));
                for _ in 0..len {
                    match next() {
                        Some(b) => chunk.push(b),
                        None => break,
                    }
                }
                if let Some(p) = d.peer(p) {
                    d.read(p, &chunk);
                }
            }
            op::CLOSED => {
                if let Some(p) = next().and_then(|p| d.peer(p)) {
                    d.closed(p);
                }
            }
            op::ADVANCE => {
                let Some(t) = next() else { break };
                d.advance(t);
            }
            op::TAKE => {
                if let Some(p) = next().and_then(|p| d.peer(p)) {
                    d.take(p);
                }
            }
            op::MESH => d.deliver_one(),
            op::HANDOFFS => {
                let Some(mode) = next() else { break };
                d.handoffs(mode);
            }
            op::ADOPT => {
                let Some(newest) = next() else { break };
                d.adopt_held(newest & 1 != 0);
            }
            op::PACKET => {
                let (Some(p), Some(kind), Some(arg)) = (next(), next(), next()) else {
                    break;
                };
                if let Some(p) = d.peer(p) {
                    let (packet, version) = dictionary_packet(kind, arg);
                    let mut wire = BytesMut::new();
                    encode_packet(&packet, version, &mut wire);
                    d.read(p, &wire);
                }
            }
            _ => {
                for p in 0..d.peers.len() {
                    if d.peers[p].open {
                        d.take(p);
                    }
                }
            }
        }
        d.settle();
        // The full check walks every connection and session: every 8th step keeps
        // long inputs linear (`take` checks the output bound on every write).
        ops += 1;
        if ops % 8 == 0 {
            d.check();
        }
    }
    d.finish();
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect(d: &mut Driver, p: usize) {
        // CONNECT 3.1.1, clean, empty client id: the shard assigns an id it owns.
        let (packet, version) = dictionary_packet(0, 3 << 2 | 0x10);
        let mut wire = BytesMut::new();
        encode_packet(&packet, version, &mut wire);
        d.read(p, &wire);
        d.settle();
        d.check();
    }

    fn total(d: &Driver, f: fn(&crate::shard::ShardStats) -> u64) -> u64 {
        d.shards.iter().map(|s| f(s.stats())).sum()
    }

    #[test]
    fn driver_reaches_the_connection_limits() {
        // 6 per IP, 12 per node (shared by both shards).
        let mut d = Driver::new(fuzz_config(0));
        for i in 0..16 {
            d.accept(i % 2, if i < 8 { 0 } else { 1 });
            connect(&mut d, i);
        }
        assert_eq!(total(&d, |s| s.refused_per_ip), 2);
        assert_eq!(total(&d, |s| s.refused_max_connections), 2);
        assert_eq!(d.wiring.live(), 12);
        d.finish();

        // CONNECT rate 4/s per shard, bursts of one second.
        let mut d = Driver::new(fuzz_config(1));
        for i in 0..6 {
            d.accept(0, i as u8);
            connect(&mut d, i);
        }
        assert_eq!(total(&d, |s| s.refused_rate), 2);
        d.advance(5); // 250 ms: one more token
        d.accept(0, 1);
        connect(&mut d, 6);
        d.accept(0, 2);
        connect(&mut d, 7);
        assert_eq!(total(&d, |s| s.refused_rate), 3);
        assert_eq!(d.wiring.live(), 5);
        d.finish();
    }
}
