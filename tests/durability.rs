//! Durability with the real binary (issue #13): data directories the broker cannot
//! use are refused at start-up with the directory named and exit status 2, and
//! persistent sessions, their queued and in-flight QoS 1/2 messages, and retained
//! messages survive SIGKILL and restart.
//!
//! Every wait is bounded; nothing asserts how fast anything happens.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

/// A fresh directory under the system temp dir, removed again on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("ringmq-durability-{}", uniq(tag)));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn data(&self) -> String {
        self.0.join("data").display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a broker that must refuse to start; returns its stderr. It exits before
/// binding anything, so nothing needs a free port.
fn refused(args: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringmq"));
    cmd.args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ringmq");
    let status = wait_or_kill(&mut child, Duration::from_secs(30))
        .expect("a broker with an unusable data directory exits");
    let mut err = String::new();
    use std::io::Read;
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    assert_eq!(status.code(), Some(2), "exit status; stderr: {err}");
    err
}

#[test]
fn a_second_broker_on_a_locked_data_directory_is_refused() {
    let t = TempDir::new("lock");
    let data = t.data();
    let _first = Launch::new(&["--data-dir", &data]).spawn();
    let err = refused(&["--data-dir", &data]);
    assert!(
        err.contains(&data) && err.contains("locked by another ringmq"),
        "{err}"
    );
}

#[test]
fn a_data_directory_of_another_store_format_is_refused_by_name() {
    let t = TempDir::new("vers");
    let data = t.data();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(Path::new(&data).join("VERSION"), "ringmq-store-format 99\n").unwrap();
    let err = refused(&["--data-dir", &data]);
    assert!(
        err.contains(&data) && err.contains("ringmq-store-format 99"),
        "{err}"
    );
}

#[test]
fn a_data_directory_that_cannot_be_created_is_refused() {
    // Its parent is a regular file.
    let t = TempDir::new("file");
    std::fs::create_dir_all(t.path()).unwrap();
    let file = t.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let data = file.join("data").display().to_string();
    let err = refused(&["--data-dir", &data]);
    assert!(
        err.contains(&data) && err.contains("cannot create the directory"),
        "{err}"
    );
    // Not writable, even for root: sysfs refuses new directories.
    let data = "/sys/ringmq-durability-test/data";
    let err = refused(&["--data-dir", data]);
    assert!(
        err.contains(data) && err.contains("cannot create the directory"),
        "{err}"
    );
}

#[test]
fn without_a_data_directory_durability_writes_nothing_and_starts() {
    // `durability` alone is accepted (it takes effect with a data_dir) and a bad
    // mode is refused naming the value.
    let mut b = Launch::new(&["--durability", "fsync"]).spawn();
    b.assert_alive();
    let err = refused(&["--durability", "sometimes"]);
    assert!(
        err.contains("durability") && err.contains("sometimes"),
        "{err}"
    );
}
