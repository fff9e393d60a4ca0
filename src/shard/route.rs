//! Local subscriptions, the replicated routes table, shared-group picks, the
//! retained replica and the publish fan-out (DESIGN.md "Ownership and routing").

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use smallvec::SmallVec;

use super::{Action, ConnId, Shard, ShardId, ShardMsg, SharedTarget, SubIds};
use crate::protocol::{QoS, SubAck, SubscriptionOptions};
use crate::session::{Message, SessionStore, NONE};

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

/// Local subscribers of one filter.
#[derive(Debug, Default)]
pub(crate) struct LocalEntry {
    pub plain: Vec<LocalSub>,
    pub groups: Vec<LocalGroup>,
}

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
    pub fn insert(&mut self, s: ShardId) {
        let w = s / 64;
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (s % 64);
    }

    pub fn remove(&mut self, s: ShardId) {
        if let Some(w) = self.0.get_mut(s / 64) {
            *w &= !(1 << (s % 64));
        }
    }

    pub fn contains(&self, s: ShardId) -> bool {
        self.0.get(s / 64).is_some_and(|w| w & (1 << (s % 64)) != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The `n`-th member in ascending order.
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

/// Which shards have local subscribers of one filter.
#[derive(Debug, Default)]
pub(crate) struct RouteEntry {
    pub plain: ShardSet,
    pub groups: Vec<RouteGroup>,
}

/// Per-publish plan for each shard (this one included), reused between publishes.
#[derive(Debug)]
pub(crate) struct Targets {
    pub plain: ShardSet,
    pub shared: Vec<Vec<SharedTarget>>,
}

impl Targets {
    pub fn new(shard_count: usize) -> Targets {
        Targets {
            plain: ShardSet::default(),
            shared: (0..shard_count).map(|_| Vec::new()).collect(),
        }
    }
}

/// One session's merged copy of a message.
#[derive(Debug)]
pub(crate) struct Match {
    pub session: u32,
    pub qos: QoS,
    pub retain_as_published: bool,
    pub sub_ids: SubIds,
}

impl Shard {
    // ---- subscriptions -------------------------------------------------------

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
        let entry = self.local.entry_or_insert_with(inner, LocalEntry::default);
        let (added, first) = match group {
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
                let gi = match entry.groups.iter().position(|x| x.name == *g) {
                    Some(i) => i,
                    None => {
                        entry.groups.push(LocalGroup {
                            name: g.clone(),
                            members: Vec::new(),
                            next: Cell::new(0),
                        });
                        entry.groups.len() - 1
                    }
                };
                let members = &mut entry.groups[gi].members;
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
        };
        if first {
            self.route_changed(inner, group, true);
        }
        if added {
            self.stats.subscriptions += 1;
        }
        added
    }

    /// Removes `session`'s subscription to `inner`; returns whether it existed.
    pub(crate) fn remove_local_sub(
        &mut self,
        session: u32,
        inner: &Bytes,
        group: Option<&Bytes>,
    ) -> bool {
        let Some(entry) = self.local.get_mut(inner) else {
            return false;
        };
        let (removed, last) = match group {
            None => match entry.plain.iter().position(|s| s.session == session) {
                Some(i) => {
                    entry.plain.swap_remove(i);
                    (true, entry.plain.is_empty())
                }
                None => (false, false),
            },
            Some(g) => match entry.groups.iter().position(|x| x.name == *g) {
                Some(gi) => {
                    let members = &mut entry.groups[gi].members;
                    match members.iter().position(|s| s.session == session) {
                        Some(i) => {
                            // Keep member order (round robin stays fair).
                            members.remove(i);
                            let last = members.is_empty();
                            if last {
                                entry.groups.swap_remove(gi);
                            }
                            (true, last)
                        }
                        None => (false, false),
                    }
                }
                None => (false, false),
            },
        };
        if entry.plain.is_empty() && entry.groups.is_empty() {
            self.local.remove(inner);
        }
        if last {
            self.route_changed(inner, group, false);
        }
        if removed {
            self.stats.subscriptions -= 1;
        }
        removed
    }

    /// Splits a full filter into (inner filter, group) as owned `Bytes`.
    pub(crate) fn split_filter(full: &Bytes) -> (Bytes, Option<Bytes>) {
        match crate::topic::parse_shared(full) {
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
        for s in &subs {
            let (inner, group) = Self::split_filter(&s.filter);
            self.remove_local_sub(session, &inner, group.as_ref());
        }
    }

    // ---- routes --------------------------------------------------------------

    /// Our local count for `filter` (or `group` on it) went 0 → 1 or 1 → 0: update
    /// our own row of the routes table and tell every other shard.
    fn route_changed(&mut self, filter: &Bytes, group: Option<&Bytes>, add: bool) {
        let me = self.id;
        self.apply_route(me, filter, group, add);
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
            let msg = ShardMsg::Route {
                filter: filter.clone(),
                group: group.cloned(),
                add,
                seq,
            };
            self.actions.push_back(Action::Send { to, msg });
        }
    }

    pub(crate) fn on_route(
        &mut self,
        from: ShardId,
        filter: Bytes,
        group: Option<Bytes>,
        add: bool,
        seq: u64,
    ) {
        if from >= self.shard_count {
            return;
        }
        self.apply_route(from, &filter, group.as_ref(), add);
        if seq != 0 {
            let msg = ShardMsg::RouteAck { seq };
            self.actions.push_back(Action::Send { to: from, msg });
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
    }

    fn apply_route(&mut self, shard: ShardId, filter: &Bytes, group: Option<&Bytes>, add: bool) {
        if add {
            let e = self
                .routes
                .entry_or_insert_with(filter, RouteEntry::default);
            match group {
                None => e.plain.insert(shard),
                Some(g) => match e.groups.iter_mut().find(|x| x.name == *g) {
                    Some(x) => x.shards.insert(shard),
                    None => {
                        let mut shards = ShardSet::default();
                        shards.insert(shard);
                        e.groups.push(RouteGroup {
                            filter: filter.clone(),
                            name: g.clone(),
                            shards,
                            next: Cell::new(0),
                        });
                    }
                },
            }
            return;
        }
        let Some(e) = self.routes.get_mut(filter) else {
            return;
        };
        match group {
            None => e.plain.remove(shard),
            Some(g) => {
                if let Some(i) = e.groups.iter().position(|x| x.name == *g) {
                    e.groups[i].shards.remove(shard);
                    if e.groups[i].shards.is_empty() {
                        e.groups.swap_remove(i);
                    }
                }
            }
        }
        if e.plain.is_empty() && e.groups.is_empty() {
            self.routes.remove(filter);
        }
    }

    // ---- publish -------------------------------------------------------------

    /// A message published by a client (or a will) of this shard: retained store,
    /// local delivery, and one `ShardMsg::Publish` per remote shard that needs it.
    ///
    /// Returns `true` when `msg` is retained but was not stored (memory mark or a
    /// retained bound): it is still delivered, and not stored on any replica.
    pub(crate) fn publish(&mut self, msg: Message, now: Instant) -> bool {
        self.stats.messages_in += 1;
        // Only stored/forwarded messages need the Arc; a purely local QoS 0 fan-out
        // does without (see `deliver`).
        let mut arc: Option<Arc<Message>> = None;
        // Borrowed from here on: rebinding the owned `msg` would copy the whole
        // struct (a `memcpy` call) on every publish.
        let stored;
        let mut retain_refused = false;
        let msg: &Message = if msg.retain {
            let a = Arc::new(msg.compacted());
            arc = Some(a.clone());
            retain_refused = !self.store_retained(&a, true);
            stored = (*a).clone();
            &stored
        } else {
            &msg
        };

        // One shard: the routes table only mirrors `local`, so one walk of `local`
        // finds both the plain subscribers and the shared groups to serve.
        if self.shard_count == 1 {
            self.deliver_local(msg, &mut arc, now, true);
            return retain_refused;
        }

        // Plan: which shards get a plain copy, which shard serves each shared group.
        let me = self.id;
        let targets = &mut self.targets;
        targets.plain = ShardSet::default();
        self.routes.for_each_match(&msg.topic, |e| {
            e.plain.for_each(|s| targets.plain.insert(s));
            for g in &e.groups {
                let n = g.shards.len();
                if n == 0 {
                    continue;
                }
                let pick = g.next.get() as usize % n;
                g.next.set(g.next.get().wrapping_add(1));
                if let Some(s) = g.shards.nth(pick) {
                    targets.shared[s].push(SharedTarget {
                        filter: g.filter.clone(),
                        group: g.name.clone(),
                    });
                }
            }
        });

        // Refused here, so refused everywhere: the replicas stay identical.
        let store_retained = msg.retain && !retain_refused;
        for to in 0..self.shard_count {
            if to == me {
                continue;
            }
            let plain = self.targets.plain.contains(to);
            let shared = std::mem::take(&mut self.targets.shared[to]);
            if !plain && shared.is_empty() && !store_retained {
                continue;
            }
            let a = arc.get_or_insert_with(|| Arc::new(msg.clone())).clone();
            self.actions.push_back(Action::Send {
                to,
                msg: ShardMsg::Publish {
                    msg: a,
                    plain,
                    shared,
                    store_retained,
                },
            });
        }

        let local_shared = std::mem::take(&mut self.targets.shared[me]);
        if self.targets.plain.contains(me) {
            self.deliver_plain(msg, &mut arc, now);
        }
        for t in &local_shared {
            self.deliver_shared(msg, &mut arc, t, now);
        }
        let mut local_shared = local_shared;
        local_shared.clear();
        self.targets.shared[me] = local_shared;
        retain_refused
    }

    /// A publish routed here by another shard.
    pub(crate) fn on_remote_publish(
        &mut self,
        msg: Arc<Message>,
        plain: bool,
        shared: Vec<SharedTarget>,
        store_retained: bool,
        now: Instant,
    ) {
        if store_retained {
            // The publisher's shard already applied the memory mark.
            self.store_retained(&msg, false);
        }
        let mut arc = Some(msg.clone());
        if plain {
            self.deliver_plain(&msg, &mut arc, now);
        }
        for t in &shared {
            self.deliver_shared(&msg, &mut arc, t, now);
        }
    }

    /// Delivers to every local non-shared subscription matching `msg`.
    ///
    /// Overlapping subscriptions of one session (e.g. `a/+` and `a/#`) yield ONE
    /// copy at the highest granted QoS, carrying every matching subscription
    /// identifier, retained-as-published if any of them asks for it (MQTT 5 3.3.4
    /// allows either one copy or one per subscription; one copy is cheaper).
    pub(crate) fn deliver_plain(
        &mut self,
        msg: &Message,
        arc: &mut Option<Arc<Message>>,
        now: Instant,
    ) {
        self.deliver_local(msg, arc, now, false);
    }

    /// `deliver_plain`, and with `groups` also one member of every matching local
    /// shared group (chosen as `deliver_shared` does), all from one walk of `local`.
    /// Only right when this shard serves every group, i.e. `shard_count == 1`.
    fn deliver_local(
        &mut self,
        msg: &Message,
        arc: &mut Option<Arc<Message>>,
        now: Instant,
        groups: bool,
    ) {
        self.match_generation = self.match_generation.wrapping_add(1);
        if self.match_generation == 0 {
            self.match_generation = 1;
        }
        let generation = self.match_generation;
        let origin = if msg.origin_shard == self.id {
            msg.origin_session
        } else {
            NONE
        };
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        let mut picks: SmallVec<[LocalSub; 2]> = SmallVec::new();
        let sessions = &mut self.sessions;
        self.local.for_each_match(&msg.topic, |e| {
            for s in &e.plain {
                if s.options.no_local && s.session == origin {
                    continue;
                }
                let Some(sess) = sessions.get_mut(s.session) else {
                    continue;
                };
                if sess.match_gen == generation {
                    if let Some(m) = matches.get_mut(sess.match_idx as usize) {
                        m.qos = m.qos.max(s.options.qos);
                        m.retain_as_published |= s.options.retain_as_published;
                        if s.sub_id != 0 {
                            m.sub_ids.push(s.sub_id);
                        }
                    }
                } else {
                    sess.match_gen = generation;
                    sess.match_idx = matches.len() as u32;
                    let mut sub_ids = SubIds::new();
                    if s.sub_id != 0 {
                        sub_ids.push(s.sub_id);
                    }
                    matches.push(Match {
                        session: s.session,
                        qos: s.options.qos,
                        retain_as_published: s.options.retain_as_published,
                        sub_ids,
                    });
                }
            }
            if groups {
                for g in &e.groups {
                    // An empty group is removed with its last member; nothing to pick.
                    if let Some(sub) = pick_member(g, sessions) {
                        picks.push(sub);
                    }
                }
            }
        });
        self.cache.clear();
        for m in &mut matches {
            if m.sub_ids.len() > 1 {
                m.sub_ids.sort_unstable();
            }
            let qos = msg.qos.min(m.qos);
            let retain = msg.retain && m.retain_as_published;
            self.deliver(m.session, msg, arc, qos, retain, &m.sub_ids, now, true);
        }
        self.matches = matches;
        if !picks.is_empty() {
            for sub in picks {
                self.deliver_member(msg, arc, sub, now);
            }
        }
    }

    /// Delivers to one member of a local shared group (online members first).
    fn deliver_shared(
        &mut self,
        msg: &Message,
        arc: &mut Option<Arc<Message>>,
        t: &SharedTarget,
        now: Instant,
    ) {
        let Some(e) = self.local.get(&t.filter) else {
            self.stats.dropped_no_subscriber += 1;
            return;
        };
        let Some(g) = e.groups.iter().find(|g| g.name == t.group) else {
            self.stats.dropped_no_subscriber += 1;
            return;
        };
        let Some(sub) = pick_member(g, &self.sessions) else {
            self.stats.dropped_no_subscriber += 1;
            return;
        };
        self.deliver_member(msg, arc, sub, now);
    }

    /// Delivers to the picked member of a shared group.
    fn deliver_member(
        &mut self,
        msg: &Message,
        arc: &mut Option<Arc<Message>>,
        sub: LocalSub,
        now: Instant,
    ) {
        let mut sub_ids = SubIds::new();
        if sub.sub_id != 0 {
            sub_ids.push(sub.sub_id);
        }
        let qos = msg.qos.min(sub.options.qos);
        let retain = msg.retain && sub.options.retain_as_published;
        self.cache.clear();
        self.deliver(sub.session, msg, arc, qos, retain, &sub_ids, now, false);
    }

    // ---- retained ------------------------------------------------------------

    /// Stores, replaces or (empty payload) deletes a retained message. Returns
    /// `false` when it was not stored: it would add a message beyond
    /// `max_retained_messages`, or add or grow one beyond `max_retained_bytes` or
    /// (with `check_mark`) while the shard is over `memory_high_water_bytes`.
    /// Deleting, and replacing with a message no larger, always succeed.
    pub(crate) fn store_retained(&mut self, msg: &Arc<Message>, check_mark: bool) -> bool {
        if msg.payload.is_empty() {
            self.remove_retained(&msg.topic);
            return true;
        }
        let old = self.retained.get(&msg.topic).map(|m| m.cost_bytes());
        let new = msg.cost_bytes();
        let grows = old.map_or(true, |old| new > old);
        if grows {
            let s = &mut self.stats;
            if old.is_none() && self.retained.len() >= self.config.max_retained_messages {
                s.dropped_retained_full += 1;
                return false;
            }
            if s.bytes_retained - old.unwrap_or(0) + new > self.config.max_retained_bytes {
                s.dropped_retained_bytes += 1;
                return false;
            }
            if check_mark && self.over_memory_mark() {
                self.stats.dropped_retained_memory += 1;
                return false;
            }
        }
        if let Some(v) = self.retained.get_mut(&msg.topic) {
            self.stats.bytes_retained -= v.cost_bytes();
            self.stats.bytes_retained += new;
            *v = msg.clone();
            return true;
        }
        self.retained.insert(&msg.topic, msg.clone());
        self.stats.bytes_retained += new;
        self.stats.retained = self.retained.len();
        true
    }

    fn remove_retained(&mut self, topic: &[u8]) {
        if let Some(old) = self.retained.remove(topic) {
            self.stats.bytes_retained -= old.cost_bytes();
            self.stats.retained = self.retained.len();
        }
    }

    /// Sends the retained messages matching `filter` to `session` after a SUBSCRIBE.
    /// Such copies always carry retain = 1; expired ones are dropped from the replica.
    pub(crate) fn send_retained(
        &mut self,
        session: u32,
        filter: &[u8],
        options: SubscriptionOptions,
        sub_id: u32,
        now: Instant,
    ) {
        let mut found: Vec<Arc<Message>> = Vec::new();
        self.retained
            .for_each_matching_filter(filter, |_, m| found.push(m.clone()));
        let mut sub_ids = SubIds::new();
        if sub_id != 0 {
            sub_ids.push(sub_id);
        }
        for m in found {
            if m.is_expired(now) {
                self.remove_retained(&m.topic);
                continue;
            }
            let qos = m.qos.min(options.qos);
            let mut arc = Some(m.clone());
            self.deliver(session, &m, &mut arc, qos, true, &sub_ids, now, false);
        }
    }
}

/// The next member of a local shared group in round robin, online members first;
/// `None` for an empty group.
fn pick_member(g: &LocalGroup, sessions: &SessionStore) -> Option<LocalSub> {
    let n = g.members.len();
    if n == 0 {
        return None;
    }
    let start = g.next.get() as usize % n;
    let mut pick = start;
    for k in 0..n {
        let i = (start + k) % n;
        if sessions
            .get(g.members[i].session)
            .is_some_and(|s| s.is_online())
        {
            pick = i;
            break;
        }
    }
    g.next.set(((pick + 1) % n) as u32);
    g.members.get(pick).copied()
}

#[cfg(test)]
mod tests {
    use super::ShardSet;
    use crate::config::Config;
    use crate::protocol::QoS;
    use crate::shard::harness::*;

    /// One shard serves plain and shared subscribers from a single walk of `local`:
    /// each group gets every message once, an offline member is skipped, and a
    /// session in a group and subscribed plainly gets both copies.
    #[test]
    fn one_shard_groups_from_the_local_walk() {
        const Q0: QoS = QoS::AtMostOnce;
        const Q1: QoS = QoS::AtLeastOnce;
        let mut cl = Cluster::new(1, Config::default());
        let kept = ConnectOpts {
            clean: false,
            ..ConnectOpts::default()
        };
        let a = cl.connect_ok(V311, "a", ConnectOpts::default(), false);
        let gone = cl.connect_ok(V311, "gone", kept, false);
        let h = cl.connect_ok(V311, "h", ConnectOpts::default(), false);
        cl.subscribe(a, "$share/g/t/+", Q0);
        cl.subscribe(gone, "$share/g/t/+", Q1);
        cl.subscribe(h, "$share/h/t/#", Q0);
        cl.subscribe(h, "t/x", Q0);
        cl.drop_connection(gone);
        let p = cl.connect_ok(V311, "p", ConnectOpts::default(), false);
        for i in 0..3 {
            cl.publish(p, "t/x", &i.to_string(), Q0, false, 0);
        }
        for i in 0..3 {
            cl.expect(a, pubp("t/x", &i.to_string(), Q0, false, 0));
        }
        cl.expect_nothing(a);
        // Plain copy first, then the group copy, per message.
        for i in 0..3 {
            cl.expect(h, pubp("t/x", &i.to_string(), Q0, false, 0));
            cl.expect(h, pubp("t/x", &i.to_string(), Q0, false, 0));
        }
        cl.expect_nothing(h);
        cl.publish(p, "u/x", "no", Q0, false, 0);
        cl.expect_nothing(a);
        cl.expect_nothing(h);
        let st = cl.shards[0].stats();
        assert_eq!((st.messages_in, st.messages_out), (4, 9));
    }

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
