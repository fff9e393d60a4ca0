//! One PUBLISH through the sans-IO shard core, the way the worker drives it:
//! `on_read` of the publisher's bytes, then `poll_action`/`take_tx` until every
//! subscriber's encoded copy has been taken (QoS 1: the PUBACKs both ways too).
//! Also one cross-shard hop through a real mesh, and a PUBLISH queued for an offline
//! session. Run: `cargo bench --bench shard`.
//!
//! The driver is shared with the callgrind budget (`perf/src/driver.rs`), so the
//! wall-clock figures here and the instruction counts in `perf/budget.txt` measure
//! the same work.

#[path = "../perf/src/driver.rs"]
mod driver;

use divan::counter::ItemsCount;
use divan::Bencher;
use ringmq::protocol::QoS;

// The broker binary's allocator, so allocation on the measured paths costs what it
// costs in the broker.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

const SUBSCRIBERS: [usize; 4] = [1, 10, 100, 1000];
const PAYLOAD_BYTES: usize = 64;

/// Items are deliveries (one per subscriber per PUBLISH).
fn bench_fanout(bencher: Bencher, subscribers: usize, qos: QoS) {
    run_fanout(
        bencher,
        subscribers,
        driver::Fanout::new(subscribers, qos, PAYLOAD_BYTES),
    );
}

fn bench_fanout_acl(bencher: Bencher, subscribers: usize, qos: QoS, acl: &str) {
    run_fanout(
        bencher,
        subscribers,
        driver::Fanout::with_acl(subscribers, qos, PAYLOAD_BYTES, Some(acl)),
    );
}

fn run_fanout(bencher: Bencher, subscribers: usize, mut fanout: driver::Fanout) {
    let expected = fanout.expected_bytes();
    assert_eq!(
        fanout.publish_once(),
        expected,
        "set-up delivers every copy"
    );
    bencher
        .counter(ItemsCount::new(subscribers))
        .bench_local(|| fanout.publish_once());
    assert_eq!(
        fanout.publish_once(),
        expected,
        "still delivering after the run"
    );
}

#[divan::bench(args = SUBSCRIBERS)]
fn publish_qos0_local(bencher: Bencher, subscribers: usize) {
    bench_fanout(bencher, subscribers, QoS::AtMostOnce);
}

/// With a 100-rule ACL whose granting rule is last (the worst case of the scan):
/// a write check per PUBLISH and a read check per copy.
#[divan::bench(args = SUBSCRIBERS)]
fn publish_qos0_local_acl100(bencher: Bencher, subscribers: usize) {
    bench_fanout_acl(
        bencher,
        subscribers,
        QoS::AtMostOnce,
        &driver::acl_100_rules(),
    );
}

#[divan::bench(args = SUBSCRIBERS)]
fn publish_qos1_local(bencher: Bencher, subscribers: usize) {
    bench_fanout(bencher, subscribers, QoS::AtLeastOnce);
}

/// PUBLISH read on shard 0 → `ShardMsg` through the mesh → shard 1 `on_message` →
/// its one subscriber's `take_tx`, on one thread (the ring cost without a core hop).
#[divan::bench]
fn cross_shard_hop(bencher: Bencher) {
    let mut x = driver::CrossShard::new(PAYLOAD_BYTES);
    let expected = x.expected_bytes();
    assert_eq!(x.hop_once(), expected, "set-up delivers across the mesh");
    bencher
        .counter(ItemsCount::new(1usize))
        .bench_local(|| x.hop_once());
    assert_eq!(x.hop_once(), expected, "still delivering after the run");
}

/// A QoS 1 PUBLISH read and queued for an offline persistent session (copied out
/// of the receive buffer there), plus the publisher's PUBACK. The driver replaces
/// the session every 4,096 messages, so its queue never fills.
#[divan::bench(args = [64, 4096])]
fn queue_offline_qos1(bencher: Bencher, payload_bytes: usize) {
    let mut x = driver::Offline::new(payload_bytes);
    assert_eq!(x.publish_once(), 4, "set-up acknowledges the PUBLISH");
    assert!(x.queued() > 0, "set-up queues for the offline session");
    bencher
        .counter(ItemsCount::new(1usize))
        .bench_local(|| x.publish_once());
    assert_eq!(x.publish_once(), 4, "still acknowledged after the run");
    assert!(x.queued() > 0, "still queueing after the run");
}

/// The same with a log (durability `process`, a disk that completes at once): the
/// records encoded and framed, the PUBACK held and released.
#[divan::bench(args = [64, 4096])]
fn queue_offline_qos1_durable(bencher: Bencher, payload_bytes: usize) {
    let mut x = driver::Offline::durable(payload_bytes);
    assert_eq!(x.publish_once(), 4, "set-up acknowledges the PUBLISH");
    bencher
        .counter(ItemsCount::new(1usize))
        .bench_local(|| x.publish_once());
    assert_eq!(x.publish_once(), 4, "still acknowledged after the run");
}
