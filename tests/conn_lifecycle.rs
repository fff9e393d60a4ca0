//! Connection lifecycle against the real `ringmq` binary, on both IO backends (each
//! test names its backend, so `RINGMQ_TEST_IO` changes nothing here): lingering close
//! after a DISCONNECT with a reason or a refusing CONNACK, and TCP keepalive on
//! accepted sockets (issue #15).
//!
//! Raw sockets and hand-made packets; every wait is bounded and no assertion is about
//! how fast something happens.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::pkt::{self, Connect};
use support::{to_hex, Broker, Launch, V5};

/// Generous bound on any single wait; never a pass/fail timing.
const WAIT: Duration = Duration::from_secs(20);

/// `ringmq --io IO ARGS...`, checked to run on that backend.
fn start(io: &str, args: &[&str]) -> Broker {
    let mut all = vec!["--io", io];
    all.extend_from_slice(args);
    let broker = Launch::new(&all).startup_timeout(WAIT).spawn();
    let want = if io == "uring" {
        "(io_uring,"
    } else {
        "(epoll,"
    };
    assert!(
        broker.listening_line().contains(want),
        "{io}: {}",
        broker.listening_line()
    );
    broker
}

fn tcp(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("tcp connect");
    s.set_read_timeout(Some(WAIT)).expect("read timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Waits (bounded) until `want` sits in the socket's receive queue, without reading
/// it: the client has not looked at the broker's answer yet when it writes next.
fn peek_until(s: &TcpStream, want: &[u8]) {
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; want.len() + 64];
    loop {
        let n = s.peek(&mut buf).expect("peek");
        if n >= want.len() {
            assert_eq!(to_hex(&buf[..want.len()]), to_hex(want), "answer so far");
            return;
        }
        assert!(Instant::now() < deadline, "only {:?} arrived", &buf[..n]);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Everything the broker sent, up to its EOF. A reset is a failure: that is the bug.
fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read after {} bytes ({}): {e}", all.len(), to_hex(&all)),
        }
    }
}

/// The client goes on writing after the broker's last packet, as a client does that
/// answers a PUBREC with PUBREL before it reads the DISCONNECT. Every write must
/// succeed: without a lingering close the broker's socket is gone and the second
/// write fails with EPIPE ("broken pipe") instead of the client reading the reason.
fn keep_writing(s: &mut TcpStream, what: &str) {
    let chunk = pkt::publish(V5, "linger/x", 0, false, false, 0, &[], &[b'z'; 512]);
    for i in 0..32 {
        if let Err(e) = s.write_all(&chunk) {
            panic!("{what}: write {i} after the broker's last packet failed: {e}");
        }
        // Lets a reset to the previous write come back before the next one.
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Ends the linger: after it, the broker closes and a write fails (bounded wait).
fn expect_closed_by_broker(s: &mut TcpStream) {
    let deadline = Instant::now() + WAIT;
    let ping = [0xC0, 0x00];
    loop {
        if let Err(e) = s.write_all(&ping) {
            assert!(
                matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
                "{e}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "broker never closed after its linger"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lingering_close(io: &str) {
    // A short Receive Maximum makes the broker end a connection with a reason (0x93);
    // the linger is long enough that the writes below always fall inside it (they
    // take well under a second; the linger is 5 s).
    let broker = start(
        io,
        &[
            "--shards",
            "1",
            "--receive-maximum",
            "2",
            "--close-linger-ms",
            "5000",
        ],
    );

    // 1. DISCONNECT 0x93 after a third unreleased QoS 2 PUBLISH.
    let mut c = tcp(broker.addr());
    c.write_all(&Connect::v5("linger-rm").bytes())
        .expect("connect");
    let mut qos2 = Vec::new();
    for pid in 1..=3 {
        qos2.extend(pkt::publish(
            V5,
            "linger/q",
            2,
            false,
            false,
            pid,
            &[],
            b"x",
        ));
    }
    c.write_all(&qos2).expect("publish");
    // CONNACK (Receive Maximum 2 among its properties) is matched by type and length
    // only; then PUBREC 1, PUBREC 2, DISCONNECT 0x93.
    let mut connack = [0u8; 2];
    c.read_exact(&mut connack).expect("connack header");
    assert_eq!(connack[0], 0x20, "CONNACK");
    let mut rest = vec![0u8; usize::from(connack[1])];
    c.read_exact(&mut rest).expect("connack body");
    assert_eq!(rest[1], 0x00, "CONNACK reason");
    let tail = [
        0x50, 0x02, 0x00, 0x01, // PUBREC 1
        0x50, 0x02, 0x00, 0x02, // PUBREC 2
        0xE0, 0x01, 0x93, // DISCONNECT Receive Maximum exceeded
    ];
    peek_until(&c, &tail);
    c.write_all(&pkt::ack(6, 1)).expect("pubrel 1");
    keep_writing(&mut c, "after DISCONNECT 0x93");
    assert_eq!(to_hex(&read_to_eof(&mut c)), to_hex(&tail));
    // The EOF was the write side's shutdown, not the close: still lingering.
    keep_writing(&mut c, "after the EOF, within the linger");
    expect_closed_by_broker(&mut c);

    // 2. A refusing CONNACK (unsupported authentication method, 0x8C).
    let mut c = tcp(broker.addr());
    let connect = Connect::v5("linger-auth").props(&pkt::p_str(0x15, "SCRAM-SHA-1"));
    c.write_all(&connect.bytes()).expect("connect");
    peek_until(&c, &[0x20, 0x03, 0x00, 0x8C, 0x00]);
    keep_writing(&mut c, "after CONNACK 0x8C");
    assert_eq!(
        to_hex(&read_to_eof(&mut c)),
        to_hex(&[0x20, 0x03, 0x00, 0x8C, 0x00])
    );
    keep_writing(&mut c, "after the EOF, within the linger");
    expect_closed_by_broker(&mut c);
}

#[test]
fn lingering_close_uring() {
    lingering_close("uring");
}

#[test]
fn lingering_close_epoll() {
    lingering_close("epoll");
}

/// The keepalive timer of the broker's end of `client`, from /proc/net/tcp: the
/// `tr:tm->when` field is `02:<ticks>` while a keepalive timer is pending (the kernel
/// arms it only on sockets with SO_KEEPALIVE), in clock ticks until it fires. Waits
/// (bounded) for an idle moment: right after a send the retransmit timer shows.
fn broker_keepalive_ticks(broker: &Broker, client: &TcpStream) -> Option<u64> {
    let client_port = client.local_addr().expect("local addr").port();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = String::new();
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let port = |a: &str| {
                a.split(':')
                    .nth(1)
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            // Local = the broker's listening port, remote = our client's port.
            if f.len() > 5 && port(f[1]) == Some(broker.port()) && port(f[2]) == Some(client_port) {
                last = line.to_string();
                let (timer, when) = f[5].split_once(':').expect("tr:when");
                if timer == "02" {
                    return Some(u64::from_str_radix(when, 16).expect("when"));
                }
            }
        }
        if Instant::now() >= deadline {
            eprintln!("broker end of the connection, last seen: {last:?}");
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Clock ticks per second, the unit of /proc/net/tcp timers.
fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf reads a constant; no memory is passed.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(t > 0, "sysconf(_SC_CLK_TCK)");
    t as u64
}

fn tcp_keepalive(io: &str) {
    let hz = clock_ticks_per_s();
    // A v3.1.1 client with MQTT keepalive 0: only TCP keepalive can find it gone.
    let connect = |broker: &Broker, id: &str| {
        let mut c = tcp(broker.addr());
        c.write_all(&Connect::v311(id).keepalive(0).bytes())
            .expect("connect");
        let mut ack = [0u8; 4];
        c.read_exact(&mut ack).expect("connack");
        assert_eq!(ack, [0x20, 0x02, 0x00, 0x00], "CONNACK");
        c
    };

    let broker = start(io, &["--shards", "2", "--tcp-keepalive-idle-s", "7"]);
    let c = connect(&broker, "ka-7");
    let ticks = broker_keepalive_ticks(&broker, &c)
        .unwrap_or_else(|| panic!("{io}: no keepalive timer on the broker's socket"));
    assert!(
        ticks > 0 && ticks <= 7 * hz,
        "{io}: keepalive due in {ticks} ticks, idle 7 s"
    );
    drop(broker);

    // The default is on too (120 s idle).
    let broker = start(io, &["--shards", "2"]);
    let c = connect(&broker, "ka-default");
    let ticks = broker_keepalive_ticks(&broker, &c)
        .unwrap_or_else(|| panic!("{io}: no keepalive timer on the broker's socket by default"));
    assert!(
        ticks > 7 * hz && ticks <= 120 * hz,
        "{io}: keepalive due in {ticks} ticks, idle 120 s"
    );
}

#[test]
fn tcp_keepalive_on_accepted_sockets_uring() {
    tcp_keepalive("uring");
}

#[test]
fn tcp_keepalive_on_accepted_sockets_epoll() {
    tcp_keepalive("epoll");
}
