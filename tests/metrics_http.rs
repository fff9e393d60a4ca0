//! The HTTP listener of a real broker: `/metrics` passes Prometheus' own checker
//! (`promtool check metrics`, Debian's `prometheus` package, installed by
//! tests/install-deps.sh; the test fails if it is missing), known MQTT traffic gives
//! exact counter values, and hostile HTTP input (garbage, oversized heads, a
//! slowloris, 1,000 connections) leaves the broker up and MQTT traffic unaffected.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::pkt::Connect;
use support::{uniq, Broker, Launch, RawClient};

const IO_TIMEOUT: Duration = Duration::from_secs(20);

fn http_addr(b: &Broker) -> String {
    b.http_addr()
        .expect("the broker printed its `ringmq http on` line")
}

/// Sends `request` raw and returns the whole response (the server closes).
fn raw_http(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the HTTP listener");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(request).expect("send request");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read response");
    String::from_utf8_lossy(&out).into_owned()
}

fn get(addr: &str, path: &str) -> (u16, String) {
    let resp = raw_http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    );
    status_and_body(&resp)
}

fn status_and_body(resp: &str) -> (u16, String) {
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {resp:?}"));
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// `name{labels}` → value of every sample in an exposition.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').expect("sample");
            (k.to_string(), v.parse().expect("value"))
        })
        .collect()
}

fn metric(addr: &str, key: &str) -> f64 {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200);
    *samples(&body)
        .get(key)
        .unwrap_or_else(|| panic!("{key} not exported"))
}

#[test]
fn promtool_accepts_the_real_exposition() {
    let broker = Launch::new(&["--shards", "2"]).spawn();
    let addr = http_addr(&broker);
    // Some traffic, so that per-loop and labelled series carry values.
    let mut sub = RawClient::connect_v311(broker.addr(), &uniq("promsub"));
    sub.subscribe_ok(1, "prom/#", 0);
    let mut publ = RawClient::connect_v311(broker.addr(), &uniq("prompub"));
    publ.publish("prom/a", 0, false, 0, b"x");
    sub.recv_publish();
    let (status, body) = get(&addr, "/metrics");
    assert_eq!(status, 200);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: tests/install-deps.sh installs Debian's prometheus");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("promtool ran");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn known_traffic_gives_exact_counters() {
    const N: usize = 50;
    const SUBS: usize = 3;
    let broker = Launch::new(&["--shards", "2"]).spawn();
    let addr = http_addr(&broker);
    let mut subs: Vec<RawClient> = (0..SUBS)
        .map(|i| {
            let mut s = RawClient::connect_v311(broker.addr(), &uniq(&format!("exsub{i}")));
            s.subscribe_ok(1, "exact/#", 0);
            s
        })
        .collect();
    let mut publ = RawClient::connect_v311(broker.addr(), &uniq("expub"));
    for i in 0..N {
        publ.publish("exact/t", 0, false, 0, format!("m{i}").as_bytes());
    }
    for s in subs.iter_mut() {
        for _ in 0..N {
            s.recv_publish();
        }
    }
    assert_eq!(
        metric(&addr, r#"ringmq_messages_received_total{qos="0"}"#),
        N as f64
    );
    assert_eq!(
        metric(&addr, "ringmq_messages_sent_total"),
        (N * SUBS) as f64
    );
    assert_eq!(metric(&addr, "ringmq_connections"), (SUBS + 1) as f64);
    assert_eq!(
        metric(&addr, r#"ringmq_sessions{state="online"}"#),
        (SUBS + 1) as f64
    );
    assert_eq!(metric(&addr, "ringmq_subscriptions"), SUBS as f64);
    // PUBLISH → kernel: one sample per send holding live copies; every subscriber
    // got at least one such send and at most one per message.
    let sends = metric(&addr, "ringmq_publish_to_kernel_seconds_count");
    assert!(
        (SUBS as f64..=(N * SUBS) as f64).contains(&sends),
        "{sends} latency samples for {SUBS} subscribers of {N} messages"
    );
    assert_eq!(
        metric(
            &addr,
            r#"ringmq_publish_to_kernel_seconds_bucket{le="+Inf"}"#
        ),
        sends
    );
    assert_eq!(
        metric(
            &addr,
            r#"ringmq_messages_dropped_total{reason="outbound_full"}"#
        ),
        0.0
    );

    // Drops with a known reason: a persistent session offline does not queue QoS 0
    // (queue_qos0_offline is off by default), so each copy for it is dropped.
    let id = uniq("offline");
    let (mut off, _) = RawClient::connect_with(broker.addr(), &Connect::v311(&id).clean(false));
    off.subscribe_ok(1, "exact/#", 0);
    off.disconnect();
    // The DISCONNECT is processed asynchronously: wait until the session is offline.
    let deadline = Instant::now() + IO_TIMEOUT;
    while metric(&addr, r#"ringmq_sessions{state="offline"}"#) != 1.0 {
        assert!(Instant::now() < deadline, "the session never went offline");
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..N {
        publ.publish("exact/t", 0, false, 0, format!("o{i}").as_bytes());
    }
    for s in subs.iter_mut() {
        for _ in 0..N {
            s.recv_publish();
        }
    }
    assert_eq!(
        metric(&addr, r#"ringmq_messages_received_total{qos="0"}"#),
        (2 * N) as f64
    );
    assert_eq!(
        metric(&addr, "ringmq_messages_sent_total"),
        (2 * N * SUBS) as f64
    );
    assert_eq!(
        metric(
            &addr,
            r#"ringmq_messages_dropped_total{reason="offline_qos0"}"#
        ),
        N as f64
    );
    assert_eq!(metric(&addr, r#"ringmq_sessions{state="offline"}"#), 1.0);

    // A close with a known reason: a packet over max_packet_size.
    let b2 = Launch::new(&["--shards", "1", "--max-packet-size", "1024"]).spawn();
    let addr2 = http_addr(&b2);
    let mut big = RawClient::connect_v311(b2.addr(), &uniq("big"));
    big.publish("big/t", 0, false, 0, &[0u8; 2048]);
    big.expect_closed();
    assert_eq!(
        metric(
            &addr2,
            r#"ringmq_connections_closed_total{reason="packet_too_large"}"#
        ),
        1.0
    );
}

#[test]
fn health_ready_status_and_json_answer() {
    let broker = Launch::new(&["--shards", "2"]).spawn();
    let addr = http_addr(&broker);
    assert_eq!(get(&addr, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(get(&addr, "/readyz"), (200, "ready\n".to_string()));
    let (status, page) = get(&addr, "/");
    assert_eq!(status, 200);
    assert!(page.starts_with("<!doctype html>"));
    let (status, json) = get(&addr, "/api/stats");
    assert_eq!(status, 200);
    assert!(json.contains("\"loops\":[{\"shard\":0"), "{json}");
    let head = raw_http(&addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
}

/// MQTT still works: a fresh subscriber gets a fresh publisher's message.
fn mqtt_round_trip(broker: &Broker, tag: &str) {
    let mut sub = RawClient::connect_v311(broker.addr(), &uniq(&format!("{tag}s")));
    sub.subscribe_ok(1, "alive/#", 0);
    let mut publ = RawClient::connect_v311(broker.addr(), &uniq(&format!("{tag}p")));
    publ.publish("alive/x", 0, false, 0, b"still here");
    let m = sub.recv_publish();
    assert_eq!(m.payload, b"still here");
}

#[test]
fn hostile_http_input_leaves_the_broker_and_mqtt_alone() {
    let mut broker = Launch::new(&["--shards", "2"]).spawn();
    let addr = http_addr(&broker);

    // Garbage, a TLS hello, a bad method, an unknown path.
    let (status, _) = status_and_body(&raw_http(
        &addr,
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n",
    ));
    assert_eq!(status, 400);
    assert_eq!(
        status_and_body(&raw_http(&addr, b"DELETE /metrics HTTP/1.1\r\n\r\n")).0,
        405
    );
    assert_eq!(
        status_and_body(&raw_http(&addr, b"GET /../../etc/passwd HTTP/1.1\r\n\r\n")).0,
        404
    );

    // An oversized head: 431, whatever else the client keeps sending.
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat(b'a').take(64 * 1024));
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = s.write_all(&big);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    assert!(
        resp.starts_with(b"HTTP/1.1 431 "),
        "{:?}",
        String::from_utf8_lossy(&resp[..resp.len().min(80)])
    );

    // A slowloris: one byte at a time, never finishing. It gets 408 and is closed
    // after the read timeout; MQTT works meanwhile.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    slow.write_all(b"GET /met").unwrap();
    mqtt_round_trip(&broker, "slow");
    let started = Instant::now();
    let mut resp = Vec::new();
    loop {
        // Keep dripping until the server gives up on us.
        if slow.write_all(b"r").is_err() {
            break;
        }
        let mut b = [0u8; 256];
        slow.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        match slow.read(&mut b) {
            Ok(0) => break,
            Ok(n) => resp.extend_from_slice(&b[..n]),
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "slowloris never cut off"
        );
    }
    assert!(
        resp.starts_with(b"HTTP/1.1 408 "),
        "{:?}",
        String::from_utf8_lossy(&resp)
    );

    // 1,000 connections at once: the listener keeps at most its bound open and closes
    // the rest; the broker and MQTT are fine, and /metrics answers once they are gone.
    let mut many = Vec::new();
    for _ in 0..1000 {
        match TcpStream::connect(&addr) {
            Ok(s) => many.push(s),
            Err(e) => panic!("connect {}: {e}", many.len()),
        }
    }
    mqtt_round_trip(&broker, "many");
    drop(many);
    broker.assert_alive();
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let (status, body) = get(&addr, "/metrics");
        if status == 200 && body.contains("ringmq_connections ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics did not recover: {status}"
        );
    }
    mqtt_round_trip(&broker, "after");
    broker.assert_alive();
}

/// Mosquitto's `$SYS` topics and payloads as mosquitto_sub receives them (retained:
/// at once); ringmq's own (`$SYS/broker/ringmq/...`) are left out.
fn sys_topics(broker: &Broker) -> HashMap<String, String> {
    sys_filter(broker, "$SYS/#", &["-T", "$SYS/broker/ringmq/#"], 42)
}

/// The first `count` topics and payloads matching `filter`.
fn sys_filter(
    broker: &Broker,
    filter: &str,
    extra: &[&str],
    count: usize,
) -> HashMap<String, String> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", broker.host(), "-p"])
        .arg(broker.port().to_string())
        .args(["-V", "mqttv311", "-v", "-t", filter, "-W", "10", "-C"])
        .arg(count.to_string())
        .args(extra)
        .output()
        .expect("mosquitto_sub not found: tests/install-deps.sh installs mosquitto-clients");
    assert!(out.status.success(), "mosquitto_sub: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            // One topic name holds a space (Mosquitto's), and so do some payloads.
            const SPACED: &str = "$SYS/broker/retained messages/count";
            let (t, p) = match l.strip_prefix(SPACED) {
                Some(rest) => (SPACED, rest.trim_start()),
                None => l.split_once(' ').expect("topic payload"),
            };
            (t.to_string(), p.to_string())
        })
        .collect()
}

#[test]
fn sys_topics_reach_mosquitto_sub_with_the_right_values() {
    const N: usize = 25;
    let broker = Launch::new(&["--shards", "2", "--sys-interval-s", "1"]).spawn();
    let mut sub = RawClient::connect_v311(broker.addr(), &uniq("syssub"));
    sub.subscribe_ok(1, "sys/t", 0);
    let mut publ = RawClient::connect_v311(broker.addr(), &uniq("syspub"));
    for _ in 0..N {
        publ.publish("sys/t", 0, false, 0, b"x");
    }
    for _ in 0..N {
        sub.recv_publish();
    }
    // The figures are those of the last publish: wait for one after the traffic.
    let deadline = Instant::now() + IO_TIMEOUT;
    let topics = loop {
        let t = sys_topics(&broker);
        if t.get("$SYS/broker/messages/received").map(String::as_str) == Some("25") {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no $SYS publish after the traffic: {t:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let v = |k: &str| {
        topics
            .get(k)
            .unwrap_or_else(|| panic!("{k} not received: {topics:?}"))
            .as_str()
    };
    assert_eq!(topics.len(), 42, "{topics:?}");
    assert_eq!(
        v("$SYS/broker/version"),
        format!("ringmq version {}", env!("CARGO_PKG_VERSION"))
    );
    // Sent counts the $SYS copies to mosquitto_sub too (as Mosquitto does).
    let sent: usize = v("$SYS/broker/messages/sent").parse().unwrap();
    assert!(sent >= N, "sent {sent}");
    assert_eq!(v("$SYS/broker/publish/messages/received"), N.to_string());
    assert_eq!(v("$SYS/broker/clients/expired"), "0");
    assert_eq!(v("$SYS/broker/publish/messages/dropped"), "0");
    assert_eq!(v("$SYS/broker/subscriptions/count"), "1");
    // The two test clients, and perhaps the mosquitto_sub of an earlier round.
    let connected: u64 = v("$SYS/broker/clients/connected").parse().unwrap();
    assert!((2..=3).contains(&connected), "connected {connected}");
    let offline: u64 = v("$SYS/broker/clients/disconnected").parse().unwrap();
    assert_eq!(offline, 0);
    assert_eq!(v("$SYS/broker/clients/total"), connected.to_string());
    assert!(v("$SYS/broker/uptime").ends_with(" seconds"));
    let heap: u64 = v("$SYS/broker/heap/current").parse().unwrap();
    assert!(heap > 0);
    // The $SYS messages themselves are retained, and not counted as client messages.
    let retained: u64 = v("$SYS/broker/retained messages/count").parse().unwrap();
    assert!(retained >= 42, "retained {retained}");
    assert!(v("$SYS/broker/load/messages/received/1min").contains('.'));
    // ringmq's own families, one topic a reason (the table /metrics renders).
    let dropped = sys_filter(&broker, "$SYS/broker/ringmq/messages_dropped/+", &[], 8);
    for reason in [
        "outbound_full",
        "queue_full",
        "too_large",
        "expired",
        "offline_qos0",
        "no_subscriber",
        "memory",
        "mesh_full",
    ] {
        let topic = format!("$SYS/broker/ringmq/messages_dropped/{reason}");
        assert_eq!(
            dropped.get(&topic).map(String::as_str),
            Some("0"),
            "{topic}: {dropped:?}"
        );
    }
}

/// The metric names a PromQL expression reads: identifiers starting `ringmq_` or
/// `process_` (label names and functions never do).
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let starts_word = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        let rest = &expr[i..];
        if starts_word && (rest.starts_with("ringmq_") || rest.starts_with("process_")) {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            names.push(rest[..end].to_string());
            i += end;
        } else {
            i += 1;
        }
    }
    names
}

/// Every `"expr"` and `"query"`/`"definition"` string of the dashboard JSON.
fn dashboard_queries(json: &str) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["\"expr\": \"", "\"definition\": \""] {
        let mut rest = json;
        while let Some(at) = rest.find(key) {
            rest = &rest[at + key.len()..];
            let mut s = String::new();
            let mut chars = rest.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => s.push(chars.next().unwrap_or('\\')),
                    '"' => break,
                    c => s.push(c),
                }
            }
            out.push(s);
        }
    }
    out
}

#[test]
fn every_metric_the_grafana_dashboard_queries_is_exported() {
    let path = support::repo_root().join("deploy/grafana/ringmq.json");
    let json = std::fs::read_to_string(&path).expect("deploy/grafana/ringmq.json");
    let queries = dashboard_queries(&json);
    assert!(queries.len() >= 20, "only {} queries found", queries.len());
    let broker = Launch::new(&["--shards", "2"]).spawn();
    let (status, body) = get(&http_addr(&broker), "/metrics");
    assert_eq!(status, 200);
    // A histogram is queried through its `_bucket`, `_sum` and `_count` series.
    let mut exported = std::collections::HashSet::new();
    for l in body.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = l.split_once(' ').expect("TYPE name kind");
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                exported.insert(format!("{name}{suffix}"));
            }
        }
        exported.insert(name.to_string());
    }
    let mut checked = 0;
    for q in &queries {
        for name in metric_names(q) {
            assert!(
                exported.contains(name.as_str()),
                "{name} (in {q:?}) is not exported"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= queries.len(),
        "a query names no metric: {queries:?}"
    );
}

#[test]
fn metric_names_are_read_from_promql() {
    assert_eq!(
        metric_names(r#"sum by (reason) (rate(ringmq_x_total{instance=~"$i"}[1m])) / process_y"#),
        ["ringmq_x_total", "process_y"]
    );
    assert!(metric_names("label_values(instance)").is_empty());
}

#[test]
fn per_client_sys_events_are_published_when_turned_on_and_only_then() {
    let broker = Launch::new(&[
        "--shards",
        "2",
        "--sys-client-events",
        "true",
        "--sys-interval-s",
        "0",
    ])
    .spawn();
    let mut watch = RawClient::connect_v311(broker.addr(), &uniq("watch"));
    watch.subscribe_ok(1, "$SYS/broker/clients/+/+", 0);
    let id = uniq("evt");
    let c = RawClient::connect_v311(broker.addr(), &id);
    let m = watch.recv_publish();
    assert_eq!(m.topic, format!("$SYS/broker/clients/{id}/connected"));
    assert!(!m.retain, "events are not retained");
    let p = String::from_utf8(m.payload).expect("UTF-8 payload");
    assert!(
        p.starts_with(&format!("{{\"clientid\":\"{id}\","))
            && p.ends_with(",\"protocol\":4,\"clean_start\":true,\"keepalive_s\":60}"),
        "{p}"
    );
    c.disconnect();
    let m = watch.recv_publish();
    assert_eq!(m.topic, format!("$SYS/broker/clients/{id}/disconnected"));
    assert_eq!(
        String::from_utf8(m.payload).unwrap(),
        format!("{{\"clientid\":\"{id}\",\"normal\":true}}")
    );

    // Off by default: a connect and a disconnect, then a marker, which comes first.
    let quiet = Launch::new(&["--shards", "1", "--sys-interval-s", "0"]).spawn();
    let mut w = RawClient::connect_v311(quiet.addr(), &uniq("w"));
    w.subscribe_ok(1, "$SYS/broker/clients/+/+", 0);
    w.subscribe_ok(2, "mark", 0);
    RawClient::connect_v311(quiet.addr(), &uniq("q")).disconnect();
    let mut p = RawClient::connect_v311(quiet.addr(), &uniq("p"));
    p.publish("mark", 0, false, 0, b"m");
    assert_eq!(w.recv_publish().topic, "mark");
}
