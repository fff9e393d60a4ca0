//! Durability across loops: a PUBACK/PUBREC waits until every loop that queued a
//! copy of the message for a persistent session has that copy in its own log.
//!
//! **Design.** A QoS 1/2 `ShardMsg::Publish` sent to another loop while a data
//! directory is set carries `hold`, the sender's sequence number for that
//! destination (per pair, increasing, never 0). The receiving loop delivers it,
//! notes the end of its log after the copies it recorded (or nothing, when it
//! recorded none), and once its log is durable up to there answers
//! `ShardMsg::StoreAck { seq }` through the control outbox: one cumulative number per
//! pair (the mesh is FIFO per pair), coalesced, never dropped. A write that failed
//! answers `StoreNack` for the range it covered first. The publisher's held reply
//! lists the `(loop, seq)` pairs it was sent with and goes out only when its own log
//! position is durable *and* every listed loop acked past its seq; a nacked seq, or
//! a publish the mesh refused (`on_publish_dropped`), refuses the reply as a failed
//! local write does (MQTT 5: 0x97; 3.x: none).
//!
//! Why not one log record per message on the publisher's loop with references from
//! the others: the publisher does not know which remote sessions are persistent
//! (its routes table has loops, not sessions), recovery would have to join logs
//! across loops, and re-homing would have to move bodies between them. This way
//! each loop's log stays self-contained and the added cost is a 4-byte field in a
//! message that already crosses, and one control message per pair per turn back.
//! Without a data directory nothing here runs (`hold` is 0).
//!
//! **Retained messages** reach the other loops' replicas (and logs) as
//! `ShardMsg::Retain` through the control outbox, not as a `Publish`, so they have a
//! lane of their own: after the `Retain`s it queued, a QoS 1/2 retained publish
//! queues `StoreProbe { seq }` (lane 1) for each other loop; the control outbox sends
//! a probe after every `Retain` queued before it, and the receiver answers
//! `StoreAck { lane: 1 }` once its log is durable up to where it was when the probe
//! came. Two lanes, because the two paths can overtake each other and an ack is
//! cumulative within its lane.
//!
//! Sequence numbers are `u32` compared in serial-number arithmetic (RFC 1982), so
//! the mesh's `Publish` stays 40 bytes; far fewer than 2^31 are ever outstanding.

use std::collections::VecDeque;

use smallvec::SmallVec;

use super::{Shard, ShardId};
use crate::protocol::QoS;

/// What one held reply waits for on other loops: (loop | lane bit, seq).
pub(crate) type RemoteNeeds = SmallVec<[(u16, u32); 1]>;

/// Nack ranges kept per destination at most; more are merged (conservatively:
/// a stored message inside a merged range is refused too, which only costs a resend).
const NACK_RANGES_MAX: usize = 64;

/// `a` is at or after `b` in serial-number order.
#[inline]
pub(crate) fn seq_ge(a: u32, b: u32) -> bool {
    a.wrapping_sub(b) as i32 >= 0
}

fn in_range(seq: u32, (lo, hi): (u32, u32)) -> bool {
    seq_ge(seq, lo) && seq_ge(hi, seq)
}

/// Lanes: 0 for publishes, 1 for retained probes (see the module docs).
pub(crate) const LANES: usize = 2;
/// In a `RemoteNeeds` entry's loop number: the retained lane.
const PROBE_BIT: u16 = 0x8000;

fn split(to: u16) -> (usize, usize) {
    (
        usize::from(to & !PROBE_BIT),
        usize::from(to & PROBE_BIT != 0),
    )
}

/// One lane's sequence numbers, both ways.
#[derive(Debug, Default)]
struct Lane {
    /// Per destination: the last seq given to a message sent there.
    sent: Vec<u32>,
    /// Per destination: every seq up to this is durable there (or nacked).
    acked: Vec<u32>,
    /// Per destination: seq ranges that will never be durable there.
    failed: Vec<SmallVec<[(u32, u32); 2]>>,
    /// Per origin: messages received, in order: (seq, log end they need; 0: none).
    pending: Vec<VecDeque<(u32, u64)>>,
}

impl Lane {
    fn new(shards: usize) -> Lane {
        Lane {
            sent: vec![0; shards],
            acked: vec![0; shards],
            failed: vec![SmallVec::new(); shards],
            pending: vec![VecDeque::new(); shards],
        }
    }

    /// The next seq towards `to` (never 0).
    fn next(&mut self, to: usize) -> Option<u32> {
        let last = self.sent.get_mut(to)?;
        *last = last.wrapping_add(1);
        if *last == 0 {
            *last = 1;
        }
        Some(*last)
    }

    fn failed(&self, to: usize, seq: u32) -> bool {
        self.failed
            .get(to)
            .is_some_and(|f| f.iter().any(|&r| in_range(seq, r)))
    }

    fn add_failed(&mut self, to: usize, range: (u32, u32)) {
        let Some(f) = self.failed.get_mut(to) else {
            return;
        };
        f.push(range);
        if f.len() > NACK_RANGES_MAX {
            let (a, b) = (f.remove(0), f.remove(0));
            let lo = if seq_ge(b.0, a.0) { a.0 } else { b.0 };
            let hi = if seq_ge(b.1, a.1) { b.1 } else { a.1 };
            f.insert(0, (lo, hi));
        }
    }
}

/// The cross-loop side of a shard's log.
#[derive(Debug, Default)]
pub(crate) struct RemoteDurability {
    lanes: [Lane; LANES],
    /// The (loop | lane bit, seq) pairs of the client publish in progress.
    pub(crate) needs: RemoteNeeds,
}

impl RemoteDurability {
    pub(crate) fn new(shards: usize) -> RemoteDurability {
        RemoteDurability {
            lanes: [Lane::new(shards), Lane::new(shards)],
            needs: RemoteNeeds::new(),
        }
    }

    /// Whether every pair in `needs` is answered (acked, nacked or dropped).
    pub(crate) fn answered(&self, needs: &RemoteNeeds) -> bool {
        needs.iter().all(|&(to, seq)| {
            let (to, lane) = split(to);
            let l = &self.lanes[lane];
            l.acked.get(to).is_some_and(|&a| seq_ge(a, seq)) || l.failed(to, seq)
        })
    }

    /// Whether some pair in `needs` will never be durable.
    pub(crate) fn any_failed(&self, needs: &RemoteNeeds) -> bool {
        needs.iter().any(|&(to, seq)| {
            let (to, lane) = split(to);
            self.lanes[lane].failed(to, seq)
        })
    }

    fn add_failed(&mut self, lane: usize, to: usize, range: (u32, u32)) {
        if let Some(l) = self.lanes.get_mut(lane) {
            l.add_failed(to, range);
        }
    }

    /// No held reply is left: nothing can ask about an old range any more.
    pub(crate) fn forget_failures(&mut self) {
        for l in &mut self.lanes {
            for f in &mut l.failed {
                f.clear();
            }
        }
    }
}

impl Shard {
    /// The `hold` for a publish to loop `to`: a fresh seq (noted for the client
    /// publish in progress) when the message is QoS 1/2 and a log is kept, else 0.
    #[inline]
    pub(super) fn store_remote_seq(&mut self, to: ShardId, qos: QoS) -> u32 {
        let Some(s) = self.store.as_deref_mut() else {
            return 0;
        };
        if qos == QoS::AtMostOnce {
            return 0;
        }
        let r = &mut s.remote;
        let Some(seq) = r.lanes[0].next(to) else {
            return 0;
        };
        r.needs.push((to as u16, seq));
        seq
    }

    /// After a QoS 1/2 retained publish queued its `Retain`s for the other loops: a
    /// probe behind them to each, which the reply waits for (lane 1).
    pub(super) fn store_retained_probes(&mut self, qos: QoS) {
        let Some(s) = self.store.as_deref_mut() else {
            return;
        };
        if qos == QoS::AtMostOnce {
            return;
        }
        for to in (0..self.shard_count).filter(|&to| to != self.id) {
            if let Some(seq) = s.remote.lanes[1].next(to) {
                s.remote.needs.push((to as u16 | PROBE_BIT, seq));
                self.control.push_store_probe(to, seq);
            }
        }
    }

    /// A probe from `from`: answered once everything logged so far is durable (the
    /// `Retain`s sent before it were applied before it came).
    pub(super) fn on_store_probe(&mut self, from: ShardId, seq: u32) {
        let end = self.store_mark();
        let Some(s) = self.store.as_deref_mut() else {
            self.control.push_store_ack(from, 1, seq);
            return;
        };
        if let Some(p) = s.remote.lanes[1].pending.get_mut(from) {
            p.push_back((seq, end));
        }
        self.answer_remote(None);
    }

    /// Called where a client publish starts: its remote needs start empty, and the
    /// log position its own records start at is returned (0 without a log).
    pub(super) fn store_publish_mark(&mut self) -> u64 {
        // One test of `store` for both (every publish passes here).
        let Some(s) = self.store.as_deref_mut() else {
            return 0;
        };
        s.remote.needs.clear();
        s.wal.next_lsn()
    }

    /// A publish with `hold` from loop `from` was delivered here; `mark` was the log's
    /// end before. Answered once what it recorded is durable.
    pub(super) fn store_remote_received(&mut self, from: ShardId, seq: u32, mark: u64) {
        if seq == 0 {
            return;
        }
        let end = self.store_mark();
        let Some(s) = self.store.as_deref_mut() else {
            // No log here (the sender has one): nothing to wait for.
            self.control.push_store_ack(from, 0, seq);
            return;
        };
        let need = if end > mark { end } else { 0 };
        if let Some(p) = s.remote.lanes[0].pending.get_mut(from) {
            p.push_back((seq, need));
        }
        self.answer_remote(None);
    }

    /// Answers the publishes whose records are now durable; with `failed_from`, the
    /// ones needing records after it are nacked (those records will never be).
    pub(super) fn answer_remote(&mut self, failed_from: Option<u64>) {
        let Some(s) = self.store.as_deref_mut() else {
            return;
        };
        let durable = s.durable;
        let pending = s.remote.lanes.iter_mut().enumerate().flat_map(|(lane, l)| {
            l.pending
                .iter_mut()
                .enumerate()
                .map(move |(from, p)| (lane as u8, from, p))
        });
        for (lane, from, p) in pending {
            let mut acked = None;
            let mut nack: Option<(u32, u32)> = None;
            while let Some(&(seq, need)) = p.front() {
                if need > durable {
                    match failed_from {
                        Some(f) if need > f => {
                            nack = Some((nack.map_or(seq, |n| n.0), seq));
                        }
                        _ => break,
                    }
                }
                acked = Some(seq);
                p.pop_front();
            }
            if let Some(range) = nack {
                self.control.push_store_nack(from, lane, range);
            }
            if let Some(seq) = acked {
                self.control.push_store_ack(from, lane, seq);
            }
        }
    }

    /// Loop `from` has every publish of ours up to `seq` durable (or nacked).
    pub(super) fn on_store_ack(
        &mut self,
        from: ShardId,
        lane: u8,
        seq: u32,
        now: std::time::Instant,
    ) {
        let Some(s) = self.store.as_deref_mut() else {
            return;
        };
        let Some(l) = s.remote.lanes.get_mut(usize::from(lane)) else {
            return;
        };
        if let Some(a) = l.acked.get_mut(from) {
            if seq_ge(seq, *a) {
                *a = seq;
            }
        }
        self.release_held(now);
    }

    /// Loop `from` could not write the copies of our publishes `range.0..=range.1`.
    pub(super) fn on_store_nack(&mut self, from: ShardId, lane: u8, range: (u32, u32)) {
        if let Some(s) = self.store.as_deref_mut() {
            s.remote.add_failed(usize::from(lane), from, range);
        }
    }

    /// The mesh refused a publish to `to` that carried `hold`: the replies waiting
    /// for it are refused (its copies there were never made).
    pub fn on_publish_dropped(&mut self, to: ShardId, hold: u32, now: std::time::Instant) {
        if hold == 0 {
            return;
        }
        if let Some(s) = self.store.as_deref_mut() {
            s.remote.add_failed(0, to, (hold, hold));
        }
        self.release_held(now);
    }
}
