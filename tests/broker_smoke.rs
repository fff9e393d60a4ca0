//! Starts the real `ringmq` binary and talks MQTT to it over raw TCP with the codec:
//! CONNECT/CONNACK, SUBSCRIBE, PUBLISH QoS 0/1 across shards, and SIGTERM shutdown.
//! Every combination of `--io uring|epoll` and `--shards 1|4`.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use smallvec::smallvec;

use ringmq::protocol::{
    decode_packet, encode_to_bytes, ConnAck, Connect, Disconnect, Packet, Properties,
    ProtocolVersion, PubResp, Publish, PublishProperties, QoS, ReasonCode, Subscribe,
    SubscriptionOptions,
};

use support::{id_on_shard, Broker, Launch};

const WAIT: Duration = Duration::from_secs(10);

/// A ringmq spawned with `--io IO --shards N`, and the backend its startup line names.
struct Smoke {
    broker: Broker,
    addr: SocketAddr,
    backend: String,
}

impl Smoke {
    fn start(io: &str, shards: usize) -> Smoke {
        let shards_arg = shards.to_string();
        let broker = Launch::new(&["--io", io, "--shards", &shards_arg, "--log-level", "warn"])
            // RINGMQ_TEST_LOG=debug shows the broker's debug log in the test output.
            .env(
                "RUST_LOG",
                &std::env::var("RINGMQ_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .echo_stderr()
            .startup_timeout(WAIT)
            .spawn();
        // "ringmq listening on 127.0.0.1:41235 (io_uring, 2 shards)"
        let line = broker.listening_line().to_string();
        let rest = line
            .strip_prefix("ringmq listening on ")
            .unwrap_or_else(|| panic!("startup line format: {line}"));
        let (addr, tail) = rest.split_once(" (").expect("startup line format");
        let backend = tail.split(',').next().expect("backend").to_string();
        let suffix = if shards == 1 { "" } else { "s" };
        assert!(
            tail.ends_with(&format!(" {shards} shard{suffix})")),
            "{line}"
        );
        Smoke {
            addr: addr.parse().expect("addr"),
            broker,
            backend,
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        self.broker
            .terminate(WAIT)
            .expect("ringmq did not exit after SIGTERM")
    }
}

struct Client {
    stream: TcpStream,
    rx: BytesMut,
    version: ProtocolVersion,
}

impl Client {
    fn connect(addr: SocketAddr, client_id: &str, version: ProtocolVersion) -> Client {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut c = Client {
            stream,
            rx: BytesMut::new(),
            version,
        };
        c.send(&Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: true,
            keep_alive_s: 60,
            client_id: Bytes::copy_from_slice(client_id.as_bytes()),
            will: None,
            username: None,
            password: None,
            properties: Properties::default(),
        })));
        match c.recv() {
            Packet::ConnAck(ConnAck {
                code: ReasonCode::Success,
                session_present: false,
                ..
            }) => {}
            other => panic!("{client_id}: expected CONNACK success, got {other:?}"),
        }
        c
    }

    fn send(&mut self, p: &Packet) {
        self.stream
            .write_all(&encode_to_bytes(p, self.version))
            .expect("write");
    }

    /// Next packet; `None` on EOF.
    fn try_recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = decode_packet(&mut self.rx, self.version, 1 << 20).expect("decode") {
                return Some(p);
            }
            let mut buf = [0u8; 4096];
            let n = self.stream.read(&mut buf).expect("read (timed out?)");
            if n == 0 {
                return None;
            }
            self.rx.extend_from_slice(&buf[..n]);
        }
    }

    fn recv(&mut self) -> Packet {
        self.try_recv().expect("connection closed")
    }

    fn subscribe(&mut self, filter: &str, qos: QoS, packet_id: u16) {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: smallvec![(
                Bytes::copy_from_slice(filter.as_bytes()),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                }
            )],
            properties: Properties::default(),
        }));
        match self.recv() {
            Packet::SubAck(ack) => {
                assert_eq!(ack.packet_id, packet_id);
                let granted = if qos == QoS::AtLeastOnce {
                    ReasonCode::GrantedQoS1
                } else {
                    ReasonCode::Success
                };
                assert_eq!(ack.codes.as_slice(), &[granted]);
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, packet_id: u16) {
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            packet_id,
            properties: PublishProperties::default(),
            payload: Bytes::copy_from_slice(payload),
        }));
    }
}

fn expect_publish(c: &mut Client, topic: &str, payload: &[u8], qos: QoS) -> u16 {
    match c.recv() {
        Packet::Publish(p) => {
            assert_eq!(
                (p.topic.as_ref(), p.payload.as_ref(), p.qos),
                (topic.as_bytes(), payload, qos)
            );
            p.packet_id
        }
        other => panic!("expected PUBLISH on {topic}, got {other:?}"),
    }
}

fn pubsub_across_shards(io: &str, shards: usize) {
    let broker = Smoke::start(io, shards);
    let expected_backend = if io == "uring" { "io_uring" } else { "epoll" };
    assert_eq!(broker.backend, expected_backend);
    let last = shards - 1;
    let mut sub = Client::connect(
        broker.addr,
        &id_on_shard("sub", 0, shards),
        ProtocolVersion::V311,
    );
    let mut sub5 = Client::connect(
        broker.addr,
        &id_on_shard("sub5", last, shards),
        ProtocolVersion::V5,
    );
    let mut publ = Client::connect(
        broker.addr,
        &id_on_shard("pub", last, shards),
        ProtocolVersion::V5,
    );
    sub.subscribe("t/#", QoS::AtLeastOnce, 1);
    sub5.subscribe("t/+", QoS::AtMostOnce, 2);

    publ.publish("t/a", b"zero", QoS::AtMostOnce, 0);
    expect_publish(&mut sub, "t/a", b"zero", QoS::AtMostOnce);
    expect_publish(&mut sub5, "t/a", b"zero", QoS::AtMostOnce);

    publ.publish("t/b", b"one", QoS::AtLeastOnce, 7);
    match publ.recv() {
        Packet::PubAck(ack) => assert_eq!(ack.packet_id, 7),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let pid = expect_publish(&mut sub, "t/b", b"one", QoS::AtLeastOnce);
    assert_ne!(pid, 0);
    sub.send(&Packet::PubAck(PubResp::new(pid)));
    // Granted QoS 0 on sub5: downgraded.
    expect_publish(&mut sub5, "t/b", b"one", QoS::AtMostOnce);

    // A burst of QoS 0 arrives complete and in order.
    for i in 0..200u32 {
        publ.publish("t/burst", &i.to_be_bytes(), QoS::AtMostOnce, 0);
    }
    for i in 0..200u32 {
        expect_publish(&mut sub, "t/burst", &i.to_be_bytes(), QoS::AtMostOnce);
    }
    let status = broker.terminate();
    assert_eq!(status.code(), Some(0));
}

fn sigterm_disconnects_v5_clients(io: &str, shards: usize) {
    let broker = Smoke::start(io, shards);
    let mut v5 = Client::connect(
        broker.addr,
        &id_on_shard("v5", shards - 1, shards),
        ProtocolVersion::V5,
    );
    let mut v3 = Client::connect(
        broker.addr,
        &id_on_shard("v3", 0, shards),
        ProtocolVersion::V311,
    );
    let status = broker.terminate();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    match v5.try_recv() {
        Some(Packet::Disconnect(Disconnect { code, .. })) => {
            assert_eq!(code, ReasonCode::ServerShuttingDown)
        }
        other => panic!("expected DISCONNECT 0x8B, got {other:?}"),
    }
    assert_eq!(v5.try_recv(), None, "v5 connection closed after DISCONNECT");
    // MQTT 3.1.1 has no server DISCONNECT: the connection just closes.
    assert_eq!(v3.try_recv(), None);
}

#[test]
fn uring_one_shard_pubsub() {
    pubsub_across_shards("uring", 1);
}

#[test]
fn uring_four_shards_pubsub() {
    pubsub_across_shards("uring", 4);
}

#[test]
fn epoll_one_shard_pubsub() {
    pubsub_across_shards("epoll", 1);
}

#[test]
fn epoll_four_shards_pubsub() {
    pubsub_across_shards("epoll", 4);
}

#[test]
fn uring_one_shard_sigterm() {
    sigterm_disconnects_v5_clients("uring", 1);
}

#[test]
fn uring_four_shards_sigterm() {
    sigterm_disconnects_v5_clients("uring", 4);
}

#[test]
fn epoll_one_shard_sigterm() {
    sigterm_disconnects_v5_clients("epoll", 1);
}

#[test]
fn epoll_four_shards_sigterm() {
    sigterm_disconnects_v5_clients("epoll", 4);
}

#[test]
fn bad_config_exits_2_naming_key_and_value() {
    let dir = std::env::temp_dir().join(format!("ringmq-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("x.toml");
    std::fs::write(&path, "max_packet_size = \"abc\"\n").expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["--config", path.to_str().expect("utf8 path")])
        .output()
        .expect("run");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!(
            "ringmq: config {}: key \"max_packet_size\": expected an integer 1..=268435455, got \"abc\"",
            path.display()
        )
    );
}

/// Scheduling policy and real-time priority of each thread of `pid`, by thread name
/// (fields 41 and 40 of /proc/PID/task/TID/stat, after the parenthesised name).
fn thread_policies(pid: u32) -> Vec<(String, u32, u32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let dir = entry.expect("task entry").path();
        let comm = std::fs::read_to_string(dir.join("comm")).expect("comm");
        let stat = std::fs::read_to_string(dir.join("stat")).expect("stat");
        let after_name = stat.rsplit_once(')').expect("stat format").1;
        // after_name starts at field 3 (state); rt_priority is field 40, policy 41.
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let rt_priority: u32 = fields[40 - 3].parse().expect("rt_priority");
        let policy: u32 = fields[41 - 3].parse().expect("policy");
        out.push((comm.trim().to_string(), policy, rt_priority));
    }
    out.sort();
    out
}

#[test]
fn rt_priority_runs_every_loop_under_sched_fifo() {
    // Whether this environment grants SCHED_FIFO decides which behaviour to expect;
    // probed on a throwaway thread so the test's own threads stay as they are.
    let granted = std::thread::spawn(|| ringmq::worker::set_realtime(10).is_ok())
        .join()
        .expect("probe thread");
    if granted {
        let broker = Launch::new(&["--shards", "2", "--rt-priority", "10"])
            .startup_timeout(WAIT)
            .spawn();
        let threads = thread_policies(broker.pid());
        let loops: Vec<_> = threads
            .iter()
            .filter(|(name, _, _)| name.starts_with("ringmq-shard-"))
            .cloned()
            .collect();
        assert_eq!(
            loops,
            vec![
                ("ringmq-shard-0".to_string(), libc::SCHED_FIFO as u32, 10),
                ("ringmq-shard-1".to_string(), libc::SCHED_FIFO as u32, 10),
            ],
            "{threads:?}"
        );
        // Only the loops: the main and signal threads keep the normal scheduler.
        for (name, policy, _) in &threads {
            if !name.starts_with("ringmq-shard-") {
                assert_eq!(*policy, libc::SCHED_OTHER as u32, "{threads:?}");
            }
        }
    } else {
        let out = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--shards",
                "1",
                "--rt-priority",
                "10",
            ])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("rt_priority 10: SCHED_FIFO refused"),
            "{stderr}"
        );
    }
}

#[test]
fn bad_log_level_exits_2_naming_option_and_value() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["--log-level", "ringmq=loud"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "ringmq: option --log-level: expected a tracing filter such as info or ringmq=debug,warn \
         (error parsing level filter: expected one of \"off\", \"error\", \"warn\", \"info\", \
         \"debug\", \"trace\", or a number 0-5), got \"ringmq=loud\""
    );
}
