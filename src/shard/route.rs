//! Local subscriptions, the replicated routes table, shared-group picks, the
//! retained replica and the publish fan-out (DESIGN.md "Ownership and routing").

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use smallvec::SmallVec;

use super::{Action, ConnId, RouteUpdate, Shard, ShardId, ShardMsg, SharedTarget, SubIds};
use crate::protocol::{QoS, SubAck, SubscriptionOptions};
use crate::session::{Message, SessionStore, NONE};

/// Control messages (route updates, route acks and retained-store updates) this shard
/// has not yet handed to the mesh, per destination. The worker takes them with
/// [`Shard::poll_control`] only while the mesh to that shard has room, so a control
/// message is never dropped the way QoS 0 data is when the mesh is full: a lost route
/// add would keep a shard from ever forwarding that filter, a lost ack would hold
/// SUBACKs forever, a lost retained update would leave a replica stale for good.
///
/// # Bounded by construction
/// Per destination: one ack (the highest sequence number: an ack covers every lower
/// one) and at most one live route update per (filter, group), because a newer state
/// of a route replaces the older one (only the latest state of our bit in the peer's
/// table matters). Replaced entries leave a tombstone, compacted once they outnumber
/// the live entries, so an outbox never exceeds twice the distinct routes that
/// changed while the mesh to that shard was full (plus a small constant).
///
/// # Ordering (what the SUBACK hold relies on)
/// A peer acks `seq` meaning "every route add of yours up to `seq` is applied" (see
/// `PendingSubAck`). That stays true because:
/// - route updates to one destination leave this outbox in order and the mesh is FIFO
///   per pair, so the peer applies them in the order they were queued;
/// - a replacing update moves to the end and carries the highest sequence number of
///   the two (a remove replacing an add carries the add's number, so the ack still
///   comes and a SUBACK queued behind it is not held forever). Anything queued before
///   it with a higher number is applied first; the replaced add itself is never
///   applied, which is right: its subscriber is gone (only a 1 → 0 change queues a
///   remove) or a newer add with a newer number took its place;
/// - acks travel separately and first: they say something about the *peer's* routes
///   and need no order relative to our own route updates.
///
/// # Retained replica
/// Every shard keeps a full replica of the retained store. A retained message (or a
/// delete: empty payload) that the publisher's shard stored is queued here for every
/// other shard, at most one entry per topic and destination: a newer update of a
/// topic replaces the unsent older one, as only the topic's latest state matters to
/// a replica. Live delivery is untouched: subscribers get the message through the
/// `Publish` data path (which may drop it when the mesh is full, as any data).
/// - Bound: a pending store is the message the publisher's store holds (the same
///   `Arc`, so no extra payload bytes; refused messages are not queued) unless it
///   expired there since, so there are at most `max_retained_messages` of them plus
///   the expired; a delete is queued only when the publisher held the topic, an update
///   of it is pending or it holds the topic's tombstone (at most `TOMBSTONES_MAX`), so
///   deleting unknown topics costs nothing. Like route updates,
///   the outbox holds at most one entry per topic changed while the mesh was full.
/// - Limits: the publisher's shard alone applies the memory mark and decides; a
///   replica applies the same `max_retained_*` checks, which cannot refuse what the
///   publisher stored when the replicas agree: coalescing only skips intermediate
///   states, and skipping a store of a topic that is then replaced or deleted leaves
///   the replica with fewer messages and bytes than the publisher had when it checked
///   (a replaced message no larger than the skipped one needs no check; a larger one
///   is checked against the same bytes minus the skipped message).
/// - Order with live delivery: the worker performs a turn's actions before it takes
///   control messages, so the `Publish` of a message enters the mesh (or is dropped)
///   before its retained update; a subscriber present on the replica's shard gets the
///   message once, live, whichever way the replica lags.
/// - Order with acks: retained updates leave before the ack. A subscriber's SUBACK is
///   held until every shard acks its route add, and its retained messages are read
///   from its own shard's replica afterwards; a message published on another shard
///   before that shard applied the route add (so not forwarded live) has its retained
///   update queued before the ack, so it is in the replica when the SUBACK goes out.
/// - Concurrent publishes of one topic on two shards converge by last-writer-wins:
///   see [`RetainedStamp`]. Coalescing keeps that: of one origin's updates of a topic
///   it only skips older ones, which the rule would have overridden anyway.
///
/// Publishes travel as `Action::Send`, not through this outbox, so a publish may
/// overtake a route update or an ack to the same shard. That breaks nothing: a
/// publish from us to a peer is planned from the *peer's* routes in our table and
/// matched against the peer's local subscriptions, neither of which our own route
/// updates change; and the SUBACK is held until the ack, so a publish that a peer
/// planned before it applied our route add was published before the client held
/// its SUBACK, when MQTT does not promise delivery. Acks overtaking the peer's
/// publishes to us likewise only make a SUBACK go out while publishes planned with
/// the new route are still on their way, which the client may receive after it.
#[derive(Debug, Default)]
pub(crate) struct ControlOutbox {
    /// Indexed by destination shard.
    to: Vec<ControlOut>,
    /// Destinations with something queued, so the worker's check is free when none.
    waiting: ShardSet,
}

type RouteKey = (Bytes, Option<Bytes>);

/// Control messages waiting for one destination.
#[derive(Debug, Default)]
struct ControlOut {
    /// Highest route seq of the destination's adds we applied and not yet acked (0: none).
    ack: u64,
    /// Route updates in send order; `None` where a later update of the same route
    /// replaced it.
    routes: VecDeque<Option<RouteUpdate>>,
    /// Position of each route's live entry, counted from the first ever queued.
    index: HashMap<RouteKey, u64>,
    /// Position of `routes[0]`.
    head: u64,
    tombstones: usize,
    /// Retained-store updates by topic: the latest not yet sent (a delete is a
    /// message with an empty payload). See `ControlOutbox` "Retained replica".
    retained: HashMap<Bytes, Arc<Message>>,
    /// The topics of `retained`, each once, in the order first queued.
    retained_order: VecDeque<Bytes>,
}

/// Capacity an emptied outbox keeps (a subscribe storm grows it).
const CONTROL_KEPT: usize = 64;

/// The total order of the retained updates of one topic (last writer wins): when
/// the node read the PUBLISH (`Message::arrived_at`; every shard reads the same
/// monotonic clock, as `Handoff::connect_at` relies on for CONNECTs), then the shard
/// that read it. Each replica applies an update only if its stamp is not below the
/// stamp of what it holds (or last deleted) for the topic, so every replica ends on
/// the update with the highest stamp whatever order they arrive in. Equal stamps
/// come from one shard, whose updates arrive in the order it made them (FIFO mesh,
/// per-topic coalescing keeps the latest), so equal means newer. The stamp lives in
/// the stored `Message` itself: no extra bytes per retained message.
pub(crate) type RetainedStamp = (Instant, ShardId);

fn retained_stamp(m: &Message) -> RetainedStamp {
    (m.arrived_at, m.origin_shard)
}

/// How long a replica remembers a deleted topic's stamp. A tombstone only has to
/// outlive the updates of that topic stamped before the delete and still on their
/// way here. Such an update was read before the delete was, and the delete was
/// applied here later still, so when its tombstone goes it has been in flight for
/// more than this: far beyond the mesh's delay (microseconds; milliseconds while a
/// ring is full and control messages wait in the outbox, taken every loop turn). A
/// shard stalled longer than this could bring back a topic deleted meanwhile, on
/// its own replica only.
const TOMBSTONE_TTL: Duration = Duration::from_secs(30);

/// At most this many tombstones; beyond it the oldest go early (with the same risk
/// as outliving `TOMBSTONE_TTL`). Only deletes of topics a replica held or had an
/// update pending for make tombstones, so it takes this many distinct retained
/// topics deleted within `TOMBSTONE_TTL` to reach it. Bounds the memory: about 150
/// bytes plus the topic each.
const TOMBSTONES_MAX: usize = 65_536;

/// Stamps of recently deleted retained topics (see [`RetainedStamp`]), so an older
/// update arriving after a delete cannot bring the topic back.
#[derive(Debug, Default)]
pub(crate) struct Tombstones {
    /// Topic → stamp of its delete, and when this replica applied it.
    by_topic: HashMap<Bytes, (RetainedStamp, Instant)>,
    /// (applied at, topic), oldest first. An entry whose topic was stored again or
    /// deleted again since is stale: `by_topic` then holds another time or nothing.
    order: VecDeque<(Instant, Bytes)>,
}

impl Tombstones {
    fn get(&self, topic: &[u8]) -> Option<RetainedStamp> {
        self.by_topic.get(topic).map(|(stamp, _)| *stamp)
    }

    fn contains(&self, topic: &[u8]) -> bool {
        self.by_topic.contains_key(topic)
    }

    fn insert(&mut self, topic: &Bytes, stamp: RetainedStamp, now: Instant) {
        self.by_topic.insert(topic.clone(), (stamp, now));
        self.order.push_back((now, topic.clone()));
        self.expire(now);
    }

    fn remove(&mut self, topic: &[u8]) {
        if !self.by_topic.is_empty() {
            self.by_topic.remove(topic);
        }
    }

    /// Drops the tombstones older than `TOMBSTONE_TTL` and those beyond `TOMBSTONES_MAX`.
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            let old = now.saturating_duration_since(*at) >= TOMBSTONE_TTL;
            if !old && self.order.len() <= TOMBSTONES_MAX {
                break;
            }
            let Some((at, topic)) = self.order.pop_front() else {
                break;
            };
            if self.by_topic.get(&topic).is_some_and(|(_, a)| *a == at) {
                self.by_topic.remove(&topic);
            }
        }
        if self.order.is_empty() && self.order.capacity() > CONTROL_KEPT {
            self.order.shrink_to(CONTROL_KEPT);
            self.by_topic.shrink_to(CONTROL_KEPT);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_topic.len()
    }
}

/// What became of a retained update (see [`Shard::apply_retained`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    Stored,
    /// Older than what the replica holds or deleted for the topic.
    Superseded,
    /// Over a retained bound or the memory mark (`store_retained`).
    Refused,
}

impl ControlOut {
    fn is_empty(&self) -> bool {
        self.ack == 0 && self.routes.is_empty() && self.retained_order.is_empty()
    }

    fn push_retained(&mut self, msg: Arc<Message>) {
        let topic = msg.topic.clone();
        if self.retained.insert(topic.clone(), msg).is_none() {
            self.retained_order.push_back(topic);
        }
    }

    fn push_route(&mut self, mut update: RouteUpdate) {
        let key = (update.filter.clone(), update.group.clone());
        let end = self.head + self.routes.len() as u64;
        if let Some(pos) = self.index.insert(key, end) {
            // Position bookkeeping guarantees the slot exists; be lenient anyway.
            let replaced = usize::try_from(pos - self.head)
                .ok()
                .and_then(|i| self.routes.get_mut(i))
                .and_then(Option::take);
            if let Some(old) = replaced {
                update.seq = update.seq.max(old.seq);
                self.tombstones += 1;
            }
        }
        self.routes.push_back(Some(update));
        if self.tombstones > self.index.len() + 16 {
            self.compact();
        }
    }

    fn compact(&mut self) {
        self.routes.retain(Option::is_some);
        self.tombstones = 0;
        for (i, update) in self.routes.iter().flatten().enumerate() {
            let key = (update.filter.clone(), update.group.clone());
            self.index.insert(key, self.head + i as u64);
        }
    }

    fn pop(&mut self) -> Option<ShardMsg> {
        // Before the ack: see "Retained replica" on `ControlOutbox`.
        while let Some(topic) = self.retained_order.pop_front() {
            let Some(msg) = self.retained.remove(&topic) else {
                continue;
            };
            if self.retained_order.is_empty() && self.retained.capacity() > CONTROL_KEPT {
                self.retained.shrink_to(0);
                self.retained_order.shrink_to(CONTROL_KEPT);
            }
            return Some(ShardMsg::Retain(msg));
        }
        if self.ack != 0 {
            let seq = std::mem::take(&mut self.ack);
            return Some(ShardMsg::RouteAck { seq });
        }
        while let Some(entry) = self.routes.pop_front() {
            self.head += 1;
            let Some(update) = entry else {
                self.tombstones -= 1;
                continue;
            };
            let key = (update.filter, update.group);
            self.index.remove(&key);
            let (filter, group) = key;
            if self.routes.is_empty() && self.index.capacity() > CONTROL_KEPT {
                self.index.shrink_to(0);
                self.routes.shrink_to(CONTROL_KEPT);
            }
            return Some(ShardMsg::Route(Box::new(RouteUpdate {
                filter,
                group,
                ..update
            })));
        }
        None
    }
}

impl ControlOutbox {
    pub fn new(shard_count: usize) -> ControlOutbox {
        ControlOutbox {
            to: (0..shard_count).map(|_| ControlOut::default()).collect(),
            waiting: ShardSet::default(),
        }
    }

    fn push_route(&mut self, to: ShardId, update: RouteUpdate) {
        if let Some(out) = self.to.get_mut(to) {
            out.push_route(update);
            self.waiting.insert(to);
        }
    }

    fn push_retained(&mut self, to: ShardId, msg: Arc<Message>) {
        if let Some(out) = self.to.get_mut(to) {
            out.push_retained(msg);
            self.waiting.insert(to);
        }
    }

    /// Whether an update of retained `topic` waits for some destination.
    fn retained_pending(&self, topic: &[u8]) -> bool {
        self.to.iter().any(|out| out.retained.contains_key(topic))
    }

    fn push_ack(&mut self, to: ShardId, seq: u64) {
        if let Some(out) = self.to.get_mut(to) {
            out.ack = out.ack.max(seq);
            self.waiting.insert(to);
        }
    }
}

/// One local subscriber of a filter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalSub {
    pub session: u32,
    pub options: SubscriptionOptions,
    /// 0 = none.
    pub sub_id: u32,
}

#[derive(Debug)]
pub(crate) struct LocalGroup {
    pub name: Bytes,
    pub members: Vec<LocalSub>,
    /// Round-robin position; a `Cell` because the trie hands out shared references.
    pub next: Cell<u32>,
}

/// What one shard knows about one filter (the inner filter of shared subscriptions):
/// its local subscribers and, as its row of the replicated routes table, which
/// shards have subscribers. One trie holds both, so a filter costs one path of nodes
/// and a publish walks once.
#[derive(Debug, Default)]
pub(crate) struct FilterEntry {
    /// Local non-shared subscribers; one fits inline (a device subscribed to its own
    /// command topic needs no allocation).
    pub plain: SmallVec<[LocalSub; 1]>,
    /// Shards with non-shared subscribers, this one included when `plain` is not empty.
    pub shards: ShardSet,
    /// Shared subscriptions on this filter; rare, so boxed. `None` once empty.
    pub shared: Option<Box<SharedEntry>>,
}

/// The shared subscriptions of one filter.
#[derive(Debug, Default)]
pub(crate) struct SharedEntry {
    /// Groups with members on this shard.
    pub local: Vec<LocalGroup>,
    /// Groups with members on any shard, and which shards.
    pub routes: Vec<RouteGroup>,
}

impl FilterEntry {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.shards.is_empty() && self.shared.is_none()
    }

    /// Drops the shared part once it holds nothing.
    fn tidy_shared(&mut self) {
        if self
            .shared
            .as_ref()
            .is_some_and(|x| x.local.is_empty() && x.routes.is_empty())
        {
            self.shared = None;
        }
    }

    fn local_groups(&self) -> &[LocalGroup] {
        self.shared.as_ref().map_or(&[], |x| &x.local)
    }
}

/// Capacity `pending_subacks` keeps once empty (see `on_route_ack`).
pub(crate) const PENDING_SUBACKS_KEPT: usize = 16;

/// A set of shards as a bitset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ShardSet(SmallVec<[u64; 1]>);

/// A SUBACK held until every shard has applied this shard's route adds up to
/// `route_seq`, so that once the client holds its SUBACK a message published on
/// any shard reaches it (without this, a publish racing the route update to
/// another shard would be lost).
pub(crate) struct PendingSubAck {
    pub conn: ConnId,
    pub generation: u32,
    pub session: u32,
    pub route_seq: u64,
    pub ack: SubAck,
    pub retained: SmallVec<[(Bytes, SubscriptionOptions); 2]>,
    pub sub_id: u32,
}

impl ShardSet {
    pub fn insert(&mut self, s: ShardId) {
        let w = s / 64;
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (s % 64);
    }

    pub fn remove(&mut self, s: ShardId) {
        if let Some(w) = self.0.get_mut(s / 64) {
            *w &= !(1 << (s % 64));
        }
    }

    pub fn contains(&self, s: ShardId) -> bool {
        self.0.get(s / 64).is_some_and(|w| w & (1 << (s % 64)) != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The `n`-th member in ascending order.
    pub fn nth(&self, mut n: usize) -> Option<ShardId> {
        for (i, w) in self.0.iter().enumerate() {
            let c = w.count_ones() as usize;
            if n < c {
                let mut w = *w;
                for _ in 0..n {
                    w &= w - 1;
                }
                return Some(i * 64 + w.trailing_zeros() as usize);
            }
            n -= c;
        }
        None
    }

    pub fn for_each(&self, mut f: impl FnMut(ShardId)) {
        for (i, w) in self.0.iter().enumerate() {
            let mut w = *w;
            while w != 0 {
                f(i * 64 + w.trailing_zeros() as usize);
                w &= w - 1;
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct RouteGroup {
    /// The trie key again: `for_each_match` does not say which key matched, and a
    /// remote shard needs the filter to find the group.
    pub filter: Bytes,
    pub name: Bytes,
    pub shards: ShardSet,
    pub next: Cell<u32>,
}

/// Per-publish plan for each shard (this one included), reused between publishes.
#[derive(Debug)]
pub(crate) struct Targets {
    pub plain: ShardSet,
    pub shared: Vec<Vec<SharedTarget>>,
}

impl Targets {
    pub fn new(shard_count: usize) -> Targets {
        Targets {
            plain: ShardSet::default(),
            shared: (0..shard_count).map(|_| Vec::new()).collect(),
        }
    }
}

/// What a walk of the filter trie does besides collecting local plain subscribers
/// (a const parameter, so each walk's closure carries only its own work).
/// A copy routed here by another shard: local plain subscribers only.
const WALK_PLAIN: u8 = 0;
/// A publish on one of several shards: also plan the copies for the others.
const WALK_PLAN: u8 = 1;
/// A publish on the only shard: also pick one member of each shared group.
const WALK_PICK: u8 = 2;

/// One session's merged copy of a message.
#[derive(Debug)]
pub(crate) struct Match {
    pub session: u32,
    pub qos: QoS,
    pub retain_as_published: bool,
    pub sub_ids: SubIds,
}

impl Shard {
    // ---- subscriptions -------------------------------------------------------

    /// Adds or replaces `session`'s subscription to `inner` (the filter without
    /// `$share/{group}/`). Returns whether it is new.
    pub(crate) fn add_local_sub(
        &mut self,
        session: u32,
        inner: &Bytes,
        group: Option<&Bytes>,
        options: SubscriptionOptions,
        sub_id: u32,
    ) -> bool {
        let sub = LocalSub {
            session,
            options,
            sub_id,
        };
        let entry = self
            .filters
            .entry_or_insert_with(inner, FilterEntry::default);
        let (added, first) = match group {
            None => match entry.plain.iter_mut().find(|s| s.session == session) {
                Some(s) => {
                    *s = sub;
                    (false, false)
                }
                None => {
                    entry.plain.push(sub);
                    (true, entry.plain.len() == 1)
                }
            },
            Some(g) => {
                let groups = &mut entry.shared.get_or_insert_with(Default::default).local;
                let gi = match groups.iter().position(|x| x.name == *g) {
                    Some(i) => i,
                    None => {
                        groups.push(LocalGroup {
                            name: g.clone(),
                            members: Vec::new(),
                            next: Cell::new(0),
                        });
                        groups.len() - 1
                    }
                };
                let members = &mut groups[gi].members;
                match members.iter_mut().find(|s| s.session == session) {
                    Some(s) => {
                        *s = sub;
                        (false, false)
                    }
                    None => {
                        members.push(sub);
                        (true, members.len() == 1)
                    }
                }
            }
        };
        if first {
            self.route_changed(inner, group, true);
        }
        if added {
            self.stats.subscriptions += 1;
        }
        added
    }

    /// Removes `session`'s subscription to `inner`; returns whether it existed.
    pub(crate) fn remove_local_sub(
        &mut self,
        session: u32,
        inner: &Bytes,
        group: Option<&Bytes>,
    ) -> bool {
        let Some(entry) = self.filters.get_mut(inner) else {
            return false;
        };
        let (removed, last) = match group {
            None => match entry.plain.iter().position(|s| s.session == session) {
                Some(i) => {
                    entry.plain.swap_remove(i);
                    (true, entry.plain.is_empty())
                }
                None => (false, false),
            },
            Some(g) => {
                let groups = entry.shared.as_mut().map(|x| &mut x.local);
                match groups.and_then(|gs| Some((gs.iter().position(|x| x.name == *g)?, gs))) {
                    Some((gi, groups)) => {
                        let members = &mut groups[gi].members;
                        match members.iter().position(|s| s.session == session) {
                            Some(i) => {
                                // Keep member order (round robin stays fair).
                                members.remove(i);
                                let last = members.is_empty();
                                if last {
                                    groups.swap_remove(gi);
                                }
                                (true, last)
                            }
                            None => (false, false),
                        }
                    }
                    None => (false, false),
                }
            }
        };
        entry.tidy_shared();
        if last {
            // Takes this shard out of the filter's routes (and prunes the entry).
            self.route_changed(inner, group, false);
        } else if entry.is_empty() {
            self.filters.remove(inner);
        }
        if removed {
            self.stats.subscriptions -= 1;
        }
        removed
    }

    /// Splits a full filter into (inner filter, group) as owned `Bytes` (one copy
    /// of `full`, shared by both).
    pub(crate) fn split_filter(full: &[u8]) -> (Bytes, Option<Bytes>) {
        let full = Bytes::copy_from_slice(full);
        match crate::topic::parse_shared(&full) {
            Ok(Some(s)) => (full.slice_ref(s.filter), Some(full.slice_ref(s.group))),
            _ => (full.clone(), None),
        }
    }

    /// Removes every subscription of `session` (session end).
    pub(crate) fn remove_all_subs(&mut self, session: u32) {
        let subs = match self.sessions.get_mut(session) {
            Some(s) => std::mem::take(&mut s.subs),
            None => return,
        };
        for s in &subs {
            let (inner, group) = Self::split_filter(&s.filter);
            self.remove_local_sub(session, &inner, group.as_ref());
        }
    }

    // ---- routes --------------------------------------------------------------

    /// Our local count for `filter` (or `group` on it) went 0 → 1 or 1 → 0: update
    /// our own row of the routes table and tell every other shard.
    fn route_changed(&mut self, filter: &Bytes, group: Option<&Bytes>, add: bool) {
        let me = self.id;
        self.apply_route(me, filter, group, add);
        if self.shard_count == 1 {
            return;
        }
        // Only adds need an ack: a publish that reaches a shard after the last local
        // subscriber left is simply dropped there.
        let seq = if add {
            self.route_seq += 1;
            self.route_seq
        } else {
            0
        };
        for to in (0..self.shard_count).filter(|s| *s != me) {
            let update = RouteUpdate {
                filter: filter.clone(),
                group: group.cloned(),
                add,
                seq,
            };
            self.control.push_route(to, update);
        }
    }

    /// Whether some control message waits for [`Shard::poll_control`].
    pub fn control_waiting(&self) -> bool {
        !self.control.waiting.is_empty()
    }

    /// The next control message (retained update, route ack or route update) for
    /// shard `to`. Call only when the mesh will take it (the worker checks it has
    /// room): what is taken here must not be dropped (see `ControlOutbox`).
    pub fn poll_control(&mut self, to: ShardId) -> Option<ShardMsg> {
        let out = self.control.to.get_mut(to)?;
        let msg = out.pop();
        if out.is_empty() {
            self.control.waiting.remove(to);
        }
        msg
    }

    pub(crate) fn on_route(
        &mut self,
        from: ShardId,
        filter: Bytes,
        group: Option<Bytes>,
        add: bool,
        seq: u64,
    ) {
        if from >= self.shard_count {
            return;
        }
        self.apply_route(from, &filter, group.as_ref(), add);
        if seq != 0 {
            self.control.push_ack(from, seq);
        }
    }

    /// Every other shard has applied all route adds we sent so far.
    pub(crate) fn routes_settled(&self) -> bool {
        let me = self.id;
        self.route_acked
            .iter()
            .enumerate()
            .all(|(shard, acked)| shard == me || *acked >= self.route_seq)
    }

    pub(crate) fn on_route_ack(&mut self, from: ShardId, seq: u64, now: Instant) {
        let Some(acked) = self.route_acked.get_mut(from) else {
            return;
        };
        *acked = (*acked).max(seq);
        while let Some(p) = self.pending_subacks.front() {
            let me = self.id;
            let ready = self
                .route_acked
                .iter()
                .enumerate()
                .all(|(shard, acked)| shard == me || *acked >= p.route_seq);
            if !ready {
                break;
            }
            let Some(p) = self.pending_subacks.pop_front() else {
                break;
            };
            let alive = self
                .conns
                .get(p.conn)
                .is_some_and(|c| c.generation == p.generation && c.session == p.session);
            if alive {
                self.finish_subscribe(p.conn, p.session, p.ack, p.retained, p.sub_id, now);
            }
        }
        // A subscribe storm grows the queue to thousands of entries (~150 B each);
        // once it drains, keep only a small one.
        if self.pending_subacks.is_empty()
            && self.pending_subacks.capacity() > PENDING_SUBACKS_KEPT * 4
        {
            self.pending_subacks.shrink_to(PENDING_SUBACKS_KEPT);
        }
    }

    fn apply_route(&mut self, shard: ShardId, filter: &Bytes, group: Option<&Bytes>, add: bool) {
        if add {
            let e = self
                .filters
                .entry_or_insert_with(filter, FilterEntry::default);
            match group {
                None => e.shards.insert(shard),
                Some(g) => {
                    let routes = &mut e.shared.get_or_insert_with(Default::default).routes;
                    match routes.iter_mut().find(|x| x.name == *g) {
                        Some(x) => x.shards.insert(shard),
                        None => {
                            let mut shards = ShardSet::default();
                            shards.insert(shard);
                            routes.push(RouteGroup {
                                filter: filter.clone(),
                                name: g.clone(),
                                shards,
                                next: Cell::new(0),
                            });
                        }
                    }
                }
            }
            return;
        }
        let Some(e) = self.filters.get_mut(filter) else {
            return;
        };
        match group {
            None => e.shards.remove(shard),
            Some(g) => {
                if let Some(routes) = e.shared.as_mut().map(|x| &mut x.routes) {
                    if let Some(i) = routes.iter().position(|x| x.name == *g) {
                        routes[i].shards.remove(shard);
                        if routes[i].shards.is_empty() {
                            routes.swap_remove(i);
                        }
                    }
                }
                e.tidy_shared();
            }
        }
        if e.is_empty() {
            self.filters.remove(filter);
        }
    }

    // ---- publish -------------------------------------------------------------

    /// A message published by a client (or a will) of this shard: retained store,
    /// local delivery, and one `ShardMsg::Publish` per remote shard that needs it.
    ///
    /// Returns `true` when `msg` is retained but was not stored (memory mark or a
    /// retained bound): it is still delivered, and not stored on any replica.
    pub(crate) fn publish(&mut self, msg: Message, now: Instant) -> bool {
        self.stats.messages_in += 1;
        // Only stored/forwarded messages need the Arc; a purely local QoS 0 fan-out
        // does without (see `deliver`).
        let mut arc: Option<Arc<Message>> = None;
        // Borrowed from here on: rebinding the owned `msg` would copy the whole
        // struct (a `memcpy` call) on every publish.
        let stored;
        let mut retain_refused = false;
        let mut replicate = None;
        let msg: &Message = if msg.retain {
            let a = Arc::new(msg.compacted());
            arc = Some(a.clone());
            // A delete of a topic nobody holds needs no replica update (see
            // `ControlOutbox`, "Retained replica": this bounds the outbox).
            let known = !a.payload.is_empty()
                || self.retained.get(&a.topic).is_some()
                || self.control.retained_pending(&a.topic)
                || self.tombstones.contains(&a.topic);
            // Superseded: a newer update from another shard is here already, so it
            // is on its way to every replica too, and each would refuse this one.
            let applied = if known {
                self.apply_retained(&a, true, now)
            } else {
                Applied::Superseded
            };
            retain_refused = applied == Applied::Refused;
            if applied == Applied::Stored && self.shard_count > 1 {
                replicate = Some(a.clone());
            }
            stored = (*a).clone();
            &stored
        } else {
            &msg
        };

        // One walk finds the shards to forward to, the shared groups each serves
        // and this shard's own plain subscribers.
        if self.shard_count == 1 {
            // This shard serves every group: pick members during the walk.
            self.deliver_local::<WALK_PICK>(msg, &mut arc, now);
        } else {
            self.deliver_local::<WALK_PLAN>(msg, &mut arc, now);
        }
        // Queued after the `Publish` actions: see `ControlOutbox`, "Retained replica".
        // Refused here, so refused everywhere: the replicas stay identical.
        if let Some(a) = replicate {
            let me = self.id;
            for to in (0..self.shard_count).filter(|s| *s != me) {
                self.control.push_retained(to, a.clone());
            }
        }
        retain_refused
    }

    /// A retained-store update from the shard it was published on.
    pub(crate) fn on_remote_retained(&mut self, msg: Arc<Message>, now: Instant) {
        // The publisher's shard already applied the memory mark; the bounds cannot
        // refuse it while the replicas agree (see `ControlOutbox`).
        self.apply_retained(&msg, false, now);
    }

    /// A publish routed here by another shard.
    pub(crate) fn on_remote_publish(
        &mut self,
        msg: Arc<Message>,
        plain: bool,
        shared: Vec<SharedTarget>,
        now: Instant,
    ) {
        let mut arc = Some(msg.clone());
        if plain {
            self.deliver_local::<WALK_PLAIN>(&msg, &mut arc, now);
        }
        for t in &shared {
            self.deliver_shared(&msg, &mut arc, t, now);
        }
    }

    /// Delivers to every local non-shared subscription matching `msg`, and, as
    /// `WALK` says, plans the copies for other shards or picks the local shared
    /// group members, all from one walk of the filter trie.
    ///
    /// Overlapping subscriptions of one session (e.g. `a/+` and `a/#`) yield ONE
    /// copy at the highest granted QoS, carrying every matching subscription
    /// identifier, retained-as-published if any of them asks for it (MQTT 5 3.3.4
    /// allows either one copy or one per subscription; one copy is cheaper).
    fn deliver_local<const WALK: u8>(
        &mut self,
        msg: &Message,
        arc: &mut Option<Arc<Message>>,
        now: Instant,
    ) {
        self.match_generation = self.match_generation.wrapping_add(1);
        if self.match_generation == 0 {
            self.match_generation = 1;
        }
        let generation = self.match_generation;
        let origin = if msg.origin_shard == self.id {
            msg.origin_session
        } else {
            NONE
        };
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        let mut picks: SmallVec<[LocalSub; 2]> = SmallVec::new();
        let sessions = &mut self.sessions;
        let targets = &mut self.targets;
        if WALK == WALK_PLAN {
            targets.plain = ShardSet::default();
        }
        self.filters.for_each_match(&msg.topic, |e| {
            if WALK == WALK_PLAN {
                e.shards.for_each(|s| targets.plain.insert(s));
                for g in e.shared.iter().flat_map(|x| &x.routes) {
                    let n = g.shards.len();
                    if n == 0 {
                        continue;
                    }
                    let pick = g.next.get() as usize % n;
                    g.next.set(g.next.get().wrapping_add(1));
                    if let Some(s) = g.shards.nth(pick) {
                        targets.shared[s].push(SharedTarget {
                            filter: g.filter.clone(),
                            group: g.name.clone(),
                        });
                    }
                }
            }
            for s in &e.plain {
                if s.options.no_local && s.session == origin {
                    continue;
                }
                let Some(sess) = sessions.get_mut(s.session) else {
                    continue;
                };
                if sess.match_gen == generation {
                    if let Some(m) = matches.get_mut(sess.match_idx as usize) {
                        m.qos = m.qos.max(s.options.qos);
                        m.retain_as_published |= s.options.retain_as_published;
                        if s.sub_id != 0 {
                            m.sub_ids.push(s.sub_id);
                        }
                    }
                } else {
                    sess.match_gen = generation;
                    sess.match_idx = matches.len() as u32;
                    let mut sub_ids = SubIds::new();
                    if s.sub_id != 0 {
                        sub_ids.push(s.sub_id);
                    }
                    matches.push(Match {
                        session: s.session,
                        qos: s.options.qos,
                        retain_as_published: s.options.retain_as_published,
                        sub_ids,
                    });
                }
            }
            if WALK == WALK_PICK {
                for g in e.local_groups() {
                    // An empty group is removed with its last member; nothing to pick.
                    if let Some(sub) = pick_member(g, sessions) {
                        picks.push(sub);
                    }
                }
            }
        });
        let local_shared = if WALK == WALK_PLAN {
            self.send_to_shards(msg, arc);
            std::mem::take(&mut self.targets.shared[self.id])
        } else {
            Vec::new()
        };
        self.cache.clear();
        for m in &mut matches {
            if m.sub_ids.len() > 1 {
                m.sub_ids.sort_unstable();
            }
            let qos = msg.qos.min(m.qos);
            let retain = msg.retain && m.retain_as_published;
            self.deliver(m.session, msg, arc, qos, retain, &m.sub_ids, now, true);
        }
        self.matches = matches;
        for sub in picks {
            self.deliver_member(msg, arc, sub, now);
        }
        if WALK == WALK_PLAN {
            for t in &local_shared {
                self.deliver_shared(msg, arc, t, now);
            }
            let mut local_shared = local_shared;
            local_shared.clear();
            self.targets.shared[self.id] = local_shared;
        }
    }

    /// One `ShardMsg::Publish` per other shard that `targets` (just planned) needs.
    fn send_to_shards(&mut self, msg: &Message, arc: &mut Option<Arc<Message>>) {
        let me = self.id;
        for to in 0..self.shard_count {
            if to == me {
                continue;
            }
            let plain = self.targets.plain.contains(to);
            let shared = std::mem::take(&mut self.targets.shared[to]);
            if !plain && shared.is_empty() {
                continue;
            }
            let a = arc.get_or_insert_with(|| Arc::new(msg.clone())).clone();
            self.actions.push_back(Action::Send {
                to,
                msg: ShardMsg::Publish {
                    msg: a,
                    plain,
                    shared,
                },
            });
        }
    }

    /// Delivers to one member of a local shared group (online members first).
    fn deliver_shared(
        &mut self,
        msg: &Message,
        arc: &mut Option<Arc<Message>>,
        t: &SharedTarget,
        now: Instant,
    ) {
        let Some(e) = self.filters.get(&t.filter) else {
            self.stats.dropped_no_subscriber += 1;
            return;
        };
        let Some(g) = e.local_groups().iter().find(|g| g.name == t.group) else {
            self.stats.dropped_no_subscriber += 1;
            return;
        };
        let Some(sub) = pick_member(g, &self.sessions) else {
            self.stats.dropped_no_subscriber += 1;
            return;
        };
        self.deliver_member(msg, arc, sub, now);
    }

    /// Delivers to the picked member of a shared group.
    fn deliver_member(
        &mut self,
        msg: &Message,
        arc: &mut Option<Arc<Message>>,
        sub: LocalSub,
        now: Instant,
    ) {
        let mut sub_ids = SubIds::new();
        if sub.sub_id != 0 {
            sub_ids.push(sub.sub_id);
        }
        let qos = msg.qos.min(sub.options.qos);
        let retain = msg.retain && sub.options.retain_as_published;
        self.cache.clear();
        self.deliver(sub.session, msg, arc, qos, retain, &sub_ids, now, false);
    }

    // ---- retained ------------------------------------------------------------

    /// Applies a retained update (a delete: empty payload) unless this replica holds
    /// or deleted a newer one for the topic (see [`RetainedStamp`]).
    fn apply_retained(&mut self, msg: &Arc<Message>, check_mark: bool, now: Instant) -> Applied {
        let stamp = retained_stamp(msg);
        self.tombstones.expire(now);
        let (held, old_bytes) = match self.retained.get(&msg.topic) {
            Some(m) => (Some(retained_stamp(m)), Some(m.cost_bytes())),
            None => (self.tombstones.get(&msg.topic), None),
        };
        if held.is_some_and(|h| stamp < h) {
            return Applied::Superseded;
        }
        if msg.payload.is_empty() {
            self.remove_retained(&msg.topic);
            self.tombstones.insert(&msg.topic, stamp, now);
            return Applied::Stored;
        }
        if !self.store_retained(msg, old_bytes, check_mark) {
            return Applied::Refused;
        }
        self.tombstones.remove(&msg.topic);
        Applied::Stored
    }

    /// Stores or replaces a retained message (non-empty payload; `apply_retained`
    /// handles deletes); `old`: the cost of the one it replaces. Returns `false` when
    /// it was not stored: it would add a message beyond `max_retained_messages`, or add
    /// or grow one beyond `max_retained_bytes` or (with `check_mark`) while the shard
    /// is over `memory_high_water_bytes`. Replacing with a message no larger always
    /// succeeds.
    fn store_retained(&mut self, msg: &Arc<Message>, old: Option<usize>, check_mark: bool) -> bool {
        let new = msg.cost_bytes();
        let grows = old.map_or(true, |old| new > old);
        if grows {
            let s = &mut self.stats;
            if old.is_none() && self.retained.len() >= self.config.max_retained_messages {
                s.dropped_retained_full += 1;
                return false;
            }
            if s.bytes_retained - old.unwrap_or(0) + new > self.config.max_retained_bytes {
                s.dropped_retained_bytes += 1;
                return false;
            }
            if check_mark && self.over_memory_mark() {
                self.stats.dropped_retained_memory += 1;
                return false;
            }
        }
        if let Some(v) = self.retained.get_mut(&msg.topic) {
            self.stats.bytes_retained -= v.cost_bytes();
            self.stats.bytes_retained += new;
            *v = msg.clone();
            return true;
        }
        self.retained.insert(&msg.topic, msg.clone());
        self.stats.bytes_retained += new;
        self.stats.retained = self.retained.len();
        true
    }

    fn remove_retained(&mut self, topic: &[u8]) {
        if let Some(old) = self.retained.remove(topic) {
            self.stats.bytes_retained -= old.cost_bytes();
            self.stats.retained = self.retained.len();
        }
    }

    /// Sends the retained messages matching `filter` to `session` after a SUBSCRIBE.
    /// Such copies always carry retain = 1; expired ones are dropped from the replica.
    pub(crate) fn send_retained(
        &mut self,
        session: u32,
        filter: &[u8],
        options: SubscriptionOptions,
        sub_id: u32,
        now: Instant,
    ) {
        let mut found: Vec<Arc<Message>> = Vec::new();
        self.retained
            .for_each_matching_filter(filter, |_, m| found.push(m.clone()));
        let mut sub_ids = SubIds::new();
        if sub_id != 0 {
            sub_ids.push(sub_id);
        }
        for m in found {
            if m.is_expired(now) {
                // Expired on every replica alike; the tombstone keeps it in the order
                // as if still held, so an older update arriving later stays refused.
                self.remove_retained(&m.topic);
                self.tombstones.insert(&m.topic, retained_stamp(&m), now);
                continue;
            }
            let qos = m.qos.min(options.qos);
            let mut arc = Some(m.clone());
            self.deliver(session, &m, &mut arc, qos, true, &sub_ids, now, false);
        }
    }
}

/// The next member of a local shared group in round robin, online members first;
/// `None` for an empty group.
fn pick_member(g: &LocalGroup, sessions: &SessionStore) -> Option<LocalSub> {
    let n = g.members.len();
    if n == 0 {
        return None;
    }
    let start = g.next.get() as usize % n;
    let mut pick = start;
    for k in 0..n {
        let i = (start + k) % n;
        if sessions
            .get(g.members[i].session)
            .is_some_and(|s| s.is_online())
        {
            pick = i;
            break;
        }
    }
    g.next.set(((pick + 1) % n) as u32);
    g.members.get(pick).copied()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use bytes::Bytes;
    use smallvec::smallvec;

    use super::ShardSet;
    use crate::config::Config;
    use crate::protocol::{Packet, Properties, QoS, UnsubAck, Unsubscribe};
    use crate::shard::harness::*;

    const FILTERS: [&str; 10] = [
        "a/b",
        "a/+",
        "a/#",
        "+/b",
        "#",
        "b/c",
        "$share/g/a/+",
        "$share/h/a/b",
        "$share/g/#",
        "$share/g/a/b",
    ];
    const TOPICS: [&str; 5] = ["a/b", "a/c", "b/c", "b/b", "x"];

    /// The filter trie (local subscribers and routes in one) against a model of
    /// who subscribed to what, on 1, 2 and 3 shards, through random subscribes,
    /// unsubscribes, disconnects and publishes:
    /// - every shard holds exactly one entry per inner filter with a subscriber
    ///   anywhere (its routes row) and prunes to the bare root when none is left;
    /// - each publish reaches every plainly matching client exactly once, and each
    ///   matching shared group (group, inner filter) exactly once, at one member.
    #[test]
    fn filter_trie_against_a_model() {
        for shards in 1..=3 {
            let mut cl = Cluster::new(shards, Config::default());
            let ids: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
            let mut cids: Vec<Cid> = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                let opts = ConnectOpts {
                    accept_on: i % shards,
                    ..ConnectOpts::default()
                };
                cids.push(cl.connect_ok(V311, id, opts, false));
            }
            let mut subs: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); ids.len()];
            let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ shards as u64;
            let mut published = 0u32;
            for _ in 0..600 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let c = (x >> 8) as usize % ids.len();
                let f = FILTERS[(x >> 16) as usize % FILTERS.len()];
                match x % 10 {
                    0..=3 => {
                        cl.subscribe(cids[c], f, QoS::AtMostOnce);
                        subs[c].insert(f);
                    }
                    4 | 5 => {
                        let u = Unsubscribe {
                            packet_id: 2,
                            filters: smallvec![Bytes::from_static(f.as_bytes())],
                            properties: Properties::default(),
                        };
                        cl.send(cids[c], Packet::Unsubscribe(u));
                        subs[c].remove(f);
                        // 3.1.1 UNSUBACK carries no reason codes.
                        let ack = UnsubAck {
                            packet_id: 2,
                            codes: smallvec![],
                            properties: Properties::default(),
                        };
                        cl.expect(cids[c], Packet::UnsubAck(ack));
                    }
                    6 => {
                        // A clean session ends with its connection.
                        cl.drop_connection(cids[c]);
                        subs[c].clear();
                        let opts = ConnectOpts {
                            accept_on: (x >> 24) as usize % shards,
                            ..ConnectOpts::default()
                        };
                        cids[c] = cl.connect_ok(V311, &ids[c], opts, false);
                    }
                    _ => {
                        let topic = TOPICS[(x >> 32) as usize % TOPICS.len()];
                        published += 1;
                        let payload = published.to_string();
                        cl.publish(cids[c], topic, &payload, QoS::AtMostOnce, false, 0);
                        check_delivery(&mut cl, &cids, &subs, topic, &payload);
                    }
                }
                check_entries(&cl, &subs);
            }
            for c in 0..ids.len() {
                cl.drop_connection(cids[c]);
                subs[c].clear();
            }
            check_entries(&cl, &subs);
            for sh in &cl.shards {
                assert_eq!(sh.filters.node_count(), 1, "pruned to the root");
                assert_eq!(sh.stats().subscriptions, 0);
            }
        }
    }

    fn inner(filter: &str) -> (&str, Option<&str>) {
        match filter.strip_prefix("$share/") {
            Some(rest) => {
                let (group, f) = rest.split_once('/').expect("group/filter");
                (f, Some(group))
            }
            None => (filter, None),
        }
    }

    #[track_caller]
    fn check_entries(cl: &Cluster, subs: &[BTreeSet<&str>]) {
        let inners: BTreeSet<&str> = subs.iter().flatten().map(|f| inner(f).0).collect();
        for (i, sh) in cl.shards.iter().enumerate() {
            assert_eq!(sh.filters.len(), inners.len(), "shard {i}: {inners:?}");
            for f in &inners {
                assert!(sh.filters.get(f.as_bytes()).is_some(), "shard {i}: {f}");
            }
        }
        let total: usize = subs.iter().map(|s| s.len()).sum();
        let on_shards: usize = cl.shards.iter().map(|s| s.stats().subscriptions).sum();
        assert_eq!(on_shards, total);
    }

    #[track_caller]
    fn check_delivery(
        cl: &mut Cluster,
        cids: &[Cid],
        subs: &[BTreeSet<&str>],
        topic: &str,
        payload: &str,
    ) {
        // (group, inner filter) → members.
        let mut groups: BTreeMap<(&str, &str), BTreeSet<usize>> = BTreeMap::new();
        for (c, fs) in subs.iter().enumerate() {
            for f in fs {
                if let (inner, Some(g)) = inner(f) {
                    if crate::topic::matches(inner.as_bytes(), topic.as_bytes()) {
                        groups.entry((g, inner)).or_default().insert(c);
                    }
                }
            }
        }
        let mut group_copies = 0;
        for (c, &cid) in cids.iter().enumerate() {
            let mut got = 0;
            while let Some(p) = cl.next(cid) {
                assert_eq!(
                    p,
                    pubp(topic, payload, QoS::AtMostOnce, false, 0),
                    "client {c}"
                );
                got += 1;
            }
            let plain = subs[c].iter().any(|f| {
                !f.starts_with("$share/") && crate::topic::matches(f.as_bytes(), topic.as_bytes())
            });
            let member_of = groups.values().filter(|m| m.contains(&c)).count();
            assert!(
                got >= usize::from(plain),
                "client {c}: plain copy of {topic}"
            );
            let shared = got - usize::from(plain);
            assert!(
                shared <= member_of,
                "client {c}: {shared} group copies of {topic}"
            );
            group_copies += shared;
        }
        assert_eq!(
            group_copies,
            groups.len(),
            "one copy per matching group: {groups:?}"
        );
    }

    /// One shard serves plain and shared subscribers from a single walk of `local`:
    /// each group gets every message once, an offline member is skipped, and a
    /// session in a group and subscribed plainly gets both copies.
    #[test]
    fn one_shard_groups_from_the_local_walk() {
        const Q0: QoS = QoS::AtMostOnce;
        const Q1: QoS = QoS::AtLeastOnce;
        let mut cl = Cluster::new(1, Config::default());
        let kept = ConnectOpts {
            clean: false,
            ..ConnectOpts::default()
        };
        let a = cl.connect_ok(V311, "a", ConnectOpts::default(), false);
        let gone = cl.connect_ok(V311, "gone", kept, false);
        let h = cl.connect_ok(V311, "h", ConnectOpts::default(), false);
        cl.subscribe(a, "$share/g/t/+", Q0);
        cl.subscribe(gone, "$share/g/t/+", Q1);
        cl.subscribe(h, "$share/h/t/#", Q0);
        cl.subscribe(h, "t/x", Q0);
        cl.drop_connection(gone);
        let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
        for i in 0..3 {
            cl.publish(p, "t/x", &i.to_string(), Q0, false, 0);
        }
        for i in 0..3 {
            cl.expect(a, pubp("t/x", &i.to_string(), Q0, false, 0));
        }
        cl.expect_nothing(a);
        // Plain copy first, then the group copy, per message.
        for i in 0..3 {
            cl.expect(h, pubp("t/x", &i.to_string(), Q0, false, 0));
            cl.expect(h, pubp("t/x", &i.to_string(), Q0, false, 0));
        }
        cl.expect_nothing(h);
        cl.publish(p, "u/x", "no", Q0, false, 0);
        cl.expect_nothing(a);
        cl.expect_nothing(h);
        let st = cl.shards[0].stats();
        assert_eq!((st.messages_in, st.messages_out), (4, 9));
    }

    #[test]
    fn shard_set_ops() {
        let mut s = ShardSet::default();
        assert!(s.is_empty());
        s.insert(3);
        s.insert(70);
        s.insert(0);
        assert_eq!(s.len(), 3);
        assert_eq!(
            (s.nth(0), s.nth(1), s.nth(2), s.nth(3)),
            (Some(0), Some(3), Some(70), None)
        );
        let mut v = Vec::new();
        s.for_each(|x| v.push(x));
        assert_eq!(v, vec![0, 3, 70]);
        s.remove(3);
        assert!(!s.contains(3) && s.contains(70));
        s.remove(0);
        s.remove(70);
        assert!(s.is_empty());
    }
}
