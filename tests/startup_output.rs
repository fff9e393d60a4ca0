//! What a default start of the real `ringmq` binary prints: no warnings, no ANSI
//! colour codes when stderr is not a terminal (here: a pipe, as in CI logs), and the
//! io_uring features it probed. The epoll fallback's output is in tests/io_fallback.rs.

mod support;

use std::time::Duration;

use support::{wait_or_kill, Launch};

const WAIT: Duration = Duration::from_secs(10);

/// Starts ringmq with `args` at log level info, collects stderr up to and including the
/// "listening" line, then stops it with SIGTERM. `--io auto` (the default) is named so
/// that RINGMQ_TEST_IO cannot replace it: these are the lines of an io_uring start.
fn startup_lines(args: &[&str]) -> Vec<String> {
    startup_lines_with(args, None)
}

/// [`startup_lines`] with `RUST_LOG` set to `rust_log` (unset when `None`).
fn startup_lines_with(args: &[&str], rust_log: Option<&str>) -> Vec<String> {
    let mut all = vec!["--log-level", "info", "--io", "auto"];
    all.extend_from_slice(args);
    let launch = match rust_log {
        Some(v) => Launch::new(&all).env("RUST_LOG", v),
        None => Launch::new(&all).env_remove("RUST_LOG"),
    };
    let mut broker = launch.startup_timeout(WAIT).spawn();
    let lines = broker.startup_lines().to_vec();
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("ringmq listening on ")),
        "no listening line; got {lines:?}"
    );
    let status = broker
        .terminate(WAIT)
        .unwrap_or_else(|| panic!("ringmq did not exit after SIGTERM; output {lines:?}"));
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

/// An unparsable RUST_LOG does not stop the broker, and is not silently replaced:
/// a warning names it and says which filter is used instead.
#[test]
fn unparsable_rust_log_is_named_in_a_warning() {
    let lines = startup_lines_with(&["--shards", "1"], Some("ringmq=loud"));
    let warned: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("RUST_LOG"))
        .collect();
    assert_eq!(warned.len(), 1, "{lines:?}");
    assert!(
        warned[0].ends_with(
            "RUST_LOG=\"ringmq=loud\" (error parsing level filter: expected one of \"off\", \
             \"error\", \"warn\", \"info\", \"debug\", \"trace\", or a number 0-5) ignored; \
             using log_level \"info\""
        ),
        "{lines:?}"
    );
    // The fallback filter is in force: info lines follow.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("INFO") && l.contains("connections per loop")),
        "{lines:?}"
    );
}

/// The io_uring sizing line says which accept mode runs: multishot by default,
/// single-shot (with the peer address) when a per-IP limit needs the address.
#[test]
fn startup_names_the_accept_mode() {
    let sizing = |args: &[&str]| -> String {
        let lines = startup_lines(args);
        lines
            .iter()
            .find(|l| l.contains("INFO") && l.contains("connections per loop"))
            .cloned()
            .unwrap_or_else(|| panic!("no sizing line: {lines:?}"))
    };
    let default = sizing(&["--shards", "1"]);
    assert!(
        default.ends_with("; multishot accept, peer address not collected"),
        "{default}"
    );
    let per_ip = sizing(&["--shards", "1", "--max-connections-per-ip", "5"]);
    assert!(
        per_ip.ends_with("; single-shot accepts with peer address (max_connections_per_ip is set)"),
        "{per_ip}"
    );
}

/// What `probe_support` reports when io_uring is usable: the running kernel, then
/// every feature in a fixed order. EXT_ARG, MSG_RING and provided-buffer rings are
/// required (the probe refuses io_uring without them), so they read `true`.
#[test]
fn io_uring_start_logs_the_probed_features() {
    let lines = startup_lines(&["--shards", "1"]);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("read /proc/sys/kernel/osrelease");
    let prefix = format!("io_uring available: kernel {}, ", kernel.trim());
    let found: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("io_uring available: "))
        .collect();
    assert_eq!(found.len(), 1, "{lines:?}");
    let line = found[0];
    assert!(line.contains(" INFO "), "{line:?}");
    let features = line
        .split_once(&prefix)
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("want {prefix:?} in {line:?}"));
    let pairs: Vec<(&str, &str)> = features
        .split(' ')
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
        .collect();
    let keys: Vec<&str> = pairs.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys,
        [
            "ext_arg",
            "nodrop",
            "fast_poll",
            "msg_ring",
            "pbuf_ring",
            "coop_taskrun",
            "send_zc",
            "recv_bundle"
        ],
        "{line:?}"
    );
    for (key, value) in &pairs {
        let required = matches!(*key, "ext_arg" | "msg_ring" | "pbuf_ring");
        if required {
            assert_eq!(*value, "true", "{key} in {line:?}");
        } else {
            assert!(matches!(*value, "true" | "false"), "{key} in {line:?}");
        }
    }
    let listening = lines.last().expect("listening line");
    assert!(listening.ends_with(" (io_uring, 1 shard)"), "{listening:?}");
}

/// A supervisor that stops reading the broker's stderr (its pipe closed) must still be
/// able to stop it: logging into a closed pipe may not cost the shutdown.
#[test]
fn sigterm_stops_the_broker_after_its_stderr_closed() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--shards",
            "1",
            "--log-level",
            "info",
        ])
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringmq");
    let mut stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
    let mut line = String::new();
    while !line.starts_with("ringmq listening on ") {
        line.clear();
        let n = stderr.read_line(&mut line).expect("read stderr");
        assert!(n > 0, "ringmq exited before listening");
    }
    drop(stderr);
    // SAFETY: kill(2) on the child we spawned and have not reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status =
        wait_or_kill(&mut child, WAIT).expect("ringmq ignored SIGTERM once its stderr was closed");
    assert!(status.success(), "{status:?}");
}

/// `--log-format json`: every log line is one JSON object (the two plain start-up
/// lines, `ringmq http on` and `ringmq listening on`, are the start-up contract and
/// stay text), and a client the broker disconnects is logged at debug with the
/// reason code.
#[test]
fn json_logs_are_one_object_per_line_and_name_the_disconnect_reason() {
    let mut broker = Launch::new(&[
        "--shards",
        "1",
        "--log-format",
        "json",
        "--log-level",
        "debug",
    ])
    .env_remove("RUST_LOG")
    .startup_timeout(WAIT)
    .spawn();
    let (mut c, _) = support::RawClient::connect_v5(broker.addr(), &support::uniq("jsonlog"));
    // A PUBLISH with QoS 3: malformed, the broker disconnects with 0x81.
    c.send_hex("36 05 00 01 74 00 01");
    c.expect_disconnect_v5(&[0x81]);
    let deadline = std::time::Instant::now() + WAIT;
    let tail = loop {
        let tail = broker.stderr_tail();
        if tail.contains("client disconnected by the broker") {
            break tail;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no disconnect line: {tail}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let lines: Vec<&str> = tail.lines().filter(|l| !l.starts_with("ringmq ")).collect();
    assert!(lines.len() >= 3, "{tail}");
    for l in &lines {
        assert!(
            l.starts_with('{') && l.ends_with('}') && l.contains("\"level\":"),
            "not a JSON log line: {l}"
        );
    }
    let line = lines
        .iter()
        .find(|l| l.contains("client disconnected by the broker"))
        .expect("found above");
    assert!(line.contains("\"level\":\"DEBUG\""), "{line}");
    assert!(line.contains("\"reason_code\":\"0x81\""), "{line}");
    let status = broker.terminate(WAIT).expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}
