//! What crosses the shard's boundary: messages between shards over the mesh
//! ([`ShardMsg`] and its payloads), a connection handed to its owner shard
//! ([`Handoff`]), and the actions the IO side performs for the shard ([`Action`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use super::{ConnId, ShardId};
use crate::session::Message;

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
    /// The accepting listener's anonymous rule, for the owner's CONNECT check
    /// (`Copy`, so `Action`'s drop glue does not grow).
    pub listener_anonymous: Option<bool>,
}

/// A shared subscription a remote shard must deliver to: one member of `group`
/// subscribed to `filter` on that shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedTarget {
    pub filter: Bytes,
    pub group: Bytes,
}

/// Route updates one [`ShardMsg::Routes`] carries at most: one ring slot for a
/// subscribe storm's 64 devices, and a bounded amount of work per message (64
/// trie upserts) for the loop that applies it.
pub const ROUTE_BATCH_MAX: usize = 64;

/// One route change in a [`ShardMsg::Routes`] batch.
#[derive(Debug)]
pub struct RouteUpdate {
    pub filter: Bytes,
    pub group: Option<Bytes>,
    pub add: bool,
    pub seq: u64,
    /// Adds: start of the sender's turn that read the SUBSCRIBE; the receiver counts
    /// how long the route took to be live there (`ShardStats::route_live_*`).
    /// `None` for removes.
    pub read_at: Option<Instant>,
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
        /// Non-zero: the sender's seq for this pair; its publisher's PUBACK waits for
        /// `StoreAck` covering it (see `durable_remote.rs`). `u32` keeps this 40 bytes.
        hold: u32,
    },
    /// Store (or, with an empty payload, delete) a retained message in the
    /// receiver's replica of the retained store; the sender's shard stored it. Not
    /// applied when the replica holds or deleted a newer update of the topic
    /// (`retained::RetainedStamp`: last writer wins). Never dropped: taken with `Shard::poll_control`, coalesced per topic (see
    /// the `retained` module).
    Retain(super::retained::RetainedBody),
    /// Route updates, in the order queued, at most [`ROUTE_BATCH_MAX`]: each says
    /// the sender's local subscriber count for `filter` (or for `group` on it)
    /// went 0 → 1 (`add`) or 1 → 0.
    /// `seq` is non-zero on adds (and on a remove that replaced a not yet sent add,
    /// see `control::ControlOutbox`): the receiver answers `RouteAck { seq }` once the
    /// route is in its table, so the sender can hold SUBACKs until every shard
    /// routes to it (see `routes::PendingSubAck`). Taken with `Shard::poll_control`,
    /// never through `Action::Send`.
    ///
    /// Batched (a `Vec` is 24 bytes, within the largest variant, which sizes every
    /// mesh ring slot): a subscribe storm of 5,000 devices per loop took 5,000
    /// slots of each ring, 40 B each, and the pages a storm touches stay resident,
    /// ~40 B per subscription of RSS at 10k on two loops. A batch takes one slot.
    Routes(Vec<RouteUpdate>),
    /// Every `Route` the receiver sent us up to `seq` is applied (rings are FIFO
    /// per pair, so one number per shard is enough). Taken with `Shard::poll_control`.
    RouteAck { seq: u64 },
    /// Every `Publish` of the receiver's with `hold` up to `seq` has its copies here
    /// durable (or nacked). Taken with `Shard::poll_control`.
    /// `lane` 1: the same for `StoreProbe`s (retained messages).
    StoreAck { lane: u8, seq: u32 },
    /// The receiver's publishes with `hold` in `from..=to` were not made durable
    /// here (a failed write): their PUBACKs must not go. Sent before the `StoreAck`
    /// that passes them.
    StoreNack { lane: u8, from: u32, to: u32 },
    /// Answer `StoreAck { lane: 1 }` once everything the receiver logged so far is
    /// durable: sent behind the `Retain`s of a QoS 1/2 retained publish, whose
    /// PUBACK waits for it. Taken with `Shard::poll_control`.
    StoreProbe { seq: u32 },
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
    /// Check a password off the event loop: take the job with
    /// `Shard::take_verify_job`, run it on the verifier pool, then call
    /// `Shard::on_verified` with `conn`, `generation` and the result (`None` when
    /// the pool's queue is full). The job stays in the shard rather than in the
    /// action, so `Action` keeps plain drop glue on the per-message path.
    Verify { conn: ConnId, generation: u32 },
}
