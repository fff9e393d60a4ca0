//! What the shipped systemd unit (deploy/systemd/ringmq.service) relies on in the
//! real binary: `Type=notify` readiness (READY=1 over the `NOTIFY_SOCKET` datagram
//! socket once the listeners accept, STOPPING=1 on shutdown), `ExecReload`'s SIGHUP
//! leaving the broker running, and `ExecStartPre`'s `check-config` exit codes.

mod support;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{repo_root, uniq, Launch, RawClient};

const WAIT: Duration = Duration::from_secs(15);

/// Reads the next notification, failing the test if none comes within [`WAIT`].
fn recv_state(socket: &UnixDatagram) -> String {
    socket.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification from ringmq within {WAIT:?}: {e}"));
    String::from_utf8(buf[..n].to_vec()).expect("notification is UTF-8")
}

/// Starts ringmq with `NOTIFY_SOCKET=notify_socket`, expects READY=1, proves a
/// client gets CONNACK afterwards, then stops it and expects STOPPING=1.
fn ready_then_stopping(socket: &UnixDatagram, notify_socket: &str) {
    let mut broker = Launch::new(&[]).env("NOTIFY_SOCKET", notify_socket).spawn();
    assert_eq!(recv_state(socket), "READY=1", "{}", broker.stderr_tail());
    // Readiness means the listener accepts: a full CONNECT/CONNACK works now.
    let _client = RawClient::connect_v311(broker.addr(), &uniq("notify"));
    let status = broker.terminate(WAIT).expect("ringmq exits after SIGTERM");
    assert!(status.success(), "exit {status:?}");
    assert_eq!(recv_state(socket), "STOPPING=1");
}

#[test]
fn notify_socket_path_gets_ready_then_stopping() {
    let dir = std::env::temp_dir().join(uniq("ringmq-notify"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path: PathBuf = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    ready_then_stopping(&socket, path.to_str().expect("UTF-8 path"));
    drop(socket);
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
}

#[test]
fn abstract_notify_socket_gets_ready_then_stopping() {
    // systemd itself passes an abstract socket: "@/org/freedesktop/systemd1/notify/...".
    let name = uniq("ringmq-notify-abstract");
    let addr = UnixAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
    let socket = UnixDatagram::bind_addr(&addr).expect("bind abstract notify socket");
    ready_then_stopping(&socket, &format!("@{name}"));
}

#[test]
fn sighup_is_logged_and_the_broker_keeps_serving() {
    // RUST_LOG would override --log-level and could hide the line waited for.
    let mut broker = Launch::new(&["--log-level", "info"])
        .env_remove("RUST_LOG")
        .spawn();
    // SAFETY: kill(2) on the PID of the child this test spawned and has not reaped.
    let rc = unsafe { libc::kill(broker.pid() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0, "kill(SIGHUP)");
    let deadline = Instant::now() + WAIT;
    // Without password, ACL or TLS files there is nothing to re-read (tests/auth.rs
    // and tests/tls.rs cover reloads that do); both reloads say so.
    while !{
        let tail = broker.stderr_tail();
        tail.contains("SIGHUP: no password or ACL file configured")
            && tail.contains("SIGHUP: reloaded TLS material of 0 listener(s)")
    } {
        broker.assert_alive();
        assert!(
            Instant::now() < deadline,
            "no SIGHUP log line within {WAIT:?}; stderr: {}",
            broker.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    broker.assert_alive();
    let _client = RawClient::connect_v311(broker.addr(), &uniq("after-hup"));
    let status = broker.terminate(WAIT).expect("ringmq exits after SIGTERM");
    assert!(status.success(), "exit {status:?}");
}

fn ringmq(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args(args)
        .output()
        .expect("run ringmq")
}

#[test]
fn check_config_accepts_the_shipped_config() {
    let shipped = repo_root().join("deploy/ringmq.toml");
    let shipped = shipped.to_str().expect("UTF-8 path");
    let out = ringmq(&["check-config", "--config", shipped]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("ringmq: config {shipped} is valid\n")
    );
}

#[test]
fn check_config_names_key_and_value_and_exits_2() {
    let dir = std::env::temp_dir().join(uniq("ringmq-check"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cases = [
        (
            "max_inflight = 0\n",
            "key \"max_inflight\": expected an integer 1..=65535, got 0",
        ),
        (
            "slow_consumer_policy = \"block\"\n",
            "key \"slow_consumer_policy\": expected one of drop, disconnect, got \"block\"",
        ),
        ("max_inflihgt = 10\n", "unknown key \"max_inflihgt\""),
    ];
    for (text, message) in cases {
        let path = dir.join("broken.toml");
        std::fs::write(&path, text).expect("write config");
        let path = path.to_str().expect("UTF-8 path");
        let out = ringmq(&["check-config", "--config", path]);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!("ringmq: config {path}: {message}\n"),
            "{text:?}"
        );
        assert!(out.stdout.is_empty(), "{out:?}");
    }
    // Options before the subcommand are checked too.
    let out = ringmq(&["--max-packet-size", "0", "check-config"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "ringmq: option --max-packet-size: expected an integer 1..=268435455, got \"0\"\n"
    );
    let missing = dir.join("missing.toml");
    let out = ringmq(&["check-config", "--config", missing.to_str().expect("UTF-8")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    std::fs::remove_dir_all(&dir).expect("remove temp dir");
}
