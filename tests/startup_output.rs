//! What a default start of the real `ringmq` binary prints: no warnings, and no ANSI
//! colour codes when stderr is not a terminal (here: a pipe, as in CI logs).

mod support;

use std::time::Duration;

use support::Launch;

const WAIT: Duration = Duration::from_secs(10);

/// Starts ringmq with `args` at log level info, collects stderr up to and including the
/// "listening" line, then stops it with SIGTERM.
fn startup_lines(args: &[&str]) -> Vec<String> {
    startup_lines_with(args, None)
}

/// [`startup_lines`] with `RUST_LOG` set to `rust_log` (unset when `None`).
fn startup_lines_with(args: &[&str], rust_log: Option<&str>) -> Vec<String> {
    let mut all = vec!["--log-level", "info"];
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
