//! Timers: a min-heap with lazy cancellation. An entry carries the generation of
//! the connection or session it was set for; a stale entry is skipped when it
//! fires. Keepalive is re-armed lazily from `last_seen` when its entry fires, so
//! traffic never touches the heap.

use std::cmp::Ordering;
use std::time::{Duration, Instant};

use super::conn::ConnState;
use super::Shard;
use crate::session::SessionError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerKind {
    ConnectTimeout,
    Keepalive,
    WillDelay,
    SessionExpiry,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timer {
    pub at: Instant,
    pub kind: TimerKind,
    /// Connection id or session index.
    pub key: u32,
    pub generation: u32,
}

impl Timer {
    pub fn new(at: Instant, kind: TimerKind, key: u32, generation: u32) -> Timer {
        Timer {
            at,
            kind,
            key,
            generation,
        }
    }
}

impl Ord for Timer {
    // Reversed so `BinaryHeap` (a max-heap) pops the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .cmp(&self.at)
            .then_with(|| other.kind.cmp(&self.kind))
            .then_with(|| other.key.cmp(&self.key))
            .then_with(|| other.generation.cmp(&self.generation))
    }
}

impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Shard {
    /// When `on_timer` next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.peek().map(|t| t.at)
    }

    /// Runs every timer due at `now` (keepalive, will delay, session and message expiry).
    pub fn on_timer(&mut self, now: Instant) {
        self.last_now = Some(now);
        // Bounded by the heap size: re-armed keepalives are always in the future.
        while let Some(t) = self.timers.peek().copied() {
            if t.at > now {
                break;
            }
            self.timers.pop();
            match t.kind {
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
                    let Some(s) = self.sessions.get_mut(t.key) else {
                        continue;
                    };
                    if s.generation != t.generation
                        || s.is_online()
                        || s.will_at.is_none_or_after(now)
                    {
                        continue;
                    }
                    s.will_at = None;
                    self.publish_will(t.key, now);
                }
                TimerKind::SessionExpiry => {
                    let Some(s) = self.sessions.get(t.key) else {
                        continue;
                    };
                    if s.generation != t.generation
                        || s.is_online()
                        || s.expires_at.is_none_or_after(now)
                    {
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
            self.timers.push(Timer::new(
                deadline,
                TimerKind::Keepalive,
                t.key,
                t.generation,
            ));
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
        self.timers.push(Timer::new(
            at,
            TimerKind::Keepalive,
            conn as u32,
            c.generation,
        ));
    }

    pub(crate) fn arm_session_timer(&mut self, session: u32, kind: TimerKind, at: Instant) {
        let Some(s) = self.sessions.get(session) else {
            return;
        };
        self.timers
            .push(Timer::new(at, kind, session, s.generation));
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
