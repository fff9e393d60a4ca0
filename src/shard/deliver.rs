//! Outbound delivery: encoding PUBLISH copies into connection buffers (once per
//! variant per fan-out), the QoS 1/2 inflight window, session queues and resends.
//! A payload of at least `tx::SHARE_MIN_BYTES` is not copied per subscriber: each
//! copy is its own header followed by one shared payload segment (`tx::TxBuf`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use smallvec::SmallVec;

use super::conn::{Conn, ConnState, MAX_OUTBOUND_ALIASES};
use super::durable::CopyChange;
use super::{Action, ConnId, Shard, ShardStats};
use crate::config::SlowConsumerPolicy;
use crate::protocol::{
    encode_packet, encoded_len, remaining_length_len, Packet, ProtocolVersion, PubResp, Publish,
    PublishProperties, QoS,
};
use crate::session::{Inflight, Message, Outgoing, Phase, SessionError, NONE};
use crate::tx::PayloadGauge;

/// One encoded PUBLISH variant of the message currently being fanned out.
#[derive(Debug, Clone, Copy)]
struct Variant {
    v5: bool,
    qos: QoS,
    retain: bool,
    start: usize,
    len: usize,
    /// Bytes of one copy on the wire: `len`, plus the payload when it is shared.
    total: usize,
    /// Offset of the packet identifier inside the encoding (QoS > 0), patched per copy.
    packet_id_at: usize,
    /// The encoding is the header only; the payload follows as a shared segment.
    shared: bool,
}

/// Encodings of the message being fanned out, shared by every subscriber that gets
/// the same variant (version family, QoS, retain; no per-copy properties).
/// Valid for one message only: cleared before each fan-out.
#[derive(Debug, Default)]
pub(crate) struct EncodeCache {
    buf: BytesMut,
    variants: SmallVec<[Variant; 4]>,
}

impl EncodeCache {
    pub fn clear(&mut self) {
        self.buf.clear();
        self.variants.clear();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    Yes,
    /// Over `max_outbound_bytes`.
    NoRoom,
    /// Over the client's Maximum Packet Size: never sendable to this client.
    TooLarge,
}

/// Length of the fixed header at the start of an encoded packet.
fn fixed_header_len(encoded: &[u8]) -> usize {
    let mut i = 1;
    while i < 5 && encoded.get(i).is_some_and(|b| b & 0x80 != 0) {
        i += 1;
    }
    i + 1
}

/// Whether `msg`'s payload travels as a shared segment rather than copied.
#[inline]
fn shares_payload(msg: &Message) -> bool {
    crate::tx::shares(msg.payload.len())
}

fn put_remaining_length(out: &mut BytesMut, mut value: usize) {
    loop {
        let b = (value & 0x7F) as u8;
        value >>= 7;
        if value == 0 {
            out.put_u8(b);
            break;
        }
        out.put_u8(b | 0x80);
    }
}

/// Encodes `p` (a PUBLISH) without its payload into `out`: the same bytes
/// `encode_packet` writes up to the payload, the remaining length counting the
/// payload that follows as a segment of its own. Returns the header's length.
fn encode_publish_header(p: &mut Packet, version: ProtocolVersion, out: &mut BytesMut) -> usize {
    let Packet::Publish(publish) = p else {
        return 0;
    };
    let payload = std::mem::take(&mut publish.payload);
    let mut scratch = BytesMut::with_capacity(encoded_len(p, version));
    encode_packet(p, version, &mut scratch);
    if let Packet::Publish(publish) = p {
        publish.payload = payload.clone();
    }
    let fh = fixed_header_len(&scratch);
    let body = scratch.get(fh..).unwrap_or(&[]);
    let start = out.len();
    out.reserve(5 + body.len());
    out.put_u8(scratch.first().copied().unwrap_or(0x30));
    put_remaining_length(out, body.len() + payload.len());
    out.put_slice(body);
    out.len() - start
}

#[allow(clippy::too_many_arguments)]
fn publish_packet(
    msg: &Message,
    v5: bool,
    qos: QoS,
    retain: bool,
    sub_ids: &[u32],
    packet_id: u16,
    dup: bool,
    topic: Bytes,
    alias: Option<u16>,
    now: Instant,
) -> Packet {
    let properties = if v5 {
        let mut p = msg.properties.clone();
        p.message_expiry_interval_s = msg.remaining_expiry_s(now).ok().flatten();
        p.topic_alias = alias;
        if !sub_ids.is_empty() {
            p.rare.to_mut().subscription_identifiers = SmallVec::from_slice(sub_ids);
        } else if let Some(r) = p.rare.get_mut() {
            r.subscription_identifiers.clear();
        }
        p
    } else {
        PublishProperties::default()
    };
    Packet::Publish(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id: if qos == QoS::AtMostOnce { 0 } else { packet_id },
        properties,
        payload: msg.payload.clone(),
    })
}

/// Appends a 3.1/3.1.1 PUBLISH of `msg` (DUP 0, packet identifier 1 as the
/// placeholder the cache patches per copy), byte for byte what `encode_packet` writes
/// for `publish_packet(msg, false, qos, retain, &[], 1, false, msg.topic, None, _)`,
/// without building and dropping a `Packet` (two `Bytes` clones, properties) for
/// each fan-out. 3.x PUBLISH has no properties, so the layout is fixed.
/// `with_payload` false: the header only (remaining length still counting the
/// payload), for a payload sent as a shared segment.
fn encode_v3_publish(
    out: &mut BytesMut,
    msg: &Message,
    qos: QoS,
    retain: bool,
    with_payload: bool,
) {
    let id_len = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = 2 + msg.topic.len() + id_len + msg.payload.len();
    let own = if with_payload {
        remaining
    } else {
        remaining - msg.payload.len()
    };
    out.reserve(1 + remaining_length_len(remaining) + own);
    out.put_u8(0x30 | ((qos as u8) << 1) | u8::from(retain));
    put_remaining_length(out, remaining);
    // The codec bounds a decoded topic to 65,535 bytes.
    out.put_u16(msg.topic.len() as u16);
    out.put_slice(&msg.topic);
    if id_len != 0 {
        out.put_u16(1);
    }
    if with_payload {
        out.put_slice(&msg.payload);
    }
}

/// Encodes one PUBLISH copy into `c.tx`. `force` skips the buffer bound (resends,
/// which are already bounded by the inflight window). A payload of at least
/// `SHARE_MIN_BYTES` is appended as a reference to `msg.payload`, so callers pass a
/// message whose payload owns its bytes (`shared_arc`), never a receive buffer slice.
/// Returns, with the outcome, the bytes appended that `c.tx` owns (shared payload
/// segments left out): what `bytes_tx` counts, known here without reading
/// `own_len` before and after each copy.
/// Inlined into its callers with the cached path: per fan-out copy, a call with
/// eleven arguments cost more than the copy's cached bytes themselves.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) fn encode_publish(
    c: &mut Conn,
    cache: Option<&mut EncodeCache>,
    max_outbound: usize,
    force: bool,
    msg: &Message,
    qos: QoS,
    retain: bool,
    sub_ids: &[u32],
    packet_id: u16,
    dup: bool,
    now: Instant,
) -> (Written, usize) {
    let v5 = c.version.is_v5();
    let cacheable = !dup && sub_ids.is_empty() && (!v5 || c.client_alias_max == 0);
    match cache {
        Some(cache) if cacheable => encode_cached(
            c,
            cache,
            max_outbound,
            force,
            msg,
            qos,
            retain,
            packet_id,
            now,
        ),
        _ => encode_one(
            c,
            max_outbound,
            force,
            msg,
            qos,
            retain,
            sub_ids,
            packet_id,
            dup,
            now,
        ),
    }
}

/// A copy from the fan-out's cached encoding of its variant (made at the variant's
/// first copy), its packet identifier patched in.
#[allow(clippy::too_many_arguments)]
#[inline]
fn encode_cached(
    c: &mut Conn,
    cache: &mut EncodeCache,
    max_outbound: usize,
    force: bool,
    msg: &Message,
    qos: QoS,
    retain: bool,
    packet_id: u16,
    now: Instant,
) -> (Written, usize) {
    let v5 = c.version.is_v5();
    let found = cache
        .variants
        .iter()
        .position(|v| v.v5 == v5 && v.qos == qos && v.retain == retain);
    let i = match found {
        Some(i) => i,
        None => add_variant(cache, c.version, msg, qos, retain, now),
    };
    let v = cache.variants[i];
    if v.total > c.client_max_packet as usize {
        return (Written::TooLarge, 0);
    }
    if !force && c.tx.len() + v.total > max_outbound {
        return (Written::NoRoom, 0);
    }
    reserve_tx(c, v.len);
    let tail = c.tx.tail_mut();
    let at = tail.len();
    tail.extend_from_slice(&cache.buf[v.start..v.start + v.len]);
    if qos != QoS::AtMostOnce {
        if let Some(dst) = tail.get_mut(at + v.packet_id_at..at + v.packet_id_at + 2) {
            dst.copy_from_slice(&packet_id.to_be_bytes());
        }
    }
    if v.shared {
        c.tx.push_shared(msg.payload.clone());
    }
    (Written::Yes, v.len)
}

/// Encodes the variant (`version` family, `qos`, `retain`) of the message being
/// fanned out into the cache; returns its index. Once per variant per fan-out.
#[inline]
fn add_variant(
    cache: &mut EncodeCache,
    version: ProtocolVersion,
    msg: &Message,
    qos: QoS,
    retain: bool,
    now: Instant,
) -> usize {
    let v5 = version.is_v5();
    let start = cache.buf.len();
    let shared = shares_payload(msg);
    if v5 {
        let mut p = publish_packet(
            msg,
            v5,
            qos,
            retain,
            &[],
            1,
            false,
            msg.topic.clone(),
            None,
            now,
        );
        if shared {
            encode_publish_header(&mut p, version, &mut cache.buf);
        } else {
            encode_packet(&p, version, &mut cache.buf);
        }
    } else {
        encode_v3_publish(&mut cache.buf, msg, qos, retain, !shared);
    }
    let len = cache.buf.len() - start;
    let packet_id_at = fixed_header_len(&cache.buf[start..]) + 2 + msg.topic.len();
    cache.variants.push(Variant {
        v5,
        qos,
        retain,
        start,
        len,
        total: if shared { len + msg.payload.len() } else { len },
        packet_id_at,
        shared,
    });
    cache.variants.len() - 1
}

/// One copy encoded for this connection alone: per-copy properties (subscription
/// identifiers, topic alias), DUP resends, and deliveries outside a fan-out.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
fn encode_one(
    c: &mut Conn,
    max_outbound: usize,
    force: bool,
    msg: &Message,
    qos: QoS,
    retain: bool,
    sub_ids: &[u32],
    packet_id: u16,
    dup: bool,
    now: Instant,
) -> (Written, usize) {
    let v5 = c.version.is_v5();
    // Server → client topic aliases: topics get aliases in first-seen order until the
    // client's Topic Alias Maximum (capped at MAX_OUTBOUND_ALIASES) is used up; later
    // topics are always sent in full. An alias, once set, is never remapped.
    let mut topic = msg.topic.clone();
    let mut alias = None;
    let mut new_alias = false;
    if v5 && c.client_alias_max > 0 {
        let max = usize::from(c.client_alias_max).min(MAX_OUTBOUND_ALIASES);
        let a = c.aliases();
        if let Some(i) = a.outbound.iter().position(|t| *t == msg.topic) {
            topic = Bytes::new();
            alias = Some(i as u16 + 1);
        } else if a.outbound.len() < max {
            alias = Some(a.outbound.len() as u16 + 1);
            new_alias = true;
        }
    }
    let mut p = publish_packet(
        msg, v5, qos, retain, sub_ids, packet_id, dup, topic, alias, now,
    );
    let len = encoded_len(&p, c.version);
    if len > c.client_max_packet as usize {
        return (Written::TooLarge, 0);
    }
    if !force && c.tx.len() + len > max_outbound {
        return (Written::NoRoom, 0);
    }
    let own = if shares_payload(msg) {
        reserve_tx(c, len - msg.payload.len());
        let own = encode_publish_header(&mut p, c.version, c.tx.tail_mut());
        c.tx.push_shared(msg.payload.clone());
        own
    } else {
        reserve_tx(c, len);
        let tail = c.tx.tail_mut();
        let at = tail.len();
        encode_packet(&p, c.version, tail);
        tail.len() - at
    };
    if new_alias {
        c.aliases()
            .outbound
            .push(Bytes::copy_from_slice(&msg.topic));
    }
    (Written::Yes, own)
}

/// `take_tx` leaves `c.tx` without a buffer (an idle connection parks nothing), so
/// the first packet after a flush allocates one: directly, which costs far less
/// than `BytesMut`'s general growth path. Exactly `len`: a buffer frozen full
/// becomes a `Bytes` without a second allocation for its shared header.
#[inline]
fn reserve_tx(c: &mut Conn, len: usize) {
    c.tx.reserve_first(len);
}

/// A copy of `msg` that owns its bytes, a large payload as one counted shared
/// payload (`PayloadGauge`): what queues, inflight windows, other loops and
/// outbound segments all reference.
pub(crate) fn compact(msg: &Message, gauge: &PayloadGauge) -> Message {
    if !shares_payload(msg) {
        return msg.compacted();
    }
    let bare = Message {
        payload: Bytes::new(),
        ..msg.clone()
    };
    let mut m = bare.compacted();
    m.payload = gauge.share(&msg.payload);
    m
}

/// The shared form of `msg` for a session queue, where it may wait for hours: a
/// copy that owns its bytes. A slice of the receive buffer would keep the whole
/// buffer alive (a small PUBLISH read behind a large one pinned the large one's
/// buffer, 33× its own size), and `cost_bytes` would not see it. Copied once per
/// fan-out; the following copies of this fan-out share it. Charging the whole
/// buffer instead is not possible: a `Bytes` does not tell its buffer's size.
pub(crate) fn queued_arc(
    msg: &Message,
    arc: &mut Option<Arc<Message>>,
    gauge: &PayloadGauge,
) -> Arc<Message> {
    match arc {
        Some(a) if a.owned => a.clone(),
        _ => {
            let a = Arc::new(compact(msg, gauge));
            *arc = Some(a.clone());
            a
        }
    }
}

/// The form fan-out copies of `msg` are encoded from: `msg` itself, or, for a
/// payload that travels as a shared segment, its owned copy in `arc` (one per node,
/// made at the first need), never a slice of the receive buffer. Taken once per
/// message by the caller of `deliver`, not once per subscriber.
#[inline]
pub(crate) fn outbound_form(
    msg: &Message,
    arc: &mut Option<Arc<Message>>,
    gauge: &PayloadGauge,
) -> Option<Arc<Message>> {
    shares_payload(msg).then(|| queued_arc(msg, arc, gauge))
}

#[inline]
fn mark_flush(actions: &mut VecDeque<Action>, conn: ConnId, c: &mut Conn) {
    if !c.flush_queued() && !c.tx.is_empty() {
        c.set_flush_queued(true);
        actions.push_back(Action::Flush(conn));
    }
}

/// The first live copy written since the last take is the oldest in the output
/// (copies are written in the order they are routed): its read time stays.
#[inline]
fn stamp(c: &mut Conn, fanout_stamp: u32) {
    if c.tx_read_at == 0 {
        c.tx_read_at = fanout_stamp;
    }
}

fn window(c: &Conn) -> usize {
    usize::from(c.client_receive_max).max(1)
}

fn count(stats: &mut ShardStats, w: Written) {
    match w {
        Written::Yes => stats.messages_out += 1,
        Written::NoRoom => stats.dropped_outbound_full += 1,
        Written::TooLarge => stats.dropped_too_large += 1,
    }
}

impl Shard {
    /// Delivers one copy of `msg` to `session`: written now when possible, else
    /// queued (QoS 1/2, or QoS 0 for offline sessions when configured) or dropped
    /// (counted). `arc` is the shared form of `msg`, created on first need. `msg` is
    /// the fan-out's [`outbound_form`] (taken once per message, not per copy).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn deliver(
        &mut self,
        session: u32,
        msg: &Message,
        arc: &mut Option<Arc<Message>>,
        qos: QoS,
        retain: bool,
        sub_ids: &[u32],
        now: Instant,
        use_cache: bool,
    ) {
        let Shard {
            sessions,
            conns,
            cache,
            config,
            stats,
            actions,
            payloads,
            auth,
            fanout_stamp,
            ..
        } = self;
        let Some(sess) = sessions.get_mut(session) else {
            return;
        };
        if msg.is_expired(now) {
            stats.dropped_expired += 1;
            return;
        }
        debug_assert!(
            !shares_payload(msg) || msg.owned,
            "a shared payload is encoded from its outbound form"
        );
        let conn_id = sess.conn as usize;
        let conn = if sess.conn == NONE {
            None
        } else {
            conns.get_mut(conn_id)
        };
        // ACL (read) at delivery, so a wildcard subscription cannot leak a topic the
        // client may not read. Offline sessions are checked when the queue is
        // written to their next connection (`pump`). Without rules on this shard
        // the per-copy load of the subscriber's ACL is skipped.
        if let Some(c) = conn.as_ref().filter(|_| auth.acl_active) {
            if !c.acl.can_read(&msg.topic) {
                stats.acl_denied_delivery += 1;
                return;
            }
        }
        let cache = if use_cache { Some(cache) } else { None };
        // Over the memory mark QoS 0 is shed first; QoS 1/2 stay within their
        // per-session bounds.
        let mark = config.memory_high_water_bytes;
        if qos == QoS::AtMostOnce && mark > 0 && stats.memory_bytes() > mark {
            stats.dropped_memory_qos0 += 1;
            return;
        }
        let Some(c) = conn.filter(|c| c.state == ConnState::Connected) else {
            if qos == QoS::AtMostOnce && !config.queue_qos0_offline {
                stats.dropped_offline_qos0 += 1;
                return;
            }
            let out = Outgoing {
                msg: queued_arc(msg, arc, payloads),
                qos,
                retain,
                sub_ids: SmallVec::from_slice(sub_ids),
                store_id: 0,
            };
            self.enqueue(session, out, false);
            return;
        };
        if qos == QoS::AtMostOnce {
            let (w, own) = encode_publish(
                c,
                cache,
                config.max_outbound_bytes,
                false,
                msg,
                qos,
                retain,
                sub_ids,
                0,
                false,
                now,
            );
            stats.bytes_tx += own;
            count(stats, w);
            stamp(c, *fanout_stamp);
            mark_flush(actions, conn_id, c);
            return;
        }
        let win = window(c);
        let d = sess.delivery();
        if d.queue.is_empty() && d.inflight.len() < win {
            let prev_id = d.last_packet_id;
            if let Some(pid) = d.alloc_packet_id() {
                let (w, own) = encode_publish(
                    c,
                    cache,
                    config.max_outbound_bytes,
                    false,
                    msg,
                    qos,
                    retain,
                    sub_ids,
                    pid,
                    false,
                    now,
                );
                stats.bytes_tx += own;
                match w {
                    Written::Yes => {
                        stats.messages_out += 1;
                        stamp(c, *fanout_stamp);
                        mark_flush(actions, conn_id, c);
                        let out = Outgoing {
                            msg: arc.get_or_insert_with(|| Arc::new(msg.clone())).clone(),
                            qos,
                            retain,
                            sub_ids: SmallVec::from_slice(sub_ids),
                            store_id: 0,
                        };
                        let phase = if qos == QoS::AtLeastOnce {
                            Phase::AwaitAck
                        } else {
                            Phase::AwaitRec
                        };
                        d.push_inflight(Inflight {
                            packet_id: pid,
                            phase,
                            out,
                        });
                        if self.store.is_some() {
                            self.record_inflight_copy(session, pid);
                        }
                        return;
                    }
                    // Spec 3.1.2-25: treated as delivered, nothing to acknowledge.
                    Written::TooLarge => {
                        stats.dropped_too_large += 1;
                        return;
                    }
                    // Not sent: the id is not used up.
                    Written::NoRoom => d.last_packet_id = prev_id,
                }
            }
        }
        let out = Outgoing {
            msg: queued_arc(msg, arc, &self.payloads),
            qos,
            retain,
            sub_ids: SmallVec::from_slice(sub_ids),
            store_id: 0,
        };
        self.enqueue(session, out, true);
    }

    /// Appends to the session queue within its bounds; beyond them the new copy is
    /// dropped (counted), and under `SlowConsumerPolicy::Disconnect` an online
    /// subscriber is disconnected (after the current fan-out).
    fn enqueue(&mut self, session: u32, out: Outgoing, online: bool) {
        let Some(sess) = self.sessions.get_mut(session) else {
            return;
        };
        let cost = out.msg.cost_bytes();
        let conn = sess.conn;
        let d = sess.delivery();
        if d.queue.len() >= self.config.max_queued_messages
            || d.queued_bytes + cost > self.config.max_queued_bytes
        {
            self.stats.dropped_queue_full += 1;
            if online
                && self.config.slow_consumer_policy == SlowConsumerPolicy::Disconnect
                && conn != NONE
            {
                self.slow.push((conn as usize, SessionError::QuotaExceeded));
            }
            return;
        }
        d.queued_bytes += cost;
        self.stats.bytes_queued += cost;
        if self.store.is_none() {
            d.queue.push_back(out);
            return;
        }
        let mut out = out;
        out.store_id = self.log_copy(session, &out, None);
        if let Some(d) = self.sessions.get_mut(session).map(|s| s.delivery()) {
            d.queue.push_back(out);
        }
    }

    /// The copy just put in `session`'s window with `packet_id` went out directly:
    /// recorded (body, copy, sent) when the session is persistent.
    fn record_inflight_copy(&mut self, session: u32, packet_id: u16) {
        let Some(out) = self
            .sessions
            .get(session)
            .and_then(|s| s.delivery.as_deref())
            .and_then(|d| d.inflight.back())
            .map(|f| f.out.clone())
        else {
            return;
        };
        let id = self.log_copy(session, &out, Some(packet_id));
        if let Some(f) = self
            .sessions
            .get_mut(session)
            .and_then(|s| s.delivery.as_deref_mut())
            .and_then(|d| d.inflight.back_mut())
        {
            f.out.store_id = id;
        }
    }

    /// Disconnects the slow consumers found during a fan-out (0x97).
    pub(crate) fn drop_slow_consumers(&mut self, now: Instant) {
        while let Some((conn, err)) = self.slow.pop() {
            self.fail(conn, err, now);
        }
    }

    /// Moves queued messages into the connection while the window and the buffer
    /// allow. Expired messages are dropped on the way (counted). Called after every
    /// ack and every flush, where mostly nothing waits: that test is inlined into
    /// the caller, the queue walk (`pump_queue`) is not.
    #[inline]
    pub(crate) fn pump(&mut self, session: u32, now: Instant) {
        self.stream_room();
        let waits = self.sessions.get(session).is_some_and(|s| {
            s.conn != NONE && matches!(s.delivery.as_deref(), Some(d) if !d.queue.is_empty())
        });
        if waits {
            self.pump_queue(session, now);
        }
    }

    #[inline(never)]
    fn pump_queue(&mut self, session: u32, now: Instant) {
        let Shard {
            sessions,
            conns,
            config,
            stats,
            actions,
            auth,
            ..
        } = self;
        let acl_active = auth.acl_active;
        let Some(sess) = sessions.get_mut(session) else {
            return;
        };
        // Called after every ack and every flush; mostly nothing waits.
        if sess.conn == NONE || !matches!(sess.delivery.as_deref(), Some(d) if !d.queue.is_empty())
        {
            return;
        }
        let conn_id = sess.conn as usize;
        let Some(c) = conns
            .get_mut(conn_id)
            .filter(|c| c.state == ConnState::Connected)
        else {
            return;
        };
        let win = window(c);
        let Some(d) = sess.delivery.as_mut() else {
            return;
        };
        // Recorded copies that went out or were dropped (persistent sessions only;
        // empty, so without allocation, otherwise).
        let mut changes: SmallVec<[(u64, CopyChange); 2]> = SmallVec::new();
        // Each turn pops one message or stops.
        while let Some(front) = d.queue.front() {
            let cost = front.msg.cost_bytes();
            if front.msg.is_expired(now) {
                if front.store_id != 0 {
                    changes.push((front.store_id, CopyChange::Gone));
                }
                d.queue.pop_front();
                d.queued_bytes -= cost;
                stats.bytes_queued -= cost;
                stats.dropped_expired += 1;
                continue;
            }
            if acl_active && !c.acl.can_read_queued(&front.msg.topic) {
                if front.store_id != 0 {
                    changes.push((front.store_id, CopyChange::Gone));
                }
                d.queue.pop_front();
                d.queued_bytes -= cost;
                stats.bytes_queued -= cost;
                stats.acl_denied_delivery += 1;
                continue;
            }
            let qos = front.qos;
            let mut pid = 0;
            let prev_id = d.last_packet_id;
            if qos != QoS::AtMostOnce {
                if d.inflight.len() >= win {
                    break;
                }
                match d.alloc_packet_id() {
                    Some(p) => pid = p,
                    None => break,
                }
            }
            let Some(front) = d.queue.front() else { break };
            let (w, own) = encode_publish(
                c,
                None,
                config.max_outbound_bytes,
                false,
                &front.msg,
                qos,
                front.retain,
                &front.sub_ids,
                pid,
                false,
                now,
            );
            stats.bytes_tx += own;
            if w == Written::NoRoom {
                d.last_packet_id = prev_id;
                break;
            }
            count(stats, w);
            let Some(out) = d.queue.pop_front() else {
                break;
            };
            d.queued_bytes -= cost;
            stats.bytes_queued -= cost;
            if out.store_id != 0 {
                let change = if w == Written::Yes && qos != QoS::AtMostOnce {
                    CopyChange::Sent(pid, qos == QoS::ExactlyOnce)
                } else {
                    CopyChange::Gone
                };
                changes.push((out.store_id, change));
            }
            if w == Written::Yes && qos != QoS::AtMostOnce {
                let phase = if qos == QoS::AtLeastOnce {
                    Phase::AwaitAck
                } else {
                    Phase::AwaitRec
                };
                d.push_inflight(Inflight {
                    packet_id: pid,
                    phase,
                    out,
                });
            }
        }
        mark_flush(actions, conn_id, c);
        for (id, change) in changes {
            self.log_copy_state(session, id, change);
        }
    }

    /// On session resume: unacknowledged PUBLISHes again with DUP = 1, PUBREL for the
    /// ones already PUBREC'd, oldest first.
    pub(crate) fn resend_inflight(&mut self, session: u32, now: Instant) {
        let Shard {
            sessions,
            conns,
            config,
            stats,
            actions,
            ..
        } = self;
        let Some(sess) = sessions.get_mut(session) else {
            return;
        };
        let conn_id = sess.conn as usize;
        let Some(c) = conns.get_mut(conn_id) else {
            return;
        };
        let Some(d) = sess.delivery.as_mut() else {
            return;
        };
        let max_outbound = config.max_outbound_bytes;
        let before = c.tx.own_len();
        d.retain_inflight(|f| match f.phase {
            Phase::AwaitComp => {
                encode_packet(
                    &Packet::PubRel(PubResp::new(f.packet_id)),
                    c.version,
                    c.tx.tail_mut(),
                );
                true
            }
            _ => {
                let o = &f.out;
                // `bytes_tx` is counted around the whole resend (PUBRELs too).
                let (w, _) = encode_publish(
                    c,
                    None,
                    max_outbound,
                    true,
                    &o.msg,
                    o.qos,
                    o.retain,
                    &o.sub_ids,
                    f.packet_id,
                    true,
                    now,
                );
                count(stats, w);
                w == Written::Yes
            }
        });
        stats.bytes_tx += c.tx.own_len() - before;
        mark_flush(actions, conn_id, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProtocolVersion;

    /// The direct 3.x encoder writes exactly what the codec writes, across QoS,
    /// retain, and lengths on both sides of each remaining-length byte boundary.
    #[test]
    fn v3_publish_equals_codec() {
        let now = Instant::now();
        for topic_len in [1usize, 37, 300] {
            for payload_len in [0usize, 1, 60, 88, 89, 200, 16_300, 16_400, 70_000] {
                for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
                    for retain in [false, true] {
                        let msg = Message {
                            topic: Bytes::from(vec![b't'; topic_len]),
                            payload: Bytes::from(
                                (0..payload_len).map(|i| i as u8).collect::<Vec<u8>>(),
                            ),
                            qos,
                            retain,
                            properties: PublishProperties::default(),
                            arrived_at: now,
                            origin_shard: 0,
                            origin_session: 0,
                            owned: true,
                            cluster_key: 0,
                        };
                        let p = publish_packet(
                            &msg,
                            false,
                            qos,
                            retain,
                            &[],
                            1,
                            false,
                            msg.topic.clone(),
                            None,
                            now,
                        );
                        for version in [ProtocolVersion::V31, ProtocolVersion::V311] {
                            let mut want = BytesMut::from(&b"prefix"[..]);
                            encode_packet(&p, version, &mut want);
                            let mut got = BytesMut::from(&b"prefix"[..]);
                            encode_v3_publish(&mut got, &msg, qos, retain, true);
                            assert_eq!(
                                got, want,
                                "topic {topic_len} payload {payload_len} {qos:?} retain {retain}"
                            );
                        }
                    }
                }
            }
        }
    }
}
