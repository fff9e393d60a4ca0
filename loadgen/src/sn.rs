//! `loadgen sn`: --clients MQTT-SN 1.2 clients over UDP against a broker's MQTT-SN
//! gateway (--sn-port), with MQTT peers over TCP (--port), measuring both directions:
//! the SN clients publish at --total-rate (round robin, topic lg/sn/<i>) to one TCP
//! collector subscribed to lg/sn/+, and one TCP publisher sends --cmd-rate messages/s
//! to lg/sncmd/<i>, which client i subscribed to. Each payload carries its send time,
//! so the report gives one-way latency percentiles each way.
//!
//! Self-contained beside the io_uring engine (which speaks MQTT over TCP only): one
//! thread drives every SN client's UDP socket through mio, two threads the TCP peers.
//! The handshake (CONNECT, REGISTER, SUBSCRIBE) runs with a bounded window of clients
//! in flight and resends a step unanswered for 2 s, since UDP may drop a burst.
//! MQTT-SN datagrams are written by hand (spec 5.4): loadgen imports only the MQTT codec.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use ringmq::protocol::{
    decode_packet, encode_packet, Connect, Packet, Properties, ProtocolVersion, PubResp, Publish,
    PublishProperties, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};

use crate::cli::Opts;

/// Handshakes (CONNECT → SUBACK) in flight at once.
const HANDSHAKE_WINDOW: usize = 256;
/// A handshake step unanswered this long is sent again.
const RESEND_AFTER: Duration = Duration::from_secs(2);
/// Payload: send time (ns since the run's origin), then the sequence number.
const PAYLOAD_LEN: usize = 16;

const SN_CONNECT: u8 = 0x04;
const SN_CONNACK: u8 = 0x05;
const SN_REGISTER: u8 = 0x0a;
const SN_REGACK: u8 = 0x0b;
const SN_PUBLISH: u8 = 0x0c;
const SN_PUBACK: u8 = 0x0d;
const SN_SUBSCRIBE: u8 = 0x12;
const SN_SUBACK: u8 = 0x13;
const SN_DISCONNECT: u8 = 0x18;

/// Where a client's handshake stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Idle,
    Connect,
    Register,
    Subscribe,
    Ready,
}

struct Client {
    sock: UdpSocket,
    step: Step,
    sent_at: Instant,
    /// From REGACK: the id of lg/sn/<i>.
    pub_topic: u16,
    msg_id: u16,
}

fn short(t: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + body.len());
    v.push((2 + body.len()) as u8);
    v.push(t);
    v.extend_from_slice(body);
    v
}

fn sn_connect(id: &str) -> Vec<u8> {
    // Flags: clean session; protocol id 1; duration 600 s.
    let mut b = vec![0x04, 0x01, 0x02, 0x58];
    b.extend_from_slice(id.as_bytes());
    short(SN_CONNECT, &b)
}

fn sn_with_topic(t: u8, flags: Option<u8>, topic_id: u16, msg_id: u16, name: &str) -> Vec<u8> {
    let mut b = Vec::new();
    if let Some(f) = flags {
        b.push(f);
    }
    if t == SN_REGISTER {
        b.extend_from_slice(&topic_id.to_be_bytes());
    }
    b.extend_from_slice(&msg_id.to_be_bytes());
    b.extend_from_slice(name.as_bytes());
    short(t, &b)
}

fn sn_publish(qos: u8, topic_id: u16, msg_id: u16, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![qos << 5];
    b.extend_from_slice(&topic_id.to_be_bytes());
    b.extend_from_slice(&msg_id.to_be_bytes());
    b.extend_from_slice(payload);
    short(SN_PUBLISH, &b)
}

fn payload(origin: Instant, seq: u64) -> [u8; PAYLOAD_LEN] {
    let mut p = [0u8; PAYLOAD_LEN];
    p[..8].copy_from_slice(&(origin.elapsed().as_nanos() as u64).to_le_bytes());
    p[8..].copy_from_slice(&seq.to_le_bytes());
    p
}

fn latency_us(origin: Instant, payload: &[u8]) -> Option<u64> {
    let sent = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let now = origin.elapsed().as_nanos() as u64;
    Some(now.saturating_sub(sent) / 1000)
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// What one direction measured.
#[derive(Default)]
struct Way {
    sent: u64,
    received: u64,
}

struct Shared {
    origin: Instant,
    stop_sending: AtomicBool,
    stop_all: AtomicBool,
    tcp_to_sn_sent: AtomicU64,
    sn_to_tcp_received: AtomicU64,
    sn_to_tcp: Mutex<Histogram<u64>>,
}

/// A blocking MQTT 3.1.1 client for the TCP side.
struct Tcp {
    stream: TcpStream,
    rx: BytesMut,
}

impl Tcp {
    fn connect(addr: SocketAddr, id: &str) -> io::Result<Tcp> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let mut t = Tcp {
            stream,
            rx: BytesMut::new(),
        };
        t.send(&Packet::Connect(Box::new(Connect {
            protocol: ProtocolVersion::V311,
            clean_start: true,
            keep_alive_s: 0,
            client_id: id.as_bytes().to_vec().into(),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })))?;
        match t.recv()? {
            Packet::ConnAck(a) if a.code == ReasonCode::Success => Ok(t),
            other => Err(io::Error::other(format!(
                "{id}: CONNECT answered {other:?}"
            ))),
        }
    }

    fn send(&mut self, p: &Packet) -> io::Result<()> {
        let mut b = BytesMut::new();
        encode_packet(p, ProtocolVersion::V311, &mut b);
        self.stream.write_all(&b)
    }

    fn recv(&mut self) -> io::Result<Packet> {
        loop {
            match decode_packet(&mut self.rx, ProtocolVersion::V311, 1 << 20) {
                Ok(Some(p)) => return Ok(p),
                Ok(None) => {}
                Err(e) => return Err(io::Error::other(format!("bad packet: {e}"))),
            }
            let mut buf = [0u8; 16 * 1024];
            let n = self.stream.read(&mut buf)?;
            if n == 0 {
                return Err(io::Error::other("broker closed the connection"));
            }
            self.rx.extend_from_slice(&buf[..n]);
        }
    }
}

/// `loadgen sn`: returns the exit code.
pub fn main(opts: &Opts) -> i32 {
    match run(opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadgen: {e}");
            1
        }
    }
}

fn run(opts: &Opts) -> Result<i32, String> {
    let host: Ipv4Addr = if opts.host == "localhost" {
        Ipv4Addr::LOCALHOST
    } else {
        opts.host.parse().map_err(|_| {
            format!(
                "invalid value '{}' for '--host': not an IPv4 address",
                opts.host
            )
        })?
    };
    if opts.clients == 0 || opts.clients > 60_000 {
        return Err(format!(
            "invalid value '{}' for '--clients': sn runs 1..=60000 clients (one UDP port each)",
            opts.clients
        ));
    }
    if opts.qos > 1 {
        return Err(format!(
            "invalid value '{}' for '--qos': sn publishes at QoS 0 or 1",
            opts.qos
        ));
    }
    let sn_rate = opts.total_rate.unwrap_or(1000.0);
    let cmd_rate = opts.cmd_rate;
    for (flag, v) in [("total-rate", sn_rate), ("cmd-rate", cmd_rate)] {
        if !v.is_finite() || v <= 0.0 {
            return Err(format!("invalid value '{v}' for '--{flag}': must be > 0"));
        }
    }
    let gw = SocketAddr::from((host, opts.sn_port));
    let tcp_addr = SocketAddr::from((host, opts.port));
    let n = opts.clients as usize;
    let qos = opts.qos;
    let shared = Arc::new(Shared {
        origin: Instant::now(),
        stop_sending: AtomicBool::new(false),
        stop_all: AtomicBool::new(false),
        tcp_to_sn_sent: AtomicU64::new(0),
        sn_to_tcp_received: AtomicU64::new(0),
        sn_to_tcp: Mutex::new(hist()),
    });

    // The TCP collector, subscribed before any SN client publishes.
    let mut collector = Tcp::connect(tcp_addr, &format!("lg-sn-coll-{}", std::process::id()))
        .map_err(|e| format!("collector: {e}"))?;
    collector
        .send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: smallvec_one("lg/sn/+", qos),
            properties: Properties::default(),
        }))
        .map_err(|e| format!("collector: {e}"))?;
    loop {
        match collector.recv().map_err(|e| format!("collector: {e}"))? {
            Packet::SubAck(_) => break,
            _ => continue,
        }
    }
    collector
        .stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let coll = {
        let shared = shared.clone();
        std::thread::spawn(move || collect(collector, &shared))
    };

    // The SN clients' handshakes.
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut sock = UdpSocket::bind("127.0.0.1:0".parse().expect("addr"))
            .map_err(|e| format!("binding UDP socket {i}: {e}"))?;
        sock.connect(gw).map_err(|e| e.to_string())?;
        poll.registry()
            .register(&mut sock, Token(i), Interest::READABLE)
            .map_err(|e| e.to_string())?;
        clients.push(Client {
            sock,
            step: Step::Idle,
            sent_at: Instant::now(),
            pub_topic: 0,
            msg_id: 0,
        });
    }
    let pid = std::process::id() % 100_000;
    let id = |i: usize| format!("lg{pid}-{i}");
    let handshake_start = Instant::now();
    let mut events = Events::with_capacity(4096);
    let mut buf = [0u8; 2048];
    let mut next = 0usize;
    let mut inflight = 0usize;
    let mut ready = 0usize;
    let mut tcp_to_sn = hist();
    let mut tcp_to_sn_received = 0u64;
    let step_msg = |c: &Client, i: usize| -> Vec<u8> {
        match c.step {
            Step::Connect => sn_connect(&id(i)),
            Step::Register => sn_with_topic(SN_REGISTER, None, 0, 1, &format!("lg/sn/{i}")),
            _ => sn_with_topic(SN_SUBSCRIBE, Some(0), 0, 2, &format!("lg/sncmd/{i}")),
        }
    };
    while ready < n {
        if handshake_start.elapsed() > opts.connect_timeout {
            return Err(format!(
                "{ready} of {n} SN clients completed CONNECT/REGISTER/SUBSCRIBE within --connect-timeout {:?}",
                opts.connect_timeout
            ));
        }
        while inflight < HANDSHAKE_WINDOW && next < n {
            let c = &mut clients[next];
            c.step = Step::Connect;
            c.sent_at = Instant::now();
            let _ = c.sock.send(&sn_connect(&id(next)));
            next += 1;
            inflight += 1;
        }
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
        for ev in events.iter() {
            let i = ev.token().0;
            loop {
                let got = clients[i].sock.recv(&mut buf);
                let Ok(len) = got else { break };
                let d = &buf[..len];
                let c = &mut clients[i];
                match (c.step, d.get(1).copied()) {
                    (Step::Connect, Some(SN_CONNACK)) if d.get(2) == Some(&0) => {
                        c.step = Step::Register;
                    }
                    (Step::Register, Some(SN_REGACK)) if d.get(6) == Some(&0) => {
                        c.pub_topic = u16::from_be_bytes([d[2], d[3]]);
                        c.step = Step::Subscribe;
                    }
                    (Step::Subscribe, Some(SN_SUBACK)) if d.get(7) == Some(&0) => {
                        c.step = Step::Ready;
                        ready += 1;
                        inflight -= 1;
                        continue;
                    }
                    _ => continue,
                }
                c.sent_at = Instant::now();
                let m = step_msg(c, i);
                let _ = c.sock.send(&m);
            }
        }
        // Steps lost to a full socket buffer somewhere: ask again.
        let now = Instant::now();
        for (i, c) in clients.iter_mut().enumerate().take(next) {
            if !matches!(c.step, Step::Ready | Step::Idle) && now - c.sent_at > RESEND_AFTER {
                c.sent_at = now;
                let m = step_msg(c, i);
                let _ = c.sock.send(&m);
            }
        }
    }
    let handshake = handshake_start.elapsed();

    // The TCP publisher: --cmd-rate to lg/sncmd/<i>, round robin.
    let cmd = {
        let shared = shared.clone();
        let mut publisher = Tcp::connect(tcp_addr, &format!("lg-sn-cmd-{}", std::process::id()))
            .map_err(|e| format!("publisher: {e}"))?;
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut sent = 0u64;
            while !shared.stop_sending.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * cmd_rate) as u64;
                while sent < due {
                    let i = (sent % n as u64) as usize;
                    let p = Packet::Publish(Publish {
                        dup: false,
                        qos: QoS::AtMostOnce,
                        retain: false,
                        topic: format!("lg/sncmd/{i}").into_bytes().into(),
                        packet_id: 0,
                        properties: PublishProperties::default(),
                        payload: payload(shared.origin, sent).to_vec().into(),
                    });
                    if publisher.send(&p).is_err() {
                        return;
                    }
                    sent += 1;
                    shared.tcp_to_sn_sent.store(sent, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_micros(500));
            }
        })
    };

    // The measured run: SN publishes at --total-rate; commands received.
    let run_start = Instant::now();
    let mut sn_sent = 0u64;
    let mut puback = 0u64;
    let drain_end = |t: Instant| t + opts.duration + opts.drain;
    let end = drain_end(run_start);
    while Instant::now() < end {
        let sending = run_start.elapsed() < opts.duration;
        if sending {
            let due = (run_start.elapsed().as_secs_f64() * sn_rate) as u64;
            let mut batch = 0;
            while sn_sent < due && batch < 4096 {
                let i = (sn_sent % n as u64) as usize;
                let c = &mut clients[i];
                c.msg_id = c.msg_id.wrapping_add(1).max(1);
                let msg_id = if qos == 0 { 0 } else { c.msg_id };
                let d = sn_publish(qos, c.pub_topic, msg_id, &payload(shared.origin, sn_sent));
                let _ = c.sock.send(&d);
                sn_sent += 1;
                batch += 1;
            }
        } else {
            shared.stop_sending.store(true, Ordering::Relaxed);
        }
        poll.poll(&mut events, Some(Duration::from_millis(1)))
            .map_err(|e| e.to_string())?;
        for ev in events.iter() {
            let i = ev.token().0;
            while let Ok(len) = clients[i].sock.recv(&mut buf) {
                let d = &buf[..len];
                match d.get(1).copied() {
                    // Flags, topic id, msg id, then the payload.
                    Some(SN_PUBLISH) if len >= 7 => {
                        if let Some(us) = latency_us(shared.origin, &d[7..]) {
                            let _ = tcp_to_sn.record(us.max(1));
                            tcp_to_sn_received += 1;
                        }
                    }
                    Some(SN_PUBACK) => puback += 1,
                    _ => {}
                }
            }
        }
    }
    shared.stop_sending.store(true, Ordering::Relaxed);
    shared.stop_all.store(true, Ordering::Relaxed);
    let _ = cmd.join();
    let _ = coll.join();
    for c in &clients {
        let _ = c.sock.send(&short(SN_DISCONNECT, &[]));
    }

    let sn_way = Way {
        sent: sn_sent,
        received: shared.sn_to_tcp_received.load(Ordering::Relaxed),
    };
    let tcp_way = Way {
        sent: shared.tcp_to_sn_sent.load(Ordering::Relaxed),
        received: tcp_to_sn_received,
    };
    let secs = opts.duration.as_secs_f64();
    let sn_hist = shared
        .sn_to_tcp
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| hist());
    let line = |name: &str, w: &Way, h: &Histogram<u64>| {
        format!(
            "{name:<10} sent {:>9} ({:>9.0}/s)  received {:>9} ({:>5.1}%)  latency us p50 {:>7} p99 {:>7} p99.9 {:>7} max {:>7}\n",
            w.sent,
            w.sent as f64 / secs,
            w.received,
            100.0 * w.received as f64 / w.sent.max(1) as f64,
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        )
    };
    let mut table = format!(
        "loadgen sn: {n} MQTT-SN clients -> {gw} (gateway), TCP peers -> {tcp_addr}, QoS {qos}, {:?}\n\
         handshake  {n} clients CONNECT+REGISTER+SUBSCRIBE in {:.2} s ({:.0}/s)\n",
        opts.duration,
        handshake.as_secs_f64(),
        n as f64 / handshake.as_secs_f64().max(1e-9)
    );
    table += &line("sn->tcp", &sn_way, &sn_hist);
    table += &line("tcp->sn", &tcp_way, &tcp_to_sn);
    if qos == 1 {
        table += &format!("sn pubacks {puback}\n");
    }
    if opts.json {
        eprint!("{table}");
        let q = |h: &Histogram<u64>, x: f64| h.value_at_quantile(x);
        println!(
            "{}",
            serde_json::json!({
                "scenario": "sn", "clients": n, "qos": qos,
                "duration_s": secs, "handshake_s": handshake.as_secs_f64(),
                "sn_to_tcp": {"sent": sn_way.sent, "received": sn_way.received,
                    "p50_us": q(&sn_hist, 0.5), "p99_us": q(&sn_hist, 0.99), "max_us": sn_hist.max()},
                "tcp_to_sn": {"sent": tcp_way.sent, "received": tcp_way.received,
                    "p50_us": q(&tcp_to_sn, 0.5), "p99_us": q(&tcp_to_sn, 0.99), "max_us": tcp_to_sn.max()},
            })
        );
    } else {
        print!("{table}");
    }
    Ok(0)
}

fn smallvec_one(
    filter: &str,
    qos: u8,
) -> smallvec::SmallVec<[(bytes::Bytes, SubscriptionOptions); 2]> {
    smallvec::smallvec![(
        bytes::Bytes::copy_from_slice(filter.as_bytes()),
        SubscriptionOptions {
            qos: QoS::from_u8(qos).unwrap_or_default(),
            ..Default::default()
        }
    )]
}

/// The TCP collector: records SN→TCP latency, acknowledges QoS 1.
fn collect(mut t: Tcp, shared: &Shared) {
    while !shared.stop_all.load(Ordering::Relaxed) {
        match t.recv() {
            Ok(Packet::Publish(p)) => {
                if let Some(us) = latency_us(shared.origin, &p.payload) {
                    if let Ok(mut h) = shared.sn_to_tcp.lock() {
                        let _ = h.record(us.max(1));
                    }
                    shared.sn_to_tcp_received.fetch_add(1, Ordering::Relaxed);
                }
                if p.qos == QoS::AtLeastOnce {
                    let ack = Packet::PubAck(PubResp {
                        packet_id: p.packet_id,
                        code: ReasonCode::Success,
                        properties: Properties::default(),
                    });
                    if t.send(&ack).is_err() {
                        return;
                    }
                }
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if shared.stop_all.load(Ordering::Relaxed) {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}
