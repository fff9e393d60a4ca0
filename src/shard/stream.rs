//! Streaming the retained messages a new subscription matches: one cursor per
//! (session, subscription), refilled as the connection's output drains and as
//! QoS 1/2 acknowledgements free the inflight window, in bounded slices per loop
//! turn. This file owns the cursors, their budgets and what they see of a retained
//! set that changes while they stream.
//!
//! # What a cursor sends
//! - The topics the replica held when the stream started (after the SUBACK, so
//!   after every shard applied the route add, see `retained.rs` "Order with acks"),
//!   each with its value at the time it is sent: the cursor holds no message, only
//!   a position.
//! - A topic stored (created or updated) after the start is skipped: the
//!   subscription existed by then, so the subscriber got that update live (with
//!   the data path's usual rules) and gets it once, not again as retained. The
//!   replica's store count ([`Shard::retained_seq`], kept in each entry) tells.
//! - A topic deleted (or expired) before the cursor reaches it is skipped; one
//!   deleted and stored again meanwhile counts as stored after the start.
//! - An update applied between the SUBSCRIBE and the start (while the SUBACK waits
//!   for other shards' route acks) was both delivered live, the subscription being
//!   in place, and is in the snapshot: it can arrive twice, once live and once
//!   retained, as before streaming.
//! - Updates from other shards' replicas land in the same store, so a cursor sees
//!   them exactly as local ones: whichever shard published, the rules above hold.
//! - Overlapping subscriptions each have their cursor and each gets its copies, as
//!   when all retained messages were sent at SUBSCRIBE time. Shared subscriptions
//!   get no retained messages and Retain Handling 1/2 decide whether a cursor
//!   starts at all (`inbound.rs`); a Retain Handling 0 re-SUBSCRIBE restarts it.
//! - Nothing is dropped for lack of room: a cursor that finds the connection's
//!   buffer or the inflight window full (or the session's queue holding live
//!   messages) waits and resumes on a later turn. Only a message that could never
//!   be sent (larger than the buffer bound or the client's maximum packet size)
//!   is skipped, counted as the live path counts it.
//! - Session takeover or reconnection with a kept session resumes the cursor where
//!   it stopped (the unacknowledged copies are resent as any inflight message); it
//!   waits while the session is offline. A session that ends (clean start, expiry)
//!   or an UNSUBSCRIBE drops the cursor.
//!
//! # Position and memory
//! A cursor walks the replica's index in topic order from the filter's literal
//! prefix (`retained_index.rs`), matching each topic against the filter, and keeps
//! only the topic where it stopped (one copy, whatever the number of topics): topic
//! order does not move when topics are stored or deleted, so the position stays
//! valid (a topic stored behind it after the start is skipped by the store count
//! anyway). Messages are taken from the index in batches of at most `BATCH`
//! pointers, each read when its batch is sent, so a value is the latest one.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::conn::ConnState;
use super::deliver::{encode_publish, Written};
use smallvec::SmallVec;

use super::retained::RetainedBody;
use super::retained_index::{From, WalkEnd};
use super::{Shard, SubIds};
use crate::protocol::{QoS, SubscriptionOptions};
use crate::session::{Inflight, Phase, NONE};

/// Messages taken from the index at a time (thin pointers on the stack): the index
/// is borrowed while it is walked, the shard's connections are written after.
const BATCH: usize = 64;
/// Messages one cursor writes per turn: one client's retained stream costs its
/// loop at most this much work between two looks at every other connection.
pub(crate) const SLICE_MESSAGES: usize = 128;
/// Store entries one cursor examines per turn (a narrow filter over a large store
/// matches few of them).
const SLICE_SCAN: usize = 8192;
/// Messages all cursors of a shard write per turn, first slices at SUBSCRIBE
/// included: what a turn of the loop's other clients waits for at most. At 2048
/// (and 512 per cursor) a 1M-message stream at load ~15 took the other clients'
/// broker-side PUBLISH -> kernel p99 from <= 8 ms to <= 33 ms (perf/README); a
/// turn of 256 64-byte copies is ~0.1-0.3 ms of work, and a send of ~25 KB still
/// amortizes the turn's fixed cost.
pub(crate) const TURN_MESSAGES: usize = 256;

#[derive(Debug)]
pub(crate) struct Cursor {
    session: u32,
    /// `Session::generation`: a session index reused by another client does not
    /// inherit the cursor.
    generation: u32,
    filter: Bytes,
    options: SubscriptionOptions,
    sub_id: u32,
    /// `Shard::retained_seq` at the start: entries stored later are skipped.
    snapshot: u64,
    /// The topic the walk resumes at or after (`from`); `None`: not started.
    pos: Vec<u8>,
    from: Option<From>,
    /// The walk's scratch copy of the last topic it examined.
    last: Vec<u8>,
    /// Every topic was handled; removed at the end of the turn.
    done: bool,
}

/// Why a slice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slice {
    /// Every topic was handled: the cursor is done.
    Done,
    /// Waiting for room (buffer, inflight window, queue) or for the session to
    /// come back online: an ack, a flush or a CONNECT moves it on.
    Blocked,
    /// The slice budget ran out with more to send: run again next turn.
    Budget,
}

/// What became of one message.
enum Step {
    Sent,
    /// Not sendable now; try again later.
    Blocked,
    /// The session is gone: the cursor ends.
    Gone,
}

/// A shard's cursors.
#[derive(Debug, Default)]
pub(crate) struct Streams {
    cursors: Vec<Cursor>,
    /// Where the next turn starts, so the turn budget rotates over the cursors.
    next: usize,
    /// Messages the first slices of this turn's SUBSCRIBEs wrote: they share the
    /// turn's budget, so a burst of SUBSCRIBEs in one read cannot write more.
    fresh_spent: usize,
    /// Some cursor may progress without an outside event (budget ran out, or room
    /// was freed since it blocked): the loop must not park.
    ready: bool,
}

impl Streams {
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.cursors.len()
    }
}

impl Shard {
    /// Starts streaming the retained messages matching `filter` (a plain, not a
    /// shared, subscription of `session`) and sends a first slice now, so a small
    /// set goes out right after the SUBACK as before. A cursor of the same
    /// subscription restarts.
    pub(crate) fn start_stream(
        &mut self,
        session: u32,
        filter: Bytes,
        options: SubscriptionOptions,
        sub_id: u32,
        now: Instant,
    ) {
        let Some(sess) = self.sessions.get(session) else {
            return;
        };
        // Unsubscribed while the SUBACK waited for route acks.
        if sess.sub_pos(&filter).is_none() {
            return;
        }
        let generation = sess.generation;
        self.drop_stream(session, &filter);
        let mut cursor = Cursor {
            session,
            generation,
            filter,
            options,
            sub_id,
            snapshot: self.retained_seq,
            pos: Vec::new(),
            from: None,
            last: Vec::new(),
            done: false,
        };
        let mut budget = SLICE_MESSAGES.min(TURN_MESSAGES.saturating_sub(self.streams.fresh_spent));
        if budget == 0 {
            // This turn's budget is spent: the next turn starts it.
            self.streams.ready = true;
            self.streams.cursors.push(cursor);
            return;
        }
        let before = budget;
        let slice = self.run_cursor(&mut cursor, &mut budget, now);
        self.streams.fresh_spent += before - budget;
        match slice {
            Slice::Done => {}
            Slice::Budget => {
                self.streams.ready = true;
                self.streams.cursors.push(cursor);
            }
            Slice::Blocked => self.streams.cursors.push(cursor),
        }
    }

    /// Drops `session`'s cursor for `filter` (UNSUBSCRIBE, session end, restart).
    pub(crate) fn drop_stream(&mut self, session: u32, filter: &[u8]) {
        if self.streams.cursors.is_empty() {
            return;
        }
        self.streams
            .cursors
            .retain(|c| !(c.session == session && c.filter == filter));
    }

    /// Room was freed for `session` (a flush or an ack): its cursors may move on.
    /// Cheap when nothing streams: called after every ack and flush.
    #[inline]
    pub(crate) fn stream_room(&mut self) {
        if !self.streams.cursors.is_empty() {
            self.streams.ready = true;
        }
    }

    /// Whether a cursor may progress on the next turn without an outside event: the
    /// loop must then not block.
    pub fn streams_pending(&self) -> bool {
        self.streams.ready
    }

    /// Runs the cursors for one loop turn: a slice each, starting where the last
    /// turn stopped, within the turn's budget. Call once per turn before the actions
    /// are taken, so the slices are flushed with the rest.
    pub fn run_streams(&mut self, now: Instant) {
        // What this turn's SUBSCRIBEs wrote counts; the next turn's start afresh.
        let fresh = std::mem::take(&mut self.streams.fresh_spent);
        if !self.streams.ready {
            return;
        }
        self.streams.ready = false;
        let mut cursors = std::mem::take(&mut self.streams.cursors);
        let n = cursors.len();
        let start = self.streams.next.min(n);
        let mut turn = TURN_MESSAGES.saturating_sub(fresh);
        for k in 0..n {
            let i = (start + k) % n;
            if turn == 0 {
                // Not reached this turn.
                self.streams.ready = true;
                self.streams.next = i;
                break;
            }
            let mut budget = SLICE_MESSAGES.min(turn);
            let spent_from = budget;
            match self.run_cursor(&mut cursors[i], &mut budget, now) {
                Slice::Done => cursors[i].done = true,
                Slice::Budget => self.streams.ready = true,
                Slice::Blocked => {}
            }
            turn -= spent_from - budget;
        }
        cursors.retain(|c| !c.done);
        // Cursors added meanwhile (none today: a slice starts no stream) stay too.
        cursors.append(&mut self.streams.cursors);
        if self.streams.next >= cursors.len() {
            self.streams.next = 0;
        }
        self.streams.cursors = cursors;
    }

    /// Sends from `c` until done, blocked, or `budget` messages (or `SLICE_SCAN`
    /// examined entries) are spent.
    fn run_cursor(&mut self, c: &mut Cursor, budget: &mut usize, now: Instant) -> Slice {
        match self.sessions.get(c.session) {
            Some(s) if s.generation == c.generation => {}
            _ => return Slice::Done,
        }
        let mut sub_ids = SubIds::new();
        if c.sub_id != 0 {
            sub_ids.push(c.sub_id);
        }
        let mut scanned = 0;
        loop {
            if *budget == 0 || scanned >= SLICE_SCAN {
                return Slice::Budget;
            }
            let want = (*budget).min(BATCH);
            let mut batch: SmallVec<[RetainedBody; BATCH]> = SmallVec::new();
            let mut full = false;
            let Cursor {
                filter,
                snapshot,
                pos,
                from,
                last,
                ..
            } = &mut *c;
            let (end, examined) = self.retained.walk(
                filter,
                from.map(|f| (pos.as_slice(), f)),
                SLICE_SCAN - scanned,
                last,
                |e| {
                    if e.seq > *snapshot {
                        return true;
                    }
                    if batch.len() == want {
                        full = true;
                        return false;
                    }
                    batch.push(e.body.clone());
                    true
                },
            );
            scanned += examined;
            for msg in &batch {
                if msg.is_expired(now) {
                    self.expire_retained(msg, now);
                    continue;
                }
                let qos = msg.qos().min(c.options.qos);
                match self.stream_copy(c.session, msg, qos, &sub_ids, now) {
                    Step::Sent => *budget -= 1,
                    Step::Blocked => {
                        c.pos.clear();
                        c.pos.extend_from_slice(msg.topic());
                        c.from = Some(From::At);
                        return Slice::Blocked;
                    }
                    Step::Gone => return Slice::Done,
                }
            }
            if end == WalkEnd::Done && !full {
                return Slice::Done;
            }
            // Stopped at a topic not taken (batch full) or after the last one
            // examined (scan budget).
            std::mem::swap(&mut c.pos, &mut c.last);
            c.from = Some(if full { From::At } else { From::After });
        }
    }

    /// Writes one retained copy (retain = 1) for `session` if it can go out now:
    /// connection online with room, and for QoS 1/2 a free inflight slot and no live
    /// message queued ahead. Never queues and never drops for lack of room.
    fn stream_copy(
        &mut self,
        session: u32,
        body: &RetainedBody,
        qos: QoS,
        sub_ids: &[u32],
        now: Instant,
    ) -> Step {
        let Shard {
            sessions,
            conns,
            config,
            stats,
            actions,
            ..
        } = self;
        let Some(sess) = sessions.get_mut(session) else {
            return Step::Gone;
        };
        if sess.conn == NONE {
            return Step::Blocked;
        }
        let conn_id = sess.conn as usize;
        let Some(c) = conns
            .get_mut(conn_id)
            .filter(|c| c.state == ConnState::Connected)
        else {
            return Step::Blocked;
        };
        // ACL (read): a retained copy is a delivery too, so a wildcard subscription
        // must not stream a topic the client may not read. Skipped and counted as
        // the live path counts it.
        if !c.acl.can_read_queued(body.topic()) {
            stats.acl_denied_delivery += 1;
            return Step::Sent;
        }
        // Over the memory mark the live path sheds QoS 0; a cursor holds nothing,
        // so it waits instead.
        let mark = config.memory_high_water_bytes;
        if mark > 0 && stats.memory_bytes() > mark {
            return Step::Blocked;
        }
        let max = config.max_outbound_bytes;
        let mut pid = 0;
        let mut prev_id = 0;
        if qos != QoS::AtMostOnce {
            let win = usize::from(c.client_receive_max).max(1);
            let d = sess.delivery();
            if !d.queue.is_empty() || d.inflight.len() >= win {
                return Step::Blocked;
            }
            prev_id = d.last_packet_id;
            match d.alloc_packet_id() {
                Some(p) => pid = p,
                None => return Step::Blocked,
            }
        }
        let empty = c.tx.is_empty();
        // A blocked cursor is retried after every flush and ack of the shard: say
        // no before building the copy when even its smallest encoding (topic and
        // payload plus a 2-byte header and topic length) cannot fit.
        if !empty && c.tx.len() + body.topic().len() + body.payload().len() + 4 > max {
            if qos != QoS::AtMostOnce {
                sess.delivery().last_packet_id = prev_id;
            }
            return Step::Blocked;
        }
        // Built per copy from the compact stored form: the topic (and a small
        // payload) copied, a large payload shared with the store.
        let msg = Arc::new(body.to_message());
        let (w, own) = encode_publish(
            c, None, max, false, &msg, qos, true, sub_ids, pid, false, now,
        );
        stats.bytes_tx += own;
        match w {
            Written::Yes => {
                stats.messages_out += 1;
                stats.retained_streamed += 1;
            }
            // Spec 3.1.2-25: treated as delivered.
            Written::TooLarge => {
                stats.dropped_too_large += 1;
                if qos != QoS::AtMostOnce {
                    sess.delivery().last_packet_id = prev_id;
                }
                return Step::Sent;
            }
            Written::NoRoom => {
                if qos != QoS::AtMostOnce {
                    sess.delivery().last_packet_id = prev_id;
                }
                if !empty {
                    return Step::Blocked;
                }
                // Larger than the whole buffer bound: it never fits.
                stats.dropped_outbound_full += 1;
                return Step::Sent;
            }
        }
        if !c.flush_queued() {
            c.set_flush_queued(true);
            actions.push_back(super::Action::Flush(conn_id));
        }
        if qos != QoS::AtMostOnce {
            let phase = if qos == QoS::AtLeastOnce {
                Phase::AwaitAck
            } else {
                Phase::AwaitRec
            };
            sess.delivery().push_inflight(Inflight {
                packet_id: pid,
                phase,
                out: crate::session::Outgoing {
                    msg,
                    qos,
                    retain: true,
                    sub_ids: SubIds::from_slice(sub_ids),
                    store_id: 0,
                },
            });
        }
        Step::Sent
    }
}
