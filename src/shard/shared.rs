//! Shared subscriptions ($share/{group}/{filter}): which shard serves a group's copy
//! of a publish (round robin over the shards with members) and which local member
//! gets it (round robin, online members first). Each group gets every message once.

use std::sync::Arc;
use std::time::Instant;

use super::deliver::outbound_form;
use super::fanout::Targets;
use super::subs::{FilterEntry, LocalGroup, LocalSub};
use super::{Shard, SharedTarget, SubIds};
use crate::session::{Message, SessionStore};

impl Shard {
    /// Delivers to one member of a local shared group (online members first).
    pub(super) fn deliver_shared(
        &mut self,
        msg: &Message,
        arc: &mut Option<Arc<Message>>,
        t: &SharedTarget,
        now: Instant,
    ) {
        let Some(e) = self.filters.get(&t.filter) else {
            self.stats.dropped_no_subscriber += 1;
            return;
        };
        let Some(g) = e.local_groups().iter().find(|g| g.name == t.group) else {
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
    pub(super) fn deliver_member(
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
        let big = outbound_form(msg, arc, &self.payloads);
        let msg: &Message = big.as_deref().unwrap_or(msg);
        self.deliver(sub.session, msg, arc, qos, retain, &sub_ids, now, false);
    }
}

/// Picks, for each shared group of `e` with members on some shard, the shard that
/// gets this publish's copy (round robin over the group's shards) into `targets`.
#[inline]
pub(super) fn pick_shards(e: &FilterEntry, targets: &mut Targets) {
    for g in e.shared.iter().flat_map(|x| &x.routes) {
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
}

/// The next member of a local shared group in round robin, online members first;
/// `None` for an empty group.
pub(super) fn pick_member(g: &LocalGroup, sessions: &SessionStore) -> Option<LocalSub> {
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
}
