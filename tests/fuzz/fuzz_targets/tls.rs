//! Arbitrary bytes into the server side of the TLS transform (raw, or as application
//! data after a real handshake, then raw): never a panic, never plaintext without a
//! handshake, a real client's records decrypt to exactly what it sent.
//! The checks live in `ringmq::testkit` so `cargo test` replays the seeds too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringmq::testkit::fuzz_tls(data));
