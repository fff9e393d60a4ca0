//! The retained replica: every shard keeps a full copy of the retained store. This
//! file owns storing and deleting on a replica (with the `max_retained_*` bounds and
//! the memory mark), the last-writer-wins order of updates ([`RetainedStamp`]), the
//! tombstones that keep a deleted topic from coming back. The replay of retained
//! messages after a SUBSCRIBE is streamed by `stream.rs`. The updates travel between shards through
//! the control outbox (`control.rs`).
//!
//! # How the replicas stay identical
//! A retained message (or a delete: empty payload) that the publisher's shard stored
//! is queued in the control outbox for every other shard, at most one entry per topic and destination: a newer update of a
//! topic replaces the unsent older one, as only the topic's latest state matters to
//! a replica. Live delivery is untouched: subscribers get the message through the
//! `Publish` data path (which may drop it when the mesh is full, as any data).
//! - Bound: a pending store is the message the publisher's store holds (the same
//!   `Arc`, so no extra payload bytes; refused messages are not queued) unless it
//!   expired there since, so there are at most `max_retained_messages` of them plus
//!   the expired; a delete is queued only when the publisher held the topic, an update
//!   of it is pending or it holds the topic's tombstone (at most `TOMBSTONES_MAX`), so
//!   deleting unknown topics costs nothing. Like route updates,
//!   the outbox holds at most one entry per topic changed while the mesh was full.
//! - Limits: the publisher's shard alone applies the memory mark and decides; a
//!   replica applies the same `max_retained_*` checks, which cannot refuse what the
//!   publisher stored when the replicas agree: coalescing only skips intermediate
//!   states, and skipping a store of a topic that is then replaced or deleted leaves
//!   the replica with fewer messages and bytes than the publisher had when it checked
//!   (a replaced message no larger than the skipped one needs no check; a larger one
//!   is checked against the same bytes minus the skipped message).
//! - Order with live delivery: the worker performs a turn's actions before it takes
//!   control messages, so the `Publish` of a message enters the mesh (or is dropped)
//!   before its retained update; a subscriber present on the replica's shard gets the
//!   message once, live, whichever way the replica lags.
//! - Order with acks: retained updates leave before the ack. A subscriber's SUBACK is
//!   held until every shard acks its route add, and its retained messages are read
//!   from its own shard's replica afterwards; a message published on another shard
//!   before that shard applied the route add (so not forwarded live) has its retained
//!   update queued before the ack, so it is in the replica when the SUBACK goes out.
//! - Concurrent publishes of one topic on two shards converge by last-writer-wins:
//!   see [`RetainedStamp`]. Coalescing keeps that: of one origin's updates of a topic
//!   it only skips older ones, which the rule would have overridden anyway.

use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use triomphe::ThinArc;

use super::control::CONTROL_KEPT;
use super::retained_index::RetainedEntry;
use super::{Shard, ShardId};
use crate::protocol::{PublishProperties, QoS};
use crate::session::Message;

/// The total order of the retained updates of one topic (last writer wins): when
/// the node read the PUBLISH (`RetainedBody::arrived_at`; every shard reads the same
/// monotonic clock, as `Handoff::connect_at` relies on for CONNECTs), then the shard
/// that read it. Each replica applies an update only if its stamp is not below the
/// stamp of what it holds (or last deleted) for the topic, so every replica ends on
/// the update with the highest stamp whatever order they arrive in. Equal stamps
/// come from one shard, whose updates arrive in the order it made them (FIFO mesh,
/// per-topic coalescing keeps the latest), so equal means newer. The stamp lives in
/// the stored [`RetainedBody`] itself.
pub(crate) type RetainedStamp = (Instant, ShardId);

fn retained_stamp(b: &RetainedBody) -> RetainedStamp {
    (b.arrived_at(), b.origin_shard() as ShardId)
}

/// A retained message (or a delete: empty payload) as the replicas hold it and the
/// mesh carries it: one reference-counted allocation shared by every replica, so
/// another loop costs its index entry only. Compact on purpose (a fleet keeps
/// hundreds of thousands): one allocation holding an 8-byte count, a 24-byte head,
/// the length, then topic and payload (`triomphe::ThinArc`: a thin pointer and no
/// weak count), properties only when there are any, no per-copy fields
/// (`Message`'s is ~250 bytes before its topic and payload). A 64-byte payload on a
/// 21-byte topic fits mimalloc's 128-byte class, where an `Arc` of the fields plus
/// a boxed topic and payload took 64 + 96.
#[derive(Clone)]
pub struct RetainedBody(ThinArc<Head, u8>);

#[derive(Debug)]
struct Head {
    /// `None` when the PUBLISH had none (the subscription identifiers and topic
    /// alias are per copy and never kept).
    properties: Option<Box<PublishProperties>>,
    /// When the node read the PUBLISH (expiry counts from here, and the stamp), as
    /// nanoseconds from [`EPOCH`]: 8 bytes where an `Instant` takes 16.
    arrived_ns: i64,
    origin_shard: u32,
    /// The codec bounds a topic to 65,535 bytes.
    topic_len: u16,
    qos: QoS,
}

/// The reference point of `Head::arrived_ns`: the first arrival time converted, so
/// no clock is read here. Signed offsets, since a message recovered from the log
/// may have arrived before it (±292 years fit).
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn to_ns(t: Instant) -> i64 {
    let e = *EPOCH.get_or_init(|| t);
    match t.checked_duration_since(e) {
        Some(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        None => i64::try_from(e.duration_since(t).as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

fn from_ns(n: i64) -> Instant {
    // The epoch was set by the first `to_ns`, which made every stored `n`: the
    // clock is never read here in fact.
    let e = EPOCH.get().copied().unwrap_or_else(Instant::now);
    let d = Duration::from_nanos(n.unsigned_abs());
    if n >= 0 {
        e + d
    } else {
        e.checked_sub(d).unwrap_or(e)
    }
}

impl std::fmt::Debug for RetainedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetainedBody")
            .field("topic", &String::from_utf8_lossy(self.topic()))
            .field("payload_len", &self.payload().len())
            .field("qos", &self.qos())
            .field("arrived_at", &self.arrived_at())
            .field("origin_shard", &self.origin_shard())
            .finish()
    }
}

impl RetainedBody {
    pub(crate) fn new(m: &Message) -> RetainedBody {
        let properties = (!m.properties.is_empty()).then(|| Box::new(m.properties.clone()));
        let head = Head {
            properties,
            arrived_ns: to_ns(m.arrived_at),
            origin_shard: m.origin_shard as u32,
            topic_len: m.topic.len() as u16,
            qos: m.qos,
        };
        let mut data = Vec::with_capacity(m.topic.len() + m.payload.len());
        data.extend_from_slice(&m.topic);
        data.extend_from_slice(&m.payload);
        RetainedBody(ThinArc::from_header_and_slice(head, &data))
    }

    fn head(&self) -> &Head {
        &self.0.header.header
    }

    pub(crate) fn topic(&self) -> &[u8] {
        let n = usize::from(self.head().topic_len);
        self.0.slice.get(..n).unwrap_or(&[])
    }

    pub(crate) fn payload(&self) -> &[u8] {
        let n = usize::from(self.head().topic_len);
        self.0.slice.get(n..).unwrap_or(&[])
    }

    pub(crate) fn qos(&self) -> QoS {
        self.head().qos
    }

    /// When the node read the PUBLISH: expiry counts from here, and the stamp.
    pub(crate) fn arrived_at(&self) -> Instant {
        from_ns(self.head().arrived_ns)
    }

    pub(crate) fn origin_shard(&self) -> u32 {
        self.head().origin_shard
    }

    /// What it counts in `max_retained_bytes` and the memory mark: as `Message`.
    pub(crate) fn cost_bytes(&self) -> usize {
        self.0.slice.len() + 64
    }

    pub(crate) fn is_expired(&self, now: Instant) -> bool {
        let Some(interval_s) = self
            .head()
            .properties
            .as_ref()
            .and_then(|p| p.message_expiry_interval_s)
        else {
            return false;
        };
        now.saturating_duration_since(self.arrived_at())
            >= Duration::from_secs(u64::from(interval_s))
    }

    /// The message to send a subscriber (retain = 1). The topic is copied; a payload
    /// of at least `tx::SHARE_MIN_BYTES` is not: it is a `Bytes` over the stored body
    /// itself (`SharedBody`), so the copy's outbound segment and inflight entry
    /// reference the one copy the node holds, however many subscribers stream it.
    /// Such a payload is counted in the retained bytes (once per node), not by
    /// `PayloadGauge`; if the body is replaced or deleted while a copy is still
    /// unsent or unacknowledged, the copy keeps it alive under the connection's
    /// `max_outbound_bytes` and the inflight window, as any shared payload.
    pub(crate) fn to_message(&self) -> Message {
        let payload = if crate::tx::shares(self.payload().len()) {
            Bytes::from_owner(SharedBody(self.clone()))
        } else {
            Bytes::copy_from_slice(self.payload())
        };
        Message {
            topic: Bytes::copy_from_slice(self.topic()),
            payload,
            qos: self.qos(),
            retain: true,
            properties: self
                .head()
                .properties
                .as_deref()
                .cloned()
                .unwrap_or_default(),
            arrived_at: self.arrived_at(),
            origin_shard: self.origin_shard() as ShardId,
            origin_session: crate::session::NONE,
            // The topic is copied above, the payload copied or held through the
            // body, and a stored body's properties were owned when it was stored.
            owned: true,
            cluster_key: 0,
        }
    }
}

/// The owner behind a streamed copy's shared payload: the stored body, whose
/// payload part the `Bytes` reads.
struct SharedBody(RetainedBody);

impl AsRef<[u8]> for SharedBody {
    fn as_ref(&self) -> &[u8] {
        self.0.payload()
    }
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

    fn insert(&mut self, topic: &[u8], stamp: RetainedStamp, now: Instant) {
        let topic = Bytes::copy_from_slice(topic);
        self.by_topic.insert(topic.clone(), (stamp, now));
        self.order.push_back((now, topic));
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
pub(super) enum Applied {
    Stored,
    /// Older than what the replica holds or deleted for the topic.
    Superseded,
    /// Over a retained bound or the memory mark (`store_retained`).
    Refused,
}

impl Shard {
    /// A retained-store update from the shard it was published on.
    pub(crate) fn on_remote_retained(&mut self, msg: RetainedBody, now: Instant) {
        // The publisher's shard already applied the memory mark; the bounds cannot
        // refuse it while the replicas agree (see `ControlOutbox`).
        self.apply_retained(&msg, false, now);
    }

    /// A retained PUBLISH (or delete) read on this shard: applied to its replica as
    /// the publisher's shard, under the memory mark.
    pub(super) fn retain_published(&mut self, a: &RetainedBody, now: Instant) -> Applied {
        // A delete of a topic nobody holds needs no replica update (see the module
        // docs, "Bound": this bounds the outbox).
        let known = !a.payload().is_empty()
            || self.retained.get(a.topic()).is_some()
            || self.control.retained_pending(a.topic())
            || self.tombstones.contains(a.topic());
        // Superseded: a newer update from another shard is here already, so it
        // is on its way to every replica too, and each would refuse this one.
        if known {
            self.apply_retained(a, true, now)
        } else {
            Applied::Superseded
        }
    }

    /// Queues a retained update this shard stored for every other replica; called
    /// after the publish's `Publish` actions (module docs, "Order with live
    /// delivery"). Refused here, so refused everywhere: the replicas stay identical.
    pub(super) fn replicate_retained(&mut self, a: RetainedBody) {
        let me = self.id;
        for to in (0..self.shard_count).filter(|s| *s != me) {
            self.control.push_retained(to, a.clone());
        }
    }

    /// Applies a retained update (a delete: empty payload) unless this replica holds
    /// or deleted a newer one for the topic (see [`RetainedStamp`]).
    pub(super) fn apply_retained(
        &mut self,
        msg: &RetainedBody,
        check_mark: bool,
        now: Instant,
    ) -> Applied {
        let stamp = retained_stamp(msg);
        self.tombstones.expire(now);
        let (held, old_bytes) = match self.retained.get(msg.topic()) {
            Some(e) => (Some(retained_stamp(&e.body)), Some(e.body.cost_bytes())),
            None => (self.tombstones.get(msg.topic()), None),
        };
        if held.is_some_and(|h| stamp < h) {
            return Applied::Superseded;
        }
        if msg.payload().is_empty() {
            self.remove_retained(msg.topic());
            self.tombstones.insert(msg.topic(), stamp, now);
            self.log_retained(msg);
            return Applied::Stored;
        }
        if !self.store_retained(msg, old_bytes, check_mark) {
            return Applied::Refused;
        }
        self.tombstones.remove(msg.topic());
        self.log_retained(msg);
        Applied::Stored
    }

    /// A retained message recovered from the log: stored as it was, not recorded
    /// again.
    pub(super) fn load_retained(&mut self, msg: &RetainedBody, now: Instant) {
        if msg.is_expired(now) {
            return;
        }
        let old = self.retained.get(msg.topic()).map(|e| e.body.cost_bytes());
        self.store_retained(msg, old, false);
    }

    /// Stores or replaces a retained message (non-empty payload; `apply_retained`
    /// handles deletes); `old`: the cost of the one it replaces. Returns `false` when
    /// it was not stored: it would add a message beyond `max_retained_messages`, or add
    /// or grow one beyond `max_retained_bytes` or (with `check_mark`) while the shard
    /// is over `memory_high_water_bytes`. Replacing with a message no larger always
    /// succeeds.
    fn store_retained(&mut self, msg: &RetainedBody, old: Option<usize>, check_mark: bool) -> bool {
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
        self.retained_seq += 1;
        let seq = self.retained_seq;
        let entry = RetainedEntry {
            body: msg.clone(),
            seq,
        };
        match self.retained.replace(entry) {
            Some(old) => self.stats.bytes_retained -= old.body.cost_bytes(),
            None => self.stats.retained = self.retained.len(),
        }
        self.stats.bytes_retained += new;
        true
    }

    fn remove_retained(&mut self, topic: &[u8]) {
        if let Some(old) = self.retained.remove(topic) {
            self.stats.bytes_retained -= old.body.cost_bytes();
            self.stats.retained = self.retained.len();
        }
    }

    /// Drops an expired retained message from the replica (expired on every replica
    /// alike); the tombstone keeps it in the order as if still held, so an older
    /// update arriving later stays refused.
    pub(super) fn expire_retained(&mut self, m: &RetainedBody, now: Instant) {
        self.remove_retained(m.topic());
        self.tombstones.insert(m.topic(), retained_stamp(m), now);
    }
}

#[cfg(test)]
mod layout {
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::{Head, RetainedBody};
    use crate::protocol::QoS;
    use crate::session::Message;

    fn msg(topic: &str, payload: &str, arrived_at: Instant) -> Message {
        Message {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
            arrived_at,
            origin_shard: 3,
            origin_session: crate::session::NONE,
            owned: true,
            cluster_key: 0,
        }
    }

    /// The sizes the per-message memory figure (perf/README, issue #23) rests on: a
    /// thin pointer in each replica's entry, a 24-byte head in the one allocation.
    #[test]
    fn a_body_is_a_thin_pointer_to_one_compact_allocation() {
        assert_eq!(std::mem::size_of::<RetainedBody>(), 8);
        assert_eq!(std::mem::size_of::<Head>(), 24);
    }

    /// Arrival times round-trip exactly, before and after the first one converted
    /// (the epoch), so last-writer-wins stamps compare as the `Instant`s did.
    #[test]
    fn arrival_times_round_trip_around_the_epoch() {
        let t = Instant::now();
        let times = [
            t,
            t + Duration::from_nanos(1),
            t + Duration::from_secs(86_400 * 365),
            t.checked_sub(Duration::from_secs(3600)).unwrap_or(t),
            t.checked_sub(Duration::from_nanos(7)).unwrap_or(t),
        ];
        for at in times {
            let b = RetainedBody::new(&msg("fleet/dev000001/state", "v", at));
            assert_eq!(b.arrived_at(), at);
            assert_eq!(b.topic(), b"fleet/dev000001/state");
            assert_eq!(b.payload(), b"v");
            assert_eq!(b.qos(), QoS::AtLeastOnce);
            assert_eq!(b.origin_shard(), 3);
        }
    }
}
