//! Durability with the real binary (issue #13): data directories the broker cannot
//! use are refused at start-up with the directory named and exit status 2, and
//! persistent sessions, their queued and in-flight QoS 1/2 messages, and retained
//! messages survive SIGKILL and restart.
//!
//! Every wait is bounded; nothing asserts how fast anything happens.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

/// A fresh directory under the system temp dir, removed again on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("ringmq-durability-{}", uniq(tag)));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn data(&self) -> String {
        self.0.join("data").display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a broker that must refuse to start; returns its stderr. It exits before
/// binding anything, so nothing needs a free port.
fn refused(args: &[&str]) -> String {
    refused_with(args, None, 2)
}

/// In the child before exec: files may not grow past 1 MiB, and going past it is an
/// error (EFBIG) rather than SIGXFSZ: a disk that is full for the log.
fn small_file_limit() -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: 1 << 20,
        rlim_max: 1 << 20,
    };
    // SAFETY: setrlimit and signal are async-signal-safe and get valid arguments.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    Ok(())
}

fn refused_with(args: &[&str], hook: Option<fn() -> std::io::Result<()>>, code: i32) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringmq"));
    if let Some(hook) = hook {
        use std::os::unix::process::CommandExt;
        // SAFETY: the hook only makes async-signal-safe calls (see small_file_limit).
        unsafe { cmd.pre_exec(hook) };
    }
    cmd.args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ringmq");
    let status = wait_or_kill(&mut child, Duration::from_secs(30))
        .expect("a broker with an unusable data directory exits");
    let mut err = String::new();
    use std::io::Read;
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    assert_eq!(status.code(), Some(code), "exit status; stderr: {err}");
    err
}

#[test]
fn a_second_broker_on_a_locked_data_directory_is_refused() {
    let t = TempDir::new("lock");
    let data = t.data();
    let _first = Launch::new(&["--data-dir", &data]).spawn();
    let err = refused(&["--data-dir", &data]);
    assert!(
        err.contains(&data) && err.contains("locked by another ringmq"),
        "{err}"
    );
}

#[test]
fn a_data_directory_of_another_store_format_is_refused_by_name() {
    let t = TempDir::new("vers");
    let data = t.data();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(Path::new(&data).join("VERSION"), "ringmq-store-format 99\n").unwrap();
    let err = refused(&["--data-dir", &data]);
    assert!(
        err.contains(&data) && err.contains("ringmq-store-format 99"),
        "{err}"
    );
}

#[test]
fn a_data_directory_that_cannot_be_created_is_refused() {
    // Its parent is a regular file.
    let t = TempDir::new("file");
    std::fs::create_dir_all(t.path()).unwrap();
    let file = t.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let data = file.join("data").display().to_string();
    let err = refused(&["--data-dir", &data]);
    assert!(
        err.contains(&data) && err.contains("cannot create the directory"),
        "{err}"
    );
    // Not writable, even for root: sysfs refuses new directories.
    let data = "/sys/ringmq-durability-test/data";
    let err = refused(&["--data-dir", data]);
    assert!(
        err.contains(data) && err.contains("cannot create the directory"),
        "{err}"
    );
}

#[test]
fn a_disk_too_full_for_the_log_is_refused_at_start() {
    let t = TempDir::new("full");
    let data = t.data();
    let err = refused_with(&["--data-dir", &data], Some(small_file_limit), 1);
    assert!(
        err.contains(&data)
            && err.contains("cannot prepare the log")
            && err.contains("no space left"),
        "{err}"
    );
}

#[test]
fn without_a_data_directory_durability_writes_nothing_and_starts() {
    // `durability` alone is accepted (it takes effect with a data_dir) and a bad
    // mode is refused naming the value.
    let mut b = Launch::new(&["--durability", "fsync"]).spawn();
    b.assert_alive();
    let err = refused(&["--durability", "sometimes"]);
    assert!(
        err.contains("durability") && err.contains("sometimes"),
        "{err}"
    );
}

/// Issue #15: unless set, the key of the hash that places sessions on loops is random
/// per process (so nobody can pick client ids that all land on one loop), and a data
/// directory keeps the key its sessions were placed with (`<data_dir>/PLACEMENT`): a
/// restart with another random key would find every session on the wrong loop and
/// re-home them all. Without the file, 16 sessions over 2 loops keep their loops
/// under a fresh key with probability 2^-16.
#[test]
fn a_random_placement_key_is_kept_with_the_data_directory() {
    let t = TempDir::new("placement");
    let data = t.data();
    let args = [
        "--data-dir",
        data.as_str(),
        "--shards",
        "2",
        "--placement-seed",
        "none",
    ];
    let ids: Vec<String> = (0..16).map(|i| format!("pk-{i}")).collect();
    let mut keys = Vec::new();
    for round in 0..2 {
        let mut broker = Launch::new(&args).spawn();
        let addr = broker.addr().to_string();
        let rehomed = broker
            .startup_lines()
            .iter()
            .find(|l| l.contains("re-homed"))
            .cloned();
        assert_eq!(
            rehomed, None,
            "round {round}: sessions placed with another key"
        );
        for id in &ids {
            let (mut s, present) =
                Peer::connect(&addr, connect_packet(id, false, false)).expect("connects");
            assert_eq!(present, round > 0, "{id} in round {round}");
            if round == 0 {
                subscribe(&mut s, &["pk/#"]);
            }
            s.send(&Packet::Disconnect(Disconnect {
                code: ReasonCode::Success,
                properties: Default::default(),
            }));
        }
        let status = broker.terminate(Duration::from_secs(20));
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        keys.push(std::fs::read_to_string(Path::new(&data).join("PLACEMENT")).ok());
    }
    let key = keys[0].as_deref().map(str::trim).map(str::parse::<u64>);
    assert!(matches!(key, Some(Ok(_))), "PLACEMENT: {:?}", keys[0]);
    assert_eq!(keys[0], keys[1], "the key changed across a restart");
}

// ---------------------------------------------------------------------------------------
// The kill -9 loop
// ---------------------------------------------------------------------------------------

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use ringmq::protocol::{
    decode_packet, encode_packet, Connect, Disconnect, LastWill, Packet, ProtocolVersion, PubResp,
    Publish, QoS, ReasonCode, SubAck, Subscribe, SubscriptionOptions,
};

/// xorshift64*: the test's only randomness, from a printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A minimal MQTT client that tolerates the broker dying under it: every read and
/// write reports a closed connection instead of failing the test.
struct Peer {
    s: TcpStream,
    buf: BytesMut,
    v: ProtocolVersion,
    closed: bool,
}

impl Peer {
    fn connect(addr: &str, connect: Connect) -> Option<(Peer, bool)> {
        let s = TcpStream::connect(addr).ok()?;
        s.set_nodelay(true).ok()?;
        let mut p = Peer {
            s,
            buf: BytesMut::new(),
            v: connect.protocol,
            closed: false,
        };
        p.send(&Packet::Connect(Box::new(connect)));
        match p.recv(Duration::from_secs(20)) {
            Some(Packet::ConnAck(a)) if a.code == ReasonCode::Success => {
                Some((p, a.session_present))
            }
            other => panic!("CONNACK expected, got {other:?}"),
        }
    }

    fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        encode_packet(packet, self.v, &mut out);
        if self.s.write_all(&out).is_err() {
            self.closed = true;
        }
    }

    /// The next packet within `timeout`; `None` on timeout or once closed.
    fn recv(&mut self, timeout: Duration) -> Option<Packet> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(p)) = decode_packet(&mut self.buf, self.v, usize::MAX >> 1) {
                return Some(p);
            }
            if self.closed {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = self
                .s
                .set_read_timeout(Some(left.max(Duration::from_millis(1))));
            let mut tmp = [0u8; 16384];
            match self.s.read(&mut tmp) {
                Ok(0) => self.closed = true,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
    }
}

fn connect_packet(id: &str, v5: bool, clean: bool) -> Connect {
    let mut c = Connect {
        protocol: if v5 {
            ProtocolVersion::V5
        } else {
            ProtocolVersion::V311
        },
        clean_start: clean,
        keep_alive_s: 60,
        client_id: Bytes::copy_from_slice(id.as_bytes()),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    };
    if v5 && !clean {
        c.properties.to_mut().session_expiry_interval_s = Some(3600);
    }
    c
}

fn subscribe(p: &mut Peer, filters: &[&str]) {
    let filters = filters
        .iter()
        .map(|f| {
            (
                Bytes::copy_from_slice(f.as_bytes()),
                SubscriptionOptions {
                    qos: QoS::ExactlyOnce,
                    ..Default::default()
                },
            )
        })
        .collect();
    p.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters,
        properties: Default::default(),
    }));
    match p.recv(Duration::from_secs(20)) {
        Some(Packet::SubAck(SubAck { codes, .. })) => {
            assert!(
                codes.iter().all(|c| *c == ReasonCode::GrantedQoS2),
                "{codes:?}"
            )
        }
        other => panic!("SUBACK expected, got {other:?}"),
    }
}

fn publish_packet(topic: &str, payload: &str, qos: QoS, retain: bool, packet_id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        packet_id,
        properties: Default::default(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    })
}

/// A persistent subscriber as a real client keeps it: what it received, and the
/// inbound QoS 2 ids it answered with PUBREC and not yet released (so a resend of
/// one of those is a duplicate, not a new message).
#[derive(Default)]
struct Inbox {
    got: HashMap<String, u32>,
    awaiting_rel: HashSet<u16>,
}

impl Inbox {
    /// Handles one packet; answers on `p`.
    fn on(&mut self, p: &mut Peer, packet: Packet) {
        match packet {
            Packet::Publish(m) => {
                let payload = String::from_utf8_lossy(&m.payload).into_owned();
                match m.qos {
                    QoS::AtMostOnce => *self.got.entry(payload).or_default() += 1,
                    QoS::AtLeastOnce => {
                        *self.got.entry(payload).or_default() += 1;
                        p.send(&Packet::PubAck(PubResp::new(m.packet_id)));
                    }
                    QoS::ExactlyOnce => {
                        if self.awaiting_rel.insert(m.packet_id) {
                            *self.got.entry(payload).or_default() += 1;
                        }
                        p.send(&Packet::PubRec(PubResp::new(m.packet_id)));
                    }
                }
            }
            Packet::PubRel(r) => {
                self.awaiting_rel.remove(&r.packet_id);
                p.send(&Packet::PubComp(PubResp::new(r.packet_id)));
            }
            _ => {}
        }
    }

    fn drain(&mut self, p: &mut Peer, quiet: Duration, limit: Duration) {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            match p.recv(quiet) {
                Some(packet) => self.on(p, packet),
                None => return,
            }
        }
    }

    /// Handles packets until `done` holds for what arrived (or `limit` passed, or the
    /// connection closed), then [`Inbox::drain`]s until `quiet`: a pause before the
    /// expected messages (a loaded runner, a loop still loading its log) does not end
    /// the wait for them early, and whatever extra follows them still arrives before
    /// the caller compares.
    fn drain_until(
        &mut self,
        p: &mut Peer,
        done: impl Fn(&Inbox) -> bool,
        quiet: Duration,
        limit: Duration,
    ) {
        let end = Instant::now() + limit;
        while !done(self) && !p.closed {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            if let Some(packet) = p.recv(left) {
                self.on(p, packet);
            }
        }
        self.drain(
            p,
            quiet,
            end.saturating_duration_since(Instant::now()).max(quiet),
        );
    }

    /// Whether every one of `want` arrived at least once.
    fn has_all<'a>(&self, mut want: impl Iterator<Item = &'a String>) -> bool {
        want.all(|m| self.got.contains_key(m))
    }
}

/// One publisher's pipelined flow: what it sent and which acknowledgements came.
struct Flow {
    p: Option<Peer>,
    qos: QoS,
    prefix: String,
    next: u32,
    outstanding: HashMap<u16, String>,
    /// QoS 2 after PUBREC: PUBREL sent, PUBCOMP pending.
    released: HashMap<u16, String>,
}

const WINDOW: usize = 16;
const PER_ROUND: u32 = 300;

impl Flow {
    fn pump(&mut self, acked: &mut HashSet<String>, maybe: &mut HashSet<String>) -> bool {
        let Some(p) = self.p.as_mut() else {
            return false;
        };
        while self.outstanding.len() + self.released.len() < WINDOW && self.next < PER_ROUND {
            self.next += 1;
            let pid = self.next as u16;
            let payload = format!("{}-{}", self.prefix, self.next);
            p.send(&publish_packet("d/x", &payload, self.qos, false, pid));
            maybe.insert(payload.clone());
            self.outstanding.insert(pid, payload);
        }
        let mut moved = false;
        while let Some(packet) = p.recv(Duration::from_millis(1)) {
            moved = true;
            match packet {
                Packet::PubAck(r) if r.code == ReasonCode::Success => {
                    if let Some(m) = self.outstanding.remove(&r.packet_id) {
                        acked.insert(m);
                    }
                }
                Packet::PubRec(r) if r.code == ReasonCode::Success => {
                    if let Some(m) = self.outstanding.remove(&r.packet_id) {
                        self.released.insert(r.packet_id, m);
                        p.send(&Packet::PubRel(PubResp::new(r.packet_id)));
                    }
                }
                Packet::PubComp(r) => {
                    if let Some(m) = self.released.remove(&r.packet_id) {
                        acked.insert(m);
                    }
                }
                other => panic!("publisher {}: unexpected {other:?}", self.prefix),
            }
        }
        if p.closed {
            self.p = None;
        }
        moved
    }
}

/// The kill -9 loop with durability `mode` (`process`, or `fsync`, whose io_uring
/// group commits are writes linked to an fdatasync).
fn kill_loop(mode: &str, extra: &[&str], shards: usize) {
    let seed = std::env::var("RINGMQ_DURABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    let kills: usize = std::env::var("RINGMQ_DURABILITY_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    println!(
        "kill -9 loop: seed {seed} (RINGMQ_DURABILITY_SEED), {kills} kills, {mode}, {extra:?}"
    );
    let mut rng = Rng(seed);
    let t = TempDir::new("kill");
    let data = t.data();
    let mut args = vec![
        "--data-dir",
        &data,
        "--durability",
        mode,
        "--max-queued-messages",
        "100000",
        "--max-queued-bytes",
        "100000000",
    ];
    args.extend_from_slice(extra);
    // With several loops the publishers (and the will's session) live on loop 0 and
    // the persistent subscribers on the last loop: every acknowledged copy crosses
    // the mesh, so a PUBACK must wait for the subscribers' loop's log too
    // (`shard/durable_remote.rs`).
    let on0 = |p: &str| id_on_shard(p, 0, shards);
    let on_last = |p: &str| id_on_shard(p, shards - 1, shards);
    let (son, soff, p1, p2, w) = (
        on_last("son"),
        on_last("soff"),
        on0("p1"),
        on0("p2"),
        on0("w"),
    );

    let mut son_inbox = Inbox::default();
    let mut soff_inbox = Inbox::default();
    let mut acked: HashSet<String> = HashSet::new();
    let mut maybe: HashSet<String> = HashSet::new();
    for round in 0..=kills {
        let mut broker = Launch::new(&args).spawn();
        let addr = broker.addr().to_string();
        let (mut s_on, present) =
            Peer::connect(&addr, connect_packet(&son, false, false)).expect("son connects");
        assert_eq!(present, round > 0, "round {round}: son's session present");
        if round == 0 {
            subscribe(&mut s_on, &["d/#", "w/#"]);
            let (mut s_off, _) =
                Peer::connect(&addr, connect_packet(&soff, true, false)).expect("soff");
            subscribe(&mut s_off, &["d/#"]);
            s_off.send(&Packet::Disconnect(Disconnect {
                code: ReasonCode::Success,
                properties: Default::default(),
            }));
            // A retained message, acknowledged before any kill.
            let (mut r, _) = Peer::connect(&addr, connect_packet(&p1, false, true)).expect("p");
            r.send(&publish_packet("r/keep", "kept", QoS::AtLeastOnce, true, 1));
            assert!(matches!(
                r.recv(Duration::from_secs(20)),
                Some(Packet::PubAck(_))
            ));
            // A session with a will that only its end publishes (delay of an hour).
            let mut c = connect_packet(&w, true, false);
            c.will = Some(LastWill {
                topic: Bytes::from_static(b"w/gone"),
                payload: Bytes::from_static(b"will"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: ringmq::protocol::Properties::from(ringmq::protocol::PropertyValues {
                    will_delay_interval_s: Some(3600),
                    ..Default::default()
                }),
            });
            let (wp, _) = Peer::connect(&addr, c).expect("w connects");
            // Left open: the kill ends it abnormally, the will waits for its delay.
            std::mem::forget(wp.s);
        }
        if round == kills {
            // The last start: nothing is killed any more; the checks follow.
            son_inbox.drain_until(
                &mut s_on,
                |i| i.has_all(acked.iter()),
                Duration::from_secs(2),
                Duration::from_secs(30),
            );
            let (mut s_off, present) =
                Peer::connect(&addr, connect_packet(&soff, true, false)).expect("soff back");
            assert!(present, "soff's session survived");
            soff_inbox.drain_until(
                &mut s_off,
                |i| i.has_all(acked.iter()),
                Duration::from_secs(2),
                Duration::from_secs(30),
            );
            // The will's session ends with a clean start: its will goes out.
            let _ = Peer::connect(&addr, connect_packet(&w, true, true)).expect("w back");
            son_inbox.drain_until(
                &mut s_on,
                |i| i.got.contains_key("will"),
                Duration::from_secs(2),
                Duration::from_secs(10),
            );
            let (mut late, _) =
                Peer::connect(&addr, connect_packet("late", false, true)).expect("late");
            subscribe(&mut late, &["r/#"]);
            let mut retained = Inbox::default();
            retained.drain_until(
                &mut late,
                |i| i.got.contains_key("kept"),
                Duration::from_secs(1),
                Duration::from_secs(10),
            );
            assert_eq!(
                retained.got.get("kept"),
                Some(&1),
                "retained r/keep survived"
            );
            break;
        }
        let mut flows = [
            Flow {
                p: Peer::connect(&addr, connect_packet(&p1, false, true)).map(|x| x.0),
                qos: QoS::AtLeastOnce,
                prefix: format!("q1-{round}"),
                next: 0,
                outstanding: HashMap::new(),
                released: HashMap::new(),
            },
            Flow {
                p: Peer::connect(&addr, connect_packet(&p2, false, true)).map(|x| x.0),
                qos: QoS::ExactlyOnce,
                prefix: format!("q2-{round}"),
                next: 0,
                outstanding: HashMap::new(),
                released: HashMap::new(),
            },
        ];
        let pid = broker.pid() as libc::pid_t;
        let delay = Duration::from_millis(5 + rng.below(150));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            // SAFETY: kill(2) on our own unreaped child (a zombie at worst).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            let mut moved = false;
            for f in &mut flows {
                moved |= f.pump(&mut acked, &mut maybe);
            }
            while let Some(packet) = s_on.recv(Duration::from_millis(1)) {
                son_inbox.on(&mut s_on, packet);
                moved = true;
            }
            if flows.iter().all(|f| f.p.is_none()) && s_on.closed {
                break;
            }
            if !moved
                && flows
                    .iter()
                    .all(|f| f.next >= PER_ROUND && f.outstanding.is_empty())
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        killer.join().expect("killer");
        let status = broker.terminate(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| !s.success()),
            "round {round}: the broker died by SIGKILL: {status:?}"
        );
        println!(
            "round {round}: killed after {delay:?}; {} acknowledged so far",
            acked.len()
        );
    }
    let mut lost = Vec::new();
    for m in &acked {
        for (who, inbox) in [("online", &son_inbox), ("offline", &soff_inbox)] {
            match inbox.got.get(m) {
                None => lost.push(format!("{who}: {m}")),
                Some(&n) if m.starts_with("q2-") && n != 1 => {
                    lost.push(format!("{who}: {m} delivered {n} times"))
                }
                _ => {}
            }
        }
    }
    for inbox in [&son_inbox, &soff_inbox] {
        for (m, n) in &inbox.got {
            assert!(
                maybe.contains(m) || m == "will",
                "delivered a message nobody sent: {m}"
            );
            if m.starts_with("q2-") {
                assert_eq!(*n, 1, "QoS 2 {m} delivered {n} times (seed {seed})");
            }
        }
    }
    assert!(
        lost.is_empty(),
        "seed {seed}: {} of {} acknowledged messages not delivered as promised: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(20)]
    );
    assert_eq!(
        son_inbox.got.get("will"),
        Some(&1),
        "the stored will went out"
    );
    assert!(
        acked.len() > kills,
        "traffic was acknowledged: {}",
        acked.len()
    );
}

#[test]
fn acknowledged_messages_survive_sigkill_one_loop() {
    kill_loop("process", &["--shards", "1"], 1);
}

#[test]
fn acknowledged_messages_survive_sigkill_two_loops() {
    kill_loop("fsync", &["--shards", "2"], 2);
}

/// Another loop count re-homes the stored sessions at start-up instead of refusing:
/// 1 loop, then 3, then 2, with a session's subscription and queued messages intact.
#[test]
fn a_different_loop_count_rehomes_sessions() {
    let t = TempDir::new("rehome");
    let data = t.data();
    let args = |shards: &'static str| -> Vec<String> {
        ["--data-dir", data.as_str(), "--shards", shards]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let ids: Vec<String> = (0..6).map(|i| format!("rh-{i}")).collect();
    let mut next = 0;
    for (round, shards) in ["1", "3", "2"].into_iter().enumerate() {
        let a = args(shards);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let mut broker = Launch::new(&a).spawn();
        let addr = broker.addr().to_string();
        for id in &ids {
            let (mut s, present) =
                Peer::connect(&addr, connect_packet(id, false, false)).expect("connects");
            assert_eq!(present, round > 0, "{id} in round {round}");
            if round == 0 {
                subscribe(&mut s, &["rh/#"]);
            } else {
                // Everything queued while offline arrives, once.
                let mut inbox = Inbox::default();
                let want: HashSet<String> = (next - 3..next).map(|n| format!("m{n}")).collect();
                inbox.drain_until(
                    &mut s,
                    |i| i.has_all(want.iter()),
                    Duration::from_millis(500),
                    Duration::from_secs(10),
                );
                let got: HashSet<String> = inbox.got.keys().cloned().collect();
                assert_eq!(got, want, "{id} after re-homing onto {shards} loops");
            }
            s.send(&Packet::Disconnect(Disconnect {
                code: ReasonCode::Success,
                properties: Default::default(),
            }));
        }
        let (mut p, _) = Peer::connect(&addr, connect_packet("rh-pub", false, true)).expect("p");
        for _ in 0..3 {
            next += 1;
            p.send(&publish_packet(
                "rh/t",
                &format!("m{next}"),
                QoS::AtLeastOnce,
                false,
                1,
            ));
            assert!(matches!(
                p.recv(Duration::from_secs(20)),
                Some(Packet::PubAck(_))
            ));
        }
        let status = broker.terminate(Duration::from_secs(20));
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        next += 1; // the next round expects m(next-3)..m(next-1)
    }
}

// ---------------------------------------------------------------------------------------
// A real disk that fills while the broker runs
// ---------------------------------------------------------------------------------------

use std::ffi::CString;
use std::sync::OnceLock;

/// What the child's hook needs, prepared before the fork (it may not allocate).
struct SmallDisk {
    mount_at: CString,
    uid_map: CString,
    gid_map: CString,
}

static SMALL_DISK: OnceLock<SmallDisk> = OnceLock::new();

/// In the child before exec: a user and mount namespace of its own (no privilege
/// needed where unprivileged user namespaces are allowed), the caller's ids mapped
/// in (`uid_map`/`gid_map`, prepared before the fork), and `/` made private so the
/// caller's mounts stay in this namespace.
fn own_user_and_mount_ns(uid_map: &CString, gid_map: &CString) -> std::io::Result<()> {
    let err = std::io::Error::last_os_error;
    // SAFETY: unshare, open, write, close and mount are async-signal-safe; every
    // pointer is a NUL-terminated string that outlives the calls (the caller's
    // statics and literals).
    unsafe {
        if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
            return Err(err());
        }
        for (path, text) in [
            (c"/proc/self/setgroups", c"deny".as_ptr()),
            (c"/proc/self/uid_map", uid_map.as_ptr()),
            (c"/proc/self/gid_map", gid_map.as_ptr()),
        ] {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(err());
            }
            let n = libc::strlen(text);
            let w = libc::write(fd, text.cast(), n);
            libc::close(fd);
            if w != n as isize {
                return Err(err());
            }
        }
        let null = std::ptr::null();
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            null.cast(),
        ) != 0
        {
            return Err(err());
        }
    }
    Ok(())
}

/// In the child before exec: a user and mount namespace of its own (no privilege
/// needed where unprivileged user namespaces are allowed), then a 12 MiB tmpfs on
/// the prepared directory: room for the first 8 MiB log segment, not the second.
fn small_tmpfs() -> std::io::Result<()> {
    let err = std::io::Error::last_os_error;
    let Some(d) = SMALL_DISK.get() else {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    };
    own_user_and_mount_ns(&d.uid_map, &d.gid_map)?;
    // SAFETY: mount is async-signal-safe; every pointer is a NUL-terminated string
    // that outlives the call (statics).
    unsafe {
        if libc::mount(
            c"tmpfs".as_ptr(),
            d.mount_at.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"size=12m".as_ptr().cast(),
        ) != 0
        {
            return Err(err());
        }
    }
    Ok(())
}

#[test]
fn a_disk_that_fills_while_running_refuses_instead_of_acknowledging() {
    let t = TempDir::new("enospc");
    let mnt = t.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let disk = SMALL_DISK.get_or_init(|| SmallDisk {
        mount_at: CString::new(mnt.display().to_string()).unwrap(),
        uid_map: CString::new(format!("0 {uid} 1")).unwrap(),
        gid_map: CString::new(format!("0 {gid} 1")).unwrap(),
    });
    assert_eq!(disk.mount_at.to_str().unwrap(), mnt.display().to_string());
    let data = mnt.join("data").display().to_string();
    let args = [
        "--data-dir",
        &data,
        "--shards",
        "1",
        "--max-queued-messages",
        "100000",
        "--max-queued-bytes",
        "200000000",
    ];
    // SAFETY: small_tmpfs makes only async-signal-safe calls on prepared statics.
    let mut broker = unsafe { Launch::new(&args).pre_exec(small_tmpfs) }.spawn();
    let addr = broker.addr().to_string();
    let (mut s, _) = Peer::connect(&addr, connect_packet("keep", true, false)).expect("sub");
    subscribe(&mut s, &["d/#"]);
    s.send(&Packet::Disconnect(Disconnect {
        code: ReasonCode::Success,
        properties: Default::default(),
    }));
    let (mut p, _) = Peer::connect(&addr, connect_packet("filler", true, true)).expect("pub");
    let body = "x".repeat(4096);
    let (mut acked, mut refused) = (HashSet::new(), 0u32);
    let mut outstanding: HashMap<u16, String> = HashMap::new();
    let (mut next, end) = (0u32, Instant::now() + Duration::from_secs(120));
    // 8 MiB of log holds fewer than 2,100 such messages; 6,000 overflow it.
    while (next < 6000 || !outstanding.is_empty()) && refused < 200 && Instant::now() < end {
        while outstanding.len() < 16 && next < 6000 {
            next += 1;
            let pid = (next % 60_000 + 1) as u16;
            let payload = format!("{next}-{body}");
            p.send(&publish_packet(
                "d/x",
                &payload,
                QoS::AtLeastOnce,
                false,
                pid,
            ));
            outstanding.insert(pid, format!("{next}"));
        }
        match p.recv(Duration::from_secs(20)) {
            Some(Packet::PubAck(r)) => {
                let m = outstanding.remove(&r.packet_id).expect("an outstanding id");
                match r.code {
                    ReasonCode::Success => {
                        acked.insert(m);
                    }
                    ReasonCode::QuotaExceeded => refused += 1,
                    other => panic!("PUBACK {other:?} for message {m}"),
                }
            }
            other => panic!("PUBACK expected, got {other:?} ({} acked)", acked.len()),
        }
    }
    assert!(
        refused > 0,
        "the full disk refused publishes ({} acked)",
        acked.len()
    );
    assert!(
        acked.len() > 100,
        "{} acknowledged before the disk filled",
        acked.len()
    );
    broker.assert_alive();
    if let Some(http) = broker.http_addr() {
        let mut c = TcpStream::connect(&http).expect("http");
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        let _ = c.read_to_string(&mut text);
        let failed = text
            .lines()
            .find(|l| l.starts_with("ringmq_store_errors_total{reason=\"write_failed\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
        assert!(
            failed.is_some_and(|n| n > 0),
            "write_failed counted: {failed:?}"
        );
    }
    // While the disk is full, resuming a persistent session never claims state that
    // is not on disk.
    println!(
        "full disk: {} acknowledged, {refused} refused with 0x97",
        acked.len()
    );
    let mut peer = Peer {
        s: TcpStream::connect(&addr).expect("connect"),
        buf: BytesMut::new(),
        v: ProtocolVersion::V5,
        closed: false,
    };
    peer.send(&Packet::Connect(Box::new(connect_packet(
        "keep", true, false,
    ))));
    match peer.recv(Duration::from_secs(20)) {
        // Refused while records it would resume are still being written (and failing);
        // once nothing is pending, what it resumes is on disk: session present.
        Some(Packet::ConnAck(a)) => assert!(
            a.code == ReasonCode::ServerUnavailable
                || (a.code == ReasonCode::Success && a.session_present),
            "{a:?}"
        ),
        other => panic!("CONNACK expected, got {other:?}"),
    }
    // Room again (the operator freed space): the log goes on, nothing was lost.
    let status = Command::new("nsenter")
        .args([
            "--target",
            &broker.pid().to_string(),
            "--user",
            "--mount",
            "--",
        ])
        .args([
            "mount",
            "-o",
            "remount,size=64m",
            &mnt.display().to_string(),
        ])
        .status()
        .expect("nsenter (util-linux) runs");
    assert!(status.success(), "tmpfs grown: {status:?}");
    drop(peer);
    // Everything acknowledged reaches the subscriber. A resume that needs a record
    // written while a write that failed before the remount is still being answered is
    // refused (0x88) again; the client retries, as a device would, for a bounded time.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut s, present) = loop {
        let mut back = Peer {
            s: TcpStream::connect(&addr).expect("connect"),
            buf: BytesMut::new(),
            v: ProtocolVersion::V5,
            closed: false,
        };
        back.send(&Packet::Connect(Box::new(connect_packet(
            "keep", true, false,
        ))));
        match back.recv(Duration::from_secs(20)) {
            Some(Packet::ConnAck(a)) if a.code == ReasonCode::Success => {
                break (back, a.session_present)
            }
            Some(Packet::ConnAck(a))
                if a.code == ReasonCode::ServerUnavailable && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            other => panic!("CONNACK after the disk has room again, got {other:?}"),
        }
    };
    assert!(present);
    let mut inbox = Inbox::default();
    inbox.drain(&mut s, Duration::from_secs(2), Duration::from_secs(60));
    let got: HashSet<String> = inbox
        .got
        .keys()
        .map(|k| k.split('-').next().unwrap_or("").to_string())
        .collect();
    let missing: Vec<_> = acked
        .iter()
        .filter(|m| !got.contains(*m))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged, not delivered: {missing:?}"
    );
}

/// What the read-only hook needs, prepared before the fork (it may not allocate).
struct ReadOnlyDir {
    path: CString,
    uid_map: CString,
    gid_map: CString,
    /// The mount's own flags (nosuid, nodev, atime ...): a user namespace may not
    /// drop them, so the read-only remount repeats them.
    flags: libc::c_ulong,
}

static READ_ONLY_DIR: OnceLock<ReadOnlyDir> = OnceLock::new();

/// In the child before exec: a user and mount namespace of its own, in which the
/// prepared directory is bind-mounted onto itself and remounted read-only (EROFS
/// for every write, root included).
fn read_only_bind() -> std::io::Result<()> {
    let err = std::io::Error::last_os_error;
    let Some(d) = READ_ONLY_DIR.get() else {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    };
    own_user_and_mount_ns(&d.uid_map, &d.gid_map)?;
    // SAFETY: mount is async-signal-safe; every pointer is a NUL-terminated string
    // that outlives the calls (a static).
    unsafe {
        let null = std::ptr::null();
        if libc::mount(
            d.path.as_ptr(),
            d.path.as_ptr(),
            null,
            libc::MS_BIND,
            null.cast(),
        ) != 0
            || libc::mount(
                null,
                d.path.as_ptr(),
                null,
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | d.flags,
                null.cast(),
            ) != 0
        {
            return Err(err());
        }
    }
    Ok(())
}

#[test]
fn a_read_only_data_directory_is_refused() {
    let t = TempDir::new("readonly");
    let dir = t.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let c = CString::new(dir.display().to_string()).unwrap();
    // SAFETY: statvfs fills the zeroed struct we own from a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs");
    // ST_* and MS_* share their values for these flags.
    let keep = libc::ST_NOSUID
        | libc::ST_NODEV
        | libc::ST_NOEXEC
        | libc::ST_NOATIME
        | libc::ST_NODIRATIME
        | libc::ST_RELATIME;
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let ro = READ_ONLY_DIR.get_or_init(|| ReadOnlyDir {
        path: c,
        uid_map: CString::new(format!("0 {uid} 1")).unwrap(),
        gid_map: CString::new(format!("0 {gid} 1")).unwrap(),
        flags: st.f_flag & keep,
    });
    let data = ro.path.to_str().unwrap().to_string();
    let err = refused_with(&["--data-dir", &data], Some(read_only_bind), 2);
    assert!(
        err.contains(&data) && err.contains("Read-only file system"),
        "{err}"
    );
}
