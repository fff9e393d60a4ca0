//! Retained-set benchmark for perf/retained.sh, against any MQTT 3.1.1 broker on
//! 127.0.0.1: stores N retained messages `fleet/devNNNNNN/state` (64-byte payloads by
//! default), reads the broker's RSS before and after (`--pid`), then for each QoS
//! asked subscribes a fresh connection to `#` and times SUBSCRIBE → last retained
//! message (reading as fast as it can, acking QoS 1/2 as it goes). Prints one
//! markdown row per QoS. Every read has a timeout, so a broker that stops sending
//! ends the run with the count it got.
//!
//!   retained-bench --port P [--pid PID] [--count 200000] [--size 64] [--qos 0,1]
//!                  [--phase both|store|subscribe]
//!
//! `--phase store` only stores; `--phase subscribe` only streams what a previous
//! run stored (so a latency test can run during the stream alone).

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringmq::protocol::{
    decode_packet, encode_packet, Connect, Packet, Properties, ProtocolVersion, PubResp, Publish,
    PublishProperties, QoS, Subscribe, SubscriptionOptions,
};
use smallvec::smallvec;

const V: ProtocolVersion = ProtocolVersion::V311;
/// A subscriber that got nothing for this long has got all it will get.
const STALL: Duration = Duration::from_secs(5);

struct Args {
    port: u16,
    pid: Option<u32>,
    count: usize,
    size: usize,
    qos: Vec<QoS>,
    settle: Duration,
    phase: String,
}

fn args() -> Args {
    let mut a = Args {
        port: 1883,
        pid: None,
        count: 200_000,
        size: 64,
        qos: vec![QoS::AtMostOnce, QoS::AtLeastOnce],
        settle: Duration::from_secs(2),
        phase: "both".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag}: value missing"));
        match flag.as_str() {
            "--port" => a.port = v.parse().expect("--port"),
            "--pid" => a.pid = Some(v.parse().expect("--pid")),
            "--count" => a.count = v.parse().expect("--count"),
            "--size" => a.size = v.parse().expect("--size"),
            "--phase" => a.phase = v,
            "--settle-ms" => a.settle = Duration::from_millis(v.parse().expect("--settle-ms")),
            "--qos" => {
                a.qos = v
                    .split(',')
                    .map(|q| match q {
                        "0" => QoS::AtMostOnce,
                        "1" => QoS::AtLeastOnce,
                        "2" => QoS::ExactlyOnce,
                        _ => panic!("--qos {q}"),
                    })
                    .collect()
            }
            _ => panic!("unknown flag {flag}"),
        }
    }
    a
}

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn topic(i: usize) -> String {
    format!("fleet/dev{i:06}/state")
}

struct Conn {
    stream: TcpStream,
    rx: BytesMut,
    tx: BytesMut,
    buf: Vec<u8>,
}

impl Conn {
    fn connect(port: u16, id: &str) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(STALL)).expect("timeout");
        let mut c = Conn {
            stream,
            rx: BytesMut::new(),
            tx: BytesMut::new(),
            buf: vec![0; 256 * 1024],
        };
        c.push(&Packet::Connect(Box::new(Connect {
            protocol: V,
            clean_start: true,
            keep_alive_s: 0,
            client_id: Bytes::copy_from_slice(id.as_bytes()),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })));
        c.flush();
        match c.recv() {
            Some(Packet::ConnAck(_)) => c,
            other => panic!("{id}: expected CONNACK, got {other:?}"),
        }
    }

    fn push(&mut self, p: &Packet) {
        encode_packet(p, V, &mut self.tx);
    }

    fn flush(&mut self) {
        if !self.tx.is_empty() {
            self.stream.write_all(&self.tx).expect("write");
            self.tx.clear();
        }
    }

    /// The next packet, or `None` after `STALL` without one.
    fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = decode_packet(&mut self.rx, V, 1 << 24).expect("decode") {
                return Some(p);
            }
            // About to wait: send the acks gathered so far first.
            self.flush();
            match self.stream.read(&mut self.buf) {
                Ok(0) => return None,
                Ok(n) => self.rx.extend_from_slice(&self.buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }
}

fn store(port: u16, count: usize, size: usize) {
    let mut p = Conn::connect(port, "retained-bench-pub");
    let payload = Bytes::from(vec![b'x'; size]);
    for i in 0..count {
        p.push(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: Bytes::from(topic(i)),
            packet_id: 0,
            properties: PublishProperties::default(),
            payload: payload.clone(),
        }));
        if p.tx.len() >= 256 * 1024 {
            p.flush();
        }
    }
    // Per-connection order: once this is acked, everything before it was read.
    p.push(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: Bytes::from_static(b"retained-bench/done"),
        packet_id: 1,
        properties: PublishProperties::default(),
        payload: Bytes::new(),
    }));
    p.flush();
    match p.recv() {
        Some(Packet::PubAck(_)) => {}
        other => panic!("expected PUBACK, got {other:?}"),
    }
}

/// (messages received, time from SUBSCRIBE to the last one).
fn subscribe_all(port: u16, count: usize, qos: QoS) -> (usize, Duration) {
    let mut s = Conn::connect(port, &format!("retained-bench-sub-{}", qos as u8));
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
    let mut got = 0;
    let mut last = start;
    while got < count {
        match s.recv() {
            None => break,
            Some(Packet::Publish(p)) => {
                if p.retain {
                    got += 1;
                    last = Instant::now();
                }
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => s.push(&Packet::PubAck(PubResp::new(p.packet_id))),
                    QoS::ExactlyOnce => s.push(&Packet::PubRec(PubResp::new(p.packet_id))),
                }
            }
            Some(Packet::PubRel(r)) => s.push(&Packet::PubComp(PubResp::new(r.packet_id))),
            Some(_) => {}
        }
    }
    s.flush();
    (got, last - start)
}

fn main() {
    let a = args();
    let name_len = topic(0).len();
    let mut stored_ms = "-".to_string();
    let mut per_msg = "-".to_string();
    if a.phase != "subscribe" {
        let rss0 = a.pid.and_then(rss_kb);
        let t = Instant::now();
        store(a.port, a.count, a.size);
        stored_ms = format!("{} ms", t.elapsed().as_millis());
        std::thread::sleep(a.settle);
        let rss1 = a.pid.and_then(rss_kb);
        if let (Some(r0), Some(r1)) = (rss0, rss1) {
            per_msg = format!(
                "{} B",
                (r1.saturating_sub(r0) * 1024) as usize / a.count.max(1)
            );
        }
        if a.phase == "store" {
            println!(
                "| {} | {} B + {name_len} B topic | {per_msg} | {stored_ms} | - | - | - |",
                a.count, a.size
            );
            return;
        }
    }
    for &qos in &a.qos {
        let (got, took) = subscribe_all(a.port, a.count, qos);
        println!(
            "| {} | {} B + {name_len} B topic | {per_msg} | {stored_ms} | {:?} | {got} of {} | {:.2} s |",
            a.count,
            a.size,
            qos,
            a.count,
            took.as_secs_f64()
        );
    }
}
