//! The shard's test drivers, compiled for tests and behind the `testkit` feature
//! only (never in the broker): each runs a set of `Shard`s the way the worker does,
//! without sockets or clocks.
//! - `wiring`: what both drivers share, written once: the IO side's bookkeeping of
//!   connections (which peer each `(shard, ConnId)` is; `Migrate`, refused and held
//!   hand-offs, release) and taking control messages into a bounded test mesh;
//! - `harness` (tests only): the in-memory `Cluster` for exact-packet tests, with
//!   MQTT test clients and a virtual clock;
//! - `testkit`: the fuzz driver behind `ringmq::testkit` (`tests/fuzz`), whose
//!   input chooses every step and which checks invariants as it goes;
//! - `seeds`: the fuzz seeds, replayed by `cargo test`.

#[cfg(test)]
pub(crate) mod harness;
pub(crate) mod seeds;
pub mod testkit;
mod wiring;

/// The wall clock the test drivers' verifier answers with (Unix seconds, 2027-01-15),
/// so tests mint tokens whose `exp`/`nbf` are relative to a fixed time.
pub const UNIX_NOW_S: u64 = 1_800_000_000;
