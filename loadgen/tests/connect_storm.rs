//! `loadgen connect` beyond the fd limit (20,000) and the per-source-IP port cap
//! (~28,232): the hold server and loadgen both use direct descriptors.
//! LOADGEN_STORM_CLIENTS overrides the count (100000 was run by hand, see README).

mod support;

use std::sync::atomic::Ordering;

#[test]
fn connect_storm_beyond_fd_limit() {
    let clients: u64 = std::env::var("LOADGEN_STORM_CLIENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30_000);
    let rings = (clients / 15_000 + 2) as usize;
    let server = support::holdserver::HoldServer::start(rings, 18_000);
    let port = server.port.to_string();
    let n = clients.to_string();
    let (code, j, stderr) = support::loadgen(&[
        "connect",
        "--port",
        &port,
        "--clients",
        &n,
        "--hold",
        "1s",
        "--connect-timeout",
        "60s",
    ]);
    // The server sees the last EOFs a moment after loadgen exits.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.current.load(Ordering::Acquire) != 0 && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let peak = server.peak.load(Ordering::Acquire);
    let connacks = server.connacks.load(Ordering::Acquire);
    let left = server.current.load(Ordering::Acquire);
    let accept_errors = server.accept_errors.load(Ordering::Acquire);
    server.stop();
    eprintln!("storm of {clients}: server peak {peak}; loadgen: {j}\n{stderr}");
    assert_eq!(code, 0, "exit code; stderr: {stderr}");
    assert_eq!(j["connections_attempted"], clients, "{j}");
    assert_eq!(j["connections_established"], clients, "{j}");
    assert_eq!(j["connections_failed"], 0, "{j}");
    assert_eq!(j["errors_total"], 0, "{j}");
    assert_eq!(j["unclean_closes"], 0, "{j}");
    // The hold server closes only on EOF, never after DISCONNECT: once the teardown
    // stalls, loadgen closes every connection itself (FIN), cleanly.
    assert_eq!(j["closed_before_broker"], clients, "{j}");
    assert_eq!(j["connect_latency_us"]["count"], clients, "{j}");
    assert_eq!(
        peak, clients as i64,
        "server saw every connection open at once"
    );
    assert_eq!(connacks, clients);
    assert_eq!(accept_errors, 0);
    assert_eq!(left, 0, "every connection closed at the end");
}
