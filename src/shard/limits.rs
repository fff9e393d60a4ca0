//! Admission limits: connections per node and per source IP, the CONNECT rate,
//! sessions per node and the memory high-water mark. A refused connection is
//! answered at its CONNECT (the reply needs the client's protocol version) and then
//! closed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::Config;
use crate::protocol::ReasonCode;

/// Counters shared by every shard of one node. Touched on accept and release only,
/// never per message, so the atomic and the per-IP lock stay off the hot path.
#[derive(Debug, Default)]
pub struct NodeCounters {
    connections: AtomicUsize,
    /// Sessions on the node, connected or not (`max_sessions`).
    sessions: AtomicUsize,
    /// Source IP → open connections; only maintained when a per-IP limit is set.
    per_ip: Mutex<HashMap<IpAddr, u32, ahash::RandomState>>,
}

impl NodeCounters {
    pub fn new() -> Arc<NodeCounters> {
        Arc::new(NodeCounters::default())
    }

    /// Open connections on the node (refused ones included until released).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Sessions on the node.
    pub fn sessions(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Counts a new connection from `ip`; returns the node total and the IP's total,
    /// both including it (`0` for the IP when `track_ip` is off).
    fn add(&self, ip: IpAddr, track_ip: bool) -> (usize, u32) {
        let total = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        if !track_ip {
            return (total, 0);
        }
        // A poisoned lock only means another shard panicked mid-update; the map is
        // still a valid map, so keep counting.
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        *n += 1;
        (total, *n)
    }

    fn remove(&self, ip: IpAddr, track_ip: bool) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
        if !track_ip {
            return;
        }
        let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ip);
            }
        }
    }
}

/// Why a connection will be refused at its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Node (`max_connections`) or source IP (`max_connections_per_ip`) is full.
    TooManyConnections,
    TooManyFromIp,
    /// `connect_rate_per_s` exhausted on this shard.
    Rate,
    /// Shard memory above `memory_high_water_bytes`.
    Busy,
}

impl Refusal {
    /// CONNACK code; 3.x clients get return code 3 (Server unavailable), which is
    /// what the codec maps each of these to.
    pub fn reason_code(self) -> ReasonCode {
        match self {
            Refusal::TooManyConnections | Refusal::TooManyFromIp => ReasonCode::QuotaExceeded,
            Refusal::Rate => ReasonCode::ConnectionRateExceeded,
            Refusal::Busy => ReasonCode::ServerBusy,
        }
    }
}

/// CONNECT token bucket: `rate` tokens per second, bursts of up to one second's worth.
/// Counted in milli-tokens so refill needs no floating point.
#[derive(Debug, Default)]
pub(crate) struct RateLimiter {
    milli_tokens: u64,
    last: Option<Instant>,
}

impl RateLimiter {
    /// Takes one token if there is one. `rate_per_s == 0`: unlimited.
    pub fn try_take(&mut self, rate_per_s: u32, now: Instant) -> bool {
        if rate_per_s == 0 {
            return true;
        }
        let cap = u64::from(rate_per_s) * 1000;
        match self.last {
            None => self.milli_tokens = cap,
            Some(last) => {
                let elapsed_ms = now.saturating_duration_since(last).as_millis();
                let add = elapsed_ms.saturating_mul(u128::from(rate_per_s));
                self.milli_tokens =
                    (u128::from(self.milli_tokens) + add).min(u128::from(cap)) as u64;
            }
        }
        // Only advance by whole milliseconds credited, so sub-ms calls lose nothing.
        self.last = Some(match self.last {
            Some(last) => {
                last + std::time::Duration::from_millis(
                    now.saturating_duration_since(last).as_millis() as u64,
                )
            }
            None => now,
        });
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

/// The connection limits of one shard.
#[derive(Debug)]
pub(crate) struct Limits {
    pub node: Arc<NodeCounters>,
    /// Limit applied to `node.connections()`: the node-wide `max_connections` when the
    /// counters are shared by all shards, this shard's share when they are private.
    pub max_connections: usize,
    pub max_per_ip: usize,
    /// Limit applied to `node.sessions()`, shared or private as `max_connections`.
    pub max_sessions: usize,
    pub rate: RateLimiter,
    /// Source IP of each counted connection, kept only while a per-IP limit is set
    /// (the connection struct has no room for it once CONNECT dropped `Pending`).
    ip_of: HashMap<usize, IpAddr, ahash::RandomState>,
}

impl Limits {
    pub fn new(config: &Config, shard_count: usize, node: Option<Arc<NodeCounters>>) -> Limits {
        let shares = shard_count.max(1);
        let (node, max_connections, max_sessions) = match node {
            Some(n) => (n, config.max_connections, config.max_sessions),
            None => (
                NodeCounters::new(),
                config.max_connections.div_ceil(shares),
                config.max_sessions.div_ceil(shares),
            ),
        };
        Limits {
            node,
            max_connections,
            max_sessions,
            max_per_ip: config.max_connections_per_ip,
            rate: RateLimiter::default(),
            ip_of: HashMap::default(),
        }
    }

    /// Whether a new session would be over `max_sessions`. Checked, then counted
    /// (`session_added`) once the CONNECT is accepted: CONNECTs on different loops
    /// at the same moment can pass it by at most loops − 1.
    pub fn sessions_full(&self) -> bool {
        self.node.sessions() >= self.max_sessions
    }

    pub fn session_added(&self) {
        self.node.sessions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn session_removed(&self) {
        self.node.sessions.fetch_sub(1, Ordering::Relaxed);
    }

    fn track_ip(&self) -> bool {
        self.max_per_ip > 0
    }

    /// Counts connection `conn` from `peer`; `Some` when it is over a connection limit.
    pub fn admit(&mut self, conn: usize, peer: SocketAddr) -> Option<Refusal> {
        let track = self.track_ip();
        let (total, from_ip) = self.node.add(peer.ip(), track);
        if track {
            self.ip_of.insert(conn, peer.ip());
        }
        if total > self.max_connections {
            Some(Refusal::TooManyConnections)
        } else if self.track_ip() && from_ip as usize > self.max_per_ip {
            Some(Refusal::TooManyFromIp)
        } else {
            None
        }
    }

    /// Uncounts `conn` (counted by `admit`).
    pub fn release(&mut self, conn: usize) {
        match self.ip_of.remove(&conn) {
            Some(ip) => self.node.remove(ip, true),
            None => self.node.remove(IpAddr::from([0, 0, 0, 0]), false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn token_bucket_allows_a_second_of_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::default();
        let took: Vec<bool> = (0..4).map(|_| r.try_take(3, t0)).collect();
        assert_eq!(took, vec![true, true, true, false]);
        // 1/3 s later: one more token (3 per second).
        assert!(!r.try_take(3, t0 + Duration::from_millis(332)));
        assert!(r.try_take(3, t0 + Duration::from_millis(334)));
        assert!(!r.try_take(3, t0 + Duration::from_millis(334)));
        // A long pause refills to the burst cap, not beyond.
        let t1 = t0 + Duration::from_secs(100);
        let took: Vec<bool> = (0..4).map(|_| r.try_take(3, t1)).collect();
        assert_eq!(took, vec![true, true, true, false]);
        assert!(RateLimiter::default().try_take(0, t0));
    }

    #[test]
    fn node_counters_per_ip() {
        let config = Config {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Config::default()
        };
        let node = NodeCounters::new();
        let mut l = Limits::new(&config, 2, Some(node.clone()));
        let a = SocketAddr::from(([10, 0, 0, 1], 1));
        let b = SocketAddr::from(([10, 0, 0, 2], 1));
        assert_eq!(l.admit(0, a), None);
        assert_eq!(l.admit(1, a), None);
        assert_eq!(l.admit(2, a), Some(Refusal::TooManyFromIp));
        assert_eq!(l.admit(3, b), Some(Refusal::TooManyConnections));
        assert_eq!(node.connections(), 4);
        l.release(0);
        l.release(3);
        l.release(2);
        // One connection from `a` left: `b` and a second one from `a` fit again.
        assert_eq!(l.admit(4, b), None);
        assert_eq!(l.admit(5, a), None);
        assert_eq!(node.connections(), 3);
        // Private counters: each shard gets its share of the node limit.
        assert_eq!(Limits::new(&config, 2, None).max_connections, 2);
        // Sessions likewise: node-wide when shared.
        let config = Config {
            max_sessions: 3,
            ..Config::default()
        };
        let shared = Limits::new(&config, 2, Some(node.clone()));
        shared.session_added();
        shared.session_added();
        assert!(!shared.sessions_full());
        Limits::new(&config, 2, Some(node.clone())).session_added();
        assert!(shared.sessions_full());
        shared.session_removed();
        assert_eq!(node.sessions(), 2);
        assert!(!shared.sessions_full());
        assert_eq!(Limits::new(&config, 2, None).max_sessions, 2);
    }
}
