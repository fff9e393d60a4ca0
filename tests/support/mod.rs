//! Shared harness for the conformance, profile and interop tests.
//!
//! - [`Broker`] spawns the `ringmq` binary on an ephemeral port (or, with
//!   `RINGMQ_TEST_ADDR=host:port`, points at a broker that is already running, e.g.
//!   Mosquitto, to validate expectations). `RINGMQ_TEST_IO=uring|epoll` runs every
//!   spawned broker whose arguments name no backend on that one ([`test_io`]).
//! - [`RawClient`] is a blocking TCP client with bounded read timeouts that speaks raw
//!   bytes; `pkt` builds packets byte by byte (independent of the codec under test),
//!   and `recv_packet`/`send_packet` use `ringmq::protocol` where structure matters more
//!   than byte order (e.g. MQTT 5 properties, whose order the spec leaves open).
//!
//! Every wait is bounded; no test asserts how fast something happens, only that it
//! happens before a generous deadline.
//!
//! Files: `broker` (the broker process), `raw_client` (raw client and frames), `parsed`
//! (server packets parsed by hand), `pkt` (packet builders), `bystander`, `tools`
//! (external tools: find, require, run), `certs` (rcgen test certificates), `cut_proxy`
//! (a TCP proxy that cuts its connections: a partition), `nats` (nats-servers for the
//! cluster tests, alone or as a formed JetStream cluster). This file holds
//! the timeouts, unique names, hex helpers and shard placement.

#![allow(dead_code, unused_imports)] // each test crate uses a different subset

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ringmq::protocol::{decode_packet, encode_packet, Packet, ProtocolVersion};

pub use ringmq::protocol::ProtocolVersion::{V311, V5};

mod broker;
mod bystander;
mod certs;
mod cut_proxy;
mod nats;
mod parsed;
pub mod pkt;
mod raw_client;
mod tools;

pub use broker::*;
pub use bystander::*;
pub use certs::*;
pub use cut_proxy::*;
pub use nats::*;
pub use parsed::*;
pub use raw_client::*;
pub use tools::*;

/// How long a test waits for an expected packet before failing.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the broker gets to print its listening address.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a test waits to make sure something does NOT arrive (e.g. a discarded will).
pub const QUIET: Duration = Duration::from_millis(700);

// ---------------------------------------------------------------------------------------
// Unique names
// ---------------------------------------------------------------------------------------

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique within this process and, practically, across runs against one external
/// broker (retained messages and persistent sessions outlive a run there). At most 18
/// characters for a tag of up to 6, so client ids stay within 3.1.1's 23.
pub fn uniq(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32).wrapping_mul(2_654_435_761))
        .unwrap_or(0);
    let mix = nanos ^ std::process::id().wrapping_mul(40_503);
    format!(
        "{}{:07x}{:03}",
        &tag[..tag.len().min(6)],
        mix & 0x0fff_ffff,
        n % 1000
    )
}

// ---------------------------------------------------------------------------------------
// Hex
// ---------------------------------------------------------------------------------------

/// Parses "10 0c 00 04" (spaces optional) into bytes.
pub fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits in {s:?}");
    digits
        .chunks(2)
        .map(|p| {
            let s = std::str::from_utf8(p).expect("ascii");
            u8::from_str_radix(s, 16).unwrap_or_else(|_| panic!("bad hex {s:?}"))
        })
        .collect()
}

pub fn to_hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------------------
// Shard placement (real clients on a multi-shard broker)
// ---------------------------------------------------------------------------------------

/// Shards of the broker that real-client tests start, so that every client can be placed
/// on a shard of its own.
pub const PLACED_SHARDS: usize = 4;

/// The placement seed every spawned broker gets (`--placement-seed`), unless its
/// arguments name one. An external broker (`RINGMQ_TEST_ADDR`) must be started with
/// it for placed clients to land where the tests expect.
pub const TEST_PLACEMENT_SEED: u64 = 0x7e57_5eed;

/// `PREFIX-N`, the first such client id whose session the broker's owner hash puts on
/// `shard` of `shards` (the same function the broker uses, keyed with
/// [`TEST_PLACEMENT_SEED`]). With `prefix` from [`uniq`]
/// the id stays within MQTT 3.1.1's 23 characters.
pub fn id_on_shard(prefix: &str, shard: usize, shards: usize) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| ringmq::shard::owner_shard(TEST_PLACEMENT_SEED, id.as_bytes(), shards) == shard)
        .expect("some id hashes to every shard")
}

/// A unique client id (from [`uniq`]`(tag)`) owned by `shard` of [`PLACED_SHARDS`].
pub fn placed_id(tag: &str, shard: usize) -> String {
    id_on_shard(&uniq(tag), shard, PLACED_SHARDS)
}

impl Broker {
    /// A broker with [`PLACED_SHARDS`] shards (or the external one named by
    /// `RINGMQ_TEST_ADDR`), for tests that put each client on a chosen shard.
    pub fn placed() -> Broker {
        Broker::start(&["--shards", &PLACED_SHARDS.to_string()])
    }
}
