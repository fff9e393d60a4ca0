//! Lingering close: what happens to a connection the shard ended once its last
//! bytes (a DISCONNECT with a reason, a refusing CONNACK) are written.
//!
//! Closing a socket that still has unread bytes, or that receives more after the
//! close, makes the kernel answer with a reset; a client still writing (a PUBREL for an
//! earlier PUBREC, the next PUBLISH) then sees "broken pipe" or "connection reset", and
//! the reset can discard our last packet before the client read it. So the worker
//! shuts the write side down instead (the client reads our bytes, then EOF), keeps
//! receiving and discards what arrives, and closes when the client closes too or
//! `close_linger_ms` has passed, whichever comes first.
//!
//! Bounded twice: in time (one fixed linger per connection) and in count (at most
//! `max_lingering_per_shard` lingers start within one linger period; beyond that a
//! connection is closed at once), so a flood of refused clients cannot pin sockets.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::io::SockId;
use crate::shard::ConnId;

/// Connections lingering before their close, by deadline.
#[derive(Debug)]
pub(super) struct Linger {
    duration: Duration,
    max: usize,
    /// FIFO: one fixed duration, so deadlines come in order. An entry stays until its
    /// deadline even when its connection closed earlier (the peer's EOF), so the
    /// count bounds the lingers started within one period, a slight over-count of
    /// those still open; `expire` skips the stale ones.
    queue: VecDeque<(Instant, ConnId, SockId)>,
    /// Lingers refused because `max` were under way (the connection closed at once).
    pub refused_full: u64,
    pub started: u64,
}

/// Capacity an emptied queue keeps (a flood of refusals grows it).
const KEPT: usize = 64;

impl Linger {
    pub(super) fn new(duration: Duration, max: usize) -> Linger {
        Linger {
            duration,
            max,
            queue: VecDeque::new(),
            refused_full: 0,
            started: 0,
        }
    }

    /// Whether `conn` (on `sock`) may linger now; if so it is recorded, and the
    /// caller shuts its write side down. `false`: close it at once.
    pub(super) fn start(&mut self, now: Instant, conn: ConnId, sock: SockId) -> bool {
        if self.duration.is_zero() {
            return false;
        }
        if self.queue.len() >= self.max {
            self.refused_full += 1;
            return false;
        }
        self.started += 1;
        self.queue.push_back((now + self.duration, conn, sock));
        true
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.queue.front().map(|&(d, _, _)| d)
    }

    /// Hands every entry whose linger is over to `close`, which checks that the
    /// connection still lingers on that socket (the entry may be stale).
    pub(super) fn expire(&mut self, now: Instant, mut close: impl FnMut(ConnId, SockId)) {
        while let Some(&(deadline, conn, sock)) = self.queue.front() {
            if deadline > now {
                return;
            }
            self.queue.pop_front();
            close(conn, sock);
        }
        if self.queue.is_empty() && self.queue.capacity() > KEPT {
            self.queue.shrink_to(KEPT);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_count_and_expires_in_order() {
        let t0 = Instant::now();
        let mut l = Linger::new(Duration::from_millis(100), 2);
        assert!(l.start(t0, 1, 10));
        assert!(l.start(t0 + Duration::from_millis(10), 2, 11));
        assert!(!l.start(t0 + Duration::from_millis(20), 3, 12));
        assert_eq!((l.started, l.refused_full), (2, 1));
        assert_eq!(l.next_deadline(), Some(t0 + Duration::from_millis(100)));
        let mut closed = Vec::new();
        l.expire(t0 + Duration::from_millis(99), |c, s| closed.push((c, s)));
        assert!(closed.is_empty());
        l.expire(t0 + Duration::from_millis(100), |c, s| closed.push((c, s)));
        assert_eq!(closed, vec![(1, 10)]);
        // Room again for one.
        assert!(l.start(t0 + Duration::from_millis(100), 4, 13));
        l.expire(t0 + Duration::from_secs(1), |c, s| closed.push((c, s)));
        assert_eq!(closed, vec![(1, 10), (2, 11), (4, 13)]);
        assert_eq!(l.next_deadline(), None);
    }

    #[test]
    fn zero_duration_never_lingers() {
        let mut l = Linger::new(Duration::ZERO, 10);
        assert!(!l.start(Instant::now(), 1, 1));
        assert_eq!((l.started, l.refused_full), (0, 0));
    }
}
