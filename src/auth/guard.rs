//! What stands between a CONNECT storm and the verifier pool: the cache of verified
//! (user, password, stored hash) results, and the per-address limit on failed
//! attempts. Both bounded; time comes in as `now`.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha512};

use super::StoredHash;

/// A keyed digest of (user, password, stored hash): the cache never holds a password,
/// and a changed hash (reload, `passwd`) makes old entries miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VerifyKey([u8; 32]);

/// Verified successes, two generations of at most `cap / 2` keys each: when the young
/// one fills it becomes the old one and the old one is dropped, a cheap LRU that
/// stays bounded under any reconnect storm.
#[derive(Debug)]
pub struct VerifyCache {
    secret: [u8; 32],
    young: HashSet<VerifyKey>,
    old: HashSet<VerifyKey>,
    half_cap: usize,
}

impl VerifyCache {
    /// `secret` is random per process (from `main`), so keys cannot be precomputed.
    pub fn new(secret: [u8; 32], cap: usize) -> VerifyCache {
        VerifyCache {
            secret,
            young: HashSet::new(),
            old: HashSet::new(),
            half_cap: (cap / 2).max(1),
        }
    }

    pub fn key(&self, user: &str, password: &[u8], hash: &StoredHash) -> VerifyKey {
        let mut d = Sha512::new();
        d.update(self.secret);
        for part in [user.as_bytes(), password, hash.encode().as_bytes()] {
            d.update((part.len() as u64).to_le_bytes());
            d.update(part);
        }
        let mut k = [0u8; 32];
        k.copy_from_slice(&d.finalize()[..32]);
        VerifyKey(k)
    }

    pub fn contains(&self, k: &VerifyKey) -> bool {
        self.young.contains(k) || self.old.contains(k)
    }

    pub fn insert(&mut self, k: VerifyKey) {
        if self.young.len() >= self.half_cap {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(k);
    }

    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }
}

/// Failed attempts per source address in a fixed window. Over the limit, a CONNECT
/// with credentials is refused before any hash runs (counted by the caller).
#[derive(Debug)]
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    /// Bounded: at `max_addrs` the expired entries go, and if none expired the
    /// table is cleared (an attacker with that many addresses is not slowed by it).
    by_addr: HashMap<IpAddr, (Instant, u32)>,
    max_addrs: usize,
}

impl FailureLimiter {
    pub fn new(max_failures: u32, window: Duration, max_addrs: usize) -> FailureLimiter {
        FailureLimiter {
            max_failures,
            window,
            by_addr: HashMap::new(),
            max_addrs,
        }
    }

    /// May this address try a password now?
    pub fn allows(&self, addr: IpAddr, now: Instant) -> bool {
        match self.by_addr.get(&addr) {
            Some(&(start, n)) => {
                now.saturating_duration_since(start) >= self.window || n < self.max_failures
            }
            None => true,
        }
    }

    pub fn record_failure(&mut self, addr: IpAddr, now: Instant) {
        if self.by_addr.len() >= self.max_addrs && !self.by_addr.contains_key(&addr) {
            let w = self.window;
            self.by_addr
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < w);
            if self.by_addr.len() >= self.max_addrs {
                self.by_addr.clear();
            }
        }
        let e = self.by_addr.entry(addr).or_insert((now, 0));
        if now.saturating_duration_since(e.0) >= self.window {
            *e = (now, 0);
        }
        e.1 = e.1.saturating_add(1);
    }

    pub fn tracked(&self) -> usize {
        self.by_addr.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_bounded_and_keyed() {
        let h = StoredHash::new_pbkdf2(b"pw", b"0123456789ab", 1);
        let mut c = VerifyCache::new([1; 32], 4);
        let k = c.key("u", b"pw", &h);
        assert_ne!(k, c.key("u", b"px", &h));
        assert_ne!(k, c.key("v", b"pw", &h));
        // Length-prefixed: moving a byte between fields changes the key.
        assert_ne!(c.key("ab", b"c", &h), c.key("a", b"bc", &h));
        assert_ne!(k, VerifyCache::new([2; 32], 4).key("u", b"pw", &h));
        c.insert(k);
        assert!(c.contains(&k));
        for i in 0..100u8 {
            c.insert(c.key("x", &[i], &h));
            assert!(c.len() <= 4);
        }
        assert!(!c.contains(&k), "evicted after two generations");
    }

    #[test]
    fn limiter_window() {
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut l = FailureLimiter::new(3, Duration::from_secs(10), 2);
        for _ in 0..3 {
            assert!(l.allows(a, t0));
            l.record_failure(a, t0);
        }
        assert!(!l.allows(a, t0 + Duration::from_secs(9)));
        assert!(l.allows(b, t0), "other addresses unaffected");
        assert!(l.allows(a, t0 + Duration::from_secs(10)));
        // Bounded table.
        l.record_failure(b, t0);
        l.record_failure("10.0.0.3".parse().unwrap(), t0 + Duration::from_secs(1));
        assert!(l.tracked() <= 2);
    }
}
