//! One core's broker logic, sans-IO: the connections of this shard, the sessions it
//! owns (`hash(client_id) % shards`), local subscriptions, the replicated routes
//! table and retained store. Input comes through `on_*` calls with the current time;
//! output is pulled with `poll_action` and `take_tx`. It never does IO or reads a clock.

mod conn;
mod connect;
mod control;
mod deliver;
mod fanout;
mod inbound;
mod limits;
mod retained;
mod routes;
mod shared;
mod subs;
mod timer;

#[cfg(test)]
pub(crate) mod harness;
#[cfg(any(test, feature = "testkit"))]
#[doc(hidden)]
pub mod testkit;
#[cfg(test)]
mod tests;
#[cfg(any(test, feature = "testkit"))]
mod wiring;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use slab::Slab;
use smallvec::SmallVec;

use crate::config::Config;
use crate::protocol::{Disconnect, Packet, Properties, ProtocolVersion, ReasonCode};
use crate::session::{Message, Phase, SessionError, SessionStore, NONE};
use crate::topic::TopicTrie;

use conn::{Conn, ConnState};
use control::ControlOutbox;
use deliver::EncodeCache;
use fanout::Targets;
use limits::Limits;
pub use limits::NodeCounters;
use subs::FilterEntry;
use timer::{TimerKind, Timers};

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
    /// When the accepting shard read the CONNECT: the owner applies CONNECTs of one
    /// client id in this order, however the hand-offs travel.
    pub connect_at: Instant,
}

/// A shared subscription a remote shard must deliver to: one member of `group`
/// subscribed to `filter` on that shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedTarget {
    pub filter: Bytes,
    pub group: Bytes,
}

/// The payload of [`ShardMsg::Route`].
#[derive(Debug)]
pub struct RouteUpdate {
    pub filter: Bytes,
    pub group: Option<Bytes>,
    pub add: bool,
    pub seq: u64,
}

/// Messages between shards, carried over the SPSC mesh. All payloads are shared
/// (`Arc`/`Bytes`), so a message is cheap to build and `Send`.
#[derive(Debug)]
pub enum ShardMsg {
    /// A PUBLISH routed to this shard. `plain`: deliver to the matching local
    /// non-shared subscriptions; `shared`: the shared subscriptions this shard was
    /// picked for. Data: dropped (and counted) when the mesh is full.
    Publish {
        msg: Arc<Message>,
        plain: bool,
        shared: Vec<SharedTarget>,
    },
    /// Store (or, with an empty payload, delete) a retained message in the
    /// receiver's replica of the retained store; the sender's shard stored it. Not
    /// applied when the replica holds or deleted a newer update of the topic
    /// (`retained::RetainedStamp`: last writer wins). Never dropped: taken with `Shard::poll_control`, coalesced per topic (see
    /// the `retained` module).
    Retain(Arc<Message>),
    /// The sender's local subscriber count for `filter` (or for `group` on it)
    /// went 0 → 1 (`add`) or 1 → 0.
    /// `seq` is non-zero on adds (and on a remove that replaced a not yet sent add,
    /// see `control::ControlOutbox`): the receiver answers `RouteAck { seq }` once the
    /// route is in its table, so the sender can hold SUBACKs until every shard
    /// routes to it (see `routes::PendingSubAck`). Taken with `Shard::poll_control`,
    /// never through `Action::Send`.
    ///
    /// Boxed: a route update is rare next to `Publish`, and every mesh ring slot is
    /// sized by the largest variant (a subscribe storm touches them all).
    Route(Box<RouteUpdate>),
    /// Every `Route` the receiver sent us up to `seq` is applied (rings are FIFO
    /// per pair, so one number per shard is enough). Taken with `Shard::poll_control`.
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
    /// When the hand-off cannot be made while the socket is still here, call
    /// [`Shard::on_migrate_refused`] instead and perform the `Close` it emits.
    Migrate {
        conn: ConnId,
        to: ShardId,
        /// Boxed: queued actions and mesh ring slots are sized by the largest
        /// variant, and every slot a connect storm cycles through stays resident.
        handoff: Box<Handoff>,
    },
    /// Deliver `msg` (a `Publish`) to shard `to` over the mesh; may be dropped (and
    /// counted) when the mesh is full. Control messages are not sent this way: see
    /// `Shard::poll_control`.
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
    /// Retained messages not stored because the store is at `max_retained_messages`.
    pub dropped_retained_full: u64,
    /// Retained messages not stored because they would take the store past
    /// `max_retained_bytes`.
    pub dropped_retained_bytes: u64,
    /// Retained messages (adding or growing one) not stored because the shard was
    /// over `memory_high_water_bytes`; checked on the publisher's shard only.
    pub dropped_retained_memory: u64,
    /// Shared-subscription copies whose group vanished on the picked shard.
    pub dropped_no_subscriber: u64,
    /// Bytes of messages waiting in session queues on this shard.
    pub bytes_queued: usize,
    /// Retained messages in this shard's replica.
    pub retained: usize,
    /// Bytes encoded into connection buffers and not yet taken by the IO side.
    pub bytes_tx: usize,
    /// Bytes (`Message::cost_bytes`) of the retained replica.
    pub bytes_retained: usize,

    // Hostile input and overload: one counter per limit.
    /// CONNECTs refused with 0x97 / rc 3: node over `max_connections`.
    pub refused_max_connections: u64,
    /// CONNECTs refused with 0x97 / rc 3: source IP over `max_connections_per_ip`.
    pub refused_per_ip: u64,
    /// CONNECTs refused with 0x9F / rc 3: over `connect_rate_per_s`.
    pub refused_rate: u64,
    /// CONNECTs refused with 0x89 / rc 3: shard memory over `memory_high_water_bytes`.
    pub refused_busy: u64,
    /// 3.x CONNECTs refused with rc 2: keepalive 0 or above `keepalive_max_s`
    /// (MQTT 5 clients are given Server Keep Alive instead).
    pub refused_keepalive: u64,
    /// CONNECTs refused with 0x89 / rc 3 by the accepting shard because the hand-off
    /// to the owner shard was refused (owner's table or the mesh full).
    pub refused_handoff: u64,
    /// CONNECTs that reached the owner (by hand-off) after a later CONNECT for the
    /// same client id: CONNACK, DISCONNECT 0x8E (MQTT 5), closed.
    pub closed_superseded: u64,
    /// Connections closed for not completing CONNECT within `connect_timeout_ms`.
    pub connect_timeouts: u64,
    /// Connections closed for a packet over `max_packet_size` (0x95).
    pub closed_packet_too_large: u64,
    /// Connections closed for a malformed packet or a protocol error.
    pub closed_protocol_error: u64,
    /// Connections closed for a PUBLISH topic over `max_topic_len` / `max_topic_levels`
    /// (0x90); filters over them are refused per filter in SUBACK (`refused_filters`).
    pub closed_topic_invalid: u64,
    /// SUBSCRIBE filters refused: invalid or over the topic limits (0x8F).
    pub refused_filters: u64,
    /// SUBSCRIBE filters refused: over `max_subscriptions_per_client` (0x97).
    pub refused_subscriptions: u64,
    /// Connections closed for exceeding our Receive Maximum (0x93).
    pub closed_receive_maximum: u64,
    /// QoS 0 copies shed because the shard was over `memory_high_water_bytes`.
    pub dropped_memory_qos0: u64,
    /// Subscribers disconnected under `SlowConsumerPolicy::Disconnect` (0x97).
    pub closed_slow_consumer: u64,
    /// Connections closed because a reply would push their unread output past
    /// `max_outbound_bytes` plus the control allowance: the peer is not reading.
    pub closed_not_reading: u64,
}

impl ShardStats {
    /// Message memory buffered on the shard, compared with `memory_high_water_bytes`.
    pub fn memory_bytes(&self) -> usize {
        self.bytes_tx + self.bytes_queued + self.bytes_retained
    }
}

/// Control packets (acks, SUBACK, PINGRESP) may take a connection's unread output
/// this far past `max_outbound_bytes` (which PUBLISH copies stop at), so a client
/// that reads a little late still gets its acks; beyond it the client is closed.
pub const CONTROL_ALLOWANCE_BYTES: usize = 64 * 1024;

/// The allowance for a given `max_outbound_bytes`: never more than the bound itself,
/// so small bounds stay small.
pub fn control_allowance(max_outbound_bytes: usize) -> usize {
    CONTROL_ALLOWANCE_BYTES.min(max_outbound_bytes)
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
    /// Presized (see `PRESIZE_MAX`).
    conns: Slab<Conn>,
    sessions: SessionStore,
    /// Filter (inner filter for shared subscriptions) → local subscribers and the
    /// shards with subscribers (this one included): local subscriptions and the
    /// replicated routes table in one trie.
    filters: TopicTrie<FilterEntry>,
    /// Topic name → retained message; a replica kept identical on every shard.
    retained: TopicTrie<Arc<Message>>,
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
        Shard {
            id,
            shard_count,
            config,
            conns: Slab::with_capacity(presize),
            sessions: SessionStore::with_capacity(presize),
            filters: TopicTrie::new(),
            retained: TopicTrie::new(),
            tombstones: retained::Tombstones::default(),
            timers: Timers::default(),
            actions: VecDeque::new(),
            stats: ShardStats::default(),
            conn_generation: 0,
            match_generation: 0,
            matches: Vec::new(),
            targets: Targets::new(shard_count),
            cache: EncodeCache::default(),
            assigned_ids: 0,
            slow: Vec::new(),
            limits,
            last_now: None,
            route_seq: 0,
            route_acked: vec![0; shard_count],
            pending_subacks: VecDeque::new(),
            control: ControlOutbox::new(shard_count),
            epoch: None,
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
    ///
    /// Over `max_connections` / `max_connections_per_ip` the connection is still
    /// accepted (and counted until released) so that its CONNECT can be answered
    /// with a refusal; the connect timeout bounds how long it can stay.
    pub fn accept(&mut self, peer: SocketAddr, now: Instant) -> ConnId {
        self.new_conn(peer, now, now, false)
    }

    /// A connection handed over by another shard (see [`Action::Migrate`]). It was
    /// admitted by the accepting shard; only the memory mark is checked again here.
    pub fn adopt(&mut self, handoff: Handoff, now: Instant) -> ConnId {
        let conn = self.new_conn(handoff.peer, handoff.accepted_at, now, true);
        if let Some(c) = self.conns.get_mut(conn) {
            c.rx = handoff.rx;
            if let Some(p) = c.pending.as_mut() {
                p.connect_at = Some(handoff.connect_at);
            }
        }
        self.process_rx(conn, now);
        conn
    }

    fn new_conn(
        &mut self,
        peer: SocketAddr,
        accepted_at: Instant,
        now: Instant,
        adopted: bool,
    ) -> ConnId {
        self.last_now = Some(now);
        self.epoch.get_or_insert(now);
        self.conn_generation = self.conn_generation.wrapping_add(1);
        let generation = self.conn_generation;
        let conn = self
            .conns
            .insert(Conn::new(peer, accepted_at, now, generation));
        let refusal = self.limits.admit(conn, peer);
        if let Some(p) = self.conns.get_mut(conn).and_then(|c| c.pending.as_mut()) {
            p.adopted = adopted;
            p.refusal = if adopted { None } else { refusal };
        }
        self.stats.connections = self.conns.len();
        let deadline = accepted_at + Duration::from_millis(self.config.connect_timeout_ms);
        self.timers.push(
            now,
            deadline,
            TimerKind::ConnectTimeout,
            conn as u32,
            generation,
        );
        conn
    }

    /// The IO side could not hand `conn` to its owner shard (see [`Action::Migrate`]:
    /// the owner's socket table or the mesh was full) and still holds the socket. Its
    /// CONNECT is refused like any overload: CONNACK 0x89 Server busy (3.x: return
    /// code 3 Server unavailable), then `Action::Close`.
    pub fn on_migrate_refused(&mut self, conn: ConnId, now: Instant) {
        self.last_now = Some(now);
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if c.state != ConnState::Migrated {
            return;
        }
        // Back to the state a refusal is answered from; the bytes left with the
        // hand-off and nothing more is read.
        c.state = ConnState::AwaitConnect;
        c.rx = BytesMut::new();
        self.stats.refused_handoff += 1;
        self.write_control(conn, &connect::connack(ReasonCode::ServerBusy));
        self.close(conn);
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
            // The commonest frame of a QoS 1 stream, a PUBACK with reason Success and no
            // properties (remaining length 2, the same in every version), is read in
            // place: decoding it builds and drops a whole `Packet`. Anything else,
            // including packet id 0 and a max_packet_size below 4, takes the decoder.
            if max_packet >= 4 {
                if let [0x40, 0x02, hi, lo, ..] = c.rx[..] {
                    let packet_id = u16::from_be_bytes([hi, lo]);
                    if packet_id != 0 {
                        c.rx.advance(4);
                        if c.rx.is_empty() {
                            c.rx = BytesMut::new();
                        }
                        self.on_flow_end(conn, packet_id, Phase::AwaitAck, now);
                        self.drop_slow_consumers(now);
                        continue;
                    }
                }
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
                        self.drop_slow_consumers(now);
                        return;
                    }
                    // Replies this connection does not read, slow consumers of
                    // what it published: end them before the next frame.
                    self.drop_slow_consumers(now);
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
        let unread = self.conns.get(conn).map_or(0, |c| c.tx.len());
        self.stats.bytes_tx -= unread;
        self.conns.remove(conn);
        self.limits.release(conn);
        self.stats.connections = self.conns.len();
    }

    /// A message from shard `from`.
    pub fn on_message(&mut self, from: ShardId, msg: ShardMsg, now: Instant) {
        self.last_now = Some(now);
        match msg {
            ShardMsg::Publish { msg, plain, shared } => {
                self.on_remote_publish(msg, plain, shared, now);
                self.drop_slow_consumers(now);
            }
            ShardMsg::Retain(msg) => self.on_remote_retained(msg, now),
            ShardMsg::Route(r) => {
                let RouteUpdate {
                    filter,
                    group,
                    add,
                    seq,
                } = *r;
                self.on_route(from, filter, group, add, seq)
            }
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
        self.stats.bytes_tx -= out.len();
        if c.state == ConnState::Connected && c.session != NONE {
            // Room was freed: messages waiting for it can be encoded now.
            let session = c.session;
            let now = self.last_now.unwrap_or(c.last_seen);
            self.pump(session, now);
        }
        Some(out)
    }

    /// Appends a control packet to `conn`'s buffer. Control packets are never
    /// dropped, but they count against `max_outbound_bytes` (plus
    /// [`control_allowance`]): a client that floods PINGREQ or SUBSCRIBE
    /// without reading the replies is closed instead of growing the buffer.
    /// DISCONNECT is exempt: it ends the connection anyway.
    fn write_control(&mut self, conn: ConnId, packet: &Packet) {
        self.write_control_with(
            conn,
            !matches!(packet, Packet::Disconnect(_)),
            |v| crate::protocol::encoded_len(packet, v),
            |tx, v| crate::protocol::encode_packet(packet, v, tx),
        );
    }

    /// A PUBACK with reason Success and no properties: 4 bytes in every version
    /// (MQTT 5 3.4.2.1 omits the code and properties), written without building and
    /// encoding a `Packet` (what `encode_packet` writes for `PubResp::new(packet_id)`).
    fn write_puback(&mut self, conn: ConnId, packet_id: u16) {
        let [hi, lo] = packet_id.to_be_bytes();
        let frame = [0x40, 0x02, hi, lo];
        self.write_control_with(
            conn,
            true,
            |_| frame.len(),
            |tx, _| tx.extend_from_slice(&frame),
        );
    }

    /// `write_control` for any encoder: `bounded` packets count against the
    /// connection's outbound limit (plus the control allowance); a DISCONNECT does not.
    fn write_control_with(
        &mut self,
        conn: ConnId,
        bounded: bool,
        len: impl FnOnce(ProtocolVersion) -> usize,
        write: impl FnOnce(&mut BytesMut, ProtocolVersion),
    ) {
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if !matches!(
            c.state,
            ConnState::Connected | ConnState::AwaitConnect | ConnState::Closing
        ) {
            return;
        }
        if bounded {
            let len = len(c.version);
            let max = self.config.max_outbound_bytes;
            if c.tx.len() + len > max + control_allowance(max) {
                if !self.slow.iter().any(|(x, _)| *x == conn) {
                    self.slow.push((conn, SessionError::NotReading));
                }
                return;
            }
        }
        let before = c.tx.len();
        write(&mut c.tx, c.version);
        self.stats.bytes_tx += c.tx.len() - before;
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
        if !c.is_live() {
            return;
        }
        let (state, v5) = (c.state, c.version.is_v5());
        self.count_failure(&err);
        if state != ConnState::Connected {
            self.close(conn);
            return;
        }
        // A peer that does not read would not see a DISCONNECT either.
        if v5 && err != SessionError::NotReading {
            let d = Disconnect {
                code: err.reason_code(),
                properties: Properties::default(),
            };
            self.write_control(conn, &Packet::Disconnect(d));
        }
        self.close(conn);
        self.detach_session(conn, err.publishes_will(), now);
    }

    fn count_failure(&mut self, err: &SessionError) {
        let s = &mut self.stats;
        match err {
            SessionError::Decode(crate::protocol::DecodeError::PacketTooLarge { .. }) => {
                s.closed_packet_too_large += 1
            }
            SessionError::Decode(_)
            | SessionError::ProtocolError
            | SessionError::TopicAliasInvalid
            | SessionError::RetainNotSupported => s.closed_protocol_error += 1,
            SessionError::TopicNameInvalid => s.closed_topic_invalid += 1,
            SessionError::ReceiveMaximumExceeded => s.closed_receive_maximum += 1,
            SessionError::QuotaExceeded => s.closed_slow_consumer += 1,
            SessionError::NotReading => s.closed_not_reading += 1,
            SessionError::KeepAliveTimeout
            | SessionError::SessionTakenOver
            | SessionError::ServerShuttingDown => {}
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
