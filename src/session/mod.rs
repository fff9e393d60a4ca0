//! Per-client session state (sans-IO): what survives a network connection —
//! subscriptions, QoS 1/2 state in both directions, the offline queue and the will.
//!
//! The shard owns the sessions whose client id hashes to it and drives them; this
//! module holds the data, the one error enum of the core ([`SessionError`]) and the
//! [`SessionStore`] seam where persistence slots in later (docs/ARCHITECTURE.md, "Layers": `store/`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use slab::Slab;
use smallvec::SmallVec;
use thin_vec::ThinVec;

mod client_id;
pub use client_id::ClientId;

use crate::protocol::{
    DecodeError, PacketType, PublishProperties, QoS, ReasonCode, SubscriptionOptions,
};

/// "No session" / "no connection" marker for the `u32` indices kept in hot structs.
pub const NONE: u32 = u32::MAX;

/// Everything that makes the core end a connection. The single mapping to a wire
/// code is [`SessionError::reason_code`]; the action is always the same: MQTT 5
/// connections get a DISCONNECT with that code, 3.x connections are just closed
/// (before CONNECT a CONNACK is used instead, see the shard's connect path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionError {
    /// Bytes on the wire that the codec refused.
    Decode(DecodeError),
    /// A packet that is legal on the wire but not here: a second CONNECT, a
    /// server-only packet, AUTH without enhanced auth, No Local on a shared
    /// subscription, a DISCONNECT raising a zero session expiry, an unknown topic alias.
    ProtocolError,
    /// More unacknowledged inbound QoS 1/2 PUBLISHes than our Receive Maximum.
    ReceiveMaximumExceeded,
    /// Topic alias 0 or above our Topic Alias Maximum.
    TopicAliasInvalid,
    /// PUBLISH topic over the configured length/level limits.
    TopicNameInvalid,
    /// Retained PUBLISH while retain is switched off.
    RetainNotSupported,
    /// Nothing received for 1.5 × keepalive.
    KeepAliveTimeout,
    /// Another connection took the session over.
    SessionTakenOver,
    /// Broker shutdown.
    ServerShuttingDown,
    /// Session queue full under `SlowConsumerPolicy::Disconnect`.
    QuotaExceeded,
    /// A reply would push the connection's unread output over its bound: the peer
    /// is not reading. Closed without a DISCONNECT (it would not be read either).
    NotReading,
    /// A partial frame kept growing while the shard was over its memory mark.
    ServerBusy,
    /// The JWT the connection authenticated with reached its `exp`.
    TokenExpired,
}

impl SessionError {
    /// The reason code sent in DISCONNECT (MQTT 5) when this error ends a connection.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            SessionError::Decode(e) => {
                // CONNECT-only codes (a malformed second CONNECT: bad protocol name or
                // level) are not DISCONNECT codes; once connected it is a protocol error.
                let code = e.reason_code();
                if code.is_valid_for(PacketType::Disconnect) {
                    code
                } else {
                    ReasonCode::ProtocolError
                }
            }
            SessionError::ProtocolError => ReasonCode::ProtocolError,
            SessionError::ReceiveMaximumExceeded => ReasonCode::ReceiveMaximumExceeded,
            SessionError::TopicAliasInvalid => ReasonCode::TopicAliasInvalid,
            SessionError::TopicNameInvalid => ReasonCode::TopicNameInvalid,
            SessionError::RetainNotSupported => ReasonCode::RetainNotSupported,
            SessionError::KeepAliveTimeout => ReasonCode::KeepAliveTimeout,
            SessionError::SessionTakenOver => ReasonCode::SessionTakenOver,
            SessionError::ServerShuttingDown => ReasonCode::ServerShuttingDown,
            SessionError::QuotaExceeded | SessionError::NotReading => ReasonCode::QuotaExceeded,
            SessionError::ServerBusy => ReasonCode::ServerBusy,
            // "The maximum connection time authorized for this connection has been
            // exceeded" (MQTT 5.0, 3.14.2.1): what a token's lifetime is.
            SessionError::TokenExpired => ReasonCode::MaximumConnectTime,
        }
    }

    /// Whether the client's will is published when this error ends the connection.
    /// Every server-initiated close is abnormal except shutdown (nobody is left to
    /// receive it) and takeover (decided by the takeover rules instead).
    pub fn publishes_will(&self) -> bool {
        !matches!(
            self,
            SessionError::ServerShuttingDown | SessionError::SessionTakenOver
        )
    }
}

/// One application message as routed inside the broker. Shared between subscribers,
/// queues and shards as `Arc<Message>`; payload and topic are shared `Bytes`.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Forwarded unchanged, except that the topic alias and subscription identifiers
    /// are per-connection and cleared here, and the expiry interval is decremented.
    pub properties: PublishProperties,
    /// When the broker received it: Message Expiry is counted from here.
    pub arrived_at: Instant,
    /// Shard and session index of the publisher, for No Local. A session lives only on
    /// its owner shard, so a copy on any other shard can never match the publisher.
    pub origin_shard: usize,
    pub origin_session: u32,
    /// Topic, payload and properties are copies of their own (`compacted`), not
    /// slices of a receive buffer: holding the message holds only its own bytes.
    pub owned: bool,
    /// A message's identity across the cluster (origin node and sequence,
    /// `cluster::headers::message_key`), the same on every node: given on the node
    /// that publishes it (`Shard::cluster_stamp`); 0 on a single node and for what
    /// never goes to NATS (`$` topics, retained replicas, ...). It travels with a session's copies in a hand-over, so the new owner can drop a
    /// delta copy it already got directly (`shard/cluster_dedup.rs`).
    pub cluster_key: u64,
}

impl Message {
    /// `Err(())` when the Message Expiry Interval has passed; `Ok(None)` when the
    /// message has no expiry; `Ok(Some(s))` with the interval minus the time waited.
    #[allow(clippy::result_unit_err)]
    pub fn remaining_expiry_s(&self, now: Instant) -> Result<Option<u32>, ()> {
        let Some(interval_s) = self.properties.message_expiry_interval_s else {
            return Ok(None);
        };
        let waited = now.saturating_duration_since(self.arrived_at);
        if waited >= Duration::from_secs(u64::from(interval_s)) {
            return Err(());
        }
        // Whole seconds waited; what remains is at least the true remainder.
        Ok(Some(interval_s - waited.as_secs() as u32))
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.remaining_expiry_s(now).is_err()
    }

    /// Bytes this message accounts for in queue limits.
    pub fn cost_bytes(&self) -> usize {
        self.topic.len() + self.payload.len() + 64
    }

    /// A copy that owns its bytes (topic, payload and the properties that are
    /// bytes), so a long-lived message (retained, queued) does not keep a whole
    /// receive buffer alive: a slice of it would pin every byte read with it.
    pub fn compacted(&self) -> Message {
        let own = |b: &Bytes| Bytes::copy_from_slice(b);
        let mut m = self.clone();
        m.topic = own(&self.topic);
        m.payload = own(&self.payload);
        if let Some(p) = m.properties.rare.get_mut() {
            p.response_topic = p.response_topic.as_ref().map(own);
            p.correlation_data = p.correlation_data.as_ref().map(own);
            p.content_type = p.content_type.as_ref().map(own);
            for (k, v) in &mut p.user_properties {
                *k = own(k);
                *v = own(v);
            }
        }
        m.owned = true;
        m
    }
}

/// One subscription as the session remembers it (the full filter, `$share/..` included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSub {
    /// Exact-size copy (16 bytes inline): a session may hold it for days.
    pub filter: Box<[u8]>,
    pub options: SubscriptionOptions,
    /// 0 = none.
    pub sub_id: u32,
}

/// A stored will: published on abnormal end of the connection (or at the end of the
/// Will Delay Interval / session, whichever comes first).
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: Bytes,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: PublishProperties,
    pub delay_s: u32,
    /// Offline session with a delayed will: when it is published. Kept here, not in
    /// `Session`, so sessions without a will do not carry it.
    pub at: Option<Instant>,
}

/// A message copy for one subscriber: the shared message plus what differs per copy.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub msg: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub sub_ids: SmallVec<[u32; 1]>,
    /// The copy's message id in the loop's log (0: not recorded: no data
    /// directory, a clean session, or QoS 0).
    pub store_id: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// QoS 1 sent, waiting for PUBACK.
    AwaitAck,
    /// QoS 2 sent, waiting for PUBREC.
    AwaitRec,
    /// PUBREL sent, waiting for PUBCOMP (the message itself is no longer needed).
    AwaitComp,
}

#[derive(Debug, Clone)]
pub struct Inflight {
    pub packet_id: u16,
    pub phase: Phase,
    pub out: Outgoing,
}

/// QoS state of a session, allocated on first use so an idle QoS 0 session stays small.
#[derive(Debug, Default)]
pub struct Delivery {
    /// Outbound QoS 1/2 messages sent and not yet fully acknowledged, oldest first
    /// (acks mostly come oldest first, so removal is usually `pop_front`).
    /// Bounded by the inflight window (at most 65535 by packet id space). Add and
    /// remove through `push_inflight` / `remove_inflight` / `retain_inflight` so the
    /// packet-id index stays right.
    pub inflight: VecDeque<Inflight>,
    /// Messages waiting for the window, for buffer room or for the client to return.
    /// Bounded by `max_queued_messages` / `max_queued_bytes`.
    pub queue: VecDeque<Outgoing>,
    pub queued_bytes: usize,
    /// Last outbound packet id handed out.
    pub last_packet_id: u16,
    /// Inbound QoS 2 packet ids PUBREC'd and waiting for PUBREL; bounded by our
    /// Receive Maximum.
    pub awaiting_pubrel: Vec<u16>,
    /// Packet ids in `inflight` as a bitset, kept only while at least
    /// `ID_INDEX_FROM` messages are in flight: a scan of a few entries is cheaper,
    /// and an idle session should not carry 8 KiB.
    ids_in_use: Option<Box<[u64; 1024]>>,
}

/// In-flight count from which packet-id allocation uses the bitset.
const ID_INDEX_FROM: usize = 32;

fn id_bit(id: u16) -> (usize, u64) {
    (usize::from(id >> 6), 1u64 << (id & 63))
}

impl Delivery {
    /// Next free outbound packet id (skipping 0 and ids in flight); `None` when all
    /// 65535 are in use.
    pub fn alloc_packet_id(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.last_packet_id = self.last_packet_id.wrapping_add(1);
            if self.last_packet_id == 0 {
                self.last_packet_id = 1;
            }
            let id = self.last_packet_id;
            let in_use = match &self.ids_in_use {
                Some(ids) => {
                    let (word, bit) = id_bit(id);
                    ids[word] & bit != 0
                }
                None => self.inflight.iter().any(|f| f.packet_id == id),
            };
            if !in_use {
                return Some(id);
            }
        }
        None
    }

    pub fn push_inflight(&mut self, f: Inflight) {
        if let Some(ids) = self.ids_in_use.as_mut() {
            let (word, bit) = id_bit(f.packet_id);
            ids[word] |= bit;
        }
        self.inflight.push_back(f);
        if self.ids_in_use.is_none() && self.inflight.len() >= ID_INDEX_FROM {
            self.rebuild_id_index();
        }
    }

    /// Puts back a copy recovered from the log or handed over by another node: in
    /// flight when it had been sent (`sent`: its packet id and phase), else queued.
    /// Returns the bytes it adds to the queue (0 when in flight).
    pub fn restore_copy(&mut self, out: Outgoing, sent: Option<(u16, Phase)>) -> usize {
        match sent {
            Some((packet_id, phase)) => {
                self.last_packet_id = self.last_packet_id.max(packet_id);
                self.push_inflight(Inflight {
                    packet_id,
                    phase,
                    out,
                });
                0
            }
            None => {
                let cost = out.msg.cost_bytes();
                self.queued_bytes += cost;
                self.queue.push_back(out);
                cost
            }
        }
    }

    pub fn remove_inflight(&mut self, i: usize) -> Option<Inflight> {
        let f = if i == 0 {
            self.inflight.pop_front()
        } else {
            self.inflight.remove(i)
        }?;
        if let Some(ids) = self.ids_in_use.as_mut() {
            let (word, bit) = id_bit(f.packet_id);
            ids[word] &= !bit;
        }
        if self.inflight.is_empty() {
            self.ids_in_use = None;
        }
        Some(f)
    }

    pub fn retain_inflight(&mut self, keep: impl FnMut(&mut Inflight) -> bool) {
        self.inflight.retain_mut(keep);
        self.ids_in_use = None;
        if self.inflight.len() >= ID_INDEX_FROM {
            self.rebuild_id_index();
        }
    }

    fn rebuild_id_index(&mut self) {
        let mut ids = Box::new([0u64; 1024]);
        for f in &self.inflight {
            let (word, bit) = id_bit(f.packet_id);
            ids[word] |= bit;
        }
        self.ids_in_use = Some(ids);
    }

    pub fn inflight_pos(&self, packet_id: u16) -> Option<usize> {
        self.inflight.iter().position(|f| f.packet_id == packet_id)
    }
}

/// One client's session.
#[derive(Debug)]
pub struct Session {
    /// Up to 15 bytes inline, longer ones in an exact-size heap block (`ClientId`).
    pub client_id: ClientId,
    /// Unique per session creation on this shard; timers carry it to detect staleness.
    pub generation: u32,
    /// The connection currently attached, `NONE` when offline.
    pub conn: u32,
    /// Session Expiry Interval in seconds (already capped); `u32::MAX` = never.
    pub expiry_s: u32,
    /// A `ThinVec`: 8 bytes here instead of `Vec`'s 24 (an idle device has no
    /// subscription); its length and capacity sit in the heap block, which one
    /// subscription sizes at 40 bytes, so a subscribed session costs what it did.
    pub subs: ThinVec<SessionSub>,
    pub will: Option<Box<Will>>,
    pub delivery: Option<Box<Delivery>>,
    /// Offline session: when it ends, in ns from the shard's epoch (`i64::MAX`:
    /// not expiring). An `Option<Instant>` would cost 16 bytes per session.
    pub expires_ns: i64,
    /// Per-publish scratch: `match_idx` is valid while `match_gen` equals the
    /// shard's current match generation (merges overlapping subscriptions without
    /// a per-message map).
    pub match_gen: u32,
    pub match_idx: u32,
    /// When the node read the CONNECT that last took this session (ns from the
    /// shard's epoch; `i64::MIN`: none yet). A CONNECT read earlier that reaches the
    /// owner late, by hand-off, must not take the session, online or offline.
    pub connect_ns: i64,
}

impl Session {
    pub fn new(client_id: &[u8], generation: u32) -> Session {
        Session {
            client_id: ClientId::new(client_id),
            generation,
            conn: NONE,
            expiry_s: 0,
            subs: ThinVec::new(),
            will: None,
            delivery: None,
            expires_ns: i64::MAX,
            match_gen: 0,
            match_idx: 0,
            connect_ns: i64::MIN,
        }
    }

    pub fn is_online(&self) -> bool {
        self.conn != NONE
    }

    pub fn delivery(&mut self) -> &mut Delivery {
        self.delivery.get_or_insert_with(Default::default)
    }

    pub fn sub_pos(&self, filter: &[u8]) -> Option<usize> {
        self.subs.iter().position(|s| s.filter[..] == *filter)
    }
}

/// The sessions owned by one shard, indexed by slab key and by client id.
///
/// This struct is the persistence seam: a durable store later wraps these calls
/// (create/resume/remove and the delivery state changes) with writes to disk, so
/// nothing else in the shard touches session storage directly.
#[derive(Default)]
pub struct SessionStore {
    slab: Slab<Session>,
    /// Slab keys by client id: 4 bytes per bucket, the id itself is read from the
    /// session (a map keyed by a copy of the id took 40 bytes per bucket).
    by_client_id: hashbrown::HashTable<u32>,
    hasher: ahash::RandomState,
    next_generation: u32,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("slab", &self.slab)
            .field("next_generation", &self.next_generation)
            .finish_non_exhaustive()
    }
}

impl SessionStore {
    pub fn new() -> SessionStore {
        SessionStore::default()
    }

    /// A store with room for `n` sessions before its slab grows. The id index is
    /// not presized: a hash table writes all its control bytes when allocated.
    pub fn with_capacity(n: usize) -> SessionStore {
        SessionStore {
            slab: Slab::with_capacity(n),
            ..SessionStore::default()
        }
    }

    /// The id of session `idx` (empty if there is none: matches no CONNECT, since
    /// an empty id is replaced by an assigned one).
    fn id_of(slab: &Slab<Session>, idx: u32) -> &[u8] {
        slab.get(idx as usize).map_or(&[], |s| &s.client_id)
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    pub fn find(&self, client_id: &[u8]) -> Option<u32> {
        let hash = self.hasher.hash_one(client_id);
        self.by_client_id
            .find(hash, |&i| Self::id_of(&self.slab, i) == client_id)
            .copied()
    }

    /// Creates an empty session for `client_id` (which must not have one).
    pub fn create(&mut self, client_id: &[u8]) -> u32 {
        self.next_generation = self.next_generation.wrapping_add(1);
        let idx = self
            .slab
            .insert(Session::new(client_id, self.next_generation)) as u32;
        let hash = self.hasher.hash_one(client_id);
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.by_client_id
            .insert_unique(hash, idx, |&i| hasher.hash_one(Self::id_of(slab, i)));
        idx
    }

    pub fn remove(&mut self, idx: u32) -> Option<Session> {
        let s = self.slab.get(idx as usize)?;
        let hash = self.hasher.hash_one(&*s.client_id);
        if let Ok(e) = self.by_client_id.find_entry(hash, |&i| i == idx) {
            e.remove();
        }
        self.slab.try_remove(idx as usize)
    }

    pub fn get(&self, idx: u32) -> Option<&Session> {
        self.slab.get(idx as usize)
    }

    pub fn get_mut(&mut self, idx: u32) -> Option<&mut Session> {
        self.slab.get_mut(idx as usize)
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &Session)> {
        self.slab.iter().map(|(k, s)| (k as u32, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::mem::size_of;

    #[test]
    fn session_struct_stays_small() {
        // One per connected client (issue #21: ≤ 300 B per idle connection). 96
        // until session 10, when `subs` became a `ThinVec` (8 bytes, not 24).
        assert!(size_of::<Session>() <= 80, "{}", size_of::<Session>());
        // The session slab's entry (`slab::Entry`, mirrored: it is private) keeps
        // its tag in a niche of `Session`. `ClientId` (session 11) has none, unlike
        // the `Box<[u8]>` it replaced; the `ThinVec`'s pointer must still give one.
        #[allow(dead_code)]
        enum SlabEntry<T> {
            Vacant(usize),
            Occupied(T),
        }
        assert_eq!(size_of::<SlabEntry<Session>>(), size_of::<Session>());
    }

    fn msg(expiry: Option<u32>, at: Instant) -> Message {
        Message {
            topic: Bytes::from_static(b"t"),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: PublishProperties {
                message_expiry_interval_s: expiry,
                ..Default::default()
            },
            arrived_at: at,
            origin_shard: 0,
            origin_session: NONE,
            owned: true,
            cluster_key: 0,
        }
    }

    #[test]
    fn expiry_is_decremented_by_whole_seconds_waited() {
        let t0 = Instant::now();
        let m = msg(Some(10), t0);
        assert_eq!(m.remaining_expiry_s(t0), Ok(Some(10)));
        assert_eq!(
            m.remaining_expiry_s(t0 + Duration::from_millis(2500)),
            Ok(Some(8))
        );
        assert_eq!(m.remaining_expiry_s(t0 + Duration::from_secs(10)), Err(()));
        assert_eq!(
            msg(None, t0).remaining_expiry_s(t0 + Duration::from_secs(99)),
            Ok(None)
        );
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_in_flight() {
        let mut d = Delivery {
            last_packet_id: u16::MAX - 1,
            ..Default::default()
        };
        let out = Outgoing {
            msg: Arc::new(msg(None, Instant::now())),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: SmallVec::new(),
            store_id: 0,
        };
        d.push_inflight(Inflight {
            packet_id: 1,
            phase: Phase::AwaitAck,
            out,
        });
        assert_eq!(d.alloc_packet_id(), Some(u16::MAX));
        assert_eq!(d.alloc_packet_id(), Some(2));
    }

    #[test]
    fn packet_ids_with_many_in_flight_use_the_index_and_stay_exact() {
        let out = Outgoing {
            msg: Arc::new(msg(None, Instant::now())),
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: SmallVec::new(),
            store_id: 0,
        };
        let mut d = Delivery::default();
        for _ in 0..100 {
            let id = d.alloc_packet_id().expect("free id");
            d.push_inflight(Inflight {
                packet_id: id,
                phase: Phase::AwaitAck,
                out: out.clone(),
            });
        }
        assert!(
            d.ids_in_use.is_some(),
            "index built past {ID_INDEX_FROM} in flight"
        );
        // Wrap around: ids 1..=100 are taken, so the next after 65535 is 101.
        d.last_packet_id = u16::MAX;
        assert_eq!(d.alloc_packet_id(), Some(101));
        // Acking id 5 (from the middle) and id 1 (the oldest) frees exactly those.
        let i5 = d.inflight_pos(5).expect("in flight");
        assert_eq!(d.remove_inflight(i5).map(|f| f.packet_id), Some(5));
        assert_eq!(d.remove_inflight(0).map(|f| f.packet_id), Some(1));
        d.last_packet_id = 0;
        assert_eq!(d.alloc_packet_id(), Some(1));
        assert_eq!(d.alloc_packet_id(), Some(5));
        assert_eq!(d.alloc_packet_id(), Some(101));
        // A retain that drops even ids rebuilds the index from what is left.
        d.retain_inflight(|f| f.packet_id % 2 == 1);
        d.last_packet_id = 1;
        assert_eq!(d.alloc_packet_id(), Some(2));
        // Emptying the window drops the index.
        while d.remove_inflight(0).is_some() {}
        assert!(d.ids_in_use.is_none());
    }

    #[test]
    fn store_indexes_by_client_id() {
        let mut st = SessionStore::new();
        let a = st.create(b"a");
        let b = st.create(b"b");
        assert_eq!(st.find(b"a"), Some(a));
        assert_eq!(st.find(b"b"), Some(b));
        assert_ne!(
            st.get(a).map(|s| s.generation),
            st.get(b).map(|s| s.generation)
        );
        assert!(st.remove(a).is_some());
        assert_eq!(st.find(b"a"), None);
        assert_eq!(st.len(), 1);
    }

    /// The id index against a `HashMap` model through growth, removals and slot
    /// reuse: every id finds exactly its own session.
    #[test]
    fn store_index_matches_a_map_model() {
        let mut st = SessionStore::new();
        let mut model: HashMap<Vec<u8>, u32> = HashMap::new();
        for round in 0..3u32 {
            for i in 0..5000u32 {
                let id = format!("dev-{i}").into_bytes();
                if model.contains_key(&id) {
                    continue;
                }
                let idx = st.create(&id);
                assert_eq!(st.get(idx).map(|s| &*s.client_id), Some(&id[..]));
                model.insert(id, idx);
            }
            // Remove every third (shifted per round) so freed slots get reused.
            let gone: Vec<Vec<u8>> = model
                .keys()
                .filter(|k| k.len() % 3 == round as usize % 3)
                .cloned()
                .collect();
            for id in gone {
                let idx = model.remove(&id).expect("in model");
                assert_eq!(
                    st.remove(idx).map(|s| s.client_id.to_vec()),
                    Some(id.clone())
                );
                assert_eq!(st.find(&id), None);
                assert!(st.remove(idx).is_none(), "removed twice");
            }
            assert_eq!(st.len(), model.len());
            for (id, idx) in &model {
                assert_eq!(st.find(id), Some(*idx));
            }
            assert_eq!(st.find(b"dev-5000"), None);
            assert_eq!(st.find(b""), None);
        }
    }

    /// One of each per device (100k+ per shard): part of the per-connection budget.
    #[test]
    fn per_client_structs_stay_small() {
        let session = std::mem::size_of::<Session>();
        assert!(session <= 96, "Session is {session} bytes");
        assert_eq!(std::mem::size_of::<SessionSub>(), 24);
    }

    #[test]
    fn error_reason_codes() {
        assert_eq!(
            SessionError::ReceiveMaximumExceeded.reason_code(),
            ReasonCode::ReceiveMaximumExceeded
        );
        assert_eq!(
            SessionError::Decode(DecodeError::TrailingBytes).reason_code(),
            ReasonCode::MalformedPacket
        );
        assert!(!SessionError::ServerShuttingDown.publishes_will());
        // Found by the connection fuzzer: a bad protocol name in a second CONNECT
        // mapped to 0x84, which DISCONNECT cannot carry.
        assert_eq!(
            SessionError::Decode(DecodeError::InvalidProtocolName).reason_code(),
            ReasonCode::ProtocolError
        );
        assert_eq!(
            SessionError::Decode(DecodeError::UnsupportedProtocolLevel(9)).reason_code(),
            ReasonCode::ProtocolError
        );
        assert!(SessionError::KeepAliveTimeout.publishes_will());
    }
}
