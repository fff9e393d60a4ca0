//! Local subscriptions: the entry the filter trie holds per filter (this shard's
//! subscribers, plain and per shared group, beside its row of the routes table),
//! and adding or removing a session's subscriptions, which tells the routes table
//! when a filter's local count goes 0 → 1 or 1 → 0.

use std::cell::Cell;

use bytes::Bytes;
use smallvec::SmallVec;

use super::routes::{RouteGroup, ShardSet};
use super::Shard;
use crate::protocol::{QoS, SubscriptionOptions};
use crate::session::SessionSub;
use crate::topic::{Pack, TopicTrie};

/// A shard's filter trie: local subscriptions and the routes table in one, with
/// one-subscriber and other-loop rows packed into the node (see [`PackedRow`]).
pub(crate) type FilterTrie = TopicTrie<FilterEntry, PackedRow>;

/// One local subscriber of a filter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalSub {
    pub session: u32,
    pub options: SubscriptionOptions,
    /// 0 = none.
    pub sub_id: u32,
}

#[derive(Debug)]
pub(crate) struct LocalGroup {
    pub name: Bytes,
    pub members: Vec<LocalSub>,
    /// Round-robin position; a `Cell` because the trie hands out shared references.
    pub next: Cell<u32>,
}

/// What one shard knows about one filter (the inner filter of shared subscriptions):
/// its local subscribers and, as its row of the replicated routes table, which
/// shards have subscribers. One trie holds both, so a filter costs one path of nodes
/// and a publish walks once.
#[derive(Debug, Default)]
pub(crate) struct FilterEntry {
    /// Local non-shared subscribers; one fits inline (a device subscribed to its own
    /// command topic needs no allocation).
    pub plain: SmallVec<[LocalSub; 1]>,
    /// Shards with non-shared subscribers, this one included when `plain` is not empty.
    pub shards: ShardSet,
    /// Shared subscriptions on this filter; rare, so boxed. `None` once empty.
    pub shared: Option<Box<SharedEntry>>,
}

/// The shared subscriptions of one filter.
#[derive(Debug, Default)]
pub(crate) struct SharedEntry {
    /// Groups with members on this shard.
    pub local: Vec<LocalGroup>,
    /// Groups with members on any shard, and which shards.
    pub routes: Vec<RouteGroup>,
}

/// How a shard packs a filter's row into its trie node's 4-byte value slot instead
/// of a 64-byte slab entry, for the two rows a device subscription makes:
/// - on every other loop, the row of a filter this loop has no subscriber for
///   (no plain subscriber, no shared group): which loops have subscribers, a
///   bitmask of loops 0..29;
/// - on the owning loop, a row with exactly one plain subscriber, here and nowhere
///   else, without a subscription identifier: that subscriber (session index below
///   2^24 and its options).
///
/// Everything else (several subscribers, shared groups, subscription identifiers,
/// more loops) stays in the slab. Bit 30 tells the two forms apart.
pub(crate) struct PackedRow {
    /// This shard: the one-subscriber form means "subscribed here only".
    pub me: usize,
}

/// Bit 30 set: the one-local-subscriber form.
const ONE_LOCAL: u32 = 1 << 30;
/// Sessions with a smaller index can be packed.
const SESSION_BITS: u32 = 24;

impl PackedRow {
    fn pack_sub(sub: &LocalSub) -> Option<u32> {
        let o = sub.options;
        if sub.sub_id != 0 || sub.session >= 1 << SESSION_BITS || o.retain_handling > 2 {
            return None;
        }
        let options = u32::from(o.qos as u8)
            | u32::from(o.no_local) << 2
            | u32::from(o.retain_as_published) << 3
            | u32::from(o.retain_handling) << 4;
        Some(ONE_LOCAL | options << SESSION_BITS | sub.session)
    }

    #[inline(always)]
    fn unpack_sub(bits: u32) -> Option<LocalSub> {
        let options = bits >> SESSION_BITS;
        Some(LocalSub {
            session: bits & ((1 << SESSION_BITS) - 1),
            options: SubscriptionOptions {
                qos: QoS::from_u8((options & 3) as u8)?,
                no_local: options & 4 != 0,
                retain_as_published: options & 8 != 0,
                retain_handling: ((options >> 4) & 3) as u8,
            },
            sub_id: 0,
        })
    }
}

impl Pack<FilterEntry> for PackedRow {
    #[inline]
    fn pack(&self, e: &FilterEntry) -> Option<u32> {
        if e.shared.is_some() {
            return None;
        }
        match e.plain.as_slice() {
            [] => e.shards.low_bits().filter(|b| *b < ONE_LOCAL),
            [sub] if e.shards.len() == 1 && e.shards.contains(self.me) => Self::pack_sub(sub),
            _ => None,
        }
    }

    #[inline(always)]
    fn unpack(&self, bits: u32) -> Option<FilterEntry> {
        // Built in place (`from_buf`, no capacity checks): every publish that
        // matches a packed row builds it once.
        if bits & ONE_LOCAL == 0 {
            return Some(FilterEntry {
                plain: SmallVec::new(),
                shards: ShardSet::from_low_bits(bits),
                shared: None,
            });
        }
        Some(FilterEntry {
            plain: SmallVec::from_buf([Self::unpack_sub(bits)?]),
            shards: ShardSet::single(self.me),
            shared: None,
        })
    }
}

impl FilterEntry {
    pub(super) fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.shards.is_empty() && self.shared.is_none()
    }

    /// Drops the shared part once it holds nothing.
    pub(super) fn tidy_shared(&mut self) {
        if self
            .shared
            .as_ref()
            .is_some_and(|x| x.local.is_empty() && x.routes.is_empty())
        {
            self.shared = None;
        }
    }

    pub(super) fn local_groups(&self) -> &[LocalGroup] {
        self.shared.as_ref().map_or(&[], |x| &x.local)
    }
}

impl Shard {
    /// Adds or replaces `session`'s subscription to `inner` (the filter without
    /// `$share/{group}/`). Returns whether it is new.
    pub(crate) fn add_local_sub(
        &mut self,
        session: u32,
        inner: &Bytes,
        group: Option<&Bytes>,
        options: SubscriptionOptions,
        sub_id: u32,
    ) -> bool {
        let sub = LocalSub {
            session,
            options,
            sub_id,
        };
        let (added, first) =
            self.filters
                .upsert(inner, FilterEntry::default, |entry| match group {
                    None => match entry.plain.iter_mut().find(|s| s.session == session) {
                        Some(s) => {
                            *s = sub;
                            (false, false)
                        }
                        None => {
                            entry.plain.push(sub);
                            (true, entry.plain.len() == 1)
                        }
                    },
                    Some(g) => {
                        let groups = &mut entry.shared.get_or_insert_with(Default::default).local;
                        let gi = match groups.iter().position(|x| x.name == *g) {
                            Some(i) => i,
                            None => {
                                groups.push(LocalGroup {
                                    name: g.clone(),
                                    members: Vec::new(),
                                    next: Cell::new(0),
                                });
                                groups.len() - 1
                            }
                        };
                        let members = &mut groups[gi].members;
                        match members.iter_mut().find(|s| s.session == session) {
                            Some(s) => {
                                *s = sub;
                                (false, false)
                            }
                            None => {
                                members.push(sub);
                                (true, members.len() == 1)
                            }
                        }
                    }
                });
        if first {
            self.route_changed(inner, group, true);
        }
        if added {
            self.stats.subscriptions += 1;
        }
        self.stats.bytes_routes = self.filters.approx_bytes();
        added
    }

    /// Removes `session`'s subscription to `inner`; returns whether it existed.
    pub(crate) fn remove_local_sub(
        &mut self,
        session: u32,
        inner: &Bytes,
        group: Option<&Bytes>,
    ) -> bool {
        let Some((removed, last, empty)) = self.filters.update(inner, |entry| {
            let (removed, last) = match group {
                None => match entry.plain.iter().position(|s| s.session == session) {
                    Some(i) => {
                        entry.plain.swap_remove(i);
                        (true, entry.plain.is_empty())
                    }
                    None => (false, false),
                },
                Some(g) => {
                    let groups = entry.shared.as_mut().map(|x| &mut x.local);
                    match groups.and_then(|gs| Some((gs.iter().position(|x| x.name == *g)?, gs))) {
                        Some((gi, groups)) => {
                            let members = &mut groups[gi].members;
                            match members.iter().position(|s| s.session == session) {
                                Some(i) => {
                                    // Keep member order (round robin stays fair).
                                    members.remove(i);
                                    let last = members.is_empty();
                                    if last {
                                        groups.swap_remove(gi);
                                    }
                                    (true, last)
                                }
                                None => (false, false),
                            }
                        }
                        None => (false, false),
                    }
                }
            };
            entry.tidy_shared();
            (removed, last, entry.is_empty())
        }) else {
            return false;
        };
        if last {
            // Takes this shard out of the filter's routes (and prunes the entry).
            self.route_changed(inner, group, false);
        } else if empty {
            self.filters.remove(inner);
        }
        if removed {
            self.stats.subscriptions -= 1;
            if group.is_none() {
                // Its retained stream ends with it.
                self.drop_stream(session, inner);
            }
        }
        self.stats.bytes_routes = self.filters.approx_bytes();
        removed
    }

    /// Splits a full filter into (inner filter, group) as owned `Bytes` (one copy
    /// of `full`, shared by both).
    pub(crate) fn split_filter(full: &[u8]) -> (Bytes, Option<Bytes>) {
        let full = Bytes::copy_from_slice(full);
        match crate::topic::parse_shared(&full) {
            Ok(Some(s)) => (full.slice_ref(s.filter), Some(full.slice_ref(s.group))),
            _ => (full.clone(), None),
        }
    }

    /// Removes every subscription of `session` (session end).
    pub(crate) fn remove_all_subs(&mut self, session: u32) {
        let subs = match self.sessions.get_mut(session) {
            Some(s) => std::mem::take(&mut s.subs),
            None => return,
        };
        self.unroute_subs(session, &subs);
    }

    /// Takes `subs` (`session`'s, full filters) out of this loop's routes; what the
    /// session remembers of them is the caller's.
    pub(crate) fn unroute_subs(&mut self, session: u32, subs: &[SessionSub]) {
        for s in subs {
            let (inner, group) = Self::split_filter(&s.filter);
            self.remove_local_sub(session, &inner, group.as_ref());
        }
    }

    /// Routes `session`'s subscription to `filter` (full: `$share/{group}/` and
    /// all) on this loop, as `add_local_sub` does.
    pub(crate) fn route_sub(
        &mut self,
        session: u32,
        filter: &[u8],
        options: SubscriptionOptions,
        sub_id: u32,
    ) -> bool {
        let (inner, group) = Self::split_filter(filter);
        self.add_local_sub(session, &inner, group.as_ref(), options, sub_id)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use bytes::Bytes;
    use smallvec::smallvec;

    use crate::config::Config;
    use crate::protocol::{Packet, Properties, QoS, UnsubAck, Unsubscribe};
    use crate::shard::harness::*;

    const FILTERS: [&str; 10] = [
        "a/b",
        "a/+",
        "a/#",
        "+/b",
        "#",
        "b/c",
        "$share/g/a/+",
        "$share/h/a/b",
        "$share/g/#",
        "$share/g/a/b",
    ];
    const TOPICS: [&str; 5] = ["a/b", "a/c", "b/c", "b/b", "x"];

    /// The filter trie (local subscribers and routes in one) against a model of
    /// who subscribed to what, on 1, 2 and 3 shards, through random subscribes,
    /// unsubscribes, disconnects and publishes:
    /// - every shard holds exactly one entry per inner filter with a subscriber
    ///   anywhere (its routes row) and prunes to the bare root when none is left;
    /// - each publish reaches every plainly matching client exactly once, and each
    ///   matching shared group (group, inner filter) exactly once, at one member.
    #[test]
    fn filter_trie_against_a_model() {
        for shards in 1..=3 {
            let mut cl = Cluster::new(shards, Config::default());
            let ids: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
            let mut cids: Vec<Cid> = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                let opts = ConnectOpts {
                    accept_on: i % shards,
                    ..ConnectOpts::default()
                };
                cids.push(cl.connect_ok(V311, id, opts, false));
            }
            let owners: Vec<usize> = ids
                .iter()
                .map(|id| crate::shard::owner_shard(0, id.as_bytes(), shards))
                .collect();
            let mut subs: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); ids.len()];
            let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ shards as u64;
            let mut published = 0u32;
            for _ in 0..600 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let c = (x >> 8) as usize % ids.len();
                let f = FILTERS[(x >> 16) as usize % FILTERS.len()];
                match x % 10 {
                    0..=3 => {
                        cl.subscribe(cids[c], f, QoS::AtMostOnce);
                        subs[c].insert(f);
                    }
                    4 | 5 => {
                        let u = Unsubscribe {
                            packet_id: 2,
                            filters: smallvec![Bytes::from_static(f.as_bytes())],
                            properties: Properties::default(),
                        };
                        cl.send(cids[c], Packet::Unsubscribe(u));
                        subs[c].remove(f);
                        // 3.1.1 UNSUBACK carries no reason codes.
                        let ack = UnsubAck {
                            packet_id: 2,
                            codes: smallvec![],
                            properties: Properties::default(),
                        };
                        cl.expect(cids[c], Packet::UnsubAck(ack));
                    }
                    6 => {
                        // A clean session ends with its connection.
                        cl.drop_connection(cids[c]);
                        subs[c].clear();
                        let opts = ConnectOpts {
                            accept_on: (x >> 24) as usize % shards,
                            ..ConnectOpts::default()
                        };
                        cids[c] = cl.connect_ok(V311, &ids[c], opts, false);
                    }
                    _ => {
                        let topic = TOPICS[(x >> 32) as usize % TOPICS.len()];
                        published += 1;
                        let payload = published.to_string();
                        cl.publish(cids[c], topic, &payload, QoS::AtMostOnce, false, 0);
                        check_delivery(&mut cl, &cids, &subs, topic, &payload);
                    }
                }
                check_entries(&cl, &subs, &owners);
            }
            for c in 0..ids.len() {
                cl.drop_connection(cids[c]);
                subs[c].clear();
            }
            check_entries(&cl, &subs, &owners);
            for sh in &cl.shards {
                assert_eq!(sh.filters.node_count(), 1, "pruned to the root");
                assert_eq!(sh.stats().subscriptions, 0);
            }
        }
    }

    /// One device filter subscribed and unsubscribed from both loops, in both
    /// orders: with one subscriber, both loops' rows are packed into the trie node
    /// (no slab entry); with a subscriber on each loop both rows are in the slab;
    /// rows move back as interest goes, publishes from either side reach exactly
    /// the subscribers, and each loop's row goes away exactly when the last
    /// subscriber anywhere does.
    #[test]
    fn remote_row_packs_and_goes_with_the_last_interest() {
        const F: &str = "dev/17/cmd";
        for last_out in [0, 1] {
            let mut cl = Cluster::new(2, Config::default());
            let ids = [id_on(0, 2, "row-a"), id_on(1, 2, "row-b")];
            let owners = [0, 1];
            let cids: Vec<Cid> = ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let opts = ConnectOpts {
                        accept_on: i,
                        ..ConnectOpts::default()
                    };
                    cl.connect_ok(V311, id, opts, false)
                })
                .collect();
            let mut subs: Vec<BTreeSet<&str>> = vec![BTreeSet::new(); 2];
            let packed = |cl: &Cluster| [0, 1].map(|i| cl.shards[i].filters.packed_len());

            cl.subscribe(cids[0], F, QoS::AtMostOnce);
            subs[0].insert(F);
            check_entries(&cl, &subs, &owners);
            assert_eq!(packed(&cl), [1, 1], "owner and other loop rows are packed");
            let node_only = crate::shard::harness::filter_row_bytes(F);
            let bytes = |cl: &Cluster| [0, 1].map(|i| cl.shards[i].filters.approx_bytes());
            assert_eq!(bytes(&cl), [node_only; 2]);
            cl.publish(cids[1], F, "1", QoS::AtMostOnce, false, 0);
            check_delivery(&mut cl, &cids, &subs, F, "1");

            cl.subscribe(cids[1], F, QoS::AtMostOnce);
            subs[1].insert(F);
            check_entries(&cl, &subs, &owners);
            assert_eq!(packed(&cl), [0, 0], "both loops have a local subscriber");
            assert!(bytes(&cl).iter().all(|b| *b > node_only), "slab entries");
            for (c, payload) in [(0, "2"), (1, "3")] {
                cl.publish(cids[c], F, payload, QoS::AtMostOnce, false, 0);
                check_delivery(&mut cl, &cids, &subs, F, payload);
            }

            let first_out = 1 - last_out;
            unsubscribe(&mut cl, cids[first_out], F);
            subs[first_out].remove(F);
            check_entries(&cl, &subs, &owners);
            assert_eq!(packed(&cl), [1, 1], "one subscriber again: both pack");
            assert_eq!(bytes(&cl), [node_only; 2]);
            for (c, payload) in [(0, "4"), (1, "5")] {
                cl.publish(cids[c], F, payload, QoS::AtMostOnce, false, 0);
                check_delivery(&mut cl, &cids, &subs, F, payload);
            }

            unsubscribe(&mut cl, cids[last_out], F);
            subs[last_out].remove(F);
            check_entries(&cl, &subs, &owners);
            for sh in &cl.shards {
                assert_eq!((sh.filters.len(), sh.filters.node_count()), (0, 1));
                assert_eq!(sh.filters.approx_bytes(), 0);
            }
            cl.publish(cids[0], F, "6", QoS::AtMostOnce, false, 0);
            check_delivery(&mut cl, &cids, &subs, F, "6");
        }
    }

    /// Every subscription option round-trips through the one-subscriber form; what
    /// does not fit (a subscription identifier, a session index of 2^24, a second
    /// subscriber or loop, a shared group, loop 30 in the bitmask) stays unpacked.
    #[test]
    fn packed_row_forms() {
        use super::{FilterEntry, LocalSub, PackedRow, SharedEntry};
        use crate::protocol::SubscriptionOptions;
        use crate::topic::Pack;
        let p = PackedRow { me: 3 };
        let here = |shards: &[usize]| {
            let mut s = super::ShardSet::default();
            shards.iter().for_each(|x| s.insert(*x));
            s
        };
        let row = |plain: &[LocalSub], shards: &[usize]| FilterEntry {
            plain: plain.iter().copied().collect(),
            shards: here(shards),
            shared: None,
        };
        let members = |s: &super::ShardSet| {
            let mut v = Vec::new();
            s.for_each(|x| v.push(x));
            v
        };
        let same = |a: &FilterEntry, b: &FilterEntry| {
            members(&a.shards) == members(&b.shards)
                && a.shared.is_none() == b.shared.is_none()
                && a.plain.len() == b.plain.len()
                && a.plain.iter().zip(&b.plain).all(|(x, y)| {
                    (x.session, x.options, x.sub_id) == (y.session, y.options, y.sub_id)
                })
        };
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for flags in 0..4u8 {
                for retain_handling in 0..3 {
                    let options = SubscriptionOptions {
                        qos,
                        no_local: flags & 1 != 0,
                        retain_as_published: flags & 2 != 0,
                        retain_handling,
                    };
                    for session in [0, 1, (1 << 24) - 1] {
                        let sub = LocalSub {
                            session,
                            options,
                            sub_id: 0,
                        };
                        let e = row(&[sub], &[3]);
                        let bits = p.pack(&e).expect("packs");
                        assert!(bits <= crate::topic::PACKED_MAX);
                        assert!(same(&p.unpack(bits).expect("unpacks"), &e), "{bits:#x}");
                    }
                }
            }
        }
        for shards in [&[][..], &[0], &[1, 29], &[0, 3, 7]] {
            let e = row(&[], shards);
            let bits = p.pack(&e).expect("packs");
            assert!(same(&p.unpack(bits).expect("unpacks"), &e), "{shards:?}");
        }
        let sub = LocalSub {
            session: 5,
            options: SubscriptionOptions::default(),
            sub_id: 0,
        };
        let unpacked = [
            row(&[LocalSub { sub_id: 9, ..sub }], &[3]),
            row(
                &[LocalSub {
                    session: 1 << 24,
                    ..sub
                }],
                &[3],
            ),
            row(&[sub, LocalSub { session: 6, ..sub }], &[3]),
            row(&[sub], &[3, 4]),
            row(&[], &[30]),
            row(&[], &[64]),
            FilterEntry {
                shared: Some(Box::new(SharedEntry::default())),
                ..row(&[], &[1])
            },
        ];
        for e in &unpacked {
            assert_eq!(p.pack(e), None, "{e:?}");
        }
    }

    fn unsubscribe(cl: &mut Cluster, c: Cid, f: &'static str) {
        let u = Unsubscribe {
            packet_id: 2,
            filters: smallvec![Bytes::from_static(f.as_bytes())],
            properties: Properties::default(),
        };
        cl.send(c, Packet::Unsubscribe(u));
        let ack = UnsubAck {
            packet_id: 2,
            codes: smallvec![],
            properties: Properties::default(),
        };
        cl.expect(c, Packet::UnsubAck(ack));
    }

    fn inner(filter: &str) -> (&str, Option<&str>) {
        match filter.strip_prefix("$share/") {
            Some(rest) => {
                let (group, f) = rest.split_once('/').expect("group/filter");
                (f, Some(group))
            }
            None => (filter, None),
        }
    }

    /// Every shard has one entry per inner filter subscribed anywhere, packed into
    /// its trie node exactly when nobody subscribes to it shared and the shard has
    /// no plain subscriber of its own, or the only plain subscriber anywhere is its
    /// own (`owners[c]`: the shard of client `c`'s session).
    #[track_caller]
    fn check_entries(cl: &Cluster, subs: &[BTreeSet<&str>], owners: &[usize]) {
        let inners: BTreeSet<&str> = subs.iter().flatten().map(|f| inner(f).0).collect();
        let shared: BTreeSet<&str> = subs
            .iter()
            .flatten()
            .filter_map(|f| match inner(f) {
                (i, Some(_)) => Some(i),
                _ => None,
            })
            .collect();
        for (i, sh) in cl.shards.iter().enumerate() {
            assert_eq!(sh.filters.len(), inners.len(), "shard {i}: {inners:?}");
            for f in &inners {
                assert!(sh.filters.get(f.as_bytes()).is_some(), "shard {i}: {f}");
            }
            let plain_on = |f: &str, here: bool| {
                subs.iter()
                    .zip(owners)
                    .filter(|(fs, o)| (**o == i) == here && fs.contains(f))
                    .count()
            };
            let packed = inners
                .iter()
                .filter(|f| !shared.contains(*f))
                .filter(|f| match plain_on(f, true) {
                    0 => true,
                    1 => plain_on(f, false) == 0,
                    _ => false,
                })
                .count();
            assert_eq!(sh.filters.packed_len(), packed, "shard {i} packed rows");
        }
        let total: usize = subs.iter().map(|s| s.len()).sum();
        let on_shards: usize = cl.shards.iter().map(|s| s.stats().subscriptions).sum();
        assert_eq!(on_shards, total);
    }

    #[track_caller]
    fn check_delivery(
        cl: &mut Cluster,
        cids: &[Cid],
        subs: &[BTreeSet<&str>],
        topic: &str,
        payload: &str,
    ) {
        // (group, inner filter) → members.
        let mut groups: BTreeMap<(&str, &str), BTreeSet<usize>> = BTreeMap::new();
        for (c, fs) in subs.iter().enumerate() {
            for f in fs {
                if let (inner, Some(g)) = inner(f) {
                    if crate::topic::matches(inner.as_bytes(), topic.as_bytes()) {
                        groups.entry((g, inner)).or_default().insert(c);
                    }
                }
            }
        }
        let mut group_copies = 0;
        for (c, &cid) in cids.iter().enumerate() {
            let mut got = 0;
            while let Some(p) = cl.next(cid) {
                assert_eq!(
                    p,
                    pubp(topic, payload, QoS::AtMostOnce, false, 0),
                    "client {c}"
                );
                got += 1;
            }
            let plain = subs[c].iter().any(|f| {
                !f.starts_with("$share/") && crate::topic::matches(f.as_bytes(), topic.as_bytes())
            });
            let member_of = groups.values().filter(|m| m.contains(&c)).count();
            assert!(
                got >= usize::from(plain),
                "client {c}: plain copy of {topic}"
            );
            let shared = got - usize::from(plain);
            assert!(
                shared <= member_of,
                "client {c}: {shared} group copies of {topic}"
            );
            group_copies += shared;
        }
        assert_eq!(
            group_copies,
            groups.len(),
            "one copy per matching group: {groups:?}"
        );
    }
}
