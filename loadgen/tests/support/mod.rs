//! Test support: start a broker (ringmq, else Mosquitto) and a tiny io_uring
//! accept-and-hold MQTT server that can hold more connections than RLIMIT_NOFILE.
#![allow(dead_code)]

pub mod holdserver;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A broker process we started; killed by PID on drop.
pub struct Broker {
    child: Child,
    pub port: u16,
    pub name: String,
    _dir: Option<std::path::PathBuf>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self._dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

pub fn free_port() -> u16 {
    let l =
        std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 for a free port");
    l.local_addr().expect("local_addr").port()
}

fn wait_listening(child: &mut Child, port: u16) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn ringmq_bin() -> std::path::PathBuf {
    match std::env::var_os("RINGMQ_BIN") {
        Some(p) => p.into(),
        None => std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/ringmq"),
    }
}

/// Starts ringmq (`$RINGMQ_BIN` or `<workspace>/target/debug/ringmq`) on a free port;
/// if it is missing or does not accept connections, Mosquitto. Panics naming both
/// attempts when neither starts: a test without a broker is a failure, not a skip.
pub fn start_broker() -> Broker {
    let mut tried = Vec::new();
    let bin = ringmq_bin();
    let port = free_port();
    match Command::new(&bin)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            if wait_listening(&mut child, port) {
                return Broker {
                    child,
                    port,
                    name: format!("ringmq ({})", bin.display()),
                    _dir: None,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            tried.push(format!(
                "{} did not accept on 127.0.0.1:{port} within 5 s",
                bin.display()
            ));
        }
        Err(e) => tried.push(format!("{}: {e}", bin.display())),
    }
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("loadgen-mosq-{}-{port}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let conf = dir.join("mosquitto.conf");
    let text = format!(
        "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 0\nmax_queued_messages 100000\nset_tcp_nodelay true\n"
    );
    if let Err(e) = std::fs::write(&conf, text) {
        panic!("writing {}: {e}", conf.display());
    }
    for mosq in ["mosquitto", "/usr/sbin/mosquitto"] {
        match Command::new(mosq)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(mut child) => {
                if wait_listening(&mut child, port) {
                    return Broker {
                        child,
                        port,
                        name: format!("mosquitto ({mosq})"),
                        _dir: Some(dir),
                    };
                }
                let _ = child.kill();
                let _ = child.wait();
                tried.push(format!(
                    "{mosq} did not accept on 127.0.0.1:{port} within 5 s"
                ));
            }
            Err(e) => tried.push(format!("{mosq}: {e}")),
        }
    }
    panic!(
        "no MQTT broker could be started for the loadgen integration tests; build ringmq \
         (`cargo build --bin ringmq`, or set RINGMQ_BIN) or install mosquitto. Tried: {}",
        tried.join("; ")
    );
}

/// Runs the loadgen binary with `args` plus `--json`; returns (exit code, parsed JSON, stderr).
pub fn loadgen(args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .arg("--json")
        .stdin(Stdio::null())
        .output()
        .expect("running the loadgen binary");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let line = stdout.lines().last().unwrap_or_default();
    let json = serde_json::from_str(line).unwrap_or_else(|e| {
        panic!("loadgen {args:?} printed no JSON line ({e}); stdout: {stdout}\nstderr: {stderr}")
    });
    (out.status.code().unwrap_or(-1), json, stderr)
}
