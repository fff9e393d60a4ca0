//! External tools the integration tests drive (mosquitto clients, paho, node,
//! chromium, nats-server...): finding one on PATH, failing loudly when it is missing
//! (never skipping), and running one to completion within a bound; plus the small
//! address helpers those tests share.

use super::*;

use std::process::Output;

/// `name` on PATH, if it is there.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `name` on PATH, or a panic naming it and how to install it: a test that needs a
/// tool fails when the tool is missing, it never skips.
pub fn require_tool(name: &str) -> PathBuf {
    find_in_path(name).unwrap_or_else(|| {
        panic!("`{name}` is not installed (not on PATH): run `bash tests/install-deps.sh`")
    })
}

/// The oldest nats-server the cluster tests accept: session ownership rests on KV
/// compare-and-set, which nats-server serializes on a replicated bucket only from
/// 2.9.21 on (nats-server#4320); with 2.9.10 two nodes can both win one claim.
pub const NATS_SERVER_MIN: (u32, u32, u32) = (2, 9, 21);

/// Where tests/install-deps.sh unpacks the pinned nats-server (Debian trixie's
/// 2.10.27), relative to the repository root.
pub const NATS_SERVER_IN_TREE: &str = "tests/interop/nats/nats-server";

/// The nats-server the cluster tests run: `RINGMQ_TEST_NATS_SERVER` if set, else the
/// in-tree one tests/install-deps.sh installs. Never the system's: Debian bookworm's
/// is 2.9.10. Panics naming the path and the install command when the binary is
/// missing, and naming the version when it is older than [`NATS_SERVER_MIN`].
pub fn require_nats_server() -> PathBuf {
    let bin = match std::env::var_os("RINGMQ_TEST_NATS_SERVER") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(NATS_SERVER_IN_TREE),
    };
    assert!(
        bin.is_file(),
        "no nats-server at {}: run `bash tests/install-deps.sh` (it unpacks the pinned \
         nats-server there), or set RINGMQ_TEST_NATS_SERVER to a nats-server {}.{}.{} or later",
        bin.display(),
        NATS_SERVER_MIN.0,
        NATS_SERVER_MIN.1,
        NATS_SERVER_MIN.2
    );
    let out = run_tool(
        Command::new(&bin).arg("--version"),
        "nats-server --version",
        Duration::from_secs(10),
    );
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let version = nats_server_version(&text).unwrap_or_else(|| {
        panic!(
            "{} --version printed {text:?}, not `nats-server: vX.Y.Z`",
            bin.display()
        )
    });
    assert!(
        version >= NATS_SERVER_MIN,
        "{} is nats-server {}.{}.{}, older than {}.{}.{} (its KV compare-and-set is not \
         serialized on a replicated bucket, nats-server#4320): run `bash tests/install-deps.sh`",
        bin.display(),
        version.0,
        version.1,
        version.2,
        NATS_SERVER_MIN.0,
        NATS_SERVER_MIN.1,
        NATS_SERVER_MIN.2
    );
    bin
}

/// (major, minor, patch) from `nats-server: v2.10.27` (a pre-release suffix such as
/// `-beta.1` is ignored).
pub fn nats_server_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text.strip_prefix("nats-server: v")?;
    let core = v.split(['-', '+', ' ']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u32>().ok());
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

/// Runs `cmd` with no stdin and captured output; fails the test when it cannot start
/// or does not finish `within` (it is killed then).
pub fn run_tool(cmd: &mut Command, what: &str, within: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let status = wait_or_kill(&mut child, within);
    let out = child.wait_with_output().expect("output");
    assert!(status.is_some(), "{what} did not finish within {within:?}");
    out
}

/// The port of a `host:port` address.
pub fn port_of(addr: &str) -> String {
    addr.rsplit(':').next().expect("port").to_string()
}

/// A loopback port free right now (the kernel's pick), for a process the test
/// starts on its own port.
pub fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}
