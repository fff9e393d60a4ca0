//! The `ringmq` command line: `--config` plus one option per config key, each
//! concern's options flattened in from its own file, and the `check-config`
//! subcommand. Values are taken as text and validated by the same code that
//! validates the config file.

use std::fmt;

use clap::{Parser, Subcommand};

use super::cluster::ClusterArgs;
use super::connections::ConnectionArgs;
use super::features::FeatureArgs;
use super::gateway::GatewayArgs;
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
    about = "MQTT 3.1/3.1.1/5.0 broker, one io_uring loop per core",
    disable_help_subcommand = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
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
    #[command(flatten)]
    pub gateway: GatewayArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Validate the configuration (the file and any options given before the
    /// subcommand) without starting the broker: exit code 0 if valid, 2 with the key
    /// and value named if not
    CheckConfig {
        /// TOML file to check (replaces a --config given before the subcommand)
        #[arg(long, value_name = "FILE")]
        config: Option<String>,
    },
    /// Manage a password file in Mosquitto's format ($7$ PBKDF2-SHA512 hashes, as
    /// mosquitto_passwd 2.0 writes them): add, delete, batch
    Passwd {
        #[command(subcommand)]
        action: PasswdAction,
    },
}

/// `ringmq passwd ...`: each writes the file anew (temporary file, then rename).
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum PasswdAction {
    /// Add a user or change their password; the password is read from the first line
    /// of stdin unless --password is given
    Add {
        file: String,
        user: String,
        #[arg(long)]
        password: Option<String>,
        /// Start a new file (replacing any existing one)
        #[arg(long)]
        create: bool,
        /// PBKDF2 iterations (mosquitto_passwd uses 101)
        #[arg(long, default_value_t = 101)]
        iterations: u32,
    },
    /// Remove a user
    Delete { file: String, user: String },
    /// Add or update every `user:password` line read from stdin
    Batch {
        file: String,
        /// Start a new file (replacing any existing one)
        #[arg(long)]
        create: bool,
        /// PBKDF2 iterations (mosquitto_passwd uses 101)
        #[arg(long, default_value_t = 101)]
        iterations: u32,
    },
}

impl Cli {
    /// The command line `check-config` validates: these options with the
    /// subcommand's `--config`, if it has one.
    pub fn for_check(&self) -> Cli {
        let mut cli = self.clone();
        if let Some(Command::CheckConfig { config: Some(path) }) = &self.command {
            cli.config = Some(path.clone());
        }
        cli.command = None;
        cli
    }
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
        self.gateway.values(&mut v);
        self.cluster.values(&mut v);
        v
    }
}
