//! Several ringmq nodes serving one fleet, on NATS as the inter-node engine (issue
//! #17; the design is docs/ARCHITECTURE.md, "Cluster").
//!
//! Sans-IO parts, tested without NATS: `subject` (the reversible MQTT topic/filter ↔
//! NATS subject mapping), `interest` (which loops hold which filters, and so which
//! NATS subscriptions the node holds), `headers` (the MQTT metadata of a forwarded
//! message, the retained KV value). `bridge` is the loops' end of the bounded rings
//! to and from the cluster thread; `link` is the cluster thread: the async-nats
//! client on a current-thread tokio runtime; `sessions` its session ownership (KV
//! compare-and-set) and takeover requests between nodes; `wills` the heartbeats and
//! the wills bucket that let a survivor publish a dead node's wills once, and
//! `sweep` the survivors' taking of them; `health`
//! what besides the connection makes the node unhealthy (JetStream parts missing, a
//! duplicate node name) and when ids served locally are settled again; `retained`
//! the retained bucket's writer (latest value per topic) and watch.
//! `ClusterError` is this layer's one error enum.

pub mod bridge;
pub mod headers;
pub mod health;
pub mod interest;
#[cfg(not(loom))]
pub mod link;
#[cfg(not(loom))]
pub mod retained;
#[cfg(not(loom))]
pub mod sessions;
pub mod subject;
#[cfg(not(loom))]
pub mod sweep;
#[cfg(test)]
mod tests;
#[cfg(not(loom))]
pub mod wills;

use std::fmt;

/// Bound on a CONNECT's session claim, in ms (`sessions::CLAIM_TIMEOUT`); here so
/// the config check (`connect_timeout_ms` must be above it) builds without the
/// cluster thread.
pub const CLAIM_TIMEOUT_MS: u64 = 4_000;

/// What can go wrong in the cluster layer. None of it reaches an MQTT client as a
/// reason code: a message from NATS that cannot be read is dropped and counted
/// (`ClusterStats`), and the NATS connection's failures show in `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterError {
    /// A subject ringmq would not have made (wrong prefix, bad escape).
    BadSubject,
    /// A header missing or malformed (named).
    BadHeader(&'static str),
    /// A retained entry's key or value that does not decode.
    BadRetained,
    /// The NATS connection or a JetStream/KV call failed (the client's message).
    Nats(String),
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::BadSubject => f.write_str("subject not made by ringmq"),
            ClusterError::BadHeader(h) => write!(f, "missing or malformed header {h}"),
            ClusterError::BadRetained => f.write_str("retained entry does not decode"),
            ClusterError::Nats(e) => write!(f, "nats: {e}"),
        }
    }
}

impl std::error::Error for ClusterError {}

pub use bridge::{ClusterStatus, LoopLink};
