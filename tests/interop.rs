//! Interoperability with real clients, each as MQTT 3.1.1 and 5.0:
//! Mosquitto's `mosquitto_pub`/`mosquitto_sub`, Eclipse Paho Python
//! (`tests/interop/paho_check.py`) and Node.js `mqtt` (`tests/interop/node/`). Each does
//! pub/sub at QoS 0/1/2, a retained message, a will on an abrupt close and a
//! persistent-session resume. The broker runs 4 shards and every client id is chosen so
//! that publisher and subscribers live on different shards ([`placed_id`]). Every external program runs under a bounded timeout and
//! is killed by PID. A missing tool FAILS the test: `tests/install-deps.sh` installs them.

mod support;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::*;

const TOOL_TIMEOUT: Duration = Duration::from_secs(60);
const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// A long-running external client whose stdout lines are streamed to the test.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    what: String,
}

impl Running {
    fn spawn(cmd: &mut Command, what: &str) -> Running {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let out = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines: rx,
            seen: Vec::new(),
            what: what.to_string(),
        }
    }

    /// Waits for a stdout line equal to `want`; returns false on timeout.
    fn wait_line(&mut self, want: &str, timeout: Duration) -> bool {
        if self.seen.iter().any(|l| l == want) {
            return true;
        }
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line == want;
                    self.seen.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    fn expect_line(&mut self, want: &str) {
        if !self.wait_line(want, LINE_TIMEOUT) {
            let stderr = self.kill_and_stderr();
            panic!(
                "{}: no line {want:?} within {LINE_TIMEOUT:?}; stdout: {:?}; stderr: {stderr}",
                self.what, self.seen
            );
        }
    }

    fn kill_and_stderr(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    /// SIGKILL: the client's socket closes without DISCONNECT.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion within [`TOOL_TIMEOUT`]; returns (status ok, stdout, stderr).
fn run(cmd: &mut Command, what: &str) -> (bool, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait_or_kill(&mut child, TOOL_TIMEOUT);
    let (o, e) = (
        t_out.join().unwrap_or_default(),
        t_err.join().unwrap_or_default(),
    );
    match status {
        None => panic!("{what} did not finish within {TOOL_TIMEOUT:?}; stdout:\n{o}\nstderr:\n{e}"),
        Some(st) => (st.success(), o, e),
    }
}

// ---------------------------------------------------------------------------------------
// mosquitto_pub / mosquitto_sub
// ---------------------------------------------------------------------------------------

fn mosq_version(v5: bool) -> &'static str {
    if v5 {
        "mqttv5"
    } else {
        "mqttv311"
    }
}

fn mosquitto_sub(b: &Broker, v5: bool, args: &[&str]) -> Command {
    let mut c = Command::new(require_tool("mosquitto_sub"));
    c.args([
        "-h",
        b.host(),
        "-p",
        &b.port().to_string(),
        "-V",
        mosq_version(v5),
    ])
    .args(args);
    c
}

fn mosquitto_pub(b: &Broker, v5: bool, args: &[&str]) -> Command {
    let mut c = Command::new(require_tool("mosquitto_pub"));
    c.args([
        "-h",
        b.host(),
        "-p",
        &b.port().to_string(),
        "-V",
        mosq_version(v5),
    ])
    .args(args);
    c
}

/// A raw-bytes client whose session the broker keeps on `shard` (see [`placed_id`]).
fn raw(b: &Broker, v5: bool, tag: &str, shard: usize) -> RawClient {
    let id = placed_id(tag, shard);
    if v5 {
        RawClient::connect_v5(b.addr(), &id).0
    } else {
        RawClient::connect_v311(b.addr(), &id)
    }
}

/// Publishes QoS 0 probes on `topic` until the running subscriber prints
/// `"{topic} probe"`: then its subscription is known to be in place.
fn probe_until_subscribed(sub: &mut Running, p: &mut RawClient, topic: &str) {
    let line = format!("{topic} probe");
    let deadline = Instant::now() + LINE_TIMEOUT;
    while Instant::now() < deadline {
        p.publish_complete(topic, 0, false, 0, b"probe");
        if sub.wait_line(&line, Duration::from_millis(250)) {
            return;
        }
    }
    let stderr = sub.kill_and_stderr();
    panic!(
        "{}: subscription never became active; stdout {:?}; stderr {stderr}",
        sub.what, sub.seen
    );
}

fn mosq_sub_receives_qos012(v5: bool) {
    let b = Broker::placed();
    let t = format!("mq/{}", uniq("t"));
    let filter = format!("{t}/#");
    let mut sub = Running::spawn(
        &mut mosquitto_sub(
            &b,
            v5,
            &["-t", &filter, "-q", "2", "-v", "-i", &placed_id("msub", 1)],
        ),
        "mosquitto_sub",
    );
    let mut p = raw(&b, v5, "mpub", 0);
    let probe = format!("{t}/probe");
    probe_until_subscribed(&mut sub, &mut p, &probe);
    for q in 0..=2u8 {
        p.publish_complete(
            &format!("{t}/{q}"),
            q,
            false,
            u16::from(q) + 1,
            format!("m{q}").as_bytes(),
        );
    }
    for q in 0..=2u8 {
        sub.expect_line(&format!("{t}/{q} m{q}"));
    }
    sub.kill();
}

fn mosq_pub_qos012(v5: bool) {
    let b = Broker::placed();
    let t = format!("mq/{}", uniq("t"));
    let mut s = raw(&b, v5, "msubr", 2);
    s.subscribe_ok(1, &format!("{t}/#"), 2);
    for q in 0..=2u8 {
        let (ok, o, e) = run(
            &mut mosquitto_pub(
                &b,
                v5,
                &[
                    "-q",
                    &q.to_string(),
                    "-t",
                    &format!("{t}/{q}"),
                    "-m",
                    &format!("m{q}"),
                    "-i",
                    &placed_id("mpb", 0),
                ],
            ),
            "mosquitto_pub",
        );
        assert!(ok, "mosquitto_pub -q {q} failed; stdout {o}; stderr {e}");
        let m = s.recv_publish_ack();
        assert_eq!(
            (m.topic, m.qos, m.payload),
            (format!("{t}/{q}"), q, format!("m{q}").into_bytes())
        );
    }
}

fn mosq_retained(v5: bool) {
    let b = Broker::placed();
    let t = format!("mq/{}", uniq("t"));
    let (ok, o, e) = run(
        &mut mosquitto_pub(
            &b,
            v5,
            &[
                "-r",
                "-q",
                "1",
                "-t",
                &t,
                "-m",
                "kept",
                "-i",
                &placed_id("mrp", 0),
            ],
        ),
        "mosquitto_pub -r",
    );
    assert!(ok, "mosquitto_pub -r failed; stdout {o}; stderr {e}");
    let (ok, o, e) = run(
        &mut mosquitto_sub(
            &b,
            v5,
            &[
                "-t",
                &t,
                "-q",
                "1",
                "-C",
                "1",
                "-W",
                "10",
                "-F",
                "%r %q %t %p",
                "-i",
                &placed_id("mrs", 2),
            ],
        ),
        "mosquitto_sub (retained)",
    );
    assert!(
        ok,
        "mosquitto_sub got no retained message; stdout {o}; stderr {e}"
    );
    assert_eq!(o.trim_end(), format!("1 1 {t} kept"));
    // Delete with an empty retained payload: a new subscriber then gets nothing.
    let (ok, _, e) = run(
        &mut mosquitto_pub(
            &b,
            v5,
            &["-r", "-q", "1", "-t", &t, "-n", "-i", &placed_id("mrc", 1)],
        ),
        "mosquitto_pub -r -n",
    );
    assert!(ok, "{e}");
    let mut s = raw(&b, v5, "mret", 3);
    s.subscribe_ok(1, &t, 1);
    s.expect_silence();
}

fn mosq_will(v5: bool) {
    let b = Broker::placed();
    let u = uniq("t");
    let (t, wt) = (format!("mq/{u}/alive"), format!("mq/{u}/will"));
    let mut w = raw(&b, v5, "mwat", 3);
    w.subscribe_ok(1, &wt, 1);
    let mut sub = Running::spawn(
        &mut mosquitto_sub(
            &b,
            v5,
            &[
                "-t",
                &t,
                "-v",
                "--will-topic",
                &wt,
                "--will-payload",
                "gone",
                "--will-qos",
                "1",
                "-i",
                &placed_id("mwill", 1),
            ],
        ),
        "mosquitto_sub (will)",
    );
    let mut p = raw(&b, v5, "mwp", 0);
    probe_until_subscribed(&mut sub, &mut p, &t);
    sub.kill();
    let m = w.recv_publish_ack();
    assert_eq!((m.topic, m.qos, m.payload), (wt, 1, b"gone".to_vec()));
}

fn mosq_session(v5: bool) {
    let b = Broker::placed();
    let t = format!("mq/{}", uniq("t"));
    let id = placed_id("msess", 2);
    let mut args = vec!["-c", "-i", &id, "-q", "1", "-t", &t, "-v"];
    if v5 {
        args.extend(["-x", "60"]);
    }
    let mut sub = Running::spawn(&mut mosquitto_sub(&b, v5, &args), "mosquitto_sub -c");
    let mut p = raw(&b, v5, "msp", 0);
    probe_until_subscribed(&mut sub, &mut p, &t);
    sub.kill();
    p.publish_complete(&t, 1, false, 1, b"offline");
    let mut again = Running::spawn(
        &mut mosquitto_sub(&b, v5, &args),
        "mosquitto_sub -c (resume)",
    );
    again.expect_line(&format!("{t} offline"));
    again.kill();
}

#[test]
fn mosquitto_cli_v311_sub_receives_qos012() {
    mosq_sub_receives_qos012(false);
}
#[test]
fn mosquitto_cli_v5_sub_receives_qos012() {
    mosq_sub_receives_qos012(true);
}
#[test]
fn mosquitto_cli_v311_pub_qos012() {
    mosq_pub_qos012(false);
}
#[test]
fn mosquitto_cli_v5_pub_qos012() {
    mosq_pub_qos012(true);
}
#[test]
fn mosquitto_cli_v311_retained() {
    mosq_retained(false);
}
#[test]
fn mosquitto_cli_v5_retained() {
    mosq_retained(true);
}
#[test]
fn mosquitto_cli_v311_will() {
    mosq_will(false);
}
#[test]
fn mosquitto_cli_v5_will() {
    mosq_will(true);
}
#[test]
fn mosquitto_cli_v311_persistent_session() {
    mosq_session(false);
}
#[test]
fn mosquitto_cli_v5_persistent_session() {
    mosq_session(true);
}

// ---------------------------------------------------------------------------------------
// Paho Python and Node.js mqtt: scripted scenarios
// ---------------------------------------------------------------------------------------

/// A Python that can import paho-mqtt: `RINGMQ_PYTHON`, else Debian's `/usr/bin/python3`
/// (where python3-paho-mqtt installs), else `python3` on PATH.
fn paho_python() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("RINGMQ_PYTHON") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(PathBuf::from("/usr/bin/python3"));
    if let Some(p) = find_in_path("python3") {
        candidates.push(p);
    }
    for py in &candidates {
        if !py.is_file() {
            continue;
        }
        let ok = Command::new(py)
            .args(["-c", "import paho.mqtt.client"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return py.clone();
        }
    }
    panic!(
        "no python3 with paho-mqtt found (tried {candidates:?}): run `bash tests/install-deps.sh`"
    );
}

fn check_script_output(what: &str, (ok, out, err): (bool, String, String)) {
    assert!(ok, "{what} failed:\nstdout:\n{out}\nstderr:\n{err}");
    for scenario in ["pubsub", "retained", "will", "session"] {
        assert!(
            out.lines().any(|l| l == format!("ok {scenario}")),
            "{what}: scenario {scenario} not reported ok:\n{out}"
        );
    }
}

/// `--ids` for the paho and mqtt.js scripts: `role=client id,...`, each role's session on
/// its own shard so that every scenario crosses shards (publishers on shard 0).
fn script_ids(tag: &str) -> String {
    [
        ("s", 1),  // pubsub subscriber
        ("p", 0),  // pubsub publisher
        ("rp", 0), // retained publisher
        ("rs", 2), // retained subscriber
        ("ww", 3), // will watcher
        ("wd", 1), // client that dies with a will
        ("ps", 2), // persistent-session subscriber
        ("pp", 0), // persistent-session publisher
    ]
    .iter()
    .map(|(role, shard)| format!("{role}={}", placed_id(tag, *shard)))
    .collect::<Vec<_>>()
    .join(",")
}

fn paho(version: &str) {
    let py = paho_python();
    let b = Broker::placed();
    let script = repo_root().join("tests/interop/paho_check.py");
    let mut cmd = Command::new(py);
    cmd.arg(&script).args([
        "--host",
        b.host(),
        "--port",
        &b.port().to_string(),
        "--version",
        version,
        "--prefix",
        &uniq("paho"),
        "--ids",
        &script_ids("paho"),
    ]);
    check_script_output(
        &format!("paho MQTT {version}"),
        run(&mut cmd, "paho_check.py"),
    );
}

#[test]
fn paho_python_v311() {
    paho("311");
}

#[test]
fn paho_python_v5() {
    paho("5");
}

fn node_dir() -> PathBuf {
    repo_root().join("tests/interop/node")
}

fn node(version: &str) {
    let node = require_tool("node");
    let dir = node_dir();
    assert!(
        Path::new(&dir.join("node_modules/mqtt/package.json")).is_file(),
        "Node.js package `mqtt` is not installed in {}: run `bash tests/install-deps.sh` (npm ci)",
        dir.display()
    );
    let b = Broker::placed();
    let mut cmd = Command::new(node);
    cmd.current_dir(&dir).arg("mqtt_check.js").args([
        "--host",
        b.host(),
        "--port",
        &b.port().to_string(),
        "--version",
        version,
        "--prefix",
        &uniq("node"),
        "--ids",
        &script_ids("node"),
    ]);
    check_script_output(
        &format!("node mqtt MQTT {version}"),
        run(&mut cmd, "mqtt_check.js"),
    );
}

#[test]
fn node_mqtt_v311() {
    node("311");
}

#[test]
fn node_mqtt_v5() {
    node("5");
}
