//! The `ringmq` command line: `--config` plus one option per config key, each
//! concern's options flattened in from its own file. Values are taken as text and
//! validated by the same code that validates the config file.

use std::fmt;

use clap::Parser;

use super::connections::ConnectionArgs;
use super::features::FeatureArgs;
use super::limits::LimitArgs;
use super::listeners::ListenerArgs;
use super::runtime::RuntimeArgs;
use super::sessions::SessionArgs;
use super::value::Raw;
use super::Config;

/// Command line of the `ringmq` binary. The flattened parts come in `KEYS` order,
/// which is the order `--help` lists them in.
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
    #[command(flatten)]
    pub listeners: ListenerArgs,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub connections: ConnectionArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub sessions: SessionArgs,
    #[command(flatten)]
    pub features: FeatureArgs,
}

/// The defaults the help text shows, read from `Config::default()` so they cannot drift.
pub(super) fn d() -> Config {
    Config::default()
}

pub(super) fn with_default(text: &str, default: impl fmt::Display) -> String {
    format!("{text} [default: {default}]")
}

impl Cli {
    /// The options given on the command line, as (key, value) in `KEYS` order.
    pub fn values(&self) -> Vec<(&'static str, Raw)> {
        let mut v = Vec::new();
        self.listeners.values(&mut v);
        self.runtime.values(&mut v);
        self.connections.values(&mut v);
        self.limits.values(&mut v);
        self.sessions.values(&mut v);
        self.features.values(&mut v);
        v
    }
}
