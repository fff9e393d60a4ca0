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

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ringmq::config::Config;
use ringmq::protocol::QoS;
use ringmq::shard::Shard;

/// Counts live heap bytes (as requested and as mimalloc sized them) and allocations
/// on top of mimalloc, the allocator the broker binary uses.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static LIVE_USABLE: AtomicIsize = AtomicIsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

extern "C" {
    // Part of mimalloc's C API, linked by libmimalloc-sys.
    fn mi_usable_size(p: *const std::ffi::c_void) -> usize;
}

fn usable(p: *mut u8) -> isize {
    if p.is_null() {
        return 0;
    }
    // SAFETY: `p` is a live block allocated by mimalloc (checked non-null above).
    unsafe { mi_usable_size(p.cast()) as isize }
}

// SAFETY: every method forwards to mimalloc with the caller's arguments unchanged and
// only updates counters, so mimalloc's guarantees carry over.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            LIVE_USABLE.fetch_add(usable(p), Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        LIVE_USABLE.fetch_sub(usable(ptr), Ordering::Relaxed);
        ALLOCS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc`/`realloc` above with this layout.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_usable = usable(ptr);
        // SAFETY: same contract as our caller's.
        let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
            LIVE_USABLE.fetch_add(usable(p) - old_usable, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// (requested bytes, usable bytes, live allocations) right now.
fn live() -> (isize, isize, isize) {
    (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_USABLE.load(Ordering::Relaxed),
        ALLOCS.load(Ordering::Relaxed) as isize,
    )
}

/// Connects `clients` v3.1.1 clients to one shard (each subscribing to its own
/// `dev/<i>/cmd` when `subscribe`), takes every reply so no transmit buffer stays
/// allocated, and prints the heap growth per client.
fn measure(name: &str, clients: usize, subscribe: bool) {
    let now = Instant::now();
    let mut shard = Shard::new(0, 1, Arc::new(Config::default()));
    let before = live();
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
    let clients = if std::env::args().any(|a| a == "--bench") {
        100_000
    } else {
        1_000
    };
    println!("shard core heap per connected client (mimalloc; CONNECT v3.1.1, clean session)");
    measure("idle", clients, false);
    measure("one subscription", clients, true);
}
