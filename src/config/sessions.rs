//! Session and queue keys: session expiry, what a session queues while offline or
//! over its in-flight window, per-connection output, what happens to a slow
//! subscriber, the per-shard memory mark, and durability (the data directory and
//! when an acknowledgement may go).

use clap::Args;

use super::cli::{d, with_default};
use super::value::{
    boolean, int, one_of, optional_path, push_text, usize_of, Expect, Raw, U32, USIZE,
};
use super::Config;

/// When PUBACK/PUBREC/SUBACK/CONNACK(session present) may go for what a persistent
/// session stored (`durability`). Only in effect with a `data_dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Nothing is written: sessions live as long as the process.
    None,
    /// Acknowledged once the log write completed: survives kill -9, not power loss.
    Process,
    /// Acknowledged after fdatasync: survives power loss.
    Fsync,
    /// Acknowledged once written, fdatasync every `ms`: a power loss may lose the
    /// last `ms` of acknowledged messages (Redis `appendfsync everysec`).
    IntervalMs(u32),
}

impl Durability {
    pub fn name(self) -> String {
        match self {
            Durability::None => "none".into(),
            Durability::Process => "process".into(),
            Durability::Fsync => "fsync".into(),
            Durability::IntervalMs(ms) => format!("interval:{ms}"),
        }
    }
}

/// What to do when a subscriber's outbound queue is full of QoS 1/2 messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Drop the newest QoS 1/2 message for that subscriber (counted).
    Drop,
    /// Disconnect the subscriber (0x97 Quota exceeded); a persistent session keeps its queue.
    Disconnect,
}

#[derive(Args, Debug, Default, Clone)]
pub struct SessionArgs {
    #[arg(long, value_name = "S", help = with_default("Cap on a session's expiry interval, in seconds", d().max_session_expiry_s))]
    pub max_session_expiry_s: Option<String>,
    #[arg(long, value_name = "S", help = with_default("Expiry, in seconds, of sessions whose client asked for them never to expire (3.1.1 clean session 0, MQTT 5 Session Expiry 0xFFFFFFFF; MQTT 5 clients are told in CONNACK); none = never", "7200"))]
    pub persistent_session_expiry_s: Option<String>,
    #[arg(long, value_name = "N", help = with_default("Sessions on the node, connected or offline; a CONNECT that needs a new one beyond this is refused (MQTT 5: CONNACK 0x97, 3.x: return code 3)", d().max_sessions))]
    pub max_sessions: Option<String>,
    #[arg(long, value_name = "N", help = with_default("Messages queued per session while offline or over the in-flight window", d().max_queued_messages))]
    pub max_queued_messages: Option<String>,
    #[arg(long, value_name = "BYTES", help = with_default("Bytes of messages queued per session", d().max_queued_bytes))]
    pub max_queued_bytes: Option<String>,
    #[arg(long, value_name = "BOOL", help = with_default("Queue QoS 0 messages for offline persistent sessions", d().queue_qos0_offline))]
    pub queue_qos0_offline: Option<String>,
    #[arg(long, value_name = "BYTES", help = with_default("Bytes encoded for one connection but not yet written to its socket", d().max_outbound_bytes))]
    pub max_outbound_bytes: Option<String>,
    #[arg(long, value_name = "POLICY", help = with_default("When a subscriber's queue is full of QoS 1/2 messages: drop (the newest, counted) or disconnect", "drop"))]
    pub slow_consumer_policy: Option<String>,
    #[arg(long, value_name = "BYTES", help = with_default("Buffered message bytes per shard above which QoS 0 is shed and new connections refused; 0 = no mark", d().memory_high_water_bytes))]
    pub memory_high_water_bytes: Option<String>,
    #[arg(long, value_name = "DIR", help = with_default("Data directory for persistent sessions, their subscriptions and queued QoS 1/2 messages, and retained messages (one write-ahead log per loop); \"\" = none: nothing survives a restart", "\"\""))]
    pub data_dir: Option<String>,
    #[arg(long, value_name = "MODE", help = with_default("With a data_dir: none (nothing written), process (acknowledged once written: survives kill -9), fsync (acknowledged after fdatasync: survives power loss), or interval:MS (written at once, fdatasync every MS ms: a power loss loses up to MS ms)", "process"))]
    pub durability: Option<String>,
}

pub(super) const KEYS: &[&str] = &[
    "max_session_expiry_s",
    "persistent_session_expiry_s",
    "max_sessions",
    "max_queued_messages",
    "max_queued_bytes",
    "queue_qos0_offline",
    "max_outbound_bytes",
    "slow_consumer_policy",
    "memory_high_water_bytes",
    "data_dir",
    "durability",
];

/// Applies one key of this part. `Ok(false)`: not one of its keys.
pub(super) fn set(cfg: &mut Config, key: &str, raw: &Raw) -> Result<bool, Expect> {
    match key {
        "max_session_expiry_s" => cfg.max_session_expiry_s = int(raw, 0, U32)? as u32,
        "persistent_session_expiry_s" => {
            cfg.persistent_session_expiry_s = match raw {
                Raw::Text(s) if s.trim().eq_ignore_ascii_case("none") => None,
                _ => Some(int(raw, 0, U32).map_err(|e| format!("{e} or \"none\""))? as u32),
            }
        }
        "max_sessions" => cfg.max_sessions = usize_of(int(raw, 1, USIZE)?),
        "max_queued_messages" => cfg.max_queued_messages = usize_of(int(raw, 0, USIZE)?),
        "max_queued_bytes" => cfg.max_queued_bytes = usize_of(int(raw, 0, USIZE)?),
        "queue_qos0_offline" => cfg.queue_qos0_offline = boolean(raw)?,
        "max_outbound_bytes" => cfg.max_outbound_bytes = usize_of(int(raw, 1, USIZE)?),
        "slow_consumer_policy" => {
            cfg.slow_consumer_policy = match one_of(raw, &["drop", "disconnect"])? {
                "disconnect" => SlowConsumerPolicy::Disconnect,
                _ => SlowConsumerPolicy::Drop,
            }
        }
        "memory_high_water_bytes" => cfg.memory_high_water_bytes = usize_of(int(raw, 0, USIZE)?),
        "data_dir" => cfg.data_dir = optional_path(raw)?,
        "durability" => cfg.durability = durability(raw)?,
        _ => return Ok(false),
    }
    Ok(true)
}

impl SessionArgs {
    pub(super) fn values(&self, v: &mut Vec<(&'static str, Raw)>) {
        push_text(v, "max_session_expiry_s", &self.max_session_expiry_s);
        push_text(
            v,
            "persistent_session_expiry_s",
            &self.persistent_session_expiry_s,
        );
        push_text(v, "max_sessions", &self.max_sessions);
        push_text(v, "max_queued_messages", &self.max_queued_messages);
        push_text(v, "max_queued_bytes", &self.max_queued_bytes);
        push_text(v, "queue_qos0_offline", &self.queue_qos0_offline);
        push_text(v, "max_outbound_bytes", &self.max_outbound_bytes);
        push_text(v, "slow_consumer_policy", &self.slow_consumer_policy);
        push_text(v, "memory_high_water_bytes", &self.memory_high_water_bytes);
        push_text(v, "data_dir", &self.data_dir);
        push_text(v, "durability", &self.durability);
    }
}

fn durability(raw: &Raw) -> Result<Durability, Expect> {
    const EXPECTED: &str = "none, process, fsync or interval:MS (MS from 1 to 60000)";
    let Raw::Text(s) = raw else {
        return Err(EXPECTED.into());
    };
    let s = s.trim().to_ascii_lowercase();
    Ok(match s.as_str() {
        "none" => Durability::None,
        "process" => Durability::Process,
        "fsync" => Durability::Fsync,
        _ => match s.strip_prefix("interval:").map(str::parse::<u32>) {
            Some(Ok(ms)) if (1..=60_000).contains(&ms) => Durability::IntervalMs(ms),
            _ => return Err(EXPECTED.into()),
        },
    })
}
