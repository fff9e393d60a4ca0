//! Listener keys: the addresses the broker accepts MQTT connections on. TLS and
//! WebSocket listeners land here.

use clap::Args;

use super::cli::with_default;
use super::value::{addr, list, push_list, Expect, Raw};
use super::{Config, Loaded};

#[derive(Args, Debug, Default, Clone)]
pub struct ListenerArgs {
    /// Address to listen on (repeatable).
    #[arg(long, value_name = "ADDR", help = with_default("Address to listen on (repeatable)", "0.0.0.0:1883; 127.0.0.1:1883 while no password file is set and --allow-anonymous is not true"))]
    pub listen: Vec<String>,
}

pub(super) const KEYS: &[&str] = &["listen"];

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
        _ => return Ok(false),
    }
    Ok(true)
}

impl ListenerArgs {
    pub(super) fn values(&self, v: &mut Vec<(&'static str, Raw)>) {
        push_list(v, "listen", &self.listen);
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
