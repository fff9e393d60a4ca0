//! Hostile clients against the real `ringmq` binary on loopback (issue #7): a stalled
//! subscriber under 100 publishers, connect/disconnect churn, half-open and slowloris
//! connections, random bytes. Each test starts its own 2-shard broker (killed by PID
//! on drop); tests run one at a time so memory figures are the broker's own. Every
//! loop is bounded in count and every wait in time; assertions compare counts, never
//! timings. Figures (RSS, delivered counts) are printed for the report.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use smallvec::smallvec;

use ringmq::protocol::{
    decode_packet, encode_packet, Connect, Packet, Properties, ProtocolVersion, PubResp, Publish,
    PublishProperties, QoS, ReasonCode, Subscribe, SubscriptionOptions, MAX_REMAINING_LENGTH,
};

use support::{Broker, Launch};

/// One broker at a time: the RSS figures are then the broker's alone, and the
/// machine's two cores are not split between several load tests.
static SERIAL: Mutex<()> = Mutex::new(());

const STARTUP: Duration = Duration::from_secs(20);
/// Generous bound on any single wait for the broker; never a pass/fail timing.
const WAIT: Duration = Duration::from_secs(20);

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A 2-shard ringmq with `extra` arguments, stopped by PID on drop.
fn start_broker(extra: &[&str]) -> Broker {
    let mut args = vec!["--shards", "2"];
    args.extend_from_slice(extra);
    Launch::new(&args).startup_timeout(STARTUP).spawn()
}

/// Resident set size of the broker, from /proc/PID/status.
fn broker_rss_kib(b: &Broker) -> u64 {
    rss_kib(b.pid())
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples the broker's RSS until stopped; returns the peak (KiB).
fn rss_sampler(pid: u32, stop: Arc<AtomicBool>) -> thread::JoinHandle<u64> {
    thread::spawn(move || {
        let mut peak = 0;
        // Bounded: ten minutes of 20 ms samples at most.
        for _ in 0..30_000 {
            peak = peak.max(rss_kib(pid));
            if stop.load(Ordering::Relaxed) {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        peak
    })
}

// ---- a small blocking MQTT client ---------------------------------------------

// A test client's read result, moved once per packet: boxing buys nothing here.
#[allow(clippy::large_enum_variant)]
enum Got {
    Packet(Packet),
    Closed,
    Timeout,
}

struct Client {
    stream: TcpStream,
    rx: BytesMut,
    version: ProtocolVersion,
}

impl Client {
    fn tcp(addr: &str) -> Client {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        stream.set_write_timeout(Some(WAIT)).expect("write timeout");
        Client {
            stream,
            rx: BytesMut::new(),
            version: ProtocolVersion::V311,
        }
    }

    /// Connects (clean start, no keepalive) and expects a successful CONNACK.
    fn connect(addr: &str, id: &str, version: ProtocolVersion) -> Client {
        let mut c = Client::tcp(addr);
        c.version = version;
        c.send(&connect_packet(id, version));
        match c.read(WAIT) {
            Got::Packet(Packet::ConnAck(a)) if a.code == ReasonCode::Success => c,
            Got::Packet(p) => panic!("{id}: expected CONNACK, got {p:?}"),
            Got::Closed => panic!("{id}: closed before CONNACK"),
            Got::Timeout => panic!("{id}: no CONNACK"),
        }
    }

    fn send(&mut self, p: &Packet) {
        let mut b = BytesMut::new();
        encode_packet(p, self.version, &mut b);
        self.stream.write_all(&b).expect("write");
    }

    fn read(&mut self, timeout: Duration) -> Got {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 16 * 1024];
        // Each turn decodes a packet or reads once; bounded by the deadline.
        loop {
            match decode_packet(&mut self.rx, self.version, MAX_REMAINING_LENGTH + 5) {
                Ok(Some(p)) => return Got::Packet(p),
                Ok(None) => {}
                Err(e) => panic!("broker sent undecodable bytes: {e:?}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Timeout;
            }
            self.stream.set_read_timeout(Some(left)).expect("timeout");
            match self.stream.read(&mut buf) {
                Ok(0) => return Got::Closed,
                Ok(n) => self.rx.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Got::Timeout
                }
                Err(_) => return Got::Closed,
            }
        }
    }

    fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: smallvec![(
                Bytes::copy_from_slice(filter.as_bytes()),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                }
            )],
            properties: Properties::default(),
        }));
        match self.read(WAIT) {
            Got::Packet(Packet::SubAck(a)) => assert!(!a.codes[0].is_error(), "{a:?}"),
            _ => panic!("no SUBACK for {filter}"),
        }
    }

    /// Publish → own subscription → receive: the broker still works.
    fn round_trip(&mut self, topic: &str) {
        self.subscribe(topic, QoS::AtLeastOnce);
        self.send(&publish(topic, b"alive".to_vec(), QoS::AtLeastOnce, 9));
        let (mut acked, mut got) = (false, false);
        for _ in 0..4 {
            match self.read(WAIT) {
                Got::Packet(Packet::PubAck(r)) if r.packet_id == 9 => acked = true,
                Got::Packet(Packet::Publish(p)) => {
                    assert_eq!(&p.payload[..], b"alive");
                    self.send(&Packet::PubAck(PubResp::new(p.packet_id)));
                    got = true;
                }
                Got::Packet(p) => panic!("unexpected {p:?}"),
                _ => panic!("round trip on {topic} failed"),
            }
            if acked && got {
                return;
            }
        }
        panic!("round trip on {topic}: acked {acked}, received {got}");
    }
}

fn connect_packet(id: &str, version: ProtocolVersion) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: version,
        clean_start: true,
        keep_alive_s: 0,
        client_id: Bytes::copy_from_slice(id.as_bytes()),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }))
}

fn connect_bytes(id: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    encode_packet(
        &connect_packet(id, ProtocolVersion::V311),
        ProtocolVersion::V311,
        &mut b,
    );
    b.to_vec()
}

fn publish(topic: &str, payload: Vec<u8>, qos: QoS, packet_id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { packet_id },
        properties: PublishProperties::default(),
        payload: Bytes::from(payload),
    })
}

/// Reads QoS 1 PUBLISHes, acknowledging each, until `want` arrived or nothing came for
/// `idle`. Checks per-publisher order (payload "publisher:seq"). Returns the count.
fn drain_qos1(c: &mut Client, want: u64, idle: Duration, counter: &AtomicU64) -> u64 {
    let mut last_seq: std::collections::HashMap<u32, u32> = Default::default();
    let mut n = 0;
    while n < want {
        match c.read(idle) {
            Got::Packet(Packet::Publish(p)) => {
                if p.qos != QoS::AtMostOnce {
                    c.send(&Packet::PubAck(PubResp::new(p.packet_id)));
                }
                let text = std::str::from_utf8(&p.payload).expect("utf8 payload");
                let (who, rest) = text.split_once(':').expect("publisher:seq-padding");
                let seq = rest.split('-').next().unwrap_or_default();
                let (who, seq): (u32, u32) = (who.parse().expect("id"), seq.parse().expect("seq"));
                if let Some(prev) = last_seq.insert(who, seq) {
                    assert!(seq > prev, "publisher {who}: {seq} after {prev}");
                }
                n += 1;
                counter.store(n, Ordering::Relaxed);
            }
            Got::Packet(p) => panic!("unexpected {p:?}"),
            Got::Closed => panic!("subscriber closed after {n} messages"),
            Got::Timeout => break,
        }
    }
    n
}

const PUBLISHERS: usize = 100;
const PER_PUBLISHER: u64 = 300;
const PAYLOAD: usize = 1024;
const MAX_OUTBOUND: usize = 256 * 1024;
/// Room for every message (30,000 × (8 + 1024 + 64) bytes of cost): a reading
/// subscriber that lags loses nothing, and the stalled QoS 1 one keeps everything.
const MAX_QUEUED_BYTES: usize = 40 * 1024 * 1024;

#[test]
fn stalled_subscriber_does_not_block_100_publishers() {
    let _serial = serial();
    let mut b = start_broker(&[
        "--max-outbound-bytes",
        &MAX_OUTBOUND.to_string(),
        "--max-queued-messages",
        "1000000",
        "--max-queued-bytes",
        &MAX_QUEUED_BYTES.to_string(),
    ]);
    let addr = b.addr().to_string();
    let total = PUBLISHERS as u64 * PER_PUBLISHER;

    // Two subscribers that stop reading (QoS 0: copies beyond the buffer bound are
    // dropped; QoS 1: kept in the session queue up to its bound) and one that reads.
    // 30 MiB of payload is far more than the kernel's socket buffers can absorb.
    let mut stalled_q0 = Client::connect(&addr, "stalled-q0", ProtocolVersion::V311);
    stalled_q0.subscribe("load/#", QoS::AtMostOnce);
    let mut stalled_q1 = Client::connect(&addr, "stalled-q1", ProtocolVersion::V311);
    stalled_q1.subscribe("load/#", QoS::AtLeastOnce);
    let mut normal = Client::connect(&addr, "normal", ProtocolVersion::V5);
    normal.subscribe("load/#", QoS::AtLeastOnce);
    let normal_count = Arc::new(AtomicU64::new(0));
    let nc = normal_count.clone();
    let normal_reader = thread::spawn(move || drain_qos1(&mut normal, total, WAIT, &nc));

    let base_kib = broker_rss_kib(&b);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = rss_sampler(b.pid(), stop.clone());

    // 100 publishers at full rate, QoS 1 with up to 32 unacknowledged each.
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|i| {
            let addr = addr.clone();
            thread::spawn(move || {
                let mut c = Client::connect(&addr, &format!("pub-{i}"), ProtocolVersion::V311);
                let topic = format!("load/{i:03}");
                let (mut sent, mut acked, mut inflight) = (0u64, 0u64, 0u32);
                // Each turn sends or reads one PUBACK; bounded by the count and WAIT.
                while acked < PER_PUBLISHER {
                    if inflight < 32 && sent < PER_PUBLISHER {
                        let mut payload = format!("{i}:{sent:06}-").into_bytes();
                        payload.resize(PAYLOAD, b'x');
                        c.send(&publish(
                            &topic,
                            payload,
                            QoS::AtLeastOnce,
                            (sent % 60_000) as u16 + 1,
                        ));
                        sent += 1;
                        inflight += 1;
                        continue;
                    }
                    match c.read(WAIT) {
                        Got::Packet(Packet::PubAck(_)) => {
                            acked += 1;
                            inflight -= 1;
                        }
                        Got::Packet(p) => panic!("publisher {i}: unexpected {p:?}"),
                        _ => panic!("publisher {i}: no PUBACK after {acked}"),
                    }
                }
                acked
            })
        })
        .collect();
    let acked: u64 = publishers
        .into_iter()
        .map(|h| h.join().expect("publisher"))
        .sum();
    let normal_got = normal_reader.join().expect("normal subscriber");
    stop.store(true, Ordering::Relaxed);
    let peak_kib = sampler.join().expect("sampler");
    b.assert_alive();

    // The QoS 1 subscriber that stalled now reads: every copy it was kept.
    let q1_count = AtomicU64::new(0);
    let q1_got = drain_qos1(&mut stalled_q1, total, Duration::from_secs(5), &q1_count);
    // The QoS 0 one gets what fit in its buffers (kernel socket + broker bound).
    let mut q0_got = 0u64;
    let mut q0_bytes = 0usize;
    for _ in 0..total {
        match stalled_q0.read(Duration::from_secs(2)) {
            Got::Packet(Packet::Publish(p)) => {
                q0_got += 1;
                q0_bytes += p.payload.len();
            }
            Got::Packet(p) => panic!("unexpected {p:?}"),
            _ => break,
        }
    }
    let end_kib = broker_rss_kib(&b);
    // Bound from config: three subscribers' unread output, two full session queues
    // (the reading subscriber's may fill while it lags; both queues share the same
    // messages, so this counts them twice), plus 48 MiB for allocator slack,
    // receive buffers and the mesh.
    let bound_kib =
        base_kib + (3 * MAX_OUTBOUND as u64 + 2 * MAX_QUEUED_BYTES as u64) / 1024 + 48 * 1024;
    eprintln!(
        "hostile stalled-subscriber: published+acked {acked}/{total}; normal subscriber got {normal_got}; \
         stalled QoS1 subscriber got {q1_got} after resuming; stalled QoS0 subscriber got {q0_got} \
         ({q0_bytes} payload bytes); broker RSS base {base_kib} KiB, peak {peak_kib} KiB, \
         end {end_kib} KiB, bound {bound_kib} KiB"
    );
    assert_eq!(acked, total);
    assert_eq!(normal_got, total, "the reading subscriber lost messages");
    assert_eq!(
        q1_got, total,
        "acknowledged QoS 1 messages lost for the stalled subscriber"
    );
    assert!(
        q0_got < total,
        "QoS 0 copies beyond the bound must be dropped"
    );
    assert!(
        peak_kib <= bound_kib,
        "peak RSS {peak_kib} KiB over {bound_kib} KiB"
    );
}

#[test]
fn connect_disconnect_churn_20k() {
    let _serial = serial();
    let mut b = start_broker(&[]);
    let addr = b.addr().to_string();
    let base_kib = broker_rss_kib(&b);
    let waves: usize = std::env::var("HOSTILE_CHURN_WAVES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    const WAVE: usize = 1000;
    let mut ok = 0usize;
    let mut buf = [0u8; 64];
    let mut warm_kib = 0;
    for w in 0..waves {
        let mut socks: Vec<TcpStream> = (0..WAVE)
            .map(|_| TcpStream::connect(&addr).expect("connect"))
            .collect();
        for (i, s) in socks.iter_mut().enumerate() {
            s.write_all(&connect_bytes(&format!("churn-{w}-{i}")))
                .expect("CONNECT");
        }
        for s in socks.iter_mut() {
            s.set_read_timeout(Some(WAIT)).expect("timeout");
            s.read_exact(&mut buf[..4]).expect("CONNACK");
            assert_eq!(&buf[..4], &[0x20, 0x02, 0x00, 0x00]);
            s.write_all(&[0xE0, 0x00]).expect("DISCONNECT");
        }
        // The broker closes after DISCONNECT; wait for it so ports are not left
        // in our TIME_WAIT.
        for s in socks.iter_mut() {
            match s.read(&mut buf) {
                Ok(0) => ok += 1,
                Ok(n) => panic!("{n} bytes after DISCONNECT"),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => ok += 1,
                Err(e) => panic!("no close after DISCONNECT: {e}"),
            }
        }
        drop(socks);
        if w % 5 == 4 {
            let rss = broker_rss_kib(&b);
            if warm_kib == 0 {
                warm_kib = rss;
            }
            eprintln!(
                "hostile churn: after {} cycles broker RSS {rss} KiB",
                (w + 1) * WAVE
            );
        }
    }
    b.assert_alive();
    let mut c = Client::connect(&addr, "after-churn", ProtocolVersion::V311);
    c.round_trip("churn/check");
    let end_kib = broker_rss_kib(&b);
    eprintln!(
        "hostile churn: {ok} connect/CONNACK/DISCONNECT cycles; broker RSS base {base_kib} KiB, \
         after {end_kib} KiB"
    );
    assert_eq!(ok, waves * WAVE);
    // The first 5,000 cycles warm up the allocator and the per-shard tables for
    // 1,000 open connections; after that growth must stay under 1 KiB per cycle over
    // the remaining 15,000 (observed: a few MiB of allocator drift that levels off;
    // a 60,000-cycle run stayed between 45 and 51 MiB).
    assert!(
        end_kib < warm_kib + 15 * 1024,
        "RSS {end_kib} KiB after churn, {warm_kib} KiB after the first 5,000"
    );
}

#[test]
fn half_open_and_slowloris_connections_are_reaped() {
    let _serial = serial();
    let mut b = start_broker(&["--connect-timeout-ms", "1500"]);
    let addr = b.addr().to_string();
    const HALF_OPEN: usize = 300;
    let mut half: Vec<TcpStream> = (0..HALF_OPEN)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    let opened_kib = broker_rss_kib(&b);

    // Slowloris: a CONNECT one byte per second.
    let connect = connect_bytes("slowloris");
    let mut slow = TcpStream::connect(&addr).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let mut sent = 0;
    let mut slow_closed = false;
    let mut buf = [0u8; 16];
    // Normal clients work meanwhile.
    let mut normal = Client::connect(&addr, "normal", ProtocolVersion::V5);
    for byte in &connect {
        if slow.write_all(&[*byte]).is_err() {
            slow_closed = true;
            break;
        }
        sent += 1;
        // Waits one second for the broker's answer: the pacing of the trickle.
        match slow.read(&mut buf) {
            Ok(0) => {
                slow_closed = true;
                break;
            }
            Ok(n) => panic!("slowloris got {n} bytes"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                slow_closed = true;
                break;
            }
        }
    }
    normal.send(&Packet::PingReq);
    assert!(matches!(normal.read(WAIT), Got::Packet(Packet::PingResp)));

    let mut reaped = 0;
    for s in half.iter_mut() {
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        match s.read(&mut buf) {
            Ok(0) => reaped += 1,
            Ok(n) => panic!("half-open connection got {n} bytes"),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => reaped += 1,
            Err(e) => panic!("half-open connection not reaped: {e}"),
        }
    }
    drop(half);
    b.assert_alive();
    normal.round_trip("half-open/check");
    let end_kib = broker_rss_kib(&b);
    eprintln!(
        "hostile half-open: {reaped}/{HALF_OPEN} half-open reaped; slowloris closed after {sent} of {} \
         CONNECT bytes; normal client OK; broker RSS with them open {opened_kib} KiB, end {end_kib} KiB",
        connect.len()
    );
    assert_eq!(reaped, HALF_OPEN);
    assert!(
        slow_closed,
        "slowloris sent its whole CONNECT without being closed"
    );
    assert!(sent < connect.len());
}

/// xorshift64*: deterministic bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn random_bytes_on_1000_connections() {
    let _serial = serial();
    let mut b = start_broker(&[]);
    let addr = b.addr().to_string();
    let base_kib = broker_rss_kib(&b);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut closed_by_broker = 0;
    for wave in 0..2 {
        let mut socks = Vec::with_capacity(500);
        for i in 0..500 {
            let mut s = TcpStream::connect(&addr).expect("connect");
            s.set_write_timeout(Some(WAIT)).expect("timeout");
            let len = 1 + (rng.next() % 1500) as usize;
            let mut data = match i % 4 {
                // Pure noise.
                0 => Vec::new(),
                // A valid CONNECT, then noise.
                1 => connect_bytes(&format!("noise-{wave}-{i}")),
                // A CONNECT header with a random body.
                2 => vec![0x10, (rng.next() % 128) as u8],
                // A valid CONNECT, then noise shaped like packets.
                _ => {
                    let mut d = connect_bytes(&format!("shaped-{wave}-{i}"));
                    for _ in 0..20 {
                        let body = (rng.next() % 40) as usize;
                        d.push(rng.next() as u8);
                        d.push(body as u8);
                        d.extend(rng.bytes(body));
                    }
                    d
                }
            };
            data.extend(rng.bytes(len));
            // The broker may close mid-way: errors are expected.
            let _ = s.write_all(&data);
            socks.push(s);
        }
        for s in socks.iter_mut() {
            let _ = s.shutdown(Shutdown::Write);
        }
        let mut buf = [0u8; 4096];
        for s in socks.iter_mut() {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            // Bounded: at most 64 reads per connection.
            for _ in 0..64 {
                match s.read(&mut buf) {
                    Ok(0) => {
                        closed_by_broker += 1;
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        break
                    }
                    Err(_) => {
                        closed_by_broker += 1;
                        break;
                    }
                }
            }
        }
        b.assert_alive();
    }
    let mut c = Client::connect(&addr, "after-noise", ProtocolVersion::V5);
    c.round_trip("noise/check");
    let end_kib = broker_rss_kib(&b);
    eprintln!(
        "hostile random bytes: 1000 connections, {closed_by_broker} closed by the broker within the \
         wait; normal client OK afterwards; broker RSS base {base_kib} KiB, end {end_kib} KiB"
    );
    b.assert_alive();
}

/// Opens `n` connections and sends each a CONNECT; returns how many got CONNACK 0
/// and how many got exactly CONNACK return code 3 followed by the close.
fn connect_many(addr: &str, tag: &str, n: usize) -> (Vec<TcpStream>, usize, usize) {
    let (mut accepted, mut refused) = (Vec::new(), 0);
    let mut buf = [0u8; 8];
    for i in 0..n {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        s.write_all(&connect_bytes(&format!("{tag}-{i}")))
            .expect("CONNECT");
        s.read_exact(&mut buf[..4]).expect("CONNACK");
        match buf[..4] {
            [0x20, 0x02, 0x00, 0x00] => accepted.push(s),
            [0x20, 0x02, 0x00, 0x03] => {
                assert!(
                    matches!(s.read(&mut buf), Ok(0) | Err(_)),
                    "open after refusal"
                );
                refused += 1;
            }
            _ => panic!("unexpected CONNACK {:?}", &buf[..4]),
        }
    }
    let n_ok = accepted.len();
    (accepted, n_ok, refused)
}

#[test]
fn connection_limits_refuse_over_the_wire() {
    let _serial = serial();
    // Per source IP: every test client is 127.0.0.1.
    let mut b = start_broker(&["--max-connections-per-ip", "3"]);
    let (kept, ok, refused) = connect_many(b.addr(), "ip", 5);
    assert_eq!((ok, refused), (3, 2));
    drop(kept);
    b.assert_alive();
    drop(b);

    // Per node, over both shards, with either IO backend (the auto choice and epoll).
    for io in ["auto", "epoll"] {
        let mut b = start_broker(&["--io", io, "--max-connections", "4"]);
        let (_kept, ok, refused) = connect_many(b.addr(), "node", 6);
        eprintln!(
            "hostile limits: per-IP 3 of 5 accepted; --io {io}: per-node {ok} of 6 accepted, \
             {refused} refused"
        );
        assert_eq!((ok, refused), (4, 2));
        b.assert_alive();
    }

    // CONNECT rate: 1 per second per shard (bursts of 1): 20 back-to-back CONNECTs
    // cannot all be accepted unless the loop took 9 s or more.
    let mut b = start_broker(&["--connect-rate-per-s", "1"]);
    let (_kept, ok, refused) = connect_many(b.addr(), "rate", 20);
    eprintln!("hostile limits: connect rate 1/s per shard: {ok} of 20 accepted, {refused} refused");
    assert_eq!(ok + refused, 20);
    assert!(refused >= 1);
    b.assert_alive();
}
