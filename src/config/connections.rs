//! Connection admission keys: how many connections the broker holds, per client
//! address, how fast new ones are admitted, and how long a CONNECT may take.
//! Auth checks at CONNECT land beside these.

use clap::Args;

use super::cli::{d, with_default};
use super::value::{int, push_text, usize_of, Expect, Raw, U32, USIZE};
use super::Config;

/// The largest MQTT packet: the longest remaining length plus its 5-byte header.
const MAX_PACKET: u64 = crate::protocol::MAX_REMAINING_LENGTH as u64 + 5;

#[derive(Args, Debug, Default, Clone)]
pub struct ConnectionArgs {
    #[arg(long, value_name = "N", help = with_default("Connections the broker holds in total; by default lowered to what the io_uring tables hold", d().max_connections))]
    pub max_connections: Option<String>,
    #[arg(long, value_name = "N", help = with_default("Connections per client IP address; 0 = no limit", d().max_connections_per_ip))]
    pub max_connections_per_ip: Option<String>,
    #[arg(long, value_name = "N", help = with_default("New CONNECTs per second per shard; 0 = no limit", d().connect_rate_per_s))]
    pub connect_rate_per_s: Option<String>,
    #[arg(long, value_name = "MS", help = with_default("Milliseconds allowed from TCP accept to a complete CONNECT", d().connect_timeout_ms))]
    pub connect_timeout_ms: Option<String>,
    #[arg(long, value_name = "BYTES", help = with_default("Largest packet read before CONNECT completes (the CONNECT itself, lowered to max_packet_size); a larger one is refused (MQTT 5: CONNACK 0x95) and closed", d().max_connect_packet_bytes))]
    pub max_connect_packet_bytes: Option<String>,
}

pub(super) const KEYS: &[&str] = &[
    "max_connections",
    "max_connections_per_ip",
    "connect_rate_per_s",
    "connect_timeout_ms",
    "max_connect_packet_bytes",
];

/// Applies one key of this part. `Ok(false)`: not one of its keys.
pub(super) fn set(cfg: &mut Config, key: &str, raw: &Raw) -> Result<bool, Expect> {
    match key {
        "max_connections" => cfg.max_connections = usize_of(int(raw, 1, USIZE)?),
        "max_connections_per_ip" => cfg.max_connections_per_ip = usize_of(int(raw, 0, USIZE)?),
        "connect_rate_per_s" => cfg.connect_rate_per_s = int(raw, 0, U32)? as u32,
        "connect_timeout_ms" => cfg.connect_timeout_ms = int(raw, 1, U32)?,
        "max_connect_packet_bytes" => {
            cfg.max_connect_packet_bytes = usize_of(int(raw, 1, MAX_PACKET)?)
        }
        _ => return Ok(false),
    }
    Ok(true)
}

impl ConnectionArgs {
    pub(super) fn values(&self, v: &mut Vec<(&'static str, Raw)>) {
        push_text(v, "max_connections", &self.max_connections);
        push_text(v, "max_connections_per_ip", &self.max_connections_per_ip);
        push_text(v, "connect_rate_per_s", &self.connect_rate_per_s);
        push_text(v, "connect_timeout_ms", &self.connect_timeout_ms);
        push_text(
            v,
            "max_connect_packet_bytes",
            &self.max_connect_packet_bytes,
        );
    }
}
