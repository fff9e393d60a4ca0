//! One core's broker logic, sans-IO: the connections of this shard, the sessions it
//! owns (`hash(client_id) % shards`), local subscriptions, the replicated routes
//! table and retained store. Input comes through `on_*` calls with the current time;
//! output is pulled with `poll_action` and `take_tx`. It never does IO or reads a clock.
//!
//! `Shard` (this file) holds every part's state; the parts are `impl Shard` blocks
//! in their own files (connection life in `lifecycle.rs`, the IO side's outbox in
//! `outbox.rs`, CONNECT and session hand-off in `connect.rs`, routing in
//! `subs.rs`/`routes.rs`/`fanout.rs`, ...). The state stays in one struct because
//! a fan-out borrows several parts at once (trie, sessions, connections, stats,
//! actions) and each part updates the shared counters and action queue.

pub(crate) mod auth;
mod cluster;
mod cluster_dedup;
mod cluster_session;
mod conn;
mod connect;
mod control;
mod deliver;
mod durable;
mod durable_cluster;
mod durable_load;
mod durable_remote;
mod durable_snapshot;
mod events;
mod fanout;
mod inbound;
mod lifecycle;
mod limits;
mod messages;
mod outbox;
mod retained;
mod retained_index;
mod routes;
mod shared;
mod stats;
mod stream;
mod subs;
mod timer;

#[cfg(any(test, feature = "testkit"))]
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod tests;

// The drivers' old paths, kept so tests (here, in `worker`, and on branches in
// flight) import `crate::shard::harness` and `ringmq::testkit` as before.
#[cfg(test)]
pub(crate) use testing::harness;
#[cfg(any(test, feature = "testkit"))]
pub use testing::testkit;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use slab::Slab;
use smallvec::SmallVec;

use crate::config::Config;
use crate::session::{SessionError, SessionStore};

pub use cluster::{AckToken, ClusterIn, ClusterInterest, ClusterOut, Forward, SessionSave};
pub use cluster_session::{
    handover_records, will_message, will_record, Handed, HandoverConfirm, SessionClaim,
    SessionHandover,
};
use conn::Conn;
use control::ControlOutbox;
use deliver::EncodeCache;
pub use durable_load::PeerRoutes;
use fanout::Targets;
use limits::Limits;
pub use limits::NodeCounters;
pub use messages::{Action, Handoff, RouteUpdate, ShardMsg, SharedTarget, ROUTE_BATCH_MAX};
pub use outbox::{control_allowance, CONTROL_ALLOWANCE_BYTES};
pub use retained::RetainedBody;
pub use stats::{ShardStats, SnStats};
use timer::Timers;

pub type ShardId = usize;
/// A connection's index on its shard; valid from `accept`/`adopt` until `release`.
pub type ConnId = usize;

/// Mixed with the process's placement seed: the seed alone would leave three of
/// ahash's four keys zero.
const OWNER_SEEDS: [u64; 4] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
];

/// The keyed hash that places client sessions on shards. Keyed per process
/// (`Config::placement_seed`, random at start-up unless set): with a key fixed in the
/// source anyone could compute client ids that all land on one loop. Every shard of
/// a process must use the same key, so it is chosen once before the shards start.
/// Once sessions are durable the key must be persisted with the data directory, or a
/// restart would look for each stored session on the wrong shard.
#[derive(Clone, Debug)]
pub struct Placement(ahash::RandomState);

impl Placement {
    pub fn new(seed: u64) -> Placement {
        let k = |i: usize| OWNER_SEEDS[i] ^ seed.rotate_left(16 * i as u32);
        Placement(ahash::RandomState::with_seeds(k(0), k(1), k(2), k(3)))
    }

    /// The shard that owns the session of `client_id`.
    pub fn owner(&self, client_id: &[u8], shard_count: usize) -> ShardId {
        (self.0.hash_one(client_id) % shard_count.max(1) as u64) as usize
    }
}

/// The shard that owns the session of `client_id` in a process whose placement seed
/// is `seed` (see [`Placement`]).
pub fn owner_shard(seed: u64, client_id: &[u8], shard_count: usize) -> ShardId {
    Placement::new(seed).owner(client_id, shard_count)
}

/// A placement seed nobody can predict, for a process whose config sets none: from
/// std's `RandomState`, whose keys come from the OS random source.
pub fn random_placement_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)
}

/// Connection and session tables are sized up front for the shard's share of
/// `max_connections`, capped here: address space only until entries are used, while
/// growing by doubling would copy the table at every power of two and leave the old
/// block resident with the allocator (at 10k connections that was ~35% of the
/// broker's memory). Beyond the cap they grow as usual.
const PRESIZE_MAX: usize = 1 << 20;

pub struct Shard {
    id: ShardId,
    shard_count: usize,
    config: Arc<Config>,
    /// Where client sessions live; the same key on every shard of the process.
    placement: Placement,
    /// Presized (see `PRESIZE_MAX`).
    conns: Slab<Conn>,
    sessions: SessionStore,
    /// Filter (inner filter for shared subscriptions) → local subscribers and the
    /// shards with subscribers (this one included): local subscriptions and the
    /// replicated routes table in one trie.
    filters: subs::FilterTrie,
    /// Topic name → retained message; a replica kept identical on every shard,
    /// indexed without copying topics (`retained_index.rs`).
    retained: retained_index::RetainedIndex,
    /// Stores applied to the replica so far (the `seq` of each `RetainedEntry`).
    retained_seq: u64,
    /// Retained messages being streamed to new subscriptions (`stream.rs`).
    streams: stream::Streams,
    /// Stamps of recently deleted retained topics (see `retained::RetainedStamp`).
    tombstones: retained::Tombstones,
    timers: Timers,
    actions: VecDeque<Action>,
    stats: ShardStats,
    conn_generation: u32,
    match_generation: u32,
    /// Per-publish scratch, kept to avoid allocation per message.
    matches: Vec<fanout::Match>,
    targets: Targets,
    cache: EncodeCache,
    /// Shared payloads made on this loop, counted once each wherever they are
    /// referenced (`ShardStats::bytes_shared`).
    payloads: crate::tx::PayloadGauge,
    assigned_ids: u64,
    /// Connections to end once the current fan-out or packet is done: slow
    /// consumers, and peers that do not read their replies.
    slow: Vec<(ConnId, SessionError)>,
    limits: Limits,
    /// Latest `now` passed in, for the calls that get none (`take_tx`, `release`).
    last_now: Option<Instant>,
    /// Sequence number of the last route add this shard broadcast.
    route_seq: u64,
    /// Per shard: the highest of our route adds it has applied.
    route_acked: Vec<u64>,
    /// SUBACKs waiting for every shard to apply our route adds.
    pending_subacks: VecDeque<routes::PendingSubAck>,
    /// Route updates and acks not yet taken by the mesh (never dropped).
    control: ControlOutbox,
    /// Origin of `Session::connect_ns`: when the first connection arrived.
    epoch: Option<Instant>,
    /// Origin of the latency stamps (`latency_stamp`): the first time stamped.
    latency_epoch: Option<Instant>,
    /// The last stamp made and the time it was made from: a turn's fan-outs share
    /// the turn's `now` as their `arrived_at`, so one conversion serves them all.
    latency_last: Option<(Instant, u32)>,
    /// The last `seen_ms` stamp and the time it was made from: a turn's reads share
    /// its `now`, so one conversion serves them all.
    seen_last: Option<(Instant, u32)>,
    /// The stamp of the message being fanned out (`publish`, `on_remote_publish`),
    /// given to each connection its live copy is written to (`Conn::tx_read_at`).
    fanout_stamp: u32,
    /// `Conn::tx_read_at` of the output the last `take_tx_chain` returned.
    taken_stamp: u32,
    auth: auth::ShardAuth,
    /// The turn's output for the cluster thread; `None` on a single node.
    cluster: Option<Box<cluster::ClusterOut>>,
    /// The cluster thread's state, read to stop holding CONNECTs once it has ended.
    cluster_status: Option<Arc<crate::cluster::ClusterStatus>>,
    /// Sessions handed to another node and kept until it confirms: client id ->
    /// (hand-over id, copies the hand-over carried) (`cluster_session.rs`).
    cluster_handing: std::collections::HashMap<bytes::Bytes, (u64, usize)>,
    /// Held sessions among those whose asker looks alive but never confirmed:
    /// their subscriptions are out of the trie (and NATS), still in the session,
    /// until it is taken back, resumed here or ends (review10 M8 item 2).
    cluster_detached: std::collections::HashSet<bytes::Bytes>,
    /// Held sessions taken back from an asker that looked dead (review M1), while
    /// they stay here as they were: client id -> the hand-over (bounded).
    cluster_taken_back: std::collections::HashMap<bytes::Bytes, cluster_session::TakenBack>,
    /// `headers::origin_key` of this process's origin, and the sequence of the
    /// `Mqtt-Id`s this loop gives its published messages (`cluster_stamp`).
    cluster_origin_key: u64,
    cluster_seq: u64,
    /// Hand-overs confirmed here, kept so a repeated confirmation (its sender timed
    /// out) gets the same delta: client id -> (hand-over id, delta, when; bounded).
    cluster_confirmed: cluster_session::ConfirmedDeltas,
    /// Sessions loaded from a hand-over whose old node's delta has not come yet, and
    /// the cluster messages that reached this loop meanwhile (`cluster_dedup.rs`).
    cluster_dedup: cluster_dedup::DeltaDedup,
    /// Confirmations of hand-overs of sessions still waiting for their own previous
    /// node's delta, answered once it is in (review M3; `on_handover_confirmed`).
    cluster_held_confirms: Vec<cluster_session::HeldConfirm>,
    /// The self-fencing lease has run out (`ClusterIn::Fence`): wills set now stay
    /// off the cluster until it is back.
    cluster_fenced: bool,
    /// The loop's write-ahead log and the replies waiting for it (`durable.rs`);
    /// `None` without a data directory.
    store: Option<Box<durable::ShardStore>>,
}

impl Shard {
    /// A shard with its own connection counters: `max_connections` is split evenly
    /// between the shards, `max_connections_per_ip` applies per shard.
    pub fn new(id: ShardId, shard_count: usize, config: Arc<Config>) -> Shard {
        Shard::build(id, shard_count, config, None)
    }

    /// A shard sharing `node` with the other shards of the process, so
    /// `max_connections` and `max_connections_per_ip` hold for the whole node.
    pub fn in_node(
        id: ShardId,
        shard_count: usize,
        config: Arc<Config>,
        node: Arc<NodeCounters>,
    ) -> Shard {
        Shard::build(id, shard_count, config, Some(node))
    }

    fn build(
        id: ShardId,
        shard_count: usize,
        config: Arc<Config>,
        node: Option<Arc<NodeCounters>>,
    ) -> Shard {
        let shard_count = shard_count.max(1);
        let limits = Limits::new(&config, shard_count, node);
        let presize = config
            .max_connections
            .div_ceil(shard_count)
            .min(PRESIZE_MAX);
        // Unset only where no process chose a seed (sans-IO tests, benches): those
        // place with seed 0, as their id searches do.
        let placement = Placement::new(config.placement_seed.unwrap_or(0));
        Shard {
            id,
            shard_count,
            placement,
            config,
            conns: Slab::with_capacity(presize),
            sessions: SessionStore::with_capacity(presize),
            filters: subs::FilterTrie::with_pack(subs::PackedRow { me: id }),
            retained: retained_index::RetainedIndex::default(),
            retained_seq: 0,
            streams: stream::Streams::default(),
            tombstones: retained::Tombstones::default(),
            timers: Timers::default(),
            actions: VecDeque::new(),
            stats: ShardStats::default(),
            conn_generation: 0,
            match_generation: 0,
            matches: Vec::new(),
            targets: Targets::new(shard_count),
            cache: EncodeCache::default(),
            payloads: Default::default(),
            assigned_ids: 0,
            slow: Vec::new(),
            limits,
            last_now: None,
            route_seq: 0,
            route_acked: vec![0; shard_count],
            pending_subacks: VecDeque::new(),
            control: ControlOutbox::new(shard_count),
            epoch: None,
            latency_epoch: None,
            latency_last: None,
            seen_last: None,
            fanout_stamp: 0,
            taken_stamp: 0,
            // Open until `set_auth`: the broker as it was without auth files. The
            // cache key's secret comes with the policy's first install.
            auth: auth::ShardAuth::new(
                Arc::new(crate::auth::AuthPolicy::new(None, None, true)),
                auth_secret(id),
            ),
            cluster: None,
            cluster_status: None,
            cluster_handing: Default::default(),
            cluster_detached: Default::default(),
            cluster_taken_back: Default::default(),
            cluster_origin_key: crate::cluster::headers::origin_key(""),
            cluster_seq: 0,
            cluster_confirmed: Default::default(),
            cluster_dedup: Default::default(),
            cluster_held_confirms: Vec::new(),
            cluster_fenced: false,
            store: None,
        }
    }

    pub fn id(&self) -> ShardId {
        self.id
    }

    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn stats(&self) -> &ShardStats {
        &self.stats
    }

    /// The loop that owns the session of `client_id` (the same answer on every loop).
    pub fn owner_of(&self, client_id: &[u8]) -> ShardId {
        self.placement.owner(client_id, self.shard_count)
    }

    /// The MQTT-SN gateway's counters, which the worker keeps current (the shard only
    /// carries them into its snapshot).
    pub fn sn_stats_mut(&mut self) -> &mut SnStats {
        &mut self.stats.sn
    }

    /// Publishes a broker status message (`$SYS/...`), retained, QoS 0, as if a
    /// client of this shard had: stored in every replica and delivered to matching
    /// subscribers. Not counted as a message received from a client.
    pub fn publish_sys(&mut self, topic: bytes::Bytes, payload: bytes::Bytes, now: Instant) {
        self.publish_broker(topic, payload, true, now);
    }

    /// As [`publish_sys`](Self::publish_sys), retained or not (events are not).
    fn publish_broker(
        &mut self,
        topic: bytes::Bytes,
        payload: bytes::Bytes,
        retain: bool,
        now: Instant,
    ) {
        let msg = crate::session::Message {
            topic,
            payload,
            qos: crate::protocol::QoS::AtMostOnce,
            retain,
            properties: Default::default(),
            arrived_at: now,
            origin_shard: self.id,
            origin_session: crate::session::NONE,
            // Made by the broker, not sliced from a receive buffer.
            owned: true,
            cluster_key: 0,
        };
        let unmatched = self.stats.unmatched;
        self.publish(msg, now);
        // `publish` counts client messages; this one is the broker's own (`$SYS`
        // topics nobody reads are not a client publishing into the void).
        self.stats.messages_in -= 1;
        self.stats.messages_in_qos[0] -= 1;
        self.stats.unmatched = unmatched;
    }

    /// The counters with the gauges that are not kept up to date on the hot path
    /// (online sessions, queued messages, in-flight messages) filled in by one walk
    /// of the sessions: for a scrape, not for every turn.
    pub fn stats_snapshot(&mut self) -> ShardStats {
        let (mut online, mut queued, mut inflight) = (0, 0, 0);
        for (_, s) in self.sessions.iter() {
            if s.conn != crate::session::NONE {
                online += 1;
            }
            if let Some(d) = s.delivery.as_deref() {
                queued += d.queue.len();
                inflight += d.inflight.len();
            }
        }
        self.stats.sessions_online = online;
        self.stats.messages_queued = queued;
        self.stats.inflight = inflight;
        self.stats.bytes_shared = self.payloads.bytes();
        self.stats.clone()
    }

    /// `t` as a latency stamp: µs since this shard's first stamp, wrapping after
    /// ~71 minutes, never 0 (0 means "no live delivery"). The worker stamps send
    /// completions with it, the fan-out each PUBLISH's read time
    /// (`metrics::latency`).
    #[inline]
    pub fn latency_stamp(&mut self, t: Instant) -> u32 {
        match self.latency_last {
            Some((at, stamp)) if at == t => stamp,
            _ => self.latency_stamp_new(t),
        }
    }

    /// `t` in ms from the shard's epoch, wrapping at 2^32 (49.7 days): the stamp of
    /// `Conn::last_seen_ms`. Only differences of two stamps mean anything.
    #[inline]
    pub(crate) fn seen_ms(&mut self, t: Instant) -> u32 {
        match self.seen_last {
            Some((at, ms)) if at == t => ms,
            _ => self.seen_ms_new(t),
        }
    }

    #[inline(never)]
    fn seen_ms_new(&mut self, t: Instant) -> u32 {
        let epoch = *self.epoch.get_or_insert(t);
        // Truncating keeps the low 32 bits: the stamp wraps, differences stay exact.
        let ms = t.saturating_duration_since(epoch).as_millis() as u32;
        self.seen_last = Some((t, ms));
        ms
    }

    #[inline(never)]
    fn latency_stamp_new(&mut self, t: Instant) -> u32 {
        let epoch = *self.latency_epoch.get_or_insert(t);
        let stamp = (t.saturating_duration_since(epoch).as_micros() as u32).max(1);
        self.latency_last = Some((t, stamp));
        stamp
    }

    /// The latency stamp of the oldest live delivery in what the last
    /// `take_tx_chain` returned; 0: none (control packets, queued or retained
    /// copies only).
    #[inline]
    pub fn taken_read_stamp(&self) -> u32 {
        self.taken_stamp
    }

    /// A message from shard `from`.
    pub fn on_message(&mut self, from: ShardId, msg: ShardMsg, now: Instant) {
        self.last_now = Some(now);
        match msg {
            ShardMsg::Publish {
                msg,
                plain,
                shared,
                hold,
            } => {
                let mark = self.store_mark();
                self.on_remote_publish(msg, plain, shared, now);
                self.store_remote_received(from, hold, mark);
                self.drop_slow_consumers(now);
            }
            ShardMsg::Retain(msg) => self.on_remote_retained(msg, now),
            ShardMsg::Routes(batch) => {
                for r in batch {
                    self.on_route(from, r, now);
                }
            }
            ShardMsg::RouteAck { seq } => self.on_route_ack(from, seq, now),
            ShardMsg::StoreAck { lane, seq } => self.on_store_ack(from, lane, seq, now),
            ShardMsg::StoreNack {
                lane,
                from: lo,
                to: hi,
            } => self.on_store_nack(from, lane, (lo, hi)),
            ShardMsg::StoreProbe { seq } => self.on_store_probe(from, seq),
        }
    }

    /// `t` in ns since the shard's epoch (its first connection). Signed: a hand-off
    /// can carry a CONNECT read before the owner saw any connection, and clamping
    /// those to the epoch would lose their order.
    fn stamp_ns(&mut self, t: Instant) -> i64 {
        let epoch = *self.epoch.get_or_insert(t);
        ns_since(epoch, t)
    }

    /// Whether the shard is over `memory_high_water_bytes`.
    pub(crate) fn over_memory_mark(&self) -> bool {
        let mark = self.config.memory_high_water_bytes;
        mark > 0 && self.stats.memory_bytes() > mark
    }
}

/// `t - epoch` in ns, negative when `t` is earlier (saturating at ±292 years).
pub(crate) fn ns_since(epoch: Instant, t: Instant) -> i64 {
    match t.checked_duration_since(epoch) {
        Some(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        None => i64::try_from(epoch.duration_since(t).as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<ShardMsg>();
    is_send::<Action>();
    is_send::<Shard>();
}

type SubIds = SmallVec<[u32; 1]>;

/// The verify cache's key secret: unpredictable from outside (the std hasher's
/// per-process random keys), so cache keys cannot be precomputed; the cache stores no
/// passwords either way.
fn auth_secret(id: ShardId) -> [u8; 32] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 32];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(id);
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}
