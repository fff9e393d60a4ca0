//! The broker under test as a process: [`Broker`] spawns `ringmq` (or points at a
//! running broker through `RINGMQ_TEST_ADDR`), waits for its listening line, reads
//! its log, stops it; [`test_io`] picks the IO backend from `RINGMQ_TEST_IO`.

use super::*;

/// A broker under test. Spawned ringmq processes are stopped (SIGTERM, then SIGKILL) by
/// PID on drop.
pub struct Broker {
    child: Option<Child>,
    addr: String,
    stderr_tail: Arc<Mutex<Vec<String>>>,
    /// Set by the stderr reader once it read the last line (EOF).
    stderr_done: Arc<AtomicBool>,
    /// Every stderr line up to and including the `listening on` line.
    startup_lines: Vec<String>,
}

/// How to spawn a ringmq process: `ringmq --listen 127.0.0.1:0 ARGS...` with optional
/// environment changes, a startup deadline and stderr echo. [`Launch::spawn`] always
/// starts the real binary (it ignores `RINGMQ_TEST_ADDR`).
pub struct Launch {
    args: Vec<String>,
    env: Vec<(String, Option<String>)>,
    startup_timeout: Duration,
    echo_stderr: bool,
    pre_exec: Option<fn() -> std::io::Result<()>>,
}

impl Launch {
    pub fn new(args: &[&str]) -> Launch {
        Launch {
            args: args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            startup_timeout: STARTUP_TIMEOUT,
            echo_stderr: false,
            pre_exec: None,
        }
    }

    /// Runs `hook` in the forked child just before it execs ringmq, e.g. to install a
    /// seccomp filter the broker then runs under.
    ///
    /// # Safety
    /// The contract of `std::os::unix::process::CommandExt::pre_exec`: `hook` runs in
    /// the child of a multi-threaded process, so it may only make async-signal-safe
    /// calls (no allocation, no locks).
    pub unsafe fn pre_exec(mut self, hook: fn() -> std::io::Result<()>) -> Launch {
        self.pre_exec = Some(hook);
        self
    }

    /// Sets `key=value` in the broker's environment.
    pub fn env(mut self, key: &str, value: &str) -> Launch {
        self.env.push((key.to_string(), Some(value.to_string())));
        self
    }

    /// Removes `key` from the broker's environment.
    pub fn env_remove(mut self, key: &str) -> Launch {
        self.env.push((key.to_string(), None));
        self
    }

    /// How long the broker gets to print its listening address.
    pub fn startup_timeout(mut self, timeout: Duration) -> Launch {
        self.startup_timeout = timeout;
        self
    }

    /// Copies every broker stderr line to the test's stderr as `[ringmq] LINE`.
    pub fn echo_stderr(mut self) -> Launch {
        self.echo_stderr = true;
        self
    }

    pub fn spawn(self) -> Broker {
        Broker::spawn_launch(self)
    }
}

impl Broker {
    /// Starts `ringmq --listen 127.0.0.1:0 ARGS...`, or returns the external broker named
    /// by `RINGMQ_TEST_ADDR` (ARGS are then ignored: that broker has its own config).
    pub fn start(args: &[&str]) -> Broker {
        if let Ok(addr) = std::env::var("RINGMQ_TEST_ADDR") {
            return Broker::external(addr);
        }
        Broker::spawn(args)
    }

    /// The usual broker for conformance tests: two shards so that client ids and topics
    /// spread across shards and cross-shard fan-out is exercised.
    pub fn two_shards() -> Broker {
        Broker::start(&["--shards", "2"])
    }

    /// Like [`Broker::start`] but with `--config tests/profiles/NAME`; an external broker
    /// for profile tests is named by `RINGMQ_TEST_PROFILE_ADDR` (it must be configured
    /// equivalently, e.g. `tests/profiles/mosquitto-interop.conf`).
    pub fn with_profile(name: &str, extra: &[&str]) -> Broker {
        if let Ok(addr) = std::env::var("RINGMQ_TEST_PROFILE_ADDR") {
            return Broker::external(addr);
        }
        let path = profile_path(name);
        let path = path.to_str().expect("profile path is UTF-8").to_string();
        let mut args: Vec<&str> = vec!["--config", &path];
        args.extend_from_slice(extra);
        Broker::spawn(&args)
    }

    fn external(addr: String) -> Broker {
        Broker {
            child: None,
            addr,
            stderr_tail: Arc::new(Mutex::new(Vec::new())),
            stderr_done: Arc::new(AtomicBool::new(true)),
            startup_lines: Vec::new(),
        }
    }

    fn spawn(args: &[&str]) -> Broker {
        Launch::new(args).spawn()
    }

    fn spawn_launch(launch: Launch) -> Broker {
        let Launch {
            args,
            env,
            startup_timeout,
            echo_stderr,
            pre_exec,
        } = launch;
        let bin = env!("CARGO_BIN_EXE_ringmq");
        let mut cmd = Command::new(bin);
        cmd.arg("--listen").arg("127.0.0.1:0");
        // Tests run brokers side by side: each gets its own HTTP port unless it names one.
        if !args.iter().any(|a| a.starts_with("--http-listen")) {
            cmd.arg("--http-listen").arg("127.0.0.1:0");
        }
        cmd.args(&args);
        // A test that names its backend keeps it; the others follow RINGMQ_TEST_IO.
        let names_io = args.iter().any(|a| a == "--io" || a.starts_with("--io="));
        let forced_io = if names_io { None } else { test_io() };
        if let Some(io) = forced_io {
            cmd.arg("--io").arg(io.flag);
        }
        // The broker keys its placement hash at random unless told: tests that place
        // clients on chosen shards ([`id_on_shard`]) need the key they search with.
        let names_seed = args.iter().any(|a| a.starts_with("--placement-seed"));
        if !names_seed {
            cmd.arg("--placement-seed")
                .arg(TEST_PLACEMENT_SEED.to_string());
        }
        for (key, value) in &env {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(hook) = pre_exec {
            // SAFETY: the hook came through the unsafe `Launch::pre_exec`, whose caller
            // promised what `CommandExt::pre_exec` requires (async-signal-safe only).
            unsafe { cmd.pre_exec(hook) };
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {bin}: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let tail = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<(String, Vec<String>)>();
        let tail_w = Arc::clone(&tail);
        let done = Arc::new(AtomicBool::new(false));
        let done_w = Arc::clone(&done);
        // Keep draining stderr for the broker's whole life so it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut startup = Some(Vec::new());
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if echo_stderr {
                    eprintln!("[ringmq] {line}");
                }
                if let Some(lines) = startup.as_mut() {
                    lines.push(line.clone());
                    if let Some(addr) = parse_listening(&line) {
                        let lines = startup.take().unwrap_or_default();
                        let _ = tx.send((addr, lines));
                    }
                }
                let mut t = tail_w.lock().unwrap_or_else(|e| e.into_inner());
                if t.len() >= 200 {
                    t.remove(0);
                }
                t.push(line);
            }
            done_w.store(true, Ordering::Release);
        });
        let deadline = Instant::now() + startup_timeout;
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok((addr, startup_lines)) => {
                    if let Some(io) = forced_io {
                        let line = startup_lines.last().map(String::as_str).unwrap_or("");
                        let backend = line
                            .split_once(" (")
                            .and_then(|(_, tail)| tail.split(',').next());
                        if backend != Some(io.backend) {
                            // No `Broker` owns the child yet: stop it before failing.
                            let _ = child.kill();
                            let _ = child.wait();
                            panic!(
                                "RINGMQ_TEST_IO={}: ringmq {args:?} did not run on {}: {line:?}",
                                io.flag, io.backend
                            );
                        }
                    }
                    return Broker {
                        child: Some(child),
                        addr,
                        stderr_tail: tail,
                        stderr_done: done,
                        startup_lines,
                    };
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        std::thread::sleep(Duration::from_millis(100));
                        panic!(
                            "ringmq {args:?} exited with {status} before listening; stderr:\n{}",
                            tail.lock().unwrap().join("\n")
                        );
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "ringmq {args:?} printed no 'listening on' line within {startup_timeout:?}; stderr:\n{}",
                            tail.lock().unwrap().join("\n")
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait();
                    panic!(
                        "ringmq {args:?} closed stderr before listening ({status:?}); stderr:\n{}",
                        tail.lock().unwrap().join("\n")
                    );
                }
            }
        }
    }

    /// `host:port` of the broker.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn host(&self) -> &str {
        self.addr
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or("127.0.0.1")
    }

    pub fn port(&self) -> u16 {
        self.addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .expect("broker address has a port")
    }

    pub fn is_spawned(&self) -> bool {
        self.child.is_some()
    }

    /// Last lines the broker wrote to stderr (for failure messages).
    pub fn stderr_tail(&self) -> String {
        self.stderr_tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n")
    }

    /// Every stderr line up to and including the `listening on` line (empty for an
    /// external broker).
    pub fn startup_lines(&self) -> &[String] {
        &self.startup_lines
    }

    /// The HTTP listener's address from the `ringmq http on ADDR` start-up line;
    /// `None` when the broker runs without one.
    pub fn http_addr(&self) -> Option<String> {
        self.startup_lines.iter().find_map(|l| {
            let rest = l.strip_prefix("ringmq http on ")?;
            Some(rest.split(' ').next()?.to_string())
        })
    }

    /// The `listening on` line the broker printed at startup.
    pub fn listening_line(&self) -> &str {
        self.startup_lines
            .last()
            .map(String::as_str)
            .expect("a spawned broker printed a listening line")
    }

    /// PID of the spawned broker process.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("the broker is a live spawned process")
            .id()
    }

    /// Panics (with the stderr tail) if the spawned broker has exited.
    #[track_caller]
    pub fn assert_alive(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("broker exited: {status}; stderr: {}", self.stderr_tail());
            }
        }
    }

    /// Sends SIGTERM and waits (bounded) for exit; returns the exit status, or `None`
    /// if the broker is external or did not exit within `within`.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let pid = child.id() as libc::pid_t;
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped yet.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        // Signalling our own unreaped child cannot fail; not checked while unwinding
        // (this also runs from Drop).
        if !std::thread::panicking() {
            assert_eq!(rc, 0, "kill(SIGTERM) on ringmq pid {pid}");
        }
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                self.wait_stderr_read(deadline);
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Waits (until `deadline`, and at least a second) for the stderr reader to reach
    /// EOF, so that [`Broker::stderr_tail`] holds the broker's last lines (its exit
    /// summary) once `terminate` returned: the reader thread is woken by those lines,
    /// but on a loaded machine may run only after the test saw the exit status.
    fn wait_stderr_read(&self, deadline: Instant) {
        let deadline = deadline.max(Instant::now() + Duration::from_secs(1));
        while !self.stderr_done.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Waits up to `within` for `child` to exit; if it has not, kills it (by its own PID)
/// and reaps it, and returns `None`.
pub fn wait_or_kill(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on a spawned child") {
            return Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.child.is_some() && self.terminate(Duration::from_secs(3)).is_none() {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// An IO backend forced on spawned brokers by `RINGMQ_TEST_IO`.
#[derive(Debug, Clone, Copy)]
pub struct TestIo {
    /// The `--io` value.
    pub flag: &'static str,
    /// The backend name the `listening on` line carries.
    pub backend: &'static str,
}

/// `RINGMQ_TEST_IO=uring|epoll` adds `--io VALUE` to every spawned broker whose
/// arguments do not name a backend, so a whole suite can run on either backend.
/// Unset or empty: the broker picks (auto). Any other value panics, so a typo cannot
/// quietly run the suite on the default backend.
pub fn test_io() -> Option<TestIo> {
    let value = std::env::var("RINGMQ_TEST_IO").ok()?;
    match value.as_str() {
        "" => None,
        "uring" => Some(TestIo {
            flag: "uring",
            backend: "io_uring",
        }),
        "epoll" => Some(TestIo {
            flag: "epoll",
            backend: "epoll",
        }),
        other => panic!("RINGMQ_TEST_IO={other:?}: expected `uring` or `epoll`"),
    }
}

/// Extracts `ip:port` from a line containing `listening on <ip:port>`.
pub fn parse_listening(line: &str) -> Option<String> {
    let idx = line.find("listening on ")?;
    let rest = &line[idx + "listening on ".len()..];
    let token: String = rest
        .trim_start()
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != ',' && *c != ')' && *c != '"')
        .collect();
    let token = token.trim_end_matches(['.', ';']).to_string();
    token.to_socket_addrs().ok()?.next()?;
    Some(token)
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn profile_path(name: &str) -> PathBuf {
    repo_root().join("tests").join("profiles").join(name)
}
