//! Shard tests of sessions: wills (when they fire, delay, properties), session expiry,
//! clean sessions, offline queues and resume with redelivery, takeover, stale and
//! out-of-order hand-offs, and the connection/session counters.

use std::time::Duration;

use super::cfg;
use crate::protocol::{
    Disconnect, Packet, Properties, PropertyValues, PublishProperties, PublishRare, QoS, ReasonCode,
};
use crate::shard::harness::*;

const Q0: QoS = QoS::AtMostOnce;
const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;

fn watcher(cl: &mut Cluster, filter: &str) -> Cid {
    let w = cl.connect_ok(V311, "watcher", ConnectOpts::default(), false);
    cl.subscribe(w, filter, Q1);
    w
}

fn with_will(v_props: Properties, will_props: Properties) -> ConnectOpts {
    ConnectOpts {
        will: Some(will("will/t", "gone", Q0, false, will_props)),
        properties: v_props,
        ..Default::default()
    }
}

fn expiry(s: u32) -> Properties {
    Properties::from(PropertyValues {
        session_expiry_interval_s: Some(s),
        ..Default::default()
    })
}

fn delay(s: u32) -> Properties {
    Properties::from(PropertyValues {
        will_delay_interval_s: Some(s),
        ..Default::default()
    })
}

fn disc(code: ReasonCode) -> Packet {
    Packet::Disconnect(Disconnect {
        code,
        properties: Properties::default(),
    })
}

#[test]
fn will_on_abnormal_close() {
    let mut cl = Cluster::new(2, cfg());
    let w = watcher(&mut cl, "will/#");
    let c = cl.connect_ok(
        V311,
        &id_on(1, 2, "c"),
        with_will(Properties::default(), Properties::default()),
        false,
    );
    cl.drop_connection(c);
    cl.expect(w, pubp("will/t", "gone", Q0, false, 0));
}

#[test]
fn no_will_on_disconnect_0() {
    let mut cl = Cluster::new(1, cfg());
    let w = watcher(&mut cl, "will/#");
    let c = cl.connect_ok(
        V5,
        "c",
        with_will(Properties::default(), Properties::default()),
        false,
    );
    cl.send(c, disc(ReasonCode::Success));
    cl.expect_closed(c);
    cl.expect_nothing(w);
    let d = cl.connect_ok(
        V311,
        "d",
        with_will(Properties::default(), Properties::default()),
        false,
    );
    cl.send(d, disc(ReasonCode::Success));
    cl.expect_nothing(w);
}

#[test]
fn will_on_disconnect_0x04() {
    let mut cl = Cluster::new(1, cfg());
    let w = watcher(&mut cl, "will/#");
    let c = cl.connect_ok(
        V5,
        "c",
        with_will(Properties::default(), Properties::default()),
        false,
    );
    cl.send(c, disc(ReasonCode::DisconnectWithWillMessage));
    cl.expect_closed(c);
    cl.expect(w, pubp("will/t", "gone", Q0, false, 0));
}

#[test]
fn will_on_keepalive_timeout_and_protocol_error() {
    let mut cl = Cluster::new(1, cfg());
    let w = watcher(&mut cl, "will/#");
    let opts = ConnectOpts {
        keepalive_s: 1,
        ..with_will(Properties::default(), Properties::default())
    };
    let _c = cl.connect_ok(V311, "c", opts, false);
    cl.advance(Duration::from_millis(1500));
    cl.expect(w, pubp("will/t", "gone", Q0, false, 0));
    let d = cl.connect_ok(
        V5,
        "d",
        with_will(Properties::default(), Properties::default()),
        false,
    );
    cl.send_raw(d, &[0xC1, 0x00]);
    cl.expect(w, pubp("will/t", "gone", Q0, false, 0));
}

#[test]
fn will_delay_cancelled_by_reconnect() {
    let mut cl = Cluster::new(1, cfg());
    let w = watcher(&mut cl, "will/#");
    let opts = ConnectOpts {
        clean: false,
        ..with_will(expiry(100), delay(10))
    };
    let c = cl.connect_ok(V5, "c", opts.clone(), false);
    cl.drop_connection(c);
    cl.advance(Duration::from_secs(5));
    cl.expect_nothing(w);
    let c2 = cl.connect_ok(V5, "c", ConnectOpts { will: None, ..opts }, true);
    cl.advance(Duration::from_secs(20));
    cl.expect_nothing(w);
    cl.expect_open(c2);
}

#[test]
fn will_delay_elapses() {
    let mut cl = Cluster::new(1, cfg());
    let w = watcher(&mut cl, "will/#");
    let c = cl.connect_ok(
        V5,
        "c",
        ConnectOpts {
            clean: false,
            ..with_will(expiry(100), delay(10))
        },
        false,
    );
    cl.drop_connection(c);
    cl.advance(Duration::from_millis(9_999));
    cl.expect_nothing(w);
    cl.advance(Duration::from_millis(1));
    cl.expect(w, pubp("will/t", "gone", Q0, false, 0));
    // The session itself lives on.
    let _c2 = cl.connect_ok(
        V5,
        "c",
        ConnectOpts {
            clean: false,
            ..Default::default()
        },
        true,
    );
}

#[test]
fn will_published_at_session_end_before_delay() {
    let mut cl = Cluster::new(1, cfg());
    let w = watcher(&mut cl, "will/#");
    let c = cl.connect_ok(V5, "c", with_will(expiry(5), delay(100)), false);
    cl.drop_connection(c);
    cl.advance(Duration::from_secs(4));
    cl.expect_nothing(w);
    cl.advance(Duration::from_secs(1));
    cl.expect(w, pubp("will/t", "gone", Q0, false, 0));
    let _c2 = cl.connect_ok(
        V5,
        "c",
        ConnectOpts {
            clean: false,
            ..Default::default()
        },
        false,
    );
    cl.advance(Duration::from_secs(200));
    cl.expect_nothing(w);
}

#[test]
fn will_properties_forwarded_to_v5_subscriber() {
    let mut cl = Cluster::new(1, cfg());
    let w = cl.connect_ok(V5, "w", ConnectOpts::default(), false);
    cl.subscribe(w, "will/#", Q1);
    let wp = Properties::from(PropertyValues {
        content_type: Some(bytes::Bytes::from_static(b"text/plain")),
        user_properties: vec![(
            bytes::Bytes::from_static(b"a"),
            bytes::Bytes::from_static(b"b"),
        )],
        ..Default::default()
    });
    let c = cl.connect_ok(V5, "c", with_will(Properties::default(), wp), false);
    cl.drop_connection(c);
    let mut m = publish("will/t", "gone", Q0, false, 0);
    m.properties = PublishProperties {
        rare: PublishRare {
            content_type: Some(bytes::Bytes::from_static(b"text/plain")),
            user_properties: vec![(
                bytes::Bytes::from_static(b"a"),
                bytes::Bytes::from_static(b"b"),
            )],
            ..Default::default()
        }
        .into(),
        ..Default::default()
    };
    cl.expect(w, Packet::Publish(m));
}

#[test]
fn session_expiry_zero_n_and_never() {
    // "Never" stays never when the operator removes the default cap
    // (`persistent_session_expiry_s`, tested in `tests::memory`).
    let mut config = cfg();
    config.persistent_session_expiry_s = None;
    let mut cl = Cluster::new(1, config);
    // 0: ends at disconnect.
    let a = cl.connect_ok(
        V5,
        "a",
        ConnectOpts {
            clean: false,
            ..Default::default()
        },
        false,
    );
    cl.subscribe(a, "t", Q1);
    cl.drop_connection(a);
    let _a = cl.connect_ok(
        V5,
        "a",
        ConnectOpts {
            clean: false,
            ..Default::default()
        },
        false,
    );
    // n seconds.
    let b_opts = ConnectOpts {
        clean: false,
        properties: expiry(10),
        ..Default::default()
    };
    let b = cl.connect_ok(V5, "b", b_opts.clone(), false);
    cl.drop_connection(b);
    cl.advance(Duration::from_secs(9));
    let b = cl.connect_ok(V5, "b", b_opts.clone(), true);
    cl.drop_connection(b);
    cl.advance(Duration::from_secs(10));
    let _b = cl.connect_ok(V5, "b", b_opts, false);
    // 0xFFFFFFFF: never.
    let c_opts = ConnectOpts {
        clean: false,
        properties: expiry(u32::MAX),
        ..Default::default()
    };
    let c = cl.connect_ok(V5, "c", c_opts.clone(), false);
    cl.drop_connection(c);
    cl.advance(Duration::from_secs(10 * 365 * 86_400));
    let _c = cl.connect_ok(V5, "c", c_opts, true);
}

#[test]
fn session_expiry_capped_by_config() {
    let mut config = cfg();
    config.max_session_expiry_s = 60;
    let mut cl = Cluster::new(1, config);
    let opts = ConnectOpts {
        clean: false,
        ..Default::default()
    };
    let c = cl.connect_ok(V311, "c", opts.clone(), false);
    cl.drop_connection(c);
    cl.advance(Duration::from_secs(59));
    let c = cl.connect_ok(V311, "c", opts.clone(), true);
    cl.drop_connection(c);
    cl.advance(Duration::from_secs(60));
    let _c = cl.connect_ok(V311, "c", opts, false);
}

#[test]
fn v311_clean_session_discards_state() {
    let mut cl = Cluster::new(1, cfg());
    let c = cl.connect_ok(
        V311,
        "c",
        ConnectOpts {
            clean: false,
            ..Default::default()
        },
        false,
    );
    cl.subscribe(c, "t", Q1);
    cl.drop_connection(c);
    let c = cl.connect_ok(V311, "c", ConnectOpts::default(), false);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    cl.publish(p, "t", "x", Q1, false, 1);
    cl.expect(p, puback(1));
    cl.expect_nothing(c);
}

#[test]
fn disconnect_cannot_raise_zero_expiry() {
    let mut cl = Cluster::new(1, cfg());
    let c = cl.connect_ok(V5, "c", ConnectOpts::default(), false);
    cl.send(
        c,
        Packet::Disconnect(Disconnect {
            code: ReasonCode::Success,
            properties: expiry(30),
        }),
    );
    cl.expect(c, disc(ReasonCode::ProtocolError));
    cl.expect_closed(c);
}

#[test]
fn disconnect_may_change_nonzero_expiry() {
    let mut cl = Cluster::new(1, cfg());
    let opts = ConnectOpts {
        clean: false,
        properties: expiry(30),
        ..Default::default()
    };
    let c = cl.connect_ok(V5, "c", opts.clone(), false);
    cl.send(
        c,
        Packet::Disconnect(Disconnect {
            code: ReasonCode::Success,
            properties: expiry(0),
        }),
    );
    cl.expect_closed(c);
    let _c = cl.connect_ok(V5, "c", opts, false);
}

#[test]
fn offline_queue_bounded_with_counted_drops_then_resume() {
    let mut config = cfg();
    config.max_queued_messages = 2;
    let mut cl = Cluster::new(1, config);
    let opts = ConnectOpts {
        clean: false,
        ..Default::default()
    };
    let s = cl.connect_ok(V311, "s", opts.clone(), false);
    cl.subscribe(s, "t", Q2);
    cl.drop_connection(s);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    cl.publish(p, "t", "q0", Q0, false, 0);
    for i in 1..=3u16 {
        cl.publish(p, "t", &format!("m{i}"), Q1, false, i);
        cl.expect(p, puback(i));
    }
    let st = cl.shards[0].stats();
    assert_eq!((st.dropped_queue_full, st.dropped_offline_qos0), (1, 1));
    assert!(st.bytes_queued > 0);
    let s = cl.connect_ok(V311, "s", opts, true);
    cl.expect(s, pubp("t", "m1", Q1, false, 1));
    cl.expect(s, pubp("t", "m2", Q1, false, 2));
    cl.expect_nothing(s);
    assert_eq!(cl.shards[0].stats().bytes_queued, 0);
}

#[test]
fn offline_qos0_queued_when_configured() {
    let mut config = cfg();
    config.queue_qos0_offline = true;
    let mut cl = Cluster::new(1, config);
    let opts = ConnectOpts {
        clean: false,
        ..Default::default()
    };
    let s = cl.connect_ok(V311, "s", opts.clone(), false);
    cl.subscribe(s, "t", Q0);
    cl.drop_connection(s);
    let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
    cl.publish(p, "t", "q0", Q0, false, 0);
    let s = cl.connect_ok(V311, "s", opts, true);
    cl.expect(s, pubp("t", "q0", Q0, false, 0));
}

#[test]
fn resume_redelivers_unacked_with_dup_and_pubrel() {
    let mut cl = Cluster::new(2, cfg());
    let id = id_on(1, 2, "s");
    let opts = ConnectOpts {
        clean: false,
        ..Default::default()
    };
    let s = cl.connect_ok(V311, &id, opts.clone(), false);
    cl.subscribe(s, "t", Q2);
    let p = cl.connect_ok(V311, &id_on(0, 2, "p"), ConnectOpts::default(), false);
    cl.publish(p, "t", "one", Q1, false, 1);
    cl.publish(p, "t", "two", Q2, false, 2);
    cl.expect(s, pubp("t", "one", Q1, false, 1));
    cl.expect(s, pubp("t", "two", Q2, false, 2));
    cl.send(s, pubrec(2));
    cl.expect(s, pubrel(2));
    cl.drop_connection(s);
    cl.publish(p, "t", "three", Q1, false, 3);
    let s = cl.connect_ok(V311, &id, opts, true);
    let mut one = publish("t", "one", Q1, false, 1);
    one.dup = true;
    cl.expect(s, Packet::Publish(one));
    cl.expect(s, pubrel(2));
    cl.expect(s, pubp("t", "three", Q1, false, 3));
    cl.expect_nothing(s);
}

#[test]
fn queued_message_expiry_decremented_and_dropped() {
    let mut cl = Cluster::new(1, cfg());
    let opts = ConnectOpts {
        clean: false,
        properties: expiry(1000),
        ..Default::default()
    };
    let s = cl.connect_ok(V5, "s", opts.clone(), false);
    cl.subscribe(s, "t", Q1);
    cl.drop_connection(s);
    let p = cl.connect_ok(V5, "p", ConnectOpts::default(), false);
    for (payload, exp) in [("short", 2), ("long", 10)] {
        let mut m = publish("t", payload, Q1, false, 1);
        m.properties.message_expiry_interval_s = Some(exp);
        cl.send(p, Packet::Publish(m));
        cl.expect(p, puback(1));
    }
    cl.advance(Duration::from_secs(3));
    let s = cl.connect_ok(V5, "s", opts, true);
    let mut want = publish("t", "long", Q1, false, 1);
    want.properties.message_expiry_interval_s = Some(7);
    cl.expect(s, Packet::Publish(want));
    cl.expect_nothing(s);
    assert_eq!(cl.shards[0].stats().dropped_expired, 1);
}

#[test]
fn takeover_disconnects_old_connection_0x8e() {
    let mut cl = Cluster::new(2, cfg());
    let id = id_on(1, 2, "dev");
    let opts = ConnectOpts {
        clean: false,
        properties: expiry(60),
        ..Default::default()
    };
    let old = cl.connect_ok(V5, &id, opts.clone(), false);
    cl.subscribe(old, "t", Q1);
    let new = cl.connect_ok(V5, &id, opts, true);
    cl.expect(old, disc(ReasonCode::SessionTakenOver));
    cl.expect_closed(old);
    cl.expect_open(new);
    // The subscription moved with the session.
    let p = cl.connect_ok(V5, &id_on(0, 2, "p"), ConnectOpts::default(), false);
    cl.publish(p, "t", "x", Q1, false, 1);
    cl.expect(new, pubp("t", "x", Q1, false, 1));
    cl.expect_nothing(old);
    assert_eq!(cl.shards[1].stats().sessions, 1);
}

#[test]
fn takeover_with_clean_start_discards_session() {
    let mut cl = Cluster::new(1, cfg());
    let opts = ConnectOpts {
        clean: false,
        properties: expiry(60),
        ..Default::default()
    };
    let old = cl.connect_ok(V5, "dev", opts, false);
    cl.subscribe(old, "t", Q1);
    let new = cl.connect_ok(V5, "dev", ConnectOpts::default(), false);
    cl.expect(old, disc(ReasonCode::SessionTakenOver));
    assert_eq!(cl.shards[0].stats().subscriptions, 0);
    cl.expect_open(new);
}

#[test]
fn takeover_will_rules() {
    let mut cl = Cluster::new(1, cfg());
    let w = watcher(&mut cl, "will/#");
    // 3.1.1: the will is published when the old connection is closed by takeover.
    let _a = cl.connect_ok(
        V311,
        "a",
        ConnectOpts {
            clean: false,
            ..with_will(Properties::default(), Properties::default())
        },
        false,
    );
    let _a2 = cl.connect_ok(
        V311,
        "a",
        ConnectOpts {
            clean: false,
            ..Default::default()
        },
        true,
    );
    cl.expect(w, pubp("will/t", "gone", Q0, false, 0));
    // 5.0 with a will delay: the takeover is a reconnect, the will is cancelled.
    let b_opts = ConnectOpts {
        clean: false,
        ..with_will(expiry(60), delay(5))
    };
    let _b = cl.connect_ok(V5, "b", b_opts, false);
    let _b2 = cl.connect_ok(
        V5,
        "b",
        ConnectOpts {
            clean: false,
            properties: expiry(60),
            ..Default::default()
        },
        true,
    );
    cl.advance(Duration::from_secs(10));
    cl.expect_nothing(w);
    // 5.0 without a delay: published.
    let _c = cl.connect_ok(
        V5,
        "c",
        ConnectOpts {
            clean: false,
            ..with_will(expiry(60), Properties::default())
        },
        false,
    );
    let _c2 = cl.connect_ok(
        V5,
        "c",
        ConnectOpts {
            clean: false,
            properties: expiry(60),
            ..Default::default()
        },
        true,
    );
    cl.expect(w, pubp("will/t", "gone", Q0, false, 0));
}

#[test]
fn stats_track_connections_sessions_subscriptions() {
    let mut cl = Cluster::new(1, cfg());
    let a = cl.connect_ok(
        V5,
        "a",
        ConnectOpts {
            clean: false,
            properties: expiry(60),
            ..Default::default()
        },
        false,
    );
    cl.subscribe(a, "x", Q0);
    cl.subscribe(a, "$share/g/y", Q0);
    let st = cl.shards[0].stats().clone();
    assert_eq!((st.connections, st.sessions, st.subscriptions), (1, 1, 2));
    cl.drop_connection(a);
    let st = cl.shards[0].stats().clone();
    assert_eq!((st.connections, st.sessions, st.subscriptions), (0, 1, 2));
    cl.advance(Duration::from_secs(60));
    let st = cl.shards[0].stats().clone();
    assert_eq!((st.connections, st.sessions, st.subscriptions), (0, 0, 0));
}

// ---- takeover races across shards --------------------------------------------
// A client id's CONNECTs can reach its owner shard out of order: one read on a
// non-owner shard travels as a hand-off while a later one is read on the owner (or
// travels faster). The owner must apply them in the order the node read them.

fn persistent() -> ConnectOpts {
    ConnectOpts {
        clean: false,
        properties: expiry(600),
        ..Default::default()
    }
}

/// `persistent()`, with the CONNECT read on shard `accept_on`.
fn persistent_on(accept_on: usize) -> ConnectOpts {
    ConnectOpts {
        accept_on,
        ..persistent()
    }
}

/// Open clients (CONNACKed, not closed) whose connection is `id`'s session's.
fn live_with_id(cl: &Cluster, owner: usize, id: &str) -> usize {
    let shard = &cl.shards[owner];
    let Some(s) = shard.sessions.find(id.as_bytes()) else {
        return 0;
    };
    let conn = shard
        .sessions
        .get(s)
        .map_or(crate::session::NONE, |s| s.conn);
    cl.clients
        .iter()
        .filter(|c| !c.closed && !c.dropped && c.shard == owner && c.conn as u32 == conn)
        .count()
}

#[test]
fn stale_handoff_does_not_take_over_a_newer_connection() {
    let mut cl = Cluster::new(3, cfg());
    let id = id_on(2, 3, "race");
    // CONNECT 1 (clean start) is read on shard 0; its hand-off is slow.
    cl.wiring.hold_migrations = true;
    let stale = cl.connect(
        V311,
        &id,
        ConnectOpts {
            accept_on: 0,
            ..Default::default()
        },
    );
    assert_eq!(cl.clients[stale].raw, [0u8; 0]);
    // CONNECT 2 (resume) is read later, on the owner itself, and subscribes.
    cl.advance(Duration::from_millis(5));
    let live = cl.connect(V5, &id, persistent_on(2));
    assert!(matches!(cl.next(live), Some(Packet::ConnAck(a)) if a.code == ReasonCode::Success));
    cl.subscribe(live, "t", Q1);
    // The stale hand-off lands: it is answered as a connection taken over at once
    // (CONNACK, then closed) and leaves the live connection and its session alone.
    cl.wiring.hold_migrations = false;
    cl.deliver_migrations(false);
    assert_eq!(cl.clients[stale].raw, [0x20, 0x02, 0x00, 0x00]);
    cl.expect_closed(stale);
    cl.expect_nothing(live);
    cl.expect_open(live);
    assert_eq!(live_with_id(&cl, 2, &id), 1);
    let p = cl.connect_ok(V5, &id_on(1, 3, "p"), ConnectOpts::default(), false);
    cl.publish(p, "t", "x", Q1, false, 1);
    cl.expect(live, pubp("t", "x", Q1, false, 1));
    assert_eq!(cl.shards[2].stats().sessions, 1);
    assert_eq!(cl.shards[2].stats().closed_superseded, 1);
}

#[test]
fn stale_v5_handoff_gets_connack_then_session_taken_over() {
    let mut cl = Cluster::new(3, cfg());
    let id = id_on(2, 3, "race5");
    let config = cfg();
    cl.wiring.hold_migrations = true;
    let stale = cl.connect(V5, &id, persistent_on(1));
    cl.advance(Duration::from_millis(5));
    let live = cl.connect_ok(V5, &id, persistent_on(2), false);
    cl.deliver_migrations(false);
    cl.expect(
        stale,
        connack(false, ReasonCode::Success, v5_connack_props(&config)),
    );
    cl.expect(stale, disc(ReasonCode::SessionTakenOver));
    cl.expect_nothing(stale);
    cl.expect_closed(stale);
    cl.expect_nothing(live);
    cl.expect_open(live);
    assert_eq!(live_with_id(&cl, 2, &id), 1);
}

/// Two CONNECTs for one id read on two non-owner shards 5 ms apart, their hand-offs
/// held, then delivered `settle` later in either order: the later CONNECT must hold
/// the session and the earlier one be closed. Returns the superseded count.
fn two_handoffs_keep_the_later_connect(tag: &str, settle: Duration, newest_first: bool) -> u64 {
    let mut cl = Cluster::new(3, cfg());
    let id = id_on(2, 3, tag);
    cl.wiring.hold_migrations = true;
    let first = cl.connect(V311, &id, persistent_on(0));
    cl.advance(Duration::from_millis(5));
    let second = cl.connect(V311, &id, persistent_on(1));
    cl.advance(settle);
    cl.deliver_migrations(newest_first);
    cl.expect_closed(first);
    cl.expect_open(second);
    assert!(
        matches!(cl.next(second), Some(Packet::ConnAck(a)) if a.code == ReasonCode::Success),
        "newest_first {newest_first}"
    );
    cl.expect_nothing(second);
    assert_eq!(live_with_id(&cl, 2, &id), 1, "newest_first {newest_first}");
    assert_eq!(cl.shards[2].stats().connections, 1);
    assert_eq!(cl.shards[2].stats().sessions, 1);
    cl.shards[2].stats().closed_superseded
}

#[test]
fn handoffs_delivered_out_of_order_keep_the_later_connect() {
    for newest_first in [false, true] {
        two_handoffs_keep_the_later_connect("race2", Duration::ZERO, newest_first);
    }
}

#[test]
fn handoff_in_flight_while_the_session_is_online_elsewhere_takes_it_over() {
    // Not a race: a newer CONNECT arriving by hand-off takes over as usual.
    let mut cl = Cluster::new(3, cfg());
    let id = id_on(2, 3, "race3");
    let old = cl.connect_ok(V5, &id, persistent(), false);
    cl.subscribe(old, "t", Q1);
    cl.wiring.hold_migrations = true;
    cl.advance(Duration::from_millis(5));
    let new = cl.connect(V5, &id, persistent_on(1));
    cl.expect_open(old);
    cl.deliver_migrations(false);
    cl.expect(old, disc(ReasonCode::SessionTakenOver));
    cl.expect_closed(old);
    assert!(matches!(cl.next(new), Some(Packet::ConnAck(a)) if a.session_present));
    assert_eq!(live_with_id(&cl, 2, &id), 1);
}

#[test]
fn handoffs_read_before_the_owners_first_connection_keep_their_order() {
    // The owner shard sees its first connection only when the hand-offs land, after
    // both CONNECTs were read: their read times precede anything it has stamped.
    for newest_first in [false, true] {
        let superseded =
            two_handoffs_keep_the_later_connect("early", Duration::from_millis(5), newest_first);
        assert_eq!(superseded, u64::from(newest_first));
    }
}

#[test]
fn stale_handoff_after_the_newer_connection_left_does_not_end_its_session() {
    let mut cl = Cluster::new(3, cfg());
    let id = id_on(2, 3, "gone");
    cl.wiring.hold_migrations = true;
    // CONNECT 1 (clean start) read on shard 0, hand-off slow.
    let stale = cl.connect(
        V5,
        &id,
        ConnectOpts {
            accept_on: 0,
            ..Default::default()
        },
    );
    cl.advance(Duration::from_millis(5));
    // CONNECT 2, read later on the owner: subscribes, then disconnects (session kept).
    let newer = cl.connect_ok(V5, &id, persistent_on(2), false);
    cl.subscribe(newer, "t", Q1);
    cl.send(newer, disc(ReasonCode::Success));
    cl.expect_closed(newer);
    cl.wiring.hold_migrations = false;
    cl.deliver_migrations(false);
    // Read before CONNECT 2, so it must not wipe the session CONNECT 2 left behind:
    // it is answered as taken over at once.
    let config = cfg();
    cl.expect(
        stale,
        connack(false, ReasonCode::Success, v5_connack_props(&config)),
    );
    cl.expect(stale, disc(ReasonCode::SessionTakenOver));
    cl.expect_closed(stale);
    let st = cl.shards[2].stats();
    assert_eq!(
        (st.sessions, st.subscriptions, st.closed_superseded),
        (1, 1, 1)
    );
    // The session is the one CONNECT 2 left: resumed with its subscription.
    let back = cl.connect_ok(V5, &id, persistent(), true);
    let p = cl.connect_ok(V5, &id_on(1, 3, "p"), ConnectOpts::default(), false);
    cl.publish(p, "t", "x", Q1, false, 1);
    cl.expect(back, pubp("t", "x", Q1, false, 1));
}
