//! Retained streams (`shard/stream.rs`): a new subscription gets every matching
//! retained message whatever its buffers, the documented view of a set that changes
//! mid-stream, takeover and UNSUBSCRIBE mid-stream, and the per-turn slice bound.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::cfg;
use crate::config::Config;
use crate::protocol::{Packet, Properties, QoS, SubscriptionOptions};
use crate::shard::harness::*;

const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;

/// Above `stream::LIST_MAX`, so `t/#` walks the whole store (the scan position).
const MANY: usize = 5000;

/// (topic, payload, retain, dup) of each PUBLISH `c` received, in order; acks each
/// QoS 1/2 copy when `ack` (PUBREC/PUBREL/PUBCOMP handled) and returns what is left.
fn drain(cl: &mut Cluster, c: Cid, ack: bool) -> Vec<(String, String, bool, bool)> {
    let mut got = Vec::new();
    while let Some(p) = cl.next(c) {
        match p {
            Packet::Publish(p) => {
                got.push((
                    String::from_utf8_lossy(&p.topic).into_owned(),
                    String::from_utf8_lossy(&p.payload).into_owned(),
                    p.retain,
                    p.dup,
                ));
                if ack {
                    match p.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => cl.send(c, puback(p.packet_id)),
                        QoS::ExactlyOnce => cl.send(c, pubrec(p.packet_id)),
                    }
                }
            }
            Packet::PubRel(r) if ack => cl.send(c, pubcomp(r.packet_id)),
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

/// Stores `n` retained messages `t/<i>` = `v0` from a publisher on `shard`, `i`
/// zero-padded so that topic order (the order streams send in) is the order stored.
fn store(cl: &mut Cluster, shard: usize, n: usize, qos: QoS) -> Cid {
    let id = id_on(shard, cl.shards.len(), "pub");
    let p = cl.connect_ok(V311, &id, ConnectOpts::default(), false);
    for i in 0..n {
        cl.publish(p, &format!("t/{i:04}"), "v0", qos, true, 1);
        cl.next(p);
    }
    p
}

fn small_buffers() -> Config {
    Config {
        max_outbound_bytes: 2048,
        max_inflight: 10,
        ..cfg()
    }
}

/// Every topic once with its stored value and retain = 1, none dropped, at each
/// QoS, with a subscriber whose socket is stalled at SUBSCRIBE time, on the
/// publisher's shard and on another one.
#[test]
fn stream_delivers_every_retained_message_past_the_buffers() {
    for shards in [1, 2] {
        for qos in [Q0, Q1, Q2] {
            let mut cl = Cluster::new(shards, small_buffers());
            store(&mut cl, shards - 1, MANY, Q1);
            let s = cl.connect_ok(V311, &id_on(0, shards, "s"), ConnectOpts::default(), false);
            cl.stall(s, true);
            cl.subscribe_with(
                s,
                "t/#",
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
                Properties::default(),
            );
            assert_eq!(
                cl.shards[0].streams.len(),
                1,
                "waiting for room, not dropped"
            );
            cl.stall(s, false);
            assert_eq!(cl.next(s), Some(suback(1, &[granted(qos)])));
            let mut seen = BTreeMap::new();
            loop {
                let got = drain(&mut cl, s, true);
                if got.is_empty() {
                    break;
                }
                for (t, v, retain, dup) in got {
                    assert!(retain && !dup && v == "v0", "{t} {v} {retain} {dup}");
                    *seen.entry(t).or_insert(0) += 1;
                }
            }
            assert_eq!(seen.len(), MANY, "{shards} shards {qos:?}");
            assert!(
                seen.values().all(|&n| n == 1),
                "{shards} shards {qos:?}: a topic twice"
            );
            let st = cl.shards[0].stats();
            assert_eq!((st.dropped_outbound_full, st.dropped_queue_full), (0, 0));
            assert_eq!(st.retained_streamed, MANY as u64);
            assert_eq!(cl.shards[0].streams.len(), 0, "the cursor ends");
        }
    }
}

/// The documented view of a set changing mid-stream, checked exactly, for a `#`
/// and a `+` filter and with the changes
/// published on the subscriber's shard and on another one (replica updates).
#[test]
fn changes_during_a_stream() {
    for (shards, pub_shard) in [(1, 0), (2, 0), (2, 1)] {
        for filter in ["t/#", "t/+"] {
            let n = if filter == "t/#" { MANY } else { 300 };
            let mut cl = Cluster::new(shards, small_buffers());
            let p = store(&mut cl, pub_shard, n, Q1);
            let s = cl.connect_ok(V311, &id_on(0, shards, "s"), ConnectOpts::default(), false);
            cl.subscribe(s, filter, Q1);
            // The inflight window (10) holds the stream: t/0..t/9 are out.
            let first = drain(&mut cl, s, false);
            let want: Vec<_> = (0..10)
                .map(|i| (format!("t/{i:04}"), "v0".to_string(), true, false))
                .collect();
            assert_eq!(first, want, "{shards} {pub_shard} {filter}");
            // Updated after it was sent; updated, deleted and deleted-then-stored
            // before the cursor reaches them; created.
            for (t, v) in [
                ("t/0005", "v1"),
                ("t/0100", "v1"),
                ("t/0200", ""),
                ("t/0201", ""),
                ("t/0201", "v2"),
                ("t/new", "v1"),
            ] {
                cl.publish(p, t, v, Q1, true, 1);
                cl.next(p);
            }
            // Acks of the first ten let the queued live copies out, then the rest.
            for i in 1..=10 {
                cl.send(s, puback(i));
            }
            let mut rest = Vec::new();
            loop {
                let got = drain(&mut cl, s, true);
                if got.is_empty() {
                    break;
                }
                rest.extend(got);
            }
            let live: Vec<_> = [
                ("t/0005", "v1"),
                ("t/0100", "v1"),
                ("t/0200", ""),
                ("t/0201", ""),
                ("t/0201", "v2"),
                ("t/new", "v1"),
            ]
            .iter()
            .map(|(t, v)| (t.to_string(), v.to_string(), false, false))
            .collect();
            assert_eq!(rest[..live.len()], live[..], "live copies first");
            let mut retained: Vec<_> = rest[live.len()..].to_vec();
            retained.sort();
            let mut want: Vec<_> = (10..n)
                .filter(|i| ![100, 200, 201].contains(i))
                .map(|i| (format!("t/{i:04}"), "v0".to_string(), true, false))
                .collect();
            want.sort();
            assert_eq!(retained, want, "{shards} {pub_shard} {filter}");
        }
    }
}

/// Takeover with the session kept: the unacknowledged copies are resent (DUP) and
/// the cursor resumes where it stopped. With a clean start the cursor ends.
#[test]
fn takeover_mid_stream_resumes_with_the_session() {
    let mut cl = Cluster::new(1, small_buffers());
    store(&mut cl, 0, MANY, Q1);
    let keep = ConnectOpts {
        clean: false,
        ..ConnectOpts::default()
    };
    let s = cl.connect_ok(V311, "s", keep.clone(), false);
    cl.subscribe(s, "t/#", Q1);
    let first = drain(&mut cl, s, false);
    assert_eq!(first.len(), 10);
    for i in 1..=4 {
        cl.send(s, puback(i));
    }
    // The four acks let four more out: t/10..t/13.
    assert_eq!(drain(&mut cl, s, false).len(), 4);
    let s2 = cl.connect_ok(V311, "s", keep.clone(), true);
    cl.expect_closed(s);
    let mut seen: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    for (t, _, _, dup) in first.iter().skip(4).cloned().chain(
        // t/10..t/13 also unacknowledged.
        (10..14).map(|i| (format!("t/{i:04}"), String::new(), true, false)),
    ) {
        assert!(!dup);
        seen.entry(t).or_default().push(false);
    }
    for (t, _, _, _) in first.iter().take(4) {
        seen.entry(t.clone()).or_default().push(false);
    }
    let mut resent = 0;
    loop {
        let got = drain(&mut cl, s2, true);
        if got.is_empty() {
            break;
        }
        for (t, v, retain, dup) in got {
            assert!(retain && v == "v0");
            resent += usize::from(dup);
            seen.entry(t).or_default().push(dup);
        }
    }
    assert_eq!(resent, 10, "the unacknowledged copies, again with DUP");
    assert_eq!(seen.len(), MANY);
    for (t, copies) in &seen {
        let fresh = copies.iter().filter(|d| !**d).count();
        assert_eq!(fresh, 1, "{t}: {copies:?}");
    }

    // Clean start: the session, its subscription and its cursor go.
    let s3 = cl.connect_ok(V311, "s", keep.clone(), true);
    cl.subscribe(s3, "t/#", Q1);
    assert_eq!(drain(&mut cl, s3, false).len(), 10);
    assert_eq!(cl.shards[0].streams.len(), 1);
    let s4 = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.expect_closed(s3);
    assert_eq!(cl.shards[0].streams.len(), 0, "clean start ends the stream");
    cl.expect_nothing(s4);
}

/// UNSUBSCRIBE ends the stream; overlapping subscriptions each get theirs.
#[test]
fn unsubscribe_and_overlap() {
    let mut cl = Cluster::new(1, small_buffers());
    store(&mut cl, 0, MANY, Q1);
    let s = cl.connect_ok(V311, "s", ConnectOpts::default(), false);
    cl.subscribe(s, "t/#", Q1);
    assert_eq!(drain(&mut cl, s, false).len(), 10);
    cl.send(
        s,
        Packet::Unsubscribe(crate::protocol::Unsubscribe {
            packet_id: 2,
            filters: smallvec::smallvec![Bytes::from_static(b"t/#")],
            properties: Properties::default(),
        }),
    );
    assert!(matches!(cl.next(s), Some(Packet::UnsubAck(_))));
    assert_eq!(cl.shards[0].streams.len(), 0);
    for i in 1..=10 {
        cl.send(s, puback(i));
    }
    cl.expect_nothing(s);

    let o = cl.connect_ok(V311, "o", ConnectOpts::default(), false);
    let mut filters = smallvec::SmallVec::new();
    for f in ["t/#", "t/+"] {
        filters.push((
            Bytes::from_static(f.as_bytes()),
            SubscriptionOptions::default(),
        ));
    }
    cl.send(
        o,
        Packet::Subscribe(crate::protocol::Subscribe {
            packet_id: 1,
            filters,
            properties: Properties::default(),
        }),
    );
    assert_eq!(cl.next(o), Some(suback(1, &[granted(Q0), granted(Q0)])));
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    loop {
        let got = drain(&mut cl, o, true);
        if got.is_empty() {
            break;
        }
        for (t, ..) in got {
            *seen.entry(t).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), MANY);
    assert!(seen.values().all(|&n| n == 2), "one copy per subscription");
}

/// One cursor writes at most `SLICE_MESSAGES` per turn, all cursors together at
/// most `TURN_MESSAGES` (the first slices of SUBSCRIBEs read in one turn
/// included), and a cursor with more to send keeps the loop awake.
#[test]
fn streams_run_in_bounded_slices() {
    use crate::shard::stream::{SLICE_MESSAGES, TURN_MESSAGES};
    let config = Config {
        max_outbound_bytes: 64 << 20,
        ..cfg()
    };
    let mut cl = Cluster::new(1, config);
    store(&mut cl, 0, MANY, Q1);
    let mut subs = Vec::new();
    for name in ["a", "b", "c", "d", "e"] {
        let s = cl.connect_ok(V311, name, ConnectOpts::default(), false);
        cl.stall(s, true);
        subs.push(s);
    }
    let now = cl.now;
    let mut streamed = 0;
    for &s in &subs {
        let conn = cl.clients[s].conn;
        let mut buf = bytes::BytesMut::new();
        crate::protocol::encode_packet(
            &Packet::Subscribe(crate::protocol::Subscribe {
                packet_id: 1,
                filters: smallvec::smallvec![(
                    Bytes::from_static(b"t/#"),
                    SubscriptionOptions::default()
                )],
                properties: Properties::default(),
            }),
            V311,
            &mut buf,
        );
        cl.shards[0].on_read(conn, &buf, now);
        // Until the turn's budget is spent; the rest start next turn.
        streamed += SLICE_MESSAGES.min(TURN_MESSAGES - streamed as usize) as u64;
        assert_eq!(
            cl.shards[0].stats().retained_streamed,
            streamed,
            "first slice at SUBSCRIBE"
        );
    }
    assert_eq!(
        streamed, TURN_MESSAGES as u64,
        "5 first slices exceed a turn"
    );
    assert!(cl.shards[0].streams_pending());
    cl.shards[0].run_streams(now);
    assert_eq!(
        cl.shards[0].stats().retained_streamed,
        streamed,
        "the SUBSCRIBEs spent this turn's budget"
    );
    assert!(cl.shards[0].streams_pending());
    cl.shards[0].run_streams(now);
    streamed += TURN_MESSAGES as u64;
    assert_eq!(cl.shards[0].stats().retained_streamed, streamed, "one turn");
    for _ in 0..100 {
        cl.shards[0].run_streams(now);
    }
    assert!(!cl.shards[0].streams_pending());
    assert_eq!(cl.shards[0].stats().retained_streamed, 5 * MANY as u64);
}

/// Retain Handling on a re-SUBSCRIBE mid-stream: 1 (subscription exists) leaves the
/// stream as it is, 0 restarts it from the first topic, 2 starts none.
#[test]
fn retain_handling_mid_stream() {
    let mut cl = Cluster::new(1, small_buffers());
    store(&mut cl, 0, MANY, Q1);
    let s = cl.connect_ok(V5, "s", ConnectOpts::default(), false);
    let rh = |n| SubscriptionOptions {
        qos: Q1,
        retain_handling: n,
        ..Default::default()
    };
    cl.subscribe_with(s, "t/#", rh(0), Properties::default());
    assert!(matches!(cl.next(s), Some(Packet::SubAck(_))));
    let first = drain(&mut cl, s, false);
    assert_eq!(first.len(), 10);
    assert_eq!(first[0].0, "t/0000");
    for rh_value in [1, 2] {
        cl.subscribe_with(s, "t/#", rh(rh_value), Properties::default());
        assert!(matches!(cl.next(s), Some(Packet::SubAck(_))));
        cl.expect_nothing(s);
        assert_eq!(
            cl.shards[0].streams.len(),
            1,
            "RH {rh_value}: the stream goes on"
        );
    }
    // Acks let the same stream continue at t/10.
    for i in 1..=10 {
        cl.send(s, puback(i));
    }
    let next = drain(&mut cl, s, false);
    assert_eq!(next.len(), 10);
    assert_eq!(next[0].0, "t/0010");
    // 0: from the start again.
    cl.subscribe_with(s, "t/#", rh(0), Properties::default());
    assert!(matches!(cl.next(s), Some(Packet::SubAck(_))));
    for i in 11..=20 {
        cl.send(s, puback(i));
    }
    let again = drain(&mut cl, s, false);
    assert_eq!(again.len(), 10);
    assert_eq!(again[0].0, "t/0000", "restarted");
    assert_eq!(cl.shards[0].streams.len(), 1);
}

/// A kept session that goes offline mid-stream: nothing is sent (or queued) while
/// it is away; the stream resumes on reconnect after the resent inflight copies.
#[test]
fn offline_mid_stream_resumes_on_reconnect() {
    let mut cl = Cluster::new(1, small_buffers());
    store(&mut cl, 0, MANY, Q1);
    let keep = ConnectOpts {
        clean: false,
        ..ConnectOpts::default()
    };
    let s = cl.connect_ok(V311, "s", keep.clone(), false);
    cl.subscribe(s, "t/#", Q1);
    assert_eq!(drain(&mut cl, s, false).len(), 10);
    cl.drop_connection(s);
    let queued = cl.shards[0].stats().bytes_queued;
    assert_eq!(
        queued, 0,
        "the stream queues nothing for an offline session"
    );
    assert_eq!(cl.shards[0].streams.len(), 1);
    let s2 = cl.connect_ok(V311, "s", keep, true);
    let mut fresh = BTreeMap::new();
    let mut dups = 0;
    loop {
        let got = drain(&mut cl, s2, true);
        if got.is_empty() {
            break;
        }
        for (t, _, _, dup) in got {
            if dup {
                dups += 1;
            } else {
                *fresh.entry(t).or_insert(0) += 1;
            }
        }
    }
    assert_eq!(dups, 10, "the ten unacknowledged copies, resent");
    assert_eq!(fresh.len(), MANY - 10, "the rest, once each");
    assert!(fresh.values().all(|&n| n == 1));
    assert!(!fresh.contains_key("t/0000"));
}
