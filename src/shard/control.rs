//! The control outbox: route updates, route acks and retained-store updates this
//! shard owes the other shards, per destination, until the mesh takes them. Never
//! dropped, coalesced so it stays bounded (see [`ControlOutbox`]).

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;

use super::retained::RetainedBody;
use super::routes::ShardSet;
use super::{RouteUpdate, Shard, ShardId, ShardMsg, ROUTE_BATCH_MAX};

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
/// Retained-store updates wait here too, at most one per topic and destination; why
/// that is bounded and how it orders with live delivery and acks is told with the
/// replica itself, in the `retained` module.
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
    /// Cross-loop durability (`durable_remote.rs`): the highest seq of the
    /// destination's publishes whose copies here are durable, not yet sent (0: none),
    /// and the range of them that never will be (sent first).
    store_ack: [u32; 2],
    store_nack: [Option<(u32, u32)>; 2],
    /// The latest retained probe for the destination (0: none); sent after the
    /// retained updates queued before it.
    store_probe: u32,
    /// Route updates in send order; `None` where a later update of the same route
    /// replaced it.
    routes: VecDeque<Option<RouteUpdate>>,
    /// Position of each route's live entry, counted from the first ever queued.
    index: HashMap<RouteKey, u64>,
    /// Position of `routes[0]`.
    head: u64,
    tombstones: usize,
    /// Retained-store updates by topic: the latest not yet sent (a delete is a
    /// message with an empty payload). See the `retained` module.
    retained: HashMap<Bytes, RetainedBody>,
    /// The topics of `retained`, each once, in the order first queued.
    retained_order: VecDeque<Bytes>,
}
/// Capacity an emptied outbox keeps (a subscribe storm grows it); the tombstones of
/// the retained replica keep the same.
pub(super) const CONTROL_KEPT: usize = 64;

impl ControlOut {
    fn is_empty(&self) -> bool {
        self.ack == 0
            && self.store_ack == [0; 2]
            && self.store_nack == [None; 2]
            && self.store_probe == 0
            && self.routes.is_empty()
            && self.retained_order.is_empty()
    }

    fn push_retained(&mut self, msg: RetainedBody) {
        let topic = Bytes::copy_from_slice(msg.topic());
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
        // A nack before the ack that passes its range: the sender must know the
        // range failed before it releases the replies waiting on it.
        for lane in 0..2u8 {
            let l = usize::from(lane);
            if let Some((from, to)) = self.store_nack[l].take() {
                return Some(ShardMsg::StoreNack { lane, from, to });
            }
            if self.store_ack[l] != 0 {
                let seq = std::mem::take(&mut self.store_ack[l]);
                return Some(ShardMsg::StoreAck { lane, seq });
            }
        }
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
        // Behind every retained update queued before it (a later probe only
        // replaces it: it covers those too).
        if self.store_probe != 0 {
            let seq = std::mem::take(&mut self.store_probe);
            return Some(ShardMsg::StoreProbe { seq });
        }
        if self.ack != 0 {
            let seq = std::mem::take(&mut self.ack);
            return Some(ShardMsg::RouteAck { seq });
        }
        // In queue order, so the batch keeps the order the ack relies on.
        let mut batch = Vec::new();
        while batch.len() < ROUTE_BATCH_MAX {
            let Some(entry) = self.routes.pop_front() else {
                break;
            };
            self.head += 1;
            let Some(update) = entry else {
                self.tombstones -= 1;
                continue;
            };
            let key = (update.filter, update.group);
            self.index.remove(&key);
            let (filter, group) = key;
            if batch.capacity() == 0 {
                batch.reserve_exact(ROUTE_BATCH_MAX.min(self.routes.len() + 1));
            }
            batch.push(RouteUpdate {
                filter,
                group,
                ..update
            });
        }
        if self.routes.is_empty() && self.index.capacity() > CONTROL_KEPT {
            self.index.shrink_to(0);
            self.routes.shrink_to(CONTROL_KEPT);
        }
        (!batch.is_empty()).then_some(ShardMsg::Routes(batch))
    }
}
impl ControlOutbox {
    pub fn new(shard_count: usize) -> ControlOutbox {
        ControlOutbox {
            to: (0..shard_count).map(|_| ControlOut::default()).collect(),
            waiting: ShardSet::default(),
        }
    }

    pub(super) fn push_route(&mut self, to: ShardId, update: RouteUpdate) {
        if let Some(out) = self.to.get_mut(to) {
            out.push_route(update);
            self.waiting.insert(to);
        }
    }

    pub(super) fn push_retained(&mut self, to: ShardId, msg: RetainedBody) {
        if let Some(out) = self.to.get_mut(to) {
            out.push_retained(msg);
            self.waiting.insert(to);
        }
    }

    /// Whether an update of retained `topic` waits for some destination.
    pub(super) fn retained_pending(&self, topic: &[u8]) -> bool {
        self.to.iter().any(|out| out.retained.contains_key(topic))
    }

    /// Cumulative: the later seq covers the earlier (see `durable_remote.rs`).
    pub(super) fn push_store_ack(&mut self, to: ShardId, lane: u8, seq: u32) {
        if let Some(out) = self.to.get_mut(to) {
            let a = &mut out.store_ack[usize::from(lane & 1)];
            if *a == 0 || super::durable_remote::seq_ge(seq, *a) {
                *a = seq;
            }
            self.waiting.insert(to);
        }
    }

    pub(super) fn push_store_probe(&mut self, to: ShardId, seq: u32) {
        if let Some(out) = self.to.get_mut(to) {
            out.store_probe = seq;
            self.waiting.insert(to);
        }
    }

    /// Two nacks not yet sent merge into the range covering both (conservative).
    pub(super) fn push_store_nack(&mut self, to: ShardId, lane: u8, (lo, hi): (u32, u32)) {
        use super::durable_remote::seq_ge;
        if let Some(out) = self.to.get_mut(to) {
            let n = &mut out.store_nack[usize::from(lane & 1)];
            *n = Some(match *n {
                Some((a, b)) => (
                    if seq_ge(lo, a) { a } else { lo },
                    if seq_ge(hi, b) { hi } else { b },
                ),
                None => (lo, hi),
            });
            self.waiting.insert(to);
        }
    }

    pub(super) fn push_ack(&mut self, to: ShardId, seq: u64) {
        if let Some(out) = self.to.get_mut(to) {
            out.ack = out.ack.max(seq);
            self.waiting.insert(to);
        }
    }
}

impl Shard {
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
}
