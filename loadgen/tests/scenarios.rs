//! Every scenario, briefly, against this workspace's ringmq (built through Cargo).
//! A broker that does not start fails the test; there is no fallback broker.

mod support;

fn run(broker: &support::Broker, args: &[&str]) -> serde_json::Value {
    let port = broker.port.to_string();
    let mut all = vec![];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "--port",
        &port,
        "--warmup",
        "200ms",
        "--duration",
        "1s",
        "--drain",
        "3s",
    ]);
    let (code, j, stderr) = support::loadgen(&all);
    eprintln!("[{}] {args:?}: {stderr}", broker.name);
    assert_eq!(
        code, 0,
        "loadgen {all:?} exit code; json {j}; stderr {stderr}"
    );
    assert_eq!(j["errors_total"], 0, "{j}");
    assert_eq!(j["connections_failed"], 0, "{j}");
    assert_eq!(j["unexpected"], 0, "{j}");
    assert_eq!(j["unclean_closes"], 0, "{j}");
    // ringmq closes every connection after its DISCONNECT, as MQTT has the server do,
    // so loadgen never had to close one first.
    assert_eq!(j["closed_before_broker"], 0, "{j}");
    j
}

/// QoS >= 1 runs must deliver every message exactly as often as expected.
fn assert_complete(j: &serde_json::Value) {
    assert_eq!(j["lost"], 0, "{j}");
    assert_eq!(j["out_of_order"], 0, "{j}");
    assert_eq!(j["delivered"], j["expected"], "{j}");
    assert!(
        j["expected"].as_u64().unwrap_or(0) > 0,
        "no messages flowed: {j}"
    );
    assert!(j["latency_us"]["count"].as_u64().unwrap_or(0) > 0, "{j}");
}

#[test]
fn fanin_qos1() {
    let b = support::start_broker();
    let j = run(
        &b,
        &[
            "fanin",
            "--publishers",
            "3",
            "--subscribers",
            "2",
            "--qos",
            "1",
            "--rate",
            "200",
        ],
    );
    assert_complete(&j);
    assert_eq!(j["connections_established"], 5);
    // Every message goes to both subscribers.
    assert_eq!(j["expected"].as_u64().unwrap_or(1) % 2, 0, "{j}");
}

/// The default window at QoS 1 keeps a 100-publisher fan-in's undelivered messages
/// within ringmq's default queue (1,000), so an unpaced closed loop loses nothing;
/// at the old default (16 per publisher) ringmq dropped some as `queue_full`.
#[test]
fn fanin_qos1_default_window_fits_the_default_queue() {
    let b = support::start_broker();
    let j = run(
        &b,
        &[
            "fanin",
            "--publishers",
            "100",
            "--subscribers",
            "1",
            "--qos",
            "1",
        ],
    );
    assert_eq!(j["window"], 10, "{j}");
    assert_complete(&j);
    // Linux says how long the threads waited for a CPU.
    assert!(j["runq_wait_pct"].as_f64().is_some(), "{j}");
}

#[test]
fn fanin_qos0_closed_loop() {
    let b = support::start_broker();
    let j = run(
        &b,
        &[
            "fanin",
            "--publishers",
            "2",
            "--subscribers",
            "1",
            "--qos",
            "0",
            "--threads",
            "2",
            "--window",
            "16",
        ],
    );
    assert_eq!(j["connections_established"], 3);
    assert!(j["delivered"].as_u64().unwrap_or(0) > 0, "{j}");
    // Send batching: a publisher with messages in flight waits for half its window
    // (8) to be free, so no send carries fewer (the subscriber sends nothing at QoS 0).
    let per_send = j["msgs_per_send"].as_f64().unwrap_or(0.0);
    assert!(per_send >= 8.0, "{j}");
    assert!(
        j["cpu_us_per_msg"].as_f64().is_some_and(|us| us > 0.0),
        "{j}"
    );
}

#[test]
fn fanout_qos2() {
    let b = support::start_broker();
    let j = run(
        &b,
        &[
            "fanout",
            "--clients",
            "4",
            "--qos",
            "2",
            "--rate",
            "100",
            "--protocol",
            "5",
        ],
    );
    assert_complete(&j);
    assert_eq!(j["duplicates"], 0, "QoS 2 is exactly once: {j}");
    assert_eq!(j["expected"].as_u64().unwrap_or(1) % 4, 0, "{j}");
}

#[test]
fn pairs_qos1_open_loop() {
    let b = support::start_broker();
    let j = run(
        &b,
        &[
            "pairs",
            "--clients",
            "5",
            "--qos",
            "1",
            "--rate",
            "100",
            "--open-loop",
            "--threads",
            "2",
        ],
    );
    assert_complete(&j);
    assert_eq!(j["connections_established"], 10);
}

#[test]
fn fleet_qos1_round_trips() {
    let b = support::start_broker();
    let j = run(
        &b,
        &[
            "fleet",
            "--clients",
            "20",
            "--qos",
            "1",
            "--interval",
            "100ms",
            "--cmd-rate",
            "50",
        ],
    );
    assert_complete(&j);
    assert_eq!(j["connections_established"], 22);
    assert!(j["rtt_us"]["count"].as_u64().unwrap_or(0) > 0, "{j}");
}

#[test]
fn connect_hold_and_disconnect() {
    let b = support::start_broker();
    let port = b.port.to_string();
    let (code, j, stderr) = support::loadgen(&[
        "--port",
        &port,
        "--clients",
        "200",
        "--rate",
        "2000",
        "--hold",
        "500ms",
    ]);
    assert_eq!(code, 0, "{j} {stderr}");
    assert_eq!(j["scenario"], "connect");
    assert_eq!(j["connections_established"], 200, "{j}");
    assert_eq!(j["errors_total"], 0, "{j}");
    // ringmq closed each connection after its DISCONNECT; loadgen then reset its end.
    assert_eq!(j["unclean_closes"], 0, "{j}");
    assert_eq!(j["closed_before_broker"], 0, "{j}");
    assert!(j["teardown_cpu_s"].as_f64().is_some(), "{j}");
}

/// A storm's reconnect resumes every session the first round made (Session Present
/// on every CONNACK), on two loops (so about half the sessions live on the loop that
/// did not accept the reconnect), and reports the broker's CPU over it.
#[test]
fn storm_resumes_every_session() {
    let b = support::start_broker_with(&["--shards", "2"]);
    let (port, pid) = (b.port.to_string(), b.pid().to_string());
    let (code, j, stderr) = support::loadgen(&[
        "storm",
        "--port",
        &port,
        "--clients",
        "300",
        "--hold",
        "0s",
        "--broker-pid",
        &pid,
    ]);
    assert_eq!(code, 0, "{j} {stderr}");
    assert_eq!(j["scenario"], "storm");
    assert_eq!(j["storm"]["first_round_established"], 300, "{j}");
    assert_eq!(j["storm"]["sessions_present"], 300, "{j}");
    assert_eq!(j["connections_established"], 300, "{j}");
    assert_eq!(j["connect_latency_us"]["count"], 300, "{j}");
    assert_eq!(j["errors_total"], 0, "{j}");
    assert!(j["broker_cpu_s"].as_f64().is_some(), "{j}");
    assert!(j["broker_teardown_cpu_s"].as_f64().is_some(), "{j}");
    assert_eq!(j["closed_before_broker"], 0, "{j}");
    assert!(
        stderr.contains("300 of 300 CONNACKs with session present"),
        "{stderr}"
    );
}

/// `--broker-pid` naming no process is refused up front, naming the flag and the
/// value (exit 2).
#[test]
fn storm_broker_pid_must_exist() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["storm", "--clients", "1", "--broker-pid", "4000000000"])
        .output()
        .expect("running loadgen");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broker-pid") && err.contains("4000000000"),
        "{err}"
    );
}

#[test]
fn refused_connections_exit_3() {
    // Nothing listens on this port: every connect is refused.
    let port = support::free_port().to_string();
    let (code, j, _) = support::loadgen(&[
        "--port",
        &port,
        "--clients",
        "10",
        "--hold",
        "0s",
        "--connect-timeout",
        "5s",
    ]);
    assert_eq!(code, 3, "{j}");
    assert_eq!(j["connections_failed"], 10, "{j}");
    assert_eq!(
        j["errors"]["connect: Connection refused (os error 111)"], 10,
        "{j}"
    );
}

#[test]
fn outputs_hgrm_and_plot() {
    let b = support::start_broker();
    let dir = std::env::temp_dir().join(format!("loadgen-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let hgrm = dir.join("lat.hgrm");
    let svg = dir.join("lat.svg");
    let j = run(
        &b,
        &[
            "pairs",
            "--clients",
            "2",
            "--qos",
            "1",
            "--rate",
            "500",
            "--hgrm",
            hgrm.to_str().unwrap_or_default(),
            "--plot",
            svg.to_str().unwrap_or_default(),
        ],
    );
    let text = std::fs::read_to_string(&hgrm).expect("hgrm written");
    let last = text
        .lines()
        .rev()
        .find(|l| !l.starts_with('#') && !l.trim().is_empty())
        .unwrap_or_default();
    let total: u64 = last
        .split_whitespace()
        .nth(2)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    assert_eq!(
        total,
        j["latency_us"]["count"].as_u64().unwrap_or(u64::MAX),
        "{text}"
    );
    let plot = std::fs::read_to_string(&svg).expect("svg written");
    assert!(
        plot.starts_with("<svg") && plot.contains("<polyline"),
        "{plot}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn broker_closing_before_connack_fails_every_attempt() {
    // A "broker" that reads CONNECT and hangs up: every attempt must end as a failure and
    // free its connect-inflight slot, so all 10 are attempted with only 2 in flight.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    listener.set_nonblocking(true).expect("nonblocking");
    let server = std::thread::spawn(move || {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let mut served = 0;
        while served < 10 && std::time::Instant::now() < end {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let mut buf = [0u8; 64];
                    let _ = std::io::Read::read(&mut s, &mut buf);
                    served += 1;
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
    });
    let (code, j, stderr) = support::loadgen(&[
        "--port",
        &port,
        "--clients",
        "10",
        "--connect-inflight",
        "2",
        "--hold",
        "0s",
        "--connect-timeout",
        "20s",
        "--src-ips",
        "none",
    ]);
    let _ = server.join();
    assert_eq!(code, 3, "{j} {stderr}");
    assert_eq!(j["connections_failed"], 10, "{j}");
    assert_eq!(
        j["errors"]["connection closed by broker (AwaitConnAck)"], 10,
        "{j}"
    );
}

/// `--transport ws`: every scenario runs over WebSocket, complete at QoS >= 1.
#[test]
fn every_scenario_over_websocket() {
    let b = support::start_ws_broker();
    fn with<'a>(args: &[&'a str]) -> Vec<&'a str> {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--transport", "ws"]);
        all
    }
    let j = run(
        &b,
        &with(&[
            "fanin",
            "--publishers",
            "3",
            "--subscribers",
            "2",
            "--qos",
            "1",
            "--rate",
            "200",
        ]),
    );
    assert_complete(&j);
    let j = run(
        &b,
        &with(&["fanout", "--clients", "5", "--qos", "2", "--rate", "100"]),
    );
    assert_complete(&j);
    let j = run(&b, &with(&["pairs", "--clients", "4", "--qos", "1"]));
    assert_complete(&j);
    let j = run(
        &b,
        &with(&[
            "fleet",
            "--clients",
            "10",
            "--qos",
            "1",
            "--interval",
            "100ms",
            "--cmd-rate",
            "20",
        ]),
    );
    assert_complete(&j);
    let j = run(&b, &with(&["fanin", "--publishers", "2", "--qos", "0"]));
    assert!(j["delivered"].as_u64().unwrap_or(0) > 0, "{j}");
    let j = run(
        &b,
        &with(&["connect", "--clients", "200", "--hold", "200ms"]),
    );
    assert_eq!(j["connections_established"], 200, "{j}");
    // A wrong path is refused by the broker (404) and said so.
    let port = b.port.to_string();
    let (code, j, stderr) = support::loadgen(&[
        "connect",
        "--clients",
        "3",
        "--hold",
        "100ms",
        "--transport",
        "ws",
        "--ws-path",
        "/nope",
        "--port",
        &port,
    ]);
    assert_eq!(code, 3, "connection failures exit 3: {j} {stderr}");
    assert!(
        stderr.contains("WebSocket upgrade refused: HTTP/1.1 404 Not Found"),
        "{stderr}"
    );
}

/// `loadgen sn`: MQTT-SN clients over UDP to the broker's gateway and TCP peers;
/// every message arrives both ways (low rate on loopback; SN publishes at QoS 1).
#[test]
fn sn_gateway_both_ways() {
    let sn_port = support::free_port().to_string();
    let b = support::start_broker_with(&["--mqttsn-listen", &format!("127.0.0.1:{sn_port}")]);
    let port = b.port.to_string();
    let (code, j, stderr) = support::loadgen(&[
        "sn",
        "--port",
        &port,
        "--sn-port",
        &sn_port,
        "--clients",
        "50",
        "--qos",
        "1",
        "--total-rate",
        "200",
        "--cmd-rate",
        "50",
        "--duration",
        "1s",
        "--drain",
        "2s",
    ]);
    assert_eq!(code, 0, "json {j}; stderr {stderr}");
    for way in ["sn_to_tcp", "tcp_to_sn"] {
        assert!(j[way]["sent"].as_u64().unwrap_or(0) > 0, "{way}: {j}");
        assert_eq!(j[way]["received"], j[way]["sent"], "{way}: {j}");
    }
}

/// `--tls` with `--ca-file` and `--username/--password`: a QoS 1 fan-in over mqtts
/// against a broker with a password file, every message delivered; certificates
/// made here (a CA and a leaf for localhost). Without --ca-file: exit 2 naming it.
#[test]
fn fanin_qos1_over_tls_with_password() {
    let dir = std::env::temp_dir().join(format!("loadgen-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let path = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p.to_str().unwrap().to_owned()
    };
    let ca_file = path("ca.pem", &ca.pem());
    let cert = path("cert.pem", &leaf.pem());
    let key = path("key.pem", &leaf_key.serialize_pem());
    let passwd = dir.join("passwd");
    let out = std::process::Command::new(support::ringmq_bin())
        .args(["passwd", "add", "--create"])
        .arg(&passwd)
        .args(["lg", "--password", "secret"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("ringmq passwd");
    assert!(out.status.success(), "{out:?}");
    let b = support::start_broker_scheme(
        "mqtts",
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--password-file",
            passwd.to_str().unwrap(),
        ],
    );
    let j = run(
        &b,
        &[
            "fanin",
            "--publishers",
            "3",
            "--subscribers",
            "1",
            "--qos",
            "1",
            "--rate",
            "200",
            "--tls",
            "--ca-file",
            &ca_file,
            "--username",
            "lg",
            "--password",
            "secret",
        ],
    );
    assert_complete(&j);
    assert_eq!(j["connections_established"], 4);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["fanin", "--tls", "--port", "1"])
        .output()
        .expect("run loadgen");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("'--tls'") && stderr.contains("--ca-file"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
