//! The node's interest: which loops hold local subscribers for each (filter, group),
//! and so which NATS subscriptions the node must hold (sans-IO).
//!
//! Each loop reports only its own 0→1 and 1→0 transitions of a filter (the moments it
//! already broadcasts a route update), so a loop is one bit per key and the key's
//! reference count is the number of bits set. The node subscribes on NATS when the
//! first loop sets its bit and unsubscribes when the last one clears it. A repeated
//! add or remove from the same loop changes nothing (reports are idempotent, so a
//! loop may re-send its interest after a reconnect).

use std::collections::HashMap;

use bytes::Bytes;

use crate::ring::MAX_SHARDS;

/// A (filter, shared group) pair: `group` is `None` for a plain subscription.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InterestKey {
    pub filter: Bytes,
    pub group: Option<Bytes>,
}

/// What a change did to the node's NATS subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterestChange {
    /// First loop with interest: subscribe.
    Subscribe,
    /// Last loop gone: unsubscribe.
    Unsubscribe,
    /// The count moved (or not) without crossing zero.
    None,
}

const WORDS: usize = MAX_SHARDS / 64;

/// The loops holding subscribers of one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopSet([u64; WORDS]);

impl LoopSet {
    fn set(&mut self, l: usize, on: bool) -> bool {
        let (w, b) = (l / 64, 1u64 << (l % 64));
        let was = self.0[w] & b != 0;
        if on {
            self.0[w] |= b;
        } else {
            self.0[w] &= !b;
        }
        was
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn contains(&self, l: usize) -> bool {
        l < MAX_SHARDS && self.0[l / 64] & (1 << (l % 64)) != 0
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..MAX_SHARDS).filter(|l| self.contains(*l))
    }

    /// The `n`-th loop of the set (mod its size), for round-robin picks.
    pub fn nth_wrapping(&self, n: usize) -> Option<usize> {
        let len = self.len();
        if len == 0 {
            return None;
        }
        self.iter().nth(n % len)
    }
}

/// The node's interest table.
#[derive(Debug)]
pub struct InterestTable {
    keys: HashMap<InterestKey, LoopSet>,
    /// Per loop: how many keys it holds, so "which loops have any interest" (asked
    /// per message from NATS) is not a walk of every key.
    per_loop: Vec<u32>,
    /// The loops whose `per_loop` count is non-zero.
    any: LoopSet,
}

impl Default for InterestTable {
    fn default() -> InterestTable {
        InterestTable {
            keys: HashMap::new(),
            per_loop: vec![0; MAX_SHARDS],
            any: LoopSet::default(),
        }
    }
}

impl InterestTable {
    pub fn new() -> InterestTable {
        InterestTable::default()
    }

    fn count(&mut self, l: usize, up: bool) {
        let c = &mut self.per_loop[l];
        if up {
            *c += 1;
        } else {
            *c = c.saturating_sub(1);
        }
        let on = *c > 0;
        self.any.set(l, on);
    }

    /// Loop `l` now has (`add`) or no longer has local subscribers for `key`. Loops
    /// past `MAX_SHARDS` cannot exist (the mesh refuses them) and are ignored.
    pub fn apply(&mut self, l: usize, key: &InterestKey, add: bool) -> InterestChange {
        if l >= MAX_SHARDS {
            return InterestChange::None;
        }
        if add {
            let set = self.keys.entry(key.clone()).or_default();
            let first = set.is_empty();
            if !set.set(l, true) {
                self.count(l, true);
            }
            if first {
                InterestChange::Subscribe
            } else {
                InterestChange::None
            }
        } else {
            let Some(set) = self.keys.get_mut(key) else {
                return InterestChange::None;
            };
            let was = set.set(l, false);
            let empty = set.is_empty();
            if was {
                self.count(l, false);
            }
            if empty {
                self.keys.remove(key);
                InterestChange::Unsubscribe
            } else {
                InterestChange::None
            }
        }
    }

    /// The loops with subscribers for `key` (empty when none).
    pub fn loops(&self, key: &InterestKey) -> LoopSet {
        self.keys.get(key).copied().unwrap_or_default()
    }

    /// Every loop with any interest: where a plain message from NATS may be needed.
    pub fn any_loops(&self) -> LoopSet {
        self.any
    }

    /// Number of keys (= NATS subscriptions, counting a two-subject `#` filter once).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &InterestKey> {
        self.keys.keys()
    }
}
