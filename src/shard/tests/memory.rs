//! Memory a client can make the shard hold, counted against `memory_high_water_bytes`
//! (issue #15): receive buffers (partial frames, the CONNECT bound), session counts
//! and route rows, and what queued messages keep alive.

use bytes::BytesMut;

use super::cfg;
use crate::config::Config;
use crate::protocol::{encode_packet, Packet, Properties, PropertyValues, ReasonCode};
use crate::shard::harness::*;
use crate::shard::lifecycle::RX_OVER_MARK_BYTES;

const Q0: crate::protocol::QoS = crate::protocol::QoS::AtMostOnce;

fn wire(packet: &Packet, version: crate::protocol::ProtocolVersion) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_packet(packet, version, &mut buf);
    buf.to_vec()
}

#[test]
fn receive_buffers_count_against_the_mark() {
    let config = Config {
        memory_high_water_bytes: 100_000,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    let a = cl.connect_ok(V5, "a", ConnectOpts::default(), false);
    let big = wire(&pubp("t", &"x".repeat(200_000), Q0, false, 0), V5);
    // Part of a frame: its buffer is the shard's only memory.
    cl.send_raw(a, &big[..10_000]);
    let st = cl.shards[0].stats();
    assert!((10_000..=20_000).contains(&st.bytes_rx), "{st:?}");
    assert_eq!(st.memory_bytes(), st.bytes_rx);
    // The rest: decoded, nothing held.
    cl.send_raw(a, &big[10_000..]);
    assert_eq!(cl.shards[0].stats().bytes_rx, 0);

    // Under the mark a partial frame may grow; once the shard is over it, the
    // connection whose frame is past the allowance is closed with 0x89.
    let b = cl.connect_ok(V5, "b", ConnectOpts::default(), false);
    cl.send_raw(a, &big[..60_000]);
    cl.expect_open(a);
    let held_by_a = cl.shards[0].stats().bytes_rx;
    assert!(held_by_a >= 60_000);
    cl.send_raw(b, &big[..RX_OVER_MARK_BYTES]);
    cl.expect_open(b);
    cl.send_raw(b, &big[RX_OVER_MARK_BYTES..60_000]);
    cl.expect(b, disconnect(ReasonCode::ServerBusy));
    cl.expect_closed(b);
    let st = cl.shards[0].stats();
    assert_eq!((st.closed_memory, st.bytes_rx), (1, held_by_a), "{st:?}");
    // Closing `b` took the shard back under the mark: new clients are admitted,
    // and `a` completes its frame.
    cl.connect_ok(V5, "n", ConnectOpts::default(), false);
    cl.send_raw(a, &big[60_000..]);
    cl.expect_open(a);
    assert_eq!(cl.shards[0].stats().bytes_rx, 0);
    // Released connections give everything back.
    cl.send_raw(a, &big[..5_000]);
    assert!(cl.shards[0].stats().bytes_rx >= 5_000);
    cl.drop_connection(a);
    assert_eq!(cl.shards[0].stats().bytes_rx, 0);
}

/// A CONNECT header announcing `remaining` bytes, with the protocol name and level
/// so that a refusal can be answered in the client's version.
fn connect_head(level: u8, remaining: usize) -> Vec<u8> {
    let mut b = vec![0x10];
    let mut n = remaining;
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        b.push(byte);
        if n == 0 {
            break;
        }
    }
    b.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', level, 0x02, 0, 60]);
    b
}

#[test]
fn before_connect_only_a_connect_sized_packet_is_read() {
    let config = cfg();
    let bound = config.max_connect_packet_bytes;
    assert_eq!(bound, 64 * 1024);
    let mut cl = Cluster::new(1, config);
    // Half of a CONNECT within the bound: held, and counted.
    let ok = cl.open(0, V5);
    let mut head = connect_head(5, bound - 5);
    head.resize(bound / 2, 0);
    cl.send_raw(ok, &head);
    cl.expect_open(ok);
    assert!(cl.shards[0].stats().bytes_rx >= bound / 2);
    // A CONNECT (or anything) announcing more is refused from its header, long
    // before max_packet_size (1 MiB): MQTT 5 gets CONNACK 0x95, 3.1.1 a close.
    let v5 = cl.open(0, V5);
    cl.send_raw(v5, &connect_head(5, bound));
    cl.expect(
        v5,
        connack(false, ReasonCode::PacketTooLarge, Properties::default()),
    );
    cl.expect_closed(v5);
    let v3 = cl.open(0, V311);
    cl.send_raw(v3, &connect_head(4, bound));
    assert!(cl.clients[v3].raw.is_empty());
    cl.expect_closed(v3);
    assert_eq!(cl.shards[0].stats().closed_packet_too_large, 2);
    // After CONNECT, max_packet_size applies again.
    let c = cl.connect_ok(V311, "c", ConnectOpts::default(), false);
    let big = wire(&pubp("t", &"x".repeat(2 * bound), Q0, false, 0), V311);
    cl.send_raw(c, &big);
    cl.expect_open(c);
    assert_eq!(cl.shards[0].stats().closed_packet_too_large, 2);
}

#[test]
fn max_sessions_refuses_new_ids_with_0x97_and_return_code_3() {
    let config = Config {
        max_sessions: 2,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    let persistent = ConnectOpts {
        clean: false,
        ..Default::default()
    };
    // Two sessions, kept offline.
    let a = cl.connect_ok(V311, "a", persistent.clone(), false);
    cl.drop_connection(a);
    let b = cl.connect_ok(V311, "b", persistent.clone(), false);
    cl.drop_connection(b);
    assert_eq!(cl.shards[0].stats().sessions, 2);
    // A third id: refused, in each version's form, and counted.
    let v5 = cl.connect(V5, "c5", ConnectOpts::default());
    cl.expect(
        v5,
        connack(false, ReasonCode::QuotaExceeded, Properties::default()),
    );
    cl.expect_closed(v5);
    let v3 = cl.connect(V311, "c3", ConnectOpts::default());
    assert_eq!(cl.clients[v3].raw, vec![0x20, 0x02, 0x00, 0x03]);
    cl.expect_closed(v3);
    assert_eq!(cl.shards[0].stats().refused_max_sessions, 2);
    // Existing sessions resume, and a clean start replaces one (no more sessions).
    let a = cl.connect_ok(V311, "a", persistent.clone(), true);
    cl.drop_connection(a);
    let b = cl.connect_ok(V311, "b", ConnectOpts::default(), false);
    // Ending a session frees its place.
    cl.drop_connection(b);
    assert_eq!(cl.shards[0].stats().sessions, 1);
    cl.connect_ok(V5, "c5", ConnectOpts::default(), false);
}

#[test]
fn never_expiring_sessions_get_the_default_cap() {
    let config = cfg();
    assert_eq!(config.persistent_session_expiry_s, Some(7200));
    let mut cl = Cluster::new(1, config);
    // 3.1.1 clean session 0 asks for "never".
    let persistent = ConnectOpts {
        clean: false,
        ..Default::default()
    };
    let a = cl.connect_ok(V311, "a", persistent.clone(), false);
    cl.drop_connection(a);
    cl.advance(std::time::Duration::from_secs(7199));
    let a = cl.connect_ok(V311, "a", persistent.clone(), true);
    cl.drop_connection(a);
    cl.advance(std::time::Duration::from_secs(7201));
    assert_eq!(cl.shards[0].stats().sessions, 0);
    cl.connect_ok(V311, "a", persistent, false);
    // MQTT 5 0xFFFFFFFF: lowered, and the client is told in CONNACK (3.2.2.3.2).
    let never = ConnectOpts {
        clean: false,
        properties: Properties::from(PropertyValues {
            session_expiry_interval_s: Some(u32::MAX),
            ..Default::default()
        }),
        ..Default::default()
    };
    let c = cl.connect(V5, "v5", never);
    match cl.next(c) {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.code, ReasonCode::Success);
            assert_eq!(ack.properties.session_expiry_interval_s, Some(7200));
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // An interval within the caps is used as asked and not echoed.
    let hour = ConnectOpts {
        clean: false,
        properties: Properties::from(PropertyValues {
            session_expiry_interval_s: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let h = cl.connect(V5, "h", hour);
    match cl.next(h) {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.properties.session_expiry_interval_s, None),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn route_rows_count_against_the_mark() {
    let config = Config {
        memory_high_water_bytes: 10_000,
        ..cfg()
    };
    let mut cl = Cluster::new(2, config);
    let s = cl.connect_ok(V311, &id_on(0, 2, "subs"), ConnectOpts::default(), false);
    // Each filter is a row on both shards: shard 1 holds only replicated rows,
    // packed into their trie nodes (32 B each).
    let filters: Vec<String> = (0..400).map(|i| format!("fleet/{i}/cmd")).collect();
    for f in &filters {
        cl.subscribe(s, f, Q0);
    }
    let st = cl.shards[1].stats();
    assert!(st.bytes_routes > 10_000, "{st:?}");
    assert_eq!(st.memory_bytes(), st.bytes_routes);
    // Over the mark on rows alone: shard 1 refuses new clients.
    let n = cl.connect(
        V5,
        &id_on(1, 2, "n"),
        ConnectOpts {
            accept_on: 1,
            ..Default::default()
        },
    );
    cl.expect(
        n,
        connack(false, ReasonCode::ServerBusy, Properties::default()),
    );
    // Rows go with the subscriptions.
    cl.drop_connection(s);
    cl.pump();
    for sh in &cl.shards {
        assert_eq!(sh.stats().bytes_routes, 0, "{:?}", sh.stats());
    }
    cl.connect_ok(
        V5,
        &id_on(1, 2, "n"),
        ConnectOpts {
            accept_on: 1,
            ..Default::default()
        },
        false,
    );
}

#[test]
fn queued_and_offline_in_flight_messages_own_their_bytes() {
    let mut cl = Cluster::new(2, cfg());
    let persistent = ConnectOpts {
        clean: false,
        ..Default::default()
    };
    let sub_id = id_on(1, 2, "s");
    let s = cl.connect_ok(V311, &sub_id, persistent, false);
    cl.subscribe(s, "t", crate::protocol::QoS::AtLeastOnce);
    let p = cl.connect_ok(V311, &id_on(0, 2, "p"), ConnectOpts::default(), false);
    // Online: "a" is sent and stays unacknowledged (in flight).
    cl.publish(p, "t", "a", crate::protocol::QoS::AtLeastOnce, false, 1);
    cl.expect(p, puback(1));
    assert!(matches!(cl.next(s), Some(Packet::Publish(_))));
    cl.drop_connection(s);
    // Offline: "b" arrives from the other shard (a slice of shard 0's receive
    // buffer) and is queued.
    cl.publish(p, "t", "b", crate::protocol::QoS::AtLeastOnce, false, 2);
    cl.expect(p, puback(2));
    let shard = &cl.shards[1];
    let session = shard
        .sessions
        .find(sub_id.as_bytes())
        .expect("session kept");
    let d = shard
        .sessions
        .get(session)
        .and_then(|s| s.delivery.as_deref())
        .expect("delivery state");
    assert_eq!((d.inflight.len(), d.queue.len()), (1, 1));
    assert!(d.inflight.iter().all(|f| f.out.msg.owned));
    assert!(d.queue.iter().all(|o| o.msg.owned));
}
