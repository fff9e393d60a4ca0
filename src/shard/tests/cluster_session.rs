//! Sessions across cluster nodes without NATS (`shard/cluster_session.rs`): two
//! one-loop nodes, the test playing the cluster thread between them. A CONNECT waits
//! for its claim; the previous owner closes the old connection (0x8E for MQTT 5) and
//! hands the session over; the new node's CONNACK says session present and the
//! queued messages follow, with the subscriptions' interest made on the new node.

use bytes::Bytes;

use super::cfg;
use crate::protocol::{Packet, Properties, PropertyValues, ProtocolVersion, QoS, ReasonCode};
use crate::shard::harness::*;
use crate::shard::{handover_records, ClusterIn, Handed, SessionClaim, SessionSave};
use crate::store::record::Record;

const Q1: QoS = QoS::AtLeastOnce;
const Q2: QoS = QoS::ExactlyOnce;

fn node() -> Cluster {
    let mut cl = Cluster::new(1, cfg());
    cl.shards[0].enable_cluster();
    cl
}

fn persistent() -> ConnectOpts {
    ConnectOpts {
        clean: false,
        ..ConnectOpts::default()
    }
}

/// The payloads of a hand-over's queued messages, in record order.
fn handed_payloads(handover: &[u8]) -> Vec<Bytes> {
    handover_records(handover)
        .expect("decodes")
        .into_iter()
        .filter_map(|r| match r {
            Record::MsgPut { msg, .. } => Some(msg.payload),
            _ => None,
        })
        .collect()
}

/// How many of a hand-over's records `is` picks.
fn count_handed(handover: &[u8], is: fn(&Record) -> bool) -> usize {
    handover_records(handover)
        .expect("decodes")
        .iter()
        .filter(|r| is(r))
        .count()
}

/// The one claim node `cl` made for `id`.
fn claim_of(cl: &mut Cluster, id: &str) -> SessionClaim {
    let claims = cl.shards[0].take_cluster_claims();
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert_eq!(&claims[0].client_id[..], id.as_bytes());
    claims[0].clone()
}

/// The cluster thread answers `claim` on `new` with `session` (hand-over bytes, from
/// node "a" as its hand-over 77, `take_from`'s id).
fn answer_claim(new: &mut Cluster, claim: &SessionClaim, session: Option<Bytes>) {
    let now = new.now;
    let from = session.as_ref().map(|_| Handed {
        node: "a".into(),
        token: 77,
    });
    new.shards[0].on_cluster_in(
        ClusterIn::Claimed {
            conn: claim.conn,
            generation: claim.generation,
            session,
            from,
            own: false,
        },
        now,
    );
}

/// The cluster thread carries `new`'s confirmations (taken from `out`, its turn's
/// output) to `old` and the deltas back; returns `old`'s interest changes.
fn confirm(old: &mut Cluster, new: &mut Cluster, out: &crate::shard::ClusterOut) -> Vec<bool> {
    assert_eq!(out.confirms.len(), 1, "{out:?}");
    let c = &out.confirms[0];
    assert_eq!(c.from.node, "a");
    let now = old.now;
    old.shards[0].on_cluster_in(
        ClusterIn::Confirmed {
            client_id: c.client_id.clone(),
            token: c.from.token,
            reply: 78,
            max_bytes: 1 << 20,
        },
        now,
    );
    old.pump();
    let o = old.shards[0].take_cluster_out().expect("an answer");
    assert_eq!(o.handovers.len(), 1);
    assert_eq!(o.handovers[0].reply, 78);
    if let Some(delta) = o.handovers[0].session.clone() {
        let now = new.now;
        new.shards[0].on_cluster_in(
            ClusterIn::Delta {
                client_id: c.client_id.clone(),
                session: delta,
            },
            now,
        );
        new.pump();
    }
    o.interest.iter().map(|i| i.add).collect()
}

/// Node `old` answers a takeover request for `id`: returns the hand-over bytes and
/// the interest changes it made.
fn take_from(old: &mut Cluster, id: &str, clean: bool) -> (Option<Bytes>, Vec<bool>) {
    let m = ClusterIn::Takeover {
        client_id: Bytes::copy_from_slice(id.as_bytes()),
        clean,
        reply: 77,
        max_bytes: 1 << 20,
    };
    let now = old.now;
    old.shards[0].on_cluster_in(m, now);
    old.pump();
    let out = old.shards[0].take_cluster_out().expect("an answer");
    assert_eq!(out.handovers.len(), 1);
    assert_eq!(out.handovers[0].reply, 77);
    let interest = out.interest.iter().map(|i| i.add).collect();
    (out.handovers[0].session.clone(), interest)
}

/// Node `a` with "roam"'s persistent session subscribed to "t" at `qos` and
/// offline, its turn's cluster output taken.
fn roam_offline(qos: QoS) -> Cluster {
    let mut a = node();
    let s = a.connect_ok(V311, "roam", persistent(), false);
    a.subscribe(s, "t", qos);
    a.drop_connection(s);
    let _ = a.shards[0].take_cluster_out();
    a
}

/// A CONNECT of "roam" (`version`, `opts`) on node `new`, whose claim `old` answers
/// with its hand-over: returns the connection, its CONNACK (session present) read.
fn move_roam(
    old: &mut Cluster,
    new: &mut Cluster,
    version: ProtocolVersion,
    opts: ConnectOpts,
) -> Cid {
    new.auto_claim = false;
    let c = new.connect(version, "roam", opts);
    let claim = claim_of(new, "roam");
    let (bytes, _) = take_from(old, "roam", false);
    answer_claim(new, &claim, bytes);
    new.pump();
    match new.next(c) {
        Some(Packet::ConnAck(ack)) => assert!(ack.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    c
}

/// "roam" connects to `a` again and `b` hands its session back: the payloads the
/// returning client is sent after a CONNACK with session present.
fn return_to_a(a: &mut Cluster, b: &mut Cluster) -> Vec<Bytes> {
    let back = move_roam(b, a, V311, persistent());
    let mut got = Vec::new();
    while let Some(Packet::Publish(m)) = a.next(back) {
        got.push(m.payload.clone());
    }
    got
}

#[test]
fn an_offline_session_moves_with_its_queue_and_subscriptions() {
    let mut a = node();
    let s = a.connect_ok(V311, "roam", persistent(), false);
    a.subscribe(s, "t", Q1);
    a.subscribe(s, "u/+", Q2);
    a.drop_connection(s);
    let p = a.connect_ok(V311, "pub", ConnectOpts::default(), false);
    a.publish(p, "t", "x1", Q1, false, 1);
    a.publish(p, "u/1", "x2", Q2, false, 2);
    let _ = a.shards[0].take_cluster_out();

    let mut b = node();
    b.auto_claim = false;
    let c = b.connect(V311, "roam", persistent());
    // No CONNACK until the claim is answered.
    b.expect_nothing(c);
    let claim = claim_of(&mut b, "roam");
    assert!(!claim.clean);

    let (bytes, interest) = take_from(&mut a, "roam", false);
    let bytes = bytes.expect("a session");
    assert!(
        interest.is_empty(),
        "the filters stay on a until b confirms"
    );
    let recs = handover_records(&bytes).expect("decodes");
    assert!(recs.len() >= 5, "{recs:?}");
    assert_eq!(a.shards[0].stats().sessions, 2, "kept until confirmed");

    answer_claim(&mut b, &claim, Some(bytes));
    b.pump();
    match b.next(c) {
        Some(Packet::ConnAck(ack)) => {
            assert!(ack.session_present);
            assert_eq!(ack.code, ReasonCode::Success);
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    b.expect(c, pubp("t", "x1", Q1, false, 1));
    b.expect(c, pubp("u/1", "x2", Q2, false, 2));
    // The subscriptions are live on b: interest for both filters goes to NATS, in
    // the same output as the confirmation (the cluster thread subscribes first).
    let out = b.shards[0].take_cluster_out().expect("interest");
    let mut filters: Vec<_> = out.interest.iter().map(|i| i.filter.clone()).collect();
    filters.sort();
    assert_eq!(
        filters,
        [Bytes::from_static(b"t"), Bytes::from_static(b"u/+")]
    );
    assert_eq!(
        confirm(&mut a, &mut b, &out),
        [false, false],
        "both filters leave a once b confirmed"
    );
    assert_eq!(
        a.shards[0].stats().sessions,
        1,
        "only the publisher is left on a"
    );
    b.auto_claim = true;
    let q = b.connect_ok(V311, "local", ConnectOpts::default(), false);
    b.publish(q, "t", "live", Q1, false, 5);
    b.expect(c, pubp("t", "live", Q1, false, 3));
}

#[test]
fn a_connected_mqtt5_client_is_told_0x8e_and_a_clean_start_takes_nothing() {
    let mut a = node();
    let s = a.connect_ok(V5, "roam5", persistent(), false);
    a.subscribe(s, "t", Q1);
    let _ = a.shards[0].take_cluster_out();
    assert_eq!(take_from(&mut a, "roam5", true), (None, vec![false]));
    a.expect(s, disconnect(ReasonCode::SessionTakenOver));
    a.expect_closed(s);
    // Asked again (the session is gone): nothing to hand over, and no error.
    assert_eq!(take_from(&mut a, "roam5", false), (None, vec![]));
}

#[test]
fn a_claim_answered_without_a_session_connects_fresh() {
    let mut b = node();
    b.auto_claim = false;
    let opts = ConnectOpts {
        properties: Properties::from(PropertyValues {
            session_expiry_interval_s: Some(60),
            ..Default::default()
        }),
        ..persistent()
    };
    let c = b.connect(V5, "fresh", opts);
    b.expect_nothing(c);
    let claim = claim_of(&mut b, "fresh");
    // Garbage from a foreign or broken peer is not a session: lost, never misread.
    answer_claim(
        &mut b,
        &claim,
        Some(Bytes::from_static(b"\x05\x00\x00\x00junk")),
    );
    b.pump();
    match b.next(c) {
        Some(Packet::ConnAck(ack)) => assert!(!ack.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // A stale answer for a connection that is gone changes nothing.
    answer_claim(&mut b, &claim, None);
    b.pump();
    b.expect_nothing(c);
}

/// A will goes to the cluster's wills bucket while its connection lives and leaves it
/// when the connection goes (this node then publishes it, as on a single node); a
/// dead node's will claimed by this node is published once, locally and to NATS.
#[test]
fn wills_are_announced_while_connected_and_a_dead_nodes_will_is_published() {
    let mut a = node();
    let opts = ConnectOpts {
        will: Some(will("w/t", "gone", Q1, false, Properties::default())),
        ..ConnectOpts::default()
    };
    let c = a.connect_ok(V311, "willer", opts, false);
    let out = a.shards[0].take_cluster_out().expect("will set");
    assert_eq!(out.wills.len(), 1);
    let (id, rec) = &out.wills[0];
    assert_eq!(&id[..], b"willer");
    let m = crate::shard::will_message(rec.as_ref().expect("a record"), a.now).expect("decodes");
    assert_eq!(
        (&m.topic[..], &m.payload[..], m.qos),
        (&b"w/t"[..], &b"gone"[..], Q1)
    );
    a.drop_connection(c);
    let out = a.shards[0].take_cluster_out().expect("will gone");
    assert_eq!(out.wills, [(Bytes::from_static(b"willer"), None)]);
    assert_eq!(out.publishes.len(), 1, "published here, forwarded once");

    let s = a.connect_ok(V311, "s", ConnectOpts::default(), false);
    a.subscribe(s, "w/#", Q1);
    let _ = a.shards[0].take_cluster_out();
    let now = a.now;
    a.shards[0].on_cluster_in(ClusterIn::Will(std::sync::Arc::new(m)), now);
    a.pump();
    a.expect(s, pubp("w/t", "gone", Q1, false, 1));
    let out = a.shards[0].take_cluster_out().expect("forwarded");
    assert_eq!(out.publishes.len(), 1);
    assert!(out.wills.is_empty());
}

/// A persistent session's subscriptions go to the cluster after each change (so a
/// node taking it from a dead owner gets them back); a clean session's never do.
#[test]
fn persistent_subscriptions_are_saved_after_each_change() {
    let mut a = node();
    let s = a.connect_ok(V311, "keep", persistent(), false);
    a.subscribe(s, "k/1", Q1);
    a.subscribe(s, "k/2", Q2);
    let out = a.shards[0].take_cluster_out().expect("states");
    let (id, last) = out.states.last().expect("saved").clone();
    assert_eq!(&id[..], b"keep");
    let SessionSave::Online(last) = last else {
        panic!("saved as connected: {last:?}");
    };
    let subs: Vec<_> = handover_records(&last)
        .expect("decodes")
        .into_iter()
        .filter_map(|r| match r {
            Record::SubAdd { filter, .. } => Some(filter),
            _ => None,
        })
        .collect();
    assert_eq!(
        subs,
        [Bytes::from_static(b"k/1"), Bytes::from_static(b"k/2")]
    );
    let c = a.connect_ok(V311, "clean", ConnectOpts::default(), false);
    a.subscribe(c, "k/3", Q1);
    let out = a.shards[0].take_cluster_out().expect("interest");
    assert!(out.states.is_empty(), "a clean session is not saved");
}

/// The claim answers with this node's own entry's saved state (`own`).
fn answer_own(cl: &mut Cluster, claim: &SessionClaim, saved: Bytes) {
    let now = cl.now;
    cl.shards[0].on_cluster_in(
        ClusterIn::Claimed {
            conn: claim.conn,
            generation: claim.generation,
            session: Some(saved),
            from: None,
            own: true,
        },
        now,
    );
    cl.pump();
}

/// Review10 L1: a node restarted without a data directory under the same name finds
/// its own name in a client's entry. Its loop holds nothing, so the entry's saved
/// state is the session: session present 1 and a live subscription (it used to be
/// a fresh session, while a client going to another node got its subscriptions).
/// A loop that does hold the session keeps its own (with its queue), never replaced
/// by the older saved state.
#[test]
fn a_restarted_node_recovers_its_own_saved_session_only_when_it_holds_none() {
    let mut a = node();
    let s = a.connect_ok(V311, "back", persistent(), false);
    a.subscribe(s, "r/1", Q1);
    let out = a.shards[0].take_cluster_out().expect("states");
    let Some((_, SessionSave::Online(saved))) = out.states.last().cloned() else {
        panic!("saved: {:?}", out.states);
    };

    // The restart: a new node with nothing of its own.
    let mut b = node();
    b.auto_claim = false;
    let c = b.connect(V311, "back", persistent());
    let claim = claim_of(&mut b, "back");
    answer_own(&mut b, &claim, saved.clone());
    match b.next(c) {
        Some(Packet::ConnAck(ack)) => assert!(ack.session_present, "{ack:?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    b.auto_claim = true;
    let p = b.connect_ok(V311, "pub", ConnectOpts::default(), false);
    b.publish(p, "r/1", "live", Q1, false, 1);
    b.expect(c, pubp("r/1", "live", Q1, false, 1));

    // No restart: the session is here, offline, with a queued message and a
    // subscription made after the saved state.
    a.subscribe(s, "r/2", Q1);
    a.drop_connection(s);
    let p = a.connect_ok(V311, "pub", ConnectOpts::default(), false);
    a.publish(p, "r/1", "queued", Q1, false, 1);
    a.auto_claim = false;
    let _ = a.shards[0].take_cluster_out();
    let c = a.connect(V311, "back", persistent());
    let claim = claim_of(&mut a, "back");
    answer_own(&mut a, &claim, saved);
    match a.next(c) {
        Some(Packet::ConnAck(ack)) => assert!(ack.session_present, "{ack:?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    a.expect(c, pubp("r/1", "queued", Q1, false, 1));
    a.publish(p, "r/2", "newer", Q1, false, 2);
    a.expect(c, pubp("r/2", "newer", Q1, false, 2));
}

/// The sessions bucket learns when a persistent session's client went, and that a
/// session ended (review10 M4): without either a node that took the session from
/// a dead owner long after it expired resumed it with "session present".
#[test]
fn a_session_is_saved_offline_when_its_client_goes_and_cleared_when_it_ends() {
    let mut a = node();
    let opts = ConnectOpts {
        properties: Properties::from(PropertyValues {
            session_expiry_interval_s: Some(60),
            ..Default::default()
        }),
        ..persistent()
    };
    let s = a.connect_ok(V5, "brief", opts, false);
    a.subscribe(s, "b/1", Q1);
    let _ = a.shards[0].take_cluster_out();
    a.drop_connection(s);
    let out = a.shards[0].take_cluster_out().expect("offline");
    let offline: Vec<_> = out
        .states
        .iter()
        .filter(|(id, _)| &id[..] == b"brief")
        .collect();
    assert!(
        matches!(offline.last(), Some((_, SessionSave::Offline(b))) if !b.is_empty()),
        "saved as offline: {offline:?}"
    );
    // A reconcile kept it here: saved again (still offline).
    let now = a.now;
    a.shards[0].on_cluster_in(
        ClusterIn::Resave {
            client_id: Bytes::from_static(b"brief"),
        },
        now,
    );
    let out = a.shards[0].take_cluster_out().expect("saved again");
    assert!(matches!(&out.states[..], [(_, SessionSave::Offline(_))]));
    a.advance(std::time::Duration::from_secs(61));
    let out = a.shards[0].take_cluster_out().expect("expired");
    assert_eq!(
        out.states,
        [(Bytes::from_static(b"brief"), SessionSave::Ended)],
        "an expired session's saved state goes"
    );
}

/// Once the cluster thread has ended (e.g. a bad `cluster_nats_creds_file`), nothing
/// answers claims: a CONNECT with a client id is served from this node's own state
/// at once (counted in `sessions_local`) instead of waiting out the connect timeout.
#[test]
fn a_connect_is_served_locally_once_the_cluster_thread_has_ended() {
    use std::sync::atomic::Ordering;
    let mut b = node();
    b.auto_claim = false;
    let status = std::sync::Arc::new(crate::cluster::ClusterStatus::default());
    status.connected.store(true, Ordering::Relaxed);
    b.shards[0].set_cluster_status(status.clone());
    // While the thread runs, the CONNECT waits for its claim.
    let held = b.connect(V311, "early", persistent());
    b.expect_nothing(held);
    let _ = claim_of(&mut b, "early");

    status.stopped.store(true, Ordering::Release);
    let c = b.connect(V311, "late", persistent());
    match b.next(c) {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, ReasonCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert!(
        b.shards[0].take_cluster_claims().is_empty(),
        "no claim made"
    );
    assert_eq!(status.sessions_local.load(Ordering::Relaxed), 1);
}

/// Review10 H1: while NATS is away a claim could only be answered "served
/// locally", and only once the cluster thread gets to it, so a CONNECT with a
/// client id is served at once; its id goes to the cluster thread (not as a claim)
/// for the reconcile when NATS returns.
#[test]
fn a_connect_is_served_locally_at_once_while_nats_is_away() {
    use std::sync::atomic::Ordering;
    let mut b = node();
    b.auto_claim = false;
    let status = std::sync::Arc::new(crate::cluster::ClusterStatus::default());
    b.shards[0].set_cluster_status(status.clone());
    status.connected.store(false, Ordering::Relaxed);
    let c = b.connect(V5, "cut", persistent());
    match b.next(c) {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, ReasonCode::Success),
        other => panic!("expected CONNACK at once, got {other:?}"),
    }
    let out = b.shards[0]
        .take_cluster_out()
        .expect("the id for the reconcile");
    assert!(out.claims.is_empty(), "no claim made: {out:?}");
    assert_eq!(out.local, [&b"cut"[..]]);

    status.connected.store(true, Ordering::Relaxed);
    let held = b.connect(V5, "joined", persistent());
    b.expect_nothing(held);
    let _ = claim_of(&mut b, "joined");
}

/// Node `a` with an offline persistent session "roam" (subscribed to "t") holding
/// two queued messages.
fn old_owner_with_queue() -> Cluster {
    let mut a = node();
    let s = a.connect_ok(V311, "roam", persistent(), false);
    a.subscribe(s, "t", Q1);
    a.drop_connection(s);
    let p = a.connect_ok(V311, "pub", ConnectOpts::default(), false);
    a.publish(p, "t", "x1", Q1, false, 1);
    a.publish(p, "t", "x2", Q1, false, 2);
    let _ = a.shards[0].take_cluster_out();
    a
}

/// A hand-over that arrives after its CONNECT gave up is kept here, offline: the old
/// node has already ended the session (review item D).
#[test]
fn a_handover_after_the_connect_gave_up_stays_as_an_offline_session() {
    let mut a = old_owner_with_queue();
    let mut b = node();
    b.auto_claim = false;
    let c = b.connect(V311, "roam", persistent());
    b.expect_nothing(c);
    let claim = claim_of(&mut b, "roam");
    // The client gives up before the answer.
    b.drop_connection(c);
    b.pump();
    let (bytes, _) = take_from(&mut a, "roam", false);
    answer_claim(&mut b, &claim, bytes);
    b.pump();
    assert_eq!(b.shards[0].stats().sessions, 1, "kept offline on b");
    b.auto_claim = true;
    let c = b.connect(V311, "roam", persistent());
    match b.next(c) {
        Some(Packet::ConnAck(ack)) => assert!(ack.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    b.expect(c, pubp("t", "x1", Q1, false, 1));
    b.expect(c, pubp("t", "x2", Q1, false, 2));
}

/// A stale offline session of the id on the claiming node (e.g. left from before a
/// partition) gives way to the hand-over instead of dropping it (review item D).
#[test]
fn a_handover_replaces_a_stale_offline_session() {
    let mut a = old_owner_with_queue();
    let mut b = node();
    let stale = b.connect_ok(V311, "roam", persistent(), false);
    b.subscribe(stale, "stale", Q1);
    b.drop_connection(stale);
    b.pump();
    b.auto_claim = false;
    let c = b.connect(V311, "roam", persistent());
    b.expect_nothing(c);
    let claim = claim_of(&mut b, "roam");
    let (bytes, _) = take_from(&mut a, "roam", false);
    answer_claim(&mut b, &claim, bytes);
    b.pump();
    match b.next(c) {
        Some(Packet::ConnAck(ack)) => assert!(ack.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    b.expect(c, pubp("t", "x1", Q1, false, 1));
    b.expect(c, pubp("t", "x2", Q1, false, 2));
    // The stale session's subscription went with it.
    b.auto_claim = true;
    let p = b.connect_ok(V311, "pub", ConnectOpts::default(), false);
    b.publish(p, "stale", "nobody", Q1, false, 9);
    b.expect_nothing(c);
}

/// A session whose hand-over is larger than one NATS message may be is not ended
/// unsent: it stays on the old node (offline), the answer says so, and it is counted
/// (review item E).
#[test]
fn a_session_too_large_to_send_stays_on_the_old_node() {
    use std::sync::atomic::Ordering;
    let mut a = old_owner_with_queue();
    let status = std::sync::Arc::new(crate::cluster::ClusterStatus::default());
    a.shards[0].set_cluster_status(status.clone());
    let now = a.now;
    a.shards[0].on_cluster_in(
        ClusterIn::Takeover {
            client_id: Bytes::from_static(b"roam"),
            clean: false,
            reply: 5,
            max_bytes: 16,
        },
        now,
    );
    a.pump();
    let out = a.shards[0].take_cluster_out().expect("an answer");
    assert_eq!(out.handovers.len(), 1);
    assert!(out.handovers[0].too_large);
    assert!(out.handovers[0].session.is_none());
    assert!(out.interest.is_empty(), "its subscription stays: {out:?}");
    assert_eq!(a.shards[0].stats().sessions, 2, "roam is still on a");
    assert_eq!(status.sessions_kept.load(Ordering::Relaxed), 1);
    // Nothing was lost: a takeover that fits gets the whole session.
    let (bytes, _) = take_from(&mut a, "roam", false);
    let bytes = bytes.expect("the session");
    let queued = count_handed(&bytes, |r| matches!(r, Record::Enqueue { .. }));
    assert_eq!(queued, 2, "{:?}", handover_records(&bytes));
}

/// No subscription gap during a takeover (review item 4): the old node keeps the
/// session subscribed until the new one, subscribed itself, confirms; a QoS 1 message
/// that reaches the old node in between follows as a delta, and one published after
/// the confirmation is the new node's alone. Without the hold, "gap" reached no one.
#[test]
fn a_message_published_during_a_takeover_reaches_the_new_owner() {
    let mut a = old_owner_with_queue();
    let mut b = node();
    b.auto_claim = false;
    let c = b.connect(V311, "roam", persistent());
    let claim = claim_of(&mut b, "roam");
    let (bytes, interest) = take_from(&mut a, "roam", false);
    assert!(interest.is_empty(), "a still holds t");
    // Published on a while the hand-over travels (and PUBACKed there).
    let p = a.connect_ok(V311, "pub2", ConnectOpts::default(), false);
    a.publish(p, "t", "gap", Q1, false, 3);
    let _ = a.shards[0].take_cluster_out();
    answer_claim(&mut b, &claim, bytes);
    b.pump();
    match b.next(c) {
        Some(Packet::ConnAck(ack)) => assert!(ack.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    b.expect(c, pubp("t", "x1", Q1, false, 1));
    b.expect(c, pubp("t", "x2", Q1, false, 2));
    let out = b.shards[0]
        .take_cluster_out()
        .expect("interest and confirmation");
    assert_eq!(confirm(&mut a, &mut b, &out), [false], "t leaves a now");
    b.expect(c, pubp("t", "gap", Q1, false, 3));
    b.expect_nothing(c);
    // After the confirmation the session is b's alone.
    a.publish(p, "t", "late", Q1, false, 4);
    assert_eq!(
        a.shards[0].stats().sessions,
        2,
        "only the publishers are left"
    );
}

/// A repeated confirmation (the new owner timed out waiting for the first answer,
/// which went to an inbox it had dropped, and re-sent it) gets the same delta again
/// (review H1): before, the session was gone by the repeat and it got an empty
/// answer, losing the copies that reached the old node during the hand-over. Past
/// `CONFIRMED_KEEP` (10 s) the repeat is answered empty, and so is another id.
#[test]
fn a_repeated_confirmation_gets_the_same_delta() {
    let mut a = old_owner_with_queue();
    let (first, _) = take_from(&mut a, "roam", false);
    assert!(first.is_some());
    let p = a.connect_ok(V311, "pub2", ConnectOpts::default(), false);
    a.publish(p, "t", "gap", Q1, false, 3);
    let _ = a.shards[0].take_cluster_out();
    let ask = |a: &mut Cluster, token: u64, reply: u64| {
        let now = a.now;
        a.shards[0].on_cluster_in(
            ClusterIn::Confirmed {
                client_id: Bytes::from_static(b"roam"),
                token,
                reply,
                max_bytes: 1 << 20,
            },
            now,
        );
        a.pump();
        let out = a.shards[0].take_cluster_out().expect("an answer");
        assert_eq!(out.handovers.len(), 1);
        assert_eq!(out.handovers[0].reply, reply);
        out.handovers[0].session.clone()
    };
    let d1 = ask(&mut a, 77, 80).expect("the delta");
    assert_eq!(handed_payloads(&d1), [&b"gap"[..]]);
    assert_eq!(a.shards[0].stats().sessions, 2, "roam ended on a");
    a.advance(std::time::Duration::from_secs(3));
    let d2 = ask(&mut a, 77, 81).expect("the same delta, replayed");
    assert_eq!(d2, d1);
    assert_eq!(
        ask(&mut a, 76, 82),
        None,
        "another hand-over id gets nothing"
    );
    a.advance(std::time::Duration::from_secs(28));
    assert_eq!(ask(&mut a, 77, 83), None, "kept 30 s, not for ever");
}

/// A delta larger than one NATS message (review M4) is not sent, and the session is
/// not ended: it stays on the old node, whole, with the copies that reached it.
#[test]
fn a_delta_too_large_to_send_keeps_the_session_on_the_old_node() {
    let mut a = old_owner_with_queue();
    let (first, _) = take_from(&mut a, "roam", false);
    assert!(first.is_some());
    let p = a.connect_ok(V311, "pub2", ConnectOpts::default(), false);
    a.publish(p, "t", "gap", Q1, false, 3);
    let _ = a.shards[0].take_cluster_out();
    let now = a.now;
    a.shards[0].on_cluster_in(
        ClusterIn::Confirmed {
            client_id: Bytes::from_static(b"roam"),
            token: 77,
            reply: 80,
            max_bytes: 16,
        },
        now,
    );
    a.pump();
    let out = a.shards[0].take_cluster_out().expect("an answer");
    assert_eq!(out.handovers.len(), 1);
    assert_eq!(out.handovers[0].session, None, "nothing sent");
    assert!(out.interest.is_empty(), "still subscribed to t");
    assert_eq!(a.shards[0].stats().sessions, 3, "roam is still on a");
    let (again, _) = take_from(&mut a, "roam", false);
    let n = count_handed(&again.expect("the session"), |r| {
        matches!(r, Record::MsgPut { .. })
    });
    assert_eq!(n, 3, "x1, x2 and gap");
}

/// A session with a short expiry (1 s) waits for its confirmation as long as one
/// without (review L2): before, it ended after 1 s and the confirmation found
/// nothing, losing the copies that had reached it during the hand-over.
#[test]
fn a_short_expiry_session_waits_for_its_confirmation() {
    let mut a = node();
    let opts = ConnectOpts {
        properties: Properties::from(PropertyValues {
            session_expiry_interval_s: Some(1),
            ..Default::default()
        }),
        ..persistent()
    };
    let s = a.connect_ok(V5, "roam", opts, false);
    a.subscribe(s, "t", Q1);
    let (first, _) = take_from(&mut a, "roam", false);
    assert!(first.is_some());
    let p = a.connect_ok(V311, "pub", ConnectOpts::default(), false);
    a.publish(p, "t", "gap", Q1, false, 1);
    let _ = a.shards[0].take_cluster_out();
    a.advance(std::time::Duration::from_secs(5));
    assert_eq!(a.shards[0].stats().sessions, 2, "roam is still held");
    let now = a.now;
    a.shards[0].on_cluster_in(
        ClusterIn::Confirmed {
            client_id: Bytes::from_static(b"roam"),
            token: 77,
            reply: 80,
            max_bytes: 1 << 20,
        },
        now,
    );
    a.pump();
    let out = a.shards[0].take_cluster_out().expect("an answer");
    let delta = out.handovers[0].session.clone().expect("the delta");
    let n = count_handed(&delta, |r| matches!(r, Record::MsgPut { .. }));
    assert_eq!(n, 1, "gap");
}

/// Ping-pong (review M2): node a hands "roam" to b, and the client comes back to a
/// before b's confirmation did. The copy that reached a in between ("gap", on a
/// only) joins the session a loads back from b, and b's late confirmation of the
/// first hand-over ends nothing. Before, a ended its held session, gap and all.
#[test]
fn a_session_handed_back_before_its_confirmation_keeps_what_reached_it_meanwhile() {
    let mut a = old_owner_with_queue();
    let (first, _) = take_from(&mut a, "roam", false);
    let p = a.connect_ok(V311, "pub2", ConnectOpts::default(), false);
    a.publish(p, "t", "gap", Q1, false, 3);
    let _ = a.shards[0].take_cluster_out();
    a.auto_claim = false;
    // The client is back on a; b hands the session back (what it loaded from a).
    let c = a.connect(V311, "roam", persistent());
    let claim = claim_of(&mut a, "roam");
    answer_claim(&mut a, &claim, first);
    a.pump();
    match a.next(c) {
        Some(Packet::ConnAck(ack)) => assert!(ack.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let mut got = Vec::new();
    while let Some(Packet::Publish(m)) = a.next(c) {
        got.push(m.payload.clone());
    }
    assert_eq!(got, [&b"x1"[..], b"x2", b"gap"]);
    // b's confirmation of a's first hand-over (77) comes late: nothing ends.
    let now = a.now;
    a.shards[0].on_cluster_in(
        ClusterIn::Confirmed {
            client_id: Bytes::from_static(b"roam"),
            token: 77,
            reply: 90,
            max_bytes: 1 << 20,
        },
        now,
    );
    a.pump();
    let out = a.shards[0].take_cluster_out().expect("an answer");
    let answer = out
        .handovers
        .iter()
        .find(|h| h.reply == 90)
        .expect("answered");
    assert_eq!(answer.session, None);
    assert_eq!(a.shards[0].stats().sessions, 3, "roam, pub and pub2");
    a.publish(p, "t", "after", Q1, false, 4);
    a.expect(c, pubp("t", "after", Q1, false, 4));
}

/// The old node ends a session only when the new owner confirms it (review item 3):
/// a hand-over never confirmed (the requester timed out, or died) leaves the session
/// on the old node, whole, and a later takeover gets all of it, including what
/// arrived since. A stale confirmation (an older hand-over's id) ends nothing.
#[test]
fn an_unconfirmed_handover_keeps_the_session_for_the_next_claim() {
    let mut a = old_owner_with_queue();
    let (first, _) = take_from(&mut a, "roam", false);
    assert!(first.is_some());
    let p = a.connect_ok(V311, "pub2", ConnectOpts::default(), false);
    a.publish(p, "t", "x3", Q1, false, 3);
    let _ = a.shards[0].take_cluster_out();
    assert_eq!(a.shards[0].stats().sessions, 3, "roam is still on a");
    // A confirmation for another hand-over id is not this one's.
    let now = a.now;
    a.shards[0].on_cluster_in(
        ClusterIn::Confirmed {
            client_id: Bytes::from_static(b"roam"),
            token: 12345,
            reply: 6,
            max_bytes: 1 << 20,
        },
        now,
    );
    a.pump();
    let out = a.shards[0].take_cluster_out().expect("an answer");
    assert_eq!(out.handovers[0].session, None);
    assert!(out.interest.is_empty());
    assert_eq!(a.shards[0].stats().sessions, 3);
    // The next claim gets the whole session.
    let (again, _) = take_from(&mut a, "roam", false);
    let payloads = handed_payloads(&again.expect("the session"));
    assert_eq!(payloads, [&b"x1"[..], b"x2", b"x3"]);
}

/// A will the cluster published while this node was cut from NATS (its entry taken
/// by a survivor, `cluster/wills.rs`): the client's connection here is closed with
/// 0x9C and its will is not published a second time, here or to NATS; the session
/// stays for its next CONNECT. A client that left meanwhile is not touched.
#[test]
fn a_will_taken_by_another_node_disconnects_its_client_without_a_second_will() {
    let mut a = node();
    let opts = ConnectOpts {
        will: Some(will("w/t", "gone", Q1, false, Properties::default())),
        properties: Properties::from(PropertyValues {
            session_expiry_interval_s: Some(300),
            ..Default::default()
        }),
        ..persistent()
    };
    let c = a.connect_ok(V5, "cut", opts, false);
    let s = a.connect_ok(V311, "s", ConnectOpts::default(), false);
    a.subscribe(s, "w/#", Q1);
    let _ = a.shards[0].take_cluster_out();
    let now = a.now;
    a.shards[0].on_cluster_in(
        ClusterIn::WillTaken {
            client_id: Bytes::from_static(b"cut"),
        },
        now,
    );
    a.pump();
    a.expect(c, disconnect(ReasonCode::UseAnotherServer));
    a.expect_closed(c);
    a.expect_nothing(s);
    if let Some(out) = a.shards[0].take_cluster_out() {
        assert!(
            out.publishes.is_empty(),
            "the will went to NATS again: {out:?}"
        );
    }
    // Again (the second check after a return): nothing left to do.
    a.shards[0].on_cluster_in(
        ClusterIn::WillTaken {
            client_id: Bytes::from_static(b"cut"),
        },
        now,
    );
    a.pump();
    a.expect_nothing(s);
    let back = ConnectOpts {
        properties: Properties::from(PropertyValues {
            session_expiry_interval_s: Some(300),
            ..Default::default()
        }),
        ..persistent()
    };
    let c = a.connect_ok(V5, "cut", back, true);
    a.expect_nothing(c);
}

/// Review10 L5: a session too large for the Merge that would carry it to the node
/// keeping the id is not ended here (NATS would refuse the Merge and its copies be
/// lost): its connection goes all the same, and it stays here offline, with its copy.
#[test]
fn a_session_too_large_to_give_up_stays_here() {
    let mut a = node();
    let opts = || ConnectOpts {
        properties: Properties::from(PropertyValues {
            session_expiry_interval_s: Some(60),
            ..Default::default()
        }),
        ..persistent()
    };
    let s = a.connect_ok(V5, "big", opts(), false);
    a.subscribe(s, "t", Q1);
    let p = a.connect_ok(V311, "pub", ConnectOpts::default(), false);
    a.publish(p, "t", "kept", Q1, false, 1);
    let _ = a.shards[0].take_cluster_out();
    let now = a.now;
    a.shards[0].on_cluster_in(
        ClusterIn::Yield {
            client_id: Bytes::from_static(b"big"),
            node: "b".into(),
            max_bytes: 8,
        },
        now,
    );
    a.pump();
    a.expect(s, pubp("t", "kept", Q1, false, 1));
    a.expect(s, disconnect(ReasonCode::SessionTakenOver));
    a.expect_closed(s);
    let out = a.shards[0].take_cluster_out().unwrap_or_default();
    assert!(out.yields.is_empty(), "{:?}", out.yields);
    assert_eq!(a.shards[0].stats().sessions, 2, "kept here");
    // Its client comes back here: the copy it never acknowledged is sent again.
    let c = a.connect_ok(V5, "big", opts(), true);
    let mut again = publish("t", "kept", Q1, false, 1);
    again.dup = true;
    a.expect(c, Packet::Publish(again));
}

/// After a partition, the node whose CONNECT for an id came earlier gives the id up
/// (`cluster/sessions.rs` reconcile): its MQTT 5 client is told 0x8E, the session
/// ends here and its queued copies go to the node that keeps the id, where they join
/// that node's own session (as a delta) behind what it holds.
#[test]
fn a_session_given_up_after_a_partition_joins_the_winners_session() {
    let mut a = node();
    let s = a.connect_ok(V5, "split", persistent(), false);
    a.subscribe(s, "t", Q1);
    let p = a.connect_ok(V311, "pub", ConnectOpts::default(), false);
    // Unacknowledged by the client: still held when the id is given up.
    a.publish(p, "t", "from-a", Q1, false, 1);
    let _ = a.shards[0].take_cluster_out();
    let now = a.now;
    a.shards[0].on_cluster_in(
        ClusterIn::Yield {
            client_id: Bytes::from_static(b"split"),
            node: "b".into(),
            max_bytes: 1 << 20,
        },
        now,
    );
    a.pump();
    let out = a.shards[0].take_cluster_out().expect("the yield");
    assert_eq!(out.yields.len(), 1);
    let (id, to, bytes) = out.yields[0].clone();
    assert_eq!((&id[..], to.as_str()), (&b"split"[..], "b"));
    assert_eq!(
        a.shards[0].stats().sessions,
        1,
        "only the publisher is left"
    );

    let mut b = node();
    let c = b.connect_ok(V5, "split", persistent(), false);
    b.subscribe(c, "t", Q1);
    let q = b.connect_ok(V311, "pub", ConnectOpts::default(), false);
    b.publish(q, "t", "from-b", Q1, false, 1);
    b.expect(c, pubp("t", "from-b", Q1, false, 1));
    let now = b.now;
    b.shards[0].on_cluster_in(
        ClusterIn::Delta {
            client_id: id,
            session: bytes,
        },
        now,
    );
    b.pump();
    b.expect(c, pubp("t", "from-a", Q1, false, 2));
    b.expect_nothing(c);
}

/// The self-fencing lease ran out (review H3): before any survivor may take this node
/// for dead, the connections whose wills are registered in the cluster go (MQTT 5:
/// 0x9C; 3.1.1: closed), their wills not published here but handed to the cluster
/// thread for the one node whose compare-and-set delete lands; clients without a
/// will stay. While fenced a new will stays off the cluster; once the heartbeat is
/// back the connected clients' wills are registered again (and a second fence
/// closes them).
#[test]
fn the_fence_closes_the_clients_whose_wills_the_cluster_holds() {
    use std::sync::atomic::Ordering;
    let mut a = node();
    let status = std::sync::Arc::new(crate::cluster::ClusterStatus::default());
    status.connected.store(true, Ordering::Relaxed);
    a.shards[0].set_cluster_status(status.clone());
    let with_will = |topic: &str| ConnectOpts {
        will: Some(will(topic, "gone", Q1, false, Properties::default())),
        properties: Properties::from(PropertyValues {
            session_expiry_interval_s: Some(300),
            ..Default::default()
        }),
        ..persistent()
    };
    let v5 = a.connect_ok(V5, "fence5", with_will("w/5"), false);
    let v3 = a.connect_ok(
        V311,
        "fence3",
        ConnectOpts {
            will: Some(will("w/3", "gone", Q1, false, Properties::default())),
            ..persistent()
        },
        false,
    );
    let plain = a.connect_ok(V5, "plain", persistent(), false);
    let s = a.connect_ok(V311, "s", ConnectOpts::default(), false);
    a.subscribe(s, "w/#", Q1);
    let out = a.shards[0].take_cluster_out().expect("wills set");
    assert_eq!(out.wills.len(), 2, "{:?}", out.wills);

    let now = a.now;
    // As the fencer does: the status first, then the nudge.
    status.fenced.store(true, Ordering::Relaxed);
    a.shards[0].on_cluster_in(ClusterIn::Fence { on: true }, now);
    a.pump();
    a.expect(v5, disconnect(ReasonCode::UseAnotherServer));
    a.expect_closed(v5);
    a.expect_closed(v3);
    a.expect_nothing(s);
    let out = a.shards[0].take_cluster_out().expect("the fenced wills");
    assert!(out.publishes.is_empty(), "a will published here: {out:?}");
    assert!(
        out.wills.is_empty(),
        "a fenced will left the bucket: {out:?}"
    );
    let mut fenced: Vec<_> = out
        .fenced
        .iter()
        .map(|(id, rec)| {
            let m = crate::shard::will_message(rec, now).expect("a will record");
            (id.clone(), m.topic)
        })
        .collect();
    fenced.sort();
    assert_eq!(
        fenced,
        [
            (Bytes::from_static(b"fence3"), Bytes::from_static(b"w/3")),
            (Bytes::from_static(b"fence5"), Bytes::from_static(b"w/5")),
        ]
    );
    assert_eq!(status.wills_fenced.load(Ordering::Relaxed), 2);
    // Nothing of the will-less client can fire elsewhere: it stays.
    a.expect_open(plain);

    // Fenced: a will set now is this node's own (published here if its client goes).
    let late = a.connect_ok(V5, "late", with_will("w/late"), false);
    if let Some(out) = a.shards[0].take_cluster_out() {
        assert!(out.wills.is_empty(), "registered while fenced: {out:?}");
    }
    // The sessions of the closed clients are kept: they come back with session present.
    let back = a.connect_ok(V5, "fence5", with_will("w/5"), true);
    let _ = a.shards[0].take_cluster_out();

    // A stale nudge behind a newer status changes nothing.
    status.fenced.store(false, Ordering::Relaxed);
    a.shards[0].on_cluster_in(ClusterIn::Fence { on: true }, now);
    a.shards[0].on_cluster_in(ClusterIn::Fence { on: false }, now);
    a.pump();
    let out = a.shards[0]
        .take_cluster_out()
        .expect("wills registered again");
    let mut ids: Vec<_> = out
        .wills
        .iter()
        .map(|(id, rec)| (id.clone(), rec.is_some()))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            (Bytes::from_static(b"fence5"), true),
            (Bytes::from_static(b"late"), true)
        ]
    );
    // The loop follows the status at its next turn, with no nudge at all.
    status.fenced.store(true, Ordering::Relaxed);
    a.shards[0].follow_cluster_fence(now);
    a.pump();
    a.expect(late, disconnect(ReasonCode::UseAnotherServer));
    a.expect(back, disconnect(ReasonCode::UseAnotherServer));
    a.expect_nothing(s);
    let out = a.shards[0].take_cluster_out().expect("fenced again");
    assert_eq!(out.fenced.len(), 2);
}

/// A hand-over whose asker never confirmed it and looks dead (review M1): the old
/// node takes the session back (for the cluster thread to make it the owner again by
/// compare-and-set on the asker's epoch), a late confirmation then ends nothing, and
/// the next claim's takeover request gets the whole session with its queue. A lapse
/// for another hand-over, or after the confirmation, changes nothing.
#[test]
fn an_unconfirmed_handover_is_taken_back_and_served_to_the_next_claim() {
    let mut a = old_owner_with_queue();
    let opts = ConnectOpts {
        properties: Properties::from(PropertyValues {
            session_expiry_interval_s: Some(600),
            ..Default::default()
        }),
        ..persistent()
    };
    let r5 = a.connect_ok(V5, "roam5", opts, false);
    a.subscribe(r5, "t", Q1);
    a.drop_connection(r5);
    let _ = a.shards[0].take_cluster_out();
    let (bytes, _) = take_from(&mut a, "roam", false);
    assert!(bytes.is_some());
    let now = a.now;
    let lapse = |token: u64| ClusterIn::HandoverLapsed {
        client_id: Bytes::from_static(b"roam"),
        token,
        epoch: 2,
    };
    // Not the hand-over this node made: ignored.
    a.shards[0].on_cluster_in(lapse(76), now);
    a.pump();
    if let Some(out) = a.shards[0].take_cluster_out() {
        assert!(out.reasserts.is_empty(), "{out:?}");
    }
    a.shards[0].on_cluster_in(lapse(77), now);
    a.pump();
    let out = a.shards[0]
        .take_cluster_out()
        .expect("the session taken back");
    assert_eq!(out.reasserts, [(Bytes::from_static(b"roam"), 2)]);
    assert!(out.interest.is_empty(), "still subscribed here");

    // The asker's confirmation, late: the session is this node's again.
    a.shards[0].on_cluster_in(
        ClusterIn::Confirmed {
            client_id: Bytes::from_static(b"roam"),
            token: 77,
            reply: 78,
            max_bytes: 1 << 20,
        },
        now,
    );
    a.pump();
    let out = a.shards[0].take_cluster_out().expect("an answer");
    assert_eq!(out.handovers.len(), 1);
    assert!(
        out.handovers[0].session.is_none(),
        "ended by a late confirmation"
    );
    let p = a.connect_ok(V311, "pub2", ConnectOpts::default(), false);
    a.publish(p, "t", "x3", Q1, false, 3);
    let _ = a.shards[0].take_cluster_out();

    // The next claim (any node) asks this one and gets the session whole.
    let (bytes, _) = take_from(&mut a, "roam", false);
    let bytes = bytes.expect("the session, not stranded");
    assert_eq!(handed_payloads(&bytes), [&b"x1"[..], b"x2", b"x3"]);

    // Confirmed this time: a lapse afterwards finds nothing to take back.
    let mut b = node();
    b.auto_claim = false;
    let c = b.connect(V311, "roam", persistent());
    let claim = claim_of(&mut b, "roam");
    answer_claim(&mut b, &claim, Some(bytes));
    b.pump();
    match b.next(c) {
        Some(Packet::ConnAck(ack)) => assert!(ack.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let out = b.shards[0].take_cluster_out().expect("interest");
    let _ = confirm(&mut a, &mut b, &out);
    a.shards[0].on_cluster_in(lapse(77), now);
    a.pump();
    if let Some(out) = a.shards[0].take_cluster_out() {
        assert!(out.reasserts.is_empty(), "{out:?}");
    }
    assert_eq!(a.shards[0].stats().sessions, 3, "pub, pub2 and roam5 left");
}

/// A message from node "c" (`key`: its cluster identity) as the cluster thread hands
/// it to node `cl`'s loop.
fn from_c(cl: &mut Cluster, payload: &str, qos: QoS, key: u64) {
    let msg = super::cluster::from_node_keyed(cl, "t", payload, qos, key);
    let now = cl.now;
    cl.shards[0].on_cluster_in(
        ClusterIn::Msg(crate::shard::ShardMsg::Publish {
            msg,
            plain: true,
            shared: Vec::new(),
            hold: 0,
        }),
        now,
    );
    cl.pump();
}

/// Exactly once across the interest grace: the old node keeps the session's
/// interest a second past the new node's own, so a QoS 2 message published then
/// reaches both, directly on the new node and in the old node's delta. The delta's
/// copy carries the message's cluster identity and the new node drops it; a message
/// that reached only the old node still arrives. Before, "both" came twice.
#[test]
fn a_qos2_message_reaching_both_nodes_in_the_grace_is_delivered_once() {
    let mut a = node();
    let s = a.connect_ok(V311, "roam", persistent(), false);
    a.subscribe(s, "t", Q2);
    a.drop_connection(s);
    from_c(&mut a, "queued", Q2, 10);
    let _ = a.shards[0].take_cluster_out();
    let mut b = node();
    b.auto_claim = false;
    let c = b.connect(V311, "roam", persistent());
    let claim = claim_of(&mut b, "roam");
    let (bytes, _) = take_from(&mut a, "roam", false);
    let bytes = bytes.expect("a hand-over");
    assert!(
        handover_records(&bytes)
            .expect("decodes")
            .iter()
            .any(|r| matches!(r, Record::MsgOrigin { key: 10, .. })),
        "the queued copy carries its identity"
    );
    answer_claim(&mut b, &claim, Some(bytes));
    b.pump();
    match b.next(c) {
        Some(Packet::ConnAck(ack)) => assert!(ack.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    b.expect(c, pubp("t", "queued", Q2, false, 1));
    let out = b.shards[0]
        .take_cluster_out()
        .expect("interest and confirmation");
    // In the grace: one message reaches both nodes, one only the old node.
    from_c(&mut a, "both", Q2, 11);
    from_c(&mut b, "both", Q2, 11);
    from_c(&mut a, "only-a", Q2, 12);
    b.expect(c, pubp("t", "both", Q2, false, 2));
    confirm(&mut a, &mut b, &out);
    b.expect(c, pubp("t", "only-a", Q2, false, 3));
    b.expect_nothing(c);
    // The watch ended with the delta: a later message is simply delivered.
    from_c(&mut b, "after", Q2, 13);
    b.expect(c, pubp("t", "after", Q2, false, 4));
}

/// Node `n` answers the confirmation of its hand-over `token` of "roam" (`reply`):
/// the delta it sends, or `None` when it answers nothing yet (its answer waits).
fn answer_confirm(n: &mut Cluster, token: u64, reply: u64) -> Option<Option<Bytes>> {
    let now = n.now;
    n.shards[0].on_cluster_in(
        ClusterIn::Confirmed {
            client_id: Bytes::from_static(b"roam"),
            token,
            reply,
            max_bytes: 1 << 20,
        },
        now,
    );
    n.pump();
    let out = n.shards[0].take_cluster_out()?;
    let h = out.handovers.iter().find(|h| h.reply == reply)?;
    Some(h.session.clone())
}

/// Node `n` gets `delta` from the node it loaded "roam" from.
fn give_delta(n: &mut Cluster, delta: Bytes) {
    let now = n.now;
    n.shards[0].on_cluster_in(
        ClusterIn::Delta {
            client_id: Bytes::from_static(b"roam"),
            session: delta,
        },
        now,
    );
    n.pump();
}

/// The first link of a chain: node b has loaded "roam" from its old owner a (the
/// queue of `old_owner_with_queue`), and its confirmation to a is in its outbox.
fn loaded_from_the_old_owner() -> (Cluster, Cluster) {
    let mut a = old_owner_with_queue();
    let mut b = node();
    move_roam(&mut a, &mut b, V311, persistent());
    (a, b)
}

/// The chain A -> B -> C (review M3): the client moves on from b to c before a has
/// answered b's confirmation, and c's confirmation reaches b first. b holds its
/// answer until a's delta is in, so the copies that reached a late travel on to c
/// with b's own. Before, b ended the session at c's confirmation and a's delta,
/// coming next, found no session: those copies were lost, PUBACKed on a.
#[test]
fn a_late_delta_travels_on_along_a_chain_of_takeovers() {
    let (mut a, mut b) = loaded_from_the_old_owner();
    let out_b = b.shards[0]
        .take_cluster_out()
        .expect("b's confirmation to a");
    assert_eq!(out_b.confirms.len(), 1);
    // Reaches a while b's confirmation travels (PUBACKed on a).
    let p = a.connect_ok(V311, "pub2", ConnectOpts::default(), false);
    a.publish(p, "t", "late-a", Q1, false, 3);
    let _ = a.shards[0].take_cluster_out();
    // The client moves on to c, which takes the session from b (b's hand-over 77).
    let mut c = node();
    let cc = move_roam(&mut b, &mut c, V311, persistent());
    // In flight on b: sent again, as duplicates.
    for want in ["x1", "x2"] {
        match c.next(cc) {
            Some(Packet::Publish(m)) => assert!(m.dup && m.payload[..] == *want.as_bytes()),
            other => panic!("expected {want}, got {other:?}"),
        }
    }
    let _ = c.shards[0].take_cluster_out();
    // c's confirmation reaches b before a's delta does: b's answer waits for it.
    assert_eq!(answer_confirm(&mut b, 77, 91), None, "held for a's delta");
    let d_a = answer_confirm(&mut a, 77, 92)
        .expect("answered")
        .expect("a's delta");
    assert_eq!(handed_payloads(&d_a), [&b"late-a"[..]]);
    let now = b.now;
    b.shards[0].on_cluster_in(
        ClusterIn::Delta {
            client_id: Bytes::from_static(b"roam"),
            session: d_a,
        },
        now,
    );
    b.pump();
    let out = b.shards[0].take_cluster_out().expect("b's answer to c");
    let answer = out
        .handovers
        .iter()
        .find(|h| h.reply == 91)
        .expect("answered");
    let d_b = answer
        .session
        .clone()
        .expect("b's delta carries a's copies");
    assert_eq!(handed_payloads(&d_b), [&b"late-a"[..]]);
    give_delta(&mut c, d_b);
    c.expect(cc, pubp("t", "late-a", Q1, false, 3));
    c.expect_nothing(cc);
    assert_eq!(b.shards[0].stats().sessions, 0, "the session left b");
}

/// A delta that never comes (the old node never answered: the cluster thread hands
/// the loop an empty one) releases a held confirmation as well: the chain's next
/// node gets its answer, without the copies nobody sent.
#[test]
fn a_held_confirmation_is_answered_when_the_awaited_delta_is_given_up() {
    let (_a, mut b) = loaded_from_the_old_owner();
    let _ = b.shards[0].take_cluster_out();
    let (bytes_b, _) = take_from(&mut b, "roam", false);
    assert!(bytes_b.is_some());
    assert_eq!(answer_confirm(&mut b, 77, 91), None, "held for a's delta");
    give_delta(&mut b, Bytes::new());
    let out = b.shards[0].take_cluster_out().expect("b's answer");
    assert!(out.handovers.iter().any(|h| h.reply == 91), "{out:?}");
    assert_eq!(b.shards[0].stats().sessions, 0, "the session left b");
}

/// Review10 M8: a hands "roam" to b, which loads it and serves the client, but b's
/// confirmation never reaches a. Messages from node c reach both a's held copy and
/// b's session, and the client acknowledges them on b. When the client comes back
/// to a, b hands the session back with the keys of what reached it, and a's own
/// copies since its hand-over (the gap) join the loaded session less those: only
/// the message that reached a alone arrives. Before, every acknowledged message was
/// sent again.
#[test]
fn a_session_handed_back_unconfirmed_does_not_resend_what_the_client_had() {
    let mut a = roam_offline(Q1);
    let mut b = node();
    let c = move_roam(&mut a, &mut b, V311, persistent());
    let out = b.shards[0]
        .take_cluster_out()
        .expect("interest and confirmation");
    assert_eq!(
        out.confirms.len(),
        1,
        "its confirmation, which a never gets"
    );
    for (payload, key, pid) in [("both-1", 21, 1), ("both-2", 22, 2)] {
        from_c(&mut a, payload, Q1, key);
        from_c(&mut b, payload, Q1, key);
        b.expect(c, pubp("t", payload, Q1, false, pid));
        b.send(c, puback(pid));
        b.pump();
    }
    from_c(&mut a, "only-a", Q1, 23);
    b.drop_connection(c);
    let _ = b.shards[0].take_cluster_out();

    // The client is back on a; b hands the session back.
    assert_eq!(return_to_a(&mut a, &mut b), [&b"only-a"[..]]);
}

/// Review10 M8: a hand-over that arrives while a newer connection of the id is
/// online here is not dropped: its copies join that session (as a Merge's do) and
/// it is confirmed, so the old node ends its copy instead of keeping it, subscribed
/// and growing, until it expires.
#[test]
fn a_handover_meeting_a_newer_connection_joins_it_and_is_confirmed() {
    let mut a = old_owner_with_queue();
    let mut b = node();
    b.auto_claim = false;
    let gave_up = b.connect(V311, "roam", persistent());
    let claim = claim_of(&mut b, "roam");
    // That CONNECT gives up; a newer one of the id is served here meanwhile.
    b.drop_connection(gave_up);
    b.auto_claim = true;
    let newer = b.connect_ok(V311, "roam", persistent(), false);
    let _ = b.shards[0].take_cluster_out();
    let (bytes, _) = take_from(&mut a, "roam", false);
    answer_claim(&mut b, &claim, bytes);
    b.pump();
    b.expect(newer, pubp("t", "x1", Q1, false, 1));
    b.expect(newer, pubp("t", "x2", Q1, false, 2));
    let out = b.shards[0].take_cluster_out().expect("a confirmation");
    confirm(&mut a, &mut b, &out);
    assert!(
        a.shards[0].sessions.find(b"roam").is_none(),
        "the old node ended its copy"
    );
}

/// The cluster thread tells node `n` that its confirmation of "roam" (hand-over 77
/// from node "a", round `attempt`) went unanswered; returns the confirmations `n`
/// sends again and its answers to other nodes' confirmations.
fn unanswered(n: &mut Cluster, attempt: u32) -> crate::shard::ClusterOut {
    let now = n.now;
    n.shards[0].on_cluster_in(
        ClusterIn::ConfirmUnanswered {
            client_id: Bytes::from_static(b"roam"),
            from: Handed {
                node: "a".into(),
                token: 77,
            },
            attempt,
        },
        now,
    );
    n.pump();
    n.shards[0].take_cluster_out().unwrap_or_default()
}

/// Review10 M8 item 1: b's confirmation to a goes unanswered (a few seconds of NATS
/// trouble), so a keeps its copy, which takes the messages b also gets. b asks
/// again, with a growing backoff, as long as the session lives there, even past
/// the 30 s the delta was once awaited; when a finally answers, its delta brings
/// only what b did not get directly. Before, b gave up after one round and a kept
/// taking copies for the client's return (which then got them twice).
#[test]
fn an_unanswered_confirmation_is_asked_again_until_it_lands() {
    let mut a = roam_offline(Q1);
    let mut b = node();
    let c = move_roam(&mut a, &mut b, V311, persistent());
    let out = b.shards[0].take_cluster_out().expect("a confirmation");
    assert_eq!(out.confirms[0].attempt, 0);
    for (payload, key, pid) in [("both-1", 21, 1), ("both-2", 22, 2)] {
        from_c(&mut a, payload, Q1, key);
        from_c(&mut b, payload, Q1, key);
        b.expect(c, pubp("t", payload, Q1, false, pid));
        b.send(c, puback(pid));
        b.pump();
    }
    from_c(&mut a, "only-a", Q1, 23);
    b.drop_connection(c);
    let _ = b.shards[0].take_cluster_out();
    let mut again = None;
    for attempt in 0..5 {
        b.advance(std::time::Duration::from_secs(10));
        let out = unanswered(&mut b, attempt);
        assert_eq!(out.confirms.len(), 1, "asked again: {out:?}");
        assert_eq!(out.confirms[0].attempt, attempt + 1);
        again = Some(out);
    }
    // 50 s after the load, a answers at last.
    confirm(&mut a, &mut b, &again.expect("asked again"));
    assert!(
        a.shards[0].sessions.find(b"roam").is_none(),
        "a ended its copy"
    );
    b.auto_claim = true;
    let back = b.connect_ok(V311, "roam", persistent(), true);
    b.expect(back, pubp("t", "only-a", Q1, false, 3));
    b.expect_nothing(back);
    // The delta came: a late word of the old round asks nothing more.
    assert!(unanswered(&mut b, 5).confirms.is_empty());
}

/// Review10 M8 item 1, bounded: a confirmation is asked again only while its
/// session lives on this node. Handed on meanwhile, it is given up, which answers
/// the next node's confirmation held for the delta (review M3).
#[test]
fn an_unanswered_confirmation_of_a_session_handed_on_is_given_up() {
    let (_a, mut b) = loaded_from_the_old_owner();
    let _ = b.shards[0].take_cluster_out();
    assert_eq!(
        unanswered(&mut b, 0).confirms.len(),
        1,
        "still here: asked again"
    );
    let (bytes_b, _) = take_from(&mut b, "roam", false);
    assert!(bytes_b.is_some());
    assert_eq!(answer_confirm(&mut b, 77, 91), None, "held for a's delta");
    let out = unanswered(&mut b, 1);
    assert!(out.confirms.is_empty(), "{out:?}");
    assert!(out.handovers.iter().any(|h| h.reply == 91), "{out:?}");
    assert_eq!(b.shards[0].stats().sessions, 0, "the session left b");
}

/// Node a is told its hand-over 77 of "roam" lapsed unconfirmed with the asker alive.
fn unconfirmed_and_alive(a: &mut Cluster) -> Vec<bool> {
    let now = a.now;
    a.shards[0].on_cluster_in(
        ClusterIn::HandoverUnconfirmed {
            client_id: Bytes::from_static(b"roam"),
            token: 77,
        },
        now,
    );
    a.pump();
    a.shards[0]
        .take_cluster_out()
        .map(|o| o.interest.iter().map(|i| i.add).collect())
        .unwrap_or_default()
}

/// Review10 M8 item 2: past `HANDOVER_LAPSE` with its asker alive, the copy held
/// on the old node stops taking messages: its interest leaves, and what comes
/// next (which reached the live session on the asker) is not in its delta nor in
/// what it would hand back. Its subscriptions stay in the session: taken back (the
/// asker dead after all), it is whole and takes messages again. Before, it went on
/// taking every message for up to 5 min, all of them sent again on the client's
/// return.
#[test]
fn an_unconfirmed_handover_with_a_live_asker_stops_taking_copies() {
    let mut a = roam_offline(Q1);
    let (bytes, _) = take_from(&mut a, "roam", false);
    assert!(bytes.is_some());
    from_c(&mut a, "before", Q1, 31);
    // Another hand-over's word changes nothing.
    let now = a.now;
    a.shards[0].on_cluster_in(
        ClusterIn::HandoverUnconfirmed {
            client_id: Bytes::from_static(b"roam"),
            token: 76,
        },
        now,
    );
    a.pump();
    assert!(a.shards[0].take_cluster_out().is_none());
    assert_eq!(
        unconfirmed_and_alive(&mut a),
        [false],
        "its interest leaves"
    );
    from_c(&mut a, "after", Q1, 32);
    assert!(
        a.shards[0].sessions.find(b"roam").is_some(),
        "still held for a late confirmation"
    );

    // The asker turns out dead: taken back whole, it takes messages again.
    let now = a.now;
    a.shards[0].on_cluster_in(
        ClusterIn::HandoverLapsed {
            client_id: Bytes::from_static(b"roam"),
            token: 77,
            epoch: 2,
        },
        now,
    );
    a.pump();
    let out = a.shards[0].take_cluster_out().expect("taken back");
    assert_eq!(out.reasserts.len(), 1);
    assert_eq!(
        out.interest.iter().map(|i| i.add).collect::<Vec<_>>(),
        [true],
        "subscribed again"
    );
    from_c(&mut a, "back", Q1, 33);
    let (bytes, _) = take_from(&mut a, "roam", false);
    let bytes = bytes.expect("the session");
    assert_eq!(handed_payloads(&bytes), [&b"before"[..], b"back"]);
    assert_eq!(
        count_handed(&bytes, |r| matches!(r, Record::SubAdd { .. })),
        1,
        "with its subscription"
    );
}

/// Review10 M8 item 2, with the confirmation landing late: the delta holds what
/// came before the lapse, and the session ends on the old node.
#[test]
fn a_late_confirmation_after_the_lapse_gets_what_came_before_it() {
    let (mut a, mut b) = loaded_from_the_old_owner();
    let out = b.shards[0].take_cluster_out().expect("b's confirmation");
    from_c(&mut a, "before", Q1, 41);
    assert_eq!(unconfirmed_and_alive(&mut a), [false]);
    from_c(&mut a, "after", Q1, 42);
    let _ = confirm(&mut a, &mut b, &out);
    assert!(a.shards[0].sessions.find(b"roam").is_none(), "ended on a");
    let (bytes, _) = take_from(&mut b, "roam", false);
    let got = handed_payloads(&bytes.expect("b's session"));
    assert_eq!(got, [&b"x1"[..], b"x2", b"before"]);
}

/// Review10 M8 item 3: a message published on the old node itself carries the
/// cluster key the other nodes know it by, on its local copies too (`Mqtt-Id` from
/// the publishing loop, with this process's origin). So when the client, served by b
/// after an unconfirmed hand-over, comes back to a, the copy a kept of its own
/// message is known to have reached the client on b, and is not sent again. Before,
/// a's own messages had no key on a and were all sent again.
#[test]
fn a_message_published_on_the_old_node_is_not_sent_again_on_return() {
    use std::sync::atomic::Ordering::Relaxed;
    let mut a = node();
    let status = std::sync::Arc::new(crate::cluster::ClusterStatus {
        origin: "a.0000000000000001".into(),
        ..Default::default()
    });
    status.connected.store(true, Relaxed);
    a.shards[0].set_cluster_status(status.clone());
    let s = a.connect_ok(V311, "roam", persistent(), false);
    a.subscribe(s, "t", Q1);
    a.drop_connection(s);
    let p = a.connect_ok(V311, "pub", ConnectOpts::default(), false);
    let _ = a.shards[0].take_cluster_out();
    let mut b = node();
    let c = move_roam(&mut a, &mut b, V311, persistent());
    let _ = b.shards[0].take_cluster_out();
    // Published on a (its held copy takes it) and forwarded: b gets it from NATS.
    a.publish(p, "t", "own-a", Q1, false, 1);
    let out = a.shards[0].take_cluster_out().expect("forwarded");
    let f = &out.publishes[0];
    let key = f.msg.cluster_key;
    assert_eq!(
        key,
        crate::cluster::headers::message_key(&status.origin, f.id),
        "the key every node computes from its headers"
    );
    from_c(&mut b, "own-a", Q1, key);
    b.expect(c, pubp("t", "own-a", Q1, false, 1));
    b.send(c, puback(1));
    b.pump();
    // And one from elsewhere that reached a alone.
    from_c(&mut a, "only-a", Q1, 51);
    b.drop_connection(c);
    let _ = b.shards[0].take_cluster_out();

    assert_eq!(return_to_a(&mut a, &mut b), [&b"only-a"[..]]);
}

/// Review10 M8 item 3, the other way: a message published on the new node while it
/// awaits the delta is recorded there, so the old node's delta copy of it (which
/// it got from NATS in the grace) is dropped, not delivered twice.
#[test]
fn a_delta_copy_of_a_message_published_on_the_new_node_is_dropped() {
    let (mut a, mut b) = loaded_from_the_old_owner();
    let out = b.shards[0].take_cluster_out().expect("b's confirmation");
    b.auto_claim = true;
    let p = b.connect_ok(V311, "pub", ConnectOpts::default(), false);
    let _ = b.shards[0].take_cluster_out();
    b.publish(p, "t", "own-b", Q1, false, 1);
    let fwd = b.shards[0].take_cluster_out().expect("forwarded");
    let key = fwd.publishes[0].msg.cluster_key;
    assert_ne!(key, 0);
    from_c(&mut a, "own-b", Q1, key);
    let _ = confirm(&mut a, &mut b, &out);
    let (bytes, _) = take_from(&mut b, "roam", false);
    let got = handed_payloads(&bytes.expect("b's session"));
    assert_eq!(got, [&b"x1"[..], b"x2", b"own-b"], "own-b once");
}

/// The payloads of the PUBLISHes waiting for client `c`, and whether each is a
/// re-send (DUP).
fn publishes(cl: &mut Cluster, c: Cid) -> Vec<(Bytes, bool)> {
    let mut got = Vec::new();
    while let Some(Packet::Publish(m)) = cl.next(c) {
        got.push((m.payload.clone(), m.dup));
    }
    got
}

/// Review M1: b loaded "roam" from a and serves its client, but is cut from NATS
/// before its confirmation lands; a, seeing b's heartbeat dead past the lapse,
/// takes the session back and owns it again. When NATS returns, b's confirmation
/// (asked again all along) reaches a, which answers "taken back": b's client is
/// told 0x8E and b gives its session up to a with the keys of what reached it
/// there; a puts it in place of its own copy, joined by what reached a alone. The
/// client, back on a, gets the copy b had in flight (a re-send) and what came while
/// b was cut, and none of what b had already delivered. Before, b was never told:
/// it went on serving the client while a's copy took the same messages, all of
/// which the client got again on its next CONNECT.
#[test]
fn an_asker_cut_from_nats_learns_its_session_was_taken_back_and_gives_it_up() {
    let mut a = roam_offline(Q1);
    let v5 = ConnectOpts {
        properties: Properties::from(PropertyValues {
            session_expiry_interval_s: Some(600),
            ..Default::default()
        }),
        ..persistent()
    };
    let mut b = node();
    let c = move_roam(&mut a, &mut b, V5, v5.clone());
    let _ = b.shards[0].take_cluster_out();
    from_c(&mut a, "both-1", Q1, 61);
    from_c(&mut b, "both-1", Q1, 61);
    b.expect(c, pubp("t", "both-1", Q1, false, 1));
    b.send(c, puback(1));
    b.pump();
    // b is cut: what is published reaches a's copy alone.
    from_c(&mut a, "while-cut", Q1, 62);
    let now = a.now;
    a.shards[0].on_cluster_in(
        ClusterIn::HandoverLapsed {
            client_id: Bytes::from_static(b"roam"),
            token: 77,
            epoch: 2,
        },
        now,
    );
    a.pump();
    let out = a.shards[0].take_cluster_out().expect("taken back");
    assert_eq!(out.reasserts.len(), 1);
    from_c(&mut a, "after-lapse", Q1, 63);
    // NATS is back on b: both get the next one; b's client has not acked it yet.
    from_c(&mut a, "both-2", Q1, 64);
    from_c(&mut b, "both-2", Q1, 64);
    b.expect(c, pubp("t", "both-2", Q1, false, 2));

    // b's confirmation, asked again, reaches a at last.
    let again = unanswered(&mut b, 3);
    assert_eq!(again.confirms.len(), 1, "still asked: {again:?}");
    let now = a.now;
    a.shards[0].on_cluster_in(
        ClusterIn::Confirmed {
            client_id: Bytes::from_static(b"roam"),
            token: 77,
            reply: 79,
            max_bytes: 1 << 20,
        },
        now,
    );
    a.pump();
    let out = a.shards[0].take_cluster_out().expect("an answer");
    assert_eq!(out.handovers.len(), 1);
    assert!(out.handovers[0].taken_back, "{:?}", out.handovers[0]);
    assert!(out.handovers[0].session.is_none());
    assert!(
        a.shards[0].sessions.find(b"roam").is_some(),
        "a keeps its copy"
    );

    let now = b.now;
    b.shards[0].on_cluster_in(
        ClusterIn::HandoverTakenBack {
            client_id: Bytes::from_static(b"roam"),
            from: Handed {
                node: "a".into(),
                token: 77,
            },
            max_bytes: 1 << 20,
        },
        now,
    );
    b.pump();
    b.expect(c, disconnect(ReasonCode::SessionTakenOver));
    b.expect_closed(c);
    let out = b.shards[0]
        .take_cluster_out()
        .expect("the session given up");
    assert_eq!(out.hand_backs.len(), 1, "{out:?}");
    let (id, to, session) = out.hand_backs[0].clone();
    assert_eq!(
        (&id[..], to.node.as_str(), to.token),
        (&b"roam"[..], "a", 77)
    );
    assert!(b.shards[0].sessions.find(b"roam").is_none(), "ended on b");

    // It reaches a: b's session replaces a's copy, plus what a alone got.
    let now = a.now;
    a.shards[0].on_cluster_in(
        ClusterIn::HandBack {
            client_id: id,
            token: 77,
            session,
        },
        now,
    );
    a.pump();
    let back = a.connect_ok(V5, "roam", v5, true);
    let got = publishes(&mut a, back);
    let payloads: Vec<&[u8]> = got.iter().map(|(p, _)| &p[..]).collect();
    assert_eq!(payloads, [&b"both-2"[..], b"while-cut", b"after-lapse"]);
    assert!(got[0].1, "both-2 was in flight on b: a re-send");
}

/// Review M1, bounded: once the client came back to a itself, a's copy is what it
/// is served; a late confirmation from b is then answered as before (no session),
/// and b's watch ends as if an empty delta had come; a hand-back arriving then
/// joins its copies to the session (nothing dropped).
#[test]
fn a_taken_back_session_resumed_on_the_old_node_answers_no_session() {
    let (mut a, mut b) = loaded_from_the_old_owner();
    let _ = b.shards[0].take_cluster_out();
    let now = a.now;
    a.shards[0].on_cluster_in(
        ClusterIn::HandoverLapsed {
            client_id: Bytes::from_static(b"roam"),
            token: 77,
            epoch: 2,
        },
        now,
    );
    a.pump();
    let _ = a.shards[0].take_cluster_out();
    let back = a.connect_ok(V311, "roam", persistent(), true);
    assert_eq!(publishes(&mut a, back).len(), 2, "x1 and x2");
    let out = answer_confirm(&mut a, 77, 80).expect("answered at once");
    assert_eq!(out, None, "no session");
    // A hand-back that finds the copy no longer as it was drops nothing: its
    // copies join the session here, as a Merge's do.
    let (bytes_b, _) = take_from(&mut b, "roam", false);
    let now = a.now;
    a.shards[0].on_cluster_in(
        ClusterIn::HandBack {
            client_id: Bytes::from_static(b"roam"),
            token: 77,
            session: bytes_b.expect("b's session"),
        },
        now,
    );
    a.pump();
    let joined: Vec<Bytes> = publishes(&mut a, back)
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(joined, [&b"x1"[..], b"x2"]);
}

/// Review10 M8 case a: the client comes back to a more than 5 min after b loaded
/// its session. b's confirmation never landed and was given up at `WATCH_MAX`, but
/// the keys of what reached b are kept while the session lives there, so a's gap
/// copies the client had on b are not sent again. Before, the watch ended and took
/// the keys with it: every acknowledged message came again.
#[test]
fn a_client_returning_after_the_watch_ended_is_not_sent_again_what_it_had() {
    let mut a = roam_offline(Q1);
    let mut b = node();
    let c = move_roam(&mut a, &mut b, V311, persistent());
    let _ = b.shards[0].take_cluster_out();
    from_c(&mut a, "both", Q1, 71);
    from_c(&mut b, "both", Q1, 71);
    b.expect(c, pubp("t", "both", Q1, false, 1));
    b.send(c, puback(1));
    b.pump();
    from_c(&mut a, "only-a", Q1, 72);
    assert_eq!(unconfirmed_and_alive(&mut a), [false]);
    // Asked again until the watch is over: given up, the session still on b.
    let mut attempt = 0;
    loop {
        b.advance(std::time::Duration::from_secs(60));
        let out = unanswered(&mut b, attempt);
        if out.confirms.is_empty() {
            break;
        }
        attempt += 1;
        assert!(attempt < 10, "given up past WATCH_MAX");
    }
    b.drop_connection(c);
    let _ = b.shards[0].take_cluster_out();
    b.advance(std::time::Duration::from_secs(600));
    a.advance(std::time::Duration::from_secs(900));
    assert_eq!(return_to_a(&mut a, &mut b), [&b"only-a"[..]]);
}
