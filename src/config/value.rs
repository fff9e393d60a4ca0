//! Values before validation ([`Raw`]: typed from TOML, text from the command line)
//! and the checks every concern's keys are parsed with. Each check returns the
//! "expected ..." text that error messages quote.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

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

pub(super) fn from_toml(v: &toml::Value) -> Raw {
    match v {
        toml::Value::String(s) => Raw::Text(s.clone()),
        toml::Value::Integer(i) => Raw::Int(*i),
        toml::Value::Boolean(b) => Raw::Bool(*b),
        toml::Value::Array(items) => Raw::List(items.iter().map(from_toml).collect()),
        other => Raw::Other(other.to_string()),
    }
}

/// The check that failed, as "expected ..." text.
pub type Expect = String;

pub(super) const U16: u64 = u16::MAX as u64;
pub(super) const U32: u64 = u32::MAX as u64;
pub(super) const USIZE: u64 = i64::MAX as u64;

pub(super) fn int(raw: &Raw, min: u64, max: u64) -> Result<u64, Expect> {
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

pub(super) fn boolean(raw: &Raw) -> Result<bool, Expect> {
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

pub(super) fn text(raw: &Raw) -> Result<String, Expect> {
    match raw {
        Raw::Text(s) => Ok(s.clone()),
        _ => Err("a string".into()),
    }
}

/// A file path; the empty string means none (how the shipped config shows "unset").
pub(super) fn optional_path(raw: &Raw) -> Result<Option<String>, Expect> {
    match raw {
        Raw::Text(s) if s.trim().is_empty() => Ok(None),
        Raw::Text(s) => Ok(Some(s.clone())),
        _ => Err("a file path (a string; \"\" for none)".into()),
    }
}

pub(super) fn one_of<'a>(raw: &Raw, choices: &[&'a str]) -> Result<&'a str, Expect> {
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

pub(super) fn addr(raw: &Raw) -> Result<SocketAddr, Expect> {
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

pub(super) fn list(raw: &Raw) -> Vec<Raw> {
    match raw {
        Raw::List(items) => items.clone(),
        other => vec![other.clone()],
    }
}

pub(super) fn usize_of(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Pushes a CLI option given as text, as `(key, value)`, for `Cli::values`.
pub(super) fn push_text(
    v: &mut Vec<(&'static str, Raw)>,
    key: &'static str,
    value: &Option<String>,
) {
    if let Some(s) = value {
        v.push((key, Raw::Text(s.clone())));
    }
}

/// Pushes a repeatable CLI option, when given, as one list.
pub(super) fn push_list(v: &mut Vec<(&'static str, Raw)>, key: &'static str, values: &[String]) {
    if !values.is_empty() {
        v.push((
            key,
            Raw::List(values.iter().cloned().map(Raw::Text).collect()),
        ));
    }
}
