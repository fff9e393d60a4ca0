//! Listener keys: the addresses the broker accepts MQTT connections on, and the HTTP
//! listener of the metrics endpoints. TLS and WebSocket listeners land here.

use clap::Args;

use super::cli::with_default;
use super::value::{addr, list, push_list, push_text, Expect, Raw};
use super::{Config, Loaded};

#[derive(Args, Debug, Default, Clone)]
pub struct ListenerArgs {
    /// Address to listen on (repeatable).
    #[arg(long, value_name = "ADDR", help = with_default("Address to listen on (repeatable)", "0.0.0.0:1883; 127.0.0.1:1883 while no password file is set and --allow-anonymous is not true"))]
    pub listen: Vec<String>,
    #[arg(long, value_name = "ADDR", help = with_default("HTTP listener for /metrics (Prometheus), /healthz, /readyz, /api/stats and the status page at /; none turns it off", "127.0.0.1:9883"))]
    pub http_listen: Option<String>,
}

pub(super) const KEYS: &[&str] = &["listen", "http_listen"];

/// Applies one key of this part. `Ok(false)`: not one of its keys.
pub(super) fn set(cfg: &mut Config, key: &str, raw: &Raw) -> Result<bool, Expect> {
    match key {
        "listen" => {
            let addrs = list(raw).iter().map(addr).collect::<Result<Vec<_>, _>>()?;
            if addrs.is_empty() {
                return Err("at least one socket address".into());
            }
            cfg.listen = addrs;
        }
        "http_listen" => {
            let off = matches!(raw, Raw::Text(s) if s.trim().eq_ignore_ascii_case("none"));
            cfg.http_listen = if off {
                None
            } else {
                Some(addr(raw).map_err(|e| format!("{e}, or none"))?)
            };
        }
        _ => return Ok(false),
    }
    Ok(true)
}

impl ListenerArgs {
    pub(super) fn values(&self, v: &mut Vec<(&'static str, Raw)>) {
        push_list(v, "listen", &self.listen);
        push_text(v, "http_listen", &self.http_listen);
    }
}

/// The loopback address the default listener falls back to without authentication.
pub const LOOPBACK_DEFAULT: &str = "127.0.0.1:1883";

/// Secure by default, as Mosquitto 2: with no password file, no explicit
/// `allow_anonymous = true` and no `listen` given, the default listener binds
/// loopback only. Returns the one line start-up prints saying how to open it.
pub fn secure_default(loaded: &mut Loaded) -> Option<String> {
    let c = &mut loaded.config;
    if loaded.explicit.iter().any(|k| k == "listen")
        || c.password_file.is_some()
        || c.allow_anonymous == Some(true)
    {
        return None;
    }
    c.listen = vec![LOOPBACK_DEFAULT.parse().expect("a valid address")];
    Some(format!(
        "ringmq: no authentication configured, so only {LOOPBACK_DEFAULT} (this machine) is served; \
         to serve the network set --password-file FILE (see `ringmq passwd`) or \
         --allow-anonymous true, or name the addresses with --listen"
    ))
}
