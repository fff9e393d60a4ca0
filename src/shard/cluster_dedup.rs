//! Exactly once across a takeover's grace (issue #17): the new owner of a session
//! remembers which cluster messages reached this loop while it waits for the old
//! node's delta, and drops a delta copy it already queued or delivered.
//!
//! Why it is needed: the old node keeps the session's NATS interest about a second
//! past the new node's own (`CONFIRM_GRACE` in `cluster/link.rs`), so a message
//! published then reaches both nodes: directly here, and in the old node's delta.
//! At QoS 2 that second copy is a duplicate MQTT forbids. Both copies carry the
//! message's cluster identity (`Message::cluster_key`; the delta's `MsgOrigin`
//! records), so the copy that arrives second is recognised.
//!
//! Why a per-loop log and not a per-session set: once the hand-over is loaded its
//! subscriptions are in this loop's trie, and every cluster message this loop gets
//! is matched against them; so any message of the old node's delta that also
//! reached this loop after the load reached the session here too (or was refused
//! by its bounds, or its client unsubscribed: then dropping the delta's copy keeps
//! to what the session asked for). A message that reached this loop but matched no
//! filter of the session is not in the delta either. So the keys that reached the
//! loop since the session's load are enough, with no per-copy bookkeeping on the
//! delivery path.
//!
//! Bounded: keys are kept only while some session waits for its delta, at most
//! `RECENT_MAX` of them (the oldest go first: a watch that lost the start of its
//! window lets a duplicate through rather than drop a message), and a watch whose
//! delta never comes ends after `WATCH_MAX`.
//!
//! The watch is also the loop's queue of confirmations still to land (review10 M8
//! item 1): a confirmation the old node did not answer is asked again, with a
//! backoff, as long as its session lives here and its watch lasts (`retry`; while
//! NATS is away it lasts on, so a node cut for long still learns the old node's
//! answer when it is back, review M1); at most `RETRYING_MAX` at once per loop, past
//! which one is given up (counted).
//!
//! A confirmation given up while its session lives here leaves the old node's
//! copy unconfirmed: the client's return there would be sent again what reached it
//! here. So the watch's keys are kept (`keep`), frozen, past `WATCH_MAX` (review10
//! M8 case a), for the session's next hand-over (`seen`); at most `KEPT_KEYS_MAX`
//! keys in `KEPT_MAX` kept watches per loop, the oldest emptied or dropped first
//! (a duplicate, never a loss).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::protocol::QoS;

/// Cluster message keys remembered at most, across every watch of the loop.
const RECENT_MAX: usize = 65_536;
/// A watch whose delta has not come by then is dropped, and its confirmation is
/// asked no more: as long as the old node watches a hand-over it holds for an asker
/// that looks alive (`LAPSE_WATCH_MAX` in `cluster/sessions.rs`), so a confirmation
/// that lands late still finds the keys to drop the delta's duplicates by.
const WATCH_MAX: Duration = Duration::from_secs(300);
/// Confirmations asked again at once per loop (unanswered at least once, their
/// session still here); past it a further one is given up and counted.
pub(super) const RETRYING_MAX: usize = 1024;
/// Keys held in kept watches per loop (their confirmation given up, their session
/// still here), and kept watches at most: past either the oldest go first.
const KEPT_KEYS_MAX: usize = 65_536;
const KEPT_MAX: usize = 4096;

/// See the module doc.
#[derive(Debug, Default)]
pub(super) struct DeltaDedup {
    /// Client id -> its watch.
    watching: HashMap<Bytes, Watch>,
    /// Keys of the cluster messages (QoS 1/2) this loop got, oldest first.
    recent: VecDeque<u64>,
    /// The sequence number of `recent[0]`.
    first_seq: u64,
    /// Watches still recording (`Watch::kept` is `None`): while there are none,
    /// nothing is recorded.
    recording: usize,
}

/// One session loaded from a hand-over whose old node's delta has not come.
#[derive(Debug)]
struct Watch {
    /// The sequence number of the first key that counts for it.
    from: u64,
    /// When it was loaded.
    at: Instant,
    /// The hand-over's id on the old node (what its confirmation names).
    token: u64,
    /// Its confirmation went unanswered at least once and is being asked again.
    retrying: bool,
    /// Its confirmation was given up with its session still here (`keep`): no
    /// delta is awaited, and these are the keys that reached the loop while it
    /// was (frozen then; they no longer read `recent`).
    kept: Option<HashSet<u64>>,
}

impl Watch {
    fn recording(&self) -> bool {
        self.kept.is_none()
    }
}

/// What to do with a confirmation its old node did not answer (`DeltaDedup::retry`).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Retry {
    /// Ask again.
    Again,
    /// Give it up (the session left, its watch is over, or `RETRYING_MAX`
    /// confirmations are being asked again already): the loop ends the wait for
    /// the delta as if an empty one had come.
    GiveUp,
    /// Not the hand-over this loop waits on for that id (a newer one, or none).
    NotThis,
}

impl DeltaDedup {
    /// `client_id`'s session was loaded from hand-over `token`: from now on its old
    /// node's delta is checked against what reaches this loop.
    pub(super) fn watch(&mut self, client_id: &[u8], token: u64, now: Instant) {
        // A recording watch past `WATCH_MAX` that is not being asked again lost its
        // confirmation task (a round never lasts that long); a kept one stays
        // until its bounds or its session's next load want it gone.
        self.watching.retain(|_, w| {
            !w.recording() || w.retrying || now.saturating_duration_since(w.at) < WATCH_MAX
        });
        self.forget(client_id);
        let next = self.first_seq + self.recent.len() as u64;
        self.watching.insert(
            Bytes::copy_from_slice(client_id),
            Watch {
                from: next,
                at: now,
                token,
                retrying: false,
                kept: None,
            },
        );
        self.settle();
    }

    /// Whether `client_id`'s session, loaded from a hand-over, still waits for its
    /// old node's delta.
    pub(super) fn is_awaiting(&self, client_id: &[u8], now: Instant) -> bool {
        self.watching
            .get(client_id)
            .is_some_and(|w| w.recording() && now.saturating_duration_since(w.at) < WATCH_MAX)
    }

    /// Whether `client_id`'s session was loaded from hand-over `token` and its
    /// confirmation is still asked, or was given up with the session here.
    pub(super) fn is_from(&self, client_id: &[u8], token: u64) -> bool {
        self.watching
            .get(client_id)
            .is_some_and(|w| w.token == token)
    }

    /// The confirmation of hand-over `token` of `client_id` went unanswered;
    /// `lives_here`: its session is still on this loop and not being handed on;
    /// `connected`: NATS is up (while it is away the watch outlasts `WATCH_MAX`,
    /// so the old node's answer is still asked for when it returns, review M1).
    pub(super) fn retry(
        &mut self,
        client_id: &[u8],
        token: u64,
        lives_here: bool,
        connected: bool,
        now: Instant,
    ) -> Retry {
        let retrying = self.watching.values().filter(|w| w.retrying).count();
        let Some(w) = self
            .watching
            .get_mut(client_id)
            .filter(|w| w.token == token && w.recording())
        else {
            return Retry::NotThis;
        };
        let over = connected && now.saturating_duration_since(w.at) >= WATCH_MAX;
        if !lives_here || over {
            return Retry::GiveUp;
        }
        if !w.retrying && retrying >= RETRYING_MAX {
            return Retry::GiveUp;
        }
        w.retrying = true;
        Retry::Again
    }

    /// `client_id`'s confirmation is given up and its session stays here: its keys
    /// are kept, frozen, for the session's next hand-over (`seen`), and no delta is
    /// awaited any more (review10 M8 case a). Bounded by `KEPT_KEYS_MAX` and
    /// `KEPT_MAX`, oldest first.
    pub(super) fn keep(&mut self, client_id: &[u8]) {
        let Some(keys) = self.seen(client_id) else {
            return;
        };
        let kept = self.watching.values().filter(|w| !w.recording()).count();
        if kept >= KEPT_MAX {
            let oldest = self
                .watching
                .iter()
                .filter(|(_, w)| !w.recording())
                .min_by_key(|(_, w)| w.at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                self.forget(&k);
            }
        }
        if let Some(w) = self.watching.get_mut(client_id) {
            w.kept = Some(keys);
            w.retrying = false;
        }
        self.settle();
        let mut kept_keys = self.kept_keys();
        while kept_keys > KEPT_KEYS_MAX {
            let oldest = self
                .watching
                .values_mut()
                .filter(|w| w.kept.as_ref().is_some_and(|k| !k.is_empty()))
                .min_by_key(|w| w.at);
            let Some(w) = oldest else { break };
            let n = w.kept.as_ref().map_or(0, HashSet::len);
            w.kept = Some(HashSet::new());
            kept_keys -= n;
        }
    }

    /// Keys held in kept watches' `kept` sets.
    fn kept_keys(&self) -> usize {
        self.watching
            .values()
            .filter_map(|w| w.kept.as_ref())
            .map(HashSet::len)
            .sum()
    }

    /// `client_id`'s watch ends with nothing to take (its session left this node).
    pub(super) fn forget(&mut self, client_id: &[u8]) {
        if self.watching.remove(client_id).is_some() {
            self.settle();
        }
    }

    /// As `forget`, for a kept watch only (a recording one still has its
    /// confirmation's answer to come).
    pub(super) fn forget_kept(&mut self, client_id: &[u8]) {
        if self.watching.get(client_id).is_some_and(|w| !w.recording()) {
            self.forget(client_id);
        }
    }

    /// Whether any session waits for its delta (else nothing is recorded).
    #[inline]
    pub(super) fn is_watching(&self) -> bool {
        self.recording > 0
    }

    /// A message with cluster identity `key` (0: none, as on a single node) reached
    /// this loop at `qos`: remembered if it is QoS 1/2 and some session waits for
    /// its delta. Inlined: on a single node every routed message costs one compare.
    #[inline]
    pub(super) fn record(&mut self, key: u64, qos: QoS) {
        if key != 0 && qos != QoS::AtMostOnce && self.is_watching() {
            self.push_recent(key);
        }
    }

    fn push_recent(&mut self, key: u64) {
        if self.recent.len() >= RECENT_MAX {
            self.recent.pop_front();
            self.first_seq += 1;
        }
        self.recent.push_back(key);
    }

    /// `client_id`'s delta came: its watch ends, and the keys that reached this loop
    /// since it began are returned (`None`: no watch awaiting one, e.g. a delta from
    /// a reconcile, or one whose confirmation was given up).
    pub(super) fn take(&mut self, client_id: &[u8]) -> Option<HashSet<u64>> {
        if !self.watching.get(client_id)?.recording() {
            return None;
        }
        let seen = self.seen(client_id);
        self.forget(client_id);
        seen
    }

    /// The keys that reached this loop since `client_id`'s watch began, the watch
    /// left as it is (its session goes on to another node before its delta came,
    /// review10 M8; a chain's held confirmation still waits for that delta): kept
    /// ones, or those `recent` holds since it began (fewer if the log lost its start).
    pub(super) fn seen(&self, client_id: &[u8]) -> Option<HashSet<u64>> {
        let w = self.watching.get(client_id)?;
        if let Some(k) = &w.kept {
            return Some(k.clone());
        }
        let skip = w.from.saturating_sub(self.first_seq) as usize;
        Some(self.recent.iter().skip(skip).copied().collect())
    }

    /// After a watch changed: keys no recording watch needs any more go, and the
    /// count of recording watches follows.
    fn settle(&mut self) {
        self.recording = self.watching.values().filter(|w| w.recording()).count();
        let oldest = self
            .watching
            .values()
            .filter(|w| w.recording())
            .map(|w| w.from)
            .min();
        let Some(oldest) = oldest else {
            // Its memory too: a burst's 512 KiB are not kept for the next takeover.
            self.recent = VecDeque::new();
            self.first_seq = 0;
            return;
        };
        while self.first_seq < oldest && self.recent.pop_front().is_some() {
            self.first_seq += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q1: QoS = QoS::AtLeastOnce;

    #[test]
    fn a_watch_sees_only_what_came_after_it_began_and_ends_with_its_delta() {
        let t0 = Instant::now();
        let mut d = DeltaDedup::default();
        d.record(1, Q1);
        assert!(!d.is_watching(), "nothing is kept while no one waits");
        d.watch(b"a", 1, t0);
        d.record(2, Q1);
        d.watch(b"b", 1, t0);
        d.record(3, Q1);
        assert_eq!(d.take(b"a"), Some(HashSet::from([2, 3])));
        assert_eq!(d.take(b"a"), None, "taken once");
        d.record(4, Q1);
        assert_eq!(d.take(b"b"), Some(HashSet::from([3, 4])));
        assert!(d.recent.is_empty(), "no watch left, no keys left");
    }

    #[test]
    fn only_qos_1_and_2_messages_with_a_cluster_identity_are_recorded() {
        let t0 = Instant::now();
        let mut d = DeltaDedup::default();
        d.watch(b"a", 1, t0);
        d.record(0, Q1);
        d.record(5, QoS::AtMostOnce);
        d.record(6, QoS::ExactlyOnce);
        assert_eq!(d.take(b"a"), Some(HashSet::from([6])));
    }

    #[test]
    fn seen_keys_are_read_without_ending_the_watch() {
        let t0 = Instant::now();
        let mut d = DeltaDedup::default();
        assert_eq!(d.seen(b"a"), None, "no watch");
        d.record(1, Q1);
        d.watch(b"a", 1, t0);
        d.record(2, Q1);
        assert_eq!(d.seen(b"a"), Some(HashSet::from([2])));
        assert!(d.is_awaiting(b"a", t0), "still waiting for its delta");
        d.record(3, Q1);
        assert_eq!(d.take(b"a"), Some(HashSet::from([2, 3])));
    }

    #[test]
    fn the_log_is_bounded_and_a_stale_watch_gets_nothing() {
        let t0 = Instant::now();
        let mut d = DeltaDedup::default();
        d.watch(b"a", 1, t0);
        for k in 1..=(RECENT_MAX as u64 + 10) {
            d.record(k, Q1);
        }
        assert_eq!(d.recent.len(), RECENT_MAX);
        let seen = d.take(b"a").expect("a watch");
        assert_eq!(seen.len(), RECENT_MAX);
        assert!(!seen.contains(&1), "the oldest went first");
        // A watch past `WATCH_MAX` whose confirmation is not being asked again is
        // dropped when the next one begins.
        d.watch(b"b", 1, t0);
        d.watch(b"c", 1, t0 + WATCH_MAX);
        assert_eq!(d.take(b"b"), None, "past WATCH_MAX");
    }

    #[test]
    fn an_unanswered_confirmation_is_asked_again_while_its_session_lives_here() {
        let t0 = Instant::now();
        let mut d = DeltaDedup::default();
        d.watch(b"a", 7, t0);
        assert_eq!(
            d.retry(b"a", 6, true, true, t0),
            Retry::NotThis,
            "another hand-over"
        );
        assert_eq!(d.retry(b"b", 7, true, true, t0), Retry::NotThis, "no watch");
        assert_eq!(d.retry(b"a", 7, true, true, t0), Retry::Again);
        assert_eq!(
            d.retry(b"a", 7, true, true, t0),
            Retry::Again,
            "as often as needed"
        );
        assert_eq!(
            d.retry(b"a", 7, false, true, t0),
            Retry::GiveUp,
            "the session left"
        );
        assert_eq!(
            d.retry(b"a", 7, true, true, t0 + WATCH_MAX),
            Retry::GiveUp,
            "past WATCH_MAX"
        );
        // "a" is one of them.
        for i in 1..RETRYING_MAX {
            let id = format!("c{i}");
            d.watch(id.as_bytes(), 1, t0);
            assert_eq!(d.retry(id.as_bytes(), 1, true, true, t0), Retry::Again);
        }
        d.watch(b"late", 1, t0);
        assert_eq!(
            d.retry(b"late", 1, true, true, t0),
            Retry::GiveUp,
            "the queue is full"
        );
        assert_eq!(
            d.retry(b"c1", 1, true, true, t0),
            Retry::Again,
            "one already retrying goes on"
        );
    }

    #[test]
    fn while_nats_is_away_a_confirmation_is_asked_past_watch_max() {
        let t0 = Instant::now();
        let mut d = DeltaDedup::default();
        d.watch(b"a", 7, t0);
        let late = t0 + WATCH_MAX * 3;
        assert_eq!(d.retry(b"a", 7, true, false, late), Retry::Again);
        d.watch(b"b", 1, late);
        assert!(
            d.is_from(b"a", 7),
            "a watch being asked again is not dropped"
        );
        assert_eq!(
            d.retry(b"a", 7, true, true, late),
            Retry::GiveUp,
            "NATS back"
        );
    }

    /// Review10 M8 case a: a confirmation given up with its session here keeps the
    /// watch's keys, frozen, for the session's next hand-over however late it is;
    /// nothing more is recorded for it and no delta is awaited.
    #[test]
    fn a_given_up_watch_keeps_its_keys_past_watch_max() {
        let t0 = Instant::now();
        let mut d = DeltaDedup::default();
        d.watch(b"a", 7, t0);
        d.record(1, Q1);
        d.record(2, Q1);
        d.keep(b"a");
        assert!(!d.is_watching(), "nothing recording: nothing recorded");
        d.record(3, Q1);
        assert!(d.recent.is_empty());
        assert!(!d.is_awaiting(b"a", t0), "no delta awaited");
        assert_eq!(d.retry(b"a", 7, true, true, t0), Retry::NotThis);
        assert_eq!(d.take(b"a"), None, "not a delta's to take");
        d.watch(b"b", 1, t0 + WATCH_MAX * 10);
        assert_eq!(d.seen(b"a"), Some(HashSet::from([1, 2])), "kept");
        assert!(d.is_from(b"a", 7));
        d.forget_kept(b"b");
        assert!(d.is_from(b"b", 1), "a recording watch is not forgotten so");
        d.forget_kept(b"a");
        assert_eq!(d.seen(b"a"), None);
    }

    #[test]
    fn kept_keys_are_bounded_oldest_first() {
        let t0 = Instant::now();
        let mut d = DeltaDedup::default();
        d.watch(b"old", 1, t0);
        for k in 1..KEPT_KEYS_MAX as u64 {
            d.record(k, Q1);
        }
        d.keep(b"old");
        let t1 = t0 + Duration::from_secs(1);
        d.watch(b"new", 2, t1);
        d.record(u64::MAX, Q1);
        d.record(u64::MAX - 1, Q1);
        d.keep(b"new");
        assert_eq!(d.seen(b"old"), Some(HashSet::new()), "emptied: oldest");
        assert_eq!(d.seen(b"new").map(|k| k.len()), Some(2));
        assert!(d.kept_keys() <= KEPT_KEYS_MAX);
        for i in 0..KEPT_MAX {
            let id = format!("k{i}");
            d.watch(id.as_bytes(), 1, t1 + Duration::from_secs(1));
            d.keep(id.as_bytes());
        }
        assert!(d.watching.len() <= KEPT_MAX, "{}", d.watching.len());
        assert_eq!(d.seen(b"old"), None, "the oldest kept watch went");
    }
}
