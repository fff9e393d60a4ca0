//! The shard's side of durability (sans-IO): which changes of persistent sessions
//! and of the retained replica become log records, the acknowledgements that wait
//! for them, and loading a recovered state.
//!
//! The shard owns its loop's log writer ([`Wal`]); the IO side only moves its
//! [`DiskOp`]s (`poll_store_op` / `on_store_done`). Only persistent sessions
//! (expiry > 0) and QoS 1/2 copies for them are recorded, plus retained set/clear:
//! a clean session or a QoS 0 message never touches the log, and without a data
//! directory `store` is `None` and every hook is one branch.
//!
//! **No early acknowledgement.** A PUBACK/PUBREC, a SUBACK (with the retained
//! messages it starts) and a CONNECT that resumes a session wait in `held` until
//! the log is durable up to the position the records they depend on end at. One
//! connection's replies keep their order: a reply that needs no record still
//! waits behind an earlier held one of its connection. When a write fails the
//! records are lost and so are their acknowledgements: MQTT 5 publishers get
//! 0x97, 3.x ones none (they resend after reconnecting), a held SUBACK or CONNECT
//! closes the connection instead.
//!
//! **Message ids.** A QoS 1/2 message that reaches persistent sessions is written
//! once per fan-out (`MsgPut`), each session's copy refers to it (`Enqueue`), and
//! the copy's `Outgoing::store_id` carries the id to its `Sent`/`Released`/`Ack`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::conn::ConnState;
use super::retained::RetainedBody;
use super::{ConnId, Shard};
use crate::protocol::{
    decode_packet, encode_packet, Connect, Packet, ProtocolVersion, PubResp, Publish,
    PublishProperties, QoS, ReasonCode, SubAck, SubscriptionOptions,
};
use crate::session::{Outgoing, NONE};
use crate::store::record::{MsgRec, Record, WillRec};
use crate::store::wal::{AppendError, WalEvent};
use crate::store::{DiskError, DiskOp, Wal};

use super::durable_cluster::BothHolds;
use super::durable_remote::{RemoteDurability, RemoteNeeds};

/// A reply waiting for the log.
enum Reply {
    /// PUBACK or PUBREC with reason Success; `qos2`: a PUBREC; `cluster`: it also
    /// waits for JetStream (`durable_cluster.rs`).
    PubResp {
        packet_id: u16,
        qos2: bool,
        cluster: bool,
    },
    /// A SUBACK and the retained messages its subscriptions asked for.
    /// Boxed: most held replies are PUBACKs.
    SubAck(Box<HeldSubAck>),
    /// PUBREL for a copy whose `Released` record must be durable first: a PUBREL
    /// tells the client to forget the packet id, so a restart that had lost the
    /// record would send the message again as new.
    PubRel { packet_id: u16 },
    /// A CONNECT for an existing session, handled once what the session is made of
    /// is durable (its CONNACK says "session present").
    Connect(Box<Connect>),
}

/// The retained messages a SUBSCRIBE's new subscriptions asked for.
pub(super) type RetainedAsked = SmallVec<[(Bytes, SubscriptionOptions); 2]>;

struct HeldSubAck {
    session: u32,
    ack: SubAck,
    retained: RetainedAsked,
    sub_id: u32,
}

struct Held {
    lsn: u64,
    /// The other loops whose logs must have this publish's copies first.
    remote: RemoteNeeds,
    /// Unique per held reply (`last_held` names the connection's last one).
    n: u64,
    conn: ConnId,
    generation: u32,
    reply: Reply,
}

/// The log of one shard and what waits for it.
pub(crate) struct ShardStore {
    pub(super) wal: Wal,
    /// Every record ending at or before this is durable for the mode.
    pub(super) durable: u64,
    /// Replies in log order (positions never decrease).
    held: VecDeque<Held>,
    /// Per connection with a held reply: (generation, `Held::n` of its last one).
    last_held: HashMap<ConnId, (u32, u64)>,
    held_n: u64,
    /// Publishes to other loops and their answers (`durable_remote.rs`).
    pub(super) remote: RemoteDurability,
    /// Replies held for JetStream too (`durable_cluster.rs`).
    pub(super) both: BothHolds,
    /// Connections whose output carries a QoS 2 PUBLISH of a recorded copy:
    /// (generation, position of its `Sent`). Their output waits for the log: a
    /// client that got a QoS 2 PUBLISH whose `Sent` a crash then lost would get the
    /// message again under another packet id, a second delivery. QoS 1 does not
    /// wait: a resend under another id is the at-least-once it promises.
    tx_gate: HashMap<ConnId, (u32, u64)>,
    pub(super) next_msg_id: u64,
    /// The body written for the fan-out in progress: (message address, id).
    put: Option<(usize, u64)>,
    /// Wall clock at `base`: message arrival times are stored in Unix ms.
    base: Instant,
    base_unix_ms: u64,
    /// Log bytes written after which the next snapshot starts (so the log behind
    /// it can go); `wal.stats.bytes_written` at the last one.
    pub(super) snapshot_after_bytes: u64,
    pub(super) snapshot_at_bytes: u64,
}

/// Log bytes between snapshots: recovery replays at most about this much.
pub const SNAPSHOT_AFTER_BYTES: u64 = 64 << 20;

impl ShardStore {
    pub(super) fn unix_ms(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.base) {
            Some(d) => self.base_unix_ms + d.as_millis() as u64,
            None => self
                .base_unix_ms
                .saturating_sub(self.base.duration_since(t).as_millis() as u64),
        }
    }

    pub(super) fn instant(&self, unix_ms: u64, now: Instant) -> Instant {
        let now_ms = self.unix_ms(now);
        now.checked_sub(Duration::from_millis(now_ms.saturating_sub(unix_ms)))
            .unwrap_or(now)
    }
}

/// The MQTT 5 properties of a message as the store keeps them: an encoded v5
/// PUBLISH that carries them (empty when there are none), read back by the codec.
pub(super) fn props_bytes(p: &PublishProperties) -> Bytes {
    if p.is_empty() {
        return Bytes::new();
    }
    let mut p = p.clone();
    p.topic_alias = None;
    if let Some(r) = p.rare.get_mut() {
        r.subscription_identifiers.clear();
    }
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: Bytes::from_static(b"p"),
        packet_id: 0,
        properties: p,
        payload: Bytes::new(),
    });
    let mut out = BytesMut::new();
    encode_packet(&packet, ProtocolVersion::V5, &mut out);
    out.freeze()
}

pub(super) fn props_of(b: &Bytes) -> PublishProperties {
    if b.is_empty() {
        return PublishProperties::default();
    }
    let mut buf = BytesMut::from(&b[..]);
    match decode_packet(&mut buf, ProtocolVersion::V5, usize::MAX) {
        Ok(Some(Packet::Publish(p))) => p.properties,
        // A record's CRC passed, so this is our own encoding; stay total anyway.
        _ => PublishProperties::default(),
    }
}

pub(super) fn qos_of(q: u8) -> QoS {
    match q {
        2 => QoS::ExactlyOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::AtMostOnce,
    }
}

pub(super) fn pack_options(o: &SubscriptionOptions) -> u8 {
    (o.qos as u8)
        | (u8::from(o.no_local) << 2)
        | (u8::from(o.retain_as_published) << 3)
        | ((o.retain_handling & 3) << 4)
}

pub(super) fn unpack_options(b: u8) -> SubscriptionOptions {
    SubscriptionOptions {
        qos: qos_of(b & 3),
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling: (b >> 4) & 3,
    }
}

impl Shard {
    /// Gives the shard its loop's log writer, continuing where recovery left it.
    /// `unix_ms` is the wall clock at `now` (arrival times survive a restart as
    /// Unix ms).
    pub fn attach_store(&mut self, wal: Wal, next_msg_id: u64, now: Instant, unix_ms: u64) {
        let durable = wal.durable_lsn();
        self.store = Some(Box::new(ShardStore {
            wal,
            durable,
            held: VecDeque::new(),
            last_held: HashMap::new(),
            held_n: 0,
            remote: RemoteDurability::new(self.shard_count),
            both: BothHolds::new(),
            tx_gate: HashMap::new(),
            next_msg_id: next_msg_id.max(1),
            put: None,
            base: now,
            base_unix_ms: unix_ms,
            snapshot_after_bytes: SNAPSHOT_AFTER_BYTES,
            snapshot_at_bytes: 0,
        }));
    }

    /// How many log bytes between snapshots (tests use small figures).
    pub fn set_snapshot_after_bytes(&mut self, n: u64) {
        if let Some(s) = self.store.as_mut() {
            s.snapshot_after_bytes = n.max(1);
        }
    }

    pub fn has_store(&self) -> bool {
        self.store.is_some()
    }

    /// The next disk operation for the IO side (at most one is out at a time).
    pub fn poll_store_op(&mut self) -> Option<DiskOp> {
        self.store.as_mut()?.wal.poll_op()
    }

    /// True while the log has work or an operation out: the loop must not park
    /// without something to wake it.
    pub fn store_busy(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.wal.busy())
    }

    /// `interval:MS` mode: the timer asks for an fdatasync of what was written.
    pub fn store_request_sync(&mut self) {
        if let Some(s) = self.store.as_mut() {
            s.wal.request_sync();
        }
    }

    /// The result of the operation `poll_store_op` returned last: held replies the
    /// log now covers go out, the ones whose records failed are refused.
    pub fn on_store_done(&mut self, result: Result<(), DiskError>, now: Instant) {
        self.last_now = Some(now);
        let Some(s) = self.store.as_mut() else {
            return;
        };
        if let Err(e) = result {
            self.stats.store_write_errors += 1;
            tracing::error!(
                shard = self.id,
                error = ?e,
                "data directory write failed: the records it carried are not acknowledged"
            );
        }
        s.wal.on_done(result);
        while let Some(ev) = self.store.as_mut().and_then(|s| s.wal.poll_event()) {
            match ev {
                WalEvent::Durable(n) => {
                    if let Some(s) = self.store.as_mut() {
                        s.durable = n;
                    }
                    self.answer_remote(None);
                    self.release_held(now);
                }
                WalEvent::Failed { from, .. } => {
                    self.answer_remote(Some(from));
                    self.fail_held(from, now);
                }
            }
        }
        self.maybe_snapshot();
        self.drop_slow_consumers(now);
    }

    /// Whether `conn`'s output waits for the log (`take_tx` then gives nothing).
    pub(super) fn tx_gated(&self, conn: ConnId, generation: u32) -> bool {
        self.store.as_ref().is_some_and(|s| {
            s.tx_gate
                .get(&conn)
                .is_some_and(|&(g, lsn)| g == generation && lsn > s.durable)
        })
    }

    /// The output of connections whose gate the log passed (or that failed: the
    /// in-memory state goes on as it is) is flushed.
    fn open_tx_gates(&mut self, all: bool) {
        let Some(s) = self.store.as_mut() else {
            return;
        };
        let durable = s.durable;
        let mut open: SmallVec<[(ConnId, u32); 8]> = SmallVec::new();
        s.tx_gate.retain(|conn, (g, lsn)| {
            let keep = !all && *lsn > durable;
            if !keep {
                open.push((*conn, *g));
            }
            keep
        });
        for (conn, g) in open {
            if let Some(c) = self.conns.get_mut(conn).filter(|c| c.generation == g) {
                if !c.tx.is_empty() && !c.flush_queued() {
                    c.set_flush_queued(true);
                    self.actions.push_back(super::Action::Flush(conn));
                }
            }
        }
    }

    /// `session`'s connection sends nothing more until the log is durable up to
    /// its end now.
    fn gate_tx(&mut self, session: u32) {
        let Some(conn) = self.sessions.get(session).map(|s| s.conn) else {
            return;
        };
        if conn == NONE {
            return;
        }
        let conn = conn as ConnId;
        let Some(g) = self.conns.get(conn).map(|c| c.generation) else {
            return;
        };
        if let Some(s) = self.store.as_mut() {
            let lsn = s.wal.next_lsn();
            s.tx_gate.insert(conn, (g, lsn));
        }
    }

    pub(super) fn release_held(&mut self, now: Instant) {
        self.open_tx_gates(false);
        loop {
            let Some(s) = self.store.as_mut() else {
                return;
            };
            if !s
                .held
                .front()
                .is_some_and(|h| h.lsn <= s.durable && s.remote.answered(&h.remote))
            {
                if s.held.is_empty() {
                    s.remote.forget_failures();
                }
                return;
            }
            let Some(h) = s.held.pop_front() else { return };
            if s.last_held.get(&h.conn) == Some(&(h.generation, h.n)) {
                s.last_held.remove(&h.conn);
            }
            if s.remote.any_failed(&h.remote) {
                // Another loop could not keep its copies: as a failed write here.
                self.refuse_held(h);
                continue;
            }
            if let Reply::PubResp {
                packet_id,
                cluster: true,
                qos2,
            } = h.reply
            {
                // Before the connection check: JetStream's answer still comes.
                if !self.store_both_log_done((h.conn, h.generation, packet_id), true, qos2) {
                    continue;
                }
            }
            if !self
                .conns
                .get(h.conn)
                .is_some_and(|c| c.generation == h.generation)
            {
                continue;
            }
            match h.reply {
                Reply::PubResp {
                    packet_id, qos2, ..
                } => {
                    if qos2 {
                        self.write_control(h.conn, &Packet::PubRec(PubResp::new(packet_id)));
                    } else {
                        self.write_puback(h.conn, packet_id);
                    }
                }
                Reply::PubRel { packet_id } => {
                    self.write_control(h.conn, &Packet::PubRel(PubResp::new(packet_id)));
                }
                Reply::SubAck(a) => {
                    let HeldSubAck {
                        session,
                        ack,
                        retained,
                        sub_id,
                    } = *a;
                    self.send_subscribe_replies(h.conn, session, ack, retained, sub_id, now)
                }
                Reply::Connect(connect) => {
                    if let Some(c) = self.conns.get_mut(h.conn) {
                        if c.state == ConnState::Verifying {
                            c.state = ConnState::AwaitConnect;
                            self.finish_connect_durable(h.conn, *connect, now);
                        }
                    }
                }
            }
        }
    }

    /// Records after `from` will never be durable: every held reply waits for one
    /// of them (positions before it were reported durable already).
    fn fail_held(&mut self, from: u64, now: Instant) {
        let Some(s) = self.store.as_mut() else {
            return;
        };
        let failed: Vec<Held> = {
            let keep = s.held.iter().take_while(|h| h.lsn <= from).count();
            s.held.drain(keep..).collect()
        };
        let kept: HashSet<u64> = s.held.iter().map(|h| h.n).collect();
        s.last_held.retain(|_, (_, n)| kept.contains(n));
        self.open_tx_gates(true);
        if !failed.is_empty() {
            tracing::warn!(
                shard = self.id,
                replies = failed.len(),
                "acknowledgements withheld: their records could not be written"
            );
        }
        for h in failed {
            self.refuse_held(h);
        }
        let _ = now;
    }

    /// A held reply whose records will never be durable: refused, as the reply's
    /// kind allows.
    fn refuse_held(&mut self, h: Held) {
        self.stats.store_acks_refused += 1;
        if let Reply::PubResp {
            packet_id,
            qos2,
            cluster,
        } = h.reply
        {
            let key = (h.conn, h.generation, packet_id);
            if !cluster || self.store_both_log_done(key, false, qos2) {
                self.refuse_publish(h.conn, h.generation, packet_id, qos2);
            }
            return;
        }
        if !self
            .conns
            .get(h.conn)
            .is_some_and(|c| c.generation == h.generation)
        {
            return;
        }
        match h.reply {
            Reply::PubResp { .. } => {}
            // The copy stays as it was on disk; the client resends PUBREC.
            Reply::SubAck(_) | Reply::PubRel { .. } => self.close(h.conn),
            Reply::Connect(_) => {
                if let Some(c) = self.conns.get_mut(h.conn) {
                    c.state = ConnState::AwaitConnect;
                }
                self.write_control(
                    h.conn,
                    &super::connect::connack(ReasonCode::ServerUnavailable),
                );
                self.close(h.conn);
            }
        }
    }

    /// Appends `rec`; `None` without a store. A record that cannot be appended (the
    /// log stopped after a failed fdatasync) is counted: what depends on it is then
    /// never acknowledged, since its position is never reported durable.
    pub(super) fn log(&mut self, rec: &Record) {
        let Some(s) = self.store.as_mut() else {
            return;
        };
        match s.wal.append(rec) {
            Ok(_) => self.stats.store_records += 1,
            Err(AppendError::Stopped | AppendError::TooLarge) => {
                self.stats.store_records_refused += 1;
            }
        }
    }

    /// The log's end now (0 without a store): records appended after this belong to
    /// the operation that took it.
    pub(super) fn store_mark(&self) -> u64 {
        self.store.as_ref().map_or(0, |s| s.wal.next_lsn())
    }

    /// The position a reply on `conn` must wait for: the log's end when the
    /// operation appended records since `mark` (or `always`), else the connection's
    /// last held reply, so its replies keep their order. `None`: send now.
    fn gate(&self, conn: ConnId, mark: u64, always: bool) -> Option<u64> {
        let s = self.store.as_ref()?;
        let end = s.wal.next_lsn();
        let generation = self.conns.get(conn)?.generation;
        let need = if always || end > mark { end } else { 0 };
        // Behind a reply of its connection still held (the queue is released in
        // order), whatever that one waits for.
        let behind = s
            .last_held
            .get(&conn)
            .is_some_and(|(g, _)| *g == generation);
        (need > s.durable || behind).then_some(need)
    }

    fn hold(&mut self, conn: ConnId, lsn: u64, reply: Reply) {
        self.hold_remote(conn, lsn, RemoteNeeds::new(), reply);
    }

    fn hold_remote(&mut self, conn: ConnId, lsn: u64, remote: RemoteNeeds, reply: Reply) {
        let Some(generation) = self.conns.get(conn).map(|c| c.generation) else {
            return;
        };
        let Some(s) = self.store.as_mut() else {
            return;
        };
        s.held_n += 1;
        let n = s.held_n;
        s.last_held.insert(conn, (generation, n));
        s.held.push_back(Held {
            lsn,
            remote,
            n,
            conn,
            generation,
            reply,
        });
    }

    /// PUBACK (QoS 1) or PUBREC (QoS 2) with reason Success, once the records of
    /// the publish (appended since `mark`) are durable.
    pub(super) fn ack_publish(&mut self, conn: ConnId, packet_id: u16, qos2: bool, mark: u64) {
        if self.hold_publish(conn, packet_id, qos2, mark, false) {
            return;
        }
        if qos2 {
            self.write_control(conn, &Packet::PubRec(PubResp::new(packet_id)));
        } else {
            self.write_puback(conn, packet_id);
        }
    }

    /// Holds a publish's PUBACK/PUBREC when its records (since `mark`) or copies on
    /// other loops are not yet durable, or a reply of its connection is held;
    /// `cluster`: it waits for JetStream too. Returns whether it was held.
    pub(super) fn hold_publish(
        &mut self,
        conn: ConnId,
        packet_id: u16,
        qos2: bool,
        mark: u64,
        cluster: bool,
    ) -> bool {
        // No data directory: nothing is ever held here (a cluster's JetStream wait is
        // `cluster.rs`'s). Out before the empty `needs` is made and dropped: this
        // runs for every QoS 1/2 publish.
        let Some(s) = self.store.as_deref_mut() else {
            return false;
        };
        let remote = std::mem::take(&mut s.remote.needs);
        let gate = self.gate(conn, mark, false);
        if gate.is_none() && remote.is_empty() {
            return false;
        }
        let reply = Reply::PubResp {
            packet_id,
            qos2,
            cluster,
        };
        self.hold_remote(conn, gate.unwrap_or(0), remote, reply);
        true
    }

    /// PUBREL once the copy's `Released` record (appended since `mark`) is durable.
    pub(super) fn send_pubrel(&mut self, conn: ConnId, packet_id: u16, mark: u64) {
        if let Some(lsn) = self.gate(conn, mark, false) {
            self.hold(conn, lsn, Reply::PubRel { packet_id });
        } else {
            self.write_control(conn, &Packet::PubRel(PubResp::new(packet_id)));
        }
    }

    /// Whether a SUBACK (and its retained messages) must wait; takes it if so.
    pub(super) fn hold_subscribe(
        &mut self,
        conn: ConnId,
        session: u32,
        ack: SubAck,
        retained: RetainedAsked,
        sub_id: u32,
    ) -> Option<(SubAck, RetainedAsked)> {
        let persistent = self.is_persistent(session);
        match self.gate(conn, u64::MAX, persistent) {
            Some(lsn) => {
                self.hold(
                    conn,
                    lsn,
                    Reply::SubAck(Box::new(HeldSubAck {
                        session,
                        ack,
                        retained,
                        sub_id,
                    })),
                );
                None
            }
            None => Some((ack, retained)),
        }
    }

    /// A CONNECT that would resume `client_id`'s session while records are not yet
    /// durable waits (as one waiting for a password check does) until they are.
    pub(super) fn hold_connect(
        &mut self,
        conn: ConnId,
        connect: Box<Connect>,
    ) -> Option<Box<Connect>> {
        let Some(s) = self.store.as_ref() else {
            return Some(connect);
        };
        if connect.client_id.is_empty() || self.sessions.find(&connect.client_id).is_none() {
            return Some(connect);
        }
        let Some(lsn) = self.gate(conn, 0, true).filter(|l| *l > s.durable) else {
            return Some(connect);
        };
        if let Some(c) = self.conns.get_mut(conn) {
            c.state = ConnState::Verifying;
        }
        self.hold(conn, lsn, Reply::Connect(connect));
        None
    }

    pub(super) fn is_persistent(&self, session: u32) -> bool {
        self.store.is_some() && self.sessions.get(session).is_some_and(|s| s.expiry_s > 0)
    }

    fn client_of(&self, session: u32) -> Option<Bytes> {
        let s = self.sessions.get(session)?;
        (s.expiry_s > 0).then(|| Bytes::copy_from_slice(&s.client_id))
    }

    /// The session (expiry, will) as it is now, when persistent.
    pub(super) fn log_session(&mut self, session: u32) {
        if self.store.is_none() {
            return;
        }
        let Some(s) = self.sessions.get(session).filter(|s| s.expiry_s > 0) else {
            return;
        };
        let will = s.will.as_ref().map(|w| WillRec {
            topic: w.topic.clone(),
            payload: w.payload.clone(),
            qos: w.qos as u8,
            retain: w.retain,
            delay_s: w.delay_s,
            props: props_bytes(&w.properties),
        });
        let rec = Record::SessionPut {
            client: Bytes::copy_from_slice(&s.client_id),
            expiry_s: s.expiry_s,
            will,
        };
        self.log(&rec);
    }

    /// A session that was persistent ends (or stops being persistent).
    pub(super) fn log_session_del(&mut self, client_id: &[u8]) {
        if self.store.is_some() {
            self.log(&Record::SessionDel {
                client: Bytes::copy_from_slice(client_id),
            });
        }
    }

    pub(super) fn log_sub(
        &mut self,
        session: u32,
        filter: &[u8],
        add: Option<(&SubscriptionOptions, u32)>,
    ) {
        let Some(client) = self.store.as_ref().and(self.client_of(session)) else {
            return;
        };
        let filter = Bytes::copy_from_slice(filter);
        let rec = match add {
            Some((o, sub_id)) => Record::SubAdd {
                client,
                filter,
                options: pack_options(o),
                sub_id,
            },
            None => Record::SubDel { client, filter },
        };
        self.log(&rec);
    }

    /// A QoS 1/2 copy for `session` entered its queue or its window: the body (once
    /// per fan-out) and the copy; `sent`: it went out with that packet id. Returns
    /// the copy's store id (0: not recorded).
    pub(super) fn log_copy(&mut self, session: u32, out: &Outgoing, sent: Option<u16>) -> u64 {
        if out.qos == QoS::AtMostOnce {
            return 0;
        }
        let Some(client) = self.store.as_ref().and(self.client_of(session)) else {
            return 0;
        };
        let key = Arc::as_ptr(&out.msg) as usize;
        let Some(s) = self.store.as_mut() else {
            return 0;
        };
        let id = match s.put {
            Some((k, id)) if k == key => id,
            _ => {
                let id = s.next_msg_id;
                s.next_msg_id += 1;
                s.put = Some((key, id));
                let m = &out.msg;
                let msg = MsgRec {
                    topic: m.topic.clone(),
                    payload: m.payload.clone(),
                    qos: m.qos as u8,
                    retain: m.retain,
                    props: props_bytes(&m.properties),
                    arrived_unix_ms: s.unix_ms(m.arrived_at),
                };
                self.log(&Record::MsgPut { id, msg });
                id
            }
        };
        self.log(&Record::Enqueue {
            client: client.clone(),
            msg: id,
            qos: out.qos as u8,
            retain: out.retain,
            sub_ids: out.sub_ids.to_vec(),
        });
        if let Some(packet_id) = sent {
            self.log(&Record::Sent {
                client,
                msg: id,
                packet_id,
            });
            if out.qos == QoS::ExactlyOnce {
                self.gate_tx(session);
            }
        }
        id
    }

    /// A fan-out is over: the next message gets a body of its own.
    pub(super) fn store_fanout_done(&mut self) {
        if let Some(s) = self.store.as_mut() {
            s.put = None;
        }
    }

    /// A copy's change: sent with `packet_id`, released (PUBREC came), or gone.
    pub(super) fn log_copy_state(&mut self, session: u32, store_id: u64, change: CopyChange) {
        if store_id == 0 {
            return;
        }
        let Some(client) = self.store.as_ref().and(self.client_of(session)) else {
            return;
        };
        if let CopyChange::Sent(_, true) = change {
            self.gate_tx(session);
        }
        let rec = match change {
            CopyChange::Sent(packet_id, _) => Record::Sent {
                client,
                msg: store_id,
                packet_id,
            },
            CopyChange::Released => Record::Released {
                client,
                msg: store_id,
            },
            CopyChange::Gone => Record::Ack {
                client,
                msg: store_id,
            },
        };
        self.log(&rec);
    }

    /// Inbound QoS 2: a PUBREC went (`true`) or the PUBREL came (`false`).
    pub(super) fn log_inbound_qos2(&mut self, session: u32, packet_id: u16, open: bool) {
        let Some(client) = self.store.as_ref().and(self.client_of(session)) else {
            return;
        };
        let rec = if open {
            Record::InboundQos2 { client, packet_id }
        } else {
            Record::InboundDone { client, packet_id }
        };
        self.log(&rec);
    }

    /// A retained set (or clear: empty payload) applied to this replica.
    pub(super) fn log_retained(&mut self, body: &RetainedBody) {
        let Some(s) = self.store.as_ref() else {
            return;
        };
        // The broker's own status (`$SYS/...`) is made anew after a restart.
        if body.topic().starts_with(b"$SYS/") {
            return;
        }
        let topic = Bytes::copy_from_slice(body.topic());
        let rec = if body.payload().is_empty() {
            Record::RetainClear { topic }
        } else {
            let m = body.to_message();
            Record::RetainSet {
                msg: MsgRec {
                    topic,
                    payload: m.payload,
                    qos: m.qos as u8,
                    retain: true,
                    props: props_bytes(&m.properties),
                    arrived_unix_ms: s.unix_ms(m.arrived_at),
                },
            }
        };
        self.log(&rec);
    }
}

/// What happened to a recorded copy.
#[derive(Debug, Clone, Copy)]
pub(crate) enum CopyChange {
    /// Went out with this packet id; `true`: QoS 2 (its output waits for the record).
    Sent(u16, bool),
    Released,
    Gone,
}
