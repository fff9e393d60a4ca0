//! Topic trie benchmarks: matching against 1M subscriptions, insert cost, retained
//! lookups, and heap bytes per subscription (printed before the timing table).
//!
//! Run: `cargo bench --bench topic`.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use divan::counter::ItemsCount;
use divan::{black_box, Bencher};
use ringmq::topic::{parse_shared, TopicTrie};
use smallvec::SmallVec;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{LIVE_BYTES, LIVE_USABLE, TOTAL_ALLOCS};

#[global_allocator]
static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;

const N: u32 = 1_000_000;
/// Topics probed per scenario, spread over the key space.
const PROBES: u32 = 4096;

fn spread(i: u32, n: u32) -> u32 {
    // Multiplicative scatter so consecutive probes hit unrelated keys.
    ((u64::from(i) * 2_654_435_761) % u64::from(n)) as u32
}

/// Builds a trie from `n` keys produced into a reused string.
fn build<V>(
    n: u32,
    mut key: impl FnMut(u32, &mut String),
    mut add: impl FnMut(&mut TopicTrie<V>, &[u8], u32),
) -> TopicTrie<V> {
    let mut trie = TopicTrie::new();
    let mut s = String::new();
    for i in 0..n {
        s.clear();
        key(i, &mut s);
        add(&mut trie, s.as_bytes(), i);
    }
    trie
}

fn exact(n: u32) -> TopicTrie<u32> {
    build(
        n,
        |i, s| {
            let _ = write!(s, "dev/{i}/cmd");
        },
        |t, k, i| {
            let _ = t.insert(k, i);
        },
    )
}

fn plus(n: u32) -> TopicTrie<u32> {
    build(
        n,
        |i, s| {
            let _ = write!(s, "fleet/{i}/+/status");
        },
        |t, k, i| {
            let _ = t.insert(k, i);
        },
    )
}

fn hash(n: u32) -> TopicTrie<u32> {
    build(
        n,
        |i, s| {
            let _ = write!(s, "site/{i}/#");
        },
        |t, k, i| {
            let _ = t.insert(k, i);
        },
    )
}

/// Group ids per inner filter; 4 groups share each filter.
type Groups = SmallVec<[u32; 4]>;

fn shared(n: u32) -> TopicTrie<Groups> {
    build(
        n,
        |i, s| {
            let _ = write!(s, "$share/g{}/job/{}/+", i % 4, i / 4);
        },
        |t, k, i| {
            if let Ok(Some(sh)) = parse_shared(k) {
                t.entry_or_insert_with(sh.filter, Groups::new).push(i % 4);
            }
        },
    )
}

fn report_memory<V>(name: &str, subs: u32, make: impl FnOnce() -> TopicTrie<V>) {
    let (bytes0, usable0, allocs0) = (
        LIVE_BYTES.load(Ordering::Relaxed),
        LIVE_USABLE.load(Ordering::Relaxed),
        TOTAL_ALLOCS.load(Ordering::Relaxed),
    );
    let trie = make();
    let bytes = LIVE_BYTES.load(Ordering::Relaxed) - bytes0;
    let usable = LIVE_USABLE.load(Ordering::Relaxed) - usable0;
    let allocs = TOTAL_ALLOCS.load(Ordering::Relaxed) - allocs0;
    let per = |b: isize| b as f64 / f64::from(subs);
    println!(
        "{name:<28} subs={subs:>7} keys={:>7} nodes={:>7} requested={:>6.1} B/sub usable={:>6.1} B/sub allocs/sub={:.3}",
        trie.len(),
        trie.node_count(),
        per(bytes),
        per(usable),
        allocs as f64 / f64::from(subs),
    );
    drop(trie);
}

fn main() {
    println!("requested = live heap bytes the trie asked for (keys are built in a reused String)");
    println!(
        "usable    = the same allocations as mimalloc sized them (size-class rounding included)"
    );
    report_memory("dev/<i>/cmd (100k clients)", 100_000, || exact(100_000));
    report_memory("dev/<i>/cmd", N, || exact(N));
    report_memory("fleet/<i>/+/status", N, || plus(N));
    report_memory("site/<i>/#", N, || hash(N));
    report_memory("$share/g<i%4>/job/<i/4>/+", N, || shared(N));
    divan::main();
}

fn probes(f: impl Fn(u32, &mut String)) -> Vec<Vec<u8>> {
    (0..PROBES)
        .map(|i| {
            let mut s = String::new();
            f(i, &mut s);
            s.into_bytes()
        })
        .collect()
}

/// Matches each probe topic in turn; the counter is matches found, checked once.
fn bench_match<V>(bencher: Bencher, trie: &TopicTrie<V>, topics: &[Vec<u8>], per_topic: usize) {
    let mut found = 0;
    for t in topics {
        trie.for_each_match(t, |_| found += 1);
    }
    assert_eq!(found, topics.len() * per_topic, "scenario set up wrong");
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) % topics.len();
        let mut n = 0u32;
        trie.for_each_match(black_box(&topics[i]), |v| {
            n += black_box(v as *const V as usize != 0) as u32
        });
        n
    });
}

#[divan::bench(sample_count = 200)]
fn match_exact_1m(bencher: Bencher) {
    let trie = exact(N);
    let topics = probes(|i, s| {
        let _ = write!(s, "dev/{}/cmd", spread(i, N));
    });
    bench_match(bencher, &trie, &topics, 1);
}

/// 1M exact filters plus `#`, `dev/#`, `dev/+/cmd`, `+/+/cmd`: 5 matches per topic.
#[divan::bench(sample_count = 200)]
fn match_exact_1m_plus_wildcards(bencher: Bencher) {
    let mut trie = exact(N);
    for (k, f) in ["#", "dev/#", "dev/+/cmd", "+/+/cmd"].iter().enumerate() {
        trie.insert(f.as_bytes(), N + k as u32);
    }
    let topics = probes(|i, s| {
        let _ = write!(s, "dev/{}/cmd", spread(i, N));
    });
    bench_match(bencher, &trie, &topics, 5);
}

#[divan::bench(sample_count = 200)]
fn match_plus_1m(bencher: Bencher) {
    let trie = plus(N);
    let topics = probes(|i, s| {
        let _ = write!(s, "fleet/{}/door/status", spread(i, N));
    });
    bench_match(bencher, &trie, &topics, 1);
}

#[divan::bench(sample_count = 200)]
fn match_hash_1m(bencher: Bencher) {
    let trie = hash(N);
    let topics = probes(|i, s| {
        let _ = write!(s, "site/{}/a/b/c", spread(i, N));
    });
    bench_match(bencher, &trie, &topics, 1);
}

#[divan::bench(sample_count = 200)]
fn match_shared_1m(bencher: Bencher) {
    let trie = shared(N);
    let topics = probes(|i, s| {
        let _ = write!(s, "job/{}/run", spread(i, N / 4));
    });
    bench_match(bencher, &trie, &topics, 1);
}

/// Topic with no subscriber: the common miss path.
#[divan::bench(sample_count = 200)]
fn match_miss_1m(bencher: Bencher) {
    let trie = exact(N);
    let topics = probes(|i, s| {
        let _ = write!(s, "dev/{}/nope", spread(i, N));
    });
    bench_match(bencher, &trie, &topics, 0);
}

/// Subscribe + unsubscribe of a fresh filter in a 1M-filter trie (node creation,
/// table insert, removal and pruning).
#[divan::bench(sample_count = 200)]
fn insert_remove_in_1m(bencher: Bencher) {
    let mut trie = exact(N);
    let keys = probes(|i, s| {
        let _ = write!(s, "dev/{}/cmd", N + i);
    });
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) % keys.len();
        let k = black_box(&keys[i]);
        trie.insert(k, i as u32);
        trie.remove(k)
    });
}

/// Building 100k `dev/<i>/cmd` from empty, per insert.
#[divan::bench(sample_count = 20)]
fn build_100k(bencher: Bencher) {
    let keys: Vec<String> = (0..100_000).map(|i| format!("dev/{i}/cmd")).collect();
    bencher
        .counter(ItemsCount::new(keys.len()))
        .bench_local(|| {
            let mut trie = TopicTrie::new();
            for (i, k) in keys.iter().enumerate() {
                trie.insert(k.as_bytes(), i as u32);
            }
            trie
        });
}

/// Retained store: 1M names, a wildcard subscription selecting 1000 of them.
#[divan::bench(sample_count = 50)]
fn retained_filter_1k_of_1m(bencher: Bencher) {
    let trie = build(
        N,
        |i, s| {
            let _ = write!(s, "r/{}/{}/state", i / 1000, i % 1000);
        },
        |t, k, i| {
            let _ = t.insert(k, i);
        },
    );
    let filters = probes(|i, s| {
        let _ = write!(s, "r/{}/+/state", spread(i, N / 1000));
    });
    let mut buf = Vec::new();
    let mut i = 0;
    bencher.counter(ItemsCount::new(1000usize)).bench_local(|| {
        i = (i + 1) % filters.len();
        let mut n = 0usize;
        trie.for_each_matching_filter_with(&filters[i], &mut buf, |name, _| n += name.len());
        n
    });
}
