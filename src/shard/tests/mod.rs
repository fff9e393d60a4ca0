//! Shard core tests: real MQTT packets through the in-memory `Cluster`, with
//! assertions on exact packets (and exact bytes where the decoded form would hide
//! the wire format).

mod auth;
mod cluster;
mod cluster_session;
mod connect;
mod contract;
mod durable;
mod durable_cluster;
mod durable_loops;
mod limits;
mod memory;
mod mesh_full;
mod payload;
mod pubsub;
mod qos;
mod retained;
mod retained_stream;
mod session;
mod v5;

use crate::config::Config;

pub(super) fn cfg() -> Config {
    Config::default()
}
