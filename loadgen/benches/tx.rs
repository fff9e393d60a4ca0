//! loadgen's publish path: one publisher's burst of PUBLISHes appended to its output
//! from the pre-encoded frame. Run: `cargo bench -p loadgen --bench tx`.
//!
//! The fixture is shared with the callgrind budget (`perf/src/loadgen_tx.rs`, paths
//! `loadgen_tx_100_qos0/1` in `perf/budget.txt`).

#[path = "../../perf/src/loadgen_tx.rs"]
mod loadgen_tx;

use divan::counter::ItemsCount;
use divan::Bencher;
use ringmq::protocol::QoS;

fn main() {
    divan::main();
}

/// Items are messages published.
fn bench_tx(bencher: Bencher, qos: QoS) {
    let mut path = loadgen_tx::TxPath::new(qos);
    let mut now = 0u64;
    bencher
        .counter(ItemsCount::new(loadgen_tx::TX_PUBLISHES))
        .bench_local(|| {
            now += 1;
            let bytes = path.publish_once(now);
            assert!(
                bytes >= loadgen_tx::TX_PUBLISHES * 64,
                "a burst made {bytes} bytes"
            );
        });
}

#[divan::bench]
fn publish_burst_qos0(bencher: Bencher) {
    bench_tx(bencher, QoS::AtMostOnce);
}

#[divan::bench]
fn publish_burst_qos1(bencher: Bencher) {
    bench_tx(bencher, QoS::AtLeastOnce);
}
