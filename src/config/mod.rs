//! Broker configuration: one flat struct with an embedded default, filled from an
//! optional TOML file and then CLI flags. Imports no other broker module but two
//! size limits (`protocol::MAX_REMAINING_LENGTH`, `ring::MAX_SHARDS`).
//!
//! The struct and its defaults live here; each concern's keys (CLI options,
//! validation, the key list) live in a file of their own:
//! - `listeners`: listener URLs, TLS files, `[[listener]]` tables (WebSocket next);
//! - `runtime`: event loops, IO backend, busy polling, scheduling, logging;
//! - `connections`: admission limits and the CONNECT timeout (auth next);
//! - `limits`: protocol limits and keepalive;
//! - `sessions`: session expiry, queues, slow consumers, the memory mark (data dir next);
//! - `features`: optional MQTT features, retained bounds, refused filters (ACLs next);
//!
//! and the mechanism in three more: `cli` (the command line), `load` (defaults <
//! file < CLI, errors) and `value` (raw values and the checks they go through).
//! The struct stays flat so the hot path reads `cfg.max_inflight`, one TOML table
//! maps onto it, and a key added in one concern touches no other's file.

mod cli;
mod connections;
mod features;
mod limits;
mod listeners;
mod load;
mod runtime;
mod sessions;
#[cfg(test)]
mod tests;
mod value;

pub use cli::{Cli, Command};
pub use listeners::{IdentityUsername, ListenUrl, Listener, ListenerTable, Scheme, TlsSettings};
pub use load::{
    apply_toml, keys, load, load_tracked, load_tracked_with, load_with, set, ConfigError, Loaded,
    Source,
};
pub use runtime::IoBackend;
pub use sessions::SlowConsumerPolicy;
pub use value::{Expect, Raw};

#[derive(Debug, Clone)]
pub struct Config {
    /// The `listen` URLs (plain, or TLS with the `tls` settings).
    pub listen: Vec<ListenUrl>,
    /// The `tls_*` keys: every TLS listener's, unless its `[[listener]]` table says.
    pub tls: TlsSettings,
    /// The TOML `[[listener]]` tables, bound after the `listen` URLs.
    pub listener: Vec<ListenerTable>,
    /// Event loops (one per core). `None`: number of available cores.
    pub shards: Option<usize>,
    pub io: IoBackend,
    pub log_level: String,
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

    // Connection limits.
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// New CONNECTs accepted per second per shard (token bucket, bursts of one
    /// second) before 0x9F / return code 3. 0 = unlimited.
    pub connect_rate_per_s: u32,
    /// Time allowed between TCP accept and a complete CONNECT.
    pub connect_timeout_ms: u64,

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
    /// Server Keep Alive sent to every MQTT 5 client when set.
    pub server_keep_alive_s: Option<u16>,

    // Sessions and queues.
    pub max_session_expiry_s: u32,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![ListenUrl {
                scheme: Scheme::Mqtt,
                addr: std::net::SocketAddr::from(([0, 0, 0, 0], 1883)),
            }],
            tls: TlsSettings::default(),
            listener: Vec::new(),
            shards: None,
            io: IoBackend::Auto,
            log_level: "info".to_string(),
            busy_poll_us: 0,
            rt_priority: 0,
            max_connections: 1_000_000,
            max_connections_per_ip: 0,
            connect_rate_per_s: 0,
            connect_timeout_ms: 10_000,
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
            max_queued_messages: 1000,
            max_queued_bytes: 1024 * 1024,
            queue_qos0_offline: false,
            max_outbound_bytes: 1024 * 1024,
            slow_consumer_policy: SlowConsumerPolicy::Drop,
            // Per shard; far above a healthy shard's buffers, well below what 100k
            // stalled subscribers could otherwise pin (100k × max_outbound_bytes).
            memory_high_water_bytes: 1 << 30,
            retain_available: true,
            wildcard_subscription_available: true,
            subscription_identifier_available: true,
            shared_subscription_available: true,
            max_retained_messages: 1_000_000,
            // A quarter of the default memory mark: retained data alone never pushes
            // a shard over it.
            max_retained_bytes: 256 << 20,
            deny_subscribe: Vec::new(),
        }
    }
}
