//! Fills a [`Config`] from defaults, then an optional TOML file, then CLI flags.
//!
//! Every CLI option `--some-key` has a TOML key `some_key` in one flat table; both go
//! through the same [`set`] so validation and messages are identical. Errors name the
//! key and the offending value; unknown TOML keys are errors.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

use clap::Parser;

use crate::config::{Config, IoBackend, SlowConsumerPolicy};
use crate::protocol::MAX_REMAINING_LENGTH;

/// Command line of the `ringmq` binary. Values are taken as text and validated by
/// [`set`], the same code that validates the config file.
#[derive(Parser, Debug, Default, Clone)]
#[command(
    name = "ringmq",
    version,
    about = "MQTT 3.1/3.1.1/5.0 broker, one io_uring loop per core"
)]
pub struct Cli {
    /// TOML file with any of the options below as keys (underscores for dashes).
    #[arg(long, value_name = "FILE")]
    pub config: Option<String>,
    /// Address to listen on (repeatable).
    #[arg(long, value_name = "ADDR", help = with_default("Address to listen on (repeatable)", "0.0.0.0:1883"))]
    pub listen: Vec<String>,
    /// Event loops, one per core. Default: available cores.
    #[arg(long, value_name = "N")]
    pub shards: Option<String>,
    #[arg(long, value_name = "auto|uring|epoll", help = with_default("IO backend; auto = io_uring when the kernel allows it, else epoll", "auto"))]
    pub io: Option<String>,
    #[arg(long, value_name = "LEVEL", help = with_default("tracing filter, e.g. info or ringmq=debug,warn; refused at start-up if it does not parse. RUST_LOG overrides it (an unparsable RUST_LOG is ignored with a warning)", &d().log_level))]
    pub log_level: Option<String>,
    #[arg(long, value_name = "US", help = with_default("Most microseconds a loop spins for the next event after a busy turn before blocking (adaptive: shrinks to 0 when events are further apart); 0 = never spin", d().busy_poll_us))]
    pub busy_poll_us: Option<String>,
    #[arg(long, value_name = "N", help = with_default("SCHED_FIFO priority 1..99 for the event-loop threads (needs CAP_SYS_NICE or RLIMIT_RTPRIO); cuts the latency tail that kernel threads on a loop's core cause; 0 = normal scheduling", d().rt_priority))]
    pub rt_priority: Option<String>,
    #[arg(long, value_name = "N", help = with_default("Connections the broker holds in total; by default lowered to what the io_uring tables hold", d().max_connections))]
    pub max_connections: Option<String>,
    #[arg(long, value_name = "N", help = with_default("Connections per client IP address; 0 = no limit", d().max_connections_per_ip))]
    pub max_connections_per_ip: Option<String>,
    #[arg(long, value_name = "N", help = with_default("New CONNECTs per second per shard; 0 = no limit", d().connect_rate_per_s))]
    pub connect_rate_per_s: Option<String>,
    #[arg(long, value_name = "MS", help = with_default("Milliseconds allowed from TCP accept to a complete CONNECT", d().connect_timeout_ms))]
    pub connect_timeout_ms: Option<String>,
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
    #[arg(long, value_name = "S", help = with_default("Server Keep Alive sent to MQTT 5 clients, in seconds; none = not sent", "none"))]
    pub server_keep_alive_s: Option<String>,
    #[arg(long, value_name = "S", help = with_default("Cap on a session's expiry interval, in seconds", d().max_session_expiry_s))]
    pub max_session_expiry_s: Option<String>,
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
}

/// The defaults the help text shows, read from `Config::default()` so they cannot drift.
fn d() -> Config {
    Config::default()
}

fn with_default(text: &str, default: impl fmt::Display) -> String {
    format!("{text} [default: {default}]")
}

/// Where a value came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(String),
    Cli,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// The file could not be read or is not TOML.
    Read {
        path: String,
        reason: String,
    },
    UnknownKey {
        source: Source,
        key: String,
    },
    Invalid {
        source: Source,
        key: String,
        expected: String,
        got: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, reason } => write!(f, "config {path}: {reason}"),
            ConfigError::UnknownKey {
                source: Source::File(path),
                key,
            } => {
                write!(f, "config {path}: unknown key \"{key}\"")
            }
            ConfigError::UnknownKey {
                source: Source::Cli,
                key,
            } => write!(f, "unknown option --{key}"),
            ConfigError::Invalid {
                source: Source::File(path),
                key,
                expected,
                got,
            } => {
                write!(
                    f,
                    "config {path}: key \"{key}\": expected {expected}, got {got}"
                )
            }
            ConfigError::Invalid {
                source: Source::Cli,
                key,
                expected,
                got,
            } => {
                write!(
                    f,
                    "option --{}: expected {expected}, got {got}",
                    key.replace('_', "-")
                )
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// A value before validation: typed from TOML, text from the command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Raw {
    Text(String),
    Int(i64),
    Bool(bool),
    List(Vec<Raw>),
    /// Any other TOML value (float, table, date), shown as written.
    Other(String),
}

impl fmt::Display for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Raw::Text(s) => write!(f, "{s:?}"),
            Raw::Int(i) => write!(f, "{i}"),
            Raw::Bool(b) => write!(f, "{b}"),
            Raw::List(items) => {
                write!(f, "[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{item}")?;
                }
                write!(f, "]")
            }
            Raw::Other(s) => write!(f, "{s}"),
        }
    }
}

fn from_toml(v: &toml::Value) -> Raw {
    match v {
        toml::Value::String(s) => Raw::Text(s.clone()),
        toml::Value::Integer(i) => Raw::Int(*i),
        toml::Value::Boolean(b) => Raw::Bool(*b),
        toml::Value::Array(items) => Raw::List(items.iter().map(from_toml).collect()),
        other => Raw::Other(other.to_string()),
    }
}

/// The check that failed, as "expected ..." text.
type Expect = String;

fn int(raw: &Raw, min: u64, max: u64) -> Result<u64, Expect> {
    let expected = || format!("an integer {min}..={max}");
    let v: i128 = match raw {
        Raw::Int(i) => i128::from(*i),
        Raw::Text(s) => s.trim().replace('_', "").parse().map_err(|_| expected())?,
        _ => return Err(expected()),
    };
    if v < i128::from(min) || v > i128::from(max) {
        return Err(expected());
    }
    Ok(v as u64)
}

fn boolean(raw: &Raw) -> Result<bool, Expect> {
    match raw {
        Raw::Bool(b) => Ok(*b),
        Raw::Text(s) => match s.trim() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err("true or false".into()),
        },
        _ => Err("true or false".into()),
    }
}

fn text(raw: &Raw) -> Result<String, Expect> {
    match raw {
        Raw::Text(s) => Ok(s.clone()),
        _ => Err("a string".into()),
    }
}

/// A `tracing` filter, parsed here so a typo is refused at start-up instead of
/// being replaced by a default when logging is set up. (A bare word is a target
/// name to `tracing`, so a misspelt level such as `debgu` parses: it logs only
/// that target.)
fn log_filter(raw: &Raw) -> Result<String, Expect> {
    let s = text(raw)?;
    match tracing_subscriber::EnvFilter::try_new(&s) {
        Ok(_) => Ok(s),
        Err(e) => Err(format!(
            "a tracing filter such as info or ringmq=debug,warn ({e})"
        )),
    }
}

fn one_of<'a>(raw: &Raw, choices: &[&'a str]) -> Result<&'a str, Expect> {
    let expected = || format!("one of {}", choices.join(", "));
    let Raw::Text(s) = raw else {
        return Err(expected());
    };
    choices
        .iter()
        .copied()
        .find(|c| c.eq_ignore_ascii_case(s.trim()))
        .ok_or_else(expected)
}

fn addr(raw: &Raw) -> Result<SocketAddr, Expect> {
    let expected = || "a socket address like 0.0.0.0:1883 or [::]:1883".to_string();
    let Raw::Text(s) = raw else {
        return Err(expected());
    };
    if let Ok(a) = s.trim().parse::<SocketAddr>() {
        return Ok(a);
    }
    // Host names (e.g. localhost:1883) resolve to their first address.
    s.trim()
        .to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(expected)
}

fn list(raw: &Raw) -> Vec<Raw> {
    match raw {
        Raw::List(items) => items.clone(),
        other => vec![other.clone()],
    }
}

fn usize_of(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Every key `set` accepts, in documentation order.
pub const KEYS: &[&str] = &[
    "listen",
    "shards",
    "io",
    "log_level",
    "busy_poll_us",
    "rt_priority",
    "max_connections",
    "max_connections_per_ip",
    "connect_rate_per_s",
    "connect_timeout_ms",
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
    "max_session_expiry_s",
    "max_queued_messages",
    "max_queued_bytes",
    "queue_qos0_offline",
    "max_outbound_bytes",
    "slow_consumer_policy",
    "memory_high_water_bytes",
    "retain_available",
    "wildcard_subscription_available",
    "subscription_identifier_available",
    "shared_subscription_available",
    "max_retained_messages",
    "max_retained_bytes",
    "deny_subscribe",
];

/// A spin longer than a millisecond no longer saves a wake-up worth its CPU.
const MAX_BUSY_POLL_US: u64 = 1000;
const MAX_SHARDS: u64 = crate::ring::MAX_SHARDS as u64;
const U16: u64 = u16::MAX as u64;
const U32: u64 = u32::MAX as u64;
const USIZE: u64 = i64::MAX as u64;

/// Applies one key. `Ok(false)`: unknown key.
pub fn set(cfg: &mut Config, key: &str, raw: &Raw) -> Result<bool, Expect> {
    match key {
        "listen" => {
            let addrs = list(raw).iter().map(addr).collect::<Result<Vec<_>, _>>()?;
            if addrs.is_empty() {
                return Err("at least one socket address".into());
            }
            cfg.listen = addrs;
        }
        "shards" => cfg.shards = Some(usize_of(int(raw, 1, MAX_SHARDS)?)),
        "io" => {
            cfg.io = match one_of(raw, &["auto", "uring", "epoll"])? {
                "uring" => IoBackend::Uring,
                "epoll" => IoBackend::Epoll,
                _ => IoBackend::Auto,
            }
        }
        "log_level" => cfg.log_level = log_filter(raw)?,
        "busy_poll_us" => cfg.busy_poll_us = int(raw, 0, MAX_BUSY_POLL_US)? as u32,
        "rt_priority" => cfg.rt_priority = int(raw, 0, 99)? as u8,
        "max_connections" => cfg.max_connections = usize_of(int(raw, 1, USIZE)?),
        "max_connections_per_ip" => cfg.max_connections_per_ip = usize_of(int(raw, 0, USIZE)?),
        "connect_rate_per_s" => cfg.connect_rate_per_s = int(raw, 0, U32)? as u32,
        "connect_timeout_ms" => cfg.connect_timeout_ms = int(raw, 1, U32)?,
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
                _ => Some(int(raw, 0, U16).map_err(|e| format!("{e} or \"none\""))? as u16),
            }
        }
        "max_session_expiry_s" => cfg.max_session_expiry_s = int(raw, 0, U32)? as u32,
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
        _ => return Ok(false),
    }
    Ok(true)
}

fn apply(cfg: &mut Config, source: &Source, key: &str, raw: &Raw) -> Result<(), ConfigError> {
    match set(cfg, key, raw) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ConfigError::UnknownKey {
            source: source.clone(),
            key: key.to_string(),
        }),
        Err(expected) => Err(ConfigError::Invalid {
            source: source.clone(),
            key: key.to_string(),
            expected,
            got: raw.to_string(),
        }),
    }
}

/// Applies a TOML document (one flat table) read from `path`.
pub fn apply_toml(cfg: &mut Config, path: &str, text: &str) -> Result<(), ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Read {
            path: path.to_string(),
            reason: e.to_string(),
        })?;
    let source = Source::File(path.to_string());
    for (key, value) in &table {
        apply(cfg, &source, key, &from_toml(value))?;
    }
    Ok(())
}

impl Cli {
    /// The options given on the command line, as (key, value) in `KEYS` order.
    pub fn values(&self) -> Vec<(&'static str, Raw)> {
        let mut v = Vec::new();
        if !self.listen.is_empty() {
            v.push((
                "listen",
                Raw::List(self.listen.iter().cloned().map(Raw::Text).collect()),
            ));
        }
        let singles: [(&'static str, &Option<String>); 32] = [
            ("shards", &self.shards),
            ("io", &self.io),
            ("log_level", &self.log_level),
            ("busy_poll_us", &self.busy_poll_us),
            ("rt_priority", &self.rt_priority),
            ("max_connections", &self.max_connections),
            ("max_connections_per_ip", &self.max_connections_per_ip),
            ("connect_rate_per_s", &self.connect_rate_per_s),
            ("connect_timeout_ms", &self.connect_timeout_ms),
            ("max_packet_size", &self.max_packet_size),
            ("receive_maximum", &self.receive_maximum),
            ("max_inflight", &self.max_inflight),
            ("topic_alias_maximum", &self.topic_alias_maximum),
            ("max_topic_levels", &self.max_topic_levels),
            ("max_topic_len", &self.max_topic_len),
            (
                "max_subscriptions_per_client",
                &self.max_subscriptions_per_client,
            ),
            ("max_client_id_len", &self.max_client_id_len),
            ("keepalive_max_s", &self.keepalive_max_s),
            ("server_keep_alive_s", &self.server_keep_alive_s),
            ("max_session_expiry_s", &self.max_session_expiry_s),
            ("max_queued_messages", &self.max_queued_messages),
            ("max_queued_bytes", &self.max_queued_bytes),
            ("queue_qos0_offline", &self.queue_qos0_offline),
            ("max_outbound_bytes", &self.max_outbound_bytes),
            ("slow_consumer_policy", &self.slow_consumer_policy),
            ("memory_high_water_bytes", &self.memory_high_water_bytes),
            ("retain_available", &self.retain_available),
            (
                "wildcard_subscription_available",
                &self.wildcard_subscription_available,
            ),
            (
                "subscription_identifier_available",
                &self.subscription_identifier_available,
            ),
            (
                "shared_subscription_available",
                &self.shared_subscription_available,
            ),
            ("max_retained_messages", &self.max_retained_messages),
            ("max_retained_bytes", &self.max_retained_bytes),
        ];
        for (key, value) in singles {
            if let Some(s) = value {
                v.push((key, Raw::Text(s.clone())));
            }
        }
        if !self.deny_subscribe.is_empty() {
            v.push((
                "deny_subscribe",
                Raw::List(self.deny_subscribe.iter().cloned().map(Raw::Text).collect()),
            ));
        }
        v
    }
}

/// Defaults < config file < CLI. `read_file` is injected so tests need no files.
pub fn load_with(
    cli: &Cli,
    read_file: impl Fn(&str) -> std::io::Result<String>,
) -> Result<Config, ConfigError> {
    load_tracked_with(cli, read_file).map(|l| l.config)
}

/// A loaded configuration and the keys the user set (file or CLI), so defaults can be
/// adapted to the machine while explicit values are honoured (and warned about).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub explicit: Vec<String>,
}

impl Loaded {
    pub fn is_explicit(&self, key: &str) -> bool {
        self.explicit.iter().any(|k| k == key)
    }
}

/// [`load_with`], also saying which keys were set.
pub fn load_tracked_with(
    cli: &Cli,
    read_file: impl Fn(&str) -> std::io::Result<String>,
) -> Result<Loaded, ConfigError> {
    let mut cfg = Config::default();
    let mut explicit = Vec::new();
    if let Some(path) = &cli.config {
        let text = read_file(path).map_err(|e| ConfigError::Read {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        apply_toml(&mut cfg, path, &text)?;
        if let Ok(table) = text.parse::<toml::Table>() {
            explicit.extend(table.keys().cloned());
        }
    }
    for (key, raw) in cli.values() {
        apply(&mut cfg, &Source::Cli, key, &raw)?;
        explicit.push(key.to_string());
    }
    Ok(Loaded {
        config: cfg,
        explicit,
    })
}

/// [`load_with`] reading the file from disk.
pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
    load_tracked(cli).map(|l| l.config)
}

/// [`load_tracked_with`] reading the file from disk.
pub fn load_tracked(cli: &Cli) -> Result<Loaded, ConfigError> {
    load_tracked_with(cli, |p| std::fs::read_to_string(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["ringmq"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("cli parses")
    }

    fn with_file(text: &'static str) -> impl Fn(&str) -> std::io::Result<String> {
        move |_| Ok(text.to_string())
    }

    #[test]
    fn no_config_at_all_gives_defaults() {
        let cfg = load_with(&cli(&[]), with_file("")).expect("load");
        assert_eq!(
            cfg.listen,
            vec!["0.0.0.0:1883".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(cfg.shards, None);
        assert_eq!(cfg.io, IoBackend::Auto);
        assert_eq!(cfg.max_packet_size, Config::default().max_packet_size);
    }

    #[test]
    fn file_then_cli_precedence() {
        let file = "max_packet_size = 5000\nreceive_maximum = 10\nlisten = [\"127.0.0.1:1999\", \"[::1]:1999\"]\n\
                    io = \"epoll\"\nretain_available = false\nserver_keep_alive_s = 30\ndeny_subscribe = [\"a/#\"]\n";
        let c = cli(&[
            "--config",
            "x.toml",
            "--max-packet-size",
            "7000",
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "3",
        ]);
        let cfg = load_with(&c, with_file(file)).expect("load");
        // CLI wins over the file, the file over defaults.
        assert_eq!(cfg.max_packet_size, 7000);
        assert_eq!(cfg.receive_maximum, 10);
        assert_eq!(
            cfg.listen,
            vec!["127.0.0.1:0".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(cfg.shards, Some(3));
        assert_eq!(cfg.io, IoBackend::Epoll);
        assert!(!cfg.retain_available);
        assert_eq!(cfg.server_keep_alive_s, Some(30));
        assert_eq!(cfg.deny_subscribe, vec!["a/#".to_string()]);
        assert_eq!(cfg.max_inflight, Config::default().max_inflight);
    }

    #[test]
    fn every_cli_option_has_the_same_toml_key() {
        // Each KEY set from the file and from the CLI gives the same Config field.
        let samples: &[(&str, &str, &str)] = &[
            ("listen", "\"127.0.0.1:5\"", "127.0.0.1:5"),
            ("shards", "2", "2"),
            ("io", "\"uring\"", "uring"),
            ("log_level", "\"debug\"", "debug"),
            ("busy_poll_us", "7", "7"),
            ("rt_priority", "7", "7"),
            ("max_connections", "7", "7"),
            ("max_connections_per_ip", "7", "7"),
            ("connect_rate_per_s", "7", "7"),
            ("connect_timeout_ms", "7", "7"),
            ("max_packet_size", "7", "7"),
            ("receive_maximum", "7", "7"),
            ("max_inflight", "7", "7"),
            ("topic_alias_maximum", "7", "7"),
            ("max_topic_levels", "7", "7"),
            ("max_topic_len", "7", "7"),
            ("max_subscriptions_per_client", "7", "7"),
            ("max_client_id_len", "7", "7"),
            ("keepalive_max_s", "7", "7"),
            ("server_keep_alive_s", "7", "7"),
            ("max_session_expiry_s", "7", "7"),
            ("max_queued_messages", "7", "7"),
            ("max_queued_bytes", "7", "7"),
            ("queue_qos0_offline", "true", "true"),
            ("max_outbound_bytes", "7", "7"),
            ("slow_consumer_policy", "\"disconnect\"", "disconnect"),
            ("memory_high_water_bytes", "7", "7"),
            ("retain_available", "false", "false"),
            ("wildcard_subscription_available", "false", "false"),
            ("subscription_identifier_available", "false", "false"),
            ("shared_subscription_available", "false", "false"),
            ("max_retained_messages", "7", "7"),
            ("max_retained_bytes", "7", "7"),
            ("deny_subscribe", "[\"x\"]", "x"),
        ];
        assert_eq!(samples.len(), KEYS.len());
        for (key, toml_value, cli_value) in samples {
            assert!(KEYS.contains(key), "{key}");
            let mut from_file = Config::default();
            apply_toml(&mut from_file, "t.toml", &format!("{key} = {toml_value}")).expect(key);
            let flag = format!("--{}", key.replace('_', "-"));
            let from_cli = load_with(&cli(&[&flag, cli_value]), with_file("")).expect(key);
            assert_eq!(format!("{from_file:?}"), format!("{from_cli:?}"), "{key}");
            assert_ne!(
                format!("{from_file:?}"),
                format!("{:?}", Config::default()),
                "{key} changed nothing"
            );
        }
    }

    #[test]
    fn file_error_names_key_and_value() {
        let err = load_with(
            &cli(&["--config", "tests/x.toml"]),
            with_file("max_packet_size = \"abc\"\n"),
        )
        .expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "config tests/x.toml: key \"max_packet_size\": expected an integer 1..=268435455, got \"abc\""
        );
        let err = load_with(
            &cli(&["--config", "c.toml"]),
            with_file("receive_maximum = 0\n"),
        )
        .expect_err("fail");
        assert_eq!(
            err.to_string(),
            "config c.toml: key \"receive_maximum\": expected an integer 1..=65535, got 0"
        );
        let err = load_with(
            &cli(&["--config", "c.toml"]),
            with_file("io = \"kqueue\"\n"),
        )
        .expect_err("fail");
        assert_eq!(
            err.to_string(),
            "config c.toml: key \"io\": expected one of auto, uring, epoll, got \"kqueue\""
        );
        let err = load_with(
            &cli(&["--config", "c.toml"]),
            with_file("log_level = \"ringmq=loud\"\n"),
        )
        .expect_err("fail");
        assert_eq!(
            err.to_string(),
            "config c.toml: key \"log_level\": expected a tracing filter such as info or \
             ringmq=debug,warn (error parsing level filter: expected one of \"off\", \"error\", \
             \"warn\", \"info\", \"debug\", \"trace\", or a number 0-5), got \"ringmq=loud\""
        );
        let err = load_with(
            &cli(&["--config", "c.toml"]),
            with_file("busy_poll_us = 1001\n"),
        )
        .expect_err("fail");
        assert_eq!(
            err.to_string(),
            "config c.toml: key \"busy_poll_us\": expected an integer 0..=1000, got 1001"
        );
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = load_with(
            &cli(&["--config", "c.toml"]),
            with_file("max_pakcet_size = 5\n"),
        )
        .expect_err("fail");
        assert_eq!(
            err.to_string(),
            "config c.toml: unknown key \"max_pakcet_size\""
        );
    }

    #[test]
    fn cli_error_names_option_and_value() {
        let err = load_with(&cli(&["--max-inflight", "70000"]), with_file("")).expect_err("fail");
        assert_eq!(
            err.to_string(),
            "option --max-inflight: expected an integer 1..=65535, got \"70000\""
        );
        let err = load_with(&cli(&["--log-level", "info,["]), with_file("")).expect_err("fail");
        assert_eq!(
            err.to_string(),
            "option --log-level: expected a tracing filter such as info or ringmq=debug,warn \
             (invalid filter directive), got \"info,[\""
        );
        for good in [
            "warn",
            "ringmq=debug,warn",
            "ringmq::shard=trace",
            "off",
            "5",
        ] {
            let cfg = load_with(&cli(&["--log-level", good]), with_file("")).expect(good);
            assert_eq!(cfg.log_level, good);
        }
        let err = load_with(&cli(&["--listen", "nowhere"]), with_file("")).expect_err("fail");
        assert_eq!(
            err.to_string(),
            "option --listen: expected a socket address like 0.0.0.0:1883 or [::]:1883, got [\"nowhere\"]"
        );
        let err = load_with(&cli(&["--rt-priority", "100"]), with_file("")).expect_err("fail");
        assert_eq!(
            err.to_string(),
            "option --rt-priority: expected an integer 0..=99, got \"100\""
        );
    }

    #[test]
    fn explicit_keys_are_tracked() {
        let l = load_tracked_with(
            &cli(&["--config", "c.toml", "--max-inflight", "5"]),
            with_file("max_connections = 1000000\n"),
        )
        .expect("load");
        assert_eq!(l.explicit, vec!["max_connections", "max_inflight"]);
        assert!(l.is_explicit("max_connections"));
        let l = load_tracked_with(&cli(&[]), with_file("")).expect("load");
        assert!(l.explicit.is_empty());
    }

    #[test]
    fn every_option_has_help_with_its_default() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let mut checked = 0;
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(!help.is_empty(), "--{id} has no help text");
            if id != "config" {
                assert!(help.contains("efault"), "--{id}: no default in {help:?}");
            }
            checked += 1;
        }
        // `config` plus every key.
        assert_eq!(checked, KEYS.len() + 1);
        let help_of = |id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id().as_str() == id)
                .and_then(|a| a.get_help())
                .map(|h| h.to_string())
                .unwrap_or_default()
        };
        let d = Config::default();
        assert!(help_of("max_inflight").ends_with(&format!("[default: {}]", d.max_inflight)));
        assert!(help_of("connect_timeout_ms")
            .ends_with(&format!("[default: {}]", d.connect_timeout_ms)));
        assert!(
            help_of("max_queued_bytes").ends_with(&format!("[default: {}]", d.max_queued_bytes))
        );
    }

    #[test]
    fn bad_toml_and_missing_file_are_errors() {
        let err = load_with(
            &cli(&["--config", "c.toml"]),
            with_file("max_packet_size = = 3"),
        )
        .expect_err("fail");
        assert!(err.to_string().starts_with("config c.toml: "), "{err}");
        let err = load_with(&cli(&["--config", "/nonexistent/ringmq.toml"]), |p| {
            std::fs::read_to_string(p)
        })
        .expect_err("fail");
        assert!(
            err.to_string()
                .starts_with("config /nonexistent/ringmq.toml: "),
            "{err}"
        );
    }
}
