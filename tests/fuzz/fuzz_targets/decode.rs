//! Arbitrary bytes into the decoder, for every protocol version, in arbitrary chunks:
//! it must never panic, must consume only whole frames, and every packet it returns
//! must encode back to bytes that decode to the same packet.
//! The checks live in `ringmq::testkit` so `cargo test` replays the seeds too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringmq::testkit::fuzz_decode(data));
