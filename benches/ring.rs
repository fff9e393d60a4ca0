//! SPSC ring and mesh throughput. Run: `cargo bench --bench ring`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::thread;

use divan::counter::ItemsCount;
use divan::Bencher;
use ringmq::ring::{channel, mesh};

fn main() {
    divan::main();
}

const BATCH: usize = 256;
const CROSS_ITEMS: u64 = 200_000;

/// One push then one pop on the same thread: the uncontended per-item cost.
#[divan::bench]
fn spsc_push_pop_single_thread(bencher: Bencher) {
    let (mut p, mut c) = channel::<u64>(1024);
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let _ = p.push(black_box(7));
        black_box(c.pop())
    });
}

/// `push_from` + `pop_batch` of 256 items: one index store per side per batch.
#[divan::bench]
fn spsc_batch_single_thread(bencher: Bencher) {
    let (mut p, mut c) = channel::<u64>(1024);
    let mut source: VecDeque<u64> = VecDeque::with_capacity(BATCH);
    bencher.counter(ItemsCount::new(BATCH)).bench_local(|| {
        source.extend(0..BATCH as u64);
        p.push_from(&mut source);
        let mut sum = 0u64;
        c.pop_batch(BATCH, |v| sum += v);
        black_box(sum)
    });
}

fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        thread::yield_now();
    }
}

/// A producer thread pushes items one by one while this thread drains with
/// `pop_batch`; measures the whole transfer of `CROSS_ITEMS`.
#[divan::bench(sample_count = 20, sample_size = 1)]
fn spsc_cross_thread(bencher: Bencher) {
    bencher
        .counter(ItemsCount::new(CROSS_ITEMS))
        .bench_local(|| {
            let (mut p, mut c) = channel::<u64>(4096);
            let producer = thread::spawn(move || {
                let mut spins = 0;
                for i in 0..CROSS_ITEMS {
                    let mut value = i;
                    while let Err(back) = p.push(value) {
                        value = back;
                        backoff(&mut spins);
                    }
                }
            });
            let mut received = 0u64;
            let mut spins = 0;
            while received < CROSS_ITEMS {
                let got = c.pop_batch(BATCH, |v| {
                    black_box(v);
                });
                if got == 0 {
                    backoff(&mut spins);
                }
                received += got as u64;
            }
            producer.join().expect("producer panicked");
        });
}

/// Mesh send (with the SeqCst fence + parked check) and `recv_batch`, one thread.
#[divan::bench]
fn mesh_send_recv_single_thread(bencher: Bencher) {
    let mut eps = mesh::<u64>(2, 1024, 1024).expect("valid mesh");
    let mut b = eps.pop().expect("endpoint 1");
    let mut a = eps.pop().expect("endpoint 0");
    bencher.counter(ItemsCount::new(BATCH)).bench_local(|| {
        for i in 0..BATCH as u64 {
            let _ = black_box(a.send(1, i));
        }
        a.flush();
        let mut sum = 0u64;
        b.recv_batch(BATCH, |_, v| sum += v);
        black_box(sum)
    });
}
