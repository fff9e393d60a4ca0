//! MQTT-SN gateway keys: the UDP listener (off by default), the predefined-topics
//! file, and the gateway's bounds per loop (clients, topic ids, sleep buffer,
//! datagram size) and retransmission (Tretry, Nretry), and ADVERTISE broadcasts
//! (off by default). Each bound has a counter (`ShardStats::sn_*`).

use clap::Args;

use super::cli::{d, with_default};
use super::value::{addr, int, optional_path, push_text, usize_of, Expect, Raw};
use super::Config;

#[derive(Args, Debug, Default, Clone)]
pub struct GatewayArgs {
    #[arg(long, value_name = "ADDR", help = with_default("UDP address of the MQTT-SN 1.2 gateway (e.g. 0.0.0.0:1884); none turns it off", "none"))]
    pub mqttsn_listen: Option<String>,
    /// File of predefined topic ids, one `ID TOPIC` a line; read at start-up.
    /// Default: none.
    #[arg(long, value_name = "FILE")]
    pub mqttsn_predefined_topics_file: Option<String>,
    #[arg(long, value_name = "N", help = with_default("MQTT-SN clients each loop holds (awake, asleep or connecting); CONNECTs beyond it get rc 0x01 (congestion)", d().mqttsn_max_clients))]
    pub mqttsn_max_clients: Option<String>,
    #[arg(long, value_name = "N", help = with_default("Normal topic ids (REGISTER either way) per MQTT-SN client; beyond it REGACK rc 0x02", d().mqttsn_max_topic_ids))]
    pub mqttsn_max_topic_ids: Option<String>,
    #[arg(long, value_name = "N", help = with_default("Messages queued per MQTT-SN client while it sleeps or awaits an ack; beyond it new ones are dropped", d().mqttsn_max_buffered_msgs))]
    pub mqttsn_max_buffered_msgs: Option<String>,
    #[arg(long, value_name = "BYTES", help = with_default("Largest MQTT-SN datagram taken or sent; larger ones are dropped and counted", d().mqttsn_max_datagram_bytes))]
    pub mqttsn_max_datagram_bytes: Option<String>,
    #[arg(long, value_name = "MS", help = with_default("Tretry: wait for an MQTT-SN client's ack before the gateway sends again", d().mqttsn_retry_interval_ms))]
    pub mqttsn_retry_interval_ms: Option<String>,
    #[arg(long, value_name = "N", help = with_default("Nretry: retransmissions before an MQTT-SN client is lost (its will is published)", d().mqttsn_max_retries))]
    pub mqttsn_max_retries: Option<String>,
    #[arg(long, value_name = "S", help = with_default("Seconds between the MQTT-SN gateway's ADVERTISE broadcasts (spec 6.1; its Duration field); 0 = none (the gateway still answers SEARCHGW). Needs --mqttsn-advertise-address", d().mqttsn_advertise_interval_s))]
    pub mqttsn_advertise_interval_s: Option<String>,
    #[arg(long, value_name = "ADDR", help = with_default("Where ADVERTISE goes: the SN network's broadcast address and port (e.g. 192.168.1.255:1884 or 255.255.255.255:1884); none = no ADVERTISE", "none"))]
    pub mqttsn_advertise_address: Option<String>,
}

pub(super) const KEYS: &[&str] = &[
    "mqttsn_listen",
    "mqttsn_predefined_topics_file",
    "mqttsn_max_clients",
    "mqttsn_max_topic_ids",
    "mqttsn_max_buffered_msgs",
    "mqttsn_max_datagram_bytes",
    "mqttsn_retry_interval_ms",
    "mqttsn_max_retries",
    "mqttsn_advertise_interval_s",
    "mqttsn_advertise_address",
];

/// Applies one key of this part. `Ok(false)`: not one of its keys.
pub(super) fn set(cfg: &mut Config, key: &str, raw: &Raw) -> Result<bool, Expect> {
    match key {
        "mqttsn_listen" => {
            let off = matches!(raw, Raw::Text(s) if s.trim().eq_ignore_ascii_case("none"));
            cfg.mqttsn_listen = if off {
                None
            } else {
                Some(addr(raw).map_err(|e| format!("{e}, or none"))?)
            };
        }
        "mqttsn_predefined_topics_file" => cfg.mqttsn_predefined_topics_file = optional_path(raw)?,
        "mqttsn_max_clients" => cfg.mqttsn_max_clients = usize_of(int(raw, 1, 1 << 24)?),
        // Normal ids are 1..=0xFFFE less the predefined ones.
        "mqttsn_max_topic_ids" => cfg.mqttsn_max_topic_ids = usize_of(int(raw, 1, 0xFFFE)?),
        "mqttsn_max_buffered_msgs" => {
            cfg.mqttsn_max_buffered_msgs = usize_of(int(raw, 1, 1 << 20)?)
        }
        // A CONNACK is 3 bytes; the 3-byte length form caps a message at 65535.
        "mqttsn_max_datagram_bytes" => {
            cfg.mqttsn_max_datagram_bytes = usize_of(int(raw, 16, 65_535)?)
        }
        "mqttsn_retry_interval_ms" => cfg.mqttsn_retry_interval_ms = int(raw, 10, 3_600_000)?,
        "mqttsn_max_retries" => cfg.mqttsn_max_retries = int(raw, 0, 100)? as u32,
        // ADVERTISE's Duration field is 2 octets of seconds.
        "mqttsn_advertise_interval_s" => cfg.mqttsn_advertise_interval_s = int(raw, 0, 65_535)?,
        "mqttsn_advertise_address" => {
            let off = matches!(raw, Raw::Text(s) if s.trim().eq_ignore_ascii_case("none"));
            cfg.mqttsn_advertise_address = if off {
                None
            } else {
                Some(addr(raw).map_err(|e| format!("{e}, or none"))?)
            };
        }
        _ => return Ok(false),
    }
    Ok(true)
}

impl GatewayArgs {
    pub(super) fn values(&self, v: &mut Vec<(&'static str, Raw)>) {
        push_text(v, "mqttsn_listen", &self.mqttsn_listen);
        push_text(
            v,
            "mqttsn_predefined_topics_file",
            &self.mqttsn_predefined_topics_file,
        );
        push_text(v, "mqttsn_max_clients", &self.mqttsn_max_clients);
        push_text(v, "mqttsn_max_topic_ids", &self.mqttsn_max_topic_ids);
        push_text(
            v,
            "mqttsn_max_buffered_msgs",
            &self.mqttsn_max_buffered_msgs,
        );
        push_text(
            v,
            "mqttsn_max_datagram_bytes",
            &self.mqttsn_max_datagram_bytes,
        );
        push_text(
            v,
            "mqttsn_retry_interval_ms",
            &self.mqttsn_retry_interval_ms,
        );
        push_text(v, "mqttsn_max_retries", &self.mqttsn_max_retries);
        push_text(
            v,
            "mqttsn_advertise_interval_s",
            &self.mqttsn_advertise_interval_s,
        );
        push_text(
            v,
            "mqttsn_advertise_address",
            &self.mqttsn_advertise_address,
        );
    }
}
