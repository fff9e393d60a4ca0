//! ringmq: an MQTT 3.1 / 3.1.1 / 5.0 broker with one io_uring event loop per core.
//!
//! Layers, dependencies pointing downward only (see docs/ARCHITECTURE.md):
//! `worker` joins `io`, `ring` and `shard`; `shard` owns `session`s and a `topic` index;
//! `protocol`, `topic`, `ring`, `config` and `store` import no other broker module
//! (`arena`, a leaf utility of chunked tables, is used by `topic`). `gateway` (MQTT-SN)
//! imports only `protocol`: its sessions reach the shard as virtual MQTT connections.
//! `bridge` (MQTT bridges) imports only `protocol` and `topic`, and reaches the shard
//! the same way; `worker::bridges` does its IO.

mod arena;
pub mod auth;
pub mod bridge;
pub mod cluster;
pub mod config;
pub mod gateway;
pub mod io;
pub mod metrics;
pub mod protocol;
pub mod ring;
pub mod session;
pub mod shard;
pub mod store;
/// Fuzzing and test entry points (`testkit` feature); not the broker's API.
#[cfg(any(test, feature = "testkit"))]
#[doc(hidden)]
pub use shard::testkit;
pub mod topic;
pub mod transport;
pub mod tx;
pub mod worker;
