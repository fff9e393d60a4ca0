//! Connection lifecycle keys: how many connections the broker holds, per client
//! address, how fast new ones are admitted, how long a CONNECT may take, who may
//! connect (`password_file`, `allow_anonymous`, the `jwt_*` keys; the ACL file is in
//! `features`), how
//! dead peers are found (TCP keepalive, `TCP_USER_TIMEOUT`), and how a connection
//! the broker ends is closed (lingering close).

use clap::Args;

use super::cli::{d, with_default};
use super::value::{
    boolean, int, one_of, optional_path, push_text, text, usize_of, Expect, Raw, U32, USIZE,
};
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
    #[arg(long, value_name = "MS", help = with_default("After the broker ends a connection (DISCONNECT with a reason, refusing CONNACK) and its last bytes are written: milliseconds the write side stays shut while reads are drained and discarded, so the client reads the reason instead of a reset; 0 = close at once", d().close_linger_ms))]
    pub close_linger_ms: Option<String>,
    #[arg(long, value_name = "N", help = with_default("Connections that may start lingering per shard within one close_linger_ms; beyond it a connection is closed at once, so a flood of refused clients cannot pin sockets", d().max_lingering_per_shard))]
    pub max_lingering_per_shard: Option<String>,
    #[arg(long, value_name = "S", help = with_default("TCP keepalive: seconds a connection is idle before the first probe, so a peer that vanished (keepalive-0 clients behind a NAT) is found; 0 = no TCP keepalive", d().tcp_keepalive_idle_s))]
    pub tcp_keepalive_idle_s: Option<String>,
    #[arg(long, value_name = "S", help = with_default("TCP keepalive: seconds between probes", d().tcp_keepalive_interval_s))]
    pub tcp_keepalive_interval_s: Option<String>,
    #[arg(long, value_name = "N", help = with_default("TCP keepalive: unanswered probes before the connection is dropped", d().tcp_keepalive_count))]
    pub tcp_keepalive_count: Option<String>,
    #[arg(long, value_name = "MS", help = with_default("TCP_USER_TIMEOUT: milliseconds sent data (or keepalive probes) may stay unacknowledged before the connection is dropped; keep it at idle + interval x count; 0 = kernel default (about 15 minutes of retransmissions)", d().tcp_user_timeout_ms))]
    pub tcp_user_timeout_ms: Option<String>,
    #[arg(long, value_name = "BYTES", help = with_default("Largest packet read before CONNECT completes (the CONNECT itself, lowered to max_packet_size); a larger one is refused (MQTT 5: CONNACK 0x95) and closed", d().max_connect_packet_bytes))]
    pub max_connect_packet_bytes: Option<String>,
    /// Mosquitto-format password file (`ringmq passwd` or `mosquitto_passwd` make
    /// one); re-read on SIGHUP. Default: none.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<String>,
    /// Clients without a username: true, false, or auto (allowed only without a
    /// password file; then, unless --listen is given, the broker listens on
    /// 127.0.0.1:1883 only). [default: auto]
    #[arg(long, value_name = "BOOL")]
    pub allow_anonymous: Option<String>,
    #[arg(long, value_name = "FIELD", help = with_default("JWT authentication: the CONNECT field that carries the token, password or username (only a value shaped like a JWT is checked as one; others go to the password file)", &d().jwt_from))]
    pub jwt_from: Option<String>,
    /// JWT authentication: file holding the HS256 shared secret (trailing
    /// whitespace ignored); re-read on SIGHUP. Default: none.
    #[arg(long, value_name = "FILE")]
    pub jwt_secret_file: Option<String>,
    /// JWT authentication: RS256 (RSA) or ES256 (EC P-256) public key, PEM; re-read
    /// on SIGHUP. Default: none.
    #[arg(long, value_name = "FILE")]
    pub jwt_public_key_file: Option<String>,
    #[arg(long, value_name = "CLAIM", help = with_default("JWT claim whose string value is the client's username (its ACL follows it); a token without it is refused", &d().jwt_username_claim))]
    pub jwt_username_claim: Option<String>,
    /// JWT `iss` a token must carry; "" = not checked. Default: "".
    #[arg(long, value_name = "TEXT")]
    pub jwt_issuer: Option<String>,
    /// JWT `aud` a token must carry; "" = not checked. Default: "".
    #[arg(long, value_name = "TEXT")]
    pub jwt_audience: Option<String>,
    #[arg(long, value_name = "S", help = with_default("Seconds of clock skew allowed on a JWT's exp and nbf", d().jwt_leeway_s))]
    pub jwt_leeway_s: Option<String>,
}

pub(super) const KEYS: &[&str] = &[
    "max_connections",
    "max_connections_per_ip",
    "connect_rate_per_s",
    "connect_timeout_ms",
    "close_linger_ms",
    "max_lingering_per_shard",
    "tcp_keepalive_idle_s",
    "tcp_keepalive_interval_s",
    "tcp_keepalive_count",
    "tcp_user_timeout_ms",
    "max_connect_packet_bytes",
    "password_file",
    "allow_anonymous",
    "jwt_from",
    "jwt_secret_file",
    "jwt_public_key_file",
    "jwt_username_claim",
    "jwt_issuer",
    "jwt_audience",
    "jwt_leeway_s",
];

const MAX_LINGER_MS: u64 = 60_000;

/// Applies one key of this part. `Ok(false)`: not one of its keys.
pub(super) fn set(cfg: &mut Config, key: &str, raw: &Raw) -> Result<bool, Expect> {
    match key {
        "max_connections" => cfg.max_connections = usize_of(int(raw, 1, USIZE)?),
        "max_connections_per_ip" => cfg.max_connections_per_ip = usize_of(int(raw, 0, USIZE)?),
        "connect_rate_per_s" => cfg.connect_rate_per_s = int(raw, 0, U32)? as u32,
        "connect_timeout_ms" => cfg.connect_timeout_ms = int(raw, 1, U32)?,
        // A linger is a grace for reading one packet, not a place to park sockets.
        "close_linger_ms" => cfg.close_linger_ms = int(raw, 0, MAX_LINGER_MS)?,
        "max_lingering_per_shard" => cfg.max_lingering_per_shard = usize_of(int(raw, 1, USIZE)?),
        // The kernel's own bounds: TCP_KEEPIDLE/INTVL <= 32767 s, TCP_KEEPCNT <= 127.
        "tcp_keepalive_idle_s" => cfg.tcp_keepalive_idle_s = int(raw, 0, 32_767)? as u32,
        "tcp_keepalive_interval_s" => cfg.tcp_keepalive_interval_s = int(raw, 1, 32_767)? as u32,
        "tcp_keepalive_count" => cfg.tcp_keepalive_count = int(raw, 1, 127)? as u32,
        "tcp_user_timeout_ms" => cfg.tcp_user_timeout_ms = int(raw, 0, i32::MAX as u64)? as u32,
        "max_connect_packet_bytes" => {
            cfg.max_connect_packet_bytes = usize_of(int(raw, 1, MAX_PACKET)?)
        }
        "password_file" => cfg.password_file = optional_path(raw)?,
        "allow_anonymous" => {
            cfg.allow_anonymous = match raw {
                Raw::Text(s) if s.trim().eq_ignore_ascii_case("auto") => None,
                _ => Some(boolean(raw).map_err(|_| "true, false or auto".to_string())?),
            }
        }
        "jwt_from" => cfg.jwt_from = one_of(raw, &["password", "username"])?.to_string(),
        "jwt_secret_file" => cfg.jwt_secret_file = optional_path(raw)?,
        "jwt_public_key_file" => cfg.jwt_public_key_file = optional_path(raw)?,
        "jwt_username_claim" => {
            let t = text(raw)?;
            if t.trim().is_empty() {
                return Err("a claim name".to_string());
            }
            cfg.jwt_username_claim = t.trim().to_string();
        }
        "jwt_issuer" => cfg.jwt_issuer = Some(text(raw)?).filter(|t| !t.is_empty()),
        "jwt_audience" => cfg.jwt_audience = Some(text(raw)?).filter(|t| !t.is_empty()),
        "jwt_leeway_s" => cfg.jwt_leeway_s = int(raw, 0, 3_600)?,
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
        push_text(v, "close_linger_ms", &self.close_linger_ms);
        push_text(v, "max_lingering_per_shard", &self.max_lingering_per_shard);
        push_text(v, "tcp_keepalive_idle_s", &self.tcp_keepalive_idle_s);
        push_text(
            v,
            "tcp_keepalive_interval_s",
            &self.tcp_keepalive_interval_s,
        );
        push_text(v, "tcp_keepalive_count", &self.tcp_keepalive_count);
        push_text(v, "tcp_user_timeout_ms", &self.tcp_user_timeout_ms);
        push_text(
            v,
            "max_connect_packet_bytes",
            &self.max_connect_packet_bytes,
        );
        push_text(v, "password_file", &self.password_file);
        push_text(v, "allow_anonymous", &self.allow_anonymous);
        push_text(v, "jwt_from", &self.jwt_from);
        push_text(v, "jwt_secret_file", &self.jwt_secret_file);
        push_text(v, "jwt_public_key_file", &self.jwt_public_key_file);
        push_text(v, "jwt_username_claim", &self.jwt_username_claim);
        push_text(v, "jwt_issuer", &self.jwt_issuer);
        push_text(v, "jwt_audience", &self.jwt_audience);
        push_text(v, "jwt_leeway_s", &self.jwt_leeway_s);
    }
}
