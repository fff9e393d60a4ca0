//! What a default start of the real `ringmq` binary prints: no warnings, no ANSI
//! colour codes when stderr is not a terminal (here: a pipe, as in CI logs), and the
//! io_uring features it probed. The epoll fallback's output is in tests/io_fallback.rs.

mod support;

use std::time::Duration;

use support::Launch;

const WAIT: Duration = Duration::from_secs(10);

/// Starts ringmq with `args` at log level info, collects stderr up to and including the
/// "listening" line, then stops it with SIGTERM. `--io auto` (the default) is named so
/// that RINGMQ_TEST_IO cannot replace it: these are the lines of an io_uring start.
fn startup_lines(args: &[&str]) -> Vec<String> {
    let mut all = vec!["--log-level", "info", "--io", "auto"];
    all.extend_from_slice(args);
    let mut broker = Launch::new(&all)
        .env_remove("RUST_LOG")
        .startup_timeout(WAIT)
        .spawn();
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
