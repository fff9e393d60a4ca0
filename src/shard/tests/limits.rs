//! Hostile input and overload (issue #7): every limit with its exact wire behaviour
//! and its counter, and a stalled subscriber under 100 publishers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::cfg;
use crate::config::Config;
use crate::protocol::{Packet, Properties, QoS, ReasonCode, Subscribe, SubscriptionOptions};
use crate::shard::harness::*;
use crate::shard::{NodeCounters, Shard, ShardStats};

const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;

/// CONNACK return code 3 (Server unavailable), the 3.1.1 form of every refusal.
const V311_REFUSED: [u8; 4] = [0x20, 0x02, 0x00, 0x03];

fn refused(code: ReasonCode) -> Packet {
    connack(false, code, Properties::default())
}

fn total(cl: &Cluster, f: fn(&ShardStats) -> u64) -> u64 {
    cl.shards.iter().map(|s| f(s.stats())).sum()
}

/// A 3.1.1 client refused at CONNECT: exactly the 4 CONNACK bytes, then Close.
#[track_caller]
fn expect_refused_v311(cl: &mut Cluster, c: Cid) {
    assert_eq!(cl.clients[c].raw, V311_REFUSED);
    cl.expect_closed(c);
}

#[test]
fn max_connections_refuses_with_0x97_and_return_code_3() {
    let config = Config {
        max_connections: 2,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    let a = cl.connect_ok(V311, "a", ConnectOpts::default(), false);
    cl.connect_ok(V5, "b", ConnectOpts::default(), false);
    let c = cl.connect(V311, "c", ConnectOpts::default());
    expect_refused_v311(&mut cl, c);
    let d = cl.connect(V5, "d", ConnectOpts::default());
    cl.expect(d, refused(ReasonCode::QuotaExceeded));
    cl.expect_nothing(d);
    cl.expect_closed(d);
    let st = cl.shards[0].stats();
    assert_eq!(
        (st.refused_max_connections, st.connections, st.sessions),
        (2, 2, 2)
    );
    // A slot freed is a slot usable again.
    cl.drop_connection(a);
    cl.connect_ok(V311, "e", ConnectOpts::default(), false);
    assert_eq!(cl.shards[0].stats().refused_max_connections, 2);
}

#[test]
fn max_connections_is_node_wide_with_shared_counters() {
    let config = Arc::new(Config {
        max_connections: 3,
        ..cfg()
    });
    let mut cl = Cluster::new(2, (*config).clone());
    let node = NodeCounters::new();
    cl.shards = (0..2)
        .map(|i| Shard::in_node(i, 2, config.clone(), node.clone()))
        .collect();
    // Accepted on alternating shards; ids owned by either shard (some migrate).
    for (i, id) in ["a", "b", "c"].iter().enumerate() {
        let opts = ConnectOpts {
            accept_on: i % 2,
            ..ConnectOpts::default()
        };
        cl.connect_ok(V5, id, opts, false);
    }
    assert_eq!(node.connections(), 3);
    let opts = ConnectOpts {
        accept_on: 1,
        ..ConnectOpts::default()
    };
    let d = cl.connect(V5, "d", opts);
    cl.expect(d, refused(ReasonCode::QuotaExceeded));
    cl.expect_closed(d);
    assert_eq!(cl.shards[1].stats().refused_max_connections, 1);
    assert_eq!(node.connections(), 3);
    // Without shared counters each of 2 shards gets half (rounded up): 2 each.
    let mut cl = Cluster::new(2, (*config).clone());
    for i in 0..3 {
        let opts = ConnectOpts {
            accept_on: 0,
            ..ConnectOpts::default()
        };
        let id = id_on(0, 2, &format!("own{i}"));
        let c = cl.connect(V311, &id, opts);
        if i < 2 {
            cl.expect_open(c);
        } else {
            expect_refused_v311(&mut cl, c);
        }
    }
}

#[test]
fn max_connections_per_ip() {
    let config = Config {
        max_connections_per_ip: 2,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    let a = cl.connect_ok(V311, "a", ConnectOpts::default(), false);
    cl.connect_ok(V311, "b", ConnectOpts::default(), false);
    let c = cl.connect(V5, "c", ConnectOpts::default());
    cl.expect(c, refused(ReasonCode::QuotaExceeded));
    cl.expect_closed(c);
    let d = cl.connect(V31, "d", ConnectOpts::default());
    expect_refused_v311(&mut cl, d);
    assert_eq!(cl.shards[0].stats().refused_per_ip, 2);
    cl.drop_connection(a);
    cl.connect_ok(V311, "e", ConnectOpts::default(), false);
    // Another source address is counted on its own.
    let other = std::net::SocketAddr::from(([127, 0, 0, 2], 1));
    let now = cl.now;
    let conn = cl.shards[0].accept(other, now);
    let mut wire = bytes::BytesMut::new();
    crate::protocol::encode_packet(
        &connect_packet(V311, "f", &ConnectOpts::default()),
        V311,
        &mut wire,
    );
    cl.shards[0].on_read(conn, &wire, now);
    assert_eq!(
        cl.shards[0].take_tx(conn).as_deref(),
        Some(&[0x20, 0x02, 0x00, 0x00][..])
    );
    assert_eq!(cl.shards[0].stats().refused_per_ip, 2);
}

#[test]
fn connect_rate_refuses_with_0x9f_then_refills() {
    let config = Config {
        connect_rate_per_s: 2,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    cl.connect_ok(V311, "a", ConnectOpts::default(), false);
    cl.connect_ok(V5, "b", ConnectOpts::default(), false);
    let c = cl.connect(V5, "c", ConnectOpts::default());
    cl.expect(c, refused(ReasonCode::ConnectionRateExceeded));
    cl.expect_closed(c);
    let d = cl.connect(V311, "d", ConnectOpts::default());
    expect_refused_v311(&mut cl, d);
    // Two per second: one token per 500 ms.
    cl.advance(Duration::from_millis(499));
    let e = cl.connect(V311, "e", ConnectOpts::default());
    expect_refused_v311(&mut cl, e);
    cl.advance(Duration::from_millis(1));
    cl.connect_ok(V311, "f", ConnectOpts::default(), false);
    assert_eq!(cl.shards[0].stats().refused_rate, 3);
}

#[test]
fn rate_is_charged_once_for_a_migrating_connection() {
    let config = Config {
        connect_rate_per_s: 1,
        ..cfg()
    };
    let mut cl = Cluster::new(2, config);
    // Accepted on shard 0, owned by shard 1: only shard 0's token is used.
    let id = id_on(1, 2, "m");
    cl.connect_ok(V5, &id, ConnectOpts::default(), false);
    assert_eq!(cl.wiring.migrations, 1);
    let opts = ConnectOpts {
        accept_on: 1,
        ..ConnectOpts::default()
    };
    let id = id_on(1, 2, "n");
    cl.connect_ok(V5, &id, opts, false);
    assert_eq!(total(&cl, |s| s.refused_rate), 0);
}

#[test]
fn connect_timeout_reaps_half_open_and_slowloris_connections() {
    let config = Config {
        connect_timeout_ms: 1000,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    let half_open = cl.open(0, V311);
    let slow = cl.open(0, V311);
    let mut wire = bytes::BytesMut::new();
    crate::protocol::encode_packet(
        &connect_packet(V311, "slow", &ConnectOpts::default()),
        V311,
        &mut wire,
    );
    // One byte per 100 ms: 10 bytes are in when the deadline passes.
    for b in wire.iter().take(9) {
        cl.send_raw(slow, &[*b]);
        cl.advance(Duration::from_millis(100));
    }
    cl.send_raw(slow, &wire[9..10]);
    cl.advance(Duration::from_millis(99));
    cl.expect_open(half_open);
    cl.expect_open(slow);
    // A normal client is unaffected meanwhile.
    let ok = cl.connect_ok(V311, "ok", ConnectOpts::default(), false);
    cl.advance(Duration::from_millis(1));
    cl.expect_closed(half_open);
    cl.expect_closed(slow);
    assert!(cl.clients[half_open].raw.is_empty());
    assert!(cl.clients[slow].raw.is_empty());
    assert_eq!(cl.shards[0].stats().connect_timeouts, 2);
    cl.send(ok, Packet::PingReq);
    cl.expect(ok, Packet::PingResp);
    // The connected client is past its CONNECT: no timeout for it.
    cl.advance(Duration::from_secs(5));
    cl.expect_open(ok);
    assert_eq!(cl.shards[0].stats().connect_timeouts, 2);
}

#[test]
fn max_packet_size() {
    let config = Config {
        max_packet_size: 64,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    let big = "x".repeat(100);
    let a = cl.connect_ok(V5, "a", ConnectOpts::default(), false);
    cl.publish(a, "t", &big, Q0, false, 0);
    cl.expect(a, disconnect(ReasonCode::PacketTooLarge));
    cl.expect_closed(a);
    let b = cl.connect_ok(V311, "b", ConnectOpts::default(), false);
    let before = cl.clients[b].raw.len();
    cl.publish(b, "t", &big, Q0, false, 0);
    assert_eq!(cl.clients[b].raw.len(), before);
    cl.expect_closed(b);
    // A CONNECT over the limit: the 5.0 client is told why.
    let c = cl.connect(V5, &"c".repeat(80), ConnectOpts::default());
    cl.expect(c, refused(ReasonCode::PacketTooLarge));
    cl.expect_closed(c);
    // The limit is checked on the fixed header, before the body is buffered.
    let d = cl.connect_ok(V311, "d", ConnectOpts::default(), false);
    cl.send_raw(d, &[0x30, 0xFF, 0xFF, 0x03]);
    cl.expect_closed(d);
    assert_eq!(cl.shards[0].stats().closed_packet_too_large, 4);
}

fn subscribe_many(packet_id: u16, filters: &[&str], qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id,
        filters: filters
            .iter()
            .map(|f| {
                (
                    Bytes::copy_from_slice(f.as_bytes()),
                    SubscriptionOptions {
                        qos,
                        ..Default::default()
                    },
                )
            })
            .collect(),
        properties: Properties::default(),
    })
}

#[test]
fn max_subscriptions_per_client() {
    let config = Config {
        max_subscriptions_per_client: 2,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    let a = cl.connect_ok(V5, "a", ConnectOpts::default(), false);
    cl.send(a, subscribe_many(1, &["a", "b", "c"], Q1));
    use ReasonCode::*;
    cl.expect(a, suback(1, &[GrantedQoS1, GrantedQoS1, QuotaExceeded]));
    // Changing an existing subscription is not a new one.
    cl.send(a, subscribe_many(2, &["a", "d"], Q0));
    cl.expect(a, suback(2, &[Success, QuotaExceeded]));
    let b = cl.connect_ok(V311, "b", ConnectOpts::default(), false);
    cl.send(b, subscribe_many(3, &["a", "b", "c"], Q0));
    cl.expect(b, suback(3, &[Success, Success, UnspecifiedError]));
    assert_eq!(
        &cl.clients[b].raw[4..],
        &[0x90, 0x05, 0x00, 0x03, 0x00, 0x00, 0x80]
    );
    let st = cl.shards[0].stats();
    assert_eq!((st.refused_subscriptions, st.subscriptions), (3, 4));
}

#[test]
fn topic_levels_and_length() {
    let config = Config {
        max_topic_levels: 3,
        max_topic_len: 16,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    let a = cl.connect_ok(V5, "a", ConnectOpts::default(), false);
    let long = "x".repeat(17);
    cl.send(
        a,
        subscribe_many(1, &["a/b/c/d", "a/b/c", &long, "a/+/#"], Q0),
    );
    use ReasonCode::*;
    cl.expect(
        a,
        suback(
            1,
            &[TopicFilterInvalid, Success, TopicFilterInvalid, Success],
        ),
    );
    cl.publish(a, "a/b/c/d", "x", Q0, false, 0);
    cl.expect(a, disconnect(TopicNameInvalid));
    cl.expect_closed(a);
    let b = cl.connect_ok(V311, "b", ConnectOpts::default(), false);
    cl.publish(b, &long, "x", Q0, false, 0);
    cl.expect_nothing(b);
    cl.expect_closed(b);
    let st = cl.shards[0].stats();
    assert_eq!((st.refused_filters, st.closed_topic_invalid), (2, 2));
}

#[test]
fn inflight_window_and_inbound_receive_maximum() {
    let config = Config {
        max_inflight: 2,
        receive_maximum: 2,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "t", Q1);
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    for i in 1..=4u16 {
        cl.publish(p, "t", &format!("m{i}"), Q1, false, i);
        cl.expect(p, puback(i));
    }
    cl.expect(s, pubp("t", "m1", Q1, false, 1));
    cl.expect(s, pubp("t", "m2", Q1, false, 2));
    cl.expect_nothing(s);
    cl.send(s, puback(1));
    cl.expect(s, pubp("t", "m3", Q1, false, 3));
    cl.expect_nothing(s);
    // Our Receive Maximum (2): a third unreleased QoS 2 PUBLISH ends the connection.
    for i in 10..=11u16 {
        cl.publish(p, "u", "x", Q2, false, i);
        cl.expect(p, pubrec(i));
    }
    cl.publish(p, "u", "x", Q2, false, 12);
    cl.expect(p, disconnect(ReasonCode::ReceiveMaximumExceeded));
    cl.expect_closed(p);
    assert_eq!(cl.shards[0].stats().closed_receive_maximum, 1);
}

#[test]
fn session_queue_bounds_in_messages_and_bytes() {
    for (max_messages, max_bytes, kept) in [(3, 1 << 20, 3usize), (100, 150, 2)] {
        let config = Config {
            max_queued_messages: max_messages,
            max_queued_bytes: max_bytes,
            ..cfg()
        };
        let mut cl = Cluster::new(1, config);
        let opts = ConnectOpts {
            clean: false,
            ..ConnectOpts::default()
        };
        let s = cl.connect_ok(V311, "s", opts.clone(), false);
        cl.subscribe(s, "t", Q1);
        cl.drop_connection(s);
        let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
        for i in 1..=5u16 {
            cl.publish(p, "t", &format!("m-{i:02}"), Q1, false, i);
            cl.expect(p, puback(i));
        }
        // Cost of one message: topic 1 + payload 4 + 64.
        let st = cl.shards[0].stats();
        assert_eq!(
            (st.dropped_queue_full, st.bytes_queued),
            (5 - kept as u64, kept * 69)
        );
        let s = cl.connect_ok(V311, "s", opts, true);
        for i in 1..=kept as u16 {
            cl.expect(s, pubp("t", &format!("m-{i:02}"), Q1, false, i));
        }
        cl.expect_nothing(s);
        assert_eq!(cl.shards[0].stats().bytes_queued, 0);
    }
}

#[test]
fn memory_high_water_sheds_qos0_and_refuses_connections() {
    // The subscription's row counts too (`bytes_routes`).
    let row = filter_row_bytes("t/#");
    let config = Config {
        memory_high_water_bytes: 300 + row,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "t/#", Q1);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    // Retained: 1 + 300 + 64 = 365 bytes on the shard, over the mark.
    cl.publish(p, "r", &"x".repeat(300), Q0, true, 0);
    let st = cl.shards[0].stats();
    assert_eq!((st.bytes_retained, st.memory_bytes()), (365, 365 + row));
    cl.publish(p, "t/a", "shed", Q0, false, 0);
    cl.expect_nothing(s);
    cl.publish(p, "t/b", "kept", Q1, false, 7);
    cl.expect(p, puback(7));
    cl.expect(s, pubp("t/b", "kept", Q1, false, 1));
    let v5 = cl.connect(V5, "n5", ConnectOpts::default());
    cl.expect(v5, refused(ReasonCode::ServerBusy));
    cl.expect_closed(v5);
    let v3 = cl.connect(V311, "n3", ConnectOpts::default());
    expect_refused_v311(&mut cl, v3);
    let st = cl.shards[0].stats();
    assert_eq!((st.dropped_memory_qos0, st.refused_busy), (1, 2));
    // Below the mark again: QoS 0 flows and connections are accepted.
    cl.publish(p, "r", "", Q0, true, 0);
    assert_eq!(cl.shards[0].stats().memory_bytes(), row);
    cl.publish(p, "t/c", "flows", Q0, false, 0);
    cl.expect(s, pubp("t/c", "flows", Q0, false, 0));
    cl.connect_ok(V5, "n5", ConnectOpts::default(), false);
}

#[test]
fn memory_counts_unread_output() {
    // The subscription's row counts too (`bytes_routes`).
    let config = Config {
        memory_high_water_bytes: 100 + filter_row_bytes("t"),
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "t", Q0);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    cl.stall(s, true);
    // Each copy: 2 + 2 + 1 + 40 = 45 bytes. Copies are written while the shard is
    // at or under the mark: 0, 45, 90 → 135; then shed.
    let payload = "y".repeat(40);
    for _ in 0..5 {
        cl.publish(p, "t", &payload, Q0, false, 0);
    }
    let st = cl.shards[0].stats();
    assert_eq!((st.bytes_tx, st.dropped_memory_qos0), (135, 2));
    cl.stall(s, false);
    assert_eq!(cl.shards[0].stats().bytes_tx, 0);
    for _ in 0..3 {
        cl.expect(s, pubp("t", &payload, Q0, false, 0));
    }
    cl.expect_nothing(s);
}

#[test]
fn control_packets_count_against_the_outbound_bound() {
    // Bound 100 + allowance min(64 KiB, 100) = 200 bytes of unread output.
    let config = Config {
        max_outbound_bytes: 100,
        ..cfg()
    };
    for version in [V311, V5] {
        let mut cl = Cluster::new(1, config.clone());
        let a = cl.connect_ok(version, "a", ConnectOpts::default(), false);
        let start = cl.clients[a].raw.len();
        cl.stall(a, true);
        cl.send_raw(a, &[0xC0, 0x00].repeat(150));
        // 100 PINGRESPs fit; the 101st finds a peer that does not read: closed,
        // without a DISCONNECT (it would not be read either).
        cl.expect_closed(a);
        assert_eq!(cl.clients[a].raw.len() - start, 200);
        for _ in 0..100 {
            cl.expect(a, Packet::PingResp);
        }
        cl.expect_nothing(a);
        let st = cl.shards[0].stats();
        assert_eq!((st.closed_not_reading, st.bytes_tx, st.sessions), (1, 0, 0));
    }
    // SUBSCRIBE flood: SUBACKs are bounded the same way.
    let mut cl = Cluster::new(1, config);
    let a = cl.connect_ok(V311, "a", ConnectOpts::default(), false);
    cl.stall(a, true);
    let mut flood = bytes::BytesMut::new();
    for i in 1..=60u16 {
        crate::protocol::encode_packet(&subscribe_many(i, &["t"], Q0), V311, &mut flood);
    }
    cl.send_raw(a, &flood);
    cl.expect_closed(a);
    // SUBACK 3.1.1 with one code: 5 bytes; 40 fit in 200.
    assert_eq!(cl.clients[a].raw.len() - 4, 200);
    assert_eq!(cl.shards[0].stats().closed_not_reading, 1);
}

#[test]
fn reading_clients_are_never_closed_for_their_replies() {
    let config = Config {
        max_outbound_bytes: 100,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    let a = cl.connect_ok(V311, "a", ConnectOpts::default(), false);
    for _ in 0..20 {
        cl.send_raw(a, &[0xC0, 0x00].repeat(50));
        for _ in 0..50 {
            cl.expect(a, Packet::PingResp);
        }
    }
    cl.expect_open(a);
    assert_eq!(cl.shards[0].stats().closed_not_reading, 0);
}

#[test]
fn stalled_subscriber_under_100_publishers() {
    let config = Config {
        max_outbound_bytes: 2048,
        max_queued_messages: 50,
        max_inflight: 64,
        ..cfg()
    };
    // Per subscriber that falls behind (the stalled one, and the acking one between
    // its reads): the unread-output bound plus a full queue of 77-byte messages.
    let bound = 2 * (config.max_outbound_bytes + 50 * 77);
    let mut cl = Cluster::new(2, config);
    let stalled = cl.connect_ok(V311, "stalled", ConnectOpts::default(), false);
    cl.subscribe(stalled, "t/#", Q1);
    let n0 = cl.connect_ok(V311, "normal-0", ConnectOpts::default(), false);
    cl.subscribe(n0, "t/#", Q0);
    let n1 = cl.connect_ok(V5, "normal-1", ConnectOpts::default(), false);
    cl.subscribe(n1, "t/#", Q1);
    cl.stall(stalled, true);
    let publishers: Vec<Cid> = (0..100)
        .map(|i| {
            let opts = ConnectOpts {
                accept_on: i % 2,
                ..ConnectOpts::default()
            };
            cl.connect_ok(V311, &format!("pub-{i:03}"), opts, false)
        })
        .collect();
    let (mut got0, mut got1) = (0usize, 0usize);
    for k in 0..10u16 {
        for (i, &p) in publishers.iter().enumerate() {
            // 2 + 2 + 5 + 2 + 8 = 19 bytes per QoS 1 copy.
            let topic = format!("t/{i:03}");
            cl.publish(p, &topic, &format!("m{i:03}-{k:03}"), Q1, false, k + 1);
            cl.expect(p, puback(k + 1));
            for s in &cl.shards {
                assert!(s.stats().memory_bytes() <= bound, "{:?}", s.stats());
            }
        }
        while let Some(m) = cl.next(n0) {
            assert!(matches!(m, Packet::Publish(ref p) if p.qos == Q0));
            got0 += 1;
        }
        while let Some(m) = cl.next(n1) {
            let Packet::Publish(p) = m else {
                panic!("{m:?}")
            };
            cl.send(n1, puback(p.packet_id));
            got1 += 1;
        }
    }
    assert_eq!((got0, got1), (1000, 1000));
    // The stalled subscriber holds its window (64 copies, 19 bytes each) unread
    // and 50 queued (cost 5 + 8 + 64); the other 886 copies were dropped.
    let sh = &cl.shards[cl.clients[stalled].shard];
    let conn = cl.clients[stalled].conn;
    assert_eq!(sh.conns.get(conn).map(|c| c.tx.len()), Some(64 * 19));
    let st = sh.stats();
    assert_eq!(
        (st.bytes_tx, st.bytes_queued, st.dropped_queue_full),
        (64 * 19, 50 * 77, 886)
    );
    cl.expect_open(stalled);
    // Once it reads and acknowledges, it gets exactly the 114 it was kept.
    cl.stall(stalled, false);
    let mut got = 0;
    while let Some(m) = cl.next(stalled) {
        let Packet::Publish(p) = m else {
            panic!("{m:?}")
        };
        cl.send(stalled, puback(p.packet_id));
        got += 1;
    }
    assert_eq!(got, 114);
    assert_eq!(total(&cl, |s| s.bytes_queued as u64), 0);
}

#[test]
fn malformed_second_connect_gets_a_disconnect_code() {
    // Found by the connection fuzzer: a second CONNECT with a bad protocol name
    // decoded to 0x84, a CONNACK-only code, and was sent in a DISCONNECT.
    let mut cl = Cluster::new(1, cfg());
    let a = cl.connect_ok(V5, "a", ConnectOpts::default(), false);
    let bad_name = [
        0x10, 0x0F, 0x00, 0x04, b'$', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x03, b'a',
        b'b', b'c',
    ];
    cl.send_raw(a, &bad_name);
    cl.expect(a, disconnect(ReasonCode::ProtocolError));
    cl.expect_closed(a);
    assert_eq!(cl.shards[0].stats().closed_protocol_error, 1);
}

#[test]
fn will_topic_beyond_the_topic_limits_is_refused_at_connect() {
    let config = Config {
        max_topic_levels: 3,
        max_topic_len: 16,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    let deep = ConnectOpts {
        will: Some(will("a/b/c/d", "gone", Q0, false, Properties::default())),
        ..ConnectOpts::default()
    };
    let c5 = cl.connect(V5, "w5", deep);
    cl.expect(
        c5,
        connack(false, ReasonCode::TopicNameInvalid, Properties::default()),
    );
    cl.expect_closed(c5);
    let long = ConnectOpts {
        will: Some(will(
            &"x".repeat(17),
            "gone",
            Q0,
            false,
            Properties::default(),
        )),
        ..ConnectOpts::default()
    };
    let c3 = cl.connect(V311, "w3", long);
    cl.expect_nothing(c3);
    cl.expect_closed(c3);
    assert_eq!(cl.shards[0].stats().closed_topic_invalid, 2);
    // Within the limits the will is accepted.
    let ok = ConnectOpts {
        will: Some(will("a/b/c", "gone", Q0, false, Properties::default())),
        ..ConnectOpts::default()
    };
    cl.connect_ok(V5, "w-ok", ok, false);
}
