//! Merging snapshots and the exposition's format and values, without a broker.

use std::collections::HashMap;

use super::prometheus::{render, Context};
use super::*;

fn loop_snapshot(shard: usize) -> LoopSnapshot {
    let mut l = LoopSnapshot {
        shard,
        busy_ns: 250,
        wall_ns: 1000,
        turns: 7,
        mesh_rejected: 1,
        ..Default::default()
    };
    l.core.connections = 10;
    l.core.sessions = 12;
    l.core.sessions_online = 9;
    l.core.messages_in = 100;
    l.core.messages_in_qos = [60, 30, 10];
    l.core.messages_out = 300;
    l.core.dropped_queue_full = 2;
    l.core.refused_per_ip = 3;
    l.core.retained = 5 + shard;
    l.core.bytes_retained = 500;
    l.core.bytes_queued = 40;
    l.io.accept_dropped_full = 4;
    l.io.cq_overflow = 1;
    l.mesh.overflowed = 6;
    l
}

fn node() -> NodeSnapshot {
    NodeSnapshot {
        loops: vec![loop_snapshot(0), loop_snapshot(1)],
        missing_loops: vec![],
    }
}

fn ctx() -> Context {
    Context {
        version: "0.1.0",
        io_backend: "epoll",
        process: Some(ProcessInfo {
            resident_bytes: 4096,
            cpu_seconds: 1.5,
            ..Default::default()
        }),
        uptime_seconds: 2.0,
    }
}

/// The samples of an exposition as `name{labels}` → value, checking the format on
/// the way: every sample belongs to a family declared just before with HELP and
/// TYPE, no family is declared twice, counters end in `_total`, names and values
/// are well formed.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut families: HashMap<String, String> = HashMap::new();
    let mut current: Option<String> = None;
    let mut help_for: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap().to_string();
            assert!(!families.contains_key(&name), "{name} declared twice");
            help_for = Some(name);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            assert_eq!(help_for.as_deref(), Some(name), "TYPE without HELP: {line}");
            assert!(matches!(kind, "counter" | "gauge"), "{line}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "counter {name} lacks _total");
            } else {
                assert!(!name.ends_with("_total"), "gauge {name} ends in _total");
            }
            families.insert(name.to_string(), kind.to_string());
            current = Some(name.to_string());
        } else {
            let (key, value) = line.rsplit_once(' ').expect("sample has a value");
            let name = key.split('{').next().unwrap();
            assert_eq!(
                Some(name),
                current.as_deref(),
                "sample outside its family: {line}"
            );
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad name {name}"
            );
            if let Some(labels) = key.strip_prefix(name).filter(|l| !l.is_empty()) {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
            assert!(
                samples.insert(key.to_string(), v).is_none(),
                "duplicate {key}"
            );
        }
    }
    samples
}

#[test]
fn counters_are_summed_and_the_retained_replica_is_not() {
    let n = node();
    let t = n.core_total();
    assert_eq!(t.messages_in, 200);
    assert_eq!(t.messages_in_qos, [120, 60, 20]);
    assert_eq!(t.connections, 20);
    // Every shard holds the whole retained store: the largest replica, not a sum.
    assert_eq!(t.retained, 6);
    assert_eq!(t.bytes_retained, 500);
    assert_eq!(n.io_total().accept_dropped_full, 8);
    assert_eq!(n.sum(|l| l.mesh_rejected), 2);
}

#[test]
fn the_exposition_is_well_formed_and_says_what_the_loops_counted() {
    let s = parse(&render(&node(), &ctx()));
    let v = |k: &str| *s.get(k).unwrap_or_else(|| panic!("{k} missing"));
    assert_eq!(
        v(r#"ringmq_build_info{version="0.1.0",io_backend="epoll"}"#),
        1.0
    );
    assert_eq!(v("ringmq_connections"), 20.0);
    assert_eq!(v(r#"ringmq_messages_received_total{qos="0"}"#), 120.0);
    assert_eq!(v(r#"ringmq_messages_received_total{qos="2"}"#), 20.0);
    assert_eq!(v("ringmq_messages_sent_total"), 600.0);
    assert_eq!(
        v(r#"ringmq_messages_dropped_total{reason="queue_full"}"#),
        4.0
    );
    assert_eq!(
        v(r#"ringmq_messages_dropped_total{reason="mesh_full"}"#),
        2.0
    );
    assert_eq!(v(r#"ringmq_messages_dropped_total{reason="expired"}"#), 0.0);
    assert_eq!(
        v(r#"ringmq_connections_refused_total{reason="max_connections_per_ip"}"#),
        6.0
    );
    assert_eq!(
        v(r#"ringmq_accept_failures_total{reason="table_full"}"#),
        8.0
    );
    assert_eq!(v(r#"ringmq_sessions{state="online"}"#), 18.0);
    assert_eq!(v(r#"ringmq_sessions{state="offline"}"#), 6.0);
    assert_eq!(v("ringmq_retained_messages"), 6.0);
    assert_eq!(v("ringmq_mesh_full_total"), 12.0);
    assert_eq!(v("ringmq_io_cq_overflow_total"), 2.0);
    assert_eq!(v(r#"ringmq_loop_busy_ratio{shard="1"}"#), 0.25);
    assert_eq!(v(r#"ringmq_memory_accounted_bytes{shard="0"}"#), 540.0);
    assert_eq!(v("process_resident_memory_bytes"), 4096.0);
    assert_eq!(v("process_cpu_seconds_total"), 1.5);
}

#[test]
fn every_drop_and_refusal_counter_carries_a_reason() {
    let text = render(&node(), &ctx());
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        if name.contains("dropped") || name.contains("refused") || name.contains("closed") {
            assert!(line.contains("reason=\""), "no reason label: {line}");
        }
    }
}

#[test]
fn a_node_with_no_loops_and_no_process_figures_still_renders_valid_text() {
    let empty = NodeSnapshot {
        loops: vec![],
        missing_loops: vec![0, 1],
    };
    let c = Context {
        process: None,
        ..ctx()
    };
    let s = parse(&render(&empty, &c));
    assert_eq!(s["ringmq_scrape_missing_loops"], 2.0);
    assert_eq!(s["ringmq_connections"], 0.0);
    assert!(!s.contains_key("process_resident_memory_bytes"));
}

#[test]
fn label_values_are_escaped() {
    let c = Context {
        version: "1\"\\\n",
        ..ctx()
    };
    let text = render(&node(), &c);
    assert!(text.contains(r#"version="1\"\\\n""#), "{text}");
}

#[test]
fn the_json_names_totals_and_every_loop() {
    let j = json::render(&node(), &ctx());
    assert!(j.starts_with('{') && j.ends_with("]}"), "{j}");
    for key in [
        "\"connections\":20",
        "\"messages_in\":200",
        "\"messages_out\":600",
        "\"dropped\":6",
        "\"rss_bytes\":4096",
        "\"shard\":0",
        "\"shard\":1",
        "\"busy_ratio\":0.2500",
    ] {
        assert!(j.contains(key), "{key} missing from {j}");
    }
    assert_eq!(j.matches('{').count(), j.matches('}').count());
}
