//! `[[bridge]]` against a real remote: a Debian Mosquitto started by each test (from
//! tests/install-deps.sh; a missing `mosquitto` fails the test). Both directions at
//! QoS 0, 1 and 2 with no message bounced back; the remote stopped mid-stream and
//! restarted: nothing lost within `queue_max_messages`, and beyond it the excess
//! counted in /metrics; with a data directory the held queue survives a kill -9 of
//! ringmq while the remote is down; `mqtts://` verified against a CA file; config errors named. Every wait is bounded; nothing asserts
//! how fast. tests/run-all.sh runs this file again on the epoll backend.

mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringmq::protocol::{
    decode_packet, Packet, ProtocolVersion, PubResp, Publish, PublishProperties, QoS, Subscribe,
    SubscriptionOptions,
};
use smallvec::smallvec;
use support::pkt;
use support::{wait_or_kill, write_file, Broker, Launch, RawClient, ReadOutcome, TestCa};

/// Longest wait for a message that must arrive (bridge reconnects included).
const ARRIVE: Duration = Duration::from_secs(20);

fn mosquitto_bin() -> PathBuf {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("mosquitto is not installed: run tests/install-deps.sh (Debian package mosquitto)");
}

/// A free port below the kernel's ephemeral range (32768.. by default), so while the
/// remote is down no other broker of a parallel test (bound to port 0) and no
/// outgoing connection's own source port can take its place.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let base = std::process::id() * 7;
    for _ in 0..8_000 {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = 20_000 + (base.wrapping_add(n * 13) % 8_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000..28000");
}

/// A Mosquitto on `port`, persistent in `dir` (so sessions survive a restart),
/// stopped by PID on drop.
struct Mosquitto {
    child: Child,
}

impl Mosquitto {
    fn start(dir: &Path, port: u16) -> Mosquitto {
        Mosquitto::start_with(dir, port, "")
    }

    /// With `extra` lines at the end of its config (more listeners).
    fn start_with(dir: &Path, port: u16, extra: &str) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "allow_anonymous true\npersistence true\n\
                 persistence_location {}/\nautosave_interval 1\nlistener {port} 127.0.0.1\n{extra}",
                dir.display()
            ),
        )
        .expect("write mosquitto.conf");
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mosquitto { child }
    }

    /// SIGTERM (Mosquitto saves its persistence file), then waits for the exit.
    fn stop(&mut self) {
        // SAFETY: kill(2) with the PID of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        wait_or_kill(&mut self.child, Duration::from_secs(10));
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A 3.1.1 client with a persistent session (clean session 0) on `addr`: what the
/// server queues for it while it is away comes on its next connect.
fn persistent_client(addr: &str, id: &str) -> RawClient {
    let mut c = pkt::Connect::v311(id);
    c.clean = false;
    RawClient::connect_with(addr, &c).0
}

/// kill -9 of `b` (nothing gets a chance to tidy up), reaped; fails unless it died
/// of the signal.
fn kill_9(b: &mut Broker) {
    // SAFETY: kill(2) on the PID of a child the test spawned and has not reaped.
    assert_eq!(
        unsafe { libc::kill(b.pid() as libc::pid_t, libc::SIGKILL) },
        0
    );
    let status = b.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| !s.success()), "killed: {status:?}");
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(support::uniq(&format!("brg{tag}")));
    std::fs::create_dir_all(&d).expect("temp dir");
    // Mosquitto started as root drops to its own user, which must be able to write
    // its persistence file here.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    d
}

fn ringmq_with_bridge(dir: &Path, remote_port: u16, bridge: &str) -> Broker {
    let cfg = dir.join("ringmq.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[bridge]]\nname = \"cloud\"\naddress = \"127.0.0.1:{remote_port}\"\n\
             reconnect_min_ms = 100\nreconnect_max_ms = 500\n{bridge}"
        ),
    )
    .expect("write ringmq.toml");
    let cfg = cfg.display().to_string();
    Launch::new(&[
        "--config",
        &cfg,
        "--shards",
        "2",
        "--http-listen",
        "127.0.0.1:0",
    ])
    .spawn()
}

fn subscribe(c: &mut RawClient, filter: &str) {
    c.send_packet(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters: smallvec![(
            Bytes::copy_from_slice(filter.as_bytes()),
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                ..Default::default()
            }
        )],
        properties: Default::default(),
    }));
    match c.recv_packet(ProtocolVersion::V311) {
        Packet::SubAck(_) => {}
        p => panic!("{}: expected SUBACK, got {p:?}", c.name()),
    }
}

/// Publishes and completes the QoS exchange.
fn publish(c: &mut RawClient, topic: &str, qos: QoS, id: u16, payload: &str) {
    c.send_packet(&Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { id },
        properties: PublishProperties::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    }));
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => match c.recv_packet(ProtocolVersion::V311) {
            Packet::PubAck(_) => {}
            p => panic!("{}: expected PUBACK, got {p:?}", c.name()),
        },
        QoS::ExactlyOnce => {
            match c.recv_packet(ProtocolVersion::V311) {
                Packet::PubRec(_) => {}
                p => panic!("{}: expected PUBREC, got {p:?}", c.name()),
            }
            c.send_packet(&Packet::PubRel(PubResp::new(id)));
            match c.recv_packet(ProtocolVersion::V311) {
                Packet::PubComp(_) => {}
                p => panic!("{}: expected PUBCOMP, got {p:?}", c.name()),
            }
        }
    }
}

/// The next PUBLISH within `within` (acknowledged), or `None`.
fn next_publish(c: &mut RawClient, within: Duration) -> Option<Publish> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let f = match c.read_frame_within(left) {
            ReadOutcome::Frame(f) => f,
            ReadOutcome::Timeout => return None,
            ReadOutcome::Closed => panic!("{}: closed", c.name()),
        };
        let mut b = BytesMut::from(&f.raw[..]);
        let p = decode_packet(&mut b, ProtocolVersion::V311, 1 << 20)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("{}: undecodable frame {f:?}", c.name()));
        match p {
            Packet::Publish(p) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => c.send_packet(&Packet::PubAck(PubResp::new(p.packet_id))),
                    QoS::ExactlyOnce => c.send_packet(&Packet::PubRec(PubResp::new(p.packet_id))),
                }
                return Some(p);
            }
            Packet::PubRel(r) => c.send_packet(&Packet::PubComp(PubResp::new(r.packet_id))),
            _ => {}
        }
    }
}

fn text(b: &Bytes) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// GET /metrics, the whole exposition.
fn metrics_text(b: &Broker) -> String {
    let addr = b.http_addr().expect("http listener");
    let mut s = TcpStream::connect(&addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or(out)
}

/// GET /metrics; the value of `name{bridge="cloud"}`.
fn bridge_metric(b: &Broker, name: &str) -> u64 {
    metric_of(b, "cloud", name)
}

/// GET /metrics; the value of `name{bridge="BRIDGE"}`.
fn metric_of(b: &Broker, bridge: &str, name: &str) -> u64 {
    let out = metrics_text(b);
    let key = format!("{name}{{bridge=\"{bridge}\"}} ");
    out.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} not in /metrics:\n{out}"))
}

fn wait_metric(b: &Broker, name: &str, want: u64) {
    let deadline = Instant::now() + ARRIVE;
    loop {
        let v = bridge_metric(b, name);
        if v == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed {v}, expected {want}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Until the bridge is up and its local subscription has reached every loop (a
/// message published before that has no subscriber to go to, as for any client):
/// probes on `topic` until one arrives at `remote_sub`, then drains the late ones.
fn settle(local: &Broker, local_pub: &mut RawClient, topic: &str, remote_sub: &mut RawClient) {
    wait_metric(local, "ringmq_bridge_up", 1);
    let deadline = Instant::now() + ARRIVE;
    let mut id = 1000;
    loop {
        assert!(Instant::now() < deadline, "no probe crossed the bridge");
        id += 1;
        publish(local_pub, topic, QoS::AtLeastOnce, id, "probe");
        if next_publish(remote_sub, Duration::from_millis(300)).is_some() {
            break;
        }
    }
    wait_metric(local, "ringmq_bridge_held_messages", 0);
    while next_publish(remote_sub, Duration::from_millis(500)).is_some() {}
}

#[test]
fn both_directions_at_every_qos_without_echo() {
    let dir = tempdir("dir");
    let port = free_port();
    let _remote = Mosquitto::start(&dir, port);
    let local = ringmq_with_bridge(
        &dir,
        port,
        "topics = [\"up/# out 2 \\\"\\\" edge/\", \"down/# in 2\", \"echo/# both 2\"]\n",
    );
    let remote_addr = format!("127.0.0.1:{port}");
    let mut remote_sub = RawClient::connect_v311(&remote_addr, "remote-sub");
    subscribe(&mut remote_sub, "edge/#");
    subscribe(&mut remote_sub, "echo/#");
    let mut local_sub = RawClient::connect_v311(local.addr(), "local-sub");
    subscribe(&mut local_sub, "down/#");
    subscribe(&mut local_sub, "echo/#");
    let mut local_pub = RawClient::connect_v311(local.addr(), "local-pub");
    let mut remote_pub = RawClient::connect_v311(&remote_addr, "remote-pub");

    settle(&local, &mut local_pub, "up/probe", &mut remote_sub);

    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        let id = 10 + i as u16;
        publish(
            &mut local_pub,
            &format!("up/q{i}"),
            qos,
            id,
            &format!("out{i}"),
        );
        let p = next_publish(&mut remote_sub, ARRIVE).expect("local → remote");
        assert_eq!(
            (text(&p.topic), text(&p.payload), p.qos),
            (format!("edge/up/q{i}"), format!("out{i}"), qos)
        );
        publish(
            &mut remote_pub,
            &format!("down/q{i}"),
            qos,
            id,
            &format!("in{i}"),
        );
        let p = next_publish(&mut local_sub, ARRIVE).expect("remote → local");
        assert_eq!(
            (text(&p.topic), text(&p.payload), p.qos),
            (format!("down/q{i}"), format!("in{i}"), qos)
        );
    }

    // `both`: a local message reaches the remote once and is not bounced back (the
    // remote's own subscriber sees it once, the local subscriber only its own copy).
    publish(&mut local_pub, "echo/a", QoS::AtLeastOnce, 20, "from-local");
    let p = next_publish(&mut remote_sub, ARRIVE).expect("echo/a at the remote");
    assert_eq!(text(&p.payload), "from-local");
    let p = next_publish(&mut local_sub, ARRIVE).expect("echo/a locally");
    assert_eq!(text(&p.payload), "from-local");
    publish(
        &mut remote_pub,
        "echo/b",
        QoS::AtLeastOnce,
        21,
        "from-remote",
    );
    let p = next_publish(&mut local_sub, ARRIVE).expect("echo/b locally");
    assert_eq!(text(&p.payload), "from-remote");
    let p = next_publish(&mut remote_sub, ARRIVE).expect("echo/b at the remote");
    assert_eq!(text(&p.payload), "from-remote");
    // Nothing more on either side: no copy came back through the bridge.
    assert!(next_publish(&mut local_sub, Duration::from_secs(1)).is_none());
    assert!(next_publish(&mut remote_sub, Duration::from_secs(1)).is_none());

    // A network client cannot take the bridge's local session over: CONNACK 2.
    let mut thief = RawClient::connect(local.addr());
    thief.send(&pkt::Connect::v311("$bridge/cloud").bytes());
    thief.expect_hex("20 02 00 02");
    thief.expect_closed();

    // The ringmq_bridge_* families are valid exposition format.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: tests/install-deps.sh installs Debian's prometheus");
    let text = metrics_text(&local);
    assert!(text.contains("ringmq_bridge_in_received_total{bridge=\"cloud\"}"));
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = promtool.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_remote_restart_loses_nothing_within_the_queue_bound() {
    let dir = tempdir("rst");
    let port = free_port();
    let mut remote = Mosquitto::start(&dir, port);
    let local = ringmq_with_bridge(
        &dir,
        port,
        "topics = [\"data/# out 1\"]\nqueue_max_messages = 50\n",
    );
    let remote_addr = format!("127.0.0.1:{port}");
    // A persistent QoS 2 subscriber on the remote: Mosquitto queues for it across
    // the restart, so everything the bridge delivers is seen.
    let persistent = || persistent_client(&remote_addr, "remote-keeper");
    let mut sub = persistent();
    subscribe(&mut sub, "data/#");
    let mut local_pub = RawClient::connect_v311(local.addr(), "local-pub");

    settle(&local, &mut local_pub, "data/probe", &mut sub);
    let mut seen = BTreeSet::new();
    for i in 0..20u16 {
        publish(
            &mut local_pub,
            "data/x",
            QoS::AtLeastOnce,
            i + 1,
            &format!("m{i}"),
        );
    }
    while seen.len() < 20 {
        let p = next_publish(&mut sub, ARRIVE).expect("first 20 at the remote");
        seen.insert(text(&p.payload));
    }
    wait_metric(&local, "ringmq_bridge_held_messages", 0);
    drop(sub);
    remote.stop();
    wait_metric(&local, "ringmq_bridge_up", 0);

    // 80 while the remote is down: 50 held, 30 dropped and counted.
    for i in 20..100u16 {
        publish(
            &mut local_pub,
            "data/x",
            QoS::AtLeastOnce,
            i + 1,
            &format!("m{i}"),
        );
    }
    // PUBACK comes before the message crossed the mesh to the bridge's loop: wait.
    wait_metric(&local, "ringmq_bridge_held_messages", 50);
    wait_metric(&local, "ringmq_bridge_out_dropped_total", 30);

    let _remote = Mosquitto::start(&dir, port);
    let mut sub = persistent();
    while seen.len() < 70 {
        let Some(p) = next_publish(&mut sub, ARRIVE) else {
            panic!("only {} of 70 arrived: {seen:?}", seen.len());
        };
        seen.insert(text(&p.payload));
    }
    let want: BTreeSet<String> = (0..70).map(|i| format!("m{i}")).collect();
    assert_eq!(seen, want);
    wait_metric(&local, "ringmq_bridge_held_messages", 0);
    assert!(bridge_metric(&local, "ringmq_bridge_connects_total") >= 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_remote_stopped_mid_stream_loses_nothing() {
    let dir = tempdir("mid");
    let port = free_port();
    let mut remote = Mosquitto::start(&dir, port);
    let local = ringmq_with_bridge(
        &dir,
        port,
        "topics = [\"data/# out 1\"]\nqueue_max_messages = 1000\n",
    );
    let remote_addr = format!("127.0.0.1:{port}");
    let persistent = || persistent_client(&remote_addr, "remote-keeper");
    let mut sub = persistent();
    subscribe(&mut sub, "data/#");
    let mut local_pub = RawClient::connect_v311(local.addr(), "local-pub");
    settle(&local, &mut local_pub, "data/probe", &mut sub);
    drop(sub);
    // The publisher streams 500 messages while the remote is stopped under it: some
    // are in flight on the bridge's connection when it dies, some queued after. The
    // stop normally falls in the first half; should the test's own polling lag that
    // far behind the stream (a loaded runner), the streamer waits at the half for the
    // stop, so the second half is always published with the remote down.
    let addr = local.addr().to_string();
    let (stopped_tx, stopped_rx) = std::sync::mpsc::channel::<()>();
    let stream = std::thread::spawn(move || {
        let mut c = RawClient::connect_v311(&addr, "streamer");
        for i in 0..500u16 {
            if i == 250 {
                stopped_rx
                    .recv_timeout(ARRIVE)
                    .expect("the remote was stopped");
            }
            publish(&mut c, "data/s", QoS::AtLeastOnce, i + 1, &format!("s{i}"));
            if i % 5 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    let deadline = Instant::now() + ARRIVE;
    while bridge_metric(&local, "ringmq_bridge_out_acked_total") < 60 {
        assert!(
            Instant::now() < deadline,
            "the remote never acknowledged 60"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    remote.stop();
    // A streamer that failed has dropped its end: its join below says why.
    let _ = stopped_tx.send(());
    stream.join().expect("streamer");
    // Mid-stream indeed: the bridge holds what came after the remote went away. The
    // PUBACKs the streamer got come before the copies cross the mesh to the bridge's
    // loop, so the last of them may still be on their way: wait (bounded).
    let deadline = Instant::now() + ARRIVE;
    while bridge_metric(&local, "ringmq_bridge_held_messages") == 0 {
        assert!(
            Instant::now() < deadline,
            "nothing held for the stopped remote"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _remote = Mosquitto::start(&dir, port);
    let mut sub = persistent();
    let mut seen = BTreeSet::new();
    while seen.len() < 500 {
        let Some(p) = next_publish(&mut sub, ARRIVE) else {
            panic!("only {} of 500 arrived", seen.len());
        };
        if text(&p.payload) != "probe" {
            seen.insert(text(&p.payload));
        }
    }
    assert_eq!(seen, (0..500).map(|i| format!("s{i}")).collect());
    assert_eq!(bridge_metric(&local, "ringmq_bridge_out_dropped_total"), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A ringmq with `--data-dir DATA` and one bridge `cloud` forwarding `data/#` out at
/// QoS 1 and holding at most `HELD_MAX`, two loops (placement seed from the test
/// support, so `id_on_shard` works), `max_inflight` far below the bridge's bound
/// (which a bridge's session is not held to).
fn durable_ringmq_with_bridge(dir: &Path, data: &str, remote_port: u16) -> Broker {
    let cfg = dir.join("ringmq-durable.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[bridge]]\nname = \"cloud\"\naddress = \"127.0.0.1:{remote_port}\"\n\
             reconnect_min_ms = 100\nreconnect_max_ms = 500\n\
             topics = [\"data/# out 1\"]\nqueue_max_messages = {HELD_MAX}\n"
        ),
    )
    .expect("write ringmq-durable.toml");
    let cfg = cfg.display().to_string();
    Launch::new(&[
        "--config",
        &cfg,
        "--shards",
        "2",
        "--http-listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--durability",
        "process",
        "--max-inflight",
        "20",
    ])
    .spawn()
}

const HELD_MAX: usize = 150;

#[test]
fn the_held_queue_survives_a_kill_9_of_ringmq_while_the_remote_is_down() {
    // More than the bridge holds: the excess is dropped and counted, the rest must
    // all arrive.
    const N: usize = 200;
    let dir = tempdir("dur");
    let data = dir.join("data").display().to_string();
    let port = free_port();
    let remote_addr = format!("127.0.0.1:{port}");
    // A persistent subscriber on the remote, made while it runs: Mosquitto keeps it
    // (persistence file) and queues for it what the bridge delivers later.
    let keeper = || persistent_client(&remote_addr, "remote-keeper");
    let mut remote = Mosquitto::start(&dir, port);
    subscribe(&mut keeper(), "data/#");
    remote.stop();

    let mut local = durable_ringmq_with_bridge(&dir, &data, port);
    // The publisher on the bridge's own loop: its PUBACK then waits for the log that
    // holds the bridge's copy (a copy on another loop is durable only when that
    // loop's log has it; README, "Durability").
    let owner = ringmq::shard::owner_shard(support::TEST_PLACEMENT_SEED, b"$bridge/cloud", 2);
    let pub_id = support::id_on_shard("dur-pub", owner, 2);
    let mut local_pub = RawClient::connect_v311(local.addr(), &pub_id);
    // Probes until the bridge's local subscription exists (a message before it has
    // no subscriber), seen as a message held for the remote.
    let deadline = Instant::now() + ARRIVE;
    let mut id = 1000;
    while bridge_metric(&local, "ringmq_bridge_held_messages") == 0 {
        assert!(Instant::now() < deadline, "the bridge never took a probe");
        id += 1;
        publish(&mut local_pub, "data/probe", QoS::AtLeastOnce, id, "probe");
        std::thread::sleep(Duration::from_millis(20));
    }
    let probes = bridge_metric(&local, "ringmq_bridge_held_messages") as usize;
    for i in 0..N {
        publish(
            &mut local_pub,
            "data/x",
            QoS::AtLeastOnce,
            i as u16 + 1,
            &format!("m{i}"),
        );
    }
    let kept = HELD_MAX - probes;
    wait_metric(&local, "ringmq_bridge_held_messages", HELD_MAX as u64);
    wait_metric(&local, "ringmq_bridge_out_dropped_total", (N - kept) as u64);
    kill_9(&mut local);
    drop(local_pub);

    // Restarted on the same data directory, the remote still down: the bridge holds
    // every one of them again, nothing dropped.
    let mut local = durable_ringmq_with_bridge(&dir, &data, port);
    wait_metric(&local, "ringmq_bridge_held_messages", HELD_MAX as u64);
    let _remote = Mosquitto::start(&dir, port);
    let mut sub = keeper();
    let mut seen = BTreeSet::new();
    while seen.len() < kept {
        let Some(p) = next_publish(&mut sub, ARRIVE) else {
            panic!("only {} of {kept} arrived", seen.len());
        };
        if text(&p.payload) != "probe" {
            seen.insert(text(&p.payload));
        }
    }
    assert_eq!(seen, (0..kept).map(|i| format!("m{i}")).collect());
    wait_metric(&local, "ringmq_bridge_held_messages", 0);
    assert_eq!(bridge_metric(&local, "ringmq_bridge_out_dropped_total"), 0);

    // The remote's acknowledgements let the local session go of them: after a
    // restart nothing is sent again.
    let status = local.terminate(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "SIGTERM: {status:?}");
    let local = durable_ringmq_with_bridge(&dir, &data, port);
    wait_metric(&local, "ringmq_bridge_up", 1);
    while let Some(p) = next_publish(&mut sub, Duration::from_secs(1)) {
        assert_eq!(text(&p.payload), "probe", "sent again after the restart");
    }
    assert_eq!(bridge_metric(&local, "ringmq_bridge_out_sent_total"), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_mqtts_bridge_verifies_the_remote_against_its_ca_file() {
    let dir = tempdir("tls");
    let ca = TestCa::new("bridge test CA");
    let (leaf, leaf_key) = ca.leaf(&["127.0.0.1"], None, false);
    let ca_file = write_file(&dir, "ca.pem", &ca.cert.pem());
    // A CA that did not sign the remote's certificate: that bridge must never be up.
    let other = TestCa::new("another CA");
    let other_ca_file = write_file(&dir, "other-ca.pem", &other.cert.pem());
    let cert_file = write_file(&dir, "server.pem", &leaf);
    let key_file = write_file(&dir, "server.key", &leaf_key);
    let plain_port = free_port();
    let tls_port = free_port();
    let _remote = Mosquitto::start_with(
        &dir,
        plain_port,
        &format!("listener {tls_port} 127.0.0.1\ncertfile {cert_file}\nkeyfile {key_file}\n"),
    );
    let cfg = dir.join("ringmq.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[bridge]]\nname = \"cloud\"\naddress = \"mqtts://127.0.0.1:{tls_port}\"\n\
             tls_ca_file = \"{ca_file}\"\ntopics = [\"t/# both 1\"]\n\
             reconnect_min_ms = 100\nreconnect_max_ms = 500\n\
             [[bridge]]\nname = \"untrusting\"\naddress = \"mqtts://127.0.0.1:{tls_port}\"\n\
             tls_ca_file = \"{other_ca_file}\"\ntopics = [\"u/# out 1\"]\n\
             reconnect_min_ms = 100\nreconnect_max_ms = 200\n"
        ),
    )
    .expect("write ringmq.toml");
    let cfg = cfg.display().to_string();
    let local = Launch::new(&["--config", &cfg, "--http-listen", "127.0.0.1:0"]).spawn();
    let mut remote_sub = RawClient::connect_v311(&format!("127.0.0.1:{plain_port}"), "rs");
    subscribe(&mut remote_sub, "t/#");
    let mut local_pub = RawClient::connect_v311(local.addr(), "lp");
    settle(&local, &mut local_pub, "t/probe", &mut remote_sub);
    publish(&mut local_pub, "t/x", QoS::AtLeastOnce, 7, "over-tls");
    let p = next_publish(&mut remote_sub, ARRIVE).expect("over TLS to the remote");
    assert_eq!(text(&p.payload), "over-tls");
    // The other bridge's handshakes fail (unknown issuer), again and again.
    let deadline = Instant::now() + ARRIVE;
    while metric_of(&local, "untrusting", "ringmq_bridge_connect_failures_total") < 3 {
        assert!(Instant::now() < deadline, "untrusting bridge did not retry");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric_of(&local, "untrusting", "ringmq_bridge_connects_total"),
        0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A remote that requires client certificates (Mosquitto `require_certificate
/// true`): the bridge with `tls_cert_file`/`tls_key_file` (signed by the CA the
/// remote trusts) carries messages both ways; the same bridge without them is
/// refused at every handshake and never counted as connected.
#[test]
fn an_mqtts_bridge_presents_its_client_certificate() {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let dir = tempdir("mtls");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "mtls test CA");
    let ca_key = KeyPair::generate().expect("key");
    let ca = p.self_signed(&ca_key).expect("CA");
    let server_key = KeyPair::generate().expect("key");
    let server = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("server params")
        .signed_by(&server_key, &ca, &ca_key)
        .expect("server cert");
    let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    client_params
        .distinguished_name
        .push(DnType::CommonName, "edge-7");
    let client_key = KeyPair::generate().expect("key");
    let client = client_params
        .signed_by(&client_key, &ca, &ca_key)
        .expect("client cert");
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write pem");
        path.display().to_string()
    };
    let ca_file = write("ca.pem", &ca.pem());
    let server_cert = write("server.pem", &server.pem());
    let server_key = write("server.key", &server_key.serialize_pem());
    let client_cert = write("client.pem", &client.pem());
    let client_key = write("client.key", &client_key.serialize_pem());
    let plain_port = free_port();
    let tls_port = free_port();
    let _remote = Mosquitto::start_with(
        &dir,
        plain_port,
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {ca_file}\ncertfile {server_cert}\n\
             keyfile {server_key}\nrequire_certificate true\n"
        ),
    );
    let cfg = dir.join("ringmq.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[bridge]]\nname = \"cloud\"\naddress = \"mqtts://127.0.0.1:{tls_port}\"\n\
             tls_ca_file = \"{ca_file}\"\ntls_cert_file = \"{client_cert}\"\n\
             tls_key_file = \"{client_key}\"\ntopics = [\"t/# out 1\", \"c/# in 1\"]\n\
             reconnect_min_ms = 100\nreconnect_max_ms = 500\n\
             [[bridge]]\nname = \"nocert\"\naddress = \"mqtts://127.0.0.1:{tls_port}\"\n\
             tls_ca_file = \"{ca_file}\"\ntopics = [\"u/# out 1\"]\n\
             reconnect_min_ms = 100\nreconnect_max_ms = 200\n"
        ),
    )
    .expect("write ringmq.toml");
    let cfg = cfg.display().to_string();
    let local = Launch::new(&["--config", &cfg, "--http-listen", "127.0.0.1:0"]).spawn();
    let mut remote_sub = RawClient::connect_v311(&format!("127.0.0.1:{plain_port}"), "rs");
    subscribe(&mut remote_sub, "t/#");
    let mut local_pub = RawClient::connect_v311(local.addr(), "lp");
    settle(&local, &mut local_pub, "t/probe", &mut remote_sub);
    publish(&mut local_pub, "t/x", QoS::AtLeastOnce, 7, "with-cert");
    let p = next_publish(&mut remote_sub, ARRIVE).expect("out over mutual TLS");
    assert_eq!(text(&p.payload), "with-cert");
    // And in: the remote's publish reaches a local subscriber through the bridge.
    let mut local_sub = RawClient::connect_v311(local.addr(), "ls");
    subscribe(&mut local_sub, "c/#");
    let mut remote_pub = RawClient::connect_v311(&format!("127.0.0.1:{plain_port}"), "rp");
    let deadline = Instant::now() + ARRIVE;
    let mut n = 0u16;
    let got = loop {
        assert!(Instant::now() < deadline, "nothing came in over mutual TLS");
        n += 1;
        publish(&mut remote_pub, "c/cmd", QoS::AtLeastOnce, n, "inbound");
        if let Some(p) = next_publish(&mut local_sub, Duration::from_millis(500)) {
            break p;
        }
    };
    assert_eq!(text(&got.payload), "inbound");
    // Without a certificate the remote ends every handshake.
    let deadline = Instant::now() + ARRIVE;
    while metric_of(&local, "nocert", "ringmq_bridge_connect_failures_total") < 3 {
        assert!(Instant::now() < deadline, "nocert bridge did not retry");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        metric_of(&local, "nocert", "ringmq_bridge_connects_total"),
        0
    );
    assert_eq!(metric_of(&local, "cloud", "ringmq_bridge_up"), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn config_errors_name_the_bridge_and_the_key() {
    let dir = tempdir("cfg");
    let cases = [
        (
            "[[bridge]]\nname = \"cloud\"\naddress = \"127.0.0.1:1883\"\ntopics = [\"a/# out 3\"]\n",
            "key \"bridge[cloud].topics\"",
        ),
        (
            "[[bridge]]\nname = \"cloud\"\ntopics = [\"a/#\"]\n",
            "key \"bridge[cloud].address\"",
        ),
        (
            "[[bridge]]\nname = \"cloud\"\naddress = \"127.0.0.1:1883\"\ntopics = [\"a\"]\nqueue_max_messages = 0\n",
            "key \"bridge[cloud].queue_max_messages\": expected an integer 1..=10000000, got 0",
        ),
        (
            "[[bridge]]\nname = \"cloud\"\naddress = \"mqtts://127.0.0.1:8883\"\ntls_ca_file = \"/nonexistent/ca.pem\"\ntopics = [\"a\"]\n",
            "bridge[cloud].tls_ca_file: /nonexistent/ca.pem",
        ),
        (
            "[[bridge]]\nname = \"cloud\"\naddress = \"mqtts://127.0.0.1:8883\"\ntls_ca_file = \"/etc/hostname\"\ntls_cert_file = \"/x.pem\"\ntopics = [\"a\"]\n",
            "key \"bridge[cloud].tls_key_file\"",
        ),
        (
            "[[bridge]]\nname = \"cloud\"\naddress = \"127.0.0.1:1883\"\ntls_cert_file = \"/x.pem\"\ntls_key_file = \"/x.key\"\ntopics = [\"a\"]\n",
            "key \"bridge[cloud].address\"",
        ),
    ];
    for (i, (toml, want)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ringmq"))
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .output()
            .expect("run ringmq check-config");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {stderr}");
        assert!(stderr.contains(want), "{toml}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A ringmq with `--data-dir DATA` and one bridge `cloud` taking `cmd/#` in at QoS 2.
fn durable_ringmq_with_in_bridge(dir: &Path, data: &str, remote_port: u16) -> Broker {
    let cfg = dir.join("ringmq-in.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[bridge]]\nname = \"cloud\"\naddress = \"127.0.0.1:{remote_port}\"\n\
             reconnect_min_ms = 100\nreconnect_max_ms = 500\ntopics = [\"cmd/# in 2\"]\n"
        ),
    )
    .expect("write ringmq-in.toml");
    let cfg = cfg.display().to_string();
    Launch::new(&[
        "--config",
        &cfg,
        "--shards",
        "2",
        "--http-listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--durability",
        "fsync",
    ])
    .spawn()
}

#[test]
fn a_kill_9_of_ringmq_mid_stream_loses_no_message_the_remote_sent_in() {
    // The bridge acknowledges a remote message only once ringmq's log has it, so
    // whatever the kill -9 interrupts is either in the log (delivered after the
    // restart) or still with Mosquitto (sent again to the bridge's kept session).
    const N: usize = 300;
    let dir = tempdir("in9");
    let data = dir.join("data").display().to_string();
    let port = free_port();
    let remote_addr = format!("127.0.0.1:{port}");
    let _remote = Mosquitto::start(&dir, port);
    let mut local = durable_ringmq_with_in_bridge(&dir, &data, port);
    let keeper = |local: &Broker| persistent_client(local.addr(), "in-keeper");
    let mut sub = keeper(&local);
    subscribe(&mut sub, "cmd/#");
    let mut remote_pub = RawClient::connect_v311(&remote_addr, "in-pub");
    // Probes until the bridge's remote subscription exists.
    let deadline = Instant::now() + ARRIVE;
    let mut id = 1000;
    loop {
        assert!(
            Instant::now() < deadline,
            "no probe came through the bridge"
        );
        id += 1;
        publish(&mut remote_pub, "cmd/probe", QoS::AtLeastOnce, id, "probe");
        if next_publish(&mut sub, Duration::from_millis(200)).is_some() {
            break;
        }
    }
    drop(sub);
    for i in 0..N {
        let q = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        publish(&mut remote_pub, "cmd/x", q, i as u16 + 1, &format!("m{i}"));
    }
    // Mid-stream: Mosquitto has them all, the bridge is still taking them.
    kill_9(&mut local);

    let local = durable_ringmq_with_in_bridge(&dir, &data, port);
    let mut sub = keeper(&local);
    let mut seen = BTreeSet::new();
    while seen.len() < N {
        let Some(p) = next_publish(&mut sub, ARRIVE) else {
            let missing: Vec<usize> = (0..N)
                .filter(|i| !seen.contains(&format!("m{i}")))
                .collect();
            panic!(
                "only {} of {N} arrived; missing {missing:?}; {}",
                seen.len(),
                metrics_text(&local)
                    .lines()
                    .filter(|l| l.contains("bridge") || l.contains("drop"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        };
        if text(&p.payload) != "probe" {
            seen.insert(text(&p.payload));
        }
    }
    assert_eq!(seen, (0..N).map(|i| format!("m{i}")).collect());
    drop(local);
    let _ = std::fs::remove_dir_all(&dir);
}
