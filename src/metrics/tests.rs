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
        http_refused: 0,
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
            assert!(matches!(kind, "counter" | "gauge" | "histogram"), "{line}");
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
            // A histogram's samples carry a suffix on the family's name.
            let family = match current.as_deref() {
                Some(f) if families.get(f).map(String::as_str) == Some("histogram") => {
                    let base = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|suffix| name.strip_suffix(suffix));
                    assert_eq!(base, Some(f), "sample outside its histogram: {line}");
                    f
                }
                _ => name,
            };
            assert_eq!(
                Some(family),
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
    assert!(j.starts_with('{') && j.ends_with("}}"), "{j}");
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

/// `(name, setter)` for every integer field of a struct. The destructuring without
/// `..` in the generated check makes a field added to the struct a compile error
/// here until it is listed (or listed as `skip`, with the reason beside it).
macro_rules! fields {
    ($ty:ident { $($f:ident),* $(,)? } skip { $($s:ident),* $(,)? }) => {{
        #[allow(dead_code)]
        fn all_listed(x: &$ty) {
            let $ty { $($f: _,)* $($s: _,)* } = x;
        }
        vec![$(
            (stringify!($f), (|x: &mut $ty, v: u64| x.$f = v as _) as fn(&mut $ty, u64))
        ),*]
    }};
}

/// Every counter of every struct a loop snapshot carries, as a setter on the
/// snapshot: what the export test moves one at a time.
/// A counter's path and how to set it on a snapshot.
type Setter = (String, Box<dyn Fn(&mut LoopSnapshot, u64)>);

fn every_counter() -> Vec<Setter> {
    use crate::bridge::BridgeStats;
    use crate::io::IoStats;
    use crate::ring::MeshStats;
    use crate::shard::{ShardStats, SnStats};
    use crate::transport::ws::WsRefused;
    let mut out: Vec<Setter> = Vec::new();
    let core = fields!(ShardStats {
        connections, sessions, sessions_expired, sessions_online, subscriptions,
        messages_out, bytes_in, bytes_out, dropped_outbound_full, dropped_queue_full,
        dropped_too_large, retained_streamed, dropped_expired, dropped_offline_qos0,
        dropped_retained_full, dropped_retained_bytes, dropped_retained_memory,
        dropped_no_subscriber, unmatched, store_records, store_records_refused, store_write_errors,
        store_acks_refused, bytes_queued, messages_queued, inflight, retained, bytes_tx,
        bytes_shared, bytes_retained, bytes_rx, bytes_routes, accepted,
        refused_max_connections, refused_per_ip, refused_max_sessions, refused_rate,
        refused_busy, refused_keepalive, refused_handoff, closed_superseded,
        connect_timeouts, closed_packet_too_large, closed_protocol_error,
        closed_topic_invalid, refused_filters, refused_subscriptions,
        closed_receive_maximum, dropped_memory_qos0, closed_slow_consumer,
        closed_not_reading, route_live_count, route_live_total_us, route_live_max_us,
        route_live_slow, closed_memory, auth_bad_credentials, auth_not_authorized,
        auth_rate_limited, auth_verified, auth_cache_hits, auth_pool_busy,
        auth_jwt_verified, auth_jwt_refused, auth_jwt_expired, acl_denied_publish, acl_denied_subscribe,
        acl_denied_delivery,
    } skip {
        // The sum of `messages_in_qos`, which is exported by QoS (set below).
        messages_in,
        messages_in_qos,
        sn,
    });
    for (n, f) in core {
        out.push((format!("core.{n}"), Box::new(move |l, v| f(&mut l.core, v))));
    }
    for q in 0..3 {
        out.push((
            format!("core.messages_in_qos[{q}]"),
            Box::new(move |l, v| l.core.messages_in_qos[q] = v),
        ));
    }
    let sn = fields!(SnStats {
        clients, datagrams_in, datagrams_out, bad_datagrams, unexpected_msgs,
        connects_refused_full, topic_ids_refused, buffered_dropped, oversize_dropped,
        retransmits, clients_lost, wills_published, send_dropped, forwarded,
        forward_dropped,
    } skip {});
    for (n, f) in sn {
        out.push((
            format!("core.sn.{n}"),
            Box::new(move |l, v| f(&mut l.core.sn, v)),
        ));
    }
    let io = fields!(IoStats {
        accepted, accept_dropped_full, accept_errors, accept_multi_armed, recv_nobufs,
        migrate_failed, migrate_refused_full, adopt_unpaired_reaped,
        migrate_descriptor_lost, migrate_slot_reclaimed, doorbell_retried,
        doorbell_failed, send_refused_busy, sends_resumed, cq_overflow, sq_full,
    } skip {});
    for (n, f) in io {
        out.push((format!("io.{n}"), Box::new(move |l, v| f(&mut l.io, v))));
    }
    let mesh = fields!(MeshStats { sent, overflowed, rejected } skip {});
    for (n, f) in mesh {
        out.push((format!("mesh.{n}"), Box::new(move |l, v| f(&mut l.mesh, v))));
    }
    let ws = fields!(WsRefused {
        bad_request, no_mqtt_subprotocol, request_too_large, method_not_allowed,
        not_found, upgrade_required, forbidden_origin, protocol_error, text_frame,
        frame_too_large,
    } skip {});
    for (n, f) in ws {
        out.push((
            format!("ws_refused.{n}"),
            Box::new(move |l, v| f(&mut l.ws_refused, v)),
        ));
    }
    let lp = fields!(LoopSnapshot {
        mesh_inbound_waiting, mesh_rejected, migrations_out, migrations_failed,
        handoffs_in, handoffs_expired, drain_timeouts, tls_failed, lingered,
        linger_refused_full, busy_ns, wall_ns, turns,
    } skip {
        // Set below, bucket by bucket.
        latency,
        // The label of every per-loop sample.
        shard,
        // Listed above, field by field.
        core, io, mesh, ws_refused, bridges,
    });
    for (n, f) in lp {
        out.push((n.to_string(), Box::new(f)));
    }
    // The overflow bucket, `counts[BUCKETS]`, is not a sample of its own: `+Inf` is
    // `count` (set below).
    for i in 0..latency::BUCKETS {
        out.push((
            format!("latency.counts[{i}]"),
            Box::new(move |l, v| l.latency.counts[i] = v),
        ));
    }
    out.push((
        "latency.sum_us".into(),
        Box::new(|l, v| l.latency.sum_us = v),
    ));
    out.push(("latency.count".into(), Box::new(|l, v| l.latency.count = v)));
    let bridge = fields!(BridgeStats {
        connect_attempts, connects, connect_failures, disconnects, out_queued, out_sent,
        out_acked, out_dropped_queue_full, in_received, in_unmatched, subscribe_refused,
        protocol_errors,
    } skip {});
    for (n, f) in bridge {
        out.push((
            format!("bridges[0].stats.{n}"),
            Box::new(move |l, v| f(&mut l.bridges[0].stats, v)),
        ));
    }
    out.push((
        "bridges[0].held".into(),
        Box::new(|l, v| l.bridges[0].held = v),
    ));
    out.push((
        "bridges[0].local_dropped".into(),
        Box::new(|l, v| l.bridges[0].local_dropped = v),
    ));
    // Up at 1 (the base), down at any other value.
    out.push((
        "bridges[0].up".into(),
        Box::new(|l, v| l.bridges[0].up = v == 1),
    ));
    out
}

fn one_loop_with_a_bridge() -> LoopSnapshot {
    let mut l = LoopSnapshot::default();
    l.bridges.push(BridgeSnapshot {
        name: "b".into(),
        ..Default::default()
    });
    l
}

#[test]
fn every_counter_of_every_snapshot_struct_moves_the_exposition() {
    let counters = every_counter();
    // A base where every counter is 1, so a figure made of two (a ratio, a
    // difference) moves when either does.
    let mut base = one_loop_with_a_bridge();
    for (_, set) in &counters {
        set(&mut base, 1);
    }
    let render_one = |l: LoopSnapshot| {
        let node = NodeSnapshot {
            loops: vec![l],
            missing_loops: vec![],
        };
        render(&node, &ctx())
    };
    let before = render_one(base.clone());
    parse(&before);
    let mut silent = Vec::new();
    for (name, set) in &counters {
        let mut l = base.clone();
        set(&mut l, 7_654_321);
        if render_one(l) == before {
            silent.push(name.clone());
        }
    }
    assert!(silent.is_empty(), "not exported in /metrics: {silent:?}");
}

#[test]
fn every_counter_family_reaches_the_json_and_sys_topics() {
    let mut l = one_loop_with_a_bridge();
    for (_, set) in &every_counter() {
        set(&mut l, 3);
    }
    let node = NodeSnapshot {
        loops: vec![l.clone()],
        missing_loops: vec![],
    };
    let j = json::render(&node, &ctx());
    let sys = sys::SysState::default().update(&node, &ctx(), 10.0);
    let text = render(&node, &ctx());
    for f in families::families(&l) {
        let mut pairs = Vec::new();
        for (label, v) in &f.samples {
            pairs.push(format!("\"{label}\":{v}"));
            let topic = format!("$SYS/broker/ringmq/{}/{label}", f.short);
            let got = sys.iter().find(|(t, _)| *t == topic);
            assert_eq!(
                got.map(|(_, p)| p.as_str()),
                Some(v.to_string().as_str()),
                "{topic}"
            );
            let sample = format!("{}{{{}=\"{label}\"}} {v}", f.name, f.label);
            assert!(text.contains(&sample), "{sample} missing from /metrics");
        }
        let obj = format!("\"{}\":{{{}}}", f.short, pairs.join(","));
        assert!(j.contains(&obj), "{obj} missing from {j}");
    }
}

#[test]
fn every_cluster_counter_is_exported() {
    use crate::cluster::ClusterStatus;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    type Set = fn(&ClusterStatus, u64);
    macro_rules! atomics {
        ($($f:ident),* $(,)?) => {{
            #[allow(dead_code)]
            fn all_listed(x: &ClusterStatus) {
                let ClusterStatus {
                    node: _, origin: _, connected: _, stopped: _, fenced: _, qos2_window: _,
                    kv_replicas: _, jetstream: _, name_conflict: _, retained_loaded: _,
                    timings_mismatch: _,
                    // A flag the loops read, not a figure (`forward_dropped` counts it).
                    forward_full: _,
                    $($f: _,)*
                } = x;
            }
            vec![$( (stringify!($f), (|x: &ClusterStatus, v: u64| {
                let a: &AtomicU64 = &x.$f;
                a.store(v, Relaxed)
            }) as Set) ),*]
        }};
    }
    let counters = atomics!(
        disconnects,
        forwarded,
        received,
        duplicates,
        malformed,
        dropped_out,
        dropped_in,
        forward_dropped,
        slow_consumers,
        subscriptions,
        retained_applied,
        retained_dropped,
        retained_errors,
        qos_stored,
        qos_unconfirmed,
        sessions_claimed,
        sessions_received,
        sessions_handed,
        sessions_lost,
        sessions_kept,
        delta_duplicates,
        confirms_retried,
        confirms_given_up,
        sessions_local,
        sessions_saved,
        sessions_recovered,
        sessions_save_retries,
        sessions_expired,
        wills_resumed,
        sessions_reconciled,
        wills_stored,
        wills_errors,
        wills_published,
        wills_sweeps,
        wills_taken,
        wills_withdrawn,
        fences,
        wills_fenced,
        wills_fenced_published,
        sessions_reasserted,
        sessions_sent_on,
        max_payload,
        refused_subjects,
        refused_large,
        shared_dropped,
        qos2_resends,
        name_conflicts,
        timings_mismatches,
        reconcile_runs,
    );
    let before = ClusterStatus::default().prometheus_text();
    for (name, set) in counters {
        let s = ClusterStatus::default();
        set(&s, 42);
        assert_ne!(s.prometheus_text(), before, "cluster {name} not exported");
    }
    let s = ClusterStatus {
        connected: AtomicBool::new(true),
        ..Default::default()
    };
    assert_ne!(
        s.prometheus_text(),
        before,
        "cluster connected not exported"
    );
    let s = ClusterStatus {
        stopped: AtomicBool::new(true),
        ..Default::default()
    };
    assert_ne!(s.prometheus_text(), before, "cluster stopped not exported");
    let s = ClusterStatus {
        fenced: AtomicBool::new(true),
        ..Default::default()
    };
    assert_ne!(s.prometheus_text(), before, "cluster fenced not exported");
    let s = ClusterStatus {
        retained_loaded: AtomicBool::new(true),
        ..Default::default()
    };
    assert_ne!(
        s.prometheus_text(),
        before,
        "cluster retained_loaded not exported"
    );
    let s = ClusterStatus::default();
    *s.name_conflict.lock().expect("lock") = Some("aa".into());
    assert_ne!(
        s.prometheus_text(),
        before,
        "cluster name_conflict not exported"
    );
    let s = ClusterStatus::default();
    *s.timings_mismatch.lock().expect("lock") = Some("x".into());
    assert_ne!(
        s.prometheus_text(),
        before,
        "cluster timings_mismatch not exported"
    );
    let s = ClusterStatus::default();
    for p in [
        crate::cluster::health::JsPart::QosStream,
        crate::cluster::health::JsPart::Retained,
        crate::cluster::health::JsPart::Sessions,
        crate::cluster::health::JsPart::Nodes,
        crate::cluster::health::JsPart::Wills,
    ] {
        s.jetstream.lock().expect("lock").made(p);
    }
    assert_ne!(
        s.prometheus_text(),
        before,
        "cluster jetstream_ready not exported"
    );
}

#[test]
fn the_latency_histogram_is_merged_and_rendered_cumulative() {
    let mut n = node();
    n.loops[0].latency.record(20); // bucket le=0.000032
    n.loops[0].latency.record(100); // le=0.000128
    n.loops[1].latency.record(100);
    n.loops[1].latency.record(10_000_000); // over the last bound: only +Inf
    let s = parse(&render(&n, &ctx()));
    let b = |le: &str| s[&format!("ringmq_publish_to_kernel_seconds_bucket{{le=\"{le}\"}}")];
    assert_eq!(b("0.000032"), 1.0);
    assert_eq!(b("0.000064"), 1.0);
    assert_eq!(b("0.000128"), 3.0);
    assert_eq!(b("4.194304"), 3.0);
    assert_eq!(b("+Inf"), 4.0);
    assert_eq!(s["ringmq_publish_to_kernel_seconds_count"], 4.0);
    assert_eq!(s["ringmq_publish_to_kernel_seconds_sum"], 10.00022);
}
