//! Feature keys: which optional MQTT features the broker offers (retained,
//! wildcards, subscription identifiers, shared subscriptions), the retained
//! store's bounds, filters refused on SUBSCRIBE, the `$SYS` status topics and
//! per-client events, and the ACL file.

use clap::Args;

use super::cli::{d, with_default};
use super::value::{
    boolean, int, list, optional_path, push_list, push_text, text, usize_of, Expect, Raw, USIZE,
};
use super::Config;

#[derive(Args, Debug, Default, Clone)]
pub struct FeatureArgs {
    #[arg(long, value_name = "BOOL", help = with_default("Retained messages supported", d().retain_available))]
    pub retain_available: Option<String>,
    #[arg(long, value_name = "BOOL", help = with_default("Wildcard subscriptions supported", d().wildcard_subscription_available))]
    pub wildcard_subscription_available: Option<String>,
    #[arg(long, value_name = "BOOL", help = with_default("Subscription identifiers supported (MQTT 5)", d().subscription_identifier_available))]
    pub subscription_identifier_available: Option<String>,
    #[arg(long, value_name = "BOOL", help = with_default("Shared subscriptions ($share/...) supported", d().shared_subscription_available))]
    pub shared_subscription_available: Option<String>,
    #[arg(long, value_name = "N", help = with_default("Retained messages kept per shard", d().max_retained_messages))]
    pub max_retained_messages: Option<String>,
    #[arg(long, value_name = "BYTES", help = with_default("Bytes of retained messages kept per shard (each shard holds a full replica)", d().max_retained_bytes))]
    pub max_retained_bytes: Option<String>,
    /// Filter refused on SUBSCRIBE with 0x80 (repeatable). Default: none.
    #[arg(long, value_name = "FILTER")]
    pub deny_subscribe: Vec<String>,
    #[arg(long, value_name = "SECONDS", help = with_default("Seconds between $SYS/broker/... status publishes (retained, Mosquitto's topic names); 0 turns them off", d().sys_interval_s))]
    pub sys_interval_s: Option<String>,
    #[arg(long, value_name = "BOOL", help = with_default("Publish $SYS/broker/clients/<client id>/connected and .../disconnected (not retained, a JSON payload) at each client connect and disconnect", d().sys_client_events))]
    pub sys_client_events: Option<String>,
    /// Mosquitto-format ACL file (user/topic/pattern lines); re-read on SIGHUP.
    /// Default: none (every client may publish and subscribe to anything).
    #[arg(long, value_name = "FILE")]
    pub acl_file: Option<String>,
}

pub(super) const KEYS: &[&str] = &[
    "retain_available",
    "wildcard_subscription_available",
    "subscription_identifier_available",
    "shared_subscription_available",
    "max_retained_messages",
    "max_retained_bytes",
    "deny_subscribe",
    "sys_interval_s",
    "sys_client_events",
    "acl_file",
];

/// Applies one key of this part. `Ok(false)`: not one of its keys.
pub(super) fn set(cfg: &mut Config, key: &str, raw: &Raw) -> Result<bool, Expect> {
    match key {
        "retain_available" => cfg.retain_available = boolean(raw)?,
        "wildcard_subscription_available" => cfg.wildcard_subscription_available = boolean(raw)?,
        "subscription_identifier_available" => {
            cfg.subscription_identifier_available = boolean(raw)?
        }
        "shared_subscription_available" => cfg.shared_subscription_available = boolean(raw)?,
        "max_retained_messages" => cfg.max_retained_messages = usize_of(int(raw, 0, USIZE)?),
        "max_retained_bytes" => cfg.max_retained_bytes = usize_of(int(raw, 0, USIZE)?),
        "deny_subscribe" => {
            cfg.deny_subscribe = list(raw).iter().map(text).collect::<Result<Vec<_>, _>>()?;
        }
        "sys_interval_s" => cfg.sys_interval_s = int(raw, 0, 86_400)?,
        "sys_client_events" => cfg.sys_client_events = boolean(raw)?,
        "acl_file" => cfg.acl_file = optional_path(raw)?,
        _ => return Ok(false),
    }
    Ok(true)
}

impl FeatureArgs {
    pub(super) fn values(&self, v: &mut Vec<(&'static str, Raw)>) {
        push_text(v, "retain_available", &self.retain_available);
        push_text(
            v,
            "wildcard_subscription_available",
            &self.wildcard_subscription_available,
        );
        push_text(
            v,
            "subscription_identifier_available",
            &self.subscription_identifier_available,
        );
        push_text(
            v,
            "shared_subscription_available",
            &self.shared_subscription_available,
        );
        push_text(v, "max_retained_messages", &self.max_retained_messages);
        push_text(v, "max_retained_bytes", &self.max_retained_bytes);
        push_list(v, "deny_subscribe", &self.deny_subscribe);
        push_text(v, "sys_interval_s", &self.sys_interval_s);
        push_text(v, "sys_client_events", &self.sys_client_events);
        push_text(v, "acl_file", &self.acl_file);
    }
}
