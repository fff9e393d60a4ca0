//! Protocol limit keys: packet, in-flight window, topic and client-id sizes, and
//! keepalive bounds (advertised in CONNACK where MQTT 5 allows it).

use clap::Args;

use super::cli::{d, with_default};
use super::value::{int, push_text, usize_of, Expect, Raw, U16, USIZE};
use super::Config;
use crate::protocol::MAX_REMAINING_LENGTH;

#[derive(Args, Debug, Default, Clone)]
pub struct LimitArgs {
    #[arg(long, value_name = "BYTES", help = with_default("Largest MQTT packet accepted, in bytes (MQTT 5 Maximum Packet Size)", d().max_packet_size))]
    pub max_packet_size: Option<String>,
    #[arg(long, value_name = "N", help = with_default("QoS 1/2 PUBLISHes a client may have unacknowledged towards us (MQTT 5 Receive Maximum)", d().receive_maximum))]
    pub receive_maximum: Option<String>,
    #[arg(long, value_name = "N", help = with_default("Our unacknowledged QoS 1/2 PUBLISHes per client (lowered to the client's Receive Maximum)", d().max_inflight))]
    pub max_inflight: Option<String>,
    #[arg(long, value_name = "N", help = with_default("Topic aliases a client may use (MQTT 5); 0 = none", d().topic_alias_maximum))]
    pub topic_alias_maximum: Option<String>,
    #[arg(long, value_name = "N", help = with_default("Most levels in a topic name or filter", d().max_topic_levels))]
    pub max_topic_levels: Option<String>,
    #[arg(long, value_name = "BYTES", help = with_default("Longest topic name or filter, in bytes", d().max_topic_len))]
    pub max_topic_len: Option<String>,
    #[arg(long, value_name = "N", help = with_default("Subscriptions one client may hold", d().max_subscriptions_per_client))]
    pub max_subscriptions_per_client: Option<String>,
    #[arg(long, value_name = "BYTES", help = with_default("Longest client identifier, in bytes", d().max_client_id_len))]
    pub max_client_id_len: Option<String>,
    #[arg(long, value_name = "S", alias = "keepalive-max", help = with_default("Cap on client keepalives, in seconds; 0 = no cap. An MQTT 5 client asking for more (or for 0, none) is given this as Server Keep Alive; a 3.1/3.1.1 client, which cannot be told, is refused with CONNACK return code 2 (as Mosquitto's max_keepalive)", d().keepalive_max_s))]
    pub keepalive_max_s: Option<String>,
    #[arg(long, value_name = "S", help = with_default("Cap on MQTT 5 keepalives, in seconds; none = no cap. A client asking for more (or for 0, none) is given this as Server Keep Alive; one asking for less keeps its own. 3.1/3.1.1 clients are not affected (keepalive_max_s refuses them)", "none"))]
    pub server_keep_alive_s: Option<String>,
}

pub(super) const KEYS: &[&str] = &[
    "max_packet_size",
    "receive_maximum",
    "max_inflight",
    "topic_alias_maximum",
    "max_topic_levels",
    "max_topic_len",
    "max_subscriptions_per_client",
    "max_client_id_len",
    "keepalive_max_s",
    "server_keep_alive_s",
];

/// Applies one key of this part. `Ok(false)`: not one of its keys.
pub(super) fn set(cfg: &mut Config, key: &str, raw: &Raw) -> Result<bool, Expect> {
    match key {
        "max_packet_size" => cfg.max_packet_size = int(raw, 1, MAX_REMAINING_LENGTH as u64)? as u32,
        "receive_maximum" => cfg.receive_maximum = int(raw, 1, U16)? as u16,
        "max_inflight" => cfg.max_inflight = int(raw, 1, U16)? as u16,
        "topic_alias_maximum" => cfg.topic_alias_maximum = int(raw, 0, U16)? as u16,
        "max_topic_levels" => cfg.max_topic_levels = usize_of(int(raw, 1, U16)?),
        "max_topic_len" => cfg.max_topic_len = usize_of(int(raw, 1, U16)?),
        "max_subscriptions_per_client" => {
            cfg.max_subscriptions_per_client = usize_of(int(raw, 0, USIZE)?)
        }
        "max_client_id_len" => cfg.max_client_id_len = usize_of(int(raw, 1, U16)?),
        "keepalive_max_s" => cfg.keepalive_max_s = int(raw, 0, U16)? as u16,
        "server_keep_alive_s" => {
            cfg.server_keep_alive_s = match raw {
                Raw::Text(s) if s.trim().eq_ignore_ascii_case("none") => None,
                // 0 is no cap to lower anything to: a keepalive of 0 means none.
                _ => Some(int(raw, 1, U16).map_err(|e| format!("{e} or \"none\""))? as u16),
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

impl LimitArgs {
    pub(super) fn values(&self, v: &mut Vec<(&'static str, Raw)>) {
        push_text(v, "max_packet_size", &self.max_packet_size);
        push_text(v, "receive_maximum", &self.receive_maximum);
        push_text(v, "max_inflight", &self.max_inflight);
        push_text(v, "topic_alias_maximum", &self.topic_alias_maximum);
        push_text(v, "max_topic_levels", &self.max_topic_levels);
        push_text(v, "max_topic_len", &self.max_topic_len);
        push_text(
            v,
            "max_subscriptions_per_client",
            &self.max_subscriptions_per_client,
        );
        push_text(v, "max_client_id_len", &self.max_client_id_len);
        push_text(v, "keepalive_max_s", &self.keepalive_max_s);
        push_text(v, "server_keep_alive_s", &self.server_keep_alive_s);
    }
}
