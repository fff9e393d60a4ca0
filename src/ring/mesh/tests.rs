//! Tests of the mesh: delivery order and source ids, overflow bounds, reservations,
//! receive budgets, and the parked protocol under real threads (no lost wake-up).

use super::*;
use std::sync::atomic::AtomicUsize as StdAtomicUsize;
use std::sync::{mpsc, Barrier};
use std::thread;
use std::time::Duration;

#[test]
fn endpoint_is_send() {
    fn assert_send<S: Send>() {}
    assert_send::<Endpoint<Vec<u8>>>();
}

#[test]
fn rejects_bad_shard_counts() {
    assert_eq!(mesh::<u8>(0, 4, 4).err(), Some(RingError::NoShards));
    assert_eq!(
        mesh::<u8>(MAX_SHARDS + 1, 4, 4).err(),
        Some(RingError::TooManyShards {
            shards: MAX_SHARDS + 1,
            max: MAX_SHARDS
        })
    );
    let single = mesh::<u8>(1, 4, 4).expect("one shard is valid");
    assert_eq!((single[0].id(), single[0].shard_count()), (0, 1));
}

#[test]
fn send_to_self_or_unknown_shard_is_an_error() {
    let mut eps = mesh::<u32>(3, 4, 4).expect("valid mesh");
    assert_eq!(eps[1].send(1, 7), Err(SendError::NoSuchShard(7)));
    assert_eq!(eps[1].send(3, 8), Err(SendError::NoSuchShard(8)));
    assert_eq!(eps[1].stats(), MeshStats::default());
}

#[test]
fn delivers_with_source_ids_in_order() {
    let mut eps = mesh::<u32>(3, 8, 4).expect("valid mesh");
    for (from, to, msg) in [(0, 2, 1), (1, 2, 10), (0, 2, 2), (2, 0, 20), (0, 1, 3)] {
        assert_eq!(eps[from].send(to, msg), Ok(SendOutcome::Queued));
    }
    let mut got = Vec::new();
    assert_eq!(eps[2].recv_batch(10, |from, m| got.push((from, m))), 3);
    got.sort_by_key(|&(from, _)| from); // stable: keeps per-source order
    assert_eq!(got, [(0, 1), (0, 2), (1, 10)]);
    let mut got = Vec::new();
    assert_eq!(eps[0].recv_batch(10, |from, m| got.push((from, m))), 1);
    assert_eq!(got, [(2, 20)]);
    assert_eq!(eps[0].stats().sent, 3);
}

#[test]
fn is_full_predicts_rejection() {
    for overflow_max in [0, 2] {
        let mut eps = mesh::<u32>(2, 2, overflow_max).expect("valid mesh");
        let mut m = 0;
        while !eps[0].is_full(1) {
            assert!(eps[0].send(1, m).is_ok(), "overflow_max {overflow_max}");
            m += 1;
        }
        assert_eq!(m, 2 + overflow_max as u32);
        assert_eq!(eps[0].send(1, m), Err(SendError::Rejected(m)));
        assert!(eps[0].is_full(5));
        assert!(eps[0].is_full(0));
    }
}

#[test]
fn a_reserved_place_survives_a_full_mesh() {
    let mut eps = mesh::<u32>(2, 2, 3).expect("valid mesh");
    assert!(eps[0].reserve(1));
    // Ring (2) + unpromised overflow (2) fill up; the promised place is kept.
    for m in 0..4 {
        assert!(eps[0].send(1, m).is_ok(), "message {m}");
    }
    assert!(eps[0].is_full(1));
    assert_eq!(eps[0].send(1, 90), Err(SendError::Rejected(90)));
    assert!(!eps[0].reserve(1), "no unpromised room left");
    assert_eq!(eps[0].send_reserved(1, 4), Ok(SendOutcome::Overflowed));
    assert_eq!(eps[0].overflow_len(1), 3);
    let mut got = Vec::new();
    while eps[0].has_overflow() || eps[1].has_inbound() {
        eps[1].recv_batch(8, |_, m| got.push(m));
        eps[0].flush();
    }
    assert_eq!(got, [0, 1, 2, 3, 4]);
    // A place given back is free for anyone again.
    assert!(eps[0].reserve(1) && eps[0].reserve(1) && eps[0].reserve(1));
    assert!(!eps[0].reserve(1));
    eps[0].unreserve(1);
    assert!(eps[0].reserve(1));
    assert!(!eps[0].reserve(0) && !eps[0].reserve(7));
}

#[test]
fn overflow_keeps_fifo_and_rejects_beyond_bound() {
    let mut eps = mesh::<u32>(2, 2, 4).expect("valid mesh");
    let outcomes: Vec<_> = (0..8).map(|m| eps[0].send(1, m)).collect();
    assert_eq!(
        outcomes,
        [
            Ok(SendOutcome::Queued),
            Ok(SendOutcome::Queued),
            Ok(SendOutcome::Overflowed),
            Ok(SendOutcome::Overflowed),
            Ok(SendOutcome::Overflowed),
            Ok(SendOutcome::Overflowed),
            Err(SendError::Rejected(6)),
            Err(SendError::Rejected(7)),
        ]
    );
    let stats = eps[0].stats();
    assert_eq!((stats.sent, stats.overflowed, stats.rejected), (2, 4, 2));
    assert_eq!(eps[0].overflow_len(1), 4);
    assert!(eps[0].has_overflow());
    // Nothing freed yet: flush moves nothing.
    assert_eq!(eps[0].flush(), WakeSet::default());
    assert_eq!(eps[0].overflow_len(1), 4);

    let mut got = Vec::new();
    assert_eq!(eps[1].recv_batch(1, |_, m| got.push(m)), 1);
    assert_eq!(eps[0].flush(), WakeSet::default());
    assert_eq!(eps[0].overflow_len(1), 3);
    assert_eq!(eps[1].recv_batch(1, |_, m| got.push(m)), 1);
    // The ring has a free slot, but older messages wait in overflow: FIFO wins.
    assert_eq!(eps[0].send(1, 8), Ok(SendOutcome::Overflowed));
    assert_eq!(eps[0].send(1, 9), Err(SendError::Rejected(9)));
    while eps[0].has_overflow() {
        eps[1].recv_batch(1, |_, m| got.push(m));
        eps[0].flush();
    }
    eps[1].recv_batch(10, |_, m| got.push(m));
    assert_eq!(got, [0, 1, 2, 3, 4, 5, 8]);
    let stats = eps[0].stats();
    assert_eq!((stats.sent, stats.overflowed, stats.rejected), (7, 5, 3));
    // Overflow drained: sends go straight to the ring again.
    assert_eq!(eps[0].send(1, 10), Ok(SendOutcome::Queued));
}

#[test]
fn recv_batch_shares_budget_and_rotates() {
    let mut eps = mesh::<u32>(3, 8, 0).expect("valid mesh");
    for m in 0..4 {
        eps[0].send(2, m).expect("room");
        eps[1].send(2, 100 + m).expect("room");
    }
    let mut got = Vec::new();
    assert_eq!(eps[2].recv_batch(4, |from, m| got.push((from, m))), 4);
    assert_eq!(got, [(0, 0), (0, 1), (1, 100), (1, 101)]);
    // Source 0 now has less than its share: the leftover goes to source 1.
    let mut got = Vec::new();
    eps[0].send(2, 4).expect("room");
    // Next call starts at source 1 (rotation).
    assert_eq!(eps[2].recv_batch(3, |from, m| got.push((from, m))), 3);
    assert_eq!(got, [(1, 102), (1, 103), (0, 2)]);
    let mut got = Vec::new();
    assert_eq!(eps[2].recv_batch(10, |from, m| got.push((from, m))), 2);
    assert_eq!(got, [(0, 3), (0, 4)]);
    assert_eq!(eps[2].recv_batch(10, |_, _| {}), 0);
    assert_eq!(eps[2].recv_batch(0, |_, _| {}), 0);
}

#[test]
fn recv_batch_budget_leftover_second_pass() {
    let mut eps = mesh::<u32>(4, 16, 0).expect("valid mesh");
    // Share per source is ceil(9 / 3) = 3; source 0 has 1, sources 1 and 2 have 8.
    eps[0].send(3, 0).expect("room");
    for m in 0..8 {
        eps[1].send(3, 10 + m).expect("room");
        eps[2].send(3, 20 + m).expect("room");
    }
    let mut got = Vec::new();
    assert_eq!(eps[3].recv_batch(9, |from, m| got.push((from, m))), 9);
    assert_eq!(
        got,
        [
            (0, 0),
            (1, 10),
            (1, 11),
            (1, 12),
            (2, 20),
            (2, 21),
            (2, 22),
            (1, 13),
            (1, 14)
        ]
    );
}

#[test]
fn park_flag_claimed_once_and_cleared() {
    let mut eps = mesh::<u32>(3, 4, 4).expect("valid mesh");
    assert!(eps[2].prepare_park());
    assert_eq!(eps[0].send(2, 1), Ok(SendOutcome::QueuedWake));
    // Claimed by the first send: no second doorbell for the same park.
    assert_eq!(eps[1].send(2, 2), Ok(SendOutcome::Queued));
    eps[2].unpark();
    // Pending messages: must not park.
    assert!(!eps[2].prepare_park());
    assert_eq!(eps[0].send(2, 3), Ok(SendOutcome::Queued));
    assert_eq!(eps[2].recv_batch(10, |_, _| {}), 3);
    assert!(eps[2].prepare_park());
    eps[2].unpark();
    assert_eq!(eps[0].send(2, 4), Ok(SendOutcome::Queued));
}

#[test]
fn own_overflow_prevents_parking() {
    let mut eps = mesh::<u32>(2, 1, 4).expect("valid mesh");
    assert_eq!(eps[0].send(1, 1), Ok(SendOutcome::Queued));
    assert_eq!(eps[0].send(1, 2), Ok(SendOutcome::Overflowed));
    assert!(!eps[0].prepare_park());
    eps[1].recv_batch(1, |_, _| {});
    assert!(eps[1].prepare_park());
    let wake = eps[0].flush();
    assert_eq!(wake.iter().collect::<Vec<_>>(), [1]);
    assert!(!eps[0].has_overflow());
    assert!(eps[0].prepare_park());
}

#[test]
fn wake_set_operations() {
    let mut set = WakeSet::default();
    assert!(set.is_empty());
    for shard in [0, 63, 64, 255, 256, 1000] {
        set.insert(shard);
    }
    assert_eq!(set.iter().collect::<Vec<_>>(), [0, 63, 64, 255]);
    assert_eq!(set.len(), 4);
    assert!(set.contains(64) && !set.contains(65) && !set.contains(256));
}

fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        thread::yield_now();
    }
}

/// Every thread sends `(seq)` to every other; tiny rings force overflow, a burst
/// before anyone receives forces rejection. Checks exactly-once, FIFO per pair,
/// and that received + rejected covers every sequence number.
#[test]
fn all_to_all_exactly_once_fifo_with_overflow_and_rejection() {
    const SHARDS: usize = 4;
    const PER_PAIR: u32 = if cfg!(miri) { 200 } else { 20_000 };
    const RING: usize = 4;
    const OVERFLOW_MAX: usize = 16;
    const BURST: u32 = 30; // > RING + OVERFLOW_MAX: rejection is certain
    let eps = mesh::<u32>(SHARDS, RING, OVERFLOW_MAX).expect("valid mesh");
    let barrier = Arc::new(Barrier::new(SHARDS));
    let finished = Arc::new(StdAtomicUsize::new(0));
    let handles: Vec<_> = eps
        .into_iter()
        .map(|mut ep| {
            let barrier = barrier.clone();
            let finished = finished.clone();
            thread::spawn(move || {
                let me = ep.id();
                let mut rejected: Vec<Vec<u32>> = vec![Vec::new(); SHARDS];
                let mut received: Vec<Vec<u32>> = vec![Vec::new(); SHARDS];
                let mut next = 0u32;
                let mut send_round = |ep: &mut Endpoint<u32>, seq: u32| {
                    for to in (0..SHARDS).filter(|&to| to != me) {
                        match ep.send(to, seq) {
                            Ok(_) => {}
                            Err(SendError::Rejected(m)) => rejected[to].push(m),
                            Err(SendError::NoSuchShard(m)) => panic!("bad shard for {m}"),
                        }
                    }
                };
                while next < BURST {
                    send_round(&mut ep, next);
                    next += 1;
                }
                let burst_stats = ep.stats();
                barrier.wait();
                let mut marked = false;
                let mut spins = 0;
                loop {
                    let mut progress = 0;
                    if next < PER_PAIR {
                        send_round(&mut ep, next);
                        next += 1;
                        progress += 1;
                    }
                    ep.flush();
                    progress += ep.recv_batch(64, |from, m| received[from].push(m));
                    if next == PER_PAIR && !ep.has_overflow() && !marked {
                        finished.fetch_add(1, Ordering::SeqCst);
                        marked = true;
                    }
                    if marked && finished.load(Ordering::SeqCst) == SHARDS {
                        while ep.recv_batch(64, |from, m| received[from].push(m)) > 0 {}
                        break;
                    }
                    if progress == 0 {
                        backoff(&mut spins);
                    } else {
                        spins = 0;
                    }
                }
                (me, burst_stats, ep.stats(), rejected, received)
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("shard thread panicked"))
        .collect();
    for (me, burst, _, _, _) in &results {
        let others = (SHARDS - 1) as u64;
        // Before the barrier nobody received: exact split per destination.
        assert_eq!(burst.sent, others * RING as u64, "shard {me}");
        assert_eq!(burst.overflowed, others * OVERFLOW_MAX as u64, "shard {me}");
        let rejected_in_burst = u64::from(BURST) - (RING + OVERFLOW_MAX) as u64;
        assert_eq!(burst.rejected, others * rejected_in_burst, "shard {me}");
    }
    for (from, _, stats, rejected, _) in &results {
        let total_rejected: usize = rejected.iter().map(Vec::len).sum();
        assert_eq!(stats.rejected, total_rejected as u64);
        let total = u64::from(PER_PAIR) * (SHARDS - 1) as u64;
        assert_eq!(stats.sent + stats.rejected, total, "shard {from}");
        for (to, _, _, _, received) in &results {
            if from == to {
                continue;
            }
            let got = &received[*from];
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "FIFO {from}->{to} violated"
            );
            let lost = &rejected[*to];
            let mut all: Vec<u32> = got.iter().chain(lost).copied().collect();
            all.sort_unstable();
            let want: Vec<u32> = (0..PER_PAIR).collect();
            assert_eq!(all, want, "pair {from}->{to}");
        }
    }
}

/// Models the doorbell: the consumer blocks in `thread::park` only when
/// `prepare_park` says so; producers `unpark` it on `QueuedWake` or a flush wake.
/// A lost wake-up would hang the consumer; the watchdog turns that into a failure.
#[test]
fn parked_protocol_never_loses_a_wakeup() {
    const PRODUCERS: usize = 2;
    const PER_PRODUCER: u32 = if cfg!(miri) { 500 } else { 50_000 };
    let mut eps = mesh::<u32>(PRODUCERS + 1, 8, 32)
        .expect("valid mesh")
        .into_iter();
    let mut consumer_ep = eps.next().expect("endpoint 0");
    let (done_tx, done_rx) = mpsc::channel();
    let consumer = thread::spawn(move || {
        let mut next = [0u32; PRODUCERS + 1];
        let mut total = 0usize;
        let mut parks = 0usize;
        let mut park_attempts = 0usize;
        while total < PRODUCERS * PER_PRODUCER as usize {
            let got = consumer_ep.recv_batch(128, |from, m| {
                assert_eq!(m, next[from], "FIFO from {from}");
                next[from] += 1;
            });
            total += got;
            if got != 0 {
                continue;
            }
            park_attempts += 1;
            if consumer_ep.prepare_park() {
                parks += 1;
                thread::park();
                consumer_ep.unpark();
            }
        }
        let _ = done_tx.send(());
        (total, parks, park_attempts)
    });
    let consumer_thread = consumer.thread().clone();
    let producers: Vec<_> = eps
        .map(|mut ep| {
            let consumer_thread = consumer_thread.clone();
            thread::spawn(move || {
                let mut doorbells = 0usize;
                let mut ring = |wake: bool| {
                    if wake {
                        doorbells += 1;
                        consumer_thread.unpark();
                    }
                };
                for m in 0..PER_PRODUCER {
                    let mut msg = m;
                    loop {
                        match ep.send(0, msg) {
                            Ok(outcome) => {
                                ring(outcome == SendOutcome::QueuedWake);
                                break;
                            }
                            Err(SendError::Rejected(back)) => {
                                msg = back;
                                ring(ep.flush().contains(0));
                                thread::yield_now();
                            }
                            Err(SendError::NoSuchShard(m)) => panic!("bad shard for {m}"),
                        }
                    }
                    ring(ep.flush().contains(0));
                }
                while ep.has_overflow() {
                    ring(ep.flush().contains(0));
                    thread::yield_now();
                }
                doorbells
            })
        })
        .collect();
    // Liveness bound, not a performance assertion: 1e5 messages take well under a
    // second; only a lost wake-up can take minutes.
    let finished = done_rx.recv_timeout(Duration::from_secs(300));
    assert!(finished.is_ok(), "consumer never finished: lost wake-up");
    let (total, parks, park_attempts) = consumer.join().expect("consumer panicked");
    let doorbells: usize = producers
        .into_iter()
        .map(|p| p.join().expect("producer panicked"))
        .sum();
    assert_eq!(total, PRODUCERS * PER_PRODUCER as usize);
    // Each published flag is claimed at most once, so doorbells never exceed the
    // park attempts (some are spurious: claimed after the consumer declined).
    assert!(
        doorbells <= park_attempts,
        "{doorbells} doorbells, {park_attempts} attempts, {parks} parks"
    );
}
