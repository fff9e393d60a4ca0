//! Tests of loading: defaults, file and CLI precedence, every key through both
//! paths, and the exact error messages operators see.

use std::net::SocketAddr;

use clap::Parser;

use super::*;

fn cli(args: &[&str]) -> Cli {
    let mut v = vec!["ringmq"];
    v.extend_from_slice(args);
    Cli::try_parse_from(v).expect("cli parses")
}

fn with_file(text: &'static str) -> impl Fn(&str) -> std::io::Result<String> {
    move |_| Ok(text.to_string())
}

#[test]
fn no_config_at_all_gives_defaults() {
    let cfg = load_with(&cli(&[]), with_file("")).expect("load");
    assert_eq!(
        cfg.listen.iter().map(|l| l.addr).collect::<Vec<_>>(),
        vec!["0.0.0.0:1883".parse::<SocketAddr>().expect("addr")]
    );
    assert_eq!(cfg.listen[0].scheme, Scheme::Mqtt);
    assert_eq!(cfg.shards, None);
    assert_eq!(cfg.io, IoBackend::Auto);
    assert_eq!(cfg.max_packet_size, Config::default().max_packet_size);
}

#[test]
fn file_then_cli_precedence() {
    let file = "max_packet_size = 5000\nreceive_maximum = 10\nlisten = [\"127.0.0.1:1999\", \"[::1]:1999\"]\n\
                io = \"epoll\"\nretain_available = false\nserver_keep_alive_s = 30\ndeny_subscribe = [\"a/#\"]\n";
    let c = cli(&[
        "--config",
        "x.toml",
        "--max-packet-size",
        "7000",
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "3",
    ]);
    let cfg = load_with(&c, with_file(file)).expect("load");
    // CLI wins over the file, the file over defaults.
    assert_eq!(cfg.max_packet_size, 7000);
    assert_eq!(cfg.receive_maximum, 10);
    assert_eq!(
        cfg.listen.iter().map(|l| l.addr).collect::<Vec<_>>(),
        vec!["127.0.0.1:0".parse::<SocketAddr>().expect("addr")]
    );
    assert_eq!(cfg.shards, Some(3));
    assert_eq!(cfg.io, IoBackend::Epoll);
    assert!(!cfg.retain_available);
    assert_eq!(cfg.server_keep_alive_s, Some(30));
    assert_eq!(cfg.deny_subscribe, vec!["a/#".to_string()]);
    assert_eq!(cfg.max_inflight, Config::default().max_inflight);
}

#[test]
fn every_cli_option_has_the_same_toml_key() {
    // Each KEY set from the file and from the CLI gives the same Config field.
    let samples: &[(&str, &str, &str)] = &[
        ("listen", "\"127.0.0.1:5\"", "127.0.0.1:5"),
        ("tls_cert", "[\"c.pem\"]", "c.pem"),
        ("tls_key", "[\"k.pem\"]", "k.pem"),
        ("tls_client_ca", "\"ca.pem\"", "ca.pem"),
        ("tls_require_certificate", "true", "true"),
        ("tls_identity_username", "\"cn\"", "cn"),
        ("tls_session_tickets", "false", "false"),
        (
            "ws_allowed_origins",
            "[\"https://a.example\"]",
            "https://a.example",
        ),
        ("ws_max_frame_bytes", "7", "7"),
        ("http_listen", "\"127.0.0.1:6\"", "127.0.0.1:6"),
        ("sys_interval_s", "7", "7"),
        ("sys_client_events", "true", "true"),
        ("shards", "2", "2"),
        ("io", "\"uring\"", "uring"),
        ("log_level", "\"debug\"", "debug"),
        ("log_format", "\"json\"", "json"),
        ("busy_poll_us", "7", "7"),
        ("rt_priority", "7", "7"),
        ("sched_slice_us", "700", "700"),
        ("placement_seed", "7", "7"),
        ("max_connections", "7", "7"),
        ("max_connections_per_ip", "7", "7"),
        ("connect_rate_per_s", "7", "7"),
        ("connect_timeout_ms", "7", "7"),
        ("close_linger_ms", "7", "7"),
        ("max_lingering_per_shard", "7", "7"),
        ("tcp_keepalive_idle_s", "7", "7"),
        ("tcp_keepalive_interval_s", "7", "7"),
        ("tcp_keepalive_count", "7", "7"),
        ("tcp_user_timeout_ms", "7", "7"),
        ("max_connect_packet_bytes", "7", "7"),
        (
            "password_file",
            "\"/etc/ringmq/passwd\"",
            "/etc/ringmq/passwd",
        ),
        ("allow_anonymous", "false", "false"),
        ("jwt_from", "\"username\"", "username"),
        ("jwt_secret_file", "\"/etc/ringmq/jwt\"", "/etc/ringmq/jwt"),
        (
            "jwt_public_key_file",
            "\"/etc/ringmq/jwt.pem\"",
            "/etc/ringmq/jwt.pem",
        ),
        ("jwt_username_claim", "\"sub\"", "sub"),
        ("jwt_issuer", "\"idp\"", "idp"),
        ("jwt_audience", "\"mqtt\"", "mqtt"),
        ("jwt_leeway_s", "7", "7"),
        ("max_packet_size", "7", "7"),
        ("receive_maximum", "7", "7"),
        ("max_inflight", "7", "7"),
        ("topic_alias_maximum", "7", "7"),
        ("max_topic_levels", "7", "7"),
        ("max_topic_len", "7", "7"),
        ("max_subscriptions_per_client", "7", "7"),
        ("max_client_id_len", "7", "7"),
        ("keepalive_max_s", "7", "7"),
        ("server_keep_alive_s", "7", "7"),
        ("max_session_expiry_s", "7", "7"),
        ("persistent_session_expiry_s", "7", "7"),
        ("max_sessions", "7", "7"),
        ("max_queued_messages", "7", "7"),
        ("max_queued_bytes", "7", "7"),
        ("queue_qos0_offline", "true", "true"),
        ("max_outbound_bytes", "7", "7"),
        ("slow_consumer_policy", "\"disconnect\"", "disconnect"),
        ("memory_high_water_bytes", "7", "7"),
        ("data_dir", "\"/var/lib/ringmq\"", "/var/lib/ringmq"),
        ("durability", "\"interval:7\"", "interval:7"),
        ("retain_available", "false", "false"),
        ("wildcard_subscription_available", "false", "false"),
        ("subscription_identifier_available", "false", "false"),
        ("shared_subscription_available", "false", "false"),
        ("max_retained_messages", "7", "7"),
        ("max_retained_bytes", "7", "7"),
        ("deny_subscribe", "[\"x\"]", "x"),
        ("acl_file", "\"/etc/ringmq/acl\"", "/etc/ringmq/acl"),
        ("mqttsn_listen", "\"127.0.0.1:1884\"", "127.0.0.1:1884"),
        ("mqttsn_predefined_topics_file", "\"/etc/sn\"", "/etc/sn"),
        ("mqttsn_max_clients", "70", "70"),
        ("mqttsn_max_topic_ids", "70", "70"),
        ("mqttsn_max_buffered_msgs", "70", "70"),
        ("mqttsn_max_datagram_bytes", "70", "70"),
        ("mqttsn_retry_interval_ms", "70", "70"),
        ("mqttsn_max_retries", "7", "7"),
        ("mqttsn_advertise_interval_s", "70", "70"),
        (
            "mqttsn_advertise_address",
            "\"127.0.0.255:1884\"",
            "127.0.0.255:1884",
        ),
        (
            "cluster_nats",
            "\"nats://127.0.0.1:4222\"",
            "nats://127.0.0.1:4222",
        ),
        ("cluster_node_name", "\"n1\"", "n1"),
        ("cluster_nats_user", "\"u\"", "u"),
        ("cluster_nats_password", "\"p\"", "p"),
        ("cluster_nats_creds_file", "\"/etc/c\"", "/etc/c"),
        (
            "cluster_nats_inbox_prefix",
            "\"_RINGMQ_INBOX.n1\"",
            "_RINGMQ_INBOX.n1",
        ),
        ("cluster_nats_tls_ca_file", "\"/etc/ca\"", "/etc/ca"),
        ("cluster_nats_tls_cert_file", "\"/etc/crt\"", "/etc/crt"),
        ("cluster_nats_tls_key_file", "\"/etc/key\"", "/etc/key"),
        ("cluster_kv_replicas", "3", "3"),
        ("cluster_beat_ms", "900", "900"),
        ("cluster_fence_after_ms", "2500", "2500"),
        ("cluster_dead_after_ms", "6000", "6000"),
    ];
    assert_eq!(samples.len(), keys().count());
    for (key, toml_value, cli_value) in samples {
        assert!(keys().any(|k| k == *key), "{key}");
        let mut from_file = Config::default();
        apply_toml(&mut from_file, "t.toml", &format!("{key} = {toml_value}")).expect(key);
        let flag = format!("--{}", key.replace('_', "-"));
        let from_cli = load_with(&cli(&[&flag, cli_value]), with_file("")).expect(key);
        assert_eq!(format!("{from_file:?}"), format!("{from_cli:?}"), "{key}");
        assert_ne!(
            format!("{from_file:?}"),
            format!("{:?}", Config::default()),
            "{key} changed nothing"
        );
    }
}

#[test]
fn file_error_names_key_and_value() {
    let err = load_with(
        &cli(&["--config", "tests/x.toml"]),
        with_file("max_packet_size = \"abc\"\n"),
    )
    .expect_err("must fail");
    assert_eq!(
        err.to_string(),
        "config tests/x.toml: key \"max_packet_size\": expected an integer 1..=268435455, got \"abc\""
    );
    let err = load_with(
        &cli(&["--config", "c.toml"]),
        with_file("receive_maximum = 0\n"),
    )
    .expect_err("fail");
    assert_eq!(
        err.to_string(),
        "config c.toml: key \"receive_maximum\": expected an integer 1..=65535, got 0"
    );
    let err = load_with(
        &cli(&["--config", "c.toml"]),
        with_file("io = \"kqueue\"\n"),
    )
    .expect_err("fail");
    assert_eq!(
        err.to_string(),
        "config c.toml: key \"io\": expected one of auto, uring, epoll, got \"kqueue\""
    );
    let err = load_with(
        &cli(&["--config", "c.toml"]),
        with_file("log_level = \"ringmq=loud\"\n"),
    )
    .expect_err("fail");
    assert_eq!(
        err.to_string(),
        "config c.toml: key \"log_level\": expected a tracing filter such as info or \
         ringmq=debug,warn (error parsing level filter: expected one of \"off\", \"error\", \
         \"warn\", \"info\", \"debug\", \"trace\", or a number 0-5), got \"ringmq=loud\""
    );
    let err = load_with(
        &cli(&["--config", "c.toml"]),
        with_file("busy_poll_us = 1001\n"),
    )
    .expect_err("fail");
    assert_eq!(
        err.to_string(),
        "config c.toml: key \"busy_poll_us\": expected an integer 0..=1000, got 1001"
    );
}

#[test]
fn sched_slice_us_is_zero_or_what_the_kernel_takes_unclamped() {
    assert_eq!(Config::default().sched_slice_us, 0);
    for (given, want) in [("0", 0), ("100", 100), ("3000", 3000), ("100000", 100_000)] {
        let cfg = load_with(&cli(&["--sched-slice-us", given]), with_file("")).expect(given);
        assert_eq!(cfg.sched_slice_us, want, "{given}");
    }
    let cfg = load_with(
        &cli(&["--config", "c.toml"]),
        with_file("sched_slice_us = 250\n"),
    )
    .expect("load");
    assert_eq!(cfg.sched_slice_us, 250);
    // The kernel would clamp these silently to 100 µs or 100 ms.
    for bad in ["1", "99", "100001", "fast"] {
        let err = load_with(&cli(&["--sched-slice-us", bad]), with_file("")).expect_err(bad);
        assert_eq!(
            err.to_string(),
            format!(
                "option --sched-slice-us: expected 0 (the kernel's default) or an integer \
                 100..=100000, got \"{bad}\""
            )
        );
    }
    let err = load_with(
        &cli(&["--config", "c.toml"]),
        with_file("sched_slice_us = 50\n"),
    )
    .expect_err("fail");
    assert_eq!(
        err.to_string(),
        "config c.toml: key \"sched_slice_us\": expected 0 (the kernel's default) or an \
         integer 100..=100000, got 50"
    );
}

#[test]
fn unknown_key_is_an_error() {
    let err = load_with(
        &cli(&["--config", "c.toml"]),
        with_file("max_pakcet_size = 5\n"),
    )
    .expect_err("fail");
    assert_eq!(
        err.to_string(),
        "config c.toml: unknown key \"max_pakcet_size\""
    );
}

#[test]
fn cli_error_names_option_and_value() {
    let err = load_with(&cli(&["--max-inflight", "70000"]), with_file("")).expect_err("fail");
    assert_eq!(
        err.to_string(),
        "option --max-inflight: expected an integer 1..=65535, got \"70000\""
    );
    let err = load_with(&cli(&["--log-level", "info,["]), with_file("")).expect_err("fail");
    assert_eq!(
        err.to_string(),
        "option --log-level: expected a tracing filter such as info or ringmq=debug,warn \
         (invalid filter directive), got \"info,[\""
    );
    for good in [
        "warn",
        "ringmq=debug,warn",
        "ringmq::shard=trace",
        "off",
        "5",
    ] {
        let cfg = load_with(&cli(&["--log-level", good]), with_file("")).expect(good);
        assert_eq!(cfg.log_level, good);
    }
    let err = load_with(&cli(&["--listen", "nowhere"]), with_file("")).expect_err("fail");
    assert_eq!(
        err.to_string(),
        "option --listen: expected a listener URL like mqtt://0.0.0.0:1883, mqtts://[::]:8883, ws://0.0.0.0:8080/mqtt or 0.0.0.0:1883 (schemes mqtt, mqtts, ws, wss), got [\"nowhere\"]"
    );
    let err = load_with(&cli(&["--rt-priority", "100"]), with_file("")).expect_err("fail");
    assert_eq!(
        err.to_string(),
        "option --rt-priority: expected an integer 0..=99, got \"100\""
    );
}

#[test]
fn explicit_keys_are_tracked() {
    let l = load_tracked_with(
        &cli(&["--config", "c.toml", "--max-inflight", "5"]),
        with_file("max_connections = 1000000\n"),
    )
    .expect("load");
    assert_eq!(l.explicit, vec!["max_connections", "max_inflight"]);
    assert!(l.is_explicit("max_connections"));
    let l = load_tracked_with(&cli(&[]), with_file("")).expect("load");
    assert!(l.explicit.is_empty());
}

#[test]
fn every_option_has_help_with_its_default() {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let mut checked = 0;
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version") {
            continue;
        }
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        assert!(!help.is_empty(), "--{id} has no help text");
        if id != "config" {
            assert!(help.contains("efault"), "--{id}: no default in {help:?}");
        }
        checked += 1;
    }
    // `config` plus every key.
    assert_eq!(checked, keys().count() + 1);
    let help_of = |id: &str| {
        cmd.get_arguments()
            .find(|a| a.get_id().as_str() == id)
            .and_then(|a| a.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default()
    };
    let d = Config::default();
    assert!(help_of("max_inflight").ends_with(&format!("[default: {}]", d.max_inflight)));
    assert!(
        help_of("connect_timeout_ms").ends_with(&format!("[default: {}]", d.connect_timeout_ms))
    );
    assert!(help_of("max_queued_bytes").ends_with(&format!("[default: {}]", d.max_queued_bytes)));
}

#[test]
fn bad_toml_and_missing_file_are_errors() {
    let err = load_with(
        &cli(&["--config", "c.toml"]),
        with_file("max_packet_size = = 3"),
    )
    .expect_err("fail");
    assert!(err.to_string().starts_with("config c.toml: "), "{err}");
    let err = load_with(&cli(&["--config", "/nonexistent/ringmq.toml"]), |p| {
        std::fs::read_to_string(p)
    })
    .expect_err("fail");
    assert!(
        err.to_string()
            .starts_with("config /nonexistent/ringmq.toml: "),
        "{err}"
    );
}

#[test]
fn cli_options_are_the_keys_in_order() {
    // Each concern lists its keys and declares its options in separate places;
    // this keeps the two in step, and `--help` in documentation order.
    use clap::CommandFactory;
    let cmd = Cli::command();
    let options: Vec<&str> = cmd
        .get_arguments()
        .map(|a| a.get_id().as_str())
        .filter(|id| !matches!(*id, "help" | "version" | "config"))
        .collect();
    assert_eq!(options, keys().collect::<Vec<_>>());
}

#[test]
fn http_listen_takes_an_address_or_none() {
    let c = cli(&["--http-listen", "none"]);
    assert_eq!(
        load_with(&c, with_file("")).expect("load").http_listen,
        None
    );
    let cfg = load_with(
        &cli(&["--config", "x.toml"]),
        with_file("http_listen = \"NONE\"\n"),
    )
    .expect("load");
    assert_eq!(cfg.http_listen, None);
    assert_eq!(
        Config::default().http_listen,
        Some("127.0.0.1:9883".parse().expect("addr"))
    );
    let err = load_with(&cli(&["--http-listen", "nowhere"]), with_file(""))
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("--http-listen") && err.contains("nowhere"),
        "{err}"
    );
}

#[test]
fn secure_default_binds_loopback_without_authentication() {
    use super::secure_default;
    let loaded = |args: &[&str]| load_tracked_with(&cli(args), with_file("")).expect("valid");
    let lo = ListenUrl {
        scheme: Scheme::Mqtt,
        addr: "127.0.0.1:1883".parse().unwrap(),
        path: String::new(),
    };
    let any = ListenUrl {
        scheme: Scheme::Mqtt,
        addr: "0.0.0.0:1883".parse().unwrap(),
        path: String::new(),
    };

    // Nothing configured: loopback only, and one line saying how to open it.
    let mut l = loaded(&[]);
    let line = secure_default(&mut l).expect("a notice");
    assert_eq!(l.config.listen, vec![lo.clone()]);
    assert!(
        !line.contains('\n') && line.contains("--allow-anonymous true"),
        "{line}"
    );
    assert!(l.config.anonymous_allowed());

    // Opened explicitly, by a password file, or by naming the listener.
    for args in [
        &["--allow-anonymous", "true"][..],
        &["--password-file", "/x"][..],
        &["--listen", "0.0.0.0:1883"][..],
    ] {
        let mut l = loaded(args);
        assert_eq!(secure_default(&mut l), None, "{args:?}");
        assert_eq!(l.config.listen, vec![any.clone()], "{args:?}");
    }
    // A password file makes anonymous clients refused unless said otherwise.
    assert!(!loaded(&["--password-file", "/x"])
        .config
        .anonymous_allowed());
    assert!(
        loaded(&["--password-file", "/x", "--allow-anonymous", "true"])
            .config
            .anonymous_allowed()
    );
    // "auto" and "" (the shipped config's way of saying "unset") are the defaults.
    let l = loaded(&["--allow-anonymous", "auto", "--password-file", ""]);
    assert_eq!(
        (l.config.allow_anonymous, l.config.password_file),
        (None, None)
    );
}

#[test]
fn auth_keys_refuse_bad_values_naming_them() {
    let err = load_with(&cli(&["--allow-anonymous", "maybe"]), with_file("")).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("--allow-anonymous") && text.contains("maybe"),
        "{text}"
    );
    let mut c = Config::default();
    let err = apply_toml(&mut c, "t.toml", "acl_file = 3").unwrap_err();
    assert!(err.to_string().contains("acl_file"), "{err}");
}

#[test]
fn listener_urls_tls_flags_and_listener_tables() {
    // Schemes, the default scheme, repeatable.
    let cfg = load_with(
        &cli(&[
            "--listen",
            "127.0.0.1:1883",
            "--listen",
            "mqtts://[::1]:8883",
            "--tls-cert",
            "a.pem",
            "--tls-key",
            "a.key",
        ]),
        with_file(""),
    )
    .expect("load");
    let ls = cfg.listeners();
    assert_eq!(ls.len(), 2);
    assert_eq!(ls[0].url.to_string(), "mqtt://127.0.0.1:1883");
    assert_eq!(ls[0].tls, None);
    assert_eq!(ls[1].url.to_string(), "mqtts://[::1]:8883");
    let tls = ls[1].tls.as_ref().expect("tls");
    assert_eq!(tls.cert, vec!["a.pem".to_string()]);
    assert_eq!(tls.key, vec!["a.key".to_string()]);

    // [[listener]] tables come after `listen` and override the tls_* keys.
    let file = "listen = []\ntls_cert = \"g.pem\"\ntls_key = \"g.key\"\n\
                [[listener]]\nurl = \"mqtts://0.0.0.0:8883\"\n\
                [[listener]]\nurl = \"mqtts://0.0.0.0:8884\"\ntls_cert = [\"o.pem\", \"p.pem\"]\ntls_key = [\"o.key\", \"p.key\"]\n\
                tls_client_ca = \"ca.pem\"\ntls_require_certificate = true\ntls_identity_username = \"san\"\ntls_session_tickets = false\n\
                [[listener]]\nurl = \"1.2.3.4:1883\"\nallow_anonymous = true\n";
    let cfg = load_with(&cli(&["--config", "c.toml"]), with_file(file)).expect("load");
    let ls = cfg.listeners();
    assert_eq!(ls.len(), 3);
    assert_eq!(
        ls.iter().map(|l| l.allow_anonymous).collect::<Vec<_>>(),
        [None, None, Some(true)]
    );
    assert_eq!(
        ls[0].tls.as_ref().expect("tls").cert,
        vec!["g.pem".to_string()]
    );
    let t = ls[1].tls.as_ref().expect("tls");
    assert_eq!(t.cert, vec!["o.pem".to_string(), "p.pem".to_string()]);
    assert_eq!(t.client_ca.as_deref(), Some("ca.pem"));
    assert!(t.require_certificate);
    assert_eq!(t.identity_username, IdentityUsername::SubjectAltName);
    assert!(!t.session_tickets, "the table's tls_session_tickets");
    assert!(
        ls[0].tls.as_ref().expect("tls").session_tickets,
        "the default"
    );
    assert_eq!(ls[2].tls, None);

    // WebSocket listeners: the path (default /mqtt), the ws_* keys, wss with TLS.
    let file = "listen = [\"ws://127.0.0.1:8080\", \"wss://127.0.0.1:8443/ws\"]\n\
                tls_cert = \"g.pem\"\ntls_key = \"g.key\"\n\
                ws_allowed_origins = [\"https://app.example/\"]\nws_max_frame_bytes = 65536\n\
                [[listener]]\nurl = \"ws://0.0.0.0:8081/x/y\"\nws_allowed_origins = []\nws_max_frame_bytes = 100\n";
    let cfg = load_with(&cli(&["--config", "c.toml"]), with_file(file)).expect("load");
    let ls = cfg.listeners();
    assert_eq!(ls[0].url.to_string(), "ws://127.0.0.1:8080/mqtt");
    assert_eq!(ls[0].tls, None);
    let ws = ls[0].ws.as_ref().expect("ws");
    assert_eq!(ws.path, "/mqtt");
    assert_eq!(ws.allowed_origins, vec!["https://app.example".to_string()]);
    assert_eq!(ws.max_frame_bytes, 65536);
    assert_eq!(ls[1].url.to_string(), "wss://127.0.0.1:8443/ws");
    assert!(ls[1].tls.is_some());
    assert_eq!(ls[1].ws.as_ref().expect("ws").path, "/ws");
    let ws = ls[2].ws.as_ref().expect("ws");
    assert_eq!(
        (
            ws.path.as_str(),
            ws.allowed_origins.len(),
            ws.max_frame_bytes
        ),
        ("/x/y", 0, 100)
    );

    // Each error names the key and the value.
    let e = |args: &[&str], file: &'static str| {
        load_with(&cli(args), with_file(file))
            .expect_err("must fail")
            .to_string()
    };
    assert!(e(&["--listen", "ws://0.0.0.0:8080/mqtt?x"], "").contains("the path is a plain /path"));
    assert_eq!(
        e(&["--ws-max-frame-bytes", "1"], ""),
        "option --ws-max-frame-bytes: expected an integer 2..=268435460, got \"1\""
    );
    assert!(e(&["--ws-allowed-origins", "app.example"], "")
        .contains("expected origins like https://app.example, or [] for any"));
    assert_eq!(
        e(&["--listen", "wss://127.0.0.1:8443"], ""),
        "option --tls-cert: expected a certificate file for the TLS listener wss://127.0.0.1:8443/mqtt, got none"
    );
    assert!(e(&["--listen", "mqtts://0.0.0.0:8883/x"], "")
        .contains("a path is only for ws:// and wss://"));
    assert!(e(&["--listen", "http://0.0.0.0:80"], "")
        .starts_with("option --listen: expected a listener URL"));
    assert_eq!(
        e(&["--listen", "mqtts://127.0.0.1:8883"], ""),
        "option --tls-cert: expected a certificate file for the TLS listener mqtts://127.0.0.1:8883, got none"
    );
    assert_eq!(
        e(&["--listen", "mqtts://127.0.0.1:8883", "--tls-cert", "a", "--tls-cert", "b", "--tls-key", "k"], ""),
        "option --tls-key: expected one key file per certificate file (2) for the TLS listener mqtts://127.0.0.1:8883, got 1 key file(s)"
    );
    assert_eq!(
        e(&["--listen", "mqtts://127.0.0.1:8883", "--tls-cert", "a", "--tls-key", "k", "--tls-require-certificate", "true"], ""),
        "option --tls-client-ca: expected a CA file, since tls_require_certificate is true for the TLS listener mqtts://127.0.0.1:8883, got none"
    );
    assert_eq!(
        e(&["--tls-identity-username", "dn"], ""),
        "option --tls-identity-username: expected one of none, cn, san, got \"dn\""
    );
    assert_eq!(
        e(&["--config", "c.toml"], "[[listener]]\nurl = \"mqtts://0.0.0.0:8883\"\ntls_certs = \"x\"\n"),
        "config c.toml: key \"listener[0].tls_certs\": expected one of url, tls_cert, tls_key, tls_client_ca, tls_require_certificate, tls_identity_username, tls_session_tickets, ws_allowed_origins, ws_max_frame_bytes, allow_anonymous, got \"x\""
    );
    assert_eq!(
        e(&["--config", "c.toml"], "[[listener]]\ntls_cert = \"x\"\n"),
        "config c.toml: key \"listener[0].url\": expected a listener URL like mqtt://0.0.0.0:1883, mqtts://[::]:8883, ws://0.0.0.0:8080/mqtt or 0.0.0.0:1883 (schemes mqtt, mqtts, ws, wss), got nothing"
    );
    assert_eq!(
        e(&["--config", "c.toml"], "listen = []\n"),
        "config c.toml: key \"listen\": expected at least one listener (listen or [[listener]]), got none"
    );
}

#[test]
fn mqttsn_keys_are_off_by_default_and_refuse_bad_values_naming_them() {
    let cfg = load_with(&cli(&[]), with_file("")).expect("load");
    assert_eq!(cfg.mqttsn_listen, None, "the gateway is off by default");
    let cfg = load_with(
        &cli(&["--mqttsn-listen", "none"]),
        with_file("mqttsn_listen = \"127.0.0.1:1884\"\n"),
    )
    .expect("load");
    assert_eq!(cfg.mqttsn_listen, None);
    let err = load_with(&cli(&["--mqttsn-max-datagram-bytes", "8"]), with_file("")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "option --mqttsn-max-datagram-bytes: expected an integer 16..=65535, got \"8\""
    );
    let err = load_with(&cli(&["--mqttsn-listen", "udp?"]), with_file("")).unwrap_err();
    assert!(
        err.to_string().contains("--mqttsn-listen") && err.to_string().contains("udp?"),
        "{err}"
    );
    let mut c = Config::default();
    let err = apply_toml(&mut c, "t.toml", "mqttsn_max_clients = 0").unwrap_err();
    assert!(err.to_string().contains("mqttsn_max_clients"), "{err}");
}

#[test]
fn bridge_tables_load_and_their_errors_name_bridge_and_key() {
    let file = "[[bridge]]\nname = \"cloud\"\naddress = \"127.0.0.1:1884\"\n\
                topics = [\"sensors/# out 1\"]\n";
    let cfg = load_with(&cli(&["--config", "c.toml"]), with_file(file)).expect("load");
    assert_eq!(cfg.bridge.len(), 1);
    assert_eq!(cfg.bridge[0].name, "cloud");
    assert!(Config::default().bridge.is_empty());
    let bad = "[[bridge]]\nname = \"cloud\"\naddress = \"127.0.0.1:1884\"\n\
               topics = [\"sensors/# out 7\"]\n";
    let e = load_with(&cli(&["--config", "c.toml"]), with_file(bad))
        .expect_err("must fail")
        .to_string();
    assert!(
        e.starts_with("config c.toml: key \"bridge[cloud].topics\": expected rules like"),
        "{e}"
    );
    assert!(e.contains("QoS \"7\" is not 0, 1 or 2"), "{e}");
}

#[test]
fn cluster_keys_name_the_bad_value() {
    for (key, bad) in [
        ("cluster_nats", "\"http://x:4222\""),
        ("cluster_nats", "\"nats://\""),
        ("cluster_node_name", "\"a b\""),
        ("cluster_nats_inbox_prefix", "\"_INBOX.>\""),
        ("cluster_nats_inbox_prefix", "\"_INBOX..n1\""),
        ("cluster_nats_inbox_prefix", "\"_INBOX.n1.\""),
        ("cluster_nats_inbox_prefix", "\"a b\""),
        ("cluster_kv_replicas", "0"),
        ("cluster_kv_replicas", "6"),
    ] {
        let mut c = Config::default();
        let e = apply_toml(&mut c, "t.toml", &format!("{key} = {bad}"))
            .expect_err(key)
            .to_string();
        assert!(e.contains(key), "{e}");
    }
    let mut c = Config::default();
    apply_toml(
        &mut c,
        "t.toml",
        "cluster_nats = \"nats://a:4222, tls://b:4222\"",
    )
    .expect("two urls");
    assert_eq!(c.cluster_nats, ["nats://a:4222", "tls://b:4222"]);
}

/// The self-fencing lease must end more than a beat before the others may take the
/// node for dead (review H3), and must outlast two beats; a bad pair is refused with
/// the key, the bound and the value.
#[test]
fn the_fence_must_come_a_beat_before_death() {
    let cfg = load_with(&cli(&[]), with_file("")).expect("load");
    assert_eq!(
        (
            cfg.cluster_beat_ms,
            cfg.cluster_fence_after_ms,
            cfg.cluster_dead_after_ms
        ),
        (1000, 3000, 5000)
    );
    let e = load_with(&cli(&["--cluster-fence-after-ms", "4000"]), with_file(""))
        .expect_err("fence = dead - beat")
        .to_string();
    assert_eq!(
        e,
        "option --cluster-fence-after-ms: expected less than cluster_dead_after_ms - cluster_beat_ms (5000 - 1000 = 4000 ms), got 4000"
    );
    let e = load_with(
        &cli(&["--config", "c.toml"]),
        with_file("cluster_dead_after_ms = 3500\n"),
    )
    .expect_err("fence above dead - beat")
    .to_string();
    assert!(
        e.starts_with("config c.toml: key \"cluster_fence_after_ms\": expected less than"),
        "{e}"
    );
    let e = load_with(&cli(&["--cluster-fence-after-ms", "1500"]), with_file(""))
        .expect_err("fence below two beats")
        .to_string();
    assert!(
        e.contains("at least 2 x cluster_beat_ms (2000 ms), got 1500"),
        "{e}"
    );
    let cfg = load_with(
        &cli(&[
            "--cluster-beat-ms",
            "500",
            "--cluster-fence-after-ms",
            "1500",
            "--cluster-dead-after-ms",
            "2500",
        ]),
        with_file(""),
    )
    .expect("a shorter lease that keeps the order");
    assert_eq!(cfg.cluster_fence_after_ms, 1500);
}

#[test]
fn durability_names_its_modes_and_refuses_others_by_value() {
    use super::Durability;
    for (text, want) in [
        ("none", Durability::None),
        ("process", Durability::Process),
        ("FSYNC", Durability::Fsync),
        ("interval:1000", Durability::IntervalMs(1000)),
    ] {
        let mut cfg = Config::default();
        apply_toml(&mut cfg, "t.toml", &format!("durability = \"{text}\"")).expect(text);
        assert_eq!(cfg.durability, want, "{text}");
    }
    for bad in ["sometimes", "interval:0", "interval:", "interval:99999999"] {
        let mut cfg = Config::default();
        let err = apply_toml(&mut cfg, "t.toml", &format!("durability = \"{bad}\""))
            .expect_err(bad)
            .to_string();
        assert!(
            err.contains("durability") && err.contains(bad) && err.contains("interval:MS"),
            "{err}"
        );
    }
    // Without a data directory nothing is written, whatever the mode.
    let mut cfg = Config::default();
    assert_eq!(cfg.store_mode(), Durability::None);
    cfg.data_dir = Some("d".into());
    assert_eq!(cfg.store_mode(), Durability::Process);
}

/// Cluster settings that would be ignored or fail only inside the cluster thread are
/// refused at load time, naming the key and the value (review10 L2).
#[test]
fn cluster_settings_that_cannot_work_together_are_refused_by_key() {
    let dir = std::env::temp_dir().join(format!("ringmq-cfg-l2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("f.pem");
    std::fs::write(&file, "x").expect("write");
    let file = file.to_str().expect("utf-8").to_string();
    let missing = dir.join("missing.pem").to_str().expect("utf-8").to_string();
    let nats = ["--cluster-nats", "nats://127.0.0.1:4222"];
    let refused = |extra: &[&str]| {
        let mut args = nats.to_vec();
        args.extend_from_slice(extra);
        load_with(&cli(&args), with_file(""))
            .expect_err("refused")
            .to_string()
    };
    let e = refused(&["--cluster-nats-tls-cert-file", &file]);
    assert_eq!(
        e,
        "option --cluster-nats-tls-key-file: expected a key file, since cluster_nats_tls_cert_file is set, got none"
    );
    let e = refused(&["--cluster-nats-tls-key-file", &file]);
    assert!(e.starts_with("option --cluster-nats-tls-cert-file:"), "{e}");
    let e = refused(&["--cluster-nats-password", "p"]);
    assert!(
        e.contains("cluster-nats-user") && e.contains("since cluster_nats_password is set"),
        "{e}"
    );
    let e = refused(&[
        "--cluster-nats-user",
        "u",
        "--cluster-nats-creds-file",
        &file,
    ]);
    assert!(
        e.contains("cluster-nats-creds-file") && e.contains(&file),
        "{e}"
    );
    for key in ["--cluster-nats-creds-file", "--cluster-nats-tls-ca-file"] {
        let e = refused(&[key, &missing]);
        assert!(
            e.starts_with(&format!("option {key}: expected a readable file"))
                && e.ends_with(&format!("got {missing}")),
            "{e}"
        );
    }
    let e = refused(&["--max-client-id-len", "3000"]);
    assert!(
        e.starts_with("option --max-client-id-len: expected at most 2759 with cluster_nats set"),
        "{e}"
    );
    let e = refused(&["--connect-timeout-ms", "3000"]);
    assert!(
        e.starts_with("option --connect-timeout-ms: expected more than 4000"),
        "{e}"
    );
    // Alone, or with settings that work together, all of it loads.
    load_with(&cli(&["--cluster-nats-password", "p"]), with_file("")).expect("single node");
    load_with(
        &cli(&[
            "--cluster-nats",
            "nats://127.0.0.1:4222",
            "--cluster-nats-user",
            "u",
            "--cluster-nats-password",
            "p",
            "--cluster-nats-tls-ca-file",
            &file,
            "--cluster-nats-tls-cert-file",
            &file,
            "--cluster-nats-tls-key-file",
            &file,
            "--max-client-id-len",
            "2759",
        ]),
        with_file(""),
    )
    .expect("a consistent cluster config");
    let _ = std::fs::remove_dir_all(&dir);
}
