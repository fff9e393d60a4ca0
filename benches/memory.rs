//! Heap bytes the sans-IO shard core keeps per connected client: idle, and with one
//! subscription each (`dev/<i>/cmd`). Prints a table; no timings.
//! Run: `cargo bench --bench memory`.
//!
//! This is the broker's userspace share that the shard owns (connection, session,
//! subscription, trie entries); the IO layer's per-connection state and the kernel's
//! socket memory come on top (see `perf/compare.sh` idle scenarios for whole-process
//! RSS). DESIGN.md's target: at most 600 B of broker RSS per idle connection.

// Only the connection helpers of the shared driver are used here.
#[allow(dead_code)]
#[path = "../perf/src/driver.rs"]
mod driver;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use ringmq::config::Config;
use ringmq::protocol::QoS;
use ringmq::shard::Shard;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{LIVE_ALLOCS, LIVE_BYTES, LIVE_USABLE};

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

/// (requested bytes, usable bytes, live allocations) right now.
fn live() -> (isize, isize, isize) {
    (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_USABLE.load(Ordering::Relaxed),
        LIVE_ALLOCS.load(Ordering::Relaxed),
    )
}

/// Connects `clients` v3.1.1 clients to one shard sized for them (each subscribing
/// to its own `dev/<i>/cmd` when `subscribe`), takes every reply so no transmit
/// buffer stays allocated, and prints the heap growth per client, the shard's own
/// fixed tables included.
fn measure(name: &str, clients: usize, subscribe: bool) {
    let now = Instant::now();
    // A broker sized for this load: the connection and session tables are presized
    // for `max_connections` (address space only until used, so the broker's RSS is
    // what is used), which the counter would otherwise report in full.
    let config = Config {
        max_connections: clients,
        ..Config::default()
    };
    // Counted from before the shard exists, so the presized tables are included.
    let before = live();
    let mut shard = Shard::new(0, 1, Arc::new(config));
    for i in 0..clients {
        let id = driver::client_id_on(0, 1, "dev", i);
        let conn = driver::connect(&mut shard, id, now);
        if subscribe {
            let filter = format!("dev/{i}/cmd");
            shard.on_read(
                conn,
                &driver::subscribe_frame(&filter, QoS::AtLeastOnce),
                now,
            );
        }
        driver::drain(
            &mut shard,
            |_, _| {},
            |_, _| panic!("one shard sends nothing"),
        );
    }
    let after = live();
    assert_eq!(shard.stats().connections, clients, "every client connected");
    let expected_subs = if subscribe { clients } else { 0 };
    assert_eq!(
        shard.stats().subscriptions,
        expected_subs,
        "every subscription taken"
    );
    let per = |a: isize, b: isize| (b - a) as f64 / clients as f64;
    println!(
        "{name:<24} clients={clients:>6} requested={:>7.1} B/client usable={:>7.1} B/client allocations/client={:.2}",
        per(before.0, after.0),
        per(before.1, after.1),
        per(before.2, after.2),
    );
    drop(shard);
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test --benches` this runs as a smoke
    // test in a debug build, so keep it small there.
    let counts: &[usize] = if std::env::args().any(|a| a == "--bench") {
        &[10_000, 100_000]
    } else {
        &[1_000]
    };
    println!("shard core heap per connected client (mimalloc; CONNECT v3.1.1, clean session)");
    for &clients in counts {
        measure("idle", clients, false);
        measure("one subscription", clients, true);
    }
}
