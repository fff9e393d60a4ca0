//! The store's log and snapshot readers: arbitrary bytes as a log segment, a snapshot,
//! or both must never panic, and whatever recovery accepts must be a valid state that
//! survives its own snapshot and a second recovery unchanged.
//! The checks live in `ringmq::store::testkit` so `cargo test` replays the seeds too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringmq::store::testkit::fuzz_store(data));
