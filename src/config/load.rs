//! Fills a [`Config`] from defaults, then an optional TOML file, then CLI flags.
//!
//! Every CLI option `--some-key` has a TOML key `some_key` in one flat table; both go
//! through the same [`set`] so validation and messages are identical. Errors name the
//! key and the offending value; unknown TOML keys are errors.

use std::fmt;

use super::cli::Cli;
use super::value::{from_toml, Expect, Raw};
use super::{
    cluster, connections, features, gateway, limits, listeners, runtime, sessions, Config,
};

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

/// One concern's keys (in documentation order) and the function that applies them.
struct Part {
    keys: &'static [&'static str],
    set: fn(&mut Config, &str, &Raw) -> Result<bool, Expect>,
}

/// Every concern, in documentation order (the order of [`Cli`]'s flattened parts).
/// A new concern file registers here and in `Cli`.
const PARTS: [Part; 8] = [
    Part {
        keys: listeners::KEYS,
        set: listeners::set,
    },
    Part {
        keys: runtime::KEYS,
        set: runtime::set,
    },
    Part {
        keys: connections::KEYS,
        set: connections::set,
    },
    Part {
        keys: limits::KEYS,
        set: limits::set,
    },
    Part {
        keys: sessions::KEYS,
        set: sessions::set,
    },
    Part {
        keys: features::KEYS,
        set: features::set,
    },
    Part {
        keys: gateway::KEYS,
        set: gateway::set,
    },
    Part {
        keys: cluster::KEYS,
        set: cluster::set,
    },
];

/// Every key `set` accepts, in documentation order.
pub fn keys() -> impl Iterator<Item = &'static str> {
    PARTS.iter().flat_map(|p| p.keys.iter().copied())
}

/// Applies one key. `Ok(false)`: unknown key.
pub fn set(cfg: &mut Config, key: &str, raw: &Raw) -> Result<bool, Expect> {
    match PARTS.iter().find(|p| p.keys.contains(&key)) {
        Some(part) => (part.set)(cfg, key, raw),
        None => Ok(false),
    }
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
        if key == "listener" {
            apply_listener_tables(cfg, &source, value)?;
            continue;
        }
        if key == "bridge" {
            cfg.bridge = crate::bridge::parse_bridges(value).map_err(|e| ConfigError::Invalid {
                source: source.clone(),
                key: e.qualified_key(),
                expected: e.expected,
                got: e.got,
            })?;
            continue;
        }
        apply(cfg, &source, key, &from_toml(value))?;
    }
    Ok(())
}

/// `[[listener]]`: an array of tables, each parsed whole; errors name the key as
/// `listener[i].key`.
fn apply_listener_tables(
    cfg: &mut Config,
    source: &Source,
    value: &toml::Value,
) -> Result<(), ConfigError> {
    let invalid = |key: String, expected: String, got: String| ConfigError::Invalid {
        source: source.clone(),
        key,
        expected,
        got,
    };
    let toml::Value::Array(items) = value else {
        return Err(invalid(
            "listener".into(),
            "[[listener]] tables".into(),
            value.to_string(),
        ));
    };
    let mut tables = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let toml::Value::Table(t) = item else {
            return Err(invalid(
                format!("listener[{i}]"),
                "a table".into(),
                item.to_string(),
            ));
        };
        let pairs: Vec<(String, Raw)> = t.iter().map(|(k, v)| (k.clone(), from_toml(v))).collect();
        let parsed = listeners::table(&pairs).map_err(|(key, expected)| {
            let got = pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map_or_else(|| "nothing".to_string(), |(_, v)| v.to_string());
            invalid(format!("listener[{i}].{key}"), expected, got)
        })?;
        tables.push(parsed);
    }
    cfg.listener = tables;
    Ok(())
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
    let mut last_source = cli.config.clone().map_or(Source::Cli, Source::File);
    for (key, raw) in cli.values() {
        apply(&mut cfg, &Source::Cli, key, &raw)?;
        explicit.push(key.to_string());
        last_source = Source::Cli;
    }
    // Checks that span keys (a TLS listener needs a certificate...), named after the
    // key to fix; blamed on the command line when it set anything.
    listeners::check(&cfg)
        .and_then(|()| cluster::check(&cfg))
        .map_err(|(key, expected, got)| ConfigError::Invalid {
            source: last_source,
            key,
            expected,
            got,
        })?;
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
