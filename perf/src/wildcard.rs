//! Wildcard-heavy routing (#21): 1M subscriptions mixing exact, `+` and `#` filters
//! over 100k clients, built in-process in one or two shards the way the worker drives
//! them (`driver.rs`: bytes in with `on_read`, actions drained, `ShardMsg`s through a
//! real mesh), no sockets. Two figures:
//!
//! - `memory`: the process's RSS before and after the clients subscribe (their
//!   connections already open), divided by the subscription count: what one
//!   subscription costs the broker, the other loop's route rows included with 2 loops.
//! - `publish ITERS`: builds the set, then publishes ITERS rounds of five topics (an
//!   exact, a `+`-first, a `#`, a fleet-wide and a region-wide one; see `Probe`),
//!   each delivered and checked. `perf/wildcard.sh` runs it under callgrind counting
//!   only `measured_rounds`: instructions per publish with 1M subscriptions.
//!
//! - `trie`: the same filters in a bare `TopicTrie<u32>` (one value per distinct
//!   filter, no sessions): the trie's share of the `memory` figure.
//!
//!   wildcard-routing [--loops 1|2] [--clients 100000] memory|trie|publish ITERS
//!
//! Each client subscribes 10 filters in one SUBSCRIBE (see `filters`). Set-up
//! problems panic with a message: a run that measured something else would be worse.

#[allow(dead_code)] // the callgrind paths' driver; this tool uses a part of it
mod driver;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ringmq::config::Config;
use ringmq::protocol::{Packet, Publish, PublishProperties, QoS, Subscribe, SubscriptionOptions};
use ringmq::ring::{mesh, Endpoint};
use ringmq::shard::{owner_shard, ConnId, Shard, ShardMsg};
use ringmq::topic::TopicTrie;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Subscriptions per client.
const PER_CLIENT: usize = 10;
/// Clients share `fleet/<i % FLEETS>/...` filters: 100 clients each at 100k.
const FLEETS: usize = 1000;
/// Clients share `region/<i % REGIONS>/...` and `alerts/<i % REGIONS>/...`.
const REGIONS: usize = 10_000;
const MESH_CAPACITY: usize = 1024;
const MESH_OVERFLOW_MAX: usize = 1024;
const MESH_BATCH: usize = 4096;
/// Clients connected and subscribed between two pumps of the mesh, so route updates
/// and SUBACKs keep moving as in a broker (and the control outbox stays small).
const PUMP_EVERY: usize = 1000;

/// Client `i`'s filters: 5 of its own (2 exact, a trailing `+`, a `#`, a leading
/// `+`), 1 more of its own two levels deep behind `+/+`, and 4 shared with other
/// clients (fleet-wide `+` and `#`, region-wide `+/+`, an exact alert).
fn filters(i: usize) -> [String; PER_CLIENT] {
    [
        format!("dev/{i}/cmd"),
        format!("dev/{i}/ota"),
        format!("dev/{i}/config/+"),
        format!("dev/{i}/#"),
        format!("+/{i}/telemetry"),
        format!("+/+/{i}/state"),
        format!("fleet/{}/+/status", i % FLEETS),
        format!("fleet/{}/#", i % FLEETS),
        format!("region/{}/+/+/alarm", i % REGIONS),
        format!("alerts/{}/critical", i % REGIONS),
    ]
}

/// The five topics of a publish round, for a client `k`; each names the sessions
/// (not subscriptions: one copy per session) it reaches out of `clients`.
#[derive(Clone, Copy)]
enum Probe {
    /// `dev/k/cmd`: `dev/k/cmd` and `dev/k/#`, one session.
    Exact,
    /// `dev/k/telemetry`: `+/k/telemetry` and `dev/k/#`, one session.
    PlusFirst,
    /// `x/y/k/state`: `+/+/k/state`, one session.
    PlusPlus,
    /// `fleet/f/dk/status`: `fleet/f/+/status` and `fleet/f/#`, clients/1000 sessions.
    Fleet,
    /// `region/r/a/b/alarm`: `region/r/+/+/alarm`, clients/10,000 sessions.
    Region,
}

const PROBES: [Probe; 5] = [
    Probe::Exact,
    Probe::PlusFirst,
    Probe::PlusPlus,
    Probe::Fleet,
    Probe::Region,
];

impl Probe {
    fn topic(self, k: usize) -> String {
        match self {
            Probe::Exact => format!("dev/{k}/cmd"),
            Probe::PlusFirst => format!("dev/{k}/telemetry"),
            Probe::PlusPlus => format!("x/y/{k}/state"),
            Probe::Fleet => format!("fleet/{}/d{k}/status", k % FLEETS),
            Probe::Region => format!("region/{}/a/b/alarm", k % REGIONS),
        }
    }

    fn sessions(self, k: usize, clients: usize) -> usize {
        let sharing = |groups: usize| (0..clients).skip(k % groups).step_by(groups).count();
        match self {
            Probe::Exact | Probe::PlusFirst | Probe::PlusPlus => 1,
            Probe::Fleet => sharing(FLEETS),
            Probe::Region => sharing(REGIONS),
        }
    }
}

fn subscribe_all(i: usize) -> Bytes {
    let filters = filters(i)
        .into_iter()
        .map(|f| {
            (
                Bytes::from(f),
                SubscriptionOptions {
                    qos: QoS::AtMostOnce,
                    ..Default::default()
                },
            )
        })
        .collect();
    driver::encode(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        filters,
        properties: Default::default(),
    }))
}

fn publish(topic: &str) -> Bytes {
    driver::encode(&Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        packet_id: 0,
        properties: PublishProperties::default(),
        payload: Bytes::from(vec![0x5a; 64]),
    }))
}

/// One or two shards, 100k clients with 10 subscriptions each, a publisher on shard 0.
struct Set {
    shards: Vec<Shard>,
    ends: Vec<Endpoint<ShardMsg>>,
    publisher: ConnId,
    clients: usize,
    now: Instant,
}

impl Set {
    fn new(loops: usize) -> Set {
        let now = Instant::now();
        let config = Arc::new(Config::default());
        let shards = (0..loops)
            .map(|s| Shard::new(s, loops, config.clone()))
            .collect();
        let ends = mesh::<ShardMsg>(loops, MESH_CAPACITY, MESH_OVERFLOW_MAX)
            .expect("mesh")
            .into_iter()
            .collect();
        let mut set = Set {
            shards,
            ends,
            publisher: 0,
            clients: 0,
            now,
        };
        let id = driver::client_id_on(0, loops, "wild-pub", 0);
        set.publisher = driver::connect(&mut set.shards[0], id, now);
        set.pump();
        set
    }

    /// Connects clients `from..to` on the shards that own them (no hand-offs);
    /// `subscribe` also sends each one's SUBSCRIBE.
    fn clients(&mut self, from: usize, to: usize, subscribe: bool) -> Vec<(usize, ConnId)> {
        let loops = self.shards.len();
        let mut conns = Vec::with_capacity(to - from);
        for i in from..to {
            let id = Bytes::from(format!("wild-{i}"));
            let s = owner_shard(0, &id, loops);
            let conn = driver::connect(&mut self.shards[s], id, self.now);
            if subscribe {
                self.shards[s].on_read(conn, &subscribe_all(i), self.now);
            }
            conns.push((s, conn));
        }
        self.clients = self.clients.max(to);
        conns
    }

    /// Worker turns on every shard until no shard has anything left to do: mesh
    /// inbox into `on_message`, actions (bytes out, messages into the mesh), control
    /// messages while the mesh has room. Returns the connections that got bytes (each
    /// flushed connection once per turn, as a worker would send).
    fn pump(&mut self) -> usize {
        let mut flushed = 0;
        loop {
            let mut busy = false;
            for s in 0..self.shards.len() {
                let shard = &mut self.shards[s];
                let end = &mut self.ends[s];
                busy |= end.recv_batch(MESH_BATCH, |from, msg| {
                    shard.on_message(from, msg, self.now)
                }) > 0;
                let (mut out, mut sent) = (0, 0);
                driver::drain(
                    shard,
                    |_, _| out += 1,
                    |to, msg| {
                        sent += 1;
                        if end.send(to, msg).is_err() {
                            panic!("wildcard set-up: mesh to shard {to} is full");
                        }
                    },
                );
                flushed += out;
                busy |= out + sent > 0;
                for to in (0..shard.shard_count()).filter(|&to| to != s) {
                    while !end.is_full(to) {
                        let Some(msg) = shard.poll_control(to) else {
                            break;
                        };
                        busy = true;
                        if end.send(to, msg).is_err() {
                            panic!("wildcard set-up: control to shard {to} refused with room");
                        }
                    }
                }
                end.flush();
            }
            if !busy {
                return flushed;
            }
        }
    }

    /// Connects and subscribes `clients` clients in batches.
    fn subscribe_clients(&mut self, clients: usize) {
        let mut i = 0;
        while i < clients {
            let to = (i + PUMP_EVERY).min(clients);
            self.clients(i, to, true);
            self.pump();
            i = to;
        }
    }

    /// Publishes `topic` from shard 0 and runs every shard until it is delivered;
    /// returns the sessions that got a copy.
    fn publish(&mut self, frame: &Bytes) -> usize {
        self.shards[0].on_read(self.publisher, frame, self.now);
        self.pump()
    }
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("statm resident pages");
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * usize::try_from(page).expect("page size")
}

fn usage() -> ! {
    eprintln!("usage: wildcard-routing [--loops 1|2] [--clients N] memory|trie|publish ITERS");
    std::process::exit(2);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut loops = 1usize;
    let mut clients = 100_000usize;
    let mut mode = None;
    let mut iters = 0u64;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--loops" => {
                loops = match args.next().as_deref() {
                    Some("1") => 1,
                    Some("2") => 2,
                    v => {
                        eprintln!("--loops {}: 1 or 2", v.unwrap_or("(missing)"));
                        std::process::exit(2)
                    }
                }
            }
            "--clients" => {
                let v = args.next().unwrap_or_default();
                clients = match v.parse() {
                    Ok(n) if n >= REGIONS => n,
                    _ => {
                        eprintln!("--clients {v}: a count of at least {REGIONS}");
                        std::process::exit(2)
                    }
                }
            }
            "memory" => mode = Some("memory"),
            "trie" => mode = Some("trie"),
            "publish" => {
                mode = Some("publish");
                let v = args.next().unwrap_or_default();
                iters = v.parse().unwrap_or_else(|_| {
                    eprintln!("publish {v}: a number of rounds");
                    std::process::exit(2)
                });
            }
            _ => usage(),
        }
    }
    match mode {
        Some("memory") => memory(loops, clients),
        Some("trie") => trie_only(clients),
        Some("publish") => publish_rounds(loops, clients, iters),
        _ => usage(),
    }
}

/// RSS per subscription: the clients connect first (no subscriptions), then the same
/// number of fresh clients connect and subscribe; the difference between the two
/// growths is what the subscriptions cost.
fn memory(loops: usize, clients: usize) {
    let mut set = Set::new(loops);
    let t0 = Instant::now();
    let rss0 = rss_bytes();
    set.clients(0, clients, false);
    set.pump();
    let rss1 = rss_bytes();
    let mut subscribed = Set::new(loops);
    let rss2 = rss_bytes();
    subscribed.subscribe_clients(clients);
    let rss3 = rss_bytes();
    let subs = clients * PER_CLIENT;
    let conn_only = rss1.saturating_sub(rss0);
    let with_subs = rss3.saturating_sub(rss2);
    println!(
        "loops={loops} clients={clients} subscriptions={subs} connections_rss_b={conn_only} \
         connections_and_subscriptions_rss_b={with_subs} per_connection_b={} \
         per_subscription_b={:.1} build_s={:.1}",
        conn_only / clients,
        with_subs.saturating_sub(conn_only) as f64 / subs as f64,
        t0.elapsed().as_secs_f64()
    );
    black_box((&set, &subscribed));
}

/// The publishes alone: `perf/wildcard.sh` has callgrind count only inside this
/// function (`--toggle-collect`), because the set-up's count differs from run to run
/// (every trie hashes its levels with a random key) by more than the publishes cost.
/// Returns the deliveries; a publish that reaches the wrong number of sessions ends
/// the run.
#[inline(never)]
fn measured_rounds(set: &mut Set, frames: &[(Bytes, usize)], iters: u64) -> usize {
    let round = PROBES.len();
    let mut delivered = 0usize;
    for n in 0..iters as usize {
        for (frame, want) in &frames[(n % 64) * round..][..round] {
            let got = set.publish(frame);
            if got != *want {
                eprintln!("wildcard-routing: a publish reached {got} sessions, expected {want}");
                std::process::exit(1);
            }
            delivered += got;
        }
    }
    delivered
}

/// The trie's share: every client's filters in a bare `TopicTrie<u32>` (a repeated
/// filter keeps its first value), RSS growth per subscription and per distinct filter.
fn trie_only(clients: usize) {
    let rss0 = rss_bytes();
    let mut trie = TopicTrie::new();
    for i in 0..clients {
        for f in filters(i) {
            trie.entry_or_insert_with(f.as_bytes(), || i as u32);
        }
    }
    let grown = rss_bytes().saturating_sub(rss0);
    let subs = clients * PER_CLIENT;
    println!(
        "trie clients={clients} subscriptions={subs} distinct_filters={} nodes={} rss_b={grown} \
         per_subscription_b={:.1} per_filter_b={:.1} per_node_b={:.1}",
        trie.len(),
        trie.node_count(),
        grown as f64 / subs as f64,
        grown as f64 / trie.len() as f64,
        grown as f64 / trie.node_count() as f64,
    );
    black_box(&trie);
}

/// `iters` rounds of the five probes after the set-up, each round's deliveries
/// checked; prints the deliveries per round.
fn publish_rounds(loops: usize, clients: usize, iters: u64) {
    let mut set = Set::new(loops);
    set.subscribe_clients(clients);
    let frames: Vec<(Bytes, usize)> = (0..64usize)
        .flat_map(|r| {
            // Spread the probed clients over the set, unrelated round to round.
            let k = ((r as u64 * 2_654_435_761) % clients as u64) as usize;
            PROBES.map(|p| (publish(&p.topic(k)), p.sessions(k, clients)))
        })
        .collect();
    let round = PROBES.len();
    let delivered = measured_rounds(&mut set, &frames, iters);
    println!(
        "loops={loops} clients={} rounds={iters} publishes={} deliveries={delivered}",
        set.clients,
        iters as usize * round
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sessions of `clients` with at least one filter matching `topic`, by the naive
    /// matcher the trie is tested against.
    fn naive_sessions(topic: &str, clients: usize) -> usize {
        (0..clients)
            .filter(|&i| {
                filters(i)
                    .iter()
                    .any(|f| ringmq::topic::matches(f.as_bytes(), topic.as_bytes()))
            })
            .count()
    }

    /// Every probe reaches exactly the sessions the naive matcher finds, one copy
    /// each, on one loop and across two: the figures measure routing that is right.
    #[test]
    fn probes_reach_the_sessions_the_naive_matcher_finds() {
        let clients = REGIONS;
        for loops in [1, 2] {
            let mut set = Set::new(loops);
            set.subscribe_clients(clients);
            for k in [0, 1, 4_321, clients - 1] {
                for p in PROBES {
                    let topic = p.topic(k);
                    let want = naive_sessions(&topic, clients);
                    assert!(want > 0, "{topic}: the probe matches nobody");
                    assert_eq!(p.sessions(k, clients), want, "{topic}: Probe::sessions");
                    assert_eq!(
                        set.publish(&publish(&topic)),
                        want,
                        "{topic} on {loops} loop(s)"
                    );
                }
            }
            // A topic nobody subscribed reaches nobody.
            assert_eq!(set.publish(&publish("dev/x/cmd")), 0);
        }
    }
}
