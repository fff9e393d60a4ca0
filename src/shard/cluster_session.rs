//! Sessions across cluster nodes, the shard's side (issue #17; the cluster thread's
//! side is `cluster/sessions.rs`): a CONNECT that names a client id waits until the
//! cluster thread has made this node the session's owner in the `ringmq_sessions`
//! bucket and brought the session from its previous owner; the previous owner's loop
//! closes the old connection (MQTT 5: DISCONNECT 0x8E) and hands the session over as
//! bytes, keeping it (offline, still subscribed) until the new owner confirms it holds
//! the session and its interest; then it ends it and sends what arrived meanwhile
//! (`on_handover_confirmed`, `on_handover_delta`), so no message finds neither node.
//!
//! **The hand-over format** is the durability log's own records (`store::record`),
//! each behind a 4-byte length: `SessionPut`, `SubAdd` per subscription,
//! `InboundQos2` per open inbound id, and per copy `MsgPut` + `Enqueue` (+ `Sent`,
//! `Released` for copies in flight). The receiving loop replays them into a
//! `StoreState` (which already knows how to make sense of them) and loads the one
//! session, so both ends share the codec the log tests already cover. A copy of a
//! message from another node is followed by `MsgOrigin` (its cluster identity), so
//! the new owner can drop a delta copy it already got directly (`cluster_dedup.rs`).
//! A session sent on before its own hand-over was confirmed also carries
//! `MsgOrigin { msg: 0, key }` per cluster message that reached it since it was
//! loaded (`with_seen_keys`), so a node it returns to does not resend those from
//! the copy it kept (review10 M8). A hand-over is
//! bounded by what a session may hold (`max_queued_messages` / `max_queued_bytes`
//! plus the in-flight window), so it is one NATS message.
//!
//! Off on a single node and for ids the cluster never claims (`$bridge/` sessions are
//! local to the node that runs the bridge; an empty id gets a node-local one).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::cluster::SessionSave;
use super::cluster_dedup::Retry;
use super::conn::ConnState;
use super::durable::{props_bytes, props_of, qos_of, unpack_options};
use super::{ConnId, Shard};
use crate::protocol::{Connect, QoS};
use crate::session::{Message, Outgoing, Phase, NONE};
use crate::store::record::{Record, WillRec};
use crate::store::state::StoreState;

/// A CONNECT's claim on its client id, for the cluster thread.
#[derive(Debug, Clone)]
pub struct SessionClaim {
    pub conn: ConnId,
    pub generation: u32,
    pub client_id: Bytes,
    /// Clean start: the previous owner ends the session instead of sending it.
    pub clean: bool,
}

/// A loop's answer to another node's takeover request (`reply`: the cluster thread's
/// id for the request); `session`: the hand-over bytes, `None` when this loop had no
/// such session or the claim was a clean start.
#[derive(Debug, Clone)]
pub struct SessionHandover {
    pub reply: u64,
    pub session: Option<Bytes>,
    /// The session was larger than one NATS message may be: it stayed on this node
    /// (offline) rather than be ended unsent; the asking node serves a fresh one.
    pub too_large: bool,
    /// The answer to a confirmation of a hand-over this node took back (review
    /// M1): the asker no longer owns the session and gives its own up to this
    /// node (`on_handover_taken_back`).
    pub taken_back: bool,
}

/// Where a hand-over came from and its id there: the new owner confirms receipt with
/// it once its subscriptions are on NATS, and only then does the old owner end the
/// session (sending what reached it meanwhile, `ClusterIn::Delta`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handed {
    pub node: String,
    pub token: u64,
}

/// A loaded hand-over to confirm to the node it came from.
#[derive(Debug, Clone)]
pub struct HandoverConfirm {
    pub client_id: Bytes,
    pub from: Handed,
    /// 0 the first time; then how many times it went unanswered before
    /// (`ClusterIn::ConfirmUnanswered`), which sets the backoff of the next try.
    pub attempt: u32,
}

/// A confirmation held until the session's own previous node's delta is in
/// (`on_handover_confirmed`, review M3).
#[derive(Debug)]
pub(super) struct HeldConfirm {
    client_id: Bytes,
    token: u64,
    reply: u64,
    max_bytes: usize,
}

/// How long a handed-over session with no expiry of its own (it would end with its
/// connection, which is gone) waits on the old node for the new owner's confirmation.
const HANDING_HOLD: std::time::Duration = std::time::Duration::from_secs(30);
/// Hand-overs waiting for confirmation past which entries of sessions gone meanwhile
/// are swept out (bounds the map).
const HANDING_SWEEP_AT: usize = 4096;

/// Hand-overs taken back (`TakenBack`) remembered at most; past it those whose
/// session is gone are swept, then the oldest goes (its asker is then answered "no
/// session", as before review M1 was fixed, and keeps serving its client).
const TAKEN_BACK_MAX: usize = 4096;

/// A hand-over whose asker never confirmed it and looked dead, so this node took
/// the session back (`on_handover_lapsed`, review M1), kept while the session
/// stays here offline as it was then: a late confirmation is answered
/// `taken_back`, and the asker's session, given up to this node in return,
/// replaces the copy here, joined by what reached this node alone since the
/// hand-over (`load_handover`).
#[derive(Debug, Clone, Copy)]
pub(super) struct TakenBack {
    pub(super) token: u64,
    /// Copies the hand-over carried (the rest reached this node after it).
    pub(super) copies: usize,
    pub(super) at: Instant,
}

/// How long a confirmed hand-over's delta stays for a repeated confirmation: the
/// new owner re-sends after `FETCH_TIMEOUT` (2 s, `cluster/sessions.rs`), and after
/// a round of unanswered tries asks again within about 10 s (`confirm_backoff`, at
/// most 5 s, then its flush and `CONFIRM_GRACE`), so 30 s covers the next round too.
const CONFIRMED_KEEP: std::time::Duration = std::time::Duration::from_secs(30);
/// At most this many confirmed deltas are kept; past it the oldest goes (a retry of
/// that one then gets an empty answer, as before this table existed).
const CONFIRMED_MAX: usize = 4096;

/// Confirmed hand-overs' deltas, for replay to a repeated confirmation (review H1):
/// client id -> (hand-over id, delta, confirmed at). Bounded by `CONFIRMED_MAX` and
/// `CONFIRMED_KEEP`.
#[derive(Debug, Default)]
pub(super) struct ConfirmedDeltas {
    map: std::collections::HashMap<Bytes, (u64, Option<Bytes>, Instant)>,
}

impl ConfirmedDeltas {
    fn insert(&mut self, client_id: &[u8], token: u64, delta: Option<Bytes>, now: Instant) {
        if self.map.len() >= CONFIRMED_MAX {
            self.map
                .retain(|_, (_, _, at)| now.saturating_duration_since(*at) < CONFIRMED_KEEP);
        }
        if self.map.len() >= CONFIRMED_MAX {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, (_, _, at))| *at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.map.remove(&k);
            }
        }
        self.map
            .insert(Bytes::copy_from_slice(client_id), (token, delta, now));
    }

    /// The delta a confirmation of `token` got, when it was confirmed less than
    /// `CONFIRMED_KEEP` ago (`Some(None)`: it was confirmed with an empty delta).
    fn replay(&self, client_id: &[u8], token: u64, now: Instant) -> Option<Option<Bytes>> {
        match self.map.get(client_id) {
            Some((t, d, at))
                if *t == token && now.saturating_duration_since(*at) < CONFIRMED_KEEP =>
            {
                Some(d.clone())
            }
            _ => None,
        }
    }
}

/// A will as the cluster's `ringmq_wills` bucket keeps it: the log's `SessionPut`
/// record of the session (expiry 0) with the will.
pub fn will_record(client_id: &[u8], w: &crate::session::Will) -> Bytes {
    let mut out = Vec::new();
    Record::SessionPut {
        client: Bytes::copy_from_slice(client_id),
        expiry_s: 0,
        will: Some(WillRec {
            topic: w.topic.clone(),
            payload: w.payload.clone(),
            qos: w.qos as u8,
            retain: w.retain,
            delay_s: w.delay_s,
            props: props_bytes(&w.properties),
        }),
    }
    .encode(&mut out);
    Bytes::from(out)
}

/// The message a will record publishes (`None`: not a will record).
pub fn will_message(b: &[u8], now: Instant) -> Option<Message> {
    let Ok(Record::SessionPut { will: Some(w), .. }) = Record::decode(b) else {
        return None;
    };
    Some(Message {
        topic: w.topic,
        payload: w.payload,
        qos: qos_of(w.qos),
        retain: w.retain,
        properties: props_of(&w.props),
        arrived_at: now,
        origin_shard: u32::MAX as usize,
        origin_session: NONE,
        owned: true,
        cluster_key: 0,
    })
}

/// Appends one record behind its 4-byte little-endian length.
fn push_record(out: &mut Vec<u8>, rec: &Record) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    rec.encode(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// The records of a hand-over, or `None` when the bytes are not one (truncated, or a
/// record that does not decode): the session is then treated as lost, never misread.
pub fn handover_records(mut b: &[u8]) -> Option<Vec<Record>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
        let rec = Record::decode(b.get(4..4 + len)?).ok()?;
        out.push(rec);
        b = &b[4 + len..];
    }
    Some(out)
}

/// The cluster identities a hand-over's `MsgOrigin` records give its messages, and
/// the identities that already reached the session here (`cluster_dedup.rs`).
struct Origins<'a> {
    keys: HashMap<u64, u64>,
    seen: Option<&'a HashSet<u64>>,
}

impl<'a> Origins<'a> {
    fn of(records: &[Record], seen: Option<&'a HashSet<u64>>) -> Origins<'a> {
        let keys = records
            .iter()
            .filter_map(|r| match r {
                Record::MsgOrigin { msg, key } => Some((*msg, *key)),
                _ => None,
            })
            .collect();
        Origins { keys, seen }
    }

    /// Message `msg`'s cluster identity (0: none, it never went to NATS).
    fn key(&self, msg: u64) -> u64 {
        self.keys.get(&msg).copied().unwrap_or(0)
    }

    fn seen(&self, key: u64) -> bool {
        key != 0 && self.seen.is_some_and(|s| s.contains(&key))
    }
}

impl Shard {
    /// A CONNECT with a client id on a cluster node waits (as one waiting for a
    /// password check does) until the cluster thread answers its claim
    /// (`on_session_claimed`); the connect timeout still bounds the wait.
    pub(super) fn hold_connect_cluster(
        &mut self,
        conn: ConnId,
        connect: Box<Connect>,
    ) -> Option<Box<Connect>> {
        if self.cluster.is_none()
            || connect.client_id.is_empty()
            || connect.client_id.starts_with(b"$bridge/")
        {
            return Some(connect);
        }
        if let Some(st) = self.cluster_status.as_deref().filter(|s| s.is_stopped()) {
            // No cluster thread to answer a claim: served from this node's own state.
            st.sessions_local.fetch_add(1, Ordering::Relaxed);
            return Some(connect);
        }
        if self
            .cluster_status
            .as_deref()
            .is_some_and(|s| !s.is_connected())
        {
            // NATS is away: the claim would only be answered "local", and only once
            // the cluster thread gets to it (review10 H1), so the CONNECT goes on
            // now; the id is remembered there for the reconcile when NATS returns.
            if let Some(out) = self.cluster.as_deref_mut() {
                out.local.push(Bytes::copy_from_slice(&connect.client_id));
            }
            return Some(connect);
        }
        let Some(c) = self.conns.get_mut(conn) else {
            return Some(connect);
        };
        let generation = c.generation;
        let Some(p) = c.pending_mut() else {
            return Some(connect);
        };
        let claim = SessionClaim {
            conn,
            generation,
            client_id: Bytes::copy_from_slice(&connect.client_id),
            clean: connect.clean_start,
        };
        p.verifying = Some(connect);
        c.state = ConnState::Verifying;
        if let Some(out) = self.cluster.as_deref_mut() {
            out.claims.push(claim);
        }
        None
    }

    /// On a cluster node, `session`'s will (now set by its CONNECT) goes to the wills
    /// bucket, so another node publishes it if this one dies (`cluster/wills.rs`).
    pub(super) fn cluster_will_set(&mut self, session: u32) {
        let Some(out) = self.cluster.as_deref_mut() else {
            return;
        };
        let Some(s) = self.sessions.get(session) else {
            return;
        };
        if self.cluster_fenced {
            // No lease: a will registered now could be published by a survivor
            // while its client is connected here. It stays this node's own until
            // the heartbeat is back (`on_cluster_fence`).
            return;
        }
        if let Some(w) = s.will.as_deref() {
            out.wills.push((
                Bytes::copy_from_slice(&s.client_id),
                Some(will_record(&s.client_id, w)),
            ));
        }
    }

    /// The self-fencing lease (`cluster/wills.rs`, review H3). Fenced: no heartbeat
    /// of this node was acknowledged for `cluster_fence_after_ms`, so before any
    /// survivor may take this node for dead and publish the wills it registered,
    /// their connections go (MQTT 5: DISCONNECT 0x9C, use another server; 3.1.1:
    /// closed), their wills not published here: each stays in the wills bucket,
    /// handed to the cluster thread (`ClusterOut::fenced`), and the node whose
    /// compare-and-set delete lands publishes it, once (a survivor, or this node
    /// when its heartbeat is back). Clients without a will stay: nothing of theirs
    /// can fire elsewhere. Lifted: the connected clients' wills (set while fenced,
    /// kept local) are registered in the cluster again.
    pub(super) fn on_cluster_fence(&mut self, on: bool, now: Instant) {
        self.last_now = Some(now);
        if self.cluster.is_none() || self.cluster_fenced == on {
            return;
        }
        self.cluster_fenced = on;
        let online: Vec<u32> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.is_online() && s.will.is_some())
            .map(|(i, _)| i)
            .collect();
        if !on {
            for s in online {
                self.cluster_will_set(s);
            }
            return;
        }
        let mut closed = 0;
        for s in online {
            let Some(sess) = self.sessions.get(s) else {
                continue;
            };
            let Some(w) = sess.will.as_deref() else {
                continue;
            };
            let id = Bytes::copy_from_slice(&sess.client_id);
            let record = will_record(&id, w);
            self.close_for_another_server(s, now);
            if let Some(out) = self.cluster.as_deref_mut() {
                out.fenced.push((id, record));
            }
            closed += 1;
        }
        if closed > 0 {
            // After the closes: the cluster's invariant is that a survivor publishes
            // a will only once its connection is gone, and this line's time is when
            // the ones here went (tests/cluster.rs compares it with the survivor's).
            tracing::warn!(
                "cluster: fenced: loop {} closed {closed} connection(s) whose wills the \
                 cluster holds",
                self.id
            );
        }
        if let Some(st) = self.cluster_status.as_deref() {
            st.wills_fenced.fetch_add(closed, Ordering::Relaxed);
        }
        self.drop_slow_consumers(now);
    }

    /// Closes online session `s`'s connection without its will (which the cluster
    /// has): MQTT 5 gets DISCONNECT 0x9C (use another server). The session stays,
    /// offline, for the client's next CONNECT, which registers its will anew.
    fn close_for_another_server(&mut self, s: u32, now: Instant) {
        let Some(sess) = self.sessions.get_mut(s) else {
            return;
        };
        sess.will = None;
        let conn = sess.conn as usize;
        sess.conn = NONE;
        if let Some(c) = self.conns.get_mut(conn) {
            c.session = NONE;
            if c.version.is_v5() {
                let d = crate::protocol::Disconnect {
                    code: crate::protocol::ReasonCode::UseAnotherServer,
                    properties: crate::protocol::Properties::default(),
                };
                self.write_control(conn, &crate::protocol::Packet::Disconnect(d));
            }
            self.close(conn);
        }
        // With a data directory: a restart must not bring the will back here.
        self.log_session(s);
        self.cluster_session_offline(s);
        self.expire_offline_handover(s, now);
    }

    /// The asker of hand-over `token` never confirmed it and looks dead (review
    /// M1): without this the session would sit here until it expires while the
    /// ownership entry names the dead asker, so the client's next CONNECT (to any
    /// node) would start without its queue. If it is still held here for that
    /// hand-over (not confirmed, not handed back), it is taken back: a later
    /// confirmation ends nothing, it expires as an offline session does, and the
    /// cluster thread makes this node its owner again by compare-and-set against
    /// the asker's claim (`epoch`), never over a newer one (`ClusterOut::reasserts`).
    /// A session that ends with its connection (expiry 0) is left to end.
    pub(super) fn on_handover_lapsed(
        &mut self,
        client_id: &[u8],
        token: u64,
        epoch: u64,
        now: Instant,
    ) {
        self.last_now = Some(now);
        if self.cluster_handing.get(client_id).map(|h| h.0) != Some(token) {
            return;
        }
        let Some(s) = self.sessions.find(client_id) else {
            self.cluster_handing.remove(client_id);
            return;
        };
        if self
            .sessions
            .get(s)
            .map_or(true, |x| x.is_online() || x.expiry_s == 0)
        {
            return;
        }
        if let Some((token, copies)) = self.cluster_handing.remove(client_id) {
            self.remember_taken_back(client_id, token, copies, now);
        }
        // Whole again: its subscriptions take copies here again.
        self.reattach_subs(client_id);
        self.expire_offline_handover(s, now);
        if let Some(out) = self.cluster.as_deref_mut() {
            out.reasserts
                .push((Bytes::copy_from_slice(client_id), epoch));
        }
    }

    fn remember_taken_back(&mut self, client_id: &[u8], token: u64, copies: usize, now: Instant) {
        if self.cluster_taken_back.len() >= TAKEN_BACK_MAX {
            let sessions = &self.sessions;
            self.cluster_taken_back
                .retain(|id, _| sessions.find(id).is_some());
        }
        if self.cluster_taken_back.len() >= TAKEN_BACK_MAX {
            let oldest = self
                .cluster_taken_back
                .iter()
                .min_by_key(|(_, t)| t.at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.cluster_taken_back.remove(&k);
            }
        }
        self.cluster_taken_back.insert(
            Bytes::copy_from_slice(client_id),
            TakenBack {
                token,
                copies,
                at: now,
            },
        );
    }

    /// The session this node took back from hand-over `token` (if given, that one),
    /// still here offline as it was then: not resumed by its client, not handed on.
    fn taken_back_here(&self, client_id: &[u8], token: Option<u64>) -> Option<(u32, TakenBack)> {
        let t = *self.cluster_taken_back.get(client_id)?;
        if token.is_some_and(|k| k != t.token) || self.cluster_handing.contains_key(client_id) {
            return None;
        }
        let s = self.sessions.find(client_id)?;
        (!self.sessions.get(s)?.is_online()).then_some((s, t))
    }

    /// The old node answered this node's confirmation of hand-over `from` of
    /// `client_id`: it took the session back (review M1), because this node's
    /// heartbeat was dead past the lapse (cut from NATS while it served the
    /// client). The ownership entry names the old node again, which holds its
    /// copy and would serve it to the client's next CONNECT (and take every
    /// message this session takes here meanwhile). So this node gives up: its
    /// client is told (MQTT 5: DISCONNECT 0x8E, will rules as for a takeover),
    /// and the session goes to the old node with the keys of what reached it here
    /// since the load (`with_seen_keys`); the old node puts it in place of its
    /// copy, joined by what reached that copy alone (`load_handover`). Only the
    /// session loaded from that very hand-over, still here, gives up.
    pub(super) fn on_handover_taken_back(
        &mut self,
        client_id: &[u8],
        from: Handed,
        max_bytes: usize,
        now: Instant,
    ) {
        self.last_now = Some(now);
        if !self.cluster_dedup.is_from(client_id, from.token) {
            return;
        }
        let lives_here = self.sessions.find(client_id).is_some()
            && !self.cluster_handing.contains_key(client_id);
        if !lives_here {
            // Handed on meanwhile: the next node's confirmation decides.
            self.on_handover_delta(client_id, &[], now);
            return;
        }
        tracing::info!(
            "cluster: node {} took the session of {:?} back while this node was cut; given up to it",
            from.node,
            String::from_utf8_lossy(client_id)
        );
        if let Some(st) = self.cluster_status.as_deref() {
            st.sessions_reconciled.fetch_add(1, Ordering::Relaxed);
        }
        let token = from.token;
        self.yield_session(client_id, from.node, max_bytes, Some(token), now);
        self.cluster_dedup.forget(client_id);
    }

    /// The asker of hand-over `token` looks alive but has not confirmed it within
    /// `HANDOVER_LAPSE` (review10 M8 item 2): it serves the client, with its
    /// confirmation lost or late (it is asked again, `on_confirm_unanswered`).
    /// Until then the copy held here took every message the live session there
    /// took too, a gap the client would be sent again on its return. So the held
    /// session stops taking copies: its subscriptions leave this loop's trie (and
    /// NATS) but stay in the session, so a hand-over still carries them, and come
    /// back if it is taken back (its asker dead) or resumed here. What it would
    /// have got from now on reached the live session on the asker, whose
    /// subscriptions were on NATS long before (a flush and a second at most after
    /// the load); a late confirmation still gets the copies that came before.
    pub(super) fn on_handover_unconfirmed(&mut self, client_id: &[u8], token: u64, now: Instant) {
        self.last_now = Some(now);
        if self.cluster_handing.get(client_id).map(|h| h.0) != Some(token) {
            return;
        }
        let Some(s) = self.sessions.find(client_id) else {
            return;
        };
        let Some(sess) = self.sessions.get(s).filter(|x| !x.is_online()) else {
            return;
        };
        let subs = sess.subs.clone();
        self.unroute_subs(s, &subs);
        self.cluster_detached
            .insert(Bytes::copy_from_slice(client_id));
        tracing::debug!(
            "cluster: hand-over of {:?} unconfirmed, its asker alive: the copy here stops taking messages",
            String::from_utf8_lossy(client_id)
        );
    }

    /// A held session detached by `on_handover_unconfirmed` takes copies again.
    fn reattach_subs(&mut self, client_id: &[u8]) {
        if !self.cluster_detached.remove(client_id) {
            return;
        }
        let Some(s) = self.sessions.find(client_id) else {
            return;
        };
        let subs = self
            .sessions
            .get(s)
            .map(|x| x.subs.clone())
            .unwrap_or_default();
        for sub in &subs {
            self.route_sub(s, &sub.filter, sub.options, sub.sub_id);
        }
    }

    /// `session`'s connection is gone: its will is published, dropped or delayed here,
    /// and leaves the wills bucket (a delayed will lives on this node only).
    pub(super) fn cluster_will_gone(&mut self, session: u32) {
        let Some(out) = self.cluster.as_deref_mut() else {
            return;
        };
        if let Some(s) = self.sessions.get(session) {
            out.wills.push((Bytes::copy_from_slice(&s.client_id), None));
        }
    }

    /// After a partition another node keeps `client_id` (its CONNECT came later,
    /// `cluster/sessions.rs` reconcile): the connection here is closed as a takeover's
    /// would be (MQTT 5: DISCONNECT 0x8E; will rules as for a takeover) and the session
    /// ends here, its QoS 1/2 copies sent to `node` to join the session there.
    pub(super) fn on_session_yield(
        &mut self,
        client_id: &[u8],
        node: String,
        max_bytes: usize,
        now: Instant,
    ) {
        self.last_now = Some(now);
        self.yield_session(client_id, node, max_bytes, None, now);
    }

    /// See `on_session_yield`; `hand_back`: the id of `node`'s hand-over that it
    /// took back (review M1), sent with the session, which then also carries the
    /// keys of what reached it here since it was loaded (`with_seen_keys`).
    fn yield_session(
        &mut self,
        client_id: &[u8],
        node: String,
        max_bytes: usize,
        hand_back: Option<u64>,
        now: Instant,
    ) {
        let Some(s) = self.sessions.find(client_id) else {
            return;
        };
        self.take_over(s, false, now);
        let seen_keys = hand_back.is_some();
        let Some(bytes) =
            self.bytes_for_nats(s, client_id, seen_keys, max_bytes, Some(node.as_str()), now)
        else {
            return;
        };
        self.cluster_handing.remove(client_id);
        self.cluster_taken_back.remove(client_id);
        self.end_session(s, now);
        self.drop_slow_consumers(now);
        let id = Bytes::copy_from_slice(client_id);
        if let Some(out) = self.cluster.as_deref_mut() {
            match hand_back {
                Some(token) => out.hand_backs.push((id, Handed { node, token }, bytes)),
                None => out.yields.push((id, node, bytes)),
            }
        }
    }

    /// The cluster published `client_id`'s will while this node was cut from NATS
    /// (`cluster/wills.rs`): the rule is that a published will means its client is
    /// gone, so its connection here is closed (MQTT 5: DISCONNECT 0x9C, use another
    /// server) without publishing the will again; the session stays, offline, for the
    /// client's next CONNECT, which registers its will anew.
    pub(super) fn on_will_taken(&mut self, client_id: &[u8], now: Instant) {
        self.last_now = Some(now);
        let Some(s) = self.sessions.find(client_id) else {
            return;
        };
        let Some(sess) = self.sessions.get(s) else {
            return;
        };
        if !sess.is_online() || sess.will.is_none() {
            // Gone or will-less since: nothing of what the cluster published is here.
            return;
        }
        self.close_for_another_server(s, now);
        self.drop_slow_consumers(now);
    }

    /// A dead node's will, claimed by this node's cluster thread: published as if a
    /// client of this loop had (so it also goes to NATS, once).
    pub(super) fn on_cluster_will(&mut self, msg: Message, now: Instant) {
        self.last_now = Some(now);
        let msg = Message {
            origin_shard: self.id,
            ..msg
        };
        self.publish(msg, now);
        self.drop_slow_consumers(now);
    }

    /// The claims this turn made so far, taken out of the cluster outbox (the
    /// sans-IO tests answer them in place of the cluster thread).
    pub fn take_cluster_claims(&mut self) -> Vec<SessionClaim> {
        self.cluster
            .as_deref_mut()
            .map(|c| std::mem::take(&mut c.claims))
            .unwrap_or_default()
    }

    /// The cluster thread made this node the owner of `conn`'s client id; `session`:
    /// what the previous owner handed over, or (`own`) the saved state of this
    /// node's own entry. The CONNECT goes on with it (its CONNACK says session
    /// present when a session arrived or was here already).
    pub(super) fn on_session_claimed(
        &mut self,
        conn: ConnId,
        generation: u32,
        session: Option<Bytes>,
        from: Option<Handed>,
        own: bool,
        now: Instant,
    ) {
        self.last_now = Some(now);
        let held = match self.conns.get_mut(conn) {
            Some(c) if c.generation == generation && c.state == ConnState::Verifying => {
                let connect = c.pending_mut().and_then(|p| p.verifying.take());
                if connect.is_some() {
                    c.state = ConnState::AwaitConnect;
                }
                connect
            }
            _ => None,
        };
        let Some(connect) = held else {
            // The CONNECT gave up (closed, connect timeout) while its claim travelled,
            // but the old node has ended the session and this node owns it in the
            // bucket: it stays here, offline, for the client's next CONNECT. (This
            // node's own saved state stays in the entry for that CONNECT's claim.)
            if let Some(b) = session.filter(|_| !own) {
                if let Some(idx) = self.load_handover(None, &b, from.clone(), now) {
                    self.confirm_handover(idx, from, now);
                    self.expire_offline_handover(idx, now);
                }
            }
            return;
        };
        // The saved state of this node's own entry (review10 L1) is what a restart
        // without a data directory lost; a session held here is that and newer (its
        // queue, its latest subscriptions), so it stays.
        let lost_here = !own || self.sessions.find(&connect.client_id).is_none();
        if let Some(b) = session.filter(|_| !connect.clean_start && lost_here) {
            if let Some(idx) = self.load_handover(Some(&connect.client_id), &b, from.clone(), now) {
                self.confirm_handover(idx, from, now);
            }
        }
        self.continue_connect(conn, connect, now);
    }

    /// The hand-over loaded as `idx` is confirmed to its old node in this turn's
    /// output, after the interest its subscriptions made (the cluster thread
    /// subscribes on NATS before it sends the confirmation), so the old node keeps its
    /// interest until this node holds its own: no message published meanwhile reaches
    /// neither (`on_handover_confirmed`). Until the old node's delta comes, the
    /// cluster messages reaching this loop are remembered: what the old node got in
    /// its grace and this one got directly is then in the delta once too many.
    fn confirm_handover(&mut self, idx: u32, from: Option<Handed>, now: Instant) {
        let (Some(from), Some(s)) = (from, self.sessions.get(idx)) else {
            return;
        };
        let client_id = Bytes::copy_from_slice(&s.client_id);
        self.cluster_dedup.watch(&client_id, from.token, now);
        if let Some(out) = self.cluster.as_deref_mut() {
            out.confirms.push(HandoverConfirm {
                client_id,
                from,
                attempt: 0,
            });
        }
    }

    /// The old node did not answer the confirmation of hand-over `from` of
    /// `client_id` (review10 M8 item 1): unconfirmed, it keeps its copy and the
    /// client would be sent again on its return what it had here. So it is asked
    /// again (the cluster thread waited its backoff already) as long as the session
    /// lives here and its delta is awaited (`DeltaDedup::retry`, which bounds the
    /// time and how many at once); otherwise the wait ends as if an empty delta had
    /// come, which also answers a confirmation held for it (review M3).
    pub(super) fn on_confirm_unanswered(
        &mut self,
        client_id: &[u8],
        from: Handed,
        attempt: u32,
        now: Instant,
    ) {
        self.last_now = Some(now);
        // A session handed on meanwhile is the next node's to confirm.
        let lives_here = self.sessions.find(client_id).is_some()
            && !self.cluster_handing.contains_key(client_id);
        let connected = self
            .cluster_status
            .as_deref()
            .map_or(true, |s| s.is_connected());
        match self
            .cluster_dedup
            .retry(client_id, from.token, lives_here, connected, now)
        {
            Retry::NotThis => {}
            Retry::Again => {
                if let Some(st) = self.cluster_status.as_deref() {
                    st.confirms_retried.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(out) = self.cluster.as_deref_mut() {
                    out.confirms.push(HandoverConfirm {
                        client_id: Bytes::copy_from_slice(client_id),
                        from,
                        attempt: attempt.saturating_add(1),
                    });
                }
            }
            Retry::GiveUp => {
                if let Some(st) = self.cluster_status.as_deref() {
                    st.confirms_given_up.fetch_add(1, Ordering::Relaxed);
                }
                if lives_here {
                    // The old node keeps its copy, unconfirmed: what reached the
                    // session here is kept for its next hand-over, however late
                    // (review10 M8 case a).
                    self.cluster_dedup.keep(client_id);
                } else {
                    self.on_handover_delta(client_id, &[], now);
                }
            }
        }
    }

    /// The new owner confirmed the hand-over `token` of `client_id`: the session ends
    /// here, and the QoS 1/2 copies that reached it since the hand-over go to the new
    /// owner as a delta (`reply`). A session resumed here meanwhile (its client came
    /// back to this node) stays, and the answer is empty.
    pub(super) fn on_handover_confirmed(
        &mut self,
        client_id: &[u8],
        token: u64,
        reply: u64,
        max_bytes: usize,
        now: Instant,
    ) {
        self.last_now = Some(now);
        if self.taken_back_here(client_id, Some(token)).is_some() {
            // Taken back (review M1): the asker is told, and gives its session up
            // to this node (`on_handover_taken_back`).
            if let Some(out) = self.cluster.as_deref_mut() {
                out.handovers.push(SessionHandover {
                    reply,
                    session: None,
                    too_large: false,
                    taken_back: true,
                });
            }
            return;
        }
        let handing = self.cluster_handing.get(client_id).copied();
        if handing.is_some_and(|(t, _)| t == token)
            && self.cluster_dedup.is_awaiting(client_id, now)
        {
            // A chain A -> B -> C, this node B (review M3): the session came from A,
            // whose delta has not come yet, and already went on to C. Answered now,
            // the session would end here and A's delta find nothing to join: the
            // answer waits for A's delta (`on_handover_delta`), which then goes on
            // to C inside this node's. The cluster thread always hands the loop a
            // delta, an empty one when A never answers, so this ends.
            self.cluster_held_confirms.push(HeldConfirm {
                client_id: Bytes::copy_from_slice(client_id),
                token,
                reply,
                max_bytes,
            });
            return;
        }
        let mut delta = None;
        let found = handing
            .filter(|(t, _)| *t == token)
            .zip(self.sessions.find(client_id));
        if let Some(((_, copies), s)) = found {
            self.cluster_handing.remove(client_id);
            let detached = self.cluster_detached.contains(client_id);
            if !self.sessions.get(s).is_some_and(|x| x.is_online()) {
                let d = self.session_bytes_from(s, copies);
                if d.len() > max_bytes {
                    // Sent, it would fail after the session ended here, and its copies
                    // be lost (review M4): the session stays here, offline, under the
                    // hold `hold_handed` set, counted, and the new owner gets no delta.
                    tracing::warn!(
                        "cluster: delta of {:?} not sent: {} bytes, NATS allows {max_bytes}; session kept here",
                        String::from_utf8_lossy(client_id),
                        d.len()
                    );
                    if let Some(st) = self.cluster_status.as_deref() {
                        st.sessions_kept.fetch_add(1, Ordering::Relaxed);
                    }
                    if detached {
                        self.reattach_subs(client_id);
                    }
                } else {
                    delta = Some(d);
                    self.end_session(s, now);
                }
                self.drop_slow_consumers(now);
            }
            // Kept for a repeat: the sender may have timed out on this one and
            // re-sent it; without the copy the repeat got an empty answer and
            // the copies in the delta were lost (review H1).
            self.cluster_confirmed
                .insert(client_id, token, delta.clone(), now);
        } else if let Some(d) = self.cluster_confirmed.replay(client_id, token, now) {
            delta = d;
        }
        if let Some(out) = self.cluster.as_deref_mut() {
            out.handovers.push(SessionHandover {
                reply,
                session: delta,
                too_large: false,
                taken_back: false,
            });
        }
    }

    /// The copies the old node sent after the hand-over (`on_handover_confirmed`) join
    /// `client_id`'s session here, behind what it already holds; a copy of a cluster
    /// message that already reached this loop since the hand-over was loaded is
    /// dropped (it reached the session here directly: `cluster_dedup.rs`).
    /// Confirmations of this session's own hand-over that waited for the delta are
    /// answered then, with the copies it brought (review M3).
    pub(super) fn on_handover_delta(&mut self, client_id: &[u8], bytes: &[u8], now: Instant) {
        let seen = self.cluster_dedup.take(client_id);
        self.join_copies(client_id, bytes, seen.as_ref(), now);
        if self.cluster_held_confirms.is_empty() {
            return;
        }
        let (held, kept) = std::mem::take(&mut self.cluster_held_confirms)
            .into_iter()
            .partition(|h| h.client_id[..] == *client_id);
        self.cluster_held_confirms = kept;
        for h in held {
            self.on_handover_confirmed(&h.client_id, h.token, h.reply, h.max_bytes, now);
        }
    }

    /// The asker of hand-over `token` of `client_id`, which this node took back,
    /// gives its session up (`on_handover_taken_back`, review M1). If the copy taken
    /// back is still here as it was, the asker's session replaces it, joined by
    /// the copies that reached it since the hand-over less those the asker's keys
    /// name (`load_handover`, as for a hand-back). Otherwise (its client resumed it
    /// here, or it went on) the asker's copies join whatever holds the id here, as
    /// a Merge's do: nothing is dropped.
    pub(super) fn on_hand_back(
        &mut self,
        client_id: &[u8],
        token: u64,
        bytes: &[u8],
        now: Instant,
    ) {
        self.last_now = Some(now);
        if self.taken_back_here(client_id, Some(token)).is_none() {
            self.join_copies(client_id, bytes, None, now);
            return;
        }
        if let Some(idx) = self.load_handover(Some(client_id), bytes, None, now) {
            self.expire_offline_handover(idx, now);
            self.cluster_session_offline(idx);
        }
        self.drop_slow_consumers(now);
    }

    /// Hand-over bytes' copies join `client_id`'s session here, except those whose
    /// cluster identity is in `seen`.
    fn join_copies(
        &mut self,
        client_id: &[u8],
        bytes: &[u8],
        seen: Option<&HashSet<u64>>,
        now: Instant,
    ) {
        self.last_now = Some(now);
        let Some(idx) = self.sessions.find(client_id) else {
            return;
        };
        let Some(records) = handover_records(bytes) else {
            tracing::warn!("cluster: a session delta did not decode; its messages are lost");
            return;
        };
        let mut state = StoreState::default();
        for r in &records {
            state.apply(r);
        }
        let Some(s) = state.sessions.get(client_id) else {
            return;
        };
        let origins = Origins::of(&records, seen);
        if self
            .restore_handover_copies(idx, &state, s, &origins, true, now)
            .is_none()
        {
            return;
        }
        if self.sessions.get(idx).is_some_and(|x| x.is_online()) {
            self.pump(idx, now);
        }
        self.drop_slow_consumers(now);
    }

    /// Another node took `client_id`'s session: its connection here (if any) is
    /// closed as a local takeover's would be (0x8E, will rules), and the session
    /// leaves this node: as hand-over bytes unless the new CONNECT was a clean start.
    pub(super) fn on_session_takeover(
        &mut self,
        client_id: &[u8],
        clean: bool,
        reply: u64,
        max_bytes: usize,
        now: Instant,
    ) {
        self.last_now = Some(now);
        let mut bytes = None;
        if let Some(s) = self.sessions.find(client_id) {
            // Held again for this hand-over: it takes the copies for its delta. A
            // copy taken back earlier now goes on whole (review M1).
            self.cluster_taken_back.remove(client_id);
            self.reattach_subs(client_id);
            self.take_over(s, clean, now);
            if !clean {
                let Some(b) = self.bytes_for_nats(s, client_id, true, max_bytes, None, now) else {
                    // Kept here; the asking node is told so.
                    if let Some(out) = self.cluster.as_deref_mut() {
                        out.handovers.push(SessionHandover {
                            reply,
                            session: None,
                            too_large: true,
                            taken_back: false,
                        });
                    }
                    return;
                };
                // Kept, offline and still subscribed, until the new owner confirms
                // it holds the session and its interest (`on_handover_confirmed`):
                // what reaches it meanwhile follows as a delta, and a new owner that
                // never confirms leaves it here.
                let copies = self.sessions.get(s).map_or(0, |x| {
                    x.delivery
                        .as_deref()
                        .map_or(0, |d| d.inflight.len() + d.queue.len())
                });
                if self.cluster_handing.len() >= HANDING_SWEEP_AT {
                    let sessions = &self.sessions;
                    self.cluster_handing
                        .retain(|id, _| sessions.find(id).is_some());
                }
                self.cluster_handing
                    .insert(Bytes::copy_from_slice(client_id), (reply, copies));
                self.hold_handed(s, now);
                self.drop_slow_consumers(now);
                bytes = Some(b);
            } else {
                // Clean start: the new owner starts empty, nothing to hand over. The
                // will went with `take_over`; subscriptions, queue and (with a data
                // directory) the records go now.
                self.end_session(s, now);
                self.drop_slow_consumers(now);
            }
        }
        if let Some(out) = self.cluster.as_deref_mut() {
            out.handovers.push(SessionHandover {
                reply,
                session: bytes,
                too_large: false,
                taken_back: false,
            });
        }
    }

    /// Session `s` (taken over, so offline) as hand-over bytes for one NATS message,
    /// followed by the keys of what reached it here when `seen_keys`
    /// (`with_seen_keys`). `None` when they are more than `max_bytes`: NATS would
    /// refuse them after the session ended here, losing its copies (review10 L5), so
    /// it stays here offline (expiring as usual), counted. `to`: the node it was
    /// to go to, for the log.
    fn bytes_for_nats(
        &mut self,
        s: u32,
        client_id: &[u8],
        seen_keys: bool,
        max_bytes: usize,
        to: Option<&str>,
        now: Instant,
    ) -> Option<Bytes> {
        let mut bytes = self.handover_bytes(s);
        if seen_keys && bytes.len() <= max_bytes {
            bytes = self.with_seen_keys(client_id, bytes, max_bytes);
        }
        if bytes.len() <= max_bytes {
            return Some(bytes);
        }
        tracing::warn!(
            "cluster: session {:?} not handed over{}: {} bytes, NATS allows {max_bytes}; kept here",
            String::from_utf8_lossy(client_id),
            to.map_or(String::new(), |n| format!(" to {n}")),
            bytes.len()
        );
        if let Some(st) = self.cluster_status.as_deref() {
            st.sessions_kept.fetch_add(1, Ordering::Relaxed);
        }
        self.expire_offline_handover(s, now);
        self.drop_slow_consumers(now);
        None
    }

    /// A session loaded from a hand-over that was never confirmed to its old node
    /// (its delta has not come) goes on (review10 M8): the keys of the cluster
    /// messages that reached this loop since it was loaded follow its records as
    /// `MsgOrigin { msg: 0, key }` (no copy has id 0), as many as fit in
    /// `max_bytes`. If the session goes back to its old node, that node still holds
    /// its own copy and joins what reached it since its hand-over (the "gap"); a gap
    /// copy whose key is here reached the session here already (`cluster_dedup.rs`).
    /// A subset is safe: a key left out only lets a duplicate through.
    fn with_seen_keys(&self, client_id: &[u8], b: Bytes, max_bytes: usize) -> Bytes {
        let Some(seen) = self.cluster_dedup.seen(client_id) else {
            return b;
        };
        let mut out = b.to_vec();
        for key in seen {
            let at = out.len();
            push_record(&mut out, &Record::MsgOrigin { msg: 0, key });
            if out.len() > max_bytes {
                out.truncate(at);
                break;
            }
        }
        Bytes::from(out)
    }

    /// On a cluster node, a persistent session's subscriptions (and expiry) go to its
    /// entry in the sessions bucket after each change, so a node that takes the
    /// session over from a dead owner still has them (`cluster/sessions.rs`).
    pub(super) fn cluster_session_state(&mut self, session: u32) {
        self.cluster_session_save(session, false);
    }

    /// A CONNECT resumed `session`: saved again (its expiry may have changed); one
    /// resumed with expiry 0 is no longer persistent, so what an earlier connection
    /// saved of it must not outlive this one.
    pub(super) fn cluster_session_resumed(&mut self, session: u32) {
        if let Some(s) = self.sessions.get(session) {
            // Its client is back here: the asker of a hand-over taken back keeps
            // what it serves (see `TakenBack`).
            self.cluster_taken_back.remove(&s.client_id[..]);
        }
        if !self.cluster_detached.is_empty() {
            // A held copy its client came back to (NATS away): whole again.
            if let Some(id) = self
                .sessions
                .get(session)
                .map(|s| Bytes::copy_from_slice(&s.client_id))
            {
                self.reattach_subs(&id);
            }
        }
        if self.sessions.get(session).is_some_and(|s| s.expiry_s == 0) {
            self.cluster_session_ended(session);
        } else {
            self.cluster_session_save(session, false);
        }
    }

    /// `session`'s client is gone and the session stays (offline) for its expiry:
    /// saved again with the time it went, so a node that takes it from a dead owner
    /// after it expired starts fresh (review10 M4).
    pub(super) fn cluster_session_offline(&mut self, session: u32) {
        self.cluster_session_save(session, true);
    }

    fn cluster_session_save(&mut self, session: u32, offline: bool) {
        if self.cluster.is_none() {
            return;
        }
        let Some(s) = self.sessions.get(session) else {
            return;
        };
        if s.expiry_s == 0 || s.client_id.starts_with(b"$bridge/") {
            return;
        }
        let id = Bytes::copy_from_slice(&s.client_id);
        let state = self.session_bytes(session, false);
        let save = if offline {
            SessionSave::Offline(state)
        } else {
            SessionSave::Online(state)
        };
        if let Some(out) = self.cluster.as_deref_mut() {
            out.states.push((id, save));
        }
    }

    /// See `ClusterIn::Resave`.
    pub(super) fn on_session_resave(&mut self, client_id: &[u8]) {
        let Some(s) = self.sessions.find(client_id) else {
            return;
        };
        let offline = !self.sessions.get(s).is_some_and(|x| x.is_online());
        self.cluster_session_save(s, offline);
    }

    /// `session` ends on this node (`end_session`): its saved state leaves the
    /// sessions bucket if the entry still names this node (review10 M4), so no
    /// claim that finds this node dead later brings an ended session back. An
    /// entry another node claimed is left alone by the cluster thread.
    pub(super) fn cluster_session_ended(&mut self, session: u32) {
        if let Some(s) = self.sessions.get(session) {
            self.cluster_taken_back.remove(&s.client_id[..]);
            // Keys kept for its next hand-over have no session left to serve.
            self.cluster_dedup.forget_kept(&s.client_id);
        }
        let Some(out) = self.cluster.as_deref_mut() else {
            return;
        };
        let Some(s) = self.sessions.get(session) else {
            return;
        };
        if s.client_id.is_empty() || s.client_id.starts_with(b"$bridge/") {
            return;
        }
        out.states
            .push((Bytes::copy_from_slice(&s.client_id), SessionSave::Ended));
    }

    /// The session as hand-over bytes (see the module doc).
    fn handover_bytes(&self, session: u32) -> Bytes {
        self.session_bytes(session, true)
    }

    /// `full`: will, inbound QoS 2 ids and copies too; else expiry and subscriptions.
    fn session_bytes(&self, session: u32, full: bool) -> Bytes {
        if full {
            self.session_bytes_from(session, 0)
        } else {
            self.records_of(session, false, 0)
        }
    }

    /// Hand-over bytes with only the copies from the `from`-th on (in flight, then
    /// queued: a session held for confirmation is offline, so copies only join it
    /// at the back).
    fn session_bytes_from(&self, session: u32, from: usize) -> Bytes {
        self.records_of(session, true, from)
    }

    fn records_of(&self, session: u32, full: bool, from: usize) -> Bytes {
        let mut out = Vec::new();
        let Some(sess) = self.sessions.get(session) else {
            return Bytes::new();
        };
        // The cluster identity of each copy's message, in the order
        // `session_records` visits the copies (in flight, then queued).
        let keys: Vec<u64> = sess.delivery.as_deref().map_or_else(Vec::new, |d| {
            d.inflight
                .iter()
                .map(|f| f.out.msg.cluster_key)
                .chain(d.queue.iter().map(|o| o.msg.cluster_key))
                .collect()
        });
        // Ids local to this hand-over (the log's ids are the old node's own): copy n
        // is message n + 1. QoS 0 copies are not handed over.
        super::durable_snapshot::session_records(
            sess,
            full,
            |n, o| (n >= from && o.qos != QoS::AtMostOnce).then_some((n as u64 + 1, true)),
            |_| 0,
            |rec| {
                push_record(&mut out, rec);
                if let Record::MsgPut { id, .. } = rec {
                    let key = keys.get((*id - 1) as usize).copied().unwrap_or(0);
                    if key != 0 {
                        push_record(&mut out, &Record::MsgOrigin { msg: *id, key });
                    }
                }
            },
        );
        Bytes::from(out)
    }

    /// A session handed over and kept for its confirmation: it expires as an offline
    /// session would, and one that would end sooner than `HANDING_HOLD` (with its gone
    /// connection, or a short expiry) waits that long for the confirmation instead, so
    /// the copies that reach it meanwhile are still here for the delta (review L2).
    fn hold_handed(&mut self, idx: u32, now: Instant) {
        let long = |s: &crate::session::Session| u64::from(s.expiry_s) >= HANDING_HOLD.as_secs();
        if self.sessions.get(idx).is_some_and(long) {
            self.expire_offline_handover(idx, now);
            return;
        }
        let at = now + HANDING_HOLD;
        let at_ns = self.stamp_ns(at);
        if let Some(s) = self.sessions.get_mut(idx) {
            s.expires_ns = at_ns;
        }
        self.arm_session_timer(idx, super::timer::TimerKind::SessionExpiry, at, now);
    }

    /// Makes the session from hand-over bytes (`client_id`: the CONNECT's id, which it
    /// must be; `None`: the one the bytes name). An offline local session of that id
    /// (a stale one, e.g. from before a partition) gives way to it: the old owner
    /// ended the session for this claim. An online one (a later CONNECT here took the
    /// id while this claim travelled) is newer and stays; the hand-over is dropped.
    /// With a data directory the loaded session is written to this node's log, and
    /// the CONNECT's resume waits for it as any resume does. Returns the session.
    fn load_handover(
        &mut self,
        client_id: Option<&[u8]>,
        bytes: &[u8],
        from: Option<Handed>,
        now: Instant,
    ) -> Option<u32> {
        let Some(records) = handover_records(bytes) else {
            tracing::warn!("cluster: a session hand-over did not decode; session lost");
            return None;
        };
        let mut state = StoreState::default();
        for r in &records {
            state.apply(r);
        }
        let (client_id, s) = match client_id {
            Some(id) => (id, state.sessions.get(id)?),
            None => state.sessions.iter().next().map(|(id, s)| (&id[..], s))?,
        };
        let mut gap = None;
        // The keys of what reached the session on the node that sends it back, since
        // it loaded it from here (`with_seen_keys`, review10 M8).
        let seen_there: HashSet<u64> = records
            .iter()
            .filter_map(|r| match r {
                Record::MsgOrigin { msg: 0, key } => Some(*key),
                _ => None,
            })
            .collect();
        if let Some(old) = self.sessions.find(client_id) {
            if self.sessions.get(old).is_some_and(|o| o.is_online()) {
                // A newer connection has the id here: its session stays, and the
                // hand-over's copies join it, as a Merge's do. It is confirmed all
                // the same (review10 M8), so the old node ends its copy and sends
                // what reached it meanwhile rather than keep it, subscribed and
                // growing, until it expires.
                tracing::info!(
                    "cluster: session hand-over for {:?} joins the newer connection's session here",
                    String::from_utf8_lossy(client_id)
                );
                let client_id = client_id.to_vec();
                self.join_copies(&client_id, bytes, None, now);
                self.confirm_handover(old, from, now);
                return None;
            }
            // Held here for another node's confirmation, and the id came back before
            // it came (review M2): the copies that reached it since the hand-over are
            // on this node only, so they join the loaded session; the confirmation,
            // now stale, ends nothing.
            // Or taken back from its asker, which now gives its session up (review
            // M1): the same gap.
            let taken_back = self.taken_back_here(client_id, None).map(|(_, t)| t.copies);
            gap = self
                .cluster_handing
                .remove(client_id)
                .map(|(_, copies)| copies)
                .or(taken_back)
                .map(|copies| self.session_bytes_from(old, copies));
            // Replaced, not ended as a client would end it: its will is not published.
            if let Some(o) = self.sessions.get_mut(old) {
                o.will = None;
            }
            self.end_session(old, now);
        }
        if self.limits.sessions_full() {
            return None;
        }
        let idx = self.sessions.create(client_id);
        self.limits.session_added();
        let subs = self.restore_subs(idx, &s.subs);
        let sess = self.sessions.get_mut(idx)?;
        sess.expiry_s = s.expiry_s;
        sess.subs = subs;
        let d = sess.delivery();
        d.awaiting_pubrel = s.inbound_qos2.iter().copied().collect();
        self.log_session(idx);
        for sub in s.subs.iter() {
            let o = unpack_options(sub.1 .0);
            self.log_sub(idx, sub.0, Some((&o, sub.1 .1)));
        }
        self.restore_handover_copies(idx, &state, s, &Origins::of(&records, None), false, now)?;
        self.stats.sessions = self.sessions.len();
        if let Some(g) = gap {
            // This node's own copies, less those that reached the client on the node
            // that had the session meanwhile (review10 M8).
            self.join_copies(client_id, &g, Some(&seen_there), now);
        }
        Some(idx)
    }

    /// Puts the copies of hand-over session `s` (from `state`) in session `idx`'s
    /// queue or window, each logged with a data directory. `queue_all`: into the
    /// queue, as new copies (a delta joining a live session, whose packet ids are not
    /// the old node's: a copy in flight there is sent again here with an id of ours).
    fn restore_handover_copies(
        &mut self,
        idx: u32,
        state: &StoreState,
        s: &crate::store::state::SessionState,
        origins: &Origins,
        queue_all: bool,
        now: Instant,
    ) -> Option<()> {
        let mut loaded: Vec<(Outgoing, Option<(u16, Phase)>)> = Vec::new();
        let mut duplicates = 0u64;
        for (id, copy) in &s.copies {
            let Some(m) = state.messages.get(id) else {
                continue;
            };
            let cluster_key = origins.key(*id);
            if origins.seen(cluster_key) {
                duplicates += 1;
                continue;
            }
            let msg = Arc::new(Message {
                topic: m.msg.topic.clone(),
                payload: m.msg.payload.clone(),
                qos: qos_of(m.msg.qos),
                retain: m.msg.retain,
                properties: props_of(&m.msg.props),
                // The old node's clock does not travel: Message Expiry restarts here.
                arrived_at: now,
                origin_shard: self.id,
                origin_session: NONE,
                owned: true,
                cluster_key,
            });
            // Not in this node's log yet: `log_copy` below gives it its id here.
            let (out, sent) = super::durable_load::copy_of(copy, msg, 0);
            loaded.push((out, sent.filter(|_| !queue_all)));
        }
        let mut queued = 0;
        for (mut out, sent) in loaded {
            out.store_id = self.log_copy(idx, &out, sent.map(|(p, _)| p));
            self.store_fanout_done();
            let d = self.sessions.get_mut(idx).map(|s| s.delivery())?;
            queued += d.restore_copy(out, sent);
        }
        self.stats.bytes_queued += queued;
        if duplicates > 0 {
            tracing::debug!("cluster: {duplicates} delta copies already delivered here dropped");
            if let Some(st) = self.cluster_status.as_deref() {
                st.delta_duplicates.fetch_add(duplicates, Ordering::Relaxed);
            }
        }
        Some(())
    }

    /// An offline session with no timer yet (a hand-over loaded with no connection, or
    /// one kept because it could not be sent): it expires as any offline session does.
    fn expire_offline_handover(&mut self, idx: u32, now: Instant) {
        let Some(expiry_s) = self.sessions.get(idx).map(|s| s.expiry_s) else {
            return;
        };
        if expiry_s == 0 {
            // Ends with its connection, and that has gone.
            self.end_session(idx, now);
            return;
        }
        if expiry_s != u32::MAX {
            let at = now + std::time::Duration::from_secs(u64::from(expiry_s));
            let at_ns = self.stamp_ns(at);
            if let Some(s) = self.sessions.get_mut(idx) {
                s.expires_ns = at_ns;
            }
            self.arm_session_timer(idx, super::timer::TimerKind::SessionExpiry, at, now);
        }
    }
}
