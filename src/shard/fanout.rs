//! The publish fan-out: a message published on this shard (or routed here by
//! another) is matched with one walk of the filter trie, which delivers to the local
//! subscribers (one merged copy per session), plans the copies for the other shards
//! from the routes table and picks shared-group members; then one
//! `ShardMsg::Publish` goes to each shard that needs it.

use std::sync::Arc;
use std::time::Instant;

use smallvec::SmallVec;

use super::deliver::outbound_form;
use super::retained::{Applied, RetainedBody};
use super::routes::ShardSet;
use super::shared::{self, pick_member};
use super::subs::LocalSub;
use super::{Action, Shard, ShardMsg, SharedTarget, SubIds};
use crate::protocol::QoS;
use crate::session::{Message, NONE};

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

/// What a walk of the filter trie does besides collecting local plain subscribers
/// (a const parameter, so each walk's closure carries only its own work).
/// A copy routed here by another shard: local plain subscribers only.
const WALK_PLAIN: u8 = 0;
/// A publish on one of several shards: also plan the copies for the others.
const WALK_PLAN: u8 = 1;
/// A publish on the only shard: also pick one member of each shared group.
const WALK_PICK: u8 = 2;
/// A publish on a cluster node: plan plain copies for the other shards, but pick no
/// shared-group member: NATS picks one node of each group cluster-wide (queue
/// groups), and the message comes back to this node if it is the one. Only while
/// the cluster can take it (`cluster_picks_shared`); otherwise the node picks among
/// its own members as a single node does (review10 H4).
const WALK_CLUSTER: u8 = 3;

/// One session's merged copy of a message.
#[derive(Debug)]
pub(crate) struct Match {
    pub session: u32,
    pub qos: QoS,
    pub retain_as_published: bool,
    pub sub_ids: SubIds,
}

impl Shard {
    /// A message published by a client (or a will) of this shard: retained store,
    /// local delivery, and one `ShardMsg::Publish` per remote shard that needs it.
    ///
    /// Returns `true` when `msg` is retained but was not stored (memory mark or a
    /// retained bound): it is still delivered, and not stored on any replica.
    pub(crate) fn publish(&mut self, mut msg: Message, now: Instant) -> bool {
        if self.cluster.is_some() {
            self.cluster_stamp(&mut msg);
        }
        self.stats.messages_in += 1;
        self.stats.messages_in_qos[msg.qos as usize] += 1;
        self.stats.bytes_shared = self.payloads.bytes();
        self.fanout_stamp = self.latency_stamp(msg.arrived_at);
        // Only stored/forwarded messages need the Arc; a purely local QoS 0 fan-out
        // does without (see `deliver`).
        let mut arc: Option<Arc<Message>> = None;
        // Borrowed from here on: rebinding the owned `msg` would copy the whole
        // struct (a `memcpy` call) on every publish.
        let msg: &Message = &msg;
        let mut retain_refused = false;
        let mut replicate = None;
        if msg.retain {
            // The replicas' compact copy (its own topic and payload bytes, so the
            // store does not keep a receive buffer alive), shared by all of them.
            let body = RetainedBody::new(msg);
            let applied = self.retain_published(&body, now);
            retain_refused = applied == Applied::Refused;
            if applied == Applied::Stored && self.shard_count > 1 {
                replicate = Some(body);
            }
        }

        // One walk finds the shards to forward to, the shared groups each serves
        // and this shard's own plain subscribers.
        if self.cluster.is_some() && msg.topic.first() != Some(&b'$') && self.cluster_picks_shared()
        {
            self.deliver_local::<WALK_CLUSTER>(msg, &mut arc, now);
        } else if self.shard_count == 1 {
            // This shard serves every group: pick members during the walk.
            self.deliver_local::<WALK_PICK>(msg, &mut arc, now);
        } else {
            self.deliver_local::<WALK_PLAN>(msg, &mut arc, now);
        }
        // Queued after the `Publish` actions: see `retained`, "Order with live delivery".
        if let Some(a) = replicate {
            self.replicate_retained(a);
            self.store_retained_probes(msg.qos);
        }
        if self.cluster.is_some() {
            self.cluster_forward(msg, &mut arc);
        }
        self.store_fanout_done();
        retain_refused
    }

    /// A publish routed here by another shard.
    pub(crate) fn on_remote_publish(
        &mut self,
        msg: Arc<Message>,
        plain: bool,
        shared: Vec<SharedTarget>,
        now: Instant,
    ) {
        self.stats.bytes_shared = self.payloads.bytes();
        self.fanout_stamp = self.latency_stamp(msg.arrived_at);
        // A cluster message (from NATS, or published on another loop of this node,
        // `cluster_stamp`) while a session here awaits its delta (`cluster_dedup.rs`).
        // Always 0 on a single node.
        self.cluster_dedup.record(msg.cluster_key, msg.qos);
        let mut arc = Some(msg.clone());
        if plain {
            self.deliver_local::<WALK_PLAIN>(&msg, &mut arc, now);
        }
        for t in &shared {
            self.deliver_shared(&msg, &mut arc, t, now);
        }
        self.store_fanout_done();
    }

    /// Delivers to every local non-shared subscription matching `msg`, and, as
    /// `WALK` says, plans the copies for other shards or picks the local shared
    /// group members, all from one walk of the filter trie.
    ///
    /// Overlapping subscriptions of one session (e.g. `a/+` and `a/#`) yield ONE
    /// copy at the highest granted QoS, carrying every matching subscription
    /// identifier, retained-as-published if any of them asks for it (MQTT 5 3.3.4
    /// allows either one copy or one per subscription; one copy is cheaper).
    fn deliver_local<const WALK: u8>(
        &mut self,
        msg: &Message,
        arc: &mut Option<Arc<Message>>,
        now: Instant,
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
        let targets = &mut self.targets;
        if WALK == WALK_PLAN || WALK == WALK_CLUSTER {
            targets.plain = ShardSet::default();
        }
        // A filter entry lives while it has a subscriber here, a route from another
        // loop or a shared group, so finding none means nobody on this node.
        let mut matched = false;
        self.filters.for_each_match(&msg.topic, |e| {
            matched = true;
            if WALK == WALK_PLAN || WALK == WALK_CLUSTER {
                e.shards.for_each(|s| targets.plain.insert(s));
            }
            if WALK == WALK_PLAN {
                shared::pick_shards(e, targets);
            }
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
            if WALK == WALK_PICK {
                for g in e.local_groups() {
                    // An empty group is removed with its last member; nothing to pick.
                    if let Some(sub) = pick_member(g, sessions) {
                        picks.push(sub);
                    }
                }
            }
        });
        if !matched && WALK != WALK_PLAIN {
            self.stats.unmatched += 1;
        }
        let local_shared = if WALK == WALK_PLAN || WALK == WALK_CLUSTER {
            self.send_to_shards(msg, arc);
            std::mem::take(&mut self.targets.shared[self.id])
        } else {
            Vec::new()
        };
        self.cache.clear();
        // No local subscriber: no owned copy of a large payload for nobody.
        let big = if matches.is_empty() {
            None
        } else {
            outbound_form(msg, arc, &self.payloads)
        };
        let msg: &Message = big.as_deref().unwrap_or(msg);
        for m in &mut matches {
            if m.sub_ids.len() > 1 {
                m.sub_ids.sort_unstable();
            }
            let qos = msg.qos.min(m.qos);
            let retain = msg.retain && m.retain_as_published;
            self.deliver(m.session, msg, arc, qos, retain, &m.sub_ids, now, true);
        }
        self.matches = matches;
        for sub in picks {
            self.deliver_member(msg, arc, sub, now);
        }
        if WALK == WALK_PLAN {
            for t in &local_shared {
                self.deliver_shared(msg, arc, t, now);
            }
            let mut local_shared = local_shared;
            local_shared.clear();
            self.targets.shared[self.id] = local_shared;
        }
    }

    /// One `ShardMsg::Publish` per other shard that `targets` (just planned) needs.
    fn send_to_shards(&mut self, msg: &Message, arc: &mut Option<Arc<Message>>) {
        let me = self.id;
        for to in 0..self.shard_count {
            if to == me {
                continue;
            }
            let plain = self.targets.plain.contains(to);
            let shared = std::mem::take(&mut self.targets.shared[to]);
            if !plain && shared.is_empty() {
                continue;
            }
            // A large payload crosses as the node's one shared copy (see `deliver`).
            let a = if crate::tx::shares(msg.payload.len()) {
                super::deliver::queued_arc(msg, arc, &self.payloads)
            } else {
                arc.get_or_insert_with(|| Arc::new(msg.clone())).clone()
            };
            let hold = self.store_remote_seq(to, msg.qos);
            self.actions.push_back(Action::Send {
                to,
                msg: ShardMsg::Publish {
                    msg: a,
                    plain,
                    shared,
                    hold,
                },
            });
        }
    }
}
