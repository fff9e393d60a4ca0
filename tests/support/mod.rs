//! Shared harness for the conformance, profile and interop tests.
//!
//! - [`Broker`] spawns the `ringmq` binary on an ephemeral port (or, with
//!   `RINGMQ_TEST_ADDR=host:port`, points at a broker that is already running, e.g.
//!   Mosquitto, to validate expectations). `RINGMQ_TEST_IO=uring|epoll` runs every
//!   spawned broker whose arguments name no backend on that one ([`test_io`]).
//! - [`RawClient`] is a blocking TCP client with bounded read timeouts that speaks raw
//!   bytes; `pkt` builds packets byte by byte (independent of the codec under test),
//!   and `recv_packet`/`send_packet` use `ringmq::protocol` where structure matters more
//!   than byte order (e.g. MQTT 5 properties, whose order the spec leaves open).
//!
//! Every wait is bounded; no test asserts how fast something happens, only that it
//! happens before a generous deadline.

#![allow(dead_code, unused_imports)] // each test crate uses a different subset

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringmq::protocol::{decode_packet, encode_packet, Packet, ProtocolVersion};

pub use ringmq::protocol::ProtocolVersion::{V311, V5};

/// How long a test waits for an expected packet before failing.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the broker gets to print its listening address.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a test waits to make sure something does NOT arrive (e.g. a discarded will).
pub const QUIET: Duration = Duration::from_millis(700);

// ---------------------------------------------------------------------------------------
// Broker process
// ---------------------------------------------------------------------------------------

/// A broker under test. Spawned ringmq processes are stopped (SIGTERM, then SIGKILL) by
/// PID on drop.
pub struct Broker {
    child: Option<Child>,
    addr: String,
    stderr_tail: Arc<Mutex<Vec<String>>>,
    /// Every stderr line up to and including the `listening on` line.
    startup_lines: Vec<String>,
}

/// How to spawn a ringmq process: `ringmq --listen 127.0.0.1:0 ARGS...` with optional
/// environment changes, a startup deadline and stderr echo. [`Launch::spawn`] always
/// starts the real binary (it ignores `RINGMQ_TEST_ADDR`).
pub struct Launch {
    args: Vec<String>,
    env: Vec<(String, Option<String>)>,
    startup_timeout: Duration,
    echo_stderr: bool,
    pre_exec: Option<fn() -> std::io::Result<()>>,
}

impl Launch {
    pub fn new(args: &[&str]) -> Launch {
        Launch {
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            startup_timeout: STARTUP_TIMEOUT,
            echo_stderr: false,
            pre_exec: None,
        }
    }

    /// Runs `hook` in the forked child just before it execs ringmq, e.g. to install a
    /// seccomp filter the broker then runs under.
    ///
    /// # Safety
    /// The contract of `std::os::unix::process::CommandExt::pre_exec`: `hook` runs in
    /// the child of a multi-threaded process, so it may only make async-signal-safe
    /// calls (no allocation, no locks).
    pub unsafe fn pre_exec(mut self, hook: fn() -> std::io::Result<()>) -> Launch {
        self.pre_exec = Some(hook);
        self
    }

    /// Sets `key=value` in the broker's environment.
    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.to_string(), Some(value.to_string())));
        self
    }

    /// Removes `key` from the broker's environment.
    pub fn env_remove(mut self, key: &str) -> Launch {
        self.env.push((key.to_string(), None));
        self
    }

    /// How long the broker gets to print its listening address.
    pub fn startup_timeout(mut self, timeout: Duration) -> Launch {
        self.startup_timeout = timeout;
        self
    }

    /// Copies every broker stderr line to the test's stderr as `[ringmq] LINE`.
    pub fn echo_stderr(mut self) -> Launch {
        self.echo_stderr = true;
        self
    }

    pub fn spawn(self) -> Broker {
        Broker::spawn_launch(self)
    }
}

impl Broker {
    /// Starts `ringmq --listen 127.0.0.1:0 ARGS...`, or returns the external broker named
    /// by `RINGMQ_TEST_ADDR` (ARGS are then ignored: that broker has its own config).
    pub fn start(args: &[&str]) -> Broker {
        if let Ok(addr) = std::env::var("RINGMQ_TEST_ADDR") {
            return Broker::external(addr);
        }
        Broker::spawn(args)
    }

    /// The usual broker for conformance tests: two shards so that client ids and topics
    /// spread across shards and cross-shard fan-out is exercised.
    pub fn two_shards() -> Broker {
        Broker::start(&["--shards", "2"])
    }

    /// Like [`Broker::start`] but with `--config tests/profiles/NAME`; an external broker
    /// for profile tests is named by `RINGMQ_TEST_PROFILE_ADDR` (it must be configured
    /// equivalently, e.g. `tests/profiles/mosquitto-interop.conf`).
    pub fn with_profile(name: &str, extra: &[&str]) -> Broker {
        if let Ok(addr) = std::env::var("RINGMQ_TEST_PROFILE_ADDR") {
            return Broker::external(addr);
        }
        let path = profile_path(name);
        let path = path.to_str().expect("profile path is UTF-8").to_string();
        let mut args: Vec<&str> = vec!["--config", &path];
        args.extend_from_slice(extra);
        Broker::spawn(&args)
    }

    fn external(addr: String) -> Broker {
        Broker {
            child: None,
            addr,
            stderr_tail: Arc::new(Mutex::new(Vec::new())),
            startup_lines: Vec::new(),
        }
    }

    fn spawn(args: &[&str]) -> Broker {
        Launch::new(args).spawn()
    }

    fn spawn_launch(launch: Launch) -> Broker {
        let Launch {
            args,
            env,
            startup_timeout,
            echo_stderr,
            pre_exec,
        } = launch;
        let bin = env!("CARGO_BIN_EXE_ringmq");
        let mut cmd = Command::new(bin);
        cmd.arg("--listen").arg("127.0.0.1:0");
        // Tests run brokers side by side: each gets its own HTTP port unless it names one.
        if !args.iter().any(|a| a.starts_with("--http-listen")) {
            cmd.arg("--http-listen").arg("127.0.0.1:0");
        }
        cmd.args(&args);
        // A test that names its backend keeps it; the others follow RINGMQ_TEST_IO.
        let names_io = args.iter().any(|a| a == "--io" || a.starts_with("--io="));
        let forced_io = if names_io { None } else { test_io() };
        if let Some(io) = forced_io {
            cmd.arg("--io").arg(io.flag);
        }
        // The broker keys its placement hash at random unless told: tests that place
        // clients on chosen shards ([`id_on_shard`]) need the key they search with.
        let names_seed = args.iter().any(|a| a.starts_with("--placement-seed"));
        if !names_seed {
            cmd.arg("--placement-seed")
                .arg(TEST_PLACEMENT_SEED.to_string());
        }
        for (key, value) in &env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(hook) = pre_exec {
            // SAFETY: the hook came through the unsafe `Launch::pre_exec`, whose caller
            // promised what `CommandExt::pre_exec` requires (async-signal-safe only).
            unsafe { cmd.pre_exec(hook) };
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {bin}: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let tail = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<(String, Vec<String>)>();
        let tail_w = Arc::clone(&tail);
        // Keep draining stderr for the broker's whole life so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut startup = Some(Vec::new());
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if echo_stderr {
                    eprintln!("[ringmq] {line}");
                }
                if let Some(lines) = startup.as_mut() {
                    lines.push(line.clone());
                    if let Some(addr) = parse_listening(&line) {
                        let lines = startup.take().unwrap_or_default();
                        let _ = tx.send((addr, lines));
                    }
                }
                let mut t = tail_w.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() >= 200 {
                    t.remove(0);
                }
                t.push(line);
            }
        });
        let deadline = Instant::now() + startup_timeout;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((addr, startup_lines)) => {
                    if let Some(io) = forced_io {
                        let line = startup_lines.last().map(String::as_str).unwrap_or("");
                        let backend = line
                            .split_once(" (")
                            .and_then(|(_, tail)| tail.split(',').next());
                        if backend != Some(io.backend) {
                            // No `Broker` owns the child yet: stop it before failing.
                            let _ = child.kill();
                            let _ = child.wait();
                            panic!(
                                "RINGMQ_TEST_IO={}: ringmq {args:?} did not run on {}: {line:?}",
                                io.flag, io.backend
                            );
                        }
                    }
                    return Broker {
                        child: Some(child),
                        addr,
                        stderr_tail: tail,
                        startup_lines,
                    };
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        std::thread::sleep(Duration::from_millis(100));
                        panic!(
                            "ringmq {args:?} exited with {status} before listening; stderr:\n{}",
                            tail.lock().unwrap().join("\n")
                        );
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "ringmq {args:?} printed no 'listening on' line within {startup_timeout:?}; stderr:\n{}",
                            tail.lock().unwrap().join("\n")
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait();
                    panic!(
                        "ringmq {args:?} closed stderr before listening ({status:?}); stderr:\n{}",
                        tail.lock().unwrap().join("\n")
                    );
                }
            }
        }
    }

    /// `host:port` of the broker.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn host(&self) -> &str {
        self.addr
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or("127.0.0.1")
    }

    pub fn port(&self) -> u16 {
        self.addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("broker address has a port")
    }

    pub fn is_spawned(&self) -> bool {
        self.child.is_some()
    }

    /// Last lines the broker wrote to stderr (for failure messages).
    pub fn stderr_tail(&self) -> String {
        self.stderr_tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Every stderr line up to and including the `listening on` line (empty for an
    /// external broker).
    pub fn startup_lines(&self) -> &[String] {
        &self.startup_lines
    }

    /// The HTTP listener's address from the `ringmq http on ADDR` start-up line;
    /// `None` when the broker runs without one.
    pub fn http_addr(&self) -> Option<String> {
        self.startup_lines.iter().find_map(|l| {
            let rest = l.strip_prefix("ringmq http on ")?;
            Some(rest.split(' ').next()?.to_string())
        })
    }

    /// The `listening on` line the broker printed at startup.
    pub fn listening_line(&self) -> &str {
        self.startup_lines
            .last()
            .map(String::as_str)
            .expect("a spawned broker printed a listening line")
    }

    /// PID of the spawned broker process.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("the broker is a live spawned process")
            .id()
    }

    /// Panics (with the stderr tail) if the spawned broker has exited.
    #[track_caller]
    pub fn assert_alive(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("broker exited: {status}; stderr: {}", self.stderr_tail());
            }
        }
    }

    /// Sends SIGTERM and waits (bounded) for exit; returns the exit status, or `None`
    /// if the broker is external or did not exit within `within`.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        // Signalling our own unreaped child cannot fail; not checked while unwinding
        // (this also runs from Drop).
        if !std::thread::panicking() {
            assert_eq!(rc, 0, "kill(SIGTERM) on ringmq pid {pid}");
        }
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// Waits up to `within` for `child` to exit; if it has not, kills it (by its own PID)
/// and reaps it, and returns `None`.
pub fn wait_or_kill(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on a spawned child") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.child.is_some() && self.terminate(Duration::from_secs(3)).is_none() {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// An IO backend forced on spawned brokers by `RINGMQ_TEST_IO`.
#[derive(Debug, Clone, Copy)]
pub struct TestIo {
    /// The `--io` value.
    pub flag: &'static str,
    /// The backend name the `listening on` line carries.
    pub backend: &'static str,
}

/// `RINGMQ_TEST_IO=uring|epoll` adds `--io VALUE` to every spawned broker whose
/// arguments do not name a backend, so a whole suite can run on either backend.
/// Unset or empty: the broker picks (auto). Any other value panics, so a typo cannot
/// quietly run the suite on the default backend.
pub fn test_io() -> Option<TestIo> {
    let value = std::env::var("RINGMQ_TEST_IO").ok()?;
    match value.as_str() {
        "" => None,
        "uring" => Some(TestIo {
            flag: "uring",
            backend: "io_uring",
        }),
        "epoll" => Some(TestIo {
            flag: "epoll",
            backend: "epoll",
        }),
        other => panic!("RINGMQ_TEST_IO={other:?}: expected `uring` or `epoll`"),
    }
}

/// Extracts `ip:port` from a line containing `listening on <ip:port>`.
pub fn parse_listening(line: &str) -> Option<String> {
    let idx = line.find("listening on ")?;
    let rest = &line[idx + "listening on ".len()..];
    let token: String = rest
        .trim_start()
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ',' && *c != ')' && *c != '"')
        .collect();
    let token = token.trim_end_matches(['.', ';']).to_string();
    token.to_socket_addrs().ok()?.next()?;
    Some(token)
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn profile_path(name: &str) -> PathBuf {
    repo_root().join("tests").join("profiles").join(name)
}

// ---------------------------------------------------------------------------------------
// Unique names
// ---------------------------------------------------------------------------------------

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique within this process and, practically, across runs against one external
/// broker (retained messages and persistent sessions outlive a run there). At most 18
/// characters for a tag of up to 6, so client ids stay within 3.1.1's 23.
pub fn uniq(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).wrapping_mul(2_654_435_761))
        .unwrap_or(0);
    let mix = nanos ^ std::process::id().wrapping_mul(40_503);
    format!(
        "{}{:07x}{:03}",
        &tag[..tag.len().min(6)],
        mix & 0x0fff_ffff,
        n % 1000
    )
}

// ---------------------------------------------------------------------------------------
// Hex
// ---------------------------------------------------------------------------------------

/// Parses "10 0c 00 04" (spaces optional) into bytes.
pub fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits in {s:?}");
    digits
        .chunks(2)
        .map(|p| {
            let s = std::str::from_utf8(p).expect("ascii");
            u8::from_str_radix(s, 16).unwrap_or_else(|_| panic!("bad hex {s:?}"))
        })
        .collect()
}

pub fn to_hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------------------

/// One complete MQTT frame as it came off the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    pub first: u8,
    /// Everything after the remaining-length field.
    pub body: Vec<u8>,
    /// The whole frame, fixed header included.
    pub raw: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Frame[{}]", to_hex(&self.raw))
    }
}

impl Frame {
    pub fn ptype(&self) -> u8 {
        self.first >> 4
    }
    pub fn flags(&self) -> u8 {
        self.first & 0x0f
    }
    pub fn u16_at(&self, i: usize) -> u16 {
        u16::from_be_bytes([self.body[i], self.body[i + 1]])
    }
}

/// Decodes a variable byte integer at the front of `b`: (value, bytes used).
pub fn read_varint(b: &[u8]) -> Option<(u32, usize)> {
    let mut v: u32 = 0;
    for i in 0..4 {
        let byte = *b.get(i)?;
        v |= u32::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// Raw client
// ---------------------------------------------------------------------------------------

pub enum ReadOutcome {
    Frame(Frame),
    Closed,
    Timeout,
}

/// Blocking raw MQTT client. Every read is bounded by a timeout.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Frames read ahead (e.g. a retained PUBLISH that overtook its SUBACK).
    pending: std::collections::VecDeque<Frame>,
    pub version: ProtocolVersion,
    name: String,
}

impl RawClient {
    /// Opens a TCP connection; nothing is sent.
    pub fn connect(addr: &str) -> RawClient {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_write_timeout(Some(RECV_TIMEOUT))
            .expect("write timeout");
        RawClient {
            stream,
            buf: Vec::new(),
            pending: Default::default(),
            version: V311,
            name: String::new(),
        }
    }

    /// Connects and completes a 3.1.1 CONNECT with clean session 1, keepalive 60.
    pub fn connect_v311(addr: &str, client_id: &str) -> RawClient {
        let mut c = RawClient::connect(addr);
        c.name = client_id.to_string();
        c.send(&pkt::Connect::v311(client_id).bytes());
        c.expect_hex("20 02 00 00");
        c
    }

    /// Connects with a 3.1.1 CONNECT of the caller's making and returns (client, CONNACK frame).
    pub fn connect_with(addr: &str, connect: &pkt::Connect) -> (RawClient, Frame) {
        let mut c = RawClient::connect(addr);
        c.version = connect.version;
        c.name = String::from_utf8_lossy(&connect.client_id).into_owned();
        c.send(&connect.bytes());
        let f = c.recv_frame();
        assert_eq!(f.ptype(), 2, "{}: expected CONNACK, got {f:?}", c.name);
        (c, f)
    }

    /// Connects with an MQTT 5 CONNECT (clean start 1, keepalive 60, no properties) and
    /// checks for a successful CONNACK; returns the parsed CONNACK.
    pub fn connect_v5(addr: &str, client_id: &str) -> (RawClient, ConnAckV5) {
        RawClient::connect_v5_with(addr, &pkt::Connect::v5(client_id))
    }

    pub fn connect_v5_with(addr: &str, connect: &pkt::Connect) -> (RawClient, ConnAckV5) {
        let (c, f) = RawClient::connect_with(addr, connect);
        let ack = ConnAckV5::parse(&f);
        assert_eq!(ack.code, 0, "{}: CONNACK refused: {f:?}", c.name);
        (c, ack)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn send(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes) {
            panic!("{}: write of {} failed: {e}", self.name, to_hex(bytes));
        }
    }

    /// Writes and ignores errors (used when the broker may already have closed).
    pub fn send_lenient(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    pub fn send_hex(&mut self, h: &str) {
        self.send(&hex(h));
    }

    /// Encodes with the codec under test and sends.
    pub fn send_packet(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        encode_packet(packet, self.version, &mut out);
        self.send(&out);
    }

    /// Reads one frame or observes close/timeout, waiting at most `timeout`.
    pub fn read_frame_within(&mut self, timeout: Duration) -> ReadOutcome {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.take_frame() {
                return ReadOutcome::Frame(f);
            }
            let now = Instant::now();
            if now >= deadline {
                return ReadOutcome::Timeout;
            }
            let left = (deadline - now).max(Duration::from_millis(1));
            self.stream
                .set_read_timeout(Some(left))
                .expect("read timeout");
            let mut tmp = [0u8; 8192];
            match self.stream.read(&mut tmp) {
                Ok(0) => {
                    if self.buf.is_empty() {
                        return ReadOutcome::Closed;
                    }
                    panic!(
                        "{}: connection closed mid-frame with {} buffered: {}",
                        self.name,
                        self.buf.len(),
                        to_hex(&self.buf)
                    );
                }
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return ReadOutcome::Timeout
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset
                            | ErrorKind::ConnectionAborted
                            | ErrorKind::BrokenPipe
                    ) =>
                {
                    return ReadOutcome::Closed
                }
                Err(e) => panic!("{}: read error {e}", self.name),
            }
        }
    }

    fn take_frame(&mut self) -> Option<Frame> {
        if let Some(f) = self.pending.pop_front() {
            return Some(f);
        }
        if self.buf.len() < 2 {
            return None;
        }
        let (rem, n) = match read_varint(&self.buf[1..]) {
            Some(x) => x,
            None => {
                assert!(
                    self.buf.len() < 5,
                    "{}: broker sent a malformed remaining length: {}",
                    self.name,
                    to_hex(&self.buf)
                );
                return None;
            }
        };
        let total = 1 + n + rem as usize;
        if self.buf.len() < total {
            return None;
        }
        let raw: Vec<u8> = self.buf.drain(..total).collect();
        Some(Frame {
            first: raw[0],
            body: raw[1 + n..].to_vec(),
            raw,
        })
    }

    /// Next frame; fails the test on close or after [`RECV_TIMEOUT`].
    pub fn recv_frame(&mut self) -> Frame {
        match self.read_frame_within(RECV_TIMEOUT) {
            ReadOutcome::Frame(f) => f,
            ReadOutcome::Closed => panic!(
                "{}: connection closed while a packet was expected",
                self.name
            ),
            ReadOutcome::Timeout => panic!("{}: no packet within {RECV_TIMEOUT:?}", self.name),
        }
    }

    /// Next frame, decoded with the codec under test for `version`.
    pub fn recv_packet(&mut self, version: ProtocolVersion) -> Packet {
        let f = self.recv_frame();
        let mut b = BytesMut::from(&f.raw[..]);
        match decode_packet(&mut b, version, usize::MAX >> 1) {
            Ok(Some(p)) => p,
            Ok(None) => panic!("{}: codec says frame {f:?} is incomplete", self.name),
            Err(e) => panic!("{}: codec rejects frame {f:?}: {e}", self.name),
        }
    }

    /// The next frame must be exactly these bytes.
    pub fn expect_hex(&mut self, h: &str) {
        let want = hex(h);
        self.expect_bytes(&want);
    }

    pub fn expect_bytes(&mut self, want: &[u8]) {
        let f = self.recv_frame();
        assert_eq!(
            to_hex(&f.raw),
            to_hex(want),
            "{}: expected frame {} got {}",
            self.name,
            to_hex(want),
            to_hex(&f.raw)
        );
    }

    /// The broker must close the connection without sending anything (more).
    pub fn expect_closed(&mut self) {
        self.expect_closed_within(RECV_TIMEOUT)
    }

    pub fn expect_closed_within(&mut self, timeout: Duration) {
        match self.read_frame_within(timeout) {
            ReadOutcome::Closed => {}
            ReadOutcome::Frame(f) => panic!("{}: expected close, got packet {f:?}", self.name),
            ReadOutcome::Timeout => {
                panic!("{}: connection still open after {timeout:?}", self.name)
            }
        }
    }

    /// MQTT 5 server-side error after CONNACK: a DISCONNECT with one of `codes`, then close.
    pub fn expect_disconnect_v5(&mut self, codes: &[u8]) {
        let f = self.recv_frame();
        assert_eq!(
            f.ptype(),
            14,
            "{}: expected DISCONNECT {codes:02x?}, got {f:?}",
            self.name
        );
        assert_eq!(f.flags(), 0, "{}: DISCONNECT flags {f:?}", self.name);
        // Remaining length 0 means reason 0x00.
        let rc = f.body.first().copied().unwrap_or(0);
        assert!(
            codes.contains(&rc),
            "{}: DISCONNECT reason {rc:#04x}, expected one of {codes:02x?}: {f:?}",
            self.name
        );
        self.expect_closed();
    }

    /// MQTT 5 error during CONNECT: the server MAY send a CONNACK with a reason code
    /// (then it must be one of `codes`), and MUST close.
    pub fn expect_connack_error_or_close_v5(&mut self, codes: &[u8]) {
        match self.read_frame_within(RECV_TIMEOUT) {
            ReadOutcome::Closed => {}
            ReadOutcome::Timeout => {
                panic!("{}: connection still open after a bad CONNECT", self.name)
            }
            ReadOutcome::Frame(f) => {
                assert_eq!(
                    f.ptype(),
                    2,
                    "{}: expected CONNACK or close, got {f:?}",
                    self.name
                );
                let ack = ConnAckV5::parse(&f);
                assert!(
                    codes.contains(&ack.code),
                    "{}: CONNACK reason {:#04x}, expected one of {codes:02x?}: {f:?}",
                    self.name,
                    ack.code
                );
                assert!(
                    !ack.session_present,
                    "MQTT-3.2.2-6: session present must be 0 on refusal"
                );
                self.expect_closed();
            }
        }
    }

    /// Nothing may arrive for [`QUIET`] (the connection must also stay open).
    pub fn expect_silence(&mut self) {
        self.expect_silence_for(QUIET)
    }

    pub fn expect_silence_for(&mut self, d: Duration) {
        match self.read_frame_within(d) {
            ReadOutcome::Timeout => {}
            ReadOutcome::Frame(f) => panic!("{}: expected nothing, got {f:?}", self.name),
            ReadOutcome::Closed => {
                panic!("{}: expected nothing, but the connection closed", self.name)
            }
        }
    }

    /// PINGREQ -> PINGRESP round trip: proves the connection is alive and that every
    /// packet the broker queued before the PINGRESP has been read.
    pub fn ping(&mut self) {
        self.send_hex("c0 00");
        self.expect_hex("d0 00");
    }

    /// Like [`RawClient::ping`], but returns the frames that arrived before the PINGRESP.
    pub fn ping_collect(&mut self) -> Vec<Frame> {
        self.send_hex("c0 00");
        let mut out = Vec::new();
        loop {
            let f = self.recv_frame();
            if f.raw == [0xd0, 0x00] {
                return out;
            }
            out.push(f);
        }
    }

    /// Sends a normal DISCONNECT and waits for the broker to close.
    pub fn disconnect(mut self) {
        // Same two bytes in 3.1.1 and 5.0 (reason 0x00, no properties).
        self.send_hex("e0 00");
        self.expect_closed();
    }

    /// Drops the TCP connection without DISCONNECT (will messages fire).
    pub fn drop_connection(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    // --- packet-level helpers (raw builders) ---

    pub fn subscribe(&mut self, pid: u16, filter: &str, opts: u8) -> Frame {
        let v = self.version;
        self.send(&pkt::subscribe(v, pid, &[], &[(filter, opts)]));
        self.recv_suback()
    }

    /// Next SUBACK. PUBLISHes that arrive first (the spec does not order retained
    /// messages against the SUBACK) are kept for later `recv_*` calls.
    pub fn recv_suback(&mut self) -> Frame {
        let f = self.recv_frame_skipping_publish();
        assert_eq!(f.ptype(), 9, "{}: expected SUBACK, got {f:?}", self.name);
        f
    }

    /// Next frame that is not a PUBLISH; PUBLISHes that arrive before it (acks and
    /// deliveries interleave freely) are kept, in order, for later `recv_*` calls.
    pub fn recv_frame_skipping_publish(&mut self) -> Frame {
        let mut early = Vec::new();
        // Frames already read ahead are not re-examined: they are PUBLISHes kept earlier.
        let mut kept: Vec<Frame> = self.pending.drain(..).collect();
        let f = loop {
            let f = self.recv_frame();
            if f.ptype() != 3 {
                break f;
            }
            early.push(f);
        };
        kept.extend(early);
        self.pending.extend(kept);
        f
    }

    /// Subscribes one filter and asserts the granted code.
    pub fn subscribe_ok(&mut self, pid: u16, filter: &str, opts: u8) {
        let f = self.subscribe(pid, filter, opts);
        let ack = SubAck::parse(self.version, &f);
        assert_eq!(ack.pid, pid);
        assert_eq!(
            ack.codes,
            vec![opts & 0x03],
            "{}: SUBACK for {filter}: {f:?}",
            self.name
        );
    }

    pub fn publish(&mut self, topic: &str, qos: u8, retain: bool, pid: u16, payload: &[u8]) {
        let v = self.version;
        self.send(&pkt::publish(
            v,
            topic,
            qos,
            retain,
            false,
            pid,
            &[],
            payload,
        ));
    }

    /// Publishes at QoS 0/1/2 and completes the flow from the publisher side
    /// (PUBACK, or PUBREC/PUBREL/PUBCOMP).
    pub fn publish_complete(
        &mut self,
        topic: &str,
        qos: u8,
        retain: bool,
        pid: u16,
        payload: &[u8],
    ) {
        self.publish(topic, qos, retain, pid, payload);
        self.complete_publish_flow(qos, pid);
    }

    pub fn complete_publish_flow(&mut self, qos: u8, pid: u16) {
        let v5 = self.version.is_v5();
        match qos {
            0 => {}
            1 => self.expect_ack(4, pid, v5),
            2 => {
                self.expect_ack(5, pid, v5);
                self.send(&pkt::ack(6, pid));
                self.expect_ack(7, pid, v5);
            }
            _ => unreachable!(),
        }
    }

    /// PUBACK/PUBREC/PUBREL/PUBCOMP `ptype` for `pid` with success. In 5.0 the reason
    /// code and properties may be omitted when the reason is 0x00 (3.4.2.1), so all
    /// three forms are accepted there.
    pub fn expect_ack(&mut self, ptype: u8, pid: u16, v5: bool) {
        let f = self.recv_frame_skipping_publish();
        let flags = if ptype == 6 { 2 } else { 0 };
        assert_eq!(
            f.first,
            (ptype << 4) | flags,
            "{}: expected ack type {ptype}, got {f:?}",
            self.name
        );
        assert_eq!(
            f.u16_at(0),
            pid,
            "{}: ack for wrong packet id: {f:?}",
            self.name
        );
        if v5 {
            let ack = PubAckV5::parse(&f);
            // 0x10 "No matching subscribers" is a success code for PUBACK and PUBREC.
            let ok = ack.code == 0 || (ack.code == 0x10 && (ptype == 4 || ptype == 5));
            assert!(ok, "{}: ack reason {:#04x}: {f:?}", self.name, ack.code);
        } else {
            assert_eq!(
                f.body.len(),
                2,
                "{}: 3.1.1 ack must be 4 bytes: {f:?}",
                self.name
            );
        }
    }

    /// Receives one PUBLISH and parses it (codec-independent).
    pub fn recv_publish(&mut self) -> PublishMsg {
        let f = self.recv_frame();
        assert_eq!(f.ptype(), 3, "{}: expected PUBLISH, got {f:?}", self.name);
        PublishMsg::parse(self.version, &f)
    }

    /// Receives one PUBLISH and acknowledges it as QoS requires (QoS 2: PUBREC, then
    /// expects PUBREL and sends PUBCOMP).
    pub fn recv_publish_ack(&mut self) -> PublishMsg {
        let m = self.recv_publish();
        self.ack_received(&m);
        m
    }

    pub fn ack_received(&mut self, m: &PublishMsg) {
        let v5 = self.version.is_v5();
        match m.qos {
            0 => {}
            1 => self.send(&pkt::ack(4, m.pid)),
            2 => {
                self.send(&pkt::ack(5, m.pid));
                self.expect_ack(6, m.pid, v5);
                self.send(&pkt::ack(7, m.pid));
            }
            q => panic!("{}: received PUBLISH with QoS {q}", self.name),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parsed server packets (codec-independent, so tests do not rely on the code under test)
// ---------------------------------------------------------------------------------------

/// A property value as read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PropVal {
    Byte(u8),
    Two(u16),
    Four(u32),
    Var(u32),
    Str(String),
    Bin(Vec<u8>),
    Pair(String, String),
}

/// Properties in wire order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Props(pub Vec<(u8, PropVal)>);

impl Props {
    /// Parses a property block (after its length). Panics on anything malformed:
    /// the broker must never send such a thing.
    pub fn parse(b: &[u8]) -> Props {
        let mut out = Vec::new();
        let mut i = 0;
        let str_at = |i: usize| -> (String, usize) {
            let n = u16::from_be_bytes([b[i], b[i + 1]]) as usize;
            let s = std::str::from_utf8(&b[i + 2..i + 2 + n]).expect("property string is UTF-8");
            (s.to_string(), 2 + n)
        };
        while i < b.len() {
            let (id, n) = read_varint(&b[i..]).expect("property id");
            i += n;
            let id = id as u8;
            let v = match id {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => {
                    i += 1;
                    PropVal::Byte(b[i - 1])
                }
                0x13 | 0x21 | 0x22 | 0x23 => {
                    i += 2;
                    PropVal::Two(u16::from_be_bytes([b[i - 2], b[i - 1]]))
                }
                0x02 | 0x11 | 0x18 | 0x27 => {
                    i += 4;
                    PropVal::Four(u32::from_be_bytes([b[i - 4], b[i - 3], b[i - 2], b[i - 1]]))
                }
                0x0B => {
                    let (v, n) = read_varint(&b[i..]).expect("varint property");
                    i += n;
                    PropVal::Var(v)
                }
                0x03 | 0x08 | 0x12 | 0x15 | 0x1A | 0x1C | 0x1F => {
                    let (s, n) = str_at(i);
                    i += n;
                    PropVal::Str(s)
                }
                0x09 | 0x16 => {
                    let n = u16::from_be_bytes([b[i], b[i + 1]]) as usize;
                    let v = b[i + 2..i + 2 + n].to_vec();
                    i += 2 + n;
                    PropVal::Bin(v)
                }
                0x26 => {
                    let (k, n) = str_at(i);
                    i += n;
                    let (v, n) = str_at(i);
                    i += n;
                    PropVal::Pair(k, v)
                }
                other => panic!(
                    "broker sent unknown property id {other:#04x} in {}",
                    to_hex(b)
                ),
            };
            out.push((id, v));
        }
        assert_eq!(i, b.len(), "property block overran: {}", to_hex(b));
        Props(out)
    }

    pub fn get(&self, id: u8) -> Option<&PropVal> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }

    pub fn all(&self, id: u8) -> Vec<&PropVal> {
        self.0
            .iter()
            .filter(|(i, _)| *i == id)
            .map(|(_, v)| v)
            .collect()
    }

    pub fn byte(&self, id: u8) -> Option<u8> {
        match self.get(id) {
            Some(PropVal::Byte(v)) => Some(*v),
            _ => None,
        }
    }
    pub fn two(&self, id: u8) -> Option<u16> {
        match self.get(id) {
            Some(PropVal::Two(v)) => Some(*v),
            _ => None,
        }
    }
    pub fn four(&self, id: u8) -> Option<u32> {
        match self.get(id) {
            Some(PropVal::Four(v)) => Some(*v),
            _ => None,
        }
    }
    pub fn str(&self, id: u8) -> Option<&str> {
        match self.get(id) {
            Some(PropVal::Str(v)) => Some(v),
            _ => None,
        }
    }
    pub fn bin(&self, id: u8) -> Option<&[u8]> {
        match self.get(id) {
            Some(PropVal::Bin(v)) => Some(v),
            _ => None,
        }
    }
    pub fn sub_ids(&self) -> Vec<u32> {
        self.all(0x0B)
            .into_iter()
            .map(|v| match v {
                PropVal::Var(x) => *x,
                _ => unreachable!(),
            })
            .collect()
    }
    pub fn user_props(&self) -> Vec<(String, String)> {
        self.all(0x26)
            .into_iter()
            .map(|v| match v {
                PropVal::Pair(k, v) => (k.clone(), v.clone()),
                _ => unreachable!(),
            })
            .collect()
    }
}

/// Reads a property block (length + properties) at `b[i..]`: (props, bytes used).
pub fn props_at(b: &[u8], i: usize) -> (Props, usize) {
    let (len, n) = read_varint(&b[i..]).expect("property length");
    let end = i + n + len as usize;
    assert!(
        end <= b.len(),
        "property length {len} overruns packet {}",
        to_hex(b)
    );
    (Props::parse(&b[i + n..end]), n + len as usize)
}

#[derive(Debug, Clone)]
pub struct ConnAckV5 {
    pub session_present: bool,
    pub code: u8,
    pub props: Props,
}

impl ConnAckV5 {
    pub fn parse(f: &Frame) -> ConnAckV5 {
        assert_eq!(f.first, 0x20, "CONNACK first byte: {f:?}");
        assert!(f.body.len() >= 2, "CONNACK too short: {f:?}");
        assert_eq!(
            f.body[0] & 0xfe,
            0,
            "MQTT-3.2.2-1: CONNACK reserved flags: {f:?}"
        );
        // A 3.x-style 2-byte CONNACK (e.g. to a CONNECT whose version is unknown) has no properties.
        let props = if f.body.len() > 2 {
            props_at(&f.body, 2).0
        } else {
            Props::default()
        };
        ConnAckV5 {
            session_present: f.body[0] & 1 == 1,
            code: f.body[1],
            props,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PubAckV5 {
    pub pid: u16,
    pub code: u8,
    pub props: Props,
}

impl PubAckV5 {
    pub fn parse(f: &Frame) -> PubAckV5 {
        let pid = f.u16_at(0);
        let code = f.body.get(2).copied().unwrap_or(0);
        let props = if f.body.len() > 3 {
            props_at(&f.body, 3).0
        } else {
            Props::default()
        };
        PubAckV5 { pid, code, props }
    }
}

/// SUBACK or UNSUBACK.
#[derive(Debug, Clone)]
pub struct SubAck {
    pub pid: u16,
    pub codes: Vec<u8>,
    pub props: Props,
}

impl SubAck {
    pub fn parse(version: ProtocolVersion, f: &Frame) -> SubAck {
        let pid = f.u16_at(0);
        if version.is_v5() {
            let (props, n) = props_at(&f.body, 2);
            SubAck {
                pid,
                codes: f.body[2 + n..].to_vec(),
                props,
            }
        } else {
            SubAck {
                pid,
                codes: f.body[2..].to_vec(),
                props: Props::default(),
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct PublishMsg {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    pub pid: u16,
    pub props: Props,
    pub payload: Vec<u8>,
    pub raw: Vec<u8>,
}

impl PublishMsg {
    pub fn parse(version: ProtocolVersion, f: &Frame) -> PublishMsg {
        let b = &f.body;
        let tl = u16::from_be_bytes([b[0], b[1]]) as usize;
        let topic = std::str::from_utf8(&b[2..2 + tl])
            .expect("topic is UTF-8")
            .to_string();
        let mut i = 2 + tl;
        let qos = (f.first >> 1) & 3;
        let pid = if qos > 0 {
            i += 2;
            u16::from_be_bytes([b[i - 2], b[i - 1]])
        } else {
            0
        };
        let props = if version.is_v5() {
            let (p, n) = props_at(b, i);
            i += n;
            p
        } else {
            Props::default()
        };
        PublishMsg {
            dup: f.first & 0x08 != 0,
            qos,
            retain: f.first & 1 == 1,
            topic,
            pid,
            props,
            payload: b[i..].to_vec(),
            raw: f.raw.clone(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Raw packet builders
// ---------------------------------------------------------------------------------------

pub mod pkt {
    use super::ProtocolVersion;

    pub fn varint(mut v: u32, out: &mut Vec<u8>) {
        loop {
            let mut b = (v & 0x7f) as u8;
            v >>= 7;
            if v > 0 {
                b |= 0x80;
            }
            out.push(b);
            if v == 0 {
                break;
            }
        }
    }

    pub fn str(s: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }

    /// Fixed header + body.
    pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        varint(body.len() as u32, &mut out);
        out.extend_from_slice(body);
        out
    }

    /// Property block: length + concatenated properties.
    pub fn props_block(props: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(props.len() as u32, &mut out);
        out.extend_from_slice(props);
        out
    }

    // Single properties, to concatenate.
    pub fn p_u8(id: u8, v: u8) -> Vec<u8> {
        vec![id, v]
    }
    pub fn p_u16(id: u8, v: u16) -> Vec<u8> {
        let mut o = vec![id];
        o.extend_from_slice(&v.to_be_bytes());
        o
    }
    pub fn p_u32(id: u8, v: u32) -> Vec<u8> {
        let mut o = vec![id];
        o.extend_from_slice(&v.to_be_bytes());
        o
    }
    pub fn p_var(id: u8, v: u32) -> Vec<u8> {
        let mut o = vec![id];
        varint(v, &mut o);
        o
    }
    pub fn p_str(id: u8, s: &str) -> Vec<u8> {
        let mut o = vec![id];
        str(s.as_bytes(), &mut o);
        o
    }
    pub fn p_bin(id: u8, s: &[u8]) -> Vec<u8> {
        let mut o = vec![id];
        str(s, &mut o);
        o
    }
    pub fn p_pair(k: &str, v: &str) -> Vec<u8> {
        let mut o = vec![0x26];
        str(k.as_bytes(), &mut o);
        str(v.as_bytes(), &mut o);
        o
    }

    #[derive(Clone)]
    pub struct Will {
        pub topic: Vec<u8>,
        pub payload: Vec<u8>,
        pub qos: u8,
        pub retain: bool,
        /// MQTT 5 will properties, concatenated (no length).
        pub props: Vec<u8>,
    }

    impl Will {
        pub fn new(topic: &str, payload: &[u8]) -> Will {
            Will {
                topic: topic.as_bytes().to_vec(),
                payload: payload.to_vec(),
                qos: 0,
                retain: false,
                props: Vec::new(),
            }
        }
    }

    /// CONNECT builder. `bytes()` encodes exactly what the fields say, so tests can make
    /// it wrong on purpose (`protocol_name`, `level`, `reserved_flag`).
    #[derive(Clone)]
    pub struct Connect {
        pub version: ProtocolVersion,
        pub protocol_name: Vec<u8>,
        pub level: u8,
        pub clean: bool,
        pub reserved_flag: bool,
        pub keepalive_s: u16,
        pub client_id: Vec<u8>,
        pub will: Option<Will>,
        /// Will QoS / retain bits set without the will flag (a malformed CONNECT).
        pub stray_will_bits: u8,
        pub username: Option<Vec<u8>>,
        pub password: Option<Vec<u8>>,
        /// MQTT 5 CONNECT properties, concatenated (no length).
        pub props: Vec<u8>,
    }

    impl Connect {
        pub fn v311(client_id: &str) -> Connect {
            Connect {
                version: ProtocolVersion::V311,
                protocol_name: b"MQTT".to_vec(),
                level: 4,
                clean: true,
                reserved_flag: false,
                keepalive_s: 60,
                client_id: client_id.as_bytes().to_vec(),
                will: None,
                stray_will_bits: 0,
                username: None,
                password: None,
                props: Vec::new(),
            }
        }

        pub fn v5(client_id: &str) -> Connect {
            Connect {
                version: ProtocolVersion::V5,
                level: 5,
                ..Connect::v311(client_id)
            }
        }

        pub fn clean(mut self, clean: bool) -> Connect {
            self.clean = clean;
            self
        }
        pub fn keepalive(mut self, s: u16) -> Connect {
            self.keepalive_s = s;
            self
        }
        pub fn will(mut self, w: Will) -> Connect {
            self.will = Some(w);
            self
        }
        pub fn props(mut self, p: &[u8]) -> Connect {
            self.props.extend_from_slice(p);
            self
        }

        pub fn bytes(&self) -> Vec<u8> {
            let mut b = Vec::new();
            str(&self.protocol_name, &mut b);
            b.push(self.level);
            let mut flags = 0u8;
            if self.reserved_flag {
                flags |= 0x01;
            }
            if self.clean {
                flags |= 0x02;
            }
            if let Some(w) = &self.will {
                flags |= 0x04 | (w.qos << 3);
                if w.retain {
                    flags |= 0x20;
                }
            }
            flags |= self.stray_will_bits;
            if self.password.is_some() {
                flags |= 0x40;
            }
            if self.username.is_some() {
                flags |= 0x80;
            }
            b.push(flags);
            b.extend_from_slice(&self.keepalive_s.to_be_bytes());
            let v5 = self.level == 5;
            if v5 {
                b.extend_from_slice(&props_block(&self.props));
            }
            str(&self.client_id, &mut b);
            if let Some(w) = &self.will {
                if v5 {
                    b.extend_from_slice(&props_block(&w.props));
                }
                str(&w.topic, &mut b);
                str(&w.payload, &mut b);
            }
            if let Some(u) = &self.username {
                str(u, &mut b);
            }
            if let Some(p) = &self.password {
                str(p, &mut b);
            }
            frame(0x10, &b)
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn publish(
        v: ProtocolVersion,
        topic: &str,
        qos: u8,
        retain: bool,
        dup: bool,
        pid: u16,
        props: &[u8],
        payload: &[u8],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        str(topic.as_bytes(), &mut b);
        if qos > 0 {
            b.extend_from_slice(&pid.to_be_bytes());
        }
        if v.is_v5() {
            b.extend_from_slice(&props_block(props));
        }
        b.extend_from_slice(payload);
        let first = 0x30 | (u8::from(dup) << 3) | (qos << 1) | u8::from(retain);
        frame(first, &b)
    }

    /// PUBLISH bytes as the broker must forward them to a plain subscriber: no retain,
    /// no dup, no properties, with the broker's packet id `pid`.
    pub fn forwarded(
        v: ProtocolVersion,
        topic: &str,
        qos: u8,
        pid: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        publish(v, topic, qos, false, false, pid, &[], payload)
    }

    /// SUBSCRIBE with (filter, options byte) pairs.
    pub fn subscribe(
        v: ProtocolVersion,
        pid: u16,
        props: &[u8],
        filters: &[(&str, u8)],
    ) -> Vec<u8> {
        let mut b = pid.to_be_bytes().to_vec();
        if v.is_v5() {
            b.extend_from_slice(&props_block(props));
        }
        for (f, o) in filters {
            str(f.as_bytes(), &mut b);
            b.push(*o);
        }
        frame(0x82, &b)
    }

    pub fn unsubscribe(v: ProtocolVersion, pid: u16, props: &[u8], filters: &[&str]) -> Vec<u8> {
        let mut b = pid.to_be_bytes().to_vec();
        if v.is_v5() {
            b.extend_from_slice(&props_block(props));
        }
        for f in filters {
            str(f.as_bytes(), &mut b);
        }
        frame(0xa2, &b)
    }

    /// PUBACK(4)/PUBREC(5)/PUBREL(6)/PUBCOMP(7) with success, shortest form.
    pub fn ack(ptype: u8, pid: u16) -> Vec<u8> {
        let flags = if ptype == 6 { 2 } else { 0 };
        let mut b = vec![(ptype << 4) | flags, 2];
        b.extend_from_slice(&pid.to_be_bytes());
        b
    }

    /// MQTT 5 DISCONNECT with a reason code and properties.
    pub fn disconnect_v5(rc: u8, props: &[u8]) -> Vec<u8> {
        let mut b = vec![rc];
        b.extend_from_slice(&props_block(props));
        frame(0xe0, &b)
    }

    /// Subscription options byte (MQTT 5 3.8.3.1; 3.1.1 uses only the QoS bits).
    pub fn opts(qos: u8, no_local: bool, rap: bool, retain_handling: u8) -> u8 {
        qos | (u8::from(no_local) << 2) | (u8::from(rap) << 3) | (retain_handling << 4)
    }
}

// ---------------------------------------------------------------------------------------
// Bystander: proves a misbehaving client did not disturb anyone else
// ---------------------------------------------------------------------------------------

/// Two well-behaved clients (a subscriber and a publisher with different client ids, so
/// on a multi-shard broker they likely live on different shards) connected before a
/// bad client misbehaves; [`Bystander::check`] proves they still work afterwards.
pub struct Bystander {
    sub: RawClient,
    publ: RawClient,
    topic: String,
    next_pid: u16,
}

impl Bystander {
    pub fn new(addr: &str, version: ProtocolVersion) -> Bystander {
        let topic = format!("by/{}", uniq("t"));
        let (mut sub, mut publ) = if version.is_v5() {
            (
                RawClient::connect_v5(addr, &uniq("bys")).0,
                RawClient::connect_v5(addr, &uniq("byp")).0,
            )
        } else {
            (
                RawClient::connect_v311(addr, &uniq("bys")),
                RawClient::connect_v311(addr, &uniq("byp")),
            )
        };
        sub.version = version;
        publ.version = version;
        sub.subscribe_ok(1, &topic, 1);
        Bystander {
            sub,
            publ,
            topic,
            next_pid: 1,
        }
    }

    /// Publishes QoS 0 and QoS 1 and checks both arrive, then pings both.
    pub fn check(&mut self) {
        self.next_pid += 1;
        let pid = self.next_pid;
        let t = self.topic.clone();
        self.publ.publish_complete(&t, 0, false, 0, b"q0");
        self.publ.publish_complete(&t, 1, false, pid, b"q1");
        let m0 = self.sub.recv_publish();
        assert_eq!(
            (m0.topic.as_str(), m0.qos, &m0.payload[..]),
            (t.as_str(), 0, &b"q0"[..])
        );
        let m1 = self.sub.recv_publish_ack();
        assert_eq!(
            (m1.topic.as_str(), m1.qos, &m1.payload[..]),
            (t.as_str(), 1, &b"q1"[..])
        );
        self.sub.ping();
        self.publ.ping();
    }
}

// ---------------------------------------------------------------------------------------
// Shard placement (real clients on a multi-shard broker)
// ---------------------------------------------------------------------------------------

/// Shards of the broker that real-client tests start, so that every client can be placed
/// on a shard of its own.
pub const PLACED_SHARDS: usize = 4;

/// The placement seed every spawned broker gets (`--placement-seed`), unless its
/// arguments name one. An external broker (`RINGMQ_TEST_ADDR`) must be started with
/// it for placed clients to land where the tests expect.
pub const TEST_PLACEMENT_SEED: u64 = 0x7e57_5eed;

/// `PREFIX-N`, the first such client id whose session the broker's owner hash puts on
/// `shard` of `shards` (the same function the broker uses, keyed with
/// [`TEST_PLACEMENT_SEED`]). With `prefix` from [`uniq`]
/// the id stays within MQTT 3.1.1's 23 characters.
pub fn id_on_shard(prefix: &str, shard: usize, shards: usize) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| ringmq::shard::owner_shard(TEST_PLACEMENT_SEED, id.as_bytes(), shards) == shard)
        .expect("some id hashes to every shard")
}

/// A unique client id (from [`uniq`]`(tag)`) owned by `shard` of [`PLACED_SHARDS`].
pub fn placed_id(tag: &str, shard: usize) -> String {
    id_on_shard(&uniq(tag), shard, PLACED_SHARDS)
}

impl Broker {
    /// A broker with [`PLACED_SHARDS`] shards (or the external one named by
    /// `RINGMQ_TEST_ADDR`), for tests that put each client on a chosen shard.
    pub fn placed() -> Broker {
        Broker::start(&["--shards", &PLACED_SHARDS.to_string()])
    }
}
