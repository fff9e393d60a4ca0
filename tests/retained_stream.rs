//! A new subscriber gets every matching retained message (issue #23): the real
//! `ringmq` binary stores `fleet/devNNNNNN/state` retained messages (64-byte
//! payloads), then a fresh connection subscribes to `#` at QoS 0, 1 and 2 and reads
//! slowly (a pause of about a second mid-stream, while the broker's buffers for it
//! are full) and must get each one exactly once, with retain = 1 and its payload.
//! `--shards 1` and `--shards 2` (the subscriber's session on the other shard than
//! the publisher's, so it reads its shard's replica); the backend follows
//! `RINGMQ_TEST_IO` (run-all runs it again with `epoll`).
//!
//! 200,000 messages (`RETAINED_STREAM_COUNT` overrides it); about 15 s for both
//! tests in a debug build on the 2-core machine.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use smallvec::smallvec;

use ringmq::protocol::{
    decode_packet, encode_packet, Connect, Packet, Properties, ProtocolVersion, PubResp, Publish,
    PublishProperties, QoS, Subscribe, SubscriptionOptions,
};

use support::{id_on_shard, Broker};

/// Bound on every wait; generous for a loaded machine. Nothing here is timed.
const WAIT: Duration = Duration::from_secs(120);
const V: ProtocolVersion = ProtocolVersion::V311;
const PAYLOAD_LEN: usize = 64;
/// How long a subscriber that got everything listens for an extra copy.
const QUIET: Duration = Duration::from_millis(700);

fn count() -> usize {
    match std::env::var("RETAINED_STREAM_COUNT") {
        Ok(n) => n.parse().expect("RETAINED_STREAM_COUNT: a number"),
        Err(_) => 200_000,
    }
}

fn topic(i: usize) -> String {
    format!("fleet/dev{i:06}/state")
}

/// The payload of device `i`: its number, padded to 64 bytes.
fn payload(i: usize) -> Vec<u8> {
    let mut p = format!("{i:06}").into_bytes();
    p.resize(PAYLOAD_LEN, b'.');
    p
}

struct Conn {
    stream: TcpStream,
    rx: BytesMut,
    tx: BytesMut,
}

impl Conn {
    fn connect(addr: &str, client_id: &str) -> Conn {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        let mut c = Conn {
            stream,
            rx: BytesMut::new(),
            tx: BytesMut::new(),
        };
        c.push(&Packet::Connect(Box::new(Connect {
            protocol: V,
            clean_start: true,
            keep_alive_s: 0,
            client_id: Bytes::copy_from_slice(client_id.as_bytes()),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })));
        c.flush();
        match c.recv() {
            Packet::ConnAck(a) if a.code == ringmq::protocol::ReasonCode::Success => {}
            other => panic!("{client_id}: expected CONNACK, got {other:?}"),
        }
        c
    }

    /// Encodes into the write buffer; `flush` sends it.
    fn push(&mut self, p: &Packet) {
        encode_packet(p, V, &mut self.tx);
    }

    fn flush(&mut self) {
        if !self.tx.is_empty() {
            self.stream.write_all(&self.tx).expect("write");
            self.tx.clear();
        }
    }

    /// The next packet; reads as much as the socket has.
    fn recv(&mut self) -> Packet {
        loop {
            if let Some(p) = decode_packet(&mut self.rx, V, 1 << 20).expect("decode") {
                return p;
            }
            let mut buf = [0u8; 64 * 1024];
            let n = self.stream.read(&mut buf).expect("read (timed out?)");
            assert!(n > 0, "connection closed by the broker");
            self.rx.extend_from_slice(&buf[..n]);
        }
    }

    /// Whether a whole packet is buffered (so `recv` will not read the socket).
    fn has_packet(&self) -> bool {
        let b = &self.rx[..];
        let mut len = 0usize;
        for i in 0..4 {
            let Some(&byte) = b.get(1 + i) else {
                return false;
            };
            len |= usize::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return b.len() >= 2 + i + len;
            }
        }
        false
    }

    /// Reads for `QUIET`, answering PUBRELs; fails on any other packet.
    fn expect_quiet(&mut self) {
        let until = Instant::now() + QUIET;
        loop {
            while self.has_packet() {
                match self.recv() {
                    Packet::PubRel(r) => self.push(&Packet::PubComp(PubResp::new(r.packet_id))),
                    other => panic!("nothing more expected, got {other:?}"),
                }
            }
            self.flush();
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("connection closed by the broker"),
                Ok(n) => self.rx.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

/// Stores `n` retained messages at QoS 2 (so each subscriber gets its granted QoS)
/// through a publisher owned by `shard`, in windows of `WINDOW` (3.x has no Receive
/// Maximum: the broker closes a client past its own); returns once every one was
/// acknowledged.
fn store(addr: &str, shard: usize, shards: usize, n: usize) {
    const WINDOW: usize = 500;
    let mut p = Conn::connect(addr, &id_on_shard("publisher", shard, shards));
    let mut i = 0;
    while i < n {
        let batch = WINDOW.min(n - i);
        for k in 0..batch {
            p.push(&Packet::Publish(Publish {
                dup: false,
                qos: QoS::ExactlyOnce,
                retain: true,
                topic: Bytes::from(topic(i + k)),
                packet_id: (k + 1) as u16,
                properties: PublishProperties::default(),
                payload: Bytes::from(payload(i + k)),
            }));
        }
        p.flush();
        for _ in 0..batch {
            match p.recv() {
                Packet::PubRec(r) => p.push(&Packet::PubRel(PubResp::new(r.packet_id))),
                other => panic!("expected PUBREC, got {other:?}"),
            }
        }
        p.flush();
        for _ in 0..batch {
            match p.recv() {
                Packet::PubComp(_) => {}
                other => panic!("expected PUBCOMP, got {other:?}"),
            }
        }
        i += batch;
    }
}

/// Subscribes to `#` at `qos` from a session owned by `shard`, reads (acking QoS
/// 1/2) with a pause of about a second once half arrived, and checks every device's
/// message arrives exactly once. Returns how long the stream took, pause included.
fn subscribe_all(addr: &str, shard: usize, shards: usize, n: usize, qos: QoS) -> Duration {
    let id = id_on_shard(&format!("dashboard-q{}", qos as u8), shard, shards);
    let mut s = Conn::connect(addr, &id);
    let start = Instant::now();
    s.push(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: smallvec![(
            Bytes::from_static(b"#"),
            SubscriptionOptions {
                qos,
                ..Default::default()
            }
        )],
        properties: Properties::default(),
    }));
    s.flush();
    match s.recv() {
        Packet::SubAck(a) => assert_eq!(a.packet_id, 1),
        other => panic!("expected SUBACK, got {other:?}"),
    }
    let mut seen = vec![false; n];
    let mut got = 0;
    let mut paused = false;
    while got < n {
        let packet = s.recv();
        match packet {
            Packet::Publish(p) => {
                assert!(p.retain, "retain flag on {:?}", p.topic);
                assert!(!p.dup, "DUP on {:?}", p.topic);
                let t = std::str::from_utf8(&p.topic).expect("utf-8 topic");
                let i: usize = t
                    .strip_prefix("fleet/dev")
                    .and_then(|r| r.strip_suffix("/state"))
                    .and_then(|d| d.parse().ok())
                    .unwrap_or_else(|| panic!("unexpected topic {t}"));
                assert!(i < n, "{t}");
                assert!(!seen[i], "{t} twice (after {got} messages)");
                assert_eq!(p.payload.as_ref(), payload(i).as_slice(), "{t}");
                assert_eq!(p.qos, qos, "{t}");
                seen[i] = true;
                got += 1;
                match qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => s.push(&Packet::PubAck(PubResp::new(p.packet_id))),
                    QoS::ExactlyOnce => s.push(&Packet::PubRec(PubResp::new(p.packet_id))),
                }
            }
            Packet::PubRel(r) => s.push(&Packet::PubComp(PubResp::new(r.packet_id))),
            other => panic!("unexpected {other:?}"),
        }
        if !s.has_packet() {
            s.flush();
        }
        if !paused && got >= n / 2 {
            // The slow reader: acks sent, then nothing read for a second while the
            // broker's buffers for this connection fill up.
            paused = true;
            s.flush();
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    s.flush();
    let took = start.elapsed();
    s.expect_quiet();
    took
}

fn run(shards: usize) {
    let n = count();
    let shards_arg = shards.to_string();
    let broker = Broker::start(&["--shards", &shards_arg, "--log-level", "warn"]);
    let addr = broker.addr().to_string();
    let publisher_shard = shards - 1;
    store(&addr, publisher_shard, shards, n);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let took = subscribe_all(&addr, 0, shards, n, qos);
        eprintln!(
            "retained_stream: {n} retained to a new `#` subscriber at {qos:?}, {shards} shard(s): {} ms (1 s pause included)",
            took.as_millis()
        );
    }
}

#[test]
fn every_retained_message_once_one_shard() {
    run(1);
}

#[test]
fn every_retained_message_once_two_shards() {
    run(2);
}
