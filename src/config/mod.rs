//! Broker configuration: one flat struct with an embedded default, filled from an
//! optional TOML file and then CLI flags. Imports no other broker module but two
//! size limits (`protocol::MAX_REMAINING_LENGTH`, `ring::MAX_SHARDS`).
//!
//! The struct and its defaults live here; each concern's keys (CLI options,
//! validation, the key list) live in a file of their own:
//! - `listeners`: listener URLs, TLS files, WebSocket settings, `[[listener]]` tables;
//! - `runtime`: event loops, IO backend, busy polling, scheduling, logging;
//! - `connections`: admission limits, the CONNECT timeout, password file, anonymous;
//! - `limits`: protocol limits and keepalive;
//! - `sessions`: session expiry, queues, slow consumers, the memory mark (data dir next);
//! - `features`: optional MQTT features, retained bounds, refused filters, ACL file;
//! - `gateway`: the MQTT-SN gateway's UDP listener, predefined topics and bounds;
//! - `cluster`: the NATS server of a cluster, node name, NATS credentials and TLS;
//!
//! and the mechanism in three more: `cli` (the command line), `load` (defaults <
//! file < CLI, errors) and `value` (raw values and the checks they go through).
//! `[[bridge]]` tables are parsed by `bridge::config` (their model lives with the
//! bridge; it imports only `protocol` and `topic`).
//! The struct stays flat so the hot path reads `cfg.max_inflight`, one TOML table
//! maps onto it, and a key added in one concern touches no other's file.

mod cli;
mod cluster;
mod connections;
mod features;
mod gateway;
mod limits;
mod listeners;
mod load;
mod runtime;
mod sessions;
#[cfg(test)]
mod tests;
mod value;

use std::net::SocketAddr;

pub use cli::{Cli, Command, PasswdAction};
pub use listeners::secure_default;
pub use listeners::{
    IdentityUsername, ListenUrl, Listener, ListenerTable, Scheme, TlsSettings, WsSettings,
};
pub use load::{
    apply_toml, keys, load, load_tracked, load_tracked_with, load_with, set, ConfigError, Loaded,
    Source,
};
pub use runtime::IoBackend;
pub use sessions::{Durability, SlowConsumerPolicy};
pub use value::{Expect, Raw};

#[derive(Debug, Clone)]
pub struct Config {
    /// The `listen` URLs (plain, or TLS with the `tls` settings).
    pub listen: Vec<ListenUrl>,
    /// The `tls_*` keys: every TLS listener's, unless its `[[listener]]` table says.
    pub tls: TlsSettings,
    /// `ws_allowed_origins`: every WebSocket listener's, unless its table says; empty: any.
    pub ws_allowed_origins: Vec<String>,
    /// `ws_max_frame_bytes`, likewise.
    pub ws_max_frame_bytes: u64,
    /// The TOML `[[listener]]` tables, bound after the `listen` URLs.
    pub listener: Vec<ListenerTable>,
    /// The TOML `[[bridge]]` tables (model and parser in `crate::bridge::config`).
    pub bridge: Vec<crate::bridge::BridgeConfig>,
    /// The HTTP listener (metrics, health, status page), owned by loop 0; `None`: off.
    pub http_listen: Option<SocketAddr>,
    /// Event loops (one per core). `None`: number of available cores.
    pub shards: Option<usize>,
    pub io: IoBackend,
    pub log_level: String,
    /// `log_format = "json"`: one JSON object per log line.
    pub log_json: bool,
    /// Longest a loop spins on its completion queues before it blocks, after a turn
    /// that did work. Adaptive below this cap: it shrinks to nothing when the gaps
    /// between events are longer (an idle fleet costs no CPU). 0 = never spin.
    /// Spinning keeps the core from going idle, whose wake-up (an IPI, a VM exit on
    /// a virtual machine) costs tens of µs of latency per message at moderate rates.
    pub busy_poll_us: u32,
    /// SCHED_FIFO priority (1..=99) for the event-loop threads; 0 = the normal
    /// scheduler. Under the normal scheduler a kernel thread that wakes on a loop's
    /// core (memory reclaim, RCU, workqueues) can hold it for milliseconds before the
    /// loop runs again; a real-time loop preempts it at once.
    pub rt_priority: u8,
    /// Time slice (µs) the event-loop threads ask the normal scheduler (EEVDF, Linux
    /// 6.12+) for; 0 = the kernel's default (0.7 ms × (1 + log2 CPUs), applied at
    /// tick granularity). A loop that wakes with a shorter slice than the task on
    /// its core preempts it at once instead of waiting up to a tick (4 ms at
    /// HZ=250) for it: that wait was the p99 of the pairs latency test. Its share
    /// of the CPU stays the same. Ignored under `rt_priority`.
    pub sched_slice_us: u32,
    /// Key of the hash that places client sessions on loops (`shard::Placement`).
    /// `None`: a random key chosen at start-up (main), so nobody can compute client
    /// ids that all land on one loop. Set only for tests and debugging.
    pub placement_seed: Option<u64>,

    // Connection limits.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// New CONNECTs accepted per second per shard (token bucket, bursts of one
    /// second) before 0x9F / return code 3. 0 = unlimited.
    pub connect_rate_per_s: u32,
    /// Time allowed between TCP accept and a complete CONNECT.
    pub connect_timeout_ms: u64,
    /// Lingering close: after the last bytes of a connection the broker ended are
    /// written, its write side is shut and reads are discarded this long before the
    /// close. Closing with unread bytes makes the kernel send a reset, which can
    /// reach the client before it read our DISCONNECT/CONNACK reason. 0 = no linger.
    pub close_linger_ms: u64,
    /// Lingers each shard starts within one `close_linger_ms` at most (each holds a
    /// socket that long); beyond it connections are closed at once.
    pub max_lingering_per_shard: usize,
    /// TCP keepalive on accepted sockets (set on the listeners, which pass it on):
    /// idle seconds before the first probe (0 = off), seconds between probes, and
    /// probes unanswered before the kernel drops the connection. MQTT keepalive
    /// already ends silent clients that asked for one; these find the peers that
    /// vanished with keepalive 0, or whose NAT forgot them.
    pub tcp_keepalive_idle_s: u32,
    pub tcp_keepalive_interval_s: u32,
    pub tcp_keepalive_count: u32,
    /// `TCP_USER_TIMEOUT`: how long sent data or keepalive probes may stay
    /// unacknowledged before the connection is dropped. 0 = kernel default.
    pub tcp_user_timeout_ms: u32,
    /// Largest packet read before CONNECT completes (the CONNECT itself, when
    /// below `max_packet_size`): until then a connection is anonymous and holds at
    /// most this much receive buffer.
    pub max_connect_packet_bytes: usize,
    /// Mosquitto-format password file; `None`: no passwords are checked.
    pub password_file: Option<String>,
    /// `None` is "auto": anonymous clients are allowed only without a password file,
    /// and then the default listener is loopback only (see `secure_default`).
    pub allow_anonymous: Option<bool>,
    /// JWT authentication (on when a key file is set): the CONNECT field with the
    /// token ("password" or "username"), the key files, the username claim, the
    /// required `iss`/`aud`, and the clock skew allowed on `exp`/`nbf`.
    pub jwt_from: String,
    pub jwt_secret_file: Option<String>,
    pub jwt_public_key_file: Option<String>,
    pub jwt_username_claim: String,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_leeway_s: u64,

    // Protocol limits (advertised in CONNACK where MQTT 5 allows it).
    pub max_packet_size: u32,
    /// How many QoS 1/2 PUBLISHes a client may have unacknowledged towards us.
    pub receive_maximum: u16,
    /// Cap on our unacknowledged QoS 1/2 PUBLISHes towards one client
    /// (further limited by the client's Receive Maximum).
    pub max_inflight: u16,
    pub topic_alias_maximum: u16,
    pub max_topic_levels: usize,
    pub max_topic_len: usize,
    pub max_subscriptions_per_client: usize,
    pub max_client_id_len: usize,

    // Keepalive.
    /// Keepalives above this (or 0, none) are lowered for MQTT 5 (Server Keep Alive)
    /// and refused for 3.x (CONNACK return code 2: it cannot be told); 0 = no cap.
    pub keepalive_max_s: u16,
    /// Cap on MQTT 5 keepalives: one above it (or 0, none) is lowered to it with
    /// Server Keep Alive, a lower one is kept; 3.x clients are not affected, so one
    /// profile serves 3.x keepalive 0 and MQTT 5 clients alike.
    pub server_keep_alive_s: Option<u16>,

    // Sessions and queues.
    pub max_session_expiry_s: u32,
    /// Expiry given to sessions whose client asked for "never" (3.x clean session 0,
    /// MQTT 5 0xFFFFFFFF), before `max_session_expiry_s`. `None`: they never expire.
    pub persistent_session_expiry_s: Option<u32>,
    /// Sessions on the node (connected or not); a CONNECT that would create one more
    /// is refused with 0x97 / rc 3. Each session may hold subscriptions that every
    /// loop's routes table replicates, so this bounds their memory too.
    pub max_sessions: usize,
    pub max_queued_messages: usize,
    pub max_queued_bytes: usize,
    pub queue_qos0_offline: bool,
    /// Per-connection bytes encoded but not yet written to the socket.
    pub max_outbound_bytes: usize,
    pub slow_consumer_policy: SlowConsumerPolicy,
    /// Above this much buffered message memory on a shard (unread output, session
    /// queues, retained replica), QoS 0 is shed and new connections are refused
    /// (0x89 Server busy; 3.x: return code 3). 0 = no mark.
    pub memory_high_water_bytes: usize,
    /// Where each loop keeps its write-ahead log; `None`: nothing is written.
    pub data_dir: Option<String>,
    /// When acknowledgements may go for what persistent sessions stored; only in
    /// effect with `data_dir`.
    pub durability: Durability,

    // Features.
    pub retain_available: bool,
    pub wildcard_subscription_available: bool,
    pub subscription_identifier_available: bool,
    pub shared_subscription_available: bool,
    /// Retained messages each shard keeps. Every shard holds a replica of the whole
    /// retained store, so this bounds the node's distinct retained topics.
    pub max_retained_messages: usize,
    /// Bytes (`Message::cost_bytes`: topic + payload + 64) each shard's retained
    /// replica may hold; the node holds `shards ×` this at most.
    pub max_retained_bytes: usize,
    /// Filters that SUBSCRIBE is refused for with 0x80 (interop suites use `test/nosubscribe`).
    pub deny_subscribe: Vec<String>,
    /// Seconds between `$SYS` status publishes; 0: none.
    pub sys_interval_s: u64,
    /// Per-client `$SYS/broker/clients/<id>/connected|disconnected` events. Off by
    /// default: a connect storm would publish one message per client.
    pub sys_client_events: bool,
    /// Mosquitto-format ACL file; `None`: everything is allowed.
    pub acl_file: Option<String>,

    // MQTT-SN gateway (per loop: each loop owns the SN clients whose ids it owns).
    /// UDP address of the MQTT-SN gateway; `None`: off.
    pub mqttsn_listen: Option<SocketAddr>,
    /// `ID TOPIC` lines read at start-up; shared by every client and loop.
    pub mqttsn_predefined_topics_file: Option<String>,
    pub mqttsn_max_clients: usize,
    pub mqttsn_max_topic_ids: usize,
    /// Sleep buffer and wait-for-ack queue of one client, in messages.
    pub mqttsn_max_buffered_msgs: usize,
    pub mqttsn_max_datagram_bytes: usize,
    /// Tretry and Nretry (spec 6.13) of the gateway's QoS 1/2 sends and REGISTERs.
    pub mqttsn_retry_interval_ms: u64,
    pub mqttsn_max_retries: u32,
    /// ADVERTISE period (0: none) and where it is sent; both set for ADVERTISE.
    pub mqttsn_advertise_interval_s: u64,
    pub mqttsn_advertise_address: Option<SocketAddr>,
    // Cluster (src/cluster). Empty `cluster_nats`: single node.
    pub cluster_nats: Vec<String>,
    /// Unique per node: the origin of its messages on NATS. "": random per start.
    pub cluster_node_name: String,
    pub cluster_nats_user: String,
    pub cluster_nats_password: String,
    pub cluster_nats_creds_file: Option<String>,
    /// Prefix of the node's NATS reply subjects ("": async-nats's `_INBOX`), so NATS
    /// permissions can keep other users of the account from reading them.
    pub cluster_nats_inbox_prefix: String,
    pub cluster_nats_tls_ca_file: Option<String>,
    pub cluster_nats_tls_cert_file: Option<String>,
    pub cluster_nats_tls_key_file: Option<String>,
    /// JetStream replicas of the KV buckets: a bucket survives the loss of
    /// `replicas / 2` NATS servers (rounded down).
    pub cluster_kv_replicas: usize,
    /// How often a node puts its heartbeat in the cluster.
    pub cluster_beat_ms: u64,
    /// A node whose heartbeat no server has acknowledged for this long (by its own
    /// monotonic clock, from the send of the last acknowledged one) fences itself:
    /// it closes the connections whose wills it registered in the cluster, before
    /// any survivor may take it for dead (`cluster/wills.rs`). Below
    /// `cluster_dead_after_ms - cluster_beat_ms` (`config/cluster.rs` `check`).
    pub cluster_fence_after_ms: u64,
    /// A heartbeat older than this (server time) is a dead node's: survivors publish
    /// its wills. The same on every node.
    pub cluster_dead_after_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![ListenUrl {
                scheme: Scheme::Mqtt,
                addr: SocketAddr::from(([0, 0, 0, 0], 1883)),
                path: String::new(),
            }],
            tls: TlsSettings::default(),
            ws_allowed_origins: Vec::new(),
            ws_max_frame_bytes: listeners::DEFAULT_WS_MAX_FRAME_BYTES,
            listener: Vec::new(),
            bridge: Vec::new(),
            // Loopback only: the endpoints are unauthenticated and name every counter.
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9883))),
            shards: None,
            io: IoBackend::Auto,
            log_level: "info".to_string(),
            log_json: false,
            busy_poll_us: 0,
            rt_priority: 0,
            sched_slice_us: 0,
            placement_seed: None,
            max_connections: 1_000_000,
            max_connections_per_ip: 0,
            connect_rate_per_s: 0,
            connect_timeout_ms: 10_000,
            // Long enough for a client on a slow link to read one packet, short
            // enough that a refused client costs its socket for one second.
            close_linger_ms: 1_000,
            max_lingering_per_shard: 4_096,
            // Defaults: the first probe after 2 min idle, below the idle timeouts of
            // common NATs and cloud load balancers for established TCP (~4-10 min),
            // so probes also keep such mappings alive; then 4 probes 30 s apart: a
            // dead peer is dropped within 120 + 4 x 30 = 240 s. TCP_USER_TIMEOUT is
            // that same 240 s: it overrides the probe count when both apply (tcp(7)),
            // so a shorter one would cut keepalive short, and it bounds a peer that
            // vanished while we had unacknowledged data to send.
            tcp_keepalive_idle_s: 120,
            tcp_keepalive_interval_s: 30,
            tcp_keepalive_count: 4,
            tcp_user_timeout_ms: 240_000,
            // A CONNECT is a client id, a will, a user name and a password: 64 KiB
            // holds every realistic one (each field could reach 64 KiB on its own,
            // but no client sends that; Mosquitto refuses ids over 65535 as well).
            max_connect_packet_bytes: 64 * 1024,
            password_file: None,
            allow_anonymous: None,
            jwt_from: "password".to_string(),
            jwt_secret_file: None,
            jwt_public_key_file: None,
            jwt_username_claim: "username".to_string(),
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_s: 5,
            max_packet_size: 1024 * 1024,
            receive_maximum: 1024,
            max_inflight: 1024,
            topic_alias_maximum: 64,
            max_topic_levels: 32,
            max_topic_len: 1024,
            max_subscriptions_per_client: 1000,
            max_client_id_len: 256,
            keepalive_max_s: 0,
            server_keep_alive_s: None,
            max_session_expiry_s: u32::MAX,
            // EMQX's default for the same case (its `session_expiry_interval`, 2 h);
            // Mosquitto keeps them forever (`persistent_client_expiration` off).
            // Without a data directory a session does not outlive the process anyway,
            // and one that nobody resumes for hours (a retired device, an id that
            // changed) would otherwise hold its subscriptions on every loop and its
            // queue until restart. See README's limits table.
            persistent_session_expiry_s: Some(2 * 3600),
            // Twice the default max_connections: every connected client keeps one
            // and as many again can wait offline before new ids are refused.
            max_sessions: 2_000_000,
            max_queued_messages: 1000,
            max_queued_bytes: 1024 * 1024,
            queue_qos0_offline: false,
            max_outbound_bytes: 1024 * 1024,
            slow_consumer_policy: SlowConsumerPolicy::Drop,
            // Per shard; far above a healthy shard's buffers, well below what 100k
            // stalled subscribers could otherwise pin (100k × max_outbound_bytes).
            memory_high_water_bytes: 1 << 30,
            // No data directory unless one is named: many brokers (tests, several
            // instances on one host) would otherwise fight over one default path.
            data_dir: None,
            // Once a data directory is named, operators expect persistent sessions to
            // survive a restart or crash; fsync costs a disk flush per group commit.
            durability: Durability::Process,
            retain_available: true,
            wildcard_subscription_available: true,
            subscription_identifier_available: true,
            shared_subscription_available: true,
            max_retained_messages: 1_000_000,
            // A quarter of the default memory mark: retained data alone never pushes
            // a shard over it.
            max_retained_bytes: 256 << 20,
            deny_subscribe: Vec::new(),
            sys_interval_s: 10,
            sys_client_events: false,
            acl_file: None,
            mqttsn_listen: None,
            mqttsn_predefined_topics_file: None,
            // Spec 6.13 suggests Tretry 10-15 s and Nretry 3-5; the other bounds keep
            // a sleeping fleet's buffers to a few MB per loop.
            mqttsn_max_clients: 10_000,
            mqttsn_max_topic_ids: 256,
            mqttsn_max_buffered_msgs: 64,
            mqttsn_max_datagram_bytes: 1_024,
            mqttsn_retry_interval_ms: 10_000,
            mqttsn_max_retries: 5,
            mqttsn_advertise_interval_s: 0,
            mqttsn_advertise_address: None,
            cluster_nats: Vec::new(),
            cluster_node_name: String::new(),
            cluster_nats_user: String::new(),
            cluster_nats_password: String::new(),
            cluster_nats_creds_file: None,
            cluster_nats_inbox_prefix: String::new(),
            cluster_nats_tls_ca_file: None,
            cluster_nats_tls_cert_file: None,
            cluster_nats_tls_key_file: None,
            cluster_kv_replicas: 1,
            cluster_beat_ms: 1_000,
            cluster_fence_after_ms: 3_000,
            cluster_dead_after_ms: 5_000,
        }
    }
}

impl Config {
    /// Whether clients without a username are let in: explicit, or (auto) only when
    /// no password file and no JWT key is configured.
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous
            .unwrap_or(self.password_file.is_none() && !self.jwt_enabled())
    }

    /// JWT authentication is on when a key is configured.
    pub fn jwt_enabled(&self) -> bool {
        self.jwt_secret_file.is_some() || self.jwt_public_key_file.is_some()
    }

    /// The durability in effect: `None` without a data directory.
    pub fn store_mode(&self) -> Durability {
        match self.data_dir {
            Some(_) => self.durability,
            None => Durability::None,
        }
    }
}
