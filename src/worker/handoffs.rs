//! Hand-offs that arrived over the mesh before their socket did (io_uring: the
//! `MSG_RING` completion and the mesh message race), each kept for a bounded wait.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::io::Transfer;
use crate::shard::Handoff;
use crate::transport::Transport;

/// A hand-off and the connection's transforms (TLS, WebSocket), which travel beside
/// it (kept out of `Handoff` so that dropping an `Action` stays cheap; see
/// `WorkerMsg::Adopt`).
pub(super) type Moved = (Box<Handoff>, Option<Box<Transport>>);

/// Capacity the hand-off tables may keep while empty (see `shrink_handoff_tables`).
const HANDOFF_TABLE_KEPT: usize = 64;

/// Hand-offs waiting for their socket, each for at most `wait`.
pub(super) struct WaitingHandoffs {
    /// With the time each is given up on.
    by_transfer: HashMap<Transfer, (Instant, Moved)>,
    /// Deadlines in order (one fixed wait); an entry whose hand-off was taken, or
    /// replaced under a reused transfer id (epoll: an fd number), is skipped.
    due: VecDeque<(Instant, Transfer)>,
    wait: Duration,
}

impl WaitingHandoffs {
    pub(super) fn new(wait: Duration) -> WaitingHandoffs {
        WaitingHandoffs {
            by_transfer: HashMap::new(),
            due: VecDeque::new(),
            wait,
        }
    }

    pub(super) fn insert(&mut self, transfer: Transfer, handoff: Moved, now: Instant) {
        let deadline = now + self.wait;
        self.by_transfer.insert(transfer, (deadline, handoff));
        self.due.push_back((deadline, transfer));
    }

    pub(super) fn take(&mut self, transfer: Transfer) -> Option<Moved> {
        self.by_transfer.remove(&transfer).map(|(_, h)| h)
    }

    /// Removes the hand-offs due by `now`, passing each to `gone`.
    pub(super) fn expire(&mut self, now: Instant, mut gone: impl FnMut(Transfer, Moved)) {
        while let Some(&(deadline, transfer)) = self.due.front() {
            if deadline > now {
                return;
            }
            self.due.pop_front();
            let current = self
                .by_transfer
                .get(&transfer)
                .is_some_and(|(d, _)| *d <= now);
            if current {
                if let Some((_, handoff)) = self.by_transfer.remove(&transfer) {
                    gone(transfer, handoff);
                }
            }
        }
    }

    /// When `expire` next has something to do (possibly nothing: a stale entry).
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.due.front().map(|&(d, _)| d)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_transfer.len()
    }

    /// Gives a connect storm's memory back once empty.
    pub(super) fn shrink(&mut self) {
        shrink_emptied(&mut self.by_transfer);
        if self.due.is_empty() && self.due.capacity() > HANDOFF_TABLE_KEPT {
            self.due.shrink_to(0);
        }
    }
}

/// Frees an empty table's storage unless it is small (see `HANDOFF_TABLE_KEPT`).
pub(super) fn shrink_emptied<K: Eq + std::hash::Hash, V>(table: &mut HashMap<K, V>) {
    if table.is_empty() && table.capacity() > HANDOFF_TABLE_KEPT {
        table.shrink_to(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::tests::handoff;

    #[test]
    fn emptied_handoff_tables_are_freed_small_ones_kept() {
        let mut big: HashMap<u64, u64> = (0..1000).map(|i| (i, i)).collect();
        shrink_emptied(&mut big);
        assert_eq!(big.len(), 1000, "a table in use is kept");
        big.clear();
        shrink_emptied(&mut big);
        assert_eq!(big.capacity(), 0);
        let mut small: HashMap<u64, u64> = (0..10).map(|i| (i, i)).collect();
        small.clear();
        let kept = small.capacity();
        shrink_emptied(&mut small);
        assert_eq!(small.capacity(), kept);
    }

    #[test]
    fn waiting_handoffs_expire_once_after_the_wait_unless_taken() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = WaitingHandoffs::new(s(5));
        w.insert(Transfer(1), (handoff(), None), t0);
        w.insert(Transfer(2), (handoff(), None), t0 + s(1));
        assert!(w.take(Transfer(1)).is_some(), "paired in time");
        // Transfer ids may be reused (epoll: fd numbers): the newer claim keeps its
        // own deadline.
        w.insert(Transfer(3), (handoff(), None), t0);
        w.insert(Transfer(3), (handoff(), None), t0 + s(3));
        assert_eq!(w.next_deadline(), Some(t0 + s(5)));
        let mut gone = Vec::new();
        w.expire(t0 + s(5), |t, _| gone.push(t.0));
        assert_eq!(gone, Vec::<u64>::new(), "1 was taken, 3 was renewed");
        w.expire(t0 + s(6), |t, _| gone.push(t.0));
        assert_eq!(gone, [2]);
        w.expire(t0 + s(8), |t, _| gone.push(t.0));
        assert_eq!(gone, [2, 3]);
        assert_eq!((w.len(), w.next_deadline()), (0, None));
        w.expire(t0 + s(60), |t, _| gone.push(t.0));
        assert_eq!(gone, [2, 3], "each expires once");
    }
}
