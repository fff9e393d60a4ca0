//! One core's broker logic, sans-IO: the connections of this shard, the sessions it
//! owns (`hash(client_id) % shards`), local subscriptions, the replicated routes
//! table and retained store. Input comes through `on_*` calls with the current time;
//! output is pulled with `poll_action` and `take_tx`. It never does IO or reads a clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::config::Config;

pub type ShardId = usize;
/// A connection's index on its shard; valid from `accept`/`adopt` until `release`.
pub type ConnId = usize;

/// A connection moving to the shard that owns its client id. The bytes it sent so
/// far (CONNECT included) travel with it and are parsed again by the owner.
#[derive(Debug)]
pub struct Handoff {
    pub peer: SocketAddr,
    pub rx: BytesMut,
    pub accepted_at: Instant,
}

/// Messages between shards, carried over the SPSC mesh.
#[derive(Debug)]
pub enum ShardMsg {
    /// Placeholder until the shard core defines its messages.
    Nop,
}

/// What the IO side must do. Pulled with [`Shard::poll_action`].
#[derive(Debug)]
pub enum Action {
    /// `conn` has bytes waiting in `take_tx`; emitted once until they are taken.
    Flush(ConnId),
    /// Write what is pending, then close the socket and `release(conn)`.
    Close(ConnId),
    /// Hand the socket to shard `to` with `handoff`, then `release(conn)` here.
    Migrate { conn: ConnId, to: ShardId, handoff: Handoff },
    /// Deliver `msg` to shard `to` over the mesh.
    Send { to: ShardId, msg: ShardMsg },
}

pub struct Shard {
    id: ShardId,
    shard_count: usize,
    config: Arc<Config>,
}

impl Shard {
    pub fn new(id: ShardId, shard_count: usize, config: Arc<Config>) -> Shard {
        Shard { id, shard_count, config }
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

    /// A TCP connection was accepted on this shard.
    pub fn accept(&mut self, peer: SocketAddr, now: Instant) -> ConnId {
        let _ = (peer, now);
        todo!("shard")
    }

    /// A connection handed over by another shard (see [`Action::Migrate`]).
    pub fn adopt(&mut self, handoff: Handoff, now: Instant) -> ConnId {
        let _ = (handoff, now);
        todo!("shard")
    }

    /// Bytes received on `conn`. Copied as needed; the caller may reuse `data`.
    pub fn on_read(&mut self, conn: ConnId, data: &[u8], now: Instant) {
        let _ = (conn, data, now);
        todo!("shard")
    }

    /// The peer closed or the socket failed. The IO side calls `release` afterwards.
    pub fn on_closed(&mut self, conn: ConnId, now: Instant) {
        let _ = (conn, now);
        todo!("shard")
    }

    /// The IO side has no more operations on `conn`; its id may be reused.
    pub fn release(&mut self, conn: ConnId) {
        let _ = conn;
        todo!("shard")
    }

    /// A message from shard `from`.
    pub fn on_message(&mut self, from: ShardId, msg: ShardMsg, now: Instant) {
        let _ = (from, msg, now);
        todo!("shard")
    }

    /// Runs every timer due at `now` (keepalive, will delay, session and message expiry).
    pub fn on_timer(&mut self, now: Instant) {
        let _ = now;
        todo!("shard")
    }

    /// When `on_timer` next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        todo!("shard")
    }

    /// Graceful shutdown: DISCONNECT 0x8B to MQTT 5 clients, close everything.
    pub fn shutdown(&mut self, now: Instant) {
        let _ = now;
        todo!("shard")
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        todo!("shard")
    }

    /// Bytes to write on `conn` now (everything encoded for it since the last call).
    pub fn take_tx(&mut self, conn: ConnId) -> Option<Bytes> {
        let _ = conn;
        todo!("shard")
    }
}
