//! Connection admission keys: how many connections the broker holds, per client
//! address, how fast new ones are admitted, how long a CONNECT may take, and who may
//! connect (`password_file`, `allow_anonymous`; the ACL file is in `features`).

use clap::Args;

use super::cli::{d, with_default};
use super::value::{boolean, int, optional_path, push_text, usize_of, Expect, Raw, U32, USIZE};
use super::Config;

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
    /// Mosquitto-format password file (`ringmq passwd` or `mosquitto_passwd` make
    /// one); re-read on SIGHUP. Default: none.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<String>,
    /// Clients without a username: true, false, or auto (allowed only without a
    /// password file; then, unless --listen is given, the broker listens on
    /// 127.0.0.1:1883 only). [default: auto]
    #[arg(long, value_name = "BOOL")]
    pub allow_anonymous: Option<String>,
}

pub(super) const KEYS: &[&str] = &[
    "max_connections",
    "max_connections_per_ip",
    "connect_rate_per_s",
    "connect_timeout_ms",
    "password_file",
    "allow_anonymous",
];

/// Applies one key of this part. `Ok(false)`: not one of its keys.
pub(super) fn set(cfg: &mut Config, key: &str, raw: &Raw) -> Result<bool, Expect> {
    match key {
        "max_connections" => cfg.max_connections = usize_of(int(raw, 1, USIZE)?),
        "max_connections_per_ip" => cfg.max_connections_per_ip = usize_of(int(raw, 0, USIZE)?),
        "connect_rate_per_s" => cfg.connect_rate_per_s = int(raw, 0, U32)? as u32,
        "connect_timeout_ms" => cfg.connect_timeout_ms = int(raw, 1, U32)?,
        "password_file" => cfg.password_file = optional_path(raw)?,
        "allow_anonymous" => {
            cfg.allow_anonymous = match raw {
                Raw::Text(s) if s.trim().eq_ignore_ascii_case("auto") => None,
                _ => Some(boolean(raw).map_err(|_| "true, false or auto".to_string())?),
            }
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
        push_text(v, "password_file", &self.password_file);
        push_text(v, "allow_anonymous", &self.allow_anonymous);
    }
}
