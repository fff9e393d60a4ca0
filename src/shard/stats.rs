//! The shard's counters ([`ShardStats`]): gauges of what it holds and one counter
//! per drop, refusal and close reason, read by the worker's report and the tests.

/// Counters of one shard. Gauges (connections, sessions, subscriptions,
/// bytes_queued, retained) are current values; the rest only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Connections accepted or adopted and not yet released.
    pub connections: usize,
    pub sessions: usize,
    /// Offline sessions ended because their Session Expiry Interval passed.
    pub sessions_expired: u64,
    /// Sessions with a connection attached. Filled by `Shard::stats_snapshot` (a walk
    /// of the sessions at scrape time), not kept up to date on the hot path.
    pub sessions_online: usize,
    /// Subscriptions of the sessions on this shard.
    pub subscriptions: usize,
    /// PUBLISHes received from clients on this shard (wills included).
    pub messages_in: u64,
    /// `messages_in` by QoS (index 0, 1, 2).
    pub messages_in_qos: [u64; 3],
    /// PUBLISHes encoded for clients of this shard (resends included).
    pub messages_out: u64,
    /// Bytes read from clients of this shard (every packet, counted per read).
    pub bytes_in: u64,
    /// Bytes handed to the IO side for clients of this shard (counted per flush).
    pub bytes_out: u64,
    /// QoS 0 copies dropped because the connection's outbound buffer was full.
    pub dropped_outbound_full: u64,
    /// Copies dropped because a session queue was at its message or byte bound.
    pub dropped_queue_full: u64,
    /// Copies dropped because they exceed the client's Maximum Packet Size.
    pub dropped_too_large: u64,
    /// Retained copies written by the retained streams (`stream.rs`).
    pub retained_streamed: u64,
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
    /// Messages published on this loop that matched no subscription of this node (no
    /// local subscriber, no other loop's route, no shared group): acknowledged and
    /// gone, as MQTT allows. In a cluster they may still reach other nodes.
    pub unmatched: u64,
    /// Records appended to this loop's write-ahead log (durability on).
    pub store_records: u64,
    /// Records refused by the log (stopped after a failed fdatasync, or too large):
    /// what depends on them is never acknowledged.
    pub store_records_refused: u64,
    /// Log writes or syncs that failed (ENOSPC, EIO, ...).
    pub store_write_errors: u64,
    /// Acknowledgements withheld (3.x) or sent as 0x97 (MQTT 5) because their
    /// records could not be written.
    pub store_acks_refused: u64,
    /// Bytes of messages waiting in session queues on this shard.
    pub bytes_queued: usize,
    /// Messages waiting in session queues; filled by `Shard::stats_snapshot`.
    pub messages_queued: usize,
    /// Outbound QoS 1/2 messages sent and not yet acknowledged; filled by
    /// `Shard::stats_snapshot`.
    pub inflight: usize,
    /// Retained messages in this shard's replica.
    pub retained: usize,
    /// Bytes encoded into connection buffers and not yet taken by the IO side,
    /// each connection's own bytes only (headers, small packets): a shared payload
    /// segment is counted once, in `bytes_shared`.
    pub bytes_tx: usize,
    /// Shared payloads (at least `tx::SHARE_MIN_BYTES`) this shard made and that are
    /// still referenced anywhere on the node (outbound segments, queues, windows,
    /// other loops), each counted once. Refreshed at each publish and scrape.
    pub bytes_shared: usize,
    /// Bytes (`Message::cost_bytes`) of the retained replica.
    pub bytes_retained: usize,
    /// Capacity of the connections' receive buffers: partial frames (and, before
    /// CONNECT, the CONNECT being read). Idle connections hold none.
    pub bytes_rx: usize,
    /// Filter trie (`TopicTrie::approx_bytes`): local subscriptions and the routes
    /// table rows replicated from the other shards.
    pub bytes_routes: usize,

    /// Connections accepted by this shard (not those adopted after a hand-off, which
    /// another shard accepted).
    pub accepted: u64,

    // Hostile input and overload: one counter per limit.
    /// CONNECTs refused with 0x97 / rc 3: node over `max_connections`.
    pub refused_max_connections: u64,
    /// CONNECTs refused with 0x97 / rc 3: source IP over `max_connections_per_ip`.
    pub refused_per_ip: u64,
    /// CONNECTs refused with 0x97 / rc 3: a new session would pass `max_sessions`.
    pub refused_max_sessions: u64,
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
    /// Route adds of other shards applied here, and how long each took from the
    /// start of the sender's turn that read the SUBSCRIBE to the start of the turn
    /// here that applied it (µs; sum, max, and how many took longer than
    /// `routes::ROUTE_LIVE_SLOW_US`). A mesh hop is the floor.
    pub route_live_count: u64,
    pub route_live_total_us: u64,
    pub route_live_max_us: u64,
    pub route_live_slow: u64,
    /// Connections closed (0x89) because their partial frame grew past
    /// `RX_OVER_MARK_BYTES` while the shard was over `memory_high_water_bytes`.
    pub closed_memory: u64,

    // Authentication and ACLs (src/auth).
    /// CONNECTs refused with 0x86 / rc 4: unknown user, wrong or missing password.
    pub auth_bad_credentials: u64,
    /// CONNECTs refused with 0x87 / rc 5: anonymous not allowed, or a will topic the
    /// ACL does not let the client write.
    pub auth_not_authorized: u64,
    /// CONNECTs refused with 0x86 / rc 4 without a hash check: their source address
    /// failed too often lately.
    pub auth_rate_limited: u64,
    /// Password hashes checked on the verifier pool, and answered from the cache.
    pub auth_verified: u64,
    pub auth_cache_hits: u64,
    /// CONNECTs refused with 0x89 / rc 3 because the verifier pool's queue was full.
    pub auth_pool_busy: u64,
    /// JWTs accepted, and refused (bad signature or key, expired, not yet valid,
    /// wrong issuer or audience, no username claim, malformed `acl` claim); a refused
    /// one is also counted in `auth_bad_credentials` or `auth_not_authorized`.
    pub auth_jwt_verified: u64,
    pub auth_jwt_refused: u64,
    /// Connections ended (v5 DISCONNECT 0xA0) because their JWT reached `exp`.
    pub auth_jwt_expired: u64,
    /// PUBLISHes the ACL refused (v5: PUBACK/PUBREC 0x87; 3.x: dropped).
    pub acl_denied_publish: u64,
    /// SUBSCRIBE filters the ACL refused (0x87 / 0x80).
    pub acl_denied_subscribe: u64,
    /// Copies not delivered because the subscriber may not read the topic.
    pub acl_denied_delivery: u64,

    /// The MQTT-SN gateway of this loop (zero when it is off). The worker fills it
    /// from the gateway's own counters; the shard only carries it to the snapshot.
    pub sn: SnStats,
}

/// The MQTT-SN gateway's figures for one loop: one counter per bound and per kind
/// of dropped datagram (`mqttsn_*` config keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnStats {
    /// Clients held (awake, asleep or mid-CONNECT); a gauge.
    pub clients: usize,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    /// Datagrams that did not decode or were over `mqttsn_max_datagram_bytes`.
    pub bad_datagrams: u64,
    /// Well-formed messages that make no sense in the sender's state.
    pub unexpected_msgs: u64,
    /// CONNECTs refused (rc 0x03) at `mqttsn_max_clients`.
    pub connects_refused_full: u64,
    /// REGISTERs refused at `mqttsn_max_topic_ids`.
    pub topic_ids_refused: u64,
    /// Messages dropped at `mqttsn_max_buffered_msgs`.
    pub buffered_dropped: u64,
    /// Deliveries that would encode over `mqttsn_max_datagram_bytes`.
    pub oversize_dropped: u64,
    pub retransmits: u64,
    pub clients_lost: u64,
    pub wills_published: u64,
    /// Datagrams the socket would not take (send buffer full): dropped; the
    /// gateway's retransmission covers QoS 1/2.
    pub send_dropped: u64,
    /// Datagrams received on this loop for a client another loop owns, passed on
    /// over the mesh, and those dropped because the mesh was full.
    pub forwarded: u64,
    pub forward_dropped: u64,
}

impl ShardStats {
    /// Memory buffered on the shard, compared with `memory_high_water_bytes`:
    /// unread output, shared payloads, queued and retained messages, receive
    /// buffers, route rows.
    pub fn memory_bytes(&self) -> usize {
        self.bytes_tx
            + self.bytes_shared
            + self.bytes_queued
            + self.bytes_retained
            + self.bytes_rx
            + self.bytes_routes
    }
}
