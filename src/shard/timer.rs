//! Timers: a min-heap with lazy cancellation. An entry carries the generation of
//! the connection or session it was set for; a stale entry is skipped when it
//! fires. Keepalive is re-armed lazily from `last_seen` when its entry fires, so
//! traffic never touches the heap.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::conn::ConnState;
use super::Shard;
use crate::session::SessionError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerKind {
    ConnectTimeout = 0,
    Keepalive = 1,
    WillDelay = 2,
    SessionExpiry = 3,
}

const KINDS: [TimerKind; 4] = [
    TimerKind::ConnectTimeout,
    TimerKind::Keepalive,
    TimerKind::WillDelay,
    TimerKind::SessionExpiry,
];

/// One heap entry, 16 bytes (an `Instant` alone is 16): a shard holds one or two per
/// connection, so at 100k connections this is megabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timer {
    /// Nanoseconds after the heap's epoch, shifted left by 2, kind in the low 2 bits:
    /// ordering by this orders by (deadline, kind). 62 bits of nanoseconds cover 146
    /// years; later deadlines are clamped to that.
    due: u64,
    /// Connection id or session index.
    pub key: u32,
    pub generation: u32,
}

impl Timer {
    pub fn kind(&self) -> TimerKind {
        KINDS[(self.due & 3) as usize]
    }
}

impl Ord for Timer {
    // Reversed so `BinaryHeap` (a max-heap) pops the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .due
            .cmp(&self.due)
            .then_with(|| other.key.cmp(&self.key))
            .then_with(|| other.generation.cmp(&self.generation))
    }
}

impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A min-heap of timers. Deadlines are kept relative to an epoch, the `now` of the
/// first push, so an entry needs no 16-byte `Instant`; a deadline before the epoch
/// counts as the epoch (it is due at once either way).
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Timer>,
    epoch: Option<Instant>,
}

const DUE_NS_MAX: u64 = u64::MAX >> 2;

impl Timers {
    pub fn push(&mut self, now: Instant, at: Instant, kind: TimerKind, key: u32, generation: u32) {
        let epoch = *self.epoch.get_or_insert(now);
        let ns = at.saturating_duration_since(epoch).as_nanos();
        let ns = u64::try_from(ns).unwrap_or(u64::MAX).min(DUE_NS_MAX);
        self.heap.push(Timer {
            due: ns << 2 | kind as u64,
            key,
            generation,
        });
    }

    /// When the earliest timer is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let (t, epoch) = (self.heap.peek()?, self.epoch?);
        Some(epoch + Duration::from_nanos(t.due >> 2))
    }

    /// Removes and returns the earliest timer if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        if self.next_deadline()? > now {
            return None;
        }
        self.heap.pop()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

impl Shard {
    /// When `on_timer` next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Runs every timer due at `now` (keepalive, will delay, session and message expiry).
    pub fn on_timer(&mut self, now: Instant) {
        self.last_now = Some(now);
        // Bounded by the heap size: re-armed keepalives are always in the future.
        while let Some(t) = self.timers.pop_due(now) {
            match t.kind() {
                TimerKind::ConnectTimeout => {
                    let stale = self
                        .conns
                        .get(t.key as usize)
                        .map(|c| c.generation != t.generation);
                    if stale == Some(false)
                        && self
                            .conns
                            .get(t.key as usize)
                            .is_some_and(|c| c.state == ConnState::AwaitConnect)
                    {
                        self.stats.connect_timeouts += 1;
                        self.close(t.key as usize);
                    }
                }
                TimerKind::Keepalive => self.on_keepalive(t, now),
                TimerKind::WillDelay => {
                    let Some(s) = self.sessions.get(t.key) else {
                        continue;
                    };
                    if s.generation != t.generation
                        || s.is_online()
                        || s.will.as_ref().and_then(|w| w.at).is_none_or_after(now)
                    {
                        continue;
                    }
                    self.publish_will(t.key, now);
                }
                TimerKind::SessionExpiry => {
                    let now_ns = self.stamp_ns(now);
                    let Some(s) = self.sessions.get(t.key) else {
                        continue;
                    };
                    if s.generation != t.generation || s.is_online() || s.expires_ns > now_ns {
                        continue;
                    }
                    self.end_session(t.key, now);
                }
            }
        }
    }

    fn on_keepalive(&mut self, t: Timer, now: Instant) {
        let Some(c) = self.conns.get(t.key as usize) else {
            return;
        };
        if c.generation != t.generation
            || c.state != ConnState::Connected
            || c.keepalive_timeout_ms == 0
        {
            return;
        }
        let deadline = c.last_seen + Duration::from_millis(u64::from(c.keepalive_timeout_ms));
        if deadline > now {
            self.timers
                .push(now, deadline, TimerKind::Keepalive, t.key, t.generation);
            return;
        }
        self.fail(t.key as usize, SessionError::KeepAliveTimeout, now);
    }

    /// Arms the keepalive check of a freshly connected connection.
    pub(crate) fn arm_keepalive(&mut self, conn: usize, now: Instant) {
        let Some(c) = self.conns.get(conn) else {
            return;
        };
        if c.keepalive_timeout_ms == 0 {
            return;
        }
        let at = now + Duration::from_millis(u64::from(c.keepalive_timeout_ms));
        self.timers
            .push(now, at, TimerKind::Keepalive, conn as u32, c.generation);
    }

    pub(crate) fn arm_session_timer(
        &mut self,
        session: u32,
        kind: TimerKind,
        at: Instant,
        now: Instant,
    ) {
        let Some(s) = self.sessions.get(session) else {
            return;
        };
        self.timers.push(now, at, kind, session, s.generation);
    }
}

trait DueAt {
    /// `true` when unset or still in the future.
    fn is_none_or_after(&self, now: Instant) -> bool;
}

impl DueAt for Option<Instant> {
    fn is_none_or_after(&self, now: Instant) -> bool {
        match self {
            None => true,
            Some(t) => *t > now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_entry_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Timer>(), 16);
    }

    /// Pops come out by (deadline, kind, key, generation), each exactly at its
    /// deadline and never before, whatever the push order.
    #[test]
    fn pops_in_deadline_order_exactly_when_due() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut t = Timers::default();
        t.push(ms(5), ms(30), TimerKind::Keepalive, 7, 1);
        t.push(ms(5), ms(10), TimerKind::SessionExpiry, 1, 1);
        t.push(ms(6), ms(10), TimerKind::ConnectTimeout, 9, 2);
        t.push(ms(6), ms(10), TimerKind::ConnectTimeout, 3, 4);
        t.push(
            ms(7),
            ms(20) + Duration::from_nanos(1),
            TimerKind::WillDelay,
            2,
            3,
        );
        assert_eq!(t.len(), 5);
        assert_eq!(t.next_deadline(), Some(ms(10)));
        assert!(t.pop_due(ms(10) - Duration::from_nanos(1)).is_none());
        let got: Vec<(TimerKind, u32, u32)> = std::iter::from_fn(|| t.pop_due(ms(10)))
            .map(|x| (x.kind(), x.key, x.generation))
            .collect();
        assert_eq!(
            got,
            vec![
                (TimerKind::ConnectTimeout, 3, 4),
                (TimerKind::ConnectTimeout, 9, 2),
                (TimerKind::SessionExpiry, 1, 1),
            ]
        );
        assert_eq!(t.next_deadline(), Some(ms(20) + Duration::from_nanos(1)));
        assert!(
            t.pop_due(ms(20)).is_none(),
            "nanosecond deadlines are kept exactly"
        );
        assert_eq!(
            t.pop_due(ms(25)).map(|x| (x.kind(), x.key)),
            Some((TimerKind::WillDelay, 2))
        );
        assert_eq!(
            t.pop_due(ms(30)).map(|x| (x.kind(), x.key)),
            Some((TimerKind::Keepalive, 7))
        );
        assert_eq!(t.next_deadline(), None);
    }

    /// The epoch is the first push's `now`: a deadline before it is due at the epoch,
    /// and a deadline far beyond the 146-year range is clamped, not wrapped.
    #[test]
    fn deadlines_before_the_epoch_or_out_of_range_are_clamped() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(100);
        let mut t = Timers::default();
        t.push(later, t0, TimerKind::ConnectTimeout, 1, 0);
        assert_eq!(t.next_deadline(), Some(later));
        assert_eq!(t.pop_due(later).map(|x| x.key), Some(1));
        let far = later + Duration::from_secs(u64::from(u32::MAX) * 40);
        t.push(later, far, TimerKind::SessionExpiry, 2, 0);
        t.push(
            later,
            later + Duration::from_secs(1),
            TimerKind::Keepalive,
            3,
            0,
        );
        assert_eq!(t.pop_due(far).map(|x| x.key), Some(3));
        let clamped = t.next_deadline().expect("one left");
        assert_eq!(clamped, later + Duration::from_nanos(DUE_NS_MAX));
        assert_eq!(
            t.pop_due(far).map(|x| (x.kind(), x.key)),
            Some((TimerKind::SessionExpiry, 2))
        );
    }
}
