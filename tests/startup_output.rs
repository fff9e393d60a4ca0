//! What a default start of the real `ringmq` binary prints: no warnings, and no ANSI
//! colour codes when stderr is not a terminal (here: a pipe, as in CI logs).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(10);

/// Starts ringmq with `args` at log level info, collects stderr up to and including the
/// "listening" line, then stops it with SIGTERM.
fn startup_lines(args: &[&str]) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(["--listen", "127.0.0.1:0", "--log-level", "info"])
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringmq");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel::<String>();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + WAIT;
    let mut lines = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no listening line; got {lines:?}");
        };
        let done = line.starts_with("ringmq listening on ");
        lines.push(line);
        if done {
            break;
        }
    }
    // SAFETY: signals our own child, whose pid we hold and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit {status:?}; output {lines:?}");
    lines
}

#[test]
fn default_start_is_quiet_and_uncoloured() {
    let lines = startup_lines(&[]);
    for line in &lines {
        assert!(!line.contains('\u{1b}'), "ANSI escape in {line:?}");
        assert!(
            !line.contains("WARN"),
            "warning at a default start: {line:?}"
        );
    }
    // Info lines were printed (so "no warning" is not vacuous): the loop sizing.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("INFO") && l.contains("connections per loop")),
        "{lines:?}"
    );
}

#[test]
fn explicit_max_connections_above_capacity_still_warns() {
    let lines = startup_lines(&["--shards", "1", "--max-connections", "100000000"]);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("max_connections 100000000 needs")),
        "{lines:?}"
    );
}
