//! Authentication and ACLs with real clients and real files: Debian's
//! `mosquitto_passwd` files work unchanged, `ringmq passwd` files are accepted by a
//! real Mosquitto 2.0, wrong passwords and unknown users, denied publish and
//! subscribe, a wildcard subscription over a denied topic, SIGHUP reload with clients
//! connected (and a broken file keeping the old one), and 1,000 wrong passwords from
//! one address. Needs mosquitto, mosquitto_pub, mosquitto_sub and mosquitto_passwd
//! (tests/install-deps.sh installs them); a missing tool fails the test.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{free_loopback_port, pkt, uniq, Launch, RawClient};

fn tool(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p.to_string_lossy().into_owned();
        }
    }
    panic!(
        "{name} is not installed: tests/install-deps.sh installs mosquitto and mosquitto-clients"
    );
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ringmq-auth-{}", uniq(tag)));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

fn ringmq() -> &'static str {
    env!("CARGO_BIN_EXE_ringmq")
}

/// `mosquitto_pub` once; returns (success, stderr).
fn publish(
    port: u16,
    user: Option<(&str, &str)>,
    topic: &str,
    msg: &str,
    v5: bool,
) -> (bool, String) {
    let mut cmd = Command::new(tool("mosquitto_pub"));
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        topic,
        "-m",
        msg,
        "-q",
        "1",
    ]);
    if let Some((u, p)) = user {
        cmd.args(["-u", u, "-P", p]);
    }
    if v5 {
        cmd.args(["-V", "mqttv5"]);
    }
    let out = cmd.output().expect("run mosquitto_pub");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A 3.1.1 CONNECT with a username and password.
fn login(client_id: &str, user: &str, password: &str) -> pkt::Connect {
    let mut c = pkt::Connect::v311(client_id);
    c.username = Some(user.as_bytes().to_vec());
    c.password = Some(password.as_bytes().to_vec());
    c
}

fn connack_code(addr: &str, c: &pkt::Connect) -> u8 {
    let (_, f) = RawClient::connect_with(addr, c);
    f.body[1]
}

const ACL: &str = "\
user alice
topic readwrite a/#
topic deny a/secret/#
user bob
topic readwrite #
";

/// A broker with `alice:wonderland` and `bob:builder` in a file made by
/// `mosquitto_passwd`, and `ACL`.
fn broker(dir: &Path, extra: &[&str]) -> support::Broker {
    let pw = dir.join("passwd");
    let _ = std::fs::remove_file(&pw);
    for (i, (u, p)) in [("alice", "wonderland"), ("bob", "builder")]
        .iter()
        .enumerate()
    {
        let mut cmd = Command::new(tool("mosquitto_passwd"));
        if i == 0 {
            cmd.arg("-c");
        }
        let st = cmd
            .args(["-b"])
            .arg(&pw)
            .args([u, p])
            .status()
            .expect("mosquitto_passwd");
        assert!(st.success(), "mosquitto_passwd failed");
    }
    let acl = dir.join("acl");
    write(&acl, ACL);
    let mut args = vec![
        "--password-file",
        pw.to_str().unwrap(),
        "--acl-file",
        acl.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Launch::new(&args).spawn()
}

#[test]
fn mosquitto_passwd_file_works_unchanged() {
    let dir = tempdir("mpw");
    let b = broker(&dir, &["--shards", "2"]);
    let port = b.port();
    assert!(publish(port, Some(("alice", "wonderland")), "a/x", "hi", false).0);
    assert!(publish(port, Some(("bob", "builder")), "any", "hi", true).0);
    let (ok, err) = publish(port, Some(("alice", "wrong")), "a/x", "hi", false);
    assert!(!ok && err.contains("bad user name or password"), "{err}");
    let (ok, err) = publish(port, Some(("nobody", "x")), "a/x", "hi", false);
    assert!(!ok && err.contains("bad user name or password"), "{err}");
    let (ok, err) = publish(port, None, "a/x", "hi", false);
    assert!(!ok && err.contains("not authorised"), "{err}");
    // Exact wire answers: rc 4 and 5 (3.1.1), 0x86 (5.0).
    assert_eq!(
        connack_code(b.addr(), &login(&uniq("w"), "alice", "wrong")),
        4
    );
    assert_eq!(connack_code(b.addr(), &login(&uniq("u"), "nobody", "x")), 4);
    assert_eq!(connack_code(b.addr(), &pkt::Connect::v311(&uniq("n"))), 5);
    let mut v5 = pkt::Connect::v5(&uniq("v5"));
    v5.username = Some(b"alice".to_vec());
    v5.password = Some(b"wrong".to_vec());
    let (_, f) = RawClient::connect_with(b.addr(), &v5);
    assert_eq!(f.body[1], 0x86, "{f:?}");
}

#[test]
fn ringmq_passwd_file_is_accepted_by_mosquitto() {
    let dir = tempdir("rpw");
    let file = dir.join("passwd");
    let f = file.to_str().unwrap();
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(ringmq())
            .arg("passwd")
            .args(args)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ringmq passwd");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "ringmq passwd {args:?}: {out:?}");
    };
    run(
        &["add", "--create", f, "alice", "--password", "wonderland"],
        "",
    );
    run(&["batch", f], "bob:builder\ncarol:gone\n");
    run(&["add", f, "dave"], "from stdin\n");
    run(&["delete", f, "carol"], "");
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().all(|l| l.contains(":$7$101$")), "{text}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A real Mosquitto 2.0 with that password file.
    let port = free_loopback_port();
    let conf = dir.join("mosquitto.conf");
    let mut conf_text =
        format!("listener {port} 127.0.0.1\npassword_file {f}\nallow_anonymous false\n");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // As root Mosquitto drops to its own user, which cannot read a 0600 file
        // owned by root (the mode `ringmq passwd` writes, as mosquitto_passwd does).
        conf_text.push_str("user root\n");
    }
    write(&conf, &conf_text);
    let mut m = Command::new(tool("mosquitto"))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mosquitto");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "mosquitto did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let results = [
        publish(port, Some(("alice", "wonderland")), "t", "x", false).0,
        publish(port, Some(("bob", "builder")), "t", "x", false).0,
        publish(port, Some(("dave", "from stdin")), "t", "x", false).0,
        publish(port, Some(("carol", "gone")), "t", "x", false).0,
        publish(port, Some(("alice", "wrong")), "t", "x", false).0,
    ];
    let _ = m.kill();
    let _ = m.wait();
    assert_eq!(results, [true, true, true, false, false]);
    // And ringmq reads its own file.
    let b = Launch::new(&["--password-file", f]).spawn();
    assert!(publish(b.port(), Some(("dave", "from stdin")), "t", "x", false).0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn denied_publish_subscribe_and_wildcard_delivery() {
    let dir = tempdir("acl");
    let b = broker(&dir, &["--shards", "2"]);
    let addr = b.addr().to_string();
    // alice subscribes to a/# (allowed, partly denied) and to b/# (denied: 0x80).
    let (mut sub, _) = RawClient::connect_with(&addr, &login(&uniq("s"), "alice", "wonderland"));
    let f = sub.subscribe(1, "a/#", 1);
    assert_eq!(f.body[2..], [1], "{f:?}");
    let f = sub.subscribe(2, "b/#", 1);
    assert_eq!(f.body[2..], [0x80], "{f:?}");
    // MQTT 5: the denied filter alone gets 0x87.
    let mut c5 = pkt::Connect::v5(&uniq("s5"));
    c5.username = Some(b"alice".to_vec());
    c5.password = Some(b"wonderland".to_vec());
    let (mut sub5, _) = RawClient::connect_v5_with(&addr, &c5);
    sub5.send(&pkt::subscribe(
        sub5.version,
        3,
        &[],
        &[("a/ok", 0), ("a/secret/x", 0)],
    ));
    let f = sub5.recv_suback();
    assert_eq!(f.body[f.body.len() - 2..], [0x00, 0x87], "{f:?}");

    // bob (readwrite #) publishes on a denied topic and an allowed one.
    let (mut bob, _) = RawClient::connect_with(&addr, &login(&uniq("b"), "bob", "builder"));
    bob.publish("a/secret/plans", 1, false, 1, b"hidden");
    bob.expect_ack(4, 1, false);
    bob.publish("a/open", 1, false, 2, b"shown");
    bob.expect_ack(4, 2, false);
    let m = sub.recv_publish();
    assert_eq!(m.topic, "a/open", "the wildcard subscriber got {m:?}");
    sub.ack_received(&m);
    sub.expect_silence_for(Duration::from_millis(300));

    // alice may not write b/x: 3.1.1 acknowledges and drops, MQTT 5 gets 0x87.
    let (mut a3, _) = RawClient::connect_with(&addr, &login(&uniq("a"), "alice", "wonderland"));
    a3.publish("b/x", 1, false, 5, b"no");
    a3.expect_ack(4, 5, false);
    sub5.publish("b/x", 1, false, 6, b"no");
    let f = sub5.recv_frame();
    assert_eq!((f.ptype(), f.body[2]), (4, 0x87), "{f:?}");
}

/// Retained messages are deliveries too: a wildcard subscription made after them
/// gets only the retained topics the client may read.
#[test]
fn retained_messages_on_a_denied_topic_stay_with_the_broker() {
    let dir = tempdir("acl-retained");
    let b = broker(&dir, &["--shards", "1"]);
    let addr = b.addr().to_string();
    let (mut bob, _) = RawClient::connect_with(&addr, &login(&uniq("b"), "bob", "builder"));
    bob.publish("a/secret/kept", 1, true, 1, b"hidden");
    bob.expect_ack(4, 1, false);
    bob.publish("a/open/kept", 1, true, 2, b"shown");
    bob.expect_ack(4, 2, false);
    let (mut alice, _) = RawClient::connect_with(&addr, &login(&uniq("a"), "alice", "wonderland"));
    let f = alice.subscribe(1, "a/#", 1);
    assert_eq!(f.body[2..], [1], "{f:?}");
    let m = alice.recv_publish();
    assert_eq!(
        (m.topic.as_str(), m.retain),
        ("a/open/kept", true),
        "alice got {m:?}"
    );
    alice.ack_received(&m);
    alice.expect_silence_for(Duration::from_millis(300));
    // bob may read everything: both are kept.
    let (mut bob2, _) = RawClient::connect_with(&addr, &login(&uniq("b2"), "bob", "builder"));
    bob2.subscribe(1, "a/#", 0);
    let mut got = vec![bob2.recv_publish().topic, bob2.recv_publish().topic];
    got.sort();
    assert_eq!(got, ["a/open/kept", "a/secret/kept"]);
}

#[test]
fn reload_while_clients_are_connected() {
    let dir = tempdir("rl");
    let mut b = broker(&dir, &[]);
    let addr = b.addr().to_string();
    let (mut a, _) = RawClient::connect_with(&addr, &login(&uniq("a"), "alice", "wonderland"));
    a.publish("c/x", 1, false, 1, b"no");
    let f = a.recv_frame();
    assert_eq!(f.ptype(), 4);
    // Grant alice c/#, reload, and the same connection may now publish there.
    write(
        &dir.join("acl"),
        &format!("{ACL}\nuser alice\ntopic write c/#\n"),
    );
    let pid = b.pid();
    // SAFETY: kill(2) on the broker this test spawned.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.stderr_tail().contains("reloaded") {
        assert!(
            Instant::now() < deadline,
            "no reload line: {}",
            b.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut sub, _) = RawClient::connect_with(&addr, &login(&uniq("s"), "bob", "builder"));
    sub.subscribe_ok(1, "c/#", 0);
    a.publish("c/x", 0, false, 0, b"after reload");
    let m = sub.recv_publish();
    assert_eq!(m.topic, "c/x");
    a.ping();
    // A broken file: the error names it, the old rules stay, nobody is dropped.
    write(&dir.join("acl"), "user alice\nbogus line\n");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    let acl_path = dir.join("acl").to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.stderr_tail().contains("old files stay in force") {
        assert!(
            Instant::now() < deadline,
            "no failure line: {}",
            b.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(b.stderr_tail().contains(&acl_path), "{}", b.stderr_tail());
    a.publish("c/y", 0, false, 0, b"still allowed");
    assert_eq!(sub.recv_publish().topic, "c/y");
    a.ping();
    b.assert_alive();
}

/// A reload wakes no loop: the first packet that wakes an idle loop afterwards must
/// already meet the new rules (no route update or other traffic reaches that loop in
/// between: the route to the subscriber is live before the reload).
#[test]
fn the_first_packet_after_a_reload_on_an_idle_loop_meets_the_new_rules() {
    let dir = tempdir("rli");
    let mut b = broker(&dir, &["--shards", "2"]);
    let addr = b.addr().to_string();
    let (mut sub, _) = RawClient::connect_with(&addr, &login(&uniq("s"), "bob", "builder"));
    sub.subscribe_ok(1, "a/#", 0);
    let (mut a, _) = RawClient::connect_with(&addr, &login(&uniq("a"), "alice", "wonderland"));
    // Delivered: the route is live on alice's loop before the reload.
    a.publish("a/x", 1, false, 1, b"before");
    assert_eq!(a.recv_frame().ptype(), 4);
    assert_eq!(sub.recv_publish().payload, b"before");
    write(
        &dir.join("acl"),
        &format!("{ACL}\nuser alice\ntopic deny a/x\n"),
    );
    let pid = b.pid();
    // SAFETY: kill(2) on the broker this test spawned.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !b.stderr_tail().contains("reloaded") {
        assert!(
            Instant::now() < deadline,
            "no reload line: {}",
            b.stderr_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    a.publish("a/x", 1, false, 2, b"denied now");
    assert_eq!(a.recv_frame().ptype(), 4);
    a.publish("a/y", 1, false, 3, b"still allowed");
    assert_eq!(a.recv_frame().ptype(), 4);
    // In order on one connection: the denied one would have come first.
    let m = sub.recv_publish();
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("a/y", &b"still allowed"[..])
    );
    b.assert_alive();
}

#[test]
fn brute_force_of_1000_wrong_passwords_is_limited_and_counted() {
    let dir = tempdir("bf");
    let mut b = broker(&dir, &["--shards", "1"]);
    let addr = b.addr().to_string();
    let mut refused = 0;
    // The limiter lets 10 failures from one address through per 60 s window
    // (`shard::auth::FAILURES_PER_WINDOW`, `FAILURE_WINDOW`); a loaded runner can take
    // longer than one window for the 1000 attempts, and each window it reaches lets 10
    // more be hashed.
    let started = Instant::now();
    for i in 0..1000 {
        if connack_code(
            &addr,
            &login(&format!("bf{i}"), "alice", &format!("guess{i}")),
        ) == 4
        {
            refused += 1;
        }
    }
    assert_eq!(refused, 1000);
    // From this address even the right password waits out the window...
    assert_eq!(
        connack_code(&addr, &login("late", "alice", "wonderland")),
        4
    );
    let windows = started.elapsed().as_secs() / 60 + 1;
    // ...while another address is served.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.2:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .expect("bind 127.0.0.2");
    sock.connect(&addr.parse::<std::net::SocketAddr>().unwrap().into())
        .expect("connect from 127.0.0.2");
    let mut stream: std::net::TcpStream = sock.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(&login("other", "bob", "builder").bytes())
        .unwrap();
    let mut ack = [0u8; 4];
    std::io::Read::read_exact(&mut stream, &mut ack).unwrap();
    assert_eq!(ack, [0x20, 0x02, 0x00, 0x00]);
    b.terminate(Duration::from_secs(10));
    let tail = b.stderr_tail();
    let counter = |name: &str| -> u64 {
        tail.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("core.{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(counter("auth_bad_credentials"), 1001, "{tail}");
    let limited = counter("auth_rate_limited");
    assert!(
        limited >= 1000u64.saturating_sub(10 * windows),
        "{limited} limited over {windows} window(s) of 60 s: {tail}"
    );
    assert!(counter("auth_verified") <= 11, "{tail}");
}

#[test]
fn a_file_that_does_not_parse_stops_start_up_and_check_config_naming_it() {
    let dir = tempdir("bad");
    let acl = dir.join("acl");
    write(&acl, "user alice\ntopic read a/#\nfrobnicate x\n");
    let a = acl.to_str().unwrap();
    // check-config takes the options before the subcommand; a start exits the same way.
    for args in [
        vec!["--acl-file", a, "check-config"],
        vec!["--listen", "127.0.0.1:0", "--acl-file", a],
    ] {
        let out = Command::new(ringmq())
            .args(&args)
            .output()
            .expect("run ringmq");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(a) && err.contains("line 3"), "{args:?}: {err}");
    }
    let missing = dir.join("nope");
    let out = Command::new(ringmq())
        .args(["--password-file", missing.to_str().unwrap(), "check-config"])
        .output()
        .expect("run ringmq");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("password_file") && err.contains("nope"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `[[listener]]` `allow_anonymous`: one listener lets clients in without credentials
/// while the others keep the global rule (anonymous refused, rc 5), over two loops so
/// the rule travels with connections handed to their owner.
#[test]
fn per_listener_allow_anonymous() {
    let dir = tempdir("listener");
    let pw = dir.join("passwd");
    let out = Command::new(ringmq())
        .args(["passwd", "add", "--create"])
        .arg(&pw)
        .args(["alice", "--password", "wonderland"])
        .stdin(Stdio::null())
        .output()
        .expect("ringmq passwd");
    assert!(out.status.success(), "{out:?}");
    let (open, closed) = (free_loopback_port(), free_loopback_port());
    let cfg = dir.join("ringmq.toml");
    write(
        &cfg,
        &format!(
            "password_file = \"{}\"\nallow_anonymous = false\n\
             [[listener]]\nurl = \"mqtt://127.0.0.1:{open}\"\nallow_anonymous = true\n\
             [[listener]]\nurl = \"mqtt://127.0.0.1:{closed}\"\n",
            pw.display()
        ),
    );
    let b = Launch::new(&["--config", cfg.to_str().unwrap(), "--shards", "2"]).spawn();
    let open_addr = format!("127.0.0.1:{open}");
    let closed_addr = format!("127.0.0.1:{closed}");
    for i in 0..8 {
        let anon = pkt::Connect::v311(&format!("anon-{i}"));
        assert_eq!(connack_code(&open_addr, &anon), 0, "open listener, {i}");
        assert_eq!(connack_code(&closed_addr, &anon), 5, "closed listener, {i}");
        assert_eq!(connack_code(b.addr(), &anon), 5, "global listener, {i}");
    }
    let alice = login(&uniq("alice"), "alice", "wonderland");
    assert_eq!(connack_code(&closed_addr, &alice), 0);
    // A password user on the open listener is still checked.
    let wrong = login(&uniq("alice"), "alice", "nope");
    assert_eq!(connack_code(&open_addr, &wrong), 4);
    let _ = std::fs::remove_dir_all(&dir);
}
