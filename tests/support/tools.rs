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
