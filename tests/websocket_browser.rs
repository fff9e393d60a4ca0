//! MQTT over WebSocket from a real browser: headless Chromium (Debian's `chromium`,
//! installed by tests/install-deps.sh; the test fails if it is missing) opens a page
//! this test serves, which loads the mqtt.js browser bundle from the pinned npm
//! package (`tests/interop/node/node_modules/mqtt/dist/mqtt.min.js`, served by the
//! test: no CDN). The page connects to a `ws://` listener that allows only the test
//! server's origin, subscribes, publishes, and receives its own message plus one
//! `mosquitto_pub` sends over plain TCP; the test reads both from the DOM Chromium
//! dumps (`--dump-dom`).
//!
//! Sequencing without timers: the page reports to the test server (`fetch('/ready')`
//! once subscribed, `fetch('/done')` once both messages are shown), and the test
//! holds back `/hold.js`, the page's last script, until `/done`, so the load event,
//! and with it the dump, comes after the messages.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use support::*;

const CHROMIUM: &str = "/usr/bin/chromium";
/// Bound on the whole browser run (the shared machine is slow; nothing waits this
/// long when things work).
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// The `ws://` listener's `127.0.0.1:port` in the broker's listening line.
fn ws_addr(b: &Broker) -> String {
    let line = b.listening_line();
    let at = line.find("ws://").expect("a ws listener") + "ws://".len();
    line[at..]
        .chars()
        .take_while(|c| *c != '/' && *c != ',' && !c.is_whitespace())
        .collect()
}

fn page(ws: &str, topic: &str, client_id: &str) -> String {
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>ringmq over WebSocket</title>
<script src="/mqtt.min.js"></script></head>
<body>
<div id="state">starting</div>
<ul id="got"></ul>
<script>
const topic = "{topic}";
const seen = [];
const show = (s) => {{ document.getElementById('state').textContent = s; }};
const c = mqtt.connect("ws://{ws}/mqtt", {{ clientId: "{client_id}", protocolVersion: 4, reconnectPeriod: 0 }});
c.on('error', (e) => {{ show('error: ' + e.message); fetch('/done'); }});
c.on('connect', () => {{
  show('connected');
  c.subscribe(topic, {{ qos: 1 }}, (err) => {{
    if (err) {{ show('subscribe failed: ' + err.message); fetch('/done'); return; }}
    show('subscribed');
    c.publish(topic, 'from-browser', {{ qos: 1 }});
    fetch('/ready');
  }});
}});
c.on('message', (t, payload) => {{
  const li = document.createElement('li');
  li.textContent = payload.toString();
  document.getElementById('got').appendChild(li);
  seen.push(payload.toString());
  if (seen.includes('from-browser') && seen.includes('from-mosquitto')) {{
    show('done');
    fetch('/done');
  }}
}});
</script>
<script src="/hold.js"></script>
</body></html>
"#
    )
}

/// What the page's requests tell the test.
#[derive(Debug, PartialEq)]
enum Event {
    Ready,
    Done,
}

/// Serves the page, the bundle and the reports on `listener`, one thread per
/// request; `/hold.js` waits until `/done` (or 60 s, so a failing page still loads).
fn serve(listener: TcpListener, page: String, bundle: Vec<u8>, events: mpsc::Sender<Event>) {
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = std::sync::Arc::new(std::sync::Mutex::new(release_rx));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        let page = page.clone();
        let bundle = bundle.clone();
        let events = events.clone();
        let release_tx = release_tx.clone();
        let release_rx = release_rx.clone();
        thread::spawn(move || {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                return;
            }
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            // The rest of the request head.
            loop {
                let mut h = String::new();
                match reader.read_line(&mut h) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if h == "\r\n" => break,
                    Ok(_) => {}
                }
            }
            let (ctype, body): (&str, Vec<u8>) = match path.as_str() {
                "/" => ("text/html", page.into_bytes()),
                "/mqtt.min.js" => ("application/javascript", bundle),
                "/ready" => {
                    let _ = events.send(Event::Ready);
                    ("text/plain", b"ok".to_vec())
                }
                "/done" => {
                    let _ = events.send(Event::Done);
                    let _ = release_tx.send(());
                    ("text/plain", b"ok".to_vec())
                }
                "/hold.js" => {
                    let rx = release_rx.lock().unwrap_or_else(|e| e.into_inner());
                    let _ = rx.recv_timeout(Duration::from_secs(60));
                    ("application/javascript", b"/* released */".to_vec())
                }
                _ => ("text/plain", b"not found".to_vec()),
            };
            respond(&stream, ctype, &body);
        });
    }
}

fn respond(mut stream: &TcpStream, ctype: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

#[test]
fn chromium_with_mqtt_js_over_websocket_meets_mosquitto_pub_over_tcp() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} not found: tests/install-deps.sh installs Debian's chromium"
    );
    let mosquitto_pub = require_tool("mosquitto_pub");
    let bundle_path = repo_root().join("tests/interop/node/node_modules/mqtt/dist/mqtt.min.js");
    let bundle = std::fs::read(&bundle_path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run `bash tests/install-deps.sh` (npm ci in tests/interop/node)",
            bundle_path.display()
        )
    });

    let site = TcpListener::bind("127.0.0.1:0").expect("bind the page server");
    let origin = format!("http://{}", site.local_addr().expect("addr"));
    // Only the page's origin may open the WebSocket: Chromium's Origin header is checked.
    let b = Launch::new(&[
        "--shards",
        "2",
        "--listen",
        "ws://127.0.0.1:0/mqtt",
        "--ws-allowed-origins",
        &origin,
    ])
    .spawn();
    let ws = ws_addr(&b);
    let topic = uniq("browser/t");
    let page = page(&ws, &topic, &uniq("chromium"));
    let (events_tx, events) = mpsc::channel();
    thread::spawn(move || serve(site, page, bundle, events_tx));

    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("websocket-browser");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).expect("output dir");
    let mut browser = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", out_dir.join("profile").display()),
            "--dump-dom",
            &format!("{origin}/"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");

    // Once the page has subscribed, a message from the TCP side.
    let first = events.recv_timeout(BROWSER_TIMEOUT);
    let published = if first == Ok(Event::Ready) {
        let mut cmd = Command::new(mosquitto_pub);
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.port().to_string(),
            "-q",
            "1",
            "-t",
            &topic,
            "-m",
            "from-mosquitto",
        ]);
        let mut child = cmd.spawn().expect("start mosquitto_pub");
        wait_or_kill(&mut child, Duration::from_secs(30))
    } else {
        None
    };

    let status = wait_or_kill(&mut browser, BROWSER_TIMEOUT);
    let output = browser.wait_with_output().expect("chromium output");
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    std::fs::write(out_dir.join("page.html"), &dom).expect("save DOM");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        first,
        Ok(Event::Ready),
        "the page never subscribed:\n{dom}\n{stderr}"
    );
    assert!(
        published.is_some_and(|s| s.success()),
        "mosquitto_pub over TCP failed: {published:?}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "chromium --dump-dom: {status:?}\n{stderr}"
    );
    assert!(
        dom.contains(r#"<div id="state">done</div>"#),
        "the page did not finish:\n{dom}"
    );
    assert!(
        dom.contains("<li>from-browser</li>"),
        "its own message:\n{dom}"
    );
    assert!(
        dom.contains("<li>from-mosquitto</li>"),
        "mosquitto_pub's message:\n{dom}"
    );
    assert_eq!(events.try_recv(), Ok(Event::Done));
}
