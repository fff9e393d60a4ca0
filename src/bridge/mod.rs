//! MQTT bridges (`[[bridge]]` tables): connections from this broker to remote
//! brokers that forward selected topics in either direction, as Mosquitto's bridges
//! do. Sans-IO: `config` parses a table, `rules` maps topics between the two sides,
//! and `client` is the client state machine towards the remote (CONNECT, SUBSCRIBE,
//! QoS 0/1/2 both ways, keepalive, reconnect with backoff and jitter, the bounded
//! outgoing queue). Imports `protocol` and `topic` only.
//!
//! Loop prevention: a message must not come back to the side it left.
//! - Remote side, MQTT 5: the `in` subscriptions carry No Local, so the remote never
//!   sends back what this bridge published there.
//! - Remote side, MQTT 3.1.1: there is no No Local, so the bridge does what Mosquitto
//!   does with `try_private true`: it sends protocol level 0x84 (0x80 | 4) in CONNECT,
//!   which tells a Mosquitto remote that the client is a bridge; Mosquitto then does
//!   not send a bridge the messages it published itself. A remote that refuses the
//!   level gets a plain 3.1.1 CONNECT on the next attempt; a `both` rule towards such
//!   a remote then echoes each outgoing message back once (the local side below stops
//!   it there).
//! - Local side: the local subscriptions of the `out` rules are made with No Local on
//!   the very session that publishes the remote's messages locally, so a message that
//!   came in is never sent back out.

pub mod client;
pub mod config;
pub mod link;
pub mod rules;
#[cfg(test)]
mod seam_tests;
#[cfg(test)]
mod tests;

pub use client::{BridgeClient, BridgeStats, LocalPublish, Transport};
pub use config::{parse_bridges, BridgeConfig, BridgeConfigError, BridgeTls, Direction, TopicRule};
