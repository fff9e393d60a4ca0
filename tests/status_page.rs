//! The status page in a real browser: headless Chromium (Debian's `chromium`,
//! installed by tests/install-deps.sh; the test fails if it is missing) loads `/`
//! from a broker carrying live MQTT traffic, and the DOM it renders after a few
//! polls of `/api/stats` shows non-zero connections and msg/s. A screenshot is kept
//! under the test output directory (`$CARGO_TARGET_TMPDIR/status-page/`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use support::{uniq, Launch, RawClient, ReadOutcome};

const CHROMIUM: &str = "/usr/bin/chromium";

fn chromium(profile: &Path, extra: &[&str], url: &str) -> std::process::Output {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} not found: tests/install-deps.sh installs Debian's chromium"
    );
    let user_data = format!("--user-data-dir={}", profile.display());
    let mut args = vec![
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        // Virtual time runs ahead while nothing is pending, and waits for fetches:
        // 8 s of it is 8 polls of /api/stats.
        "--virtual-time-budget=8000",
        user_data.as_str(),
    ];
    args.extend_from_slice(extra);
    args.push(url);
    Command::new(CHROMIUM)
        .args(&args)
        .output()
        .expect("run chromium")
}

/// The text of the element with `id` in a dumped DOM.
fn text_of(dom: &str, id: &str) -> String {
    let open = format!("id=\"{id}\">");
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("#{id} not in the DOM:\n{dom}"))
        + open.len();
    dom[start..]
        .split('<')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// A number as the page prints it (`12`, `1.5k`, `2.00M`).
fn value(text: &str) -> f64 {
    let (num, mult) = match text.chars().last() {
        Some('k') => (&text[..text.len() - 1], 1e3),
        Some('M') => (&text[..text.len() - 1], 1e6),
        Some('G') => (&text[..text.len() - 1], 1e9),
        _ => (text, 1.0),
    };
    num.parse::<f64>()
        .unwrap_or_else(|_| panic!("not a number: {text:?}"))
        * mult
}

#[test]
fn the_status_page_shows_live_connections_and_rates_in_chromium() {
    let broker = Launch::new(&["--shards", "2"]).spawn();
    let http = broker.http_addr().expect("http listener");
    let stop = Arc::new(AtomicBool::new(false));

    // Live traffic for the whole browser run: a publisher and a subscriber that reads.
    let mut sub = RawClient::connect_v311(broker.addr(), &uniq("pagesub"));
    sub.subscribe_ok(1, "page/#", 0);
    let reader = {
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let ReadOutcome::Closed = sub.read_frame_within(Duration::from_millis(100)) {
                    panic!("the subscriber was closed");
                }
            }
        })
    };
    let mut publ = RawClient::connect_v311(broker.addr(), &uniq("pagepub"));
    let writer = {
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..20 {
                    publ.publish("page/t", 0, false, 0, b"status page traffic");
                }
                thread::sleep(Duration::from_millis(2));
            }
        })
    };

    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).expect("output dir");
    let url = format!("http://{http}/");

    let dom_run = chromium(&out_dir.join("profile-dom"), &["--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&dom_run.stdout).into_owned();
    std::fs::write(out_dir.join("status.html"), &dom).expect("save DOM");
    let shot = out_dir.join("status.png");
    let screenshot = format!("--screenshot={}", shot.display());
    let shot_run = chromium(
        &out_dir.join("profile-shot"),
        &[&screenshot, "--window-size=1200,900", "--hide-scrollbars"],
        &url,
    );

    stop.store(true, Ordering::Relaxed);
    writer.join().expect("publisher");
    reader.join().expect("subscriber");

    assert!(
        dom_run.status.success(),
        "chromium --dump-dom: {:?}\n{}",
        dom_run.status,
        String::from_utf8_lossy(&dom_run.stderr)
    );
    assert_eq!(
        text_of(&dom, "error"),
        "",
        "the page reported a failed poll"
    );
    let connections = value(&text_of(&dom, "connections"));
    let rate_in = value(&text_of(&dom, "rate_in"));
    let rate_out = value(&text_of(&dom, "rate_out"));
    assert!(connections >= 2.0, "connections {connections}");
    assert!(
        rate_in > 0.0 && rate_out > 0.0,
        "msg/s in {rate_in}, out {rate_out}"
    );
    // One row per loop in the busy table.
    assert_eq!(dom.matches("<tr><td>").count(), 2, "{dom}");

    assert!(
        shot_run.status.success() && shot.exists(),
        "chromium --screenshot: {:?}\n{}",
        shot_run.status,
        String::from_utf8_lossy(&shot_run.stderr)
    );
    eprintln!("status page screenshot: {}", shot.display());
}
