//! Loading a recovered state into the shard at start-up (`load_store`): its
//! persistent sessions (offline, with subscriptions, queued and in-flight copies,
//! inbound QoS 2 ids, expiry timers) and the retained replica.
//!
//! Also every loop's recovered routes (`PeerRoutes`): each loop gets the others'
//! rows before any loop runs (see `PeerRoutes`).
//!
//! This runs once per loop before the broker listens, over every recovered
//! message (a million in issue #13's recovery goal), so it moves what it can out of
//! the recovered image instead of cloning it, and finds each copy's body by index
//! in a dense table rather than by hashing its id.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thin_vec::ThinVec;

use bytes::Bytes;

use super::durable::{props_of, qos_of, unpack_options, ShardStore};
use super::retained::RetainedBody;
use super::timer::TimerKind;
use super::Shard;
use crate::protocol::QoS;
use crate::session::{Message, Outgoing, Phase, SessionSub, Will, NONE};
use crate::store::record::MsgRec;
use crate::store::state::{CopyState, StoreState, StoredMsg};

/// The recovered bodies by message id, each with the number of copies still to
/// take it. The last copy gets the body moved out, the others a clone: with one
/// copy per message (the common case) no reference count is touched twice.
enum Bodies {
    /// Ids within a span not much larger than their count (a loop numbers its
    /// messages densely): a slot per id from `base`.
    Dense {
        base: u64,
        slots: Vec<Option<(Arc<Message>, u32)>>,
    },
    Sparse(HashMap<u64, (Arc<Message>, u32)>),
}

impl Bodies {
    fn new(messages: &BTreeMap<u64, StoredMsg>) -> Bodies {
        let (Some(&lo), Some(&hi)) = (messages.keys().next(), messages.keys().next_back()) else {
            return Bodies::Sparse(HashMap::new());
        };
        let span = hi - lo + 1;
        if span <= 4 * messages.len() as u64 + 4096 {
            Bodies::Dense {
                base: lo,
                slots: (0..span).map(|_| None).collect(),
            }
        } else {
            Bodies::Sparse(HashMap::with_capacity(messages.len()))
        }
    }

    fn put(&mut self, id: u64, msg: Arc<Message>, refs: u32) {
        match self {
            Bodies::Dense { base, slots } => {
                if let Some(slot) = slots.get_mut((id - *base) as usize) {
                    *slot = Some((msg, refs));
                }
            }
            Bodies::Sparse(map) => {
                map.insert(id, (msg, refs));
            }
        }
    }

    fn take(&mut self, id: u64) -> Option<Arc<Message>> {
        let slot = match self {
            Bodies::Dense { base, slots } => {
                let i = usize::try_from(id.checked_sub(*base)?).ok()?;
                slots.get_mut(i)?
            }
            Bodies::Sparse(map) => {
                let (msg, left) = map.get_mut(&id)?;
                if *left > 1 {
                    *left -= 1;
                    return Some(msg.clone());
                }
                return map.remove(&id).map(|(m, _)| m);
            }
        };
        let (msg, left) = slot.as_mut()?;
        if *left > 1 {
            *left -= 1;
            return Some(msg.clone());
        }
        slot.take().map(|(m, _)| m)
    }
}

impl Shard {
    /// Loads a recovered state: its sessions (offline, with subscriptions, queues,
    /// copies in flight and inbound QoS 2 ids) and the retained messages. Called
    /// once, after `attach_store` and before any connection.
    pub fn load_store(&mut self, state: StoreState, now: Instant) {
        let Some(st) = self.store.as_ref() else {
            return;
        };
        // The state is consumed: bodies, topics and payloads move into the shard's
        // messages instead of being cloned (a clone of a `Bytes` read from disk
        // allocates), and nothing of the recovered image is left to free at the end.
        let StoreState {
            sessions,
            messages,
            retained,
            ..
        } = state;
        let msg_of = |m: MsgRec, st: &ShardStore| Message {
            properties: props_of(&m.props),
            arrived_at: st.instant(m.arrived_unix_ms, now),
            topic: m.topic,
            payload: m.payload,
            qos: qos_of(m.qos),
            retain: m.retain,
            origin_shard: self.id,
            origin_session: NONE,
            owned: true,
            cluster_key: 0,
        };
        let mut bodies = Bodies::new(&messages);
        for (id, m) in messages {
            bodies.put(id, Arc::new(msg_of(m.msg, st)), m.refs);
        }
        let retained: Vec<Message> = retained.into_values().map(|m| msg_of(m, st)).collect();
        let wills: Vec<Option<Will>> = sessions
            .values()
            .map(|s| {
                s.will.as_ref().map(|w| Will {
                    topic: w.topic.clone(),
                    payload: w.payload.clone(),
                    qos: qos_of(w.qos),
                    retain: w.retain,
                    properties: props_of(&w.props),
                    delay_s: w.delay_s,
                    at: None,
                })
            })
            .collect();
        for ((client, s), will) in sessions.iter().zip(wills) {
            if self.sessions.find(client).is_some() {
                continue;
            }
            let idx = self.sessions.create(client);
            self.limits.session_added();
            let subs = self.restore_subs(idx, &s.subs);
            let Some(sess) = self.sessions.get_mut(idx) else {
                continue;
            };
            sess.expiry_s = s.expiry_s;
            sess.will = will.map(Box::new);
            sess.subs = subs;
            let d = sess.delivery();
            // A bridge's link numbers its publishes from 1 again in a new process, so
            // an id it left awaiting PUBREL would swallow a new message as a resend;
            // the message itself was delivered at PUBLISH time (bridge/link.rs).
            if !client.starts_with(b"$bridge/") {
                d.awaiting_pubrel = s.inbound_qos2.iter().copied().collect();
            }
            let mut queued = 0;
            for (id, copy) in &s.copies {
                let Some(msg) = bodies.take(*id) else {
                    continue;
                };
                let (out, sent) = copy_of(copy, msg, *id);
                queued += d.restore_copy(out, sent);
            }
            if d.queue.is_empty() && d.inflight.is_empty() && d.awaiting_pubrel.is_empty() {
                sess.delivery = None;
            }
            self.stats.bytes_queued += queued;
            if s.expiry_s != u32::MAX {
                let at = now + Duration::from_secs(u64::from(s.expiry_s));
                let at_ns = self.stamp_ns(at);
                if let Some(sess) = self.sessions.get_mut(idx) {
                    sess.expires_ns = at_ns;
                }
                self.arm_session_timer(idx, TimerKind::SessionExpiry, at, now);
            }
        }
        self.stats.sessions = self.sessions.len();
        for m in retained {
            let body = RetainedBody::new(&m);
            self.load_retained(&body, now);
        }
    }
}

/// The routes every loop's recovered sessions make: per loop, each filter (with its
/// shared group) one of its sessions subscribes to, once.
///
/// `load_store` puts a loop's own row in place and queues the route adds for the
/// other loops, but those leave on that loop's first turn, and another loop may run
/// before it: a bridge taking the messages its remote sends again after a kill -9, a
/// client publishing as soon as the broker listens. Routed past a recovered
/// subscriber on a loop not heard from yet, such a QoS 1/2 message matched nobody
/// and was acknowledged anyway, so the remote or the client forgot it. Start-up
/// (`worker/store.rs`) builds this from the recovered states before any loop runs
/// and gives it to every loop (`Shard::load_peer_routes`); the route adds that
/// follow through the mesh set the same bits again.
#[derive(Debug, Default)]
pub struct PeerRoutes {
    rows: Vec<Vec<(Bytes, Option<Bytes>)>>,
}

impl PeerRoutes {
    /// From the recovered states of loops 0, 1, ... in order.
    pub fn of<'a>(states: impl IntoIterator<Item = &'a StoreState>) -> PeerRoutes {
        let rows = states
            .into_iter()
            .map(|state| {
                let row: BTreeSet<(Bytes, Option<Bytes>)> = state
                    .sessions
                    .values()
                    .flat_map(|s| s.subs.keys())
                    .map(|filter| Shard::split_filter(filter))
                    .collect();
                row.into_iter().collect()
            })
            .collect();
        PeerRoutes { rows }
    }

    /// Filters (and groups) in loop `shard`'s row.
    #[cfg(test)]
    pub fn row_len(&self, shard: super::ShardId) -> usize {
        self.rows.get(shard).map_or(0, Vec::len)
    }
}

impl Shard {
    /// The other loops' recovered routes, applied as their route adds will be when
    /// they arrive, so this loop routes to their recovered subscribers from its
    /// first turn. Called once at start-up, after `load_store`; our own row comes
    /// from `load_store`, and rows of loops this shard does not know are ignored.
    pub fn load_peer_routes(&mut self, routes: &PeerRoutes) {
        for (from, row) in routes.rows.iter().enumerate() {
            if from == self.id || from >= self.shard_count {
                continue;
            }
            for (filter, group) in row {
                self.apply_route(from, filter, group.as_ref(), true);
            }
        }
    }
}

impl Shard {
    /// A recovered or handed-over session's subscriptions (as the log keeps them),
    /// routed on this loop; returns them for the session.
    pub(super) fn restore_subs(
        &mut self,
        idx: u32,
        subs: &BTreeMap<Bytes, (u8, u32)>,
    ) -> ThinVec<SessionSub> {
        let mut out = ThinVec::with_capacity(subs.len());
        for (filter, (options, sub_id)) in subs {
            let options = unpack_options(*options);
            out.push(SessionSub {
                filter: Box::from(&filter[..]),
                options,
                sub_id: *sub_id,
            });
            self.route_sub(idx, filter, options, *sub_id);
        }
        out
    }
}

/// A copy as the log (or a hand-over) describes it: the copy for the session and,
/// when it had been sent, its packet id and the phase its acknowledgements reached.
pub(super) fn copy_of(
    copy: &CopyState,
    msg: Arc<Message>,
    store_id: u64,
) -> (Outgoing, Option<(u16, Phase)>) {
    let qos = qos_of(copy.qos);
    let sent = copy.packet_id.map(|packet_id| {
        let phase = if copy.released {
            Phase::AwaitComp
        } else if qos == QoS::ExactlyOnce {
            Phase::AwaitRec
        } else {
            Phase::AwaitAck
        };
        (packet_id, phase)
    });
    let out = Outgoing {
        msg,
        qos,
        retain: copy.retain,
        sub_ids: copy.sub_ids.iter().copied().collect(),
        store_id,
    };
    (out, sent)
}
