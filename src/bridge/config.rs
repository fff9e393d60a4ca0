//! The `[[bridge]]` model: one remote broker, how to reach it, and which topics cross
//! in which direction. Parsed from a TOML table; every error names the bridge and the
//! key (`bridge[edge].address`) with what was expected and what was found. No IO: a
//! host name is kept as written and resolved by `main` before the loops start.

use std::fmt;

use crate::protocol::ProtocolVersion;
use crate::topic::validate_filter;

/// Longest topic filter a rule may build (the MQTT string limit).
const FILTER_LEN_MAX: usize = 65_535;
/// Levels a rule's filter may have; generous, the remote enforces its own.
const FILTER_LEVELS_MAX: usize = 128;

/// One `[[bridge]]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfig {
    /// Unique among bridges; names it in logs, errors, metrics and the default client id.
    pub name: String,
    /// Remote host name or address, as written.
    pub host: String,
    pub port: u16,
    /// `Some`: connect with TLS (`mqtts://`), verifying the remote against this CA.
    pub tls: Option<BridgeTls>,
    /// 3.1.1 or 5.
    pub protocol: ProtocolVersion,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// MQTT keepalive the bridge asks for; it sends PINGREQ after this much silence.
    pub keepalive_s: u16,
    /// `false` (the default) keeps the remote session, so the remote holds our `in`
    /// subscriptions and its in-flight messages across a reconnect.
    pub clean_session: bool,
    /// 3.1.1 only: announce ourselves as a bridge (protocol level 0x84, Mosquitto's
    /// `try_private`) so a Mosquitto remote does not send our own messages back.
    /// Falls back to plain 3.1.1 when the remote refuses the level.
    pub try_private: bool,
    pub topics: Vec<TopicRule>,
    /// Outgoing messages held at most (queued while the remote is down, plus sent and
    /// not yet acknowledged); beyond it new messages are dropped and counted.
    pub queue_max_messages: usize,
    /// QoS 1/2 messages sent and unacknowledged at most (the remote's Receive Maximum
    /// lowers it on MQTT 5).
    pub inflight_max: u16,
    /// First reconnect delay; it doubles per failed attempt up to `reconnect_max_ms`,
    /// each delay jittered down to half so many bridges do not reconnect in step.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// From the start of the TCP connect to CONNACK.
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeTls {
    /// PEM file of the CA(s) that sign the remote's certificate.
    pub ca_file: String,
    /// Name checked against the remote's certificate; defaults to the host.
    pub server_name: String,
    /// PEM certificate chain and private key presented to a remote that asks for a
    /// client certificate (Mosquitto `require_certificate true`); both or neither.
    pub client_cert: Option<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Remote to local.
    In,
    /// Local to remote.
    Out,
    Both,
}

impl Direction {
    pub fn is_in(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }

    pub fn is_out(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }
}

/// `topic PATTERN [in|out|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]`, as Mosquitto:
/// the local filter is `LOCAL_PREFIX + PATTERN`, the remote one `REMOTE_PREFIX +
/// PATTERN`, and a topic crossing swaps one prefix for the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRule {
    pub pattern: String,
    pub direction: Direction,
    /// Highest QoS this rule forwards with (the message's own QoS if lower).
    pub qos: u8,
    pub local_prefix: String,
    pub remote_prefix: String,
}

impl TopicRule {
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }
}

/// A bad `[[bridge]]` table: which bridge (its name, or its index before the name is
/// known), which key, what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConfigError {
    pub bridge: String,
    pub key: String,
    pub expected: String,
    pub got: String,
}

impl BridgeConfigError {
    /// The key as config errors print it: `bridge[edge].address`.
    pub fn qualified_key(&self) -> String {
        format!("bridge[{}].{}", self.bridge, self.key)
    }
}

impl fmt::Display for BridgeConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key \"{}\": expected {}, got {}",
            self.qualified_key(),
            self.expected,
            self.got
        )
    }
}

impl std::error::Error for BridgeConfigError {}

/// Keys a `[[bridge]]` table may hold.
pub const KEYS: &[&str] = &[
    "name",
    "address",
    "tls_ca_file",
    "tls_server_name",
    "tls_cert_file",
    "tls_key_file",
    "protocol_version",
    "client_id",
    "username",
    "password",
    "keepalive_s",
    "clean_session",
    "try_private",
    "topics",
    "queue_max_messages",
    "inflight_max",
    "reconnect_min_ms",
    "reconnect_max_ms",
    "connect_timeout_ms",
];

/// Parses every `[[bridge]]` table (the TOML value of the `bridge` key).
pub fn parse_bridges(value: &toml::Value) -> Result<Vec<BridgeConfig>, BridgeConfigError> {
    let toml::Value::Array(items) = value else {
        return Err(BridgeConfigError {
            bridge: "*".into(),
            key: "bridge".into(),
            expected: "[[bridge]] tables".into(),
            got: value.to_string(),
        });
    };
    let mut out: Vec<BridgeConfig> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let toml::Value::Table(t) = item else {
            return Err(BridgeConfigError {
                bridge: i.to_string(),
                key: "bridge".into(),
                expected: "a table".into(),
                got: item.to_string(),
            });
        };
        let b = parse_table(i, t)?;
        if out.iter().any(|o| o.name == b.name) {
            return Err(BridgeConfigError {
                bridge: b.name.clone(),
                key: "name".into(),
                expected: "a name no other [[bridge]] has".into(),
                got: format!("{:?}", b.name),
            });
        }
        out.push(b);
    }
    Ok(out)
}

fn got(v: &toml::Value) -> String {
    v.to_string()
}

fn string(v: &toml::Value, what: &str) -> Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{what} (a string)"))
}

fn int(v: &toml::Value, min: i64, max: i64) -> Result<i64, String> {
    v.as_integer()
        .filter(|i| (min..=max).contains(i))
        .ok_or_else(|| format!("an integer {min}..={max}"))
}

fn boolean(v: &toml::Value) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| "true or false".to_string())
}

/// Parses one table; `index` names it until its `name` is read.
pub fn parse_table(index: usize, t: &toml::Table) -> Result<BridgeConfig, BridgeConfigError> {
    let name = match t.get("name") {
        Some(v) => match v.as_str() {
            Some(s) if valid_name(s) => s.to_string(),
            _ => {
                return Err(BridgeConfigError {
                    bridge: index.to_string(),
                    key: "name".into(),
                    expected: "a name of 1..=64 letters, digits, '-' or '_'".into(),
                    got: got(v),
                })
            }
        },
        None => {
            return Err(BridgeConfigError {
                bridge: index.to_string(),
                key: "name".into(),
                expected: "a name for this [[bridge]]".into(),
                got: "nothing".into(),
            })
        }
    };
    let mut b = BridgeConfig {
        client_id: format!("ringmq-bridge-{name}"),
        name: name.clone(),
        host: String::new(),
        port: 1883,
        tls: None,
        protocol: ProtocolVersion::V311,
        username: None,
        password: None,
        keepalive_s: 60,
        clean_session: false,
        try_private: true,
        topics: Vec::new(),
        queue_max_messages: 10_000,
        inflight_max: 20,
        reconnect_min_ms: 1_000,
        reconnect_max_ms: 60_000,
        connect_timeout_ms: 10_000,
    };
    let err = |key: &str, expected: String, v: Option<&toml::Value>| BridgeConfigError {
        bridge: name.clone(),
        key: key.to_string(),
        expected,
        got: v.map_or_else(|| "nothing".to_string(), got),
    };
    let mut tls_scheme = false;
    let mut ca_file = None;
    let mut server_name = None;
    let mut cert_file = None;
    let mut key_file = None;
    let mut has_address = false;
    for (key, v) in t {
        let r: Result<(), String> = match key.as_str() {
            "name" => Ok(()),
            "address" => address(v).map(|(tls, host, port)| {
                tls_scheme = tls;
                b.host = host;
                b.port = port;
                has_address = true;
            }),
            "tls_ca_file" => string(v, "a CA file path").map(|s| ca_file = Some(s)),
            "tls_server_name" => string(v, "a host name").map(|s| server_name = Some(s)),
            "tls_cert_file" => string(v, "a certificate file path").map(|s| cert_file = Some(s)),
            "tls_key_file" => string(v, "a private key file path").map(|s| key_file = Some(s)),
            "protocol_version" => match v.as_str().map(str::trim) {
                Some("3.1.1") => {
                    b.protocol = ProtocolVersion::V311;
                    Ok(())
                }
                Some("5") | Some("5.0") => {
                    b.protocol = ProtocolVersion::V5;
                    Ok(())
                }
                _ => Err("\"3.1.1\" or \"5\"".into()),
            },
            "client_id" => match v.as_str() {
                Some(s) if !s.is_empty() && s.len() <= 65_535 => {
                    b.client_id = s.to_string();
                    Ok(())
                }
                _ => Err("a non-empty client id (a string)".into()),
            },
            "username" => string(v, "a user name").map(|s| b.username = Some(s)),
            "password" => string(v, "a password").map(|s| b.password = Some(s)),
            "keepalive_s" => int(v, 5, 65_535).map(|i| b.keepalive_s = i as u16),
            "clean_session" => boolean(v).map(|x| b.clean_session = x),
            "try_private" => boolean(v).map(|x| b.try_private = x),
            "topics" => topics(v).map(|r| b.topics = r),
            "queue_max_messages" => {
                int(v, 1, 10_000_000).map(|i| b.queue_max_messages = i as usize)
            }
            "inflight_max" => int(v, 1, 65_535).map(|i| b.inflight_max = i as u16),
            "reconnect_min_ms" => int(v, 10, 3_600_000).map(|i| b.reconnect_min_ms = i as u64),
            "reconnect_max_ms" => int(v, 10, 3_600_000).map(|i| b.reconnect_max_ms = i as u64),
            "connect_timeout_ms" => int(v, 100, 600_000).map(|i| b.connect_timeout_ms = i as u64),
            _ => Err(format!("one of {}", KEYS.join(", "))),
        };
        r.map_err(|e| err(key, e, Some(v)))?;
    }
    if !has_address {
        return Err(err(
            "address",
            "the remote broker, like mqtt://host:1883 or mqtts://host:8883".into(),
            None,
        ));
    }
    if b.topics.is_empty() {
        return Err(err(
            "topics",
            "at least one rule like \"sensors/# out 1\"".into(),
            None,
        ));
    }
    if b.reconnect_max_ms < b.reconnect_min_ms {
        return Err(err(
            "reconnect_max_ms",
            format!("at least reconnect_min_ms ({})", b.reconnect_min_ms),
            t.get("reconnect_max_ms"),
        ));
    }
    let client_cert = match (cert_file, key_file) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(err(
                "tls_key_file",
                "the private key of tls_cert_file".into(),
                None,
            ))
        }
        (None, Some(_)) => {
            return Err(err(
                "tls_cert_file",
                "the certificate of tls_key_file".into(),
                None,
            ))
        }
    };
    if !tls_scheme && client_cert.is_some() {
        return Err(err(
            "address",
            "an mqtts:// address, since tls_cert_file is set".into(),
            t.get("address"),
        ));
    }
    match (tls_scheme, ca_file) {
        (true, Some(ca)) => {
            b.tls = Some(BridgeTls {
                ca_file: ca,
                server_name: server_name.unwrap_or_else(|| b.host.clone()),
                client_cert,
            })
        }
        (true, None) => {
            return Err(err(
                "tls_ca_file",
                "a CA file for the mqtts:// address".into(),
                None,
            ))
        }
        (false, Some(_)) => {
            return Err(err(
                "address",
                "an mqtts:// address, since tls_ca_file is set".into(),
                t.get("address"),
            ))
        }
        (false, None) => {}
    }
    Ok(b)
}

fn valid_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

const ADDRESS_EXPECTED: &str =
    "the remote broker, like mqtt://host:1883, mqtts://host:8883 or host:1883";

/// `mqtt://host:port`, `mqtts://host:port` or `host:port`; `[v6]:port` for IPv6.
fn address(v: &toml::Value) -> Result<(bool, String, u16), String> {
    let s = v.as_str().ok_or(ADDRESS_EXPECTED)?.trim();
    let (tls, rest) = if let Some(r) = s.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("mqtt://") {
        (false, r)
    } else if s.contains("://") {
        return Err(ADDRESS_EXPECTED.into());
    } else {
        (false, s)
    };
    let (host, port) = rest.rsplit_once(':').ok_or(ADDRESS_EXPECTED)?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or(ADDRESS_EXPECTED)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err(ADDRESS_EXPECTED.into());
    }
    Ok((tls, host.to_string(), port))
}

const RULE_EXPECTED: &str =
    "rules like \"PATTERN [in|out|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]\" (\"\" for an empty pattern or prefix)";

fn topics(v: &toml::Value) -> Result<Vec<TopicRule>, String> {
    let items = v.as_array().ok_or(RULE_EXPECTED)?;
    items
        .iter()
        .map(|item| {
            let s = item.as_str().ok_or(RULE_EXPECTED)?;
            parse_rule(s).map_err(|e| format!("{RULE_EXPECTED}; in {s:?}: {e}"))
        })
        .collect()
}

/// One rule's text. `""` stands for an empty pattern or prefix, as in Mosquitto.
pub fn parse_rule(s: &str) -> Result<TopicRule, String> {
    let tokens: Vec<&str> = s
        .split_whitespace()
        .map(|t| if t == "\"\"" { "" } else { t })
        .collect();
    if tokens.is_empty() || tokens.len() > 5 || tokens.len() == 4 {
        return Err("1, 2, 3 or 5 words".into());
    }
    let direction = match tokens.get(1).copied() {
        None | Some("out") => Direction::Out,
        Some("in") => Direction::In,
        Some("both") => Direction::Both,
        Some(d) => return Err(format!("direction {d:?} is not in, out or both")),
    };
    let qos = match tokens.get(2).copied() {
        None => 0,
        Some(q @ ("0" | "1" | "2")) => q.as_bytes()[0] - b'0',
        Some(q) => return Err(format!("QoS {q:?} is not 0, 1 or 2")),
    };
    let rule = TopicRule {
        pattern: tokens[0].to_string(),
        direction,
        qos,
        local_prefix: tokens.get(3).copied().unwrap_or("").to_string(),
        remote_prefix: tokens.get(4).copied().unwrap_or("").to_string(),
    };
    for (side, filter) in [
        ("local", rule.local_filter()),
        ("remote", rule.remote_filter()),
    ] {
        if filter.starts_with("$share/") {
            return Err(format!(
                "the {side} filter {filter:?} is a shared subscription"
            ));
        }
        validate_filter(filter.as_bytes(), FILTER_LEN_MAX, FILTER_LEVELS_MAX)
            .map_err(|e| format!("the {side} filter {filter:?} is not valid ({e:?})"))?;
    }
    for (side, prefix) in [
        ("local", &rule.local_prefix),
        ("remote", &rule.remote_prefix),
    ] {
        if prefix.contains(['+', '#']) {
            return Err(format!("the {side} prefix {prefix:?} has a wildcard"));
        }
    }
    Ok(rule)
}
