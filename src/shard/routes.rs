//! The replicated routes table: which shards have subscribers for each filter (a
//! [`ShardSet`] per filter, and per shared group), kept in the filter trie beside the
//! local subscriptions. Broadcasting our own row's changes, applying the other
//! shards' updates, and holding SUBACKs until every shard has applied our route
//! adds ([`PendingSubAck`]).

use std::cell::Cell;
use std::time::Instant;

use bytes::Bytes;
use smallvec::SmallVec;

use super::subs::FilterEntry;
use super::{ConnId, RouteUpdate, Shard, ShardId};
use crate::protocol::{SubAck, SubscriptionOptions};

/// A route live on another shard later than this after the SUBSCRIBE was read
/// counts as slow (`ShardStats::route_live_slow`): a client that publishes from a
/// second connection this soon after subscribing (Paho's test suite does, ~100 µs,
/// before the SUBACK) could miss the first message.
pub(crate) const ROUTE_LIVE_SLOW_US: u64 = 100;

/// Capacity `pending_subacks` keeps once empty (see `on_route_ack`).
pub(crate) const PENDING_SUBACKS_KEPT: usize = 16;

/// A set of shards as a bitset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ShardSet(SmallVec<[u64; 1]>);

/// A SUBACK held until every shard has applied this shard's route adds up to
/// `route_seq`, so that once the client holds its SUBACK a message published on
/// any shard reaches it (without this, a publish racing the route update to
/// another shard would be lost).
pub(crate) struct PendingSubAck {
    pub conn: ConnId,
    pub generation: u32,
    pub session: u32,
    pub route_seq: u64,
    pub ack: SubAck,
    pub retained: SmallVec<[(Bytes, SubscriptionOptions); 2]>,
    pub sub_id: u32,
}

impl ShardSet {
    #[inline]
    pub fn insert(&mut self, s: ShardId) {
        let w = s / 64;
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (s % 64);
    }

    #[inline]
    pub fn remove(&mut self, s: ShardId) {
        if let Some(w) = self.0.get_mut(s / 64) {
            *w &= !(1 << (s % 64));
        }
    }

    #[inline]
    pub fn contains(&self, s: ShardId) -> bool {
        self.0.get(s / 64).is_some_and(|w| w & (1 << (s % 64)) != 0)
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The `n`-th member in ascending order.
    #[inline]
    pub fn nth(&self, mut n: usize) -> Option<ShardId> {
        for (i, w) in self.0.iter().enumerate() {
            let c = w.count_ones() as usize;
            if n < c {
                let mut w = *w;
                for _ in 0..n {
                    w &= w - 1;
                }
                return Some(i * 64 + w.trailing_zeros() as usize);
            }
            n -= c;
        }
        None
    }

    /// The set as one `u32` when every member is below 31, for a packed row
    /// (`subs::PackedRow`); `None` otherwise.
    #[inline]
    pub fn low_bits(&self) -> Option<u32> {
        let (first, rest) = match self.0.split_first() {
            Some(x) => x,
            None => return Some(0),
        };
        if rest.iter().any(|w| *w != 0) {
            return None;
        }
        u32::try_from(*first).ok().filter(|b| *b < 1 << 31)
    }

    /// The set of the members in `bits` (shards 0..31).
    #[inline(always)]
    pub fn from_low_bits(bits: u32) -> Self {
        ShardSet(SmallVec::from_buf([u64::from(bits)]))
    }

    /// The set of `s` alone.
    #[inline(always)]
    pub fn single(s: ShardId) -> Self {
        if s < 64 {
            return ShardSet(SmallVec::from_buf([1 << s]));
        }
        let mut set = ShardSet::default();
        set.insert(s);
        set
    }

    #[inline]
    pub fn for_each(&self, mut f: impl FnMut(ShardId)) {
        for (i, w) in self.0.iter().enumerate() {
            let mut w = *w;
            while w != 0 {
                f(i * 64 + w.trailing_zeros() as usize);
                w &= w - 1;
            }
        }
    }
}

#[derive(Debug)]
pub(crate) struct RouteGroup {
    /// The trie key again: `for_each_match` does not say which key matched, and a
    /// remote shard needs the filter to find the group.
    pub filter: Bytes,
    pub name: Bytes,
    pub shards: ShardSet,
    pub next: Cell<u32>,
}

impl Shard {
    /// Our local count for `filter` (or `group` on it) went 0 → 1 or 1 → 0: update
    /// our own row of the routes table and tell every other shard.
    pub(super) fn route_changed(&mut self, filter: &Bytes, group: Option<&Bytes>, add: bool) {
        let me = self.id;
        self.apply_route(me, filter, group, add);
        self.cluster_interest(filter, group, add);
        if self.shard_count == 1 {
            return;
        }
        // Only adds need an ack: a publish that reaches a shard after the last local
        // subscriber left is simply dropped there.
        let seq = if add {
            self.route_seq += 1;
            self.route_seq
        } else {
            0
        };
        for to in (0..self.shard_count).filter(|s| *s != me) {
            let update = RouteUpdate {
                filter: filter.clone(),
                group: group.cloned(),
                add,
                seq,
                // Adds only: a remove may come from a timer or a shutdown, long
                // after the last read, and nothing waits for it to be live.
                read_at: if add { self.last_now } else { None },
            };
            self.control.push_route(to, update);
        }
    }

    pub(crate) fn on_route(&mut self, from: ShardId, update: RouteUpdate, now: Instant) {
        let RouteUpdate {
            filter,
            group,
            add,
            seq,
            read_at,
        } = update;
        if from >= self.shard_count {
            return;
        }
        self.apply_route(from, &filter, group.as_ref(), add);
        if let Some(t) = read_at {
            // Turn starts on both sides: the sender's before it read the SUBSCRIBE,
            // ours before this drain of the mesh (once a parked loop was woken).
            let us =
                u64::try_from(now.saturating_duration_since(t).as_micros()).unwrap_or(u64::MAX);
            let st = &mut self.stats;
            st.route_live_count += 1;
            st.route_live_total_us = st.route_live_total_us.saturating_add(us);
            st.route_live_max_us = st.route_live_max_us.max(us);
            if us > ROUTE_LIVE_SLOW_US {
                st.route_live_slow += 1;
            }
        }
        if seq != 0 {
            self.control.push_ack(from, seq);
        }
    }

    /// Every other shard has applied all route adds we sent so far.
    pub(crate) fn routes_settled(&self) -> bool {
        let me = self.id;
        self.route_acked
            .iter()
            .enumerate()
            .all(|(shard, acked)| shard == me || *acked >= self.route_seq)
    }

    pub(crate) fn on_route_ack(&mut self, from: ShardId, seq: u64, now: Instant) {
        let Some(acked) = self.route_acked.get_mut(from) else {
            return;
        };
        *acked = (*acked).max(seq);
        while let Some(p) = self.pending_subacks.front() {
            let me = self.id;
            let ready = self
                .route_acked
                .iter()
                .enumerate()
                .all(|(shard, acked)| shard == me || *acked >= p.route_seq);
            if !ready {
                break;
            }
            let Some(p) = self.pending_subacks.pop_front() else {
                break;
            };
            let alive = self
                .conns
                .get(p.conn)
                .is_some_and(|c| c.generation == p.generation && c.session == p.session);
            if alive {
                self.finish_subscribe(p.conn, p.session, p.ack, p.retained, p.sub_id, now);
            }
        }
        // A subscribe storm grows the queue to thousands of entries (~150 B each);
        // once it drains, keep only a small one.
        if self.pending_subacks.is_empty()
            && self.pending_subacks.capacity() > PENDING_SUBACKS_KEPT * 4
        {
            self.pending_subacks.shrink_to(PENDING_SUBACKS_KEPT);
        }
    }

    pub(super) fn apply_route(
        &mut self,
        shard: ShardId,
        filter: &Bytes,
        group: Option<&Bytes>,
        add: bool,
    ) {
        if add {
            self.filters
                .upsert(filter, FilterEntry::default, |e| match group {
                    None => e.shards.insert(shard),
                    Some(g) => {
                        let routes = &mut e.shared.get_or_insert_with(Default::default).routes;
                        match routes.iter_mut().find(|x| x.name == *g) {
                            Some(x) => x.shards.insert(shard),
                            None => {
                                let mut shards = ShardSet::default();
                                shards.insert(shard);
                                routes.push(RouteGroup {
                                    filter: filter.clone(),
                                    name: g.clone(),
                                    shards,
                                    next: Cell::new(0),
                                });
                            }
                        }
                    }
                });
            self.stats.bytes_routes = self.filters.approx_bytes();
            return;
        }
        let empty = self.filters.update(filter, |e| {
            match group {
                None => e.shards.remove(shard),
                Some(g) => {
                    if let Some(routes) = e.shared.as_mut().map(|x| &mut x.routes) {
                        if let Some(i) = routes.iter().position(|x| x.name == *g) {
                            routes[i].shards.remove(shard);
                            if routes[i].shards.is_empty() {
                                routes.swap_remove(i);
                            }
                        }
                    }
                    e.tidy_shared();
                }
            }
            e.is_empty()
        });
        if empty == Some(true) {
            self.filters.remove(filter);
        }
        self.stats.bytes_routes = self.filters.approx_bytes();
    }
}

#[cfg(test)]
mod tests {
    use super::ShardSet;

    #[test]
    fn shard_set_ops() {
        let mut s = ShardSet::default();
        assert!(s.is_empty());
        s.insert(3);
        s.insert(70);
        s.insert(0);
        assert_eq!(s.len(), 3);
        assert_eq!(
            (s.nth(0), s.nth(1), s.nth(2), s.nth(3)),
            (Some(0), Some(3), Some(70), None)
        );
        let mut v = Vec::new();
        s.for_each(|x| v.push(x));
        assert_eq!(v, vec![0, 3, 70]);
        s.remove(3);
        assert!(!s.contains(3) && s.contains(70));
        s.remove(0);
        s.remove(70);
        assert!(s.is_empty());
    }
}
