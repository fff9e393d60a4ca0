//! Keeps docs/ARCHITECTURE.md the map of the code (issue #19): every file of `src/`
//! and `loadgen/src/` has its line in the "Files" section, every Rust file of the
//! repository's own trees opens with a comment saying what it owns, and
//! `protocol/reason.rs` does not import `protocol/packet.rs`. Reads files only; no
//! broker is started.

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file below `dir` (relative to the repository root, `/`-separated), skipping
/// build output and hidden entries.
fn files_under(dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root().join(dir)];
    while let Some(d) = stack.pop() {
        let entries = fs::read_dir(&d).unwrap_or_else(|e| panic!("reading {}: {e}", d.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with('.')
                || matches!(name, "target" | "corpus" | "artifacts" | "node_modules")
            {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(relative(&path));
            }
        }
    }
    out.sort();
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .expect("under the repository")
        .to_string_lossy()
        .replace('\\', "/")
}

/// The "Files" section of ARCHITECTURE.md as (heading, body) per `###` subsection.
fn file_sections() -> Vec<(String, String)> {
    let doc =
        fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
    let files = doc
        .split_once("\n## Files\n")
        .expect("docs/ARCHITECTURE.md has a \"## Files\" section")
        .1;
    // The section ends at the next `## ` heading, if any.
    let files = files.split("\n## ").next().unwrap_or(files);
    files
        .split("\n### ")
        .skip(1)
        .map(|s| {
            let (head, body) = s.split_once('\n').unwrap_or((s, ""));
            (head.to_string(), body.to_string())
        })
        .collect()
}

/// `name` stands in `heading` as a whole path (not as the start of a longer one):
/// `src` names the crate root in "src (crate root)" but not in "src/io".
fn names(heading: &str, name: &str) -> bool {
    heading.match_indices(name).any(|(at, _)| {
        let before = heading[..at].chars().last();
        let after = heading[at + name.len()..].chars().next();
        matches!(before, None | Some(' ' | ',' | '('))
            && matches!(after, None | Some(' ' | ',' | ')'))
    })
}

/// Whether `file` (e.g. `src/io/uring/recv.rs`) has its line: its full path in
/// backticks anywhere; or, under a heading naming its root (`src`, `loadgen/src`),
/// its path below that root; or, under a heading naming its top folder
/// (`src/io`), its path below that folder.
fn listed(file: &str, sections: &[(String, String)]) -> bool {
    let root = if file.starts_with("loadgen/src/") {
        "loadgen/src"
    } else {
        "src"
    };
    let below_root = &file[root.len() + 1..];
    sections.iter().any(|(head, body)| {
        let has = |p: &str| body.contains(&format!("`{p}`"));
        if has(file) || (names(head, root) && has(below_root)) {
            return true;
        }
        match below_root.split_once('/') {
            Some((top, rest)) => {
                names(head, &format!("{root}/{top}")) && (has(rest) || has(below_root))
            }
            None => false,
        }
    })
}

#[test]
fn every_source_file_has_its_line_in_architecture_md() {
    let sections = file_sections();
    assert!(
        sections.len() > 5,
        "the Files section has no ### subsections"
    );
    let files: Vec<String> = ["src", "loadgen/src"]
        .iter()
        .flat_map(|d| files_under(d))
        .collect();
    assert!(
        files.len() > 100,
        "found only {} files under src/ and loadgen/src/",
        files.len()
    );
    let missing: Vec<&String> = files.iter().filter(|f| !listed(f, &sections)).collect();
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md \"Files\" has no line for {} file(s); add one saying what each \
         owns (full path in backticks, or the path below the folder its ### heading names):\n  {}",
        missing.len(),
        missing
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

#[test]
fn the_check_tells_listed_from_missing() {
    let sections = vec![
        (
            "src/io".to_string(),
            "| `io/epoll.rs` | x |\n| `uring/send.rs` | y |".to_string(),
        ),
        (
            "src (crate root)".to_string(),
            "| `lib.rs` | z |".to_string(),
        ),
        (
            "loadgen/src".to_string(),
            "| `engine/send.rs` | w |".to_string(),
        ),
    ];
    assert!(listed("src/io/epoll.rs", &sections));
    assert!(listed("src/io/uring/send.rs", &sections));
    assert!(listed("src/lib.rs", &sections));
    assert!(listed("loadgen/src/engine/send.rs", &sections));
    assert!(!listed("src/io/uring/recv.rs", &sections));
    assert!(!listed("src/main.rs", &sections));
    assert!(
        !listed("src/shard/lib.rs", &sections),
        "src/io's heading must not cover src/shard"
    );
    assert!(!listed("loadgen/src/lib.rs", &sections));
}

#[test]
fn every_rust_file_opens_with_what_it_owns() {
    let dirs = [
        "src",
        "loadgen/src",
        "loadgen/tests",
        "tests",
        "benches",
        "perf/src",
    ];
    let mut checked = 0;
    let mut bare = Vec::new();
    for file in dirs.iter().flat_map(|d| files_under(d)) {
        if !file.ends_with(".rs") {
            continue;
        }
        let text = fs::read_to_string(root().join(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        checked += 1;
        if !text.trim_start().starts_with("//") {
            bare.push(file);
        }
    }
    assert!(checked > 200, "checked only {checked} Rust files");
    assert!(
        bare.is_empty(),
        "these files do not open with a comment saying what they own:\n  {}",
        bare.join("\n  ")
    );
}

/// `protocol/packet.rs` uses `reason.rs` (a packet carries reason codes); the other
/// way would close the circle the two files once formed, so `reason.rs` names the
/// packet type through `packet_type.rs` only.
#[test]
fn protocol_reason_does_not_import_packet() {
    let reason = fs::read_to_string(root().join("src/protocol/reason.rs")).expect("reason.rs");
    for import in [
        "super::packet::",
        "protocol::packet::",
        "super::{packet",
        "use super::*",
    ] {
        assert!(
            !reason.contains(import),
            "src/protocol/reason.rs imports packet.rs (`{import}`): use packet_type.rs"
        );
    }
}
