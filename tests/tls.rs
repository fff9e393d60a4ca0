//! mqtts listeners with real clients: Mosquitto's `mosquitto_pub`/`mosquitto_sub`
//! with `--cafile`, with and without a client certificate, next to a plain listener;
//! bad inputs on the TLS port, each with its exact result and the broker still
//! serving others; SIGHUP reloading certificates with a client connected; TLS 1.3
//! resumption from session tickets across reloads.
//!
//! Certificates are made by the test (rcgen) in a fresh directory; no private key is
//! committed. Every external program runs under a bounded wait and is killed by PID.
//! A missing tool FAILS the test: `tests/install-deps.sh` installs Mosquitto.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// A leaf for `localhost` and 127.0.0.1 with common name `cn`, signed by `ca`.
fn leaf(ca: &TestCa, cn: &str, expired: bool) -> (String, String) {
    ca.leaf(&["localhost", "127.0.0.1"], Some(cn), expired)
}

/// A fresh directory for one test's certificate files.
fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(uniq(&format!("ringmq-tls-{tag}")));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// The `mqtts://` address in the broker's listening line, as `127.0.0.1:port`.
fn tls_addr(b: &Broker) -> String {
    let line = b.listening_line();
    let at = line
        .find("mqtts://")
        .expect("an mqtts listener in the listening line");
    line[at + "mqtts://".len()..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ',' && *c != ')')
        .collect()
}

/// `mosquitto_pub` over TLS to `localhost:port` (the name the certificate carries).
fn pub_tls(port: &str, cafile: &str, extra: &[&str], topic: &str, msg: &str) -> Output {
    let mut cmd = Command::new(require_tool("mosquitto_pub"));
    cmd.args([
        "-h",
        "localhost",
        "-p",
        port,
        "--cafile",
        cafile,
        "-t",
        topic,
        "-m",
        msg,
        "-q",
        "1",
    ])
    .args(extra);
    run_tool(&mut cmd, "mosquitto_pub", TOOL_TIMEOUT)
}

/// A `mosquitto_sub` over TLS that waits for `count` messages.
fn spawn_sub_tls(
    port: &str,
    cafile: &str,
    extra: &[&str],
    topic: &str,
    count: usize,
) -> std::process::Child {
    let mut cmd = Command::new(require_tool("mosquitto_sub"));
    cmd.args([
        "-h",
        "localhost",
        "-p",
        port,
        "--cafile",
        cafile,
        "-t",
        topic,
        "-q",
        "1",
    ])
    .args(["-C", &count.to_string(), "-W", "25"])
    .args(extra)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    cmd.spawn().expect("start mosquitto_sub")
}

/// Publishes until the subscriber started with `spawn_sub_tls` has had its messages
/// (a subscription takes effect some time after the process starts): returns its output.
fn deliver(mut sub: std::process::Child, publish: impl Fn() -> Output) -> Output {
    let deadline = Instant::now() + TOOL_TIMEOUT;
    loop {
        let out = publish();
        assert!(
            out.status.success(),
            "publish failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
        if sub.try_wait().expect("try_wait").is_some() || Instant::now() > deadline {
            break;
        }
    }
    let status = wait_or_kill(&mut sub, Duration::from_secs(5));
    let out = sub.wait_with_output().expect("output");
    assert!(
        status.is_some_and(|s| s.success()),
        "mosquitto_sub: {status:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn broker_with(args: &[&str]) -> Broker {
    let mut all = vec!["--shards", "2", "--listen", "mqtts://127.0.0.1:0"];
    all.extend_from_slice(args);
    Launch::new(&all).spawn()
}

#[test]
fn mosquitto_over_tls_beside_a_plain_listener() {
    let d = dir("basic");
    let ca = TestCa::new("ringmq test ca");
    let (cert, key) = leaf(&ca, "localhost", false);
    let cafile = write_file(&d, "ca.pem", &ca.cert.pem());
    let certf = write_file(&d, "server.pem", &cert);
    let keyf = write_file(&d, "server.key", &key);
    let b = broker_with(&["--tls-cert", &certf, "--tls-key", &keyf]);
    let port = port_of(&tls_addr(&b));
    for version in ["mqttv311", "mqttv5"] {
        // Subscriber and publisher on different shards: the TLS state moves with the
        // connection to the shard that owns its session.
        let sub_id = id_on_shard(&uniq("tls-sub"), 0, 2);
        let pub_id = id_on_shard(&uniq("tls-pub"), 1, 2);
        let topic = uniq("tls/basic");
        let sub = spawn_sub_tls(&port, &cafile, &["-V", version, "-i", &sub_id], &topic, 1);
        let out = deliver(sub, || {
            pub_tls(
                &port,
                &cafile,
                &["-V", version, "-i", &pub_id],
                &topic,
                "over-tls",
            )
        });
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "over-tls",
            "{version}"
        );
    }
    // The plain listener still speaks plain MQTT.
    let mut c = RawClient::connect_v311(b.addr(), &uniq("plain"));
    c.ping();
    // And TLS clients reach plain ones: a TLS publish arrives on a plain subscription.
    let topic = uniq("tls/mixed");
    c.subscribe_ok(1, &topic, 0);
    let out = pub_tls(&port, &cafile, &[], &topic, "to-plain");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.recv_publish().payload, b"to-plain");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn client_certificates_optional_and_required() {
    let d = dir("clientcert");
    let srv_ca = TestCa::new("server ca");
    let cli_ca = TestCa::new("client ca");
    let (cert, key) = leaf(&srv_ca, "localhost", false);
    let (ccert, ckey) = leaf(&cli_ca, "device-1", false);
    let (scert, skey) = leaf(&TestCa::new("stranger ca"), "device-1", false);
    let cafile = write_file(&d, "ca.pem", &srv_ca.cert.pem());
    let certf = write_file(&d, "server.pem", &cert);
    let keyf = write_file(&d, "server.key", &key);
    let clientca = write_file(&d, "clients.pem", &cli_ca.cert.pem());
    let ccertf = write_file(&d, "device.pem", &ccert);
    let ckeyf = write_file(&d, "device.key", &ckey);
    let scertf = write_file(&d, "stranger.pem", &scert);
    let skeyf = write_file(&d, "stranger.key", &skey);
    let with_cert = ["--cert", ccertf.as_str(), "--key", ckeyf.as_str()];

    // Optional: with or without a certificate.
    let b = broker_with(&[
        "--tls-cert",
        &certf,
        "--tls-key",
        &keyf,
        "--tls-client-ca",
        &clientca,
    ]);
    let port = port_of(&tls_addr(&b));
    for extra in [&[][..], &with_cert[..]] {
        let out = pub_tls(&port, &cafile, extra, &uniq("tls/opt"), "x");
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    drop(b);

    // Required: none, or one from another CA, is a TLS error (exit 8, MOSQ_ERR_TLS).
    let b = broker_with(&[
        "--tls-cert",
        &certf,
        "--tls-key",
        &keyf,
        "--tls-client-ca",
        &clientca,
        "--tls-require-certificate",
        "true",
    ]);
    let port = port_of(&tls_addr(&b));
    let stranger = ["--cert", scertf.as_str(), "--key", skeyf.as_str()];
    for extra in [&[][..], &stranger[..]] {
        let out = pub_tls(&port, &cafile, extra, &uniq("tls/req"), "x");
        assert!(!out.status.success(), "{extra:?} was let in");
    }
    let topic = uniq("tls/req");
    let sub = spawn_sub_tls(&port, &cafile, &with_cert, &topic, 1);
    let out = deliver(sub, || {
        pub_tls(&port, &cafile, &with_cert, &topic, "certified")
    });
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "certified");
    let _ = std::fs::remove_dir_all(d);
}

/// mosquitto_pub failed the TLS handshake: "A TLS error occurred" (exit 8,
/// MOSQ_ERR_TLS, when it fails in connect; 1 when the error surfaces in its loop).
fn assert_tls_refused(out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && matches!(out.status.code(), Some(8) | Some(1)),
        "{what}: {:?} {err}",
        out.status
    );
    assert!(err.contains("A TLS error occurred"), "{what}: {err}");
}

/// A TLS round trip that must still work after each bad input.
fn still_serves(port: &str, cafile: &str) {
    let out = pub_tls(port, cafile, &[], &uniq("tls/alive"), "alive");
    assert!(
        out.status.success(),
        "broker stopped serving: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reads until EOF or error within `within`; returns what arrived and whether the
/// broker closed the connection.
fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return (got, true),
        }
    }
    (got, false)
}

/// `got` is one TLS alert record: content type 21, version 3.x, length 2, level 2
/// (fatal), then the description.
fn assert_alert(got: &[u8], what: &str) {
    assert!(
        got.len() == 7 && got[..2] == [0x15, 0x03] && got[3..6] == [0x00, 0x02, 0x02],
        "{what}: expected a fatal TLS alert before the close, got {got:02x?}"
    );
}

#[test]
fn bad_inputs_on_the_tls_port_each_with_its_result() {
    let d = dir("bad");
    let ca_good = TestCa::new("server ca");
    let ca_wrong = TestCa::new("wrong ca");
    let (cert, key) = leaf(&ca_good, "localhost", false);
    let cafile = write_file(&d, "ca.pem", &ca_good.cert.pem());
    let wrongca = write_file(&d, "wrong.pem", &ca_wrong.cert.pem());
    let certf = write_file(&d, "server.pem", &cert);
    let keyf = write_file(&d, "server.key", &key);
    let b = broker_with(&[
        "--tls-cert",
        &certf,
        "--tls-key",
        &keyf,
        "--connect-timeout-ms",
        "1500",
    ]);
    let addr = tls_addr(&b);
    let port = port_of(&addr);
    let mut bystander = Bystander::new(b.addr(), V311);

    // A client that trusts another CA refuses our certificate: mosquitto's TLS error.
    let out = pub_tls(&port, &wrongca, &[], "t", "x");
    assert_tls_refused(&out, "a client trusting another CA");
    still_serves(&port, &cafile);

    // Plaintext MQTT on the TLS port: no CONNACK; a TLS alert record (content type
    // 21, fatal) is flushed before the connection is closed, so the client can say why.
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.write_all(&pkt::Connect::v311(&uniq("plain-on-tls")).bytes())
        .expect("send");
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10));
    assert!(closed, "plaintext client left open");
    assert!(
        got.first() != Some(&0x20),
        "a CONNACK went to a plaintext client: {got:02x?}"
    );
    assert_alert(&got, "plaintext client");
    still_serves(&port, &cafile);

    // Random bytes: closed, nothing that looks like MQTT comes back.
    let mut x = 0x2545f4914f6cdd1du64;
    let noise: Vec<u8> = (0..2048)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let mut s = TcpStream::connect(&addr).expect("connect");
    let _ = s.write_all(&noise);
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(10));
    assert!(closed, "random bytes left the connection open");
    assert!(got.first() != Some(&0x20), "{got:02x?}");
    assert_alert(&got, "random bytes");
    still_serves(&port, &cafile);

    // A handshake that stalls (half a ClientHello header, then nothing): closed by the
    // connect timeout, which covers the handshake.
    let mut s = TcpStream::connect(&addr).expect("connect");
    s.write_all(&[0x16, 0x03, 0x01]).expect("send");
    let (got, closed) = read_until_closed(&mut s, Duration::from_secs(20));
    assert!(closed, "a stalled handshake was never closed");
    assert!(got.is_empty(), "{got:02x?}");
    still_serves(&port, &cafile);
    bystander.check();
    drop(b);

    // An expired server certificate: the client refuses it (TLS error), the broker runs on.
    let (ecert, ekey) = leaf(&ca_good, "localhost", true);
    let ecertf = write_file(&d, "expired.pem", &ecert);
    let ekeyf = write_file(&d, "expired.key", &ekey);
    let b = broker_with(&["--tls-cert", &ecertf, "--tls-key", &ekeyf]);
    let port = port_of(&tls_addr(&b));
    let out = pub_tls(&port, &cafile, &[], "t", "x");
    assert_tls_refused(&out, "an expired server certificate");
    let mut c = RawClient::connect_v311(b.addr(), &uniq("after-expired"));
    c.ping();
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn start_up_refuses_tls_files_that_do_not_load_naming_the_file() {
    let d = dir("badfiles");
    let ca = TestCa::new("ca");
    let (cert, _) = leaf(&ca, "localhost", false);
    let certf = write_file(&d, "server.pem", &cert);
    let keyf = write_file(&d, "server.key", "not a key\n");
    let out = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .args([
            "--listen",
            "mqtts://127.0.0.1:0",
            "--tls-cert",
            &certf,
            "--tls-key",
            &keyf,
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run ringmq");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{keyf}: no private key")), "{err}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn sighup_reloads_certificates_without_dropping_connections() {
    let d = dir("reload");
    let ca_old = TestCa::new("old ca");
    let ca_new = TestCa::new("new ca");
    let (cert, key) = leaf(&ca_old, "localhost", false);
    let oldca = write_file(&d, "old-ca.pem", &ca_old.cert.pem());
    let newca = write_file(&d, "new-ca.pem", &ca_new.cert.pem());
    let certf = write_file(&d, "server.pem", &cert);
    let keyf = write_file(&d, "server.key", &key);
    let b = broker_with(&["--tls-cert", &certf, "--tls-key", &keyf]);
    let port = port_of(&tls_addr(&b));
    let topic = uniq("tls/reload");

    // A subscriber connected over TLS before the reloads; it counts two messages,
    // one from before (which proves its subscription is in place) and one from after.
    let mut sub = spawn_sub_tls(&port, &oldca, &[], &topic, 2);
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = sub.stdout.take().expect("piped");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + TOOL_TIMEOUT;
    loop {
        let out = pub_tls(&port, &oldca, &[], &topic, "before-reload");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(300)) {
            assert_eq!(line, "before-reload");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the subscriber never got a message"
        );
    }
    let hup = |b: &Broker| {
        // SAFETY: kill(2) on the PID of the broker this test spawned.
        assert_eq!(
            unsafe { libc::kill(b.pid() as libc::pid_t, libc::SIGHUP) },
            0
        );
    };

    // A key file that fails to parse: the old material stays, the log names the file.
    std::fs::write(&keyf, "garbage\n").expect("write");
    hup(&b);
    let bad_logged = || b.stderr_tail().contains(&format!("{keyf}: no private key"));
    while !bad_logged() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(bad_logged(), "no error naming {keyf}: {}", b.stderr_tail());
    let out = pub_tls(&port, &oldca, &[], &uniq("tls/x"), "x");
    assert!(
        out.status.success(),
        "old certificate no longer served: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // New material: new handshakes use it, the old one is gone.
    let (cert2, key2) = leaf(&ca_new, "localhost", false);
    std::fs::write(&certf, cert2).expect("write");
    std::fs::write(&keyf, key2).expect("write");
    hup(&b);
    let deadline = Instant::now() + TOOL_TIMEOUT;
    loop {
        let out = pub_tls(&port, &newca, &[], &uniq("tls/x"), "x");
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "new certificate never served");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = pub_tls(&port, &oldca, &[], &uniq("tls/x"), "x");
    assert_tls_refused(&out, "the old certificate after the reload");

    // The subscriber connected before both reloads is still there and gets messages.
    let out = pub_tls(&port, &newca, &[], &topic, "after-reload");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = lines
        .recv_timeout(TOOL_TIMEOUT)
        .expect("the subscriber's second message");
    assert_eq!(line, "after-reload");
    let status = wait_or_kill(&mut sub, Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "mosquitto_sub: {status:?}"
    );
    let _ = std::fs::remove_dir_all(d);
}

/// One MQTT 3.1.1 CONNECT/CONNACK over TLS with a rustls client of `cfg` (which
/// keeps the tickets it is given): how the handshake went. The CONNACK is read, so
/// the session ticket the broker sends before it has reached the client's store.
fn rustls_connect(port: &str, cfg: &std::sync::Arc<rustls::ClientConfig>) -> rustls::HandshakeKind {
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(cfg.clone(), name).expect("client");
    let sock = TcpStream::connect(format!("127.0.0.1:{port}")).expect("connect");
    sock.set_read_timeout(Some(TOOL_TIMEOUT)).expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"\x10\x12\x00\x04MQTT\x04\x02\x00\x3c\x00\x06resume")
        .expect("CONNECT");
    let mut connack = [0u8; 4];
    tls.read_exact(&mut connack).expect("CONNACK");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00], "CONNACK accepted");
    let kind = tls.conn.handshake_kind().expect("handshake done");
    tls.conn.send_close_notify();
    let _ = tls.flush();
    kind
}

/// `tls_session_tickets` (on by default): a client that reconnects resumes its TLS
/// 1.3 session from the ticket the broker gave it, also after SIGHUP reloads (one
/// with a new certificate); with the key off every handshake is full.
#[test]
fn tls13_clients_resume_across_sighup_reloads() {
    use rustls::HandshakeKind::{Full, Resumed};
    let d = dir("resume");
    let ca = TestCa::new("resume ca");
    let (cert, key) = leaf(&ca, "localhost", false);
    let certf = write_file(&d, "server.pem", &cert);
    let keyf = write_file(&d, "server.key", &key);
    let device = || {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert.der().clone()).expect("root");
        std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(ringmq::transport::provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    };
    let b = broker_with(&["--tls-cert", &certf, "--tls-key", &keyf]);
    let port = port_of(&tls_addr(&b));
    let cfg = device();
    assert_eq!(rustls_connect(&port, &cfg), Full);
    assert_eq!(rustls_connect(&port, &cfg), Resumed);

    let reloads = |n: usize| {
        // SAFETY: kill(2) on the PID of the broker this test spawned.
        assert_eq!(
            unsafe { libc::kill(b.pid() as libc::pid_t, libc::SIGHUP) },
            0
        );
        let done = || {
            b.stderr_tail()
                .matches("SIGHUP: reloaded TLS material of 1 listener")
                .count()
                >= n
        };
        let deadline = Instant::now() + TOOL_TIMEOUT;
        while !done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(done(), "reload {n} not logged: {}", b.stderr_tail());
    };
    reloads(1);
    assert_eq!(rustls_connect(&port, &cfg), Resumed, "after SIGHUP");
    let (cert2, key2) = leaf(&ca, "localhost", false);
    std::fs::write(&certf, cert2).expect("write");
    std::fs::write(&keyf, key2).expect("write");
    reloads(2);
    assert_eq!(
        rustls_connect(&port, &cfg),
        Resumed,
        "after SIGHUP with a new certificate"
    );
    // A new device gets the new certificate in a full handshake, then resumes.
    let fresh = device();
    assert_eq!(rustls_connect(&port, &fresh), Full);
    assert_eq!(rustls_connect(&port, &fresh), Resumed);
    drop(b);

    let off = broker_with(&[
        "--tls-cert",
        &certf,
        "--tls-key",
        &keyf,
        "--tls-session-tickets",
        "false",
    ]);
    let port = port_of(&tls_addr(&off));
    let cfg = device();
    assert_eq!(rustls_connect(&port, &cfg), Full);
    assert_eq!(rustls_connect(&port, &cfg), Full, "tickets off");
    let _ = std::fs::remove_dir_all(d);
}

/// Paho Python (`tls_set`) and mqtt.js (`mqtts://`) against an mqtts listener.
#[test]
fn paho_and_mqtt_js_over_tls() {
    let d = dir("clients");
    let ca = TestCa::new("ringmq test ca");
    let (cert, key) = leaf(&ca, "localhost", false);
    let cafile = write_file(&d, "ca.pem", &ca.cert.pem());
    let certf = write_file(&d, "server.pem", &cert);
    let keyf = write_file(&d, "server.key", &key);
    let b = broker_with(&["--tls-cert", &certf, "--tls-key", &keyf]);
    let port = port_of(&tls_addr(&b));

    // Debian's python3-paho-mqtt (tests/install-deps.sh).
    let py = Path::new("/usr/bin/python3");
    assert!(
        py.is_file(),
        "/usr/bin/python3 missing: run `bash tests/install-deps.sh`"
    );
    let script = repo_root().join("tests/interop/paho_tls.py");
    let topic = uniq("tls/paho");
    let out = run_tool(
        Command::new(py)
            .arg(&script)
            .args(["localhost", &port, &cafile, &topic]),
        "paho_tls.py",
        TOOL_TIMEOUT,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.lines().any(|l| l == "ok paho-tls from-paho"),
        "paho over TLS: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // mqtt.js pinned by tests/interop/node/package-lock.json (npm ci in install-deps).
    let node_dir = repo_root().join("tests/interop/node");
    assert!(
        node_dir.join("node_modules/mqtt/package.json").is_file(),
        "Node.js package `mqtt` is not installed in {}: run `bash tests/install-deps.sh`",
        node_dir.display()
    );
    let topic = uniq("tls/mqttjs");
    let out = run_tool(
        Command::new(require_tool("node"))
            .current_dir(&node_dir)
            .args(["mqtt_tls.js", "localhost", &port, &cafile, &topic]),
        "mqtt_tls.js",
        TOOL_TIMEOUT,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.lines().any(|l| l == "ok mqttjs-tls from-mqttjs"),
        "mqtt.js over TLS: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(d);
}

/// rumqttc over rustls (its own TLS stack, ALPN `mqtt` offered): subscribe and publish
/// through the mqtts listener.
#[test]
fn rumqttc_with_rustls_and_alpn() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

    let d = dir("rumqttc");
    let ca = TestCa::new("ringmq test ca");
    let (cert, key) = leaf(&ca, "localhost", false);
    let certf = write_file(&d, "server.pem", &cert);
    let keyf = write_file(&d, "server.key", &key);
    let b = broker_with(&["--tls-cert", &certf, "--tls-key", &keyf]);
    let port: u16 = port_of(&tls_addr(&b)).parse().expect("port");
    let topic = uniq("tls/rumqttc");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let got = rt.block_on(async {
        let mut opts = MqttOptions::new(uniq("rumqttc-tls"), "localhost", port);
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca: ca.cert.pem().into_bytes(),
            alpn: Some(vec![b"mqtt".to_vec()]),
            client_auth: None,
        }));
        let (client, mut events) = AsyncClient::new(opts, 16);
        client
            .subscribe(topic.clone(), QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
        let wait = async {
            loop {
                match events.poll().await.expect("rumqttc over TLS") {
                    Event::Incoming(Packet::SubAck(_)) => client
                        .publish(topic.clone(), QoS::AtLeastOnce, false, "from-rumqttc")
                        .await
                        .expect("publish queued"),
                    Event::Incoming(Packet::Publish(p)) => return p.payload.to_vec(),
                    _ => {}
                }
            }
        };
        tokio::time::timeout(TOOL_TIMEOUT, wait)
            .await
            .expect("message within the deadline")
    });
    assert_eq!(got, b"from-rumqttc");
    let _ = std::fs::remove_dir_all(d);
}
