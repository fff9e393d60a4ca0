//! The commented default config shipped as /etc/ringmq/ringmq.toml
//! (deploy/ringmq.toml) cannot drift from the binary: it lists exactly the options
//! `ringmq --help` lists, in the same order, and every value it shows is the
//! built-in default.

mod support;

use std::process::Command;

use ringmq::config::{apply_toml, Config};
use support::repo_root;

fn shipped() -> String {
    std::fs::read_to_string(repo_root().join("deploy/ringmq.toml")).expect("deploy/ringmq.toml")
}

/// A key line: `key = value` or, commented out, `#key = value`. Prose comments
/// start with "# " and never match.
fn key_of(line: &str) -> Option<&str> {
    let body = line.strip_prefix('#').unwrap_or(line);
    let (key, _) = body.split_once(" = ")?;
    let is_key = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    is_key.then_some(key)
}

fn shipped_keys() -> Vec<String> {
    shipped()
        .lines()
        .filter_map(key_of)
        .map(str::to_string)
        .collect()
}

/// The long options `ringmq --help` documents, as config keys, without the ones
/// that are not config keys (`--config`, `--help`, `--version`).
fn help_keys() -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_ringmq"))
        .arg("--help")
        .output()
        .expect("run ringmq --help");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .expect("help is UTF-8")
        .lines()
        .filter_map(|line| {
            let option = line
                .trim_start()
                .trim_start_matches("-h, ")
                .trim_start_matches("-V, ");
            let name = option.strip_prefix("--")?;
            let name = name.split([' ', '=']).next()?;
            Some(name.replace('-', "_"))
        })
        .filter(|k| !matches!(k.as_str(), "config" | "help" | "version"))
        .collect()
}

#[test]
fn shipped_config_and_help_list_the_same_keys_in_order() {
    let help = help_keys();
    let file = shipped_keys();
    // Not vacuous: the broker has dozens of options.
    assert!(help.len() > 30, "{help:?}");
    for key in &help {
        assert!(
            file.contains(key),
            "--{key} is missing from deploy/ringmq.toml"
        );
    }
    for key in &file {
        assert!(
            help.contains(key),
            "deploy/ringmq.toml's {key} is not in --help"
        );
    }
    assert_eq!(
        file, help,
        "deploy/ringmq.toml lists the keys in --help order"
    );
}

#[test]
fn shipped_config_shows_the_defaults() {
    let text = shipped();
    // As shipped (everything commented out) the file changes nothing.
    let mut as_shipped = Config::default();
    apply_toml(&mut as_shipped, "ringmq.toml", &text).expect("shipped config loads");
    assert_eq!(
        format!("{as_shipped:?}"),
        format!("{:?}", Config::default())
    );

    // Uncommented, each value is the default, except the ones marked as examples
    // (a default that is computed at start-up, such as one loop per core).
    let mut examples = 0;
    let mut uncommented = Vec::new();
    let mut previous_comment = String::new();
    for line in text.lines() {
        if let Some(key) = key_of(line) {
            assert!(
                !previous_comment.is_empty(),
                "{key}: no comment saying what it is"
            );
            let is_example = previous_comment.contains("an example, not the default");
            if is_example {
                examples += 1;
            } else {
                uncommented.push(line.trim_start_matches('#').to_string());
            }
            previous_comment.clear();
        } else if let Some(comment) = line.strip_prefix("# ") {
            previous_comment.push_str(comment);
        } else {
            previous_comment.clear();
        }
    }
    assert_eq!(examples, 1, "only `shards` has no default value to show");
    assert_eq!(uncommented.len() + examples, shipped_keys().len());
    let mut loaded = Config::default();
    apply_toml(&mut loaded, "uncommented.toml", &uncommented.join("\n"))
        .expect("uncommented config loads");
    assert_eq!(format!("{loaded:?}"), format!("{:?}", Config::default()));
}
