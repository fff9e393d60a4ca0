//! MQTT over WebSocket with real clients and hostile peers: Paho Python
//! (`transport="websockets"`) and mqtt.js (`ws://`) run the interop scenarios (QoS
//! 0/1/2, retained, will, session resume) across shards, Paho again over `wss://`
//! with a test CA, rumqttc over its own WebSocket transport; then raw sockets: every refused upgrade gets its HTTP status,
//! every bad frame its close code, a slow or half-open upgrade is closed by the
//! connect timeout, and through all of it the broker keeps serving other clients.
//! Every external program runs under a bounded wait and is killed by PID. A missing
//! tool FAILS the test: `tests/install-deps.sh` installs them.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::*;

const TOOL_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest wait for one answer from the broker (generous: the machine is shared).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The `scheme://` listener's `127.0.0.1:port` in the broker's listening line.
fn listener_addr(b: &Broker, scheme: &str) -> String {
    let line = b.listening_line();
    let prefix = format!("{scheme}://");
    let at = line
        .find(&prefix)
        .unwrap_or_else(|| panic!("a {scheme} listener in {line:?}"));
    line[at + prefix.len()..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ',' && *c != '/')
        .collect()
}

/// A broker with `PLACED_SHARDS` shards (client ids placed on chosen shards) and a
/// WebSocket listener at /mqtt, plus `extra`.
fn ws_broker(extra: &[&str]) -> Broker {
    let shards = PLACED_SHARDS.to_string();
    let mut args = vec!["--shards", &shards, "--listen", "ws://127.0.0.1:0/mqtt"];
    args.extend_from_slice(extra);
    Launch::new(&args).spawn()
}

/// `--ids` for the scripts: each role's session on its own shard, so every scenario
/// crosses shards and WebSocket connections are handed between loops.
fn script_ids(tag: &str) -> String {
    [
        ("s", 1),
        ("p", 0),
        ("rp", 0),
        ("rs", 2),
        ("ww", 3),
        ("wd", 1),
        ("ps", 2),
        ("pp", 0),
    ]
    .iter()
    .map(|(role, shard)| format!("{role}={}", placed_id(tag, *shard)))
    .collect::<Vec<_>>()
    .join(",")
}

fn check_scenarios(what: &str, out: &Output) {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed:\nstdout:\n{text}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for scenario in ["pubsub", "retained", "will", "session"] {
        assert!(
            text.lines().any(|l| l == format!("ok {scenario}")),
            "{what}: scenario {scenario} not reported ok:\n{text}"
        );
    }
}

/// Debian's python3-paho-mqtt 1.6 (tests/install-deps.sh).
fn paho_python() -> &'static Path {
    let py = Path::new("/usr/bin/python3");
    assert!(
        py.is_file(),
        "/usr/bin/python3 missing: run `bash tests/install-deps.sh`"
    );
    py
}

fn paho_over(b: &Broker, scheme: &str, version: &str, cafile: Option<&str>) -> Output {
    let port = port_of(&listener_addr(b, scheme));
    let script = repo_root().join("tests/interop/paho_check.py");
    let mut cmd = Command::new(paho_python());
    cmd.arg(&script).args([
        "--host",
        if cafile.is_some() {
            "localhost"
        } else {
            "127.0.0.1"
        },
        "--port",
        &port,
        "--version",
        version,
        "--prefix",
        &uniq("wspaho"),
        "--ids",
        &script_ids("wspaho"),
        "--ws-path",
        "/mqtt",
    ]);
    if let Some(ca) = cafile {
        cmd.args(["--cafile", ca]);
    }
    run_tool(&mut cmd, "paho_check.py", TOOL_TIMEOUT)
}

#[test]
fn paho_over_websocket_v311_and_v5() {
    let b = ws_broker(&[]);
    for version in ["311", "5"] {
        let out = paho_over(&b, "ws", version, None);
        check_scenarios(&format!("paho over ws, MQTT {version}"), &out);
    }
}

#[test]
fn mqtt_js_over_websocket_v311_and_v5() {
    let node_dir = repo_root().join("tests/interop/node");
    assert!(
        node_dir.join("node_modules/mqtt/package.json").is_file(),
        "Node.js package `mqtt` is not installed in {}: run `bash tests/install-deps.sh`",
        node_dir.display()
    );
    let b = ws_broker(&[]);
    let port = port_of(&listener_addr(&b, "ws"));
    for version in ["311", "5"] {
        let out = run_tool(
            Command::new(require_tool("node"))
                .current_dir(&node_dir)
                .arg("mqtt_check.js")
                .args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port,
                    "--version",
                    version,
                    "--prefix",
                    &uniq("wsnode"),
                    "--ids",
                    &script_ids("wsnode"),
                    "--ws-path",
                    "/mqtt",
                ]),
            "mqtt_check.js",
            TOOL_TIMEOUT,
        );
        check_scenarios(&format!("mqtt.js over ws, MQTT {version}"), &out);
    }
}

/// A CA and a `localhost` server certificate signed by it, written to a fresh
/// directory: (directory, CA file, certificate file, key file).
fn test_ca() -> (PathBuf, String, String, String) {
    let d = std::env::temp_dir().join(uniq("ringmq-wss"));
    std::fs::create_dir_all(&d).expect("temp dir");
    let ca = TestCa::new("ringmq ws test ca");
    let (cert, key) = ca.leaf(&["localhost"], Some("localhost"), false);
    let ca_file = write_file(&d, "ca.pem", &ca.cert.pem());
    let cert_file = write_file(&d, "server.pem", &cert);
    let key_file = write_file(&d, "server.key", &key);
    (d, ca_file, cert_file, key_file)
}

#[test]
fn paho_over_wss_with_a_test_ca() {
    let (dir, ca, cert, key) = test_ca();
    let b = ws_broker(&[
        "--listen",
        "wss://127.0.0.1:0/mqtt",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ]);
    let out = paho_over(&b, "wss", "311", Some(&ca));
    check_scenarios("paho over wss, MQTT 3.1.1", &out);
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------
// Raw WebSocket peers
// ---------------------------------------------------------------------------------------

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// MQTT 3.1.1 CONNECT, empty client id, clean session, keepalive 60.
const CONNECT: &[u8] = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00";

fn upgrade_request(path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

fn connect_tcp(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
    s.set_nodelay(true).expect("nodelay");
    s
}

/// Everything the broker sends until it closes the connection (or `READ_TIMEOUT`
/// passes with nothing new): (bytes, closed by the broker).
fn read_until_closed(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (out, true),
            Err(_) => return (out, false),
        }
    }
}

/// The status code of an HTTP response.
fn status(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"))
}

/// A masked client frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut v = vec![first];
    match payload.len() {
        n if n < 126 => v.push(0x80 | n as u8),
        n if n < 65536 => {
            v.push(0x80 | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(0x80 | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    v
}

/// Reads one server frame: (first byte, payload). Servers do not mask.
fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).expect("frame header");
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).expect("length");
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).expect("length");
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).expect("payload");
    (head[0], payload)
}

/// Reads the 101 answer (up to its blank line) and returns it.
fn read_upgrade_answer(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).expect("upgrade answer");
        got.push(b[0]);
    }
    String::from_utf8(got).expect("UTF-8 answer")
}

/// An upgraded connection at /mqtt.
fn upgraded(addr: &str) -> TcpStream {
    let mut s = connect_tcp(addr);
    s.write_all(upgrade_request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n").as_bytes())
        .expect("send");
    let answer = read_upgrade_answer(&mut s);
    assert!(
        answer.starts_with("HTTP/1.1 101 ") && answer.contains("Sec-WebSocket-Protocol: mqtt\r\n"),
        "{answer}"
    );
    s
}

/// A well-behaved client: upgrade, CONNECT, CONNACK, PINGREQ, PINGRESP, a ping frame
/// answered by a pong, and a close frame echoed. Proves the broker still serves.
fn still_serves(addr: &str) {
    let mut s = upgraded(addr);
    // The CONNECT split over two frames, PINGREQ in a third.
    let mut wire = frame(0x82, &CONNECT[..3]);
    wire.extend(frame(0x82, &CONNECT[3..]));
    wire.extend(frame(0x82, &[0xc0, 0x00]));
    s.write_all(&wire).expect("send");
    let (op, connack) = read_frame(&mut s);
    assert_eq!(op, 0x82, "a binary frame");
    // CONNACK and PINGRESP may share one frame (one flush) or come in two.
    let mut mqtt = connack;
    if mqtt.len() < 6 {
        mqtt.extend(read_frame(&mut s).1);
    }
    assert_eq!(mqtt, [0x20, 0x02, 0x00, 0x00, 0xd0, 0x00]);
    s.write_all(&frame(0x89, b"are you there")).expect("ping");
    assert_eq!(read_frame(&mut s), (0x8a, b"are you there".to_vec()));
    s.write_all(&frame(0x88, &1000u16.to_be_bytes()))
        .expect("close");
    assert_eq!(read_frame(&mut s), (0x88, 1000u16.to_be_bytes().to_vec()));
    let (rest, closed) = read_until_closed(&mut s);
    assert!(closed && rest.is_empty(), "closed after the echo: {rest:?}");
}

/// Sends `bytes` on a fresh connection; returns what came back before the close.
fn answer_to(addr: &str, bytes: &[u8]) -> Vec<u8> {
    let mut s = connect_tcp(addr);
    s.write_all(bytes).expect("send");
    let (got, closed) = read_until_closed(&mut s);
    assert!(closed, "the broker closes after answering {bytes:?}");
    got
}

#[test]
fn refused_upgrades_get_their_http_status() {
    let b = ws_broker(&["--ws-allowed-origins", "https://app.example"]);
    let addr = listener_addr(&b, "ws");
    let mqtt = "Sec-WebSocket-Protocol: mqtt\r\n";
    let cases: [(&str, String, u16, &str); 6] = [
        (
            "wrong path",
            upgrade_request("/other", mqtt),
            404,
            "served at /mqtt",
        ),
        (
            "no key",
            upgrade_request("/mqtt", mqtt).replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), ""),
            400,
            "Sec-WebSocket-Key missing",
        ),
        ("no subprotocol", upgrade_request("/mqtt", ""), 400, "mqtt"),
        (
            "forbidden origin",
            upgrade_request("/mqtt", &format!("{mqtt}Origin: https://evil.example\r\n")),
            403,
            "Origin",
        ),
        (
            "garbage before the upgrade",
            String::from_utf8_lossy(CONNECT).into_owned(),
            400,
            "HTTP",
        ),
        (
            "plain HTTP",
            "GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n".into(),
            426,
            "WebSocket",
        ),
    ];
    for (what, request, want, says) in cases {
        let got = answer_to(&addr, request.as_bytes());
        assert_eq!(
            status(&got),
            want,
            "{what}: {}",
            String::from_utf8_lossy(&got)
        );
        let text = String::from_utf8_lossy(&got);
        assert!(text.contains(says), "{what}: the body says why: {text}");
    }
    // An allowed origin is let in.
    let mut s = connect_tcp(&addr);
    let ok = upgrade_request("/mqtt", &format!("{mqtt}Origin: https://app.example\r\n"));
    s.write_all(ok.as_bytes()).expect("send");
    assert!(read_upgrade_answer(&mut s).starts_with("HTTP/1.1 101 "));
    still_serves(&addr);
    // Each refusal is counted under its answer in /metrics.
    let metrics = http_get(&b.http_addr().expect("the HTTP listener"), "/metrics");
    for (reason, n) in [
        ("not_found", 1),
        ("bad_request", 2),
        ("no_mqtt_subprotocol", 1),
        ("forbidden_origin", 1),
        ("upgrade_required", 1),
    ] {
        let line = format!("ringmq_websocket_refused_total{{reason=\"{reason}\"}} {n}\n");
        assert!(
            metrics.contains(&line),
            "{line:?} missing from /metrics:\n{metrics}"
        );
    }
}

/// The body of `GET path` on the HTTP listener.
fn http_get(addr: &str, path: &str) -> String {
    let mut s = connect_tcp(addr);
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .expect("send");
    let (got, _) = read_until_closed(&mut s);
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 "), "{path}: {text}");
    text
}

#[test]
fn bad_frames_get_their_close_codes() {
    let b = ws_broker(&["--ws-max-frame-bytes", "1024"]);
    let addr = listener_addr(&b, "ws");
    let cases: [(&str, Vec<u8>, u16); 5] = [
        ("oversized frame", frame(0x82, &[0u8; 1025]), 1009),
        ("unmasked client frame", vec![0x82, 0x02, 0xc0, 0x00], 1002),
        ("reserved opcode", frame(0x83, b""), 1002),
        ("text frame", frame(0x81, b"{\"hello\":1}"), 1003),
        ("ping over 125 bytes", frame(0x89, &[0u8; 200]), 1002),
    ];
    for (what, bad, code) in cases {
        let mut s = upgraded(&addr);
        // A connected session first: the close must not depend on the MQTT state.
        s.write_all(&frame(0x82, CONNECT)).expect("connect");
        assert_eq!(read_frame(&mut s).1, [0x20, 0x02, 0x00, 0x00], "{what}");
        s.write_all(&bad).expect("bad frame");
        let (first, payload) = read_frame(&mut s);
        assert_eq!(
            (first, payload),
            (0x88, code.to_be_bytes().to_vec()),
            "{what}: a close frame with {code}"
        );
        let (rest, closed) = read_until_closed(&mut s);
        assert!(closed, "{what}: closed after the close frame ({rest:?})");
        still_serves(&addr);
    }
}

/// Raises the soft descriptor limit so this process can hold the half-open sockets.
fn raise_nofile(want: u64) {
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit we own.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        if r.rlim_cur < want {
            r.rlim_cur = want.min(r.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
        }
    }
}

/// A handshake slowloris and 1,000 half-open upgrades: the others are served while
/// they hang, and the connect timeout ends every one of them with a 503 naming it.
#[test]
fn slow_and_half_open_upgrades_are_closed_and_others_served() {
    raise_nofile(4096);
    let b = ws_broker(&["--connect-timeout-ms", "3000"]);
    let addr = listener_addr(&b, "ws");
    let request = upgrade_request("/mqtt", "Sec-WebSocket-Protocol: mqtt\r\n");
    let mut half_open: Vec<TcpStream> = (0..1000)
        .map(|i| {
            let mut s = connect_tcp(&addr);
            // Each stops somewhere inside its request.
            let cut = 1 + i % (request.len() - 1);
            s.write_all(&request.as_bytes()[..cut])
                .expect("partial upgrade");
            s
        })
        .collect();
    let mut slow = connect_tcp(&addr);
    slow.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    still_serves(&addr);
    // The slowloris: one byte at a time; the connect timeout ends it whatever it sends.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut closed = false;
    for b in request.as_bytes().iter().cycle() {
        assert!(
            Instant::now() < deadline,
            "the slow upgrade was never closed"
        );
        if slow.write_all(std::slice::from_ref(b)).is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 64];
        match slow.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => {
                // The connect timeout's answer, then the close.
                let mut got = buf[..n].to_vec();
                slow.set_read_timeout(Some(READ_TIMEOUT)).expect("timeout");
                let (rest, eof) = read_until_closed(&mut slow);
                got.extend(rest);
                assert_eq!(status(&got), 503, "{}", String::from_utf8_lossy(&got));
                closed = eof;
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(closed);
    for (i, s) in half_open.iter_mut().enumerate() {
        let (got, closed) = read_until_closed(s);
        assert!(
            closed,
            "half-open upgrade {i} closed by the connect timeout"
        );
        let text = String::from_utf8_lossy(&got);
        assert_eq!(status(&got), 503, "half-open upgrade {i}: {text}");
        assert!(text.contains("connect_timeout_ms"), "{text}");
    }
    still_serves(&addr);
}

/// When the broker ends the connection (here after the client's DISCONNECT), the
/// client gets a close frame (1000), not just a TCP close: a browser then reports a
/// normal closure rather than 1006.
#[test]
fn the_broker_ends_with_a_close_frame() {
    let b = ws_broker(&[]);
    let addr = listener_addr(&b, "ws");
    let mut s = upgraded(&addr);
    s.write_all(&frame(0x82, CONNECT)).expect("connect");
    assert_eq!(read_frame(&mut s).1, [0x20, 0x02, 0x00, 0x00]);
    s.write_all(&frame(0x82, &[0xe0, 0x00]))
        .expect("disconnect");
    assert_eq!(read_frame(&mut s), (0x88, 1000u16.to_be_bytes().to_vec()));
    let (rest, closed) = read_until_closed(&mut s);
    assert!(closed && rest.is_empty(), "closed after it: {rest:?}");
}

/// rumqttc's own WebSocket transport (async-tungstenite): subscribe, then QoS 1 and 2
/// round trips through the ws listener.
#[test]
fn rumqttc_over_websocket() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};

    let b = ws_broker(&[]);
    let port: u16 = port_of(&listener_addr(&b, "ws")).parse().expect("port");
    let topic = uniq("ws/rumqttc");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let got = rt.block_on(async {
        let url = format!("ws://127.0.0.1:{port}/mqtt");
        let mut opts = MqttOptions::new(uniq("rumqttc-ws"), url, port);
        opts.set_transport(Transport::Ws);
        let (client, mut events) = AsyncClient::new(opts, 16);
        client
            .subscribe(topic.clone(), QoS::ExactlyOnce)
            .await
            .expect("subscribe queued");
        let wait = async {
            let mut got = Vec::new();
            loop {
                match events.poll().await.expect("rumqttc over ws") {
                    Event::Incoming(Packet::SubAck(_)) => {
                        for (qos, body) in [(QoS::AtLeastOnce, "qos1"), (QoS::ExactlyOnce, "qos2")]
                        {
                            client
                                .publish(topic.clone(), qos, false, body)
                                .await
                                .expect("publish queued");
                        }
                    }
                    Event::Incoming(Packet::Publish(p)) => {
                        got.push(String::from_utf8_lossy(&p.payload).into_owned());
                        if got.len() == 2 {
                            return got;
                        }
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(TOOL_TIMEOUT, wait)
            .await
            .expect("messages within the deadline")
    });
    assert_eq!(got, ["qos1", "qos2"]);
}
