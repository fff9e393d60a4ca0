//! The shard's side of the cluster (issue #17; `src/cluster`): what a loop hands the
//! cluster thread once per turn (this shard's client publishes and wills, and its
//! interest changes), and what comes back (messages from NATS, and the JetStream acks
//! a held PUBACK/PUBREC waits for). Off unless `enable_cluster` was called:
//! single-node mode pays one `Option` test per publish and per route change.
//!
//! **Acknowledgement follows the cluster.** A client's QoS 1/2 PUBLISH on a cluster
//! node is delivered locally at once, but its PUBACK (PUBREC) is held until the
//! cluster thread reports that JetStream stored the message (`ClusterIn::Ack`): once
//! the publisher holds the PUBACK, a subscriber on another node gets the message
//! even if this node dies right after. When NATS cannot confirm (down, no stream,
//! no ack within the cluster thread's bound), the ack comes marked not stored and
//! the publish is refused (`refuse_unstored`: MQTT 5 0x80, 3.1.1 closed so the
//! client re-sends): a node cut off from NATS keeps serving its own clients, but
//! acknowledges no QoS 1/2 message it could not store (review10 M7).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::cluster_session::{Handed, HandoverConfirm, SessionClaim, SessionHandover};
use super::retained::RetainedBody;
use super::{ConnId, Shard, ShardMsg};
use crate::cluster::bridge::Refusal;
use crate::protocol::{Packet, PubResp, QoS, ReasonCode};
use crate::session::Message;

/// Publishes kept for the cluster thread per turn; a turn that reads more drops the
/// rest for the cluster (still delivered locally), counted in `ClusterOut::dropped`.
const CLUSTER_OUT_MAX: usize = 65_536;

/// One interest change: this shard's local count for `filter` (or `group` on it) went
/// 0 → 1 (`add`) or 1 → 0.
#[derive(Debug, Clone)]
pub struct ClusterInterest {
    pub filter: Bytes,
    pub group: Option<Bytes>,
    pub add: bool,
}

/// A held PUBACK (QoS 1) or PUBREC (QoS 2): which connection, which packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    pub conn: ConnId,
    /// The connection's generation: a connection id reused meanwhile is not this one.
    pub generation: u32,
    pub packet_id: u16,
    pub qos: QoS,
}

/// One message for NATS; `ack` when its publisher waits for the JetStream ack.
#[derive(Debug)]
pub struct Forward {
    pub msg: Arc<Message>,
    /// Its `Mqtt-Id`, given by the publishing loop (`cluster_stamp`): unique per
    /// process, so with `ClusterStatus::origin` it is the message's cluster key.
    pub id: u64,
    pub ack: Option<AckToken>,
    /// A client's QoS 2 message: who published it with which packet id (review10 H5).
    pub publisher: Option<crate::cluster::headers::Publisher>,
}

/// What the cluster thread hands a loop.
#[derive(Debug)]
pub enum ClusterIn {
    /// A publish from another node or a retained entry from the bucket.
    Msg(ShardMsg),
    /// JetStream answered for a held acknowledgement (`stored`: it has the message).
    Ack { token: AckToken, stored: bool },
    /// This node now owns the session a held CONNECT claimed (`SessionClaim`);
    /// `session`: what the previous owner handed over (`cluster_session.rs`).
    Claimed {
        conn: ConnId,
        generation: u32,
        session: Option<Bytes>,
        /// The node that sent `session` and its id for it, to confirm receipt to.
        from: Option<Handed>,
        /// `session` is this node's own entry's saved state (review10 L1): loaded
        /// only when the loop holds no session of the id.
        own: bool,
    },
    /// A dead node's will this node claimed: publish it as a local client would.
    Will(Arc<Message>),
    /// Another node took `client_id`'s session: close it here and answer `reply`
    /// with a `SessionHandover`.
    Takeover {
        client_id: Bytes,
        clean: bool,
        reply: u64,
        /// The largest hand-over the NATS connection can send (its `max_payload`
        /// less the reply's tag byte): a larger session stays here.
        max_bytes: usize,
    },
    /// The new owner of `client_id` confirmed hand-over `token`: end the session here
    /// and answer `reply` with the copies that reached it since (`SessionHandover`).
    Confirmed {
        client_id: Bytes,
        token: u64,
        reply: u64,
        /// As for `Takeover`: a larger delta keeps the session here.
        max_bytes: usize,
    },
    /// What reached `client_id`'s session on its old node between the hand-over and
    /// the confirmation: hand-over bytes whose copies join the session here.
    Delta { client_id: Bytes, session: Bytes },
    /// The old node did not answer the confirmation of hand-over `from` of
    /// `client_id` (`attempt`: as `HandoverConfirm`); the backoff is over: the loop
    /// asks again or gives it up (`on_confirm_unanswered`, review10 M8).
    ConfirmUnanswered {
        client_id: Bytes,
        from: Handed,
        attempt: u32,
    },
    /// Another node published `client_id`'s will while this node was cut from NATS:
    /// its connection here goes, without publishing the will again.
    WillTaken { client_id: Bytes },
    /// After a partition, `node` holds `client_id` from a later CONNECT: the
    /// connection here goes (0x8E) and the session's copies go to `node`.
    Yield {
        client_id: Bytes,
        node: String,
        /// The largest session the Merge to `node` can carry (the connection's
        /// `max_payload` less the Merge's header): a larger one stays here.
        max_bytes: usize,
    },
    /// The self-fencing lease (`cluster/wills.rs`, review H3): `on`, no heartbeat
    /// of this node was acknowledged for `cluster_fence_after_ms`, so the
    /// connections whose wills are registered in the cluster go (MQTT 5: 0x9C)
    /// and new wills stay off the cluster; not `on`, the heartbeat is back and the
    /// connected clients' wills are registered again.
    Fence { on: bool },
    /// Hand-over `token` of `client_id` (claimed by the asker at `epoch`) was not
    /// confirmed in its window and the asker looks dead (review M1): if the
    /// session is still held here for it, it is taken back (`ClusterOut::reasserts`).
    HandoverLapsed {
        client_id: Bytes,
        token: u64,
        epoch: u64,
    },
    /// Hand-over `token` of `client_id` was not confirmed within `HANDOVER_LAPSE`
    /// and the asker looks alive (review10 M8 item 2): the session held here stops
    /// taking copies (`on_handover_unconfirmed`).
    HandoverUnconfirmed { client_id: Bytes, token: u64 },
    /// The old node answered the confirmation of hand-over `from` of `client_id`:
    /// it took the session back (review M1; this node looked dead while it was cut
    /// from NATS). The session loaded from that hand-over, if still here, goes to
    /// it (MQTT 5: DISCONNECT 0x8E here; `on_handover_taken_back`).
    HandoverTakenBack {
        client_id: Bytes,
        from: Handed,
        /// As for `Yield`: the largest session the hand-back can carry.
        max_bytes: usize,
    },
    /// The asker of hand-over `token` of `client_id`, which this node took back,
    /// gives its session up to it (`on_hand_back`, review M1).
    HandBack {
        client_id: Bytes,
        token: u64,
        session: Bytes,
    },
    /// After a partition this node keeps `client_id` (a reconcile): its session is
    /// saved to the sessions bucket again, since what changed while this node served
    /// it alone did not land in an entry naming this node (review10 M4).
    Resave { client_id: Bytes },
}

/// What a session's entry in the sessions bucket is to hold now (review10 M4): a
/// node that takes the session from a dead owner resumes it from there, so it must
/// know when the session expired, and an ended session must not come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionSave {
    /// Its expiry and subscriptions; its client is connected.
    Online(Bytes),
    /// The same, its client gone: the cluster thread stamps the wall time (the loops
    /// have no wall clock), from which its expiry counts.
    Offline(Bytes),
    /// The session ended here (expired, clean start, replaced, handed on): the saved
    /// state is blanked if the entry still names this node.
    Ended,
}

/// What a turn of this shard gives the cluster thread.
#[derive(Debug, Default)]
pub struct ClusterOut {
    pub publishes: Vec<Forward>,
    pub interest: Vec<ClusterInterest>,
    /// CONNECTs waiting for the cluster to make this node their session's owner.
    pub claims: Vec<SessionClaim>,
    /// Sessions this loop gave up to another node's CONNECT (and deltas).
    pub handovers: Vec<SessionHandover>,
    /// Hand-overs this loop loaded, to confirm to their old node.
    pub confirms: Vec<HandoverConfirm>,
    /// Sessions given up after a partition: (client id, the node that keeps it, the
    /// hand-over bytes whose copies join its session there).
    pub yields: Vec<(Bytes, String, Bytes)>,
    /// Sessions given up to the old node that took their hand-over back (review
    /// M1): (client id, that node and its hand-over id, the hand-over bytes).
    pub hand_backs: Vec<(Bytes, Handed, Bytes)>,
    /// Wills set (a will record) or gone (`None`) by client id, in order.
    pub wills: Vec<(Bytes, Option<Bytes>)>,
    /// Persistent sessions' saved state after a change, by client id, in order.
    pub states: Vec<(Bytes, SessionSave)>,
    /// Connections closed by the fence: (client id, its will record). The will stays
    /// in the cluster's wills bucket for whichever node takes it (`cluster/wills.rs`).
    pub fenced: Vec<(Bytes, Bytes)>,
    /// Unconfirmed hand-overs taken back (client id, the epoch handed over): the
    /// cluster thread makes this node the owner again if the entry still names
    /// that claim (review M1).
    pub reasserts: Vec<(Bytes, u64)>,
    /// Client ids whose CONNECT this loop served without asking the cluster (NATS
    /// was away): the cluster thread remembers them for the reconcile when NATS
    /// returns (`Claims::served_locally`).
    pub local: Vec<Bytes>,
    /// Publishes past `CLUSTER_OUT_MAX` this turn, not forwarded.
    pub dropped: u64,
    /// Plain QoS 0 copies not made this turn: the NATS writer was full
    /// (`ClusterStatus::forward_full`).
    pub writer_full_dropped: u64,
    /// Index in `publishes` of the message the current `publish` call forwarded.
    pushed: Option<usize>,
    /// The current `publish` call's message passed `cluster_refuses` already.
    checked: bool,
    /// The id `cluster_stamp` gave the current `publish` call's message.
    stamped: u64,
}

impl ClusterOut {
    fn is_empty(&self) -> bool {
        self.publishes.is_empty()
            && self.interest.is_empty()
            && self.claims.is_empty()
            && self.handovers.is_empty()
            && self.confirms.is_empty()
            && self.yields.is_empty()
            && self.hand_backs.is_empty()
            && self.wills.is_empty()
            && self.states.is_empty()
            && self.fenced.is_empty()
            && self.reasserts.is_empty()
            && self.local.is_empty()
            && self.dropped == 0
            && self.writer_full_dropped == 0
    }
}

impl RetainedBody {
    /// A retained entry from the cluster's KV bucket.
    pub fn from_cluster(m: &Message) -> RetainedBody {
        RetainedBody::new(m)
    }
}

impl Shard {
    /// Turns the cluster side on, before the shard has any subscription:
    /// publishes and interest changes are kept from now on for `take_cluster_out`.
    pub fn enable_cluster(&mut self) {
        self.cluster = Some(Box::default());
    }

    /// The cluster thread's state (`ClusterStatus::stopped`): once that thread has
    /// ended, CONNECTs no longer wait for claims nobody would answer.
    pub fn set_cluster_status(&mut self, status: Arc<crate::cluster::ClusterStatus>) {
        self.cluster_origin_key = crate::cluster::headers::origin_key(&status.origin);
        self.cluster_status = Some(status);
    }

    /// This turn's publishes and interest changes, when there are any.
    pub fn take_cluster_out(&mut self) -> Option<ClusterOut> {
        let c = self.cluster.as_deref_mut()?;
        if c.is_empty() {
            return None;
        }
        Some(std::mem::take(c))
    }

    /// A message this loop publishes gets the identity the other nodes will know it
    /// by (review10 M8 item 3): its `Mqtt-Id` (this loop's index in the top 16
    /// bits, a sequence below, so loops never share one) and, with this process's
    /// origin, its cluster key, on the local copies too. A copy of it kept here
    /// for a hand-over then matches the key its new node got it under, and that
    /// node's copies of it are known here: a returning session is not sent again
    /// what reached its client there, and a delta's copy of it is dropped where it
    /// was published (`cluster_dedup.rs`). A message that does not go to NATS
    /// after all (refused, over the turn's bound) keeps a key no node saw: never
    /// matched. Cluster nodes only: `publish` calls it behind `cluster.is_some()`.
    pub(super) fn cluster_stamp(&mut self, msg: &mut Message) {
        if msg.topic.first() == Some(&b'$') {
            return;
        }
        self.cluster_seq = self.cluster_seq.wrapping_add(1);
        let id = ((self.id as u64 + 1) << 48) | (self.cluster_seq & ((1 << 48) - 1));
        msg.cluster_key = crate::cluster::headers::message_key_with(self.cluster_origin_key, id);
        if let Some(c) = self.cluster.as_deref_mut() {
            c.stamped = id;
        }
        self.cluster_dedup.record(msg.cluster_key, msg.qos);
    }

    /// A message this shard's client (or will) published: forwarded to NATS unless it
    /// is a `$`-topic (those stay on their node). `arc` is the fan-out's shared copy
    /// when it made one.
    #[inline]
    pub(super) fn cluster_forward(&mut self, msg: &Message, arc: &mut Option<Arc<Message>>) {
        let Some(c) = self.cluster.as_deref_mut() else {
            return;
        };
        let checked = std::mem::take(&mut c.checked);
        if msg.topic.first() == Some(&b'$') {
            return;
        }
        if c.publishes.len() >= CLUSTER_OUT_MAX {
            c.dropped += 1;
            return;
        }
        // The writer would drop this copy after the cluster thread took it off the
        // ring: dropped here it costs neither thread a copy. Not a retained message
        // (the cluster thread writes it to the retained bucket whether or not it
        // forwards it) nor QoS 1/2 (a held PUBACK may wait for it).
        if msg.qos == QoS::AtMostOnce
            && !msg.retain
            && self
                .cluster_status
                .as_deref()
                .is_some_and(|s| s.forward_full.load(Ordering::Relaxed))
        {
            c.writer_full_dropped += 1;
            return;
        }
        // A client's PUBLISH was checked already (`cluster_refuses`); a will was not.
        // One NATS cannot carry stays on this node (counted).
        if !checked {
            if let Some(st) = self.cluster_status.as_deref() {
                if st
                    .refuses(&msg.topic, msg.retain, &msg.properties, msg.payload.len())
                    .is_some()
                {
                    return;
                }
            }
        }
        // Its own bytes: the cluster thread may hold it past this receive buffer.
        let a = arc.get_or_insert_with(|| Arc::new(msg.compacted())).clone();
        c.pushed = Some(c.publishes.len());
        c.publishes.push(Forward {
            msg: a,
            id: c.stamped,
            ack: None,
            publisher: None,
        });
    }

    /// Whether NATS picks the shared-group member of a publish made now (queue groups):
    /// only while the node is connected, the cluster thread runs and this turn's
    /// forwards are not full. Otherwise nothing would come back through the queue
    /// group, so this node picks among its own members (review10 H4). A publish made
    /// while disconnected that async-nats still sends once NATS is back may then also
    /// reach a member on another node: at least once, not exactly once, in an outage.
    #[inline]
    pub(super) fn cluster_picks_shared(&self) -> bool {
        let forwards = self
            .cluster
            .as_deref()
            .is_some_and(|c| c.publishes.len() < CLUSTER_OUT_MAX);
        forwards
            && self
                .cluster_status
                .as_deref()
                .map_or(true, |s| s.is_connected() && !s.is_stopped())
    }

    /// Whether a DUP = 1 QoS 2 PUBLISH that this session holds no state for is a
    /// re-send of a message this node already received from another node (its
    /// publisher's node died before the PUBREC; review10 H5).
    pub(super) fn cluster_qos2_resent(
        &self,
        session: u32,
        p: &crate::protocol::Publish,
        now: Instant,
    ) -> bool {
        let (Some(_), Some(status), Some(s)) = (
            self.cluster.as_deref(),
            self.cluster_status.as_deref(),
            self.sessions.get(session),
        ) else {
            return false;
        };
        let publisher = crate::cluster::headers::Publisher {
            client_id: Bytes::copy_from_slice(&s.client_id),
            packet_id: p.packet_id,
            dup: true,
        };
        status.qos2_resent(&publisher, &p.topic, &p.payload, now)
    }

    /// Why a client's PUBLISH cannot go to NATS on this cluster node (review10 H3):
    /// `None` off the cluster, for a `$`-topic (never forwarded) and for one that fits.
    #[inline]
    pub(super) fn cluster_refuses(&self, p: &crate::protocol::Publish) -> Option<Refusal> {
        self.cluster.as_ref()?;
        if p.topic.first() == Some(&b'$') {
            return None;
        }
        let status = self.cluster_status.as_deref()?;
        status.refuses(&p.topic, p.retain, &p.properties, p.payload.len())
    }

    /// Called before a client's `publish`: forgets which message was forwarded last.
    #[inline]
    pub(super) fn cluster_mark(&mut self) {
        if let Some(c) = self.cluster.as_deref_mut() {
            c.pushed = None;
            // Only a client's PUBLISH comes here, after `cluster_refuses`.
            c.checked = true;
        }
    }

    /// Right after a client's QoS 1/2 `publish`: when it went to the cluster, its
    /// acknowledgement waits for JetStream (returns `true`: do not send it now).
    pub(super) fn cluster_hold_ack(
        &mut self,
        conn: ConnId,
        packet_id: u16,
        qos: QoS,
        dup: bool,
        pushed: Option<usize>,
    ) -> bool {
        let Some((generation, session)) = self.conns.get(conn).map(|c| (c.generation, c.session))
        else {
            return false;
        };
        // Other nodes tell a re-send of it on another node by this (review10 H5).
        let publisher = (qos == QoS::ExactlyOnce)
            .then(|| self.sessions.get(session))
            .flatten()
            .map(|s| crate::cluster::headers::Publisher {
                client_id: Bytes::copy_from_slice(&s.client_id),
                packet_id,
                dup,
            });
        let Some(f) = self
            .cluster
            .as_deref_mut()
            .and_then(|c| c.publishes.get_mut(pushed?))
        else {
            return false;
        };
        f.ack = Some(AckToken {
            conn,
            generation,
            packet_id,
            qos,
        });
        f.publisher = publisher;
        true
    }

    /// Which entry the last `publish` forwarded (see `cluster_mark`).
    #[inline]
    pub(super) fn cluster_pushed(&mut self) -> Option<usize> {
        self.cluster.as_deref_mut().and_then(|c| c.pushed.take())
    }

    /// What the cluster thread hands this shard.
    pub fn on_cluster_in(&mut self, m: ClusterIn, now: Instant) {
        match m {
            ClusterIn::Msg(msg) => self.on_cluster_message(msg, now),
            ClusterIn::Ack { token, stored } => self.on_cluster_ack(token, stored, now),
            ClusterIn::Claimed {
                conn,
                generation,
                session,
                from,
                own,
            } => {
                self.on_session_claimed(conn, generation, session, from, own, now);
                if self
                    .conns
                    .get(conn)
                    .is_some_and(|c| c.state == super::conn::ConnState::Connected)
                {
                    // Frames that came while the claim travelled.
                    self.process_rx(conn, now);
                }
            }
            ClusterIn::Takeover {
                client_id,
                clean,
                reply,
                max_bytes,
            } => self.on_session_takeover(&client_id, clean, reply, max_bytes, now),
            ClusterIn::Will(m) => self.on_cluster_will((*m).clone(), now),
            ClusterIn::Confirmed {
                client_id,
                token,
                reply,
                max_bytes,
            } => self.on_handover_confirmed(&client_id, token, reply, max_bytes, now),
            ClusterIn::Delta { client_id, session } => {
                self.on_handover_delta(&client_id, &session, now)
            }
            ClusterIn::ConfirmUnanswered {
                client_id,
                from,
                attempt,
            } => self.on_confirm_unanswered(&client_id, from, attempt, now),
            ClusterIn::WillTaken { client_id } => self.on_will_taken(&client_id, now),
            ClusterIn::Yield {
                client_id,
                node,
                max_bytes,
            } => self.on_session_yield(&client_id, node, max_bytes, now),
            ClusterIn::Resave { client_id } => self.on_session_resave(&client_id),
            // The status is the truth (the fencer sets it before this is sent, and
            // the loop also follows it every turn, `follow_cluster_fence`): a stale
            // `Fence` behind a newer change must not fence again.
            ClusterIn::Fence { on } => {
                let on = self
                    .cluster_status
                    .as_deref()
                    .map_or(on, |s| s.fenced.load(std::sync::atomic::Ordering::Acquire));
                self.on_cluster_fence(on, now)
            }
            ClusterIn::HandoverLapsed {
                client_id,
                token,
                epoch,
            } => self.on_handover_lapsed(&client_id, token, epoch, now),
            ClusterIn::HandoverUnconfirmed { client_id, token } => {
                self.on_handover_unconfirmed(&client_id, token, now)
            }
            ClusterIn::HandoverTakenBack {
                client_id,
                from,
                max_bytes,
            } => self.on_handover_taken_back(&client_id, from, max_bytes, now),
            ClusterIn::HandBack {
                client_id,
                token,
                session,
            } => self.on_hand_back(&client_id, token, &session, now),
        }
    }

    /// The self-fencing lease as the cluster thread's fencer last set it
    /// (`ClusterStatus::fenced`), applied once per loop turn: the fence reaches the
    /// loop even when the cluster thread's main task is slow to send
    /// `ClusterIn::Fence` (review10 H1). A no-op while nothing changed.
    pub fn follow_cluster_fence(&mut self, now: Instant) {
        let Some(on) = self
            .cluster_status
            .as_deref()
            .map(|s| s.fenced.load(std::sync::atomic::Ordering::Acquire))
        else {
            return;
        };
        if on != self.cluster_fenced {
            self.on_cluster_fence(on, now);
        }
    }

    /// The held acknowledgement goes out, if its connection is still the one; one
    /// JetStream did not store is refused instead (`refuse_unstored`).
    fn on_cluster_ack(&mut self, t: AckToken, stored: bool, now: Instant) {
        // With a data directory the reply may wait for the log too.
        if self.store_cluster_acked(&t, stored) {
            return;
        }
        if self
            .conns
            .get(t.conn)
            .map_or(true, |c| c.generation != t.generation)
        {
            // Gone: the client sends the PUBLISH again on its next connection.
            return;
        }
        if !stored {
            self.refuse_unstored(t.conn, t.generation, t.packet_id, t.qos, now);
            return;
        }
        match t.qos {
            QoS::AtLeastOnce => self.write_puback(t.conn, t.packet_id),
            QoS::ExactlyOnce => {
                self.write_control(t.conn, &Packet::PubRec(PubResp::new(t.packet_id)))
            }
            QoS::AtMostOnce => {}
        }
    }

    /// JetStream did not store a client's QoS 1/2 publish (NATS away, the write
    /// queue full, no ack within the cluster thread's bound), so it must not be
    /// acknowledged (review10 M7): a PUBACK would promise what a dead node could
    /// not keep. MQTT 5 gets 0x80 (unspecified error): the cause is the cluster's,
    /// transient and not a limit the client exceeded, which is what 0x97 (this
    /// node's log refusals) says. MQTT 3.1.1 has no negative acknowledgement: the
    /// connection is closed (its will not published: the client did nothing
    /// wrong), and the client sends the PUBLISH again on its next connection. A
    /// refused QoS 2 id is forgotten, so that re-send is taken as new.
    pub(super) fn refuse_unstored(
        &mut self,
        conn: ConnId,
        generation: u32,
        packet_id: u16,
        qos: QoS,
        now: Instant,
    ) {
        let Some(c) = self.conns.get(conn).filter(|c| c.generation == generation) else {
            return;
        };
        let (v5, session) = (c.version.is_v5(), c.session);
        let qos2 = qos == QoS::ExactlyOnce;
        if qos2 {
            if let Some(d) = self.sessions.get_mut(session).map(|s| s.delivery()) {
                d.awaiting_pubrel.retain(|x| *x != packet_id);
            }
        }
        if v5 {
            let mut resp = PubResp::new(packet_id);
            resp.code = ReasonCode::UnspecifiedError;
            let p = if qos2 {
                Packet::PubRec(resp)
            } else {
                Packet::PubAck(resp)
            };
            self.write_control(conn, &p);
            return;
        }
        self.detach_session(conn, false, now);
        self.close(conn);
    }

    #[inline]
    pub(super) fn cluster_interest(&mut self, filter: &Bytes, group: Option<&Bytes>, add: bool) {
        if let Some(c) = self.cluster.as_deref_mut() {
            c.interest.push(ClusterInterest {
                filter: filter.clone(),
                group: group.cloned(),
                add,
            });
        }
    }

    /// A message the cluster thread hands this shard: a publish from another node
    /// (delivered to local subscribers, never forwarded again) or a retained entry
    /// from the bucket (applied under this node's own retained bounds and memory
    /// mark: the publishing node's bounds say nothing about this one's).
    pub fn on_cluster_message(&mut self, msg: ShardMsg, now: Instant) {
        self.last_now = Some(now);
        match msg {
            ShardMsg::Publish {
                msg, plain, shared, ..
            } => {
                // Its key is recorded by `on_remote_publish`, as for another loop's.
                self.on_remote_publish(msg, plain, shared, now);
                self.drop_slow_consumers(now);
            }
            ShardMsg::Retain(body) => {
                self.apply_retained(&body, true, now);
            }
            // The cluster thread sends neither; a loop's routes stay between loops.
            ShardMsg::Routes(_)
            | ShardMsg::RouteAck { .. }
            | ShardMsg::StoreAck { .. }
            | ShardMsg::StoreNack { .. }
            | ShardMsg::StoreProbe { .. } => {}
        }
    }
}
