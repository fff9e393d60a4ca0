//! The whole connection state machine: a 2-shard set of `Shard`s driven by the
//! input as a sequence of operations (accept, bytes in, peer close, time, socket
//! writable, shard-to-shard delivery), with invariants checked along the way:
//! no panic, unread output bounded, byte gauges exact, server output decodable,
//! no `ConnId` reused before its release. See `ringmq::testkit::op`.
//! The checks live in `ringmq::testkit` so `cargo test` replays the seeds too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ringmq::testkit::fuzz_connection(data));
