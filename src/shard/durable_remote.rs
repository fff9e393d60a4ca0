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
//! Sequence numbers are `u32` compared in serial-number arithmetic (RFC 1982), so
//! the mesh's `Publish` stays 40 bytes; far fewer than 2^31 are ever outstanding.

use std::collections::VecDeque;

use smallvec::SmallVec;

use super::{Shard, ShardId};
use crate::protocol::QoS;

/// What one held reply waits for on other loops: (loop, seq).
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

/// The cross-loop side of a shard's log.
#[derive(Debug, Default)]
pub(crate) struct RemoteDurability {
    /// Per destination: the last seq given to a publish sent there.
    sent: Vec<u32>,
    /// Per destination: every seq up to this is durable there (or nacked).
    acked: Vec<u32>,
    /// Per destination: seq ranges that will never be durable there.
    failed: Vec<SmallVec<[(u32, u32); 2]>>,
    /// Per origin: publishes received, in order: (seq, log end they need; 0: none).
    pending: Vec<VecDeque<(u32, u64)>>,
    /// The (loop, seq) pairs of the client publish in progress.
    pub(crate) needs: RemoteNeeds,
}

impl RemoteDurability {
    pub(crate) fn new(shards: usize) -> RemoteDurability {
        RemoteDurability {
            sent: vec![0; shards],
            acked: vec![0; shards],
            failed: vec![SmallVec::new(); shards],
            pending: vec![VecDeque::new(); shards],
            needs: RemoteNeeds::new(),
        }
    }

    /// Whether every pair in `needs` is answered (acked, nacked or dropped).
    pub(crate) fn answered(&self, needs: &RemoteNeeds) -> bool {
        needs.iter().all(|&(to, seq)| {
            let to = usize::from(to);
            self.acked.get(to).is_some_and(|&a| seq_ge(a, seq)) || self.failed(to, seq)
        })
    }

    fn failed(&self, to: usize, seq: u32) -> bool {
        self.failed
            .get(to)
            .is_some_and(|f| f.iter().any(|&r| in_range(seq, r)))
    }

    /// Whether some pair in `needs` will never be durable.
    pub(crate) fn any_failed(&self, needs: &RemoteNeeds) -> bool {
        needs
            .iter()
            .any(|&(to, seq)| self.failed(usize::from(to), seq))
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

    /// No held reply is left: nothing can ask about an old range any more.
    pub(crate) fn forget_failures(&mut self) {
        for f in &mut self.failed {
            f.clear();
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
        let Some(last) = r.sent.get_mut(to) else {
            return 0;
        };
        *last = last.wrapping_add(1);
        if *last == 0 {
            *last = 1;
        }
        let seq = *last;
        r.needs.push((to as u16, seq));
        seq
    }

    /// Called where a client publish starts: its remote needs start empty, and the
    /// log position its own records start at is returned (0 without a log).
    pub(super) fn store_publish_mark(&mut self) -> u64 {
        if let Some(s) = self.store.as_deref_mut() {
            s.remote.needs.clear();
        }
        self.store_mark()
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
            self.control.push_store_ack(from, seq);
            return;
        };
        let need = if end > mark { end } else { 0 };
        if let Some(p) = s.remote.pending.get_mut(from) {
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
        for (from, p) in s.remote.pending.iter_mut().enumerate() {
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
                self.control.push_store_nack(from, range);
            }
            if let Some(seq) = acked {
                self.control.push_store_ack(from, seq);
            }
        }
    }

    /// Loop `from` has every publish of ours up to `seq` durable (or nacked).
    pub(super) fn on_store_ack(&mut self, from: ShardId, seq: u32, now: std::time::Instant) {
        let Some(s) = self.store.as_deref_mut() else {
            return;
        };
        if let Some(a) = s.remote.acked.get_mut(from) {
            if seq_ge(seq, *a) {
                *a = seq;
            }
        }
        self.release_held(now);
    }

    /// Loop `from` could not write the copies of our publishes `range.0..=range.1`.
    pub(super) fn on_store_nack(&mut self, from: ShardId, range: (u32, u32)) {
        if let Some(s) = self.store.as_deref_mut() {
            s.remote.add_failed(from, range);
        }
    }

    /// The mesh refused a publish to `to` that carried `hold`: the replies waiting
    /// for it are refused (its copies there were never made).
    pub fn on_publish_dropped(&mut self, to: ShardId, hold: u32, now: std::time::Instant) {
        if hold == 0 {
            return;
        }
        if let Some(s) = self.store.as_deref_mut() {
            s.remote.add_failed(to, (hold, hold));
        }
        self.release_held(now);
    }
}
