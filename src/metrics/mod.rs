//! Observability, sans-IO: what one loop hands out when asked ([`LoopSnapshot`]), the
//! merge of every loop's snapshot into the node's figures ([`NodeSnapshot`]), the
//! process figures read from `/proc` by the worker and parsed here ([`process`]), the
//! Prometheus text exposition ([`prometheus`]) and the JSON of `/api/stats` ([`json`]).
//!
//! Counting itself stays where it happens, in plain per-loop integers (`ShardStats`,
//! `IoStats`, `MeshStats`, the worker's report): nothing here runs on the hot path. A
//! scrape asks every loop for a snapshot over the mesh, and the loop that answers
//! renders the merge.

pub mod families;
pub mod http;
pub mod json;
pub mod latency;
pub mod process;
pub mod prometheus;
pub mod sys;

use crate::io::IoStats;
use crate::ring::MeshStats;
use crate::shard::{ShardStats, SnStats};
use crate::transport::ws::WsRefused;

pub use process::ProcessInfo;

/// What one loop reports when a scrape asks: plain copies of its counters, taken
/// between two turns, so the figures of one loop are consistent with each other.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoopSnapshot {
    pub shard: usize,
    /// The shard core: gauges it holds and one counter per drop, refusal and close.
    pub core: ShardStats,
    /// The io backend's accepts and failures.
    pub io: IoStats,
    /// This loop's outbound side of the mesh.
    pub mesh: MeshStats,
    /// Messages for this loop waiting in its inbound mesh rings when it answered.
    pub mesh_inbound_waiting: u64,
    /// Publishes dropped because the mesh to their shard was full.
    pub mesh_rejected: u64,
    pub migrations_out: u64,
    pub migrations_failed: u64,
    pub handoffs_in: u64,
    pub handoffs_expired: u64,
    pub drain_timeouts: u64,
    /// TLS connections closed for a TLS error.
    pub tls_failed: u64,
    /// WebSocket connections refused or closed for an error, by their answer.
    pub ws_refused: WsRefused,
    /// Closes that lingered (write side shut, reads discarded) before the close.
    pub lingered: u64,
    /// Closes made at once because `max_lingering_per_shard` were lingering.
    pub linger_refused_full: u64,
    /// CPU time of the loop's thread since it started, in nanoseconds: blocked
    /// waiting for events costs none (a `busy_poll_us` spin counts as busy).
    pub busy_ns: u64,
    /// Time since the loop started, in nanoseconds.
    pub wall_ns: u64,
    /// Loop turns since start.
    pub turns: u64,
    /// PUBLISH read → send completion (`latency`).
    pub latency: latency::LatencyHistogram,
    /// The `[[bridge]]`s this loop owns.
    pub bridges: Vec<BridgeSnapshot>,
}

/// One bridge's figures, from the loop that owns it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BridgeSnapshot {
    pub name: String,
    /// Connected to its remote (CONNACK accepted).
    pub up: bool,
    /// Outgoing messages held: queued while the remote is down, plus unacknowledged.
    pub held: u64,
    /// Remote messages dropped because the bridge's local session was down.
    pub local_dropped: u64,
    pub stats: crate::bridge::BridgeStats,
}

impl LoopSnapshot {
    /// Busy time over wall time since start, in [0, 1].
    pub fn busy_ratio(&self) -> f64 {
        if self.wall_ns == 0 {
            return 0.0;
        }
        (self.busy_ns as f64 / self.wall_ns as f64).clamp(0.0, 1.0)
    }
}

/// Every loop's snapshot, in shard order, plus the node-wide figures merged from them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeSnapshot {
    pub loops: Vec<LoopSnapshot>,
    /// Loops that did not answer the scrape in time (counted, not merged).
    pub missing_loops: Vec<usize>,
}

impl NodeSnapshot {
    /// Node-wide shard figures. Counters and per-shard gauges are summed; the
    /// retained store is a full replica on every shard, so its count and bytes are
    /// those of the largest replica rather than a sum.
    pub fn core_total(&self) -> ShardStats {
        let mut t = ShardStats::default();
        for l in &self.loops {
            add_shard(&mut t, &l.core);
        }
        t.retained = self
            .loops
            .iter()
            .map(|l| l.core.retained)
            .max()
            .unwrap_or(0);
        t.bytes_retained = self
            .loops
            .iter()
            .map(|l| l.core.bytes_retained)
            .max()
            .unwrap_or(0);
        t
    }

    /// Node-wide io figures: every counter summed.
    pub fn io_total(&self) -> IoStats {
        let mut t = IoStats::default();
        for l in &self.loops {
            add_io(&mut t, &l.io);
        }
        t
    }

    /// Every loop's counters merged into one snapshot (`shard` 0, no bridges; the
    /// per-loop figures stay in `loops`): what the node-wide families read.
    pub fn total(&self) -> LoopSnapshot {
        let mut t = LoopSnapshot::default();
        for l in &self.loops {
            add_loop(&mut t, l);
        }
        t.core = self.core_total();
        t
    }

    /// A loop-level counter summed over loops.
    pub fn sum(&self, f: impl Fn(&LoopSnapshot) -> u64) -> u64 {
        self.loops.iter().map(f).fold(0, u64::wrapping_add)
    }
}

/// Adds the loop-level counters of `b` into `a` (`core` is merged by
/// [`NodeSnapshot::core_total`], which knows the retained replica is not summed).
/// Destructured without `..`, so a field added to `LoopSnapshot` does not compile
/// until it is merged here.
fn add_loop(a: &mut LoopSnapshot, b: &LoopSnapshot) {
    let LoopSnapshot {
        shard: _,
        core: _,
        io,
        mesh,
        mesh_inbound_waiting,
        mesh_rejected,
        migrations_out,
        migrations_failed,
        handoffs_in,
        handoffs_expired,
        drain_timeouts,
        tls_failed,
        ws_refused,
        lingered,
        linger_refused_full,
        busy_ns,
        wall_ns,
        turns,
        latency,
        bridges: _,
    } = b;
    add_io(&mut a.io, io);
    let MeshStats {
        sent,
        overflowed,
        rejected,
    } = mesh;
    a.mesh.sent += sent;
    a.mesh.overflowed += overflowed;
    a.mesh.rejected += rejected;
    a.mesh_inbound_waiting += mesh_inbound_waiting;
    a.mesh_rejected += mesh_rejected;
    a.migrations_out += migrations_out;
    a.migrations_failed += migrations_failed;
    a.handoffs_in += handoffs_in;
    a.handoffs_expired += handoffs_expired;
    a.drain_timeouts += drain_timeouts;
    a.tls_failed += tls_failed;
    a.ws_refused.add(ws_refused);
    a.lingered += lingered;
    a.linger_refused_full += linger_refused_full;
    a.busy_ns += busy_ns;
    a.wall_ns += wall_ns;
    a.turns += turns;
    a.latency.add(latency);
}

/// Adds `b` into `a`, field by field. `b` is destructured without `..`, so a field
/// added to `ShardStats` does not compile until it is merged here.
fn add_shard(a: &mut ShardStats, b: &ShardStats) {
    let ShardStats {
        connections,
        sessions,
        sessions_expired,
        sessions_online,
        subscriptions,
        messages_in,
        messages_in_qos,
        messages_out,
        bytes_in,
        bytes_out,
        dropped_outbound_full,
        dropped_queue_full,
        dropped_too_large,
        dropped_expired,
        dropped_offline_qos0,
        dropped_retained_full,
        dropped_retained_bytes,
        dropped_retained_memory,
        dropped_no_subscriber,
        unmatched,
        store_records,
        store_records_refused,
        store_write_errors,
        store_acks_refused,
        bytes_queued,
        messages_queued,
        inflight,
        retained,
        bytes_tx,
        bytes_shared,
        bytes_retained,
        accepted,
        refused_max_connections,
        refused_per_ip,
        refused_rate,
        refused_busy,
        refused_keepalive,
        refused_handoff,
        closed_superseded,
        connect_timeouts,
        closed_packet_too_large,
        closed_protocol_error,
        closed_topic_invalid,
        refused_filters,
        refused_subscriptions,
        closed_receive_maximum,
        dropped_memory_qos0,
        closed_slow_consumer,
        closed_not_reading,
        retained_streamed,
        bytes_rx,
        bytes_routes,
        refused_max_sessions,
        route_live_count,
        route_live_total_us,
        route_live_max_us,
        route_live_slow,
        closed_memory,
        auth_bad_credentials,
        auth_not_authorized,
        auth_rate_limited,
        auth_verified,
        auth_cache_hits,
        auth_pool_busy,
        auth_jwt_verified,
        auth_jwt_refused,
        auth_jwt_expired,
        acl_denied_publish,
        acl_denied_subscribe,
        acl_denied_delivery,
        sn,
    } = b;
    a.connections += connections;
    a.sessions += sessions;
    a.sessions_expired += sessions_expired;
    a.sessions_online += sessions_online;
    a.subscriptions += subscriptions;
    a.messages_in += messages_in;
    for (x, y) in a.messages_in_qos.iter_mut().zip(messages_in_qos) {
        *x += y;
    }
    a.messages_out += messages_out;
    a.bytes_in += bytes_in;
    a.bytes_out += bytes_out;
    a.dropped_outbound_full += dropped_outbound_full;
    a.dropped_queue_full += dropped_queue_full;
    a.dropped_too_large += dropped_too_large;
    a.dropped_expired += dropped_expired;
    a.dropped_offline_qos0 += dropped_offline_qos0;
    a.dropped_retained_full += dropped_retained_full;
    a.dropped_retained_bytes += dropped_retained_bytes;
    a.dropped_retained_memory += dropped_retained_memory;
    a.dropped_no_subscriber += dropped_no_subscriber;
    a.unmatched += unmatched;
    a.store_records += store_records;
    a.store_records_refused += store_records_refused;
    a.store_write_errors += store_write_errors;
    a.store_acks_refused += store_acks_refused;
    a.bytes_queued += bytes_queued;
    a.messages_queued += messages_queued;
    a.inflight += inflight;
    a.retained += retained;
    a.bytes_tx += bytes_tx;
    a.bytes_shared += bytes_shared;
    a.bytes_retained += bytes_retained;
    a.accepted += accepted;
    a.refused_max_connections += refused_max_connections;
    a.refused_per_ip += refused_per_ip;
    a.refused_rate += refused_rate;
    a.refused_busy += refused_busy;
    a.refused_keepalive += refused_keepalive;
    a.refused_handoff += refused_handoff;
    a.closed_superseded += closed_superseded;
    a.connect_timeouts += connect_timeouts;
    a.closed_packet_too_large += closed_packet_too_large;
    a.closed_protocol_error += closed_protocol_error;
    a.closed_topic_invalid += closed_topic_invalid;
    a.refused_filters += refused_filters;
    a.refused_subscriptions += refused_subscriptions;
    a.closed_receive_maximum += closed_receive_maximum;
    a.dropped_memory_qos0 += dropped_memory_qos0;
    a.closed_slow_consumer += closed_slow_consumer;
    a.closed_not_reading += closed_not_reading;
    a.retained_streamed += retained_streamed;
    a.bytes_rx += bytes_rx;
    a.bytes_routes += bytes_routes;
    a.refused_max_sessions += refused_max_sessions;
    a.route_live_count += route_live_count;
    a.route_live_total_us += route_live_total_us;
    a.route_live_max_us = a.route_live_max_us.max(*route_live_max_us);
    a.route_live_slow += route_live_slow;
    a.closed_memory += closed_memory;
    a.auth_bad_credentials += auth_bad_credentials;
    a.auth_not_authorized += auth_not_authorized;
    a.auth_rate_limited += auth_rate_limited;
    a.auth_verified += auth_verified;
    a.auth_cache_hits += auth_cache_hits;
    a.auth_pool_busy += auth_pool_busy;
    a.auth_jwt_verified += auth_jwt_verified;
    a.auth_jwt_refused += auth_jwt_refused;
    a.auth_jwt_expired += auth_jwt_expired;
    a.acl_denied_publish += acl_denied_publish;
    a.acl_denied_subscribe += acl_denied_subscribe;
    a.acl_denied_delivery += acl_denied_delivery;
    add_sn(&mut a.sn, sn);
}

/// As [`add_shard`], for the MQTT-SN gateway's counters.
fn add_sn(a: &mut SnStats, b: &SnStats) {
    let SnStats {
        clients,
        datagrams_in,
        datagrams_out,
        bad_datagrams,
        unexpected_msgs,
        connects_refused_full,
        topic_ids_refused,
        buffered_dropped,
        oversize_dropped,
        retransmits,
        clients_lost,
        wills_published,
        send_dropped,
        forwarded,
        forward_dropped,
    } = b;
    a.clients += clients;
    a.datagrams_in += datagrams_in;
    a.datagrams_out += datagrams_out;
    a.bad_datagrams += bad_datagrams;
    a.unexpected_msgs += unexpected_msgs;
    a.connects_refused_full += connects_refused_full;
    a.topic_ids_refused += topic_ids_refused;
    a.buffered_dropped += buffered_dropped;
    a.oversize_dropped += oversize_dropped;
    a.retransmits += retransmits;
    a.clients_lost += clients_lost;
    a.wills_published += wills_published;
    a.send_dropped += send_dropped;
    a.forwarded += forwarded;
    a.forward_dropped += forward_dropped;
}

/// As [`add_shard`], for the io backend's counters.
fn add_io(a: &mut IoStats, b: &IoStats) {
    let IoStats {
        accepted,
        accept_dropped_full,
        accept_errors,
        accept_multi_armed,
        recv_nobufs,
        migrate_failed,
        migrate_refused_full,
        adopt_unpaired_reaped,
        migrate_descriptor_lost,
        migrate_slot_reclaimed,
        doorbell_retried,
        doorbell_failed,
        send_refused_busy,
        sends_resumed,
        cq_overflow,
        sq_full,
    } = b;
    a.accepted += accepted;
    a.accept_dropped_full += accept_dropped_full;
    a.accept_errors += accept_errors;
    a.accept_multi_armed += accept_multi_armed;
    a.recv_nobufs += recv_nobufs;
    a.migrate_failed += migrate_failed;
    a.migrate_refused_full += migrate_refused_full;
    a.adopt_unpaired_reaped += adopt_unpaired_reaped;
    a.migrate_descriptor_lost += migrate_descriptor_lost;
    a.migrate_slot_reclaimed += migrate_slot_reclaimed;
    a.doorbell_retried += doorbell_retried;
    a.doorbell_failed += doorbell_failed;
    a.send_refused_busy += send_refused_busy;
    a.sends_resumed += sends_resumed;
    a.cq_overflow += cq_overflow;
    a.sq_full += sq_full;
}

#[cfg(test)]
mod tests;
