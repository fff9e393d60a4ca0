//! Test support: start ringmq (the workspace's own binary, built through Cargo) and a
//! tiny io_uring accept-and-hold MQTT server that can hold more connections than
//! RLIMIT_NOFILE.
#![allow(dead_code)]

pub mod holdserver;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A broker process we started; killed by PID on drop.
pub struct Broker {
    child: Child,
    pub port: u16,
    pub name: String,
    stderr_path: PathBuf,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

impl Broker {
    /// The broker's process id (for `--broker-pid`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

pub fn free_port() -> u16 {
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 for a free port");
    l.local_addr().expect("local_addr").port()
}

/// How long a starting broker may take to accept. Generous because the test machine
/// is shared with other builds; a broker slower than this is broken, not slow.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until 127.0.0.1:`port` accepts; Err says why not (exited, or timed out).
fn wait_listening(child: &mut Child, port: u16) -> Result<(), String> {
    let end = Instant::now() + START_TIMEOUT;
    while Instant::now() < end {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited during start-up ({status})"));
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "did not accept on 127.0.0.1:{port} within {} s",
        START_TIMEOUT.as_secs()
    ))
}

/// The ringmq binary: `$RINGMQ_BIN` when set (e.g. a release build to test against),
/// else the one Cargo builds for this workspace. `CARGO_BIN_EXE_*` covers only this
/// package's binaries, so Cargo is asked to build ringmq (a no-op when it is fresh)
/// and reports where the executable is: that follows CARGO_TARGET_DIR and the
/// profile, and never picks up a stale binary. Built once per test process.
pub fn ringmq_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("RINGMQ_BIN") {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "RINGMQ_BIN={} is not a file", p.display());
            return p;
        }
        cargo_build_ringmq()
    })
    .clone()
}

fn cargo_build_ringmq() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadgen sits in the workspace");
    let mut cmd = Command::new(env!("CARGO"));
    // `--workspace`, as CI's `cargo test --workspace`: a build of the ringmq package
    // alone unifies dependency features differently and compiles ringmq again.
    cmd.current_dir(workspace).args([
        "build",
        "--workspace",
        "--bin",
        "ringmq",
        "--message-format=json-render-diagnostics",
    ]);
    // Same profile as these tests (`cargo test --release` tests a release broker).
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo build for ringmq");
    assert!(
        out.status.success(),
        "cargo build --workspace --bin ringmq failed ({})",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let exe = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "ringmq")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from));
    let exe = exe.unwrap_or_else(|| {
        panic!("cargo build --workspace --bin ringmq named no executable; output: {stdout}")
    });
    assert!(
        exe.is_file(),
        "cargo reported {} but it is missing",
        exe.display()
    );
    exe
}

/// Starts ringmq on a free port on 127.0.0.1. A broker that does not start fails the
/// test, with its stderr: there is no other broker to fall back to, so a pass always
/// means ringmq carried the traffic.
pub fn start_broker() -> Broker {
    start_broker_with(&[])
}

/// [`start_broker`] with more ringmq options (e.g. `--mqttsn-listen`).
pub fn start_broker_with(extra: &[&str]) -> Broker {
    start_broker_at(|port| format!("127.0.0.1:{port}"), extra)
}

/// As [`start_broker`], its listener of `scheme` (e.g. mqtts) and `extra` flags.
pub fn start_broker_scheme(scheme: &str, extra: &[&str]) -> Broker {
    let scheme = scheme.to_owned();
    start_broker_at(move |port| format!("{scheme}://127.0.0.1:{port}"), extra)
}

/// Like [`start_broker`] with an MQTT-over-WebSocket listener (`ws://…/mqtt`).
pub fn start_ws_broker() -> Broker {
    start_broker_at(|port| format!("ws://127.0.0.1:{port}/mqtt"), &[])
}

fn start_broker_at(url: impl Fn(u16) -> String, extra: &[&str]) -> Broker {
    let bin = ringmq_bin();
    let port = free_port();
    let stderr_path =
        std::env::temp_dir().join(format!("loadgen-ringmq-{}-{port}.err", std::process::id()));
    let stderr = std::fs::File::create(&stderr_path)
        .unwrap_or_else(|e| panic!("creating {}: {e}", stderr_path.display()));
    let mut child = Command::new(&bin)
        .args(["--listen", &url(port), "--http-listen", "none"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    if let Err(why) = wait_listening(&mut child, port) {
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        let _ = std::fs::remove_file(&stderr_path);
        panic!("ringmq ({}) {why}; its stderr:\n{log}", bin.display());
    }
    Broker {
        child,
        port,
        name: format!("ringmq ({})", bin.display()),
        stderr_path,
    }
}

/// Runs the loadgen binary with `args` plus `--json`; returns (exit code, parsed JSON, stderr).
pub fn loadgen(args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .expect("running the loadgen binary");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let line = stdout.lines().last().unwrap_or_default();
    let json = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!("loadgen {args:?} printed no JSON line ({e}); stdout: {stdout}\nstderr: {stderr}")
    });
    (out.status.code().unwrap_or(-1), json, stderr)
}
