//! Listener keys: the addresses the broker accepts MQTT connections on. TLS and
//! WebSocket listeners land here.

use clap::Args;

use super::cli::with_default;
use super::value::{addr, list, push_list, Expect, Raw};
use super::Config;

#[derive(Args, Debug, Default, Clone)]
pub struct ListenerArgs {
    /// Address to listen on (repeatable).
    #[arg(long, value_name = "ADDR", help = with_default("Address to listen on (repeatable)", "0.0.0.0:1883"))]
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
