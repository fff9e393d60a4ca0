//! Durability (sans-IO core): one write-ahead log per event loop, snapshots, and
//! recovery. Nothing here touches a file or a clock: the writer ([`wal::Wal`]) turns
//! records into [`wal::DiskOp`]s and is told how they went, recovery reads a
//! [`recover::DirView`], and tests run both against a simulated disk (`sim`) that
//! loses what was not synced, tears the last write and flips bits.
//!
//! - `frame`: length + CRC32C + position framing, and where valid data ends;
//! - `record`: the records (sessions, wills, subscriptions, message bodies and each
//!   persistent session's copy, inbound QoS 2 ids, retained) and their codec;
//! - `state`: what records add up to, with its invariants;
//! - `wal`: group commit, segments, failures, snapshot steps;
//! - `snapshot`: the snapshot file format;
//! - `recover`: snapshot + replay, stopping cleanly at the first bad frame;
//! - `rehome`: merging and splitting recovered states when the loop count changed;
//! - `sim` (tests and `testkit`): the simulated disk; `testkit`: the fuzz entry.
//!
//! Why a hand-written log and not redb, fjall, RocksDB or SQLite: each blocks the
//! caller on fsync or runs threads of its own, and a loop must never block on the
//! disk; here every write goes through the loop's own ring (docs/ARCHITECTURE.md,
//! "store").

pub mod frame;
pub mod record;
pub mod recover;
pub mod rehome;
pub mod snapshot;
pub mod state;
pub mod wal;

#[cfg(any(test, feature = "testkit"))]
pub mod sim;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
#[cfg(test)]
mod tests;

/// On-disk format version, written in every snapshot header (and, by the IO side,
/// in the data directory's version file). A reader refuses any other version by name.
pub const FORMAT_VERSION: u32 = 1;

pub use record::{MsgRec, Record, WillRec};
pub use recover::{recover, DirView, RecoverError, Recovered};
pub use state::StoreState;
pub use wal::{DiskError, DiskOp, SyncMode, Wal, WalEvent};
