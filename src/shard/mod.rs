//! One core's broker logic, sans-IO: the connections of this shard, the sessions it
//! owns (`hash(client_id) % shards`), local subscriptions, the replicated routes
//! table and retained store. Input comes through `on_*` calls with the current time;
//! output is pulled with `poll_action` and `take_tx`. It never does IO or reads a clock.

mod conn;
mod connect;
mod deliver;
mod inbound;
mod route;
mod timer;

#[cfg(test)]
pub(crate) mod harness;
#[cfg(test)]
mod tests;

use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use slab::Slab;
use smallvec::SmallVec;

use crate::config::Config;
use crate::protocol::{Disconnect, Packet, Properties, ReasonCode};
use crate::session::{Message, SessionError, SessionStore, NONE};
use crate::topic::TopicTrie;

use conn::{Conn, ConnState};
use deliver::EncodeCache;
use route::{LocalEntry, RouteEntry, Targets};
use timer::{Timer, TimerKind};

pub type ShardId = usize;
/// A connection's index on its shard; valid from `accept`/`adopt` until `release`.
pub type ConnId = usize;

/// Fixed seeds: every shard (and the IO layer) must agree on a client id's owner.
const OWNER_SEEDS: [u64; 4] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
];

/// The shard that owns the session of `client_id`.
pub fn owner_shard(client_id: &[u8], shard_count: usize) -> ShardId {
    let h = ahash::RandomState::with_seeds(
        OWNER_SEEDS[0],
        OWNER_SEEDS[1],
        OWNER_SEEDS[2],
        OWNER_SEEDS[3],
    )
    .hash_one(client_id);
    (h % shard_count.max(1) as u64) as usize
}

/// A connection moving to the shard that owns its client id. The bytes it sent so
/// far (CONNECT included) travel with it and are parsed again by the owner.
#[derive(Debug)]
pub struct Handoff {
    pub peer: SocketAddr,
    pub rx: BytesMut,
    pub accepted_at: Instant,
}

/// A shared subscription a remote shard must deliver to: one member of `group`
/// subscribed to `filter` on that shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedTarget {
    pub filter: Bytes,
    pub group: Bytes,
}

/// Messages between shards, carried over the SPSC mesh. All payloads are shared
/// (`Arc`/`Bytes`), so a message is cheap to build and `Send`.
#[derive(Debug)]
pub enum ShardMsg {
    /// A PUBLISH routed to this shard. `plain`: deliver to the matching local
    /// non-shared subscriptions; `shared`: the shared subscriptions this shard was
    /// picked for; `store_retained`: the message is retained and every shard keeps
    /// a replica of the retained store.
    Publish {
        msg: Arc<Message>,
        plain: bool,
        shared: Vec<SharedTarget>,
        store_retained: bool,
    },
    /// The sender's local subscriber count for `filter` (or for `group` on it)
    /// went 0 → 1 (`add`) or 1 → 0.
    /// `seq` is non-zero on adds: the receiver answers `RouteAck { seq }` once the
    /// route is in its table, so the sender can hold SUBACKs until every shard
    /// routes to it (see `route::PendingSubAck`).
    Route {
        filter: Bytes,
        group: Option<Bytes>,
        add: bool,
        seq: u64,
    },
    /// Every `Route` the receiver sent us up to `seq` is applied (rings are FIFO
    /// per pair, so one number per shard is enough).
    RouteAck { seq: u64 },
}

/// What the IO side must do. Pulled with [`Shard::poll_action`].
#[derive(Debug)]
pub enum Action {
    /// `conn` has bytes waiting in `take_tx`; emitted once until they are taken.
    Flush(ConnId),
    /// Write what is pending, then close the socket and `release(conn)`.
    Close(ConnId),
    /// Hand the socket to shard `to` with `handoff`, then `release(conn)` here.
    Migrate {
        conn: ConnId,
        to: ShardId,
        handoff: Handoff,
    },
    /// Deliver `msg` to shard `to` over the mesh.
    Send { to: ShardId, msg: ShardMsg },
}

/// Counters of one shard. Gauges (connections, sessions, subscriptions,
/// bytes_queued, retained) are current values; the rest only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Connections accepted or adopted and not yet released.
    pub connections: usize,
    pub sessions: usize,
    /// Subscriptions of the sessions on this shard.
    pub subscriptions: usize,
    /// PUBLISHes received from clients on this shard (wills included).
    pub messages_in: u64,
    /// PUBLISHes encoded for clients of this shard (resends included).
    pub messages_out: u64,
    /// QoS 0 copies dropped because the connection's outbound buffer was full.
    pub dropped_outbound_full: u64,
    /// Copies dropped because a session queue was at its message or byte bound.
    pub dropped_queue_full: u64,
    /// Copies dropped because they exceed the client's Maximum Packet Size.
    pub dropped_too_large: u64,
    /// Copies dropped because their Message Expiry Interval passed while queued.
    pub dropped_expired: u64,
    /// QoS 0 copies for offline sessions not queued (`queue_qos0_offline` off).
    pub dropped_offline_qos0: u64,
    /// Retained messages refused because the store is at `max_retained_messages`.
    pub dropped_retained_full: u64,
    /// Shared-subscription copies whose group vanished on the picked shard.
    pub dropped_no_subscriber: u64,
    /// Bytes of messages waiting in session queues on this shard.
    pub bytes_queued: usize,
    /// Retained messages in this shard's replica.
    pub retained: usize,
}

pub struct Shard {
    id: ShardId,
    shard_count: usize,
    config: Arc<Config>,
    conns: Slab<Conn>,
    sessions: SessionStore,
    /// Filter (inner filter for shared subscriptions) → local subscribers.
    local: TopicTrie<LocalEntry>,
    /// Filter → shards with local subscribers (this shard included).
    routes: TopicTrie<RouteEntry>,
    /// Topic name → retained message; a replica kept identical on every shard.
    retained: TopicTrie<Arc<Message>>,
    timers: BinaryHeap<Timer>,
    actions: VecDeque<Action>,
    stats: ShardStats,
    conn_generation: u32,
    match_generation: u32,
    /// Per-publish scratch, kept to avoid allocation per message.
    matches: Vec<route::Match>,
    targets: Targets,
    cache: EncodeCache,
    assigned_ids: u64,
    /// Subscribers to disconnect once the current fan-out is done.
    slow: Vec<ConnId>,
    /// Latest `now` passed in, for the calls that get none (`take_tx`, `release`).
    last_now: Option<Instant>,
    /// Sequence number of the last route add this shard broadcast.
    route_seq: u64,
    /// Per shard: the highest of our route adds it has applied.
    route_acked: Vec<u64>,
    /// SUBACKs waiting for every shard to apply our route adds.
    pending_subacks: VecDeque<route::PendingSubAck>,
}

impl Shard {
    pub fn new(id: ShardId, shard_count: usize, config: Arc<Config>) -> Shard {
        let shard_count = shard_count.max(1);
        Shard {
            id,
            shard_count,
            config,
            conns: Slab::new(),
            sessions: SessionStore::new(),
            local: TopicTrie::new(),
            routes: TopicTrie::new(),
            retained: TopicTrie::new(),
            timers: BinaryHeap::new(),
            actions: VecDeque::new(),
            stats: ShardStats::default(),
            conn_generation: 0,
            match_generation: 0,
            matches: Vec::new(),
            targets: Targets::new(shard_count),
            cache: EncodeCache::default(),
            assigned_ids: 0,
            slow: Vec::new(),
            last_now: None,
            route_seq: 0,
            route_acked: vec![0; shard_count],
            pending_subacks: VecDeque::new(),
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

    /// A TCP connection was accepted on this shard.
    pub fn accept(&mut self, peer: SocketAddr, now: Instant) -> ConnId {
        self.new_conn(peer, now, now)
    }

    /// A connection handed over by another shard (see [`Action::Migrate`]).
    pub fn adopt(&mut self, handoff: Handoff, now: Instant) -> ConnId {
        let conn = self.new_conn(handoff.peer, handoff.accepted_at, now);
        if let Some(c) = self.conns.get_mut(conn) {
            c.rx = handoff.rx;
        }
        self.process_rx(conn, now);
        conn
    }

    fn new_conn(&mut self, peer: SocketAddr, accepted_at: Instant, now: Instant) -> ConnId {
        self.last_now = Some(now);
        self.conn_generation = self.conn_generation.wrapping_add(1);
        let generation = self.conn_generation;
        let conn = self
            .conns
            .insert(Conn::new(peer, accepted_at, now, generation));
        self.stats.connections = self.conns.len();
        let deadline = accepted_at + Duration::from_millis(self.config.connect_timeout_ms);
        self.timers.push(Timer::new(
            deadline,
            TimerKind::ConnectTimeout,
            conn as u32,
            generation,
        ));
        conn
    }

    /// Bytes received on `conn`. Copied as needed; the caller may reuse `data`.
    pub fn on_read(&mut self, conn: ConnId, data: &[u8], now: Instant) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if !c.is_live() {
            return;
        }
        c.rx.extend_from_slice(data);
        c.last_seen = now;
        self.last_now = Some(now);
        self.process_rx(conn, now);
    }

    /// Decodes and handles every complete frame in `conn`'s receive buffer.
    fn process_rx(&mut self, conn: ConnId, now: Instant) {
        let max_packet = self.config.max_packet_size as usize;
        // Each turn consumes one frame or returns, so this is bounded by the input.
        loop {
            let Some(c) = self.conns.get_mut(conn) else {
                return;
            };
            match c.state {
                ConnState::AwaitConnect => {
                    if !self.try_connect(conn, now) {
                        return;
                    }
                    continue;
                }
                ConnState::Connected => {}
                _ => return,
            }
            let decoded = crate::protocol::decode_packet(&mut c.rx, c.version, max_packet);
            if c.rx.is_empty() {
                c.rx = BytesMut::new();
            }
            match decoded {
                Ok(None) => return,
                Ok(Some(packet)) => {
                    if let Err(e) = self.handle_packet(conn, packet, now) {
                        self.fail(conn, e, now);
                        return;
                    }
                }
                Err(e) => {
                    self.fail(conn, SessionError::Decode(e), now);
                    return;
                }
            }
        }
    }

    /// The peer closed or the socket failed. The IO side calls `release` afterwards.
    pub fn on_closed(&mut self, conn: ConnId, now: Instant) {
        self.last_now = Some(now);
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        let was = c.state;
        c.state = ConnState::Closed;
        c.rx = BytesMut::new();
        if was == ConnState::Connected {
            self.detach_session(conn, true, now);
        }
    }

    /// The IO side has no more operations on `conn`; its id may be reused.
    pub fn release(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        if c.state == ConnState::Connected {
            // Released without on_closed: the socket is gone all the same. No `now`
            // here, so use the latest time the shard was given.
            let now = self.last_now.unwrap_or(c.last_seen);
            self.detach_session(conn, true, now);
        }
        self.conns.remove(conn);
        self.stats.connections = self.conns.len();
    }

    /// A message from shard `from`.
    pub fn on_message(&mut self, from: ShardId, msg: ShardMsg, now: Instant) {
        self.last_now = Some(now);
        match msg {
            ShardMsg::Publish {
                msg,
                plain,
                shared,
                store_retained,
            } => {
                self.on_remote_publish(msg, plain, shared, store_retained, now);
                self.drop_slow_consumers(now);
            }
            ShardMsg::Route {
                filter,
                group,
                add,
                seq,
            } => self.on_route(from, filter, group, add, seq),
            ShardMsg::RouteAck { seq } => self.on_route_ack(from, seq, now),
        }
    }

    /// Graceful shutdown: DISCONNECT 0x8B to MQTT 5 clients, close everything.
    pub fn shutdown(&mut self, now: Instant) {
        self.last_now = Some(now);
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.is_live())
            .map(|(k, _)| k)
            .collect();
        for conn in ids {
            self.fail(conn, SessionError::ServerShuttingDown, now);
        }
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Bytes to write on `conn` now (everything encoded for it since the last call).
    pub fn take_tx(&mut self, conn: ConnId) -> Option<Bytes> {
        let c = self.conns.get_mut(conn)?;
        c.flush_queued = false;
        if c.tx.is_empty() {
            return None;
        }
        // Swap in an empty buffer (no allocation) so an idle connection parks nothing.
        let out = std::mem::take(&mut c.tx).freeze();
        if c.state == ConnState::Connected && c.session != NONE {
            // Room was freed: messages waiting for it can be encoded now.
            let session = c.session;
            let now = self.last_now.unwrap_or(c.last_seen);
            self.pump(session, now);
        }
        Some(out)
    }

    /// Appends a control packet to `conn`'s buffer. Control packets are never
    /// dropped and not counted against `max_outbound_bytes`: each one answers a
    /// client packet (or ends the connection), so their volume follows the client's
    /// own input, which the receive path reads at most one recv at a time.
    fn write_control(&mut self, conn: ConnId, packet: &Packet) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if !matches!(
            c.state,
            ConnState::Connected | ConnState::AwaitConnect | ConnState::Closing
        ) {
            return;
        }
        crate::protocol::encode_packet(packet, c.version, &mut c.tx);
        if !c.flush_queued {
            c.flush_queued = true;
            self.actions.push_back(Action::Flush(conn));
        }
    }

    /// Ends `conn` because of `err`: DISCONNECT with its reason (MQTT 5), Close.
    fn fail(&mut self, conn: ConnId, err: SessionError, now: Instant) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        if c.state != ConnState::Connected {
            self.close(conn);
            return;
        }
        if c.version.is_v5() {
            let d = Disconnect {
                code: err.reason_code(),
                properties: Properties::default(),
            };
            self.write_control(conn, &Packet::Disconnect(d));
        }
        self.close(conn);
        self.detach_session(conn, err.publishes_will(), now);
    }

    /// Emits `Close` once; input is ignored from here on. A connected connection's
    /// session is detached by the caller (`detach_session`).
    fn close(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if !c.is_live() {
            return;
        }
        c.state = ConnState::Closing;
        c.rx = BytesMut::new();
        c.pending = None;
        self.actions.push_back(Action::Close(conn));
    }
}

/// Reason codes in a SUBACK for 3.x may only be granted QoS or 0x80.
fn v3_suback_code(code: ReasonCode) -> ReasonCode {
    if code.is_error() {
        ReasonCode::UnspecifiedError
    } else {
        code
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
