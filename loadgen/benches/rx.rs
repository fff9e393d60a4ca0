//! loadgen's subscriber receive path: one receive buffer of PUBLISHes read in place
//! and each delivery accounted (sequence tracking, latency histogram, QoS 1 PUBACK).
//! Run: `cargo bench -p loadgen --bench rx`.
//!
//! The fixture is shared with the callgrind budget (`perf/src/loadgen_rx.rs`, paths
//! `loadgen_rx_100_qos0/1` in `perf/budget.txt`), so the wall-clock figures here and
//! the instruction counts there measure the same work.

#[path = "../../perf/src/loadgen_rx.rs"]
mod loadgen_rx;

use divan::counter::ItemsCount;
use divan::Bencher;
use ringmq::protocol::QoS;

fn main() {
    divan::main();
}

/// Items are messages received.
fn bench_rx(bencher: Bencher, qos: QoS) {
    let mut path = loadgen_rx::RxPath::new(qos);
    bencher
        .counter(ItemsCount::new(loadgen_rx::RX_PUBLISHES))
        .bench_local(|| {
            let got = path.receive_once();
            assert_eq!(
                got,
                loadgen_rx::RX_PUBLISHES as u64,
                "a buffer stopped counting"
            );
        });
}

#[divan::bench]
fn receive_buffer_qos0(bencher: Bencher) {
    bench_rx(bencher, QoS::AtMostOnce);
}

#[divan::bench]
fn receive_buffer_qos1(bencher: Bencher) {
    bench_rx(bencher, QoS::AtLeastOnce);
}
