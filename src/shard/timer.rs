//! Timers: a hierarchical timing wheel with lazy cancellation. An entry carries the
//! generation of the connection or session it was set for; a stale entry is skipped
//! when it fires. Keepalive is re-armed lazily from `last_seen_ms` when its entry
//! fires, so traffic never touches the wheel.
//!
//! Four levels of 64 slots at a 1 ms tick cover 2^24 ticks (4.66 h): level `L` slot
//! `s` holds the timers whose tick differs from the wheel's current tick first in
//! base-64 digit `L`, where theirs is `s`. When time reaches a slot of level > 0 its
//! timers are placed again (cascade) into lower levels. Deadlines beyond the wheel
//! (keepalives over 3 h, session expiry of days) wait in an overflow min-heap until
//! their 2^24-tick block begins. A timer fires at the first tick at or after its
//! deadline: never early, at most one tick (1 ms) late.

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

/// One wheel entry, 16 bytes (an `Instant` alone is 16): a shard holds one or two per
/// connection, so at 100k connections this is megabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timer {
    /// Nanoseconds after the wheel's epoch, shifted left by 2, kind in the low 2 bits:
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

    /// The first tick at or after the deadline.
    fn tick(&self) -> u64 {
        (self.due >> 2).div_ceil(TICK_NS)
    }
}

impl Ord for Timer {
    // Reversed so `BinaryHeap` (a max-heap) pops the earliest first, and an ascending
    // sort puts the earliest last.
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

const TICK_NS: u64 = 1_000_000;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const LEVELS: usize = 4;
/// Ticks the wheel spans; a timer further away than its block waits in `overflow`.
const WHEEL_BITS: u32 = SLOT_BITS * LEVELS as u32;
const DUE_NS_MAX: u64 = u64::MAX >> 2;

/// Deadlines are kept relative to an epoch, the `now` of the first push, so an entry
/// needs no 16-byte `Instant`; a deadline before the epoch counts as the epoch (it is
/// due at once either way).
#[derive(Debug)]
pub(crate) struct Timers {
    /// `LEVELS * SLOTS` slots, allocated at the first push (an idle shard has none).
    /// A slot's vector is freed when the slot is emptied: slots are visited in turn,
    /// and kept capacity would add up to a multiple of the timers held. Each slot is
    /// a list of chunks of `arena::CHUNK_LEN` timers (`push_chunked`): a connect
    /// burst puts every connection's entry in one or two slots, and one doubling
    /// vector held up to 2x their size and left each smaller copy with the allocator
    /// (at 10k connections ~35 B per connection, issue #21).
    slots: Vec<Vec<Vec<Timer>>>,
    /// Bit `s` of `occupied[L]`: level `L` slot `s` holds timers. Every set bit is
    /// above the current tick's digit at that level (slots are visited in order).
    occupied: [u64; LEVELS],
    /// Timers beyond the wheel's current 2^24-tick block, earliest first.
    overflow: BinaryHeap<Timer>,
    /// Timers whose tick has come, sorted so the earliest is last.
    ready: Vec<Timer>,
    /// Every tick up to this one has been processed.
    now_tick: u64,
    /// Earliest tick in the wheel or overflow (`u64::MAX`: none), so
    /// `next_deadline`, asked every loop turn, scans nothing.
    earliest_tick: u64,
    epoch: Option<Instant>,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            slots: Vec::new(),
            occupied: [0; LEVELS],
            overflow: BinaryHeap::new(),
            ready: Vec::new(),
            now_tick: 0,
            earliest_tick: u64::MAX,
            epoch: None,
        }
    }
}

impl Timers {
    pub fn push(&mut self, now: Instant, at: Instant, kind: TimerKind, key: u32, generation: u32) {
        let epoch = *self.epoch.get_or_insert(now);
        let ns = at.saturating_duration_since(epoch).as_nanos();
        let ns = u64::try_from(ns).unwrap_or(u64::MAX).min(DUE_NS_MAX);
        let t = Timer {
            due: ns << 2 | kind as u64,
            key,
            generation,
        };
        if t.tick() <= self.now_tick {
            // Due already: keep `ready` sorted (rare: pushes are for the future).
            let at = self.ready.partition_point(|r| r < &t);
            self.ready.insert(at, t);
            return;
        }
        self.earliest_tick = self.earliest_tick.min(t.tick());
        self.place(t);
    }

    /// Puts a timer due after `now_tick` into its level and slot, or `overflow`.
    fn place(&mut self, t: Timer) {
        let tick = t.tick();
        let differ = tick ^ self.now_tick;
        debug_assert!(tick > self.now_tick);
        let level = ((63 - differ.leading_zeros()) / SLOT_BITS) as usize;
        if level >= LEVELS {
            self.overflow.push(t);
            return;
        }
        if self.slots.is_empty() {
            self.slots.resize_with(LEVELS * SLOTS, Vec::new);
        }
        let slot = ((tick >> (level as u32 * SLOT_BITS)) as usize) & (SLOTS - 1);
        self.occupied[level] |= 1 << slot;
        crate::arena::push_chunked(&mut self.slots[level * SLOTS + slot], t);
    }

    /// The lowest occupied level's first occupied slot and the tick it begins at:
    /// it holds the wheel's earliest timers (a lower level's slots all lie in the
    /// current slot of the level above).
    fn first_slot(&self) -> Option<(usize, usize, u64)> {
        let level = self.occupied.iter().position(|&bits| bits != 0)?;
        let slot = self.occupied[level].trailing_zeros();
        let shift = level as u32 * SLOT_BITS;
        let above = self.now_tick >> (shift + SLOT_BITS) << (shift + SLOT_BITS);
        Some((level, slot as usize, above | u64::from(slot) << shift))
    }

    /// Processes every tick up to `to`: cascades, overflow blocks, due timers into
    /// `ready`. Visits only occupied slots, so a long jump costs no empty ticks.
    fn advance(&mut self, to: u64) {
        if to <= self.now_tick {
            return;
        }
        let mut moved = false;
        loop {
            if let Some((level, slot, start)) = self.first_slot() {
                if start > to {
                    break;
                }
                self.now_tick = start;
                self.occupied[level] &= !(1 << slot);
                let timers = std::mem::take(&mut self.slots[level * SLOTS + slot]);
                for t in timers.into_iter().flatten() {
                    if t.tick() <= start {
                        self.ready.push(t);
                    } else {
                        self.place(t);
                    }
                }
            } else {
                // The wheel is empty: the next event is the overflow's next block.
                let Some(first) = self.overflow.peek() else {
                    break;
                };
                let start = first.tick() >> WHEEL_BITS << WHEEL_BITS;
                if start > to {
                    break;
                }
                self.now_tick = start;
                while let Some(t) = self.overflow.peek().copied() {
                    if t.tick() >> WHEEL_BITS != start >> WHEEL_BITS {
                        break;
                    }
                    self.overflow.pop();
                    if t.tick() <= start {
                        self.ready.push(t);
                    } else {
                        self.place(t);
                    }
                }
            }
            moved = true;
        }
        self.now_tick = to;
        if moved {
            self.ready.sort_unstable();
            self.earliest_tick = self.scan_earliest();
        }
    }

    /// The earliest tick in the wheel or overflow: the minimum of the first occupied
    /// slot (one slot's timers), else of the overflow.
    fn scan_earliest(&self) -> u64 {
        match self.first_slot() {
            Some((level, slot, _)) => self.slots[level * SLOTS + slot]
                .iter()
                .flatten()
                .map(Timer::tick)
                .min()
                .unwrap_or(u64::MAX),
            None => self.overflow.peek().map_or(u64::MAX, Timer::tick),
        }
    }

    /// When the earliest timer fires: the first tick at or after its deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        let epoch = self.epoch?;
        let tick = match self.ready.last() {
            Some(t) => t.tick(),
            None if self.earliest_tick == u64::MAX => return None,
            None => self.earliest_tick,
        };
        Some(epoch + Duration::from_nanos(tick.saturating_mul(TICK_NS)))
    }

    /// Removes and returns the earliest timer if it fires at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let epoch = self.epoch?;
        let ns = now.saturating_duration_since(epoch).as_nanos();
        let to = u64::try_from(ns / u128::from(TICK_NS)).unwrap_or(u64::MAX);
        self.advance(to);
        self.ready.pop()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ready.len()
            + self.overflow.len()
            + self.slots.iter().flatten().map(Vec::len).sum::<usize>()
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
        // Bounded by the timers held: re-armed keepalives are always in a later tick.
        while let Some(t) = self.timers.pop_due(now) {
            match t.kind() {
                TimerKind::ConnectTimeout => {
                    let Some(c) = self.conns.get(t.key as usize) else {
                        continue;
                    };
                    if c.generation != t.generation {
                        continue;
                    }
                    match c.state {
                        ConnState::AwaitConnect | ConnState::Verifying => {
                            self.stats.connect_timeouts += 1;
                            self.close(t.key as usize);
                        }
                        // The same kind marks a JWT's `exp` (see `ShardAuth`).
                        ConnState::Connected
                            if self
                                .auth
                                .token_deadlines
                                .get(&(t.key as usize))
                                .is_some_and(|&d| d <= now) =>
                        {
                            self.fail(t.key as usize, SessionError::TokenExpired, now);
                        }
                        ConnState::Connected if c.keepalive_deferred() => {
                            if let Some(c) = self.conns.get_mut(t.key as usize) {
                                c.set_keepalive_deferred(false);
                            }
                            self.on_keepalive(t, now);
                        }
                        _ => {}
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
                    self.stats.sessions_expired += 1;
                    self.end_session(t.key, now);
                }
            }
        }
    }

    fn on_keepalive(&mut self, t: Timer, now: Instant) {
        let now_ms = self.seen_ms(now);
        let Some(c) = self.conns.get(t.key as usize) else {
            return;
        };
        if c.generation != t.generation || c.state != ConnState::Connected || c.keepalive_s == 0 {
            return;
        }
        // Both stamps are whole ms: the check is at most 1 ms early or late.
        let idle_ms = now_ms.wrapping_sub(c.last_seen_ms);
        let timeout_ms = c.keepalive_timeout_ms();
        if idle_ms < timeout_ms {
            let deadline = now + Duration::from_millis(u64::from(timeout_ms - idle_ms));
            self.timers
                .push(now, deadline, TimerKind::Keepalive, t.key, t.generation);
            return;
        }
        self.fail(t.key as usize, SessionError::KeepAliveTimeout, now);
    }

    /// Arms the keepalive check of a freshly connected connection. `accepted_at`:
    /// when its `ConnectTimeout` entry was set (`new_conn`). While that entry is still
    /// due, and due before the keepalive deadline, it does the first check when it
    /// fires (`keepalive_deferred`): a connection holds one wheel entry (16 B plus
    /// the slot vector's slack) instead of two for its first `connect_timeout_ms`,
    /// which is when a connect storm's memory peaks.
    pub(crate) fn arm_keepalive(
        &mut self,
        conn: usize,
        accepted_at: Option<Instant>,
        now: Instant,
    ) {
        let connect_deadline =
            accepted_at.map(|a| a + Duration::from_millis(self.config.connect_timeout_ms));
        let Some(c) = self.conns.get_mut(conn) else {
            return;
        };
        if c.keepalive_s == 0 {
            return;
        }
        let at = now + Duration::from_millis(u64::from(c.keepalive_timeout_ms()));
        // Not yet due (timers never fire early), so the entry is still held.
        if connect_deadline.is_some_and(|d| d > now && d <= at) {
            c.set_keepalive_deferred(true);
            return;
        }
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
    use proptest::prelude::*;

    #[test]
    fn timer_entry_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Timer>(), 16);
    }

    /// Pops come out by (deadline, kind, key, generation), each at the first tick at
    /// or after its deadline and never before, whatever the push order.
    #[test]
    fn pops_in_deadline_order_at_the_first_tick_after_the_deadline() {
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
        // The epoch is the first push's `now` (ms 5): deadlines are ticks after it.
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
        // 1 ns past a tick: fires at the next tick, 1 ms later.
        assert_eq!(t.next_deadline(), Some(ms(21)));
        assert!(t.pop_due(ms(20)).is_none());
        assert!(t.pop_due(ms(21) - Duration::from_nanos(1)).is_none());
        assert_eq!(
            t.pop_due(ms(21)).map(|x| (x.kind(), x.key)),
            Some((TimerKind::WillDelay, 2))
        );
        assert_eq!(t.next_deadline(), Some(ms(30)));
        assert_eq!(
            t.pop_due(ms(40)).map(|x| (x.kind(), x.key)),
            Some((TimerKind::Keepalive, 7))
        );
        assert_eq!(t.next_deadline(), None);
        assert_eq!(t.len(), 0);
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
        assert_eq!(
            clamped,
            later + Duration::from_nanos(DUE_NS_MAX.div_ceil(TICK_NS) * TICK_NS)
        );
        assert_eq!(
            t.pop_due(far).map(|x| (x.kind(), x.key)),
            Some((TimerKind::SessionExpiry, 2))
        );
    }

    /// A connect burst's entries land in one slot: its chunks hold them with less
    /// than one chunk of slack (a doubling vector held up to twice their size), and
    /// they still fire in order.
    #[test]
    fn a_crowded_slot_grows_by_chunks() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let n = 5_000;
        for key in 0..n {
            // All within 0.5 ms: one slot.
            let at =
                t0 + Duration::from_millis(10_000) + Duration::from_nanos(100 * u64::from(key));
            t.push(t0, at, TimerKind::ConnectTimeout, key, 0);
        }
        let held: usize = t.slots.iter().flatten().map(Vec::capacity).sum();
        assert!(
            held < n as usize + crate::arena::CHUNK_LEN,
            "{held} entries of room for {n} timers"
        );
        let due = t0 + Duration::from_secs(11);
        let keys: Vec<u32> = std::iter::from_fn(|| t.pop_due(due))
            .map(|x| x.key)
            .collect();
        assert_eq!(keys, (0..n).collect::<Vec<_>>());
    }

    /// Timers on every level and in the overflow (a session expiry of 30 days) fire
    /// at their tick after cascades, also when time jumps over many slots at once,
    /// and emptied slots give their memory back.
    #[test]
    fn cascades_and_overflow_fire_on_time() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        let day_ms = 86_400_000;
        let deadlines_ms = [
            3,
            64,
            65,
            4_095,
            4_097,
            262_145,
            90_000,
            5 * 3_600_000,
            30 * day_ms,
        ];
        for (key, &d) in deadlines_ms.iter().enumerate() {
            let at = t0 + Duration::from_millis(d);
            t.push(t0, at, TimerKind::SessionExpiry, key as u32, 0);
        }
        assert_eq!(t.overflow.len(), 2, "5 h and 30 days are beyond the wheel");
        let mut sorted = deadlines_ms;
        sorted.sort_unstable();
        for d in sorted {
            let at = t0 + Duration::from_millis(d);
            assert_eq!(t.next_deadline(), Some(at), "{d} ms");
            assert!(t.pop_due(at - Duration::from_nanos(1)).is_none(), "{d} ms");
            let key = deadlines_ms.iter().position(|&x| x == d).expect("key") as u32;
            assert_eq!(t.pop_due(at).map(|x| x.key), Some(key), "{d} ms");
        }
        assert_eq!(t.len(), 0);
        assert!(t.slots.iter().all(|s| s.capacity() == 0));
        assert_eq!(t.occupied, [0; LEVELS]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Arm a timer this many ns after now.
        Push(u64, u8),
        /// Move time forward this many ns and drain every due timer.
        Advance(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let ms = 1_000_000u64;
        prop_oneof![
            3 => (0..300 * ms, 0..4u8).prop_map(|(d, k)| Op::Push(d, k)),
            2 => (0..3 * 3_600_000 * ms, 0..4u8).prop_map(|(d, k)| Op::Push(d, k)),
            1 => (0..400 * 86_400_000 * ms, 0..4u8).prop_map(|(d, k)| Op::Push(d, k)),
            4 => (0..5 * ms).prop_map(Op::Advance),
            2 => (0..70_000 * ms).prop_map(Op::Advance),
            1 => (0..20 * 86_400_000 * ms).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Against a model of the old min-heap: every armed timer fires exactly once,
        /// never before its deadline and at the latest at the first tick after it,
        /// in (deadline, kind, key) order; `next_deadline` is that first tick.
        #[test]
        fn wheel_matches_heap_model(ops in proptest::collection::vec(op(), 1..200)) {
            let t0 = Instant::now();
            let mut wheel = Timers::default();
            let mut model: BinaryHeap<Timer> = BinaryHeap::new();
            let mut now_ns = 0u64;
            let mut key = 0u32;
            // Fixes the epoch at t0, as the shard's first push does.
            wheel.push(t0, t0, TimerKind::ConnectTimeout, u32::MAX, 0);
            prop_assert_eq!(wheel.pop_due(t0).map(|x| x.key), Some(u32::MAX));
            for op in ops {
                match op {
                    Op::Push(d, k) => {
                        let now = t0 + Duration::from_nanos(now_ns);
                        let at = now + Duration::from_nanos(d);
                        wheel.push(now, at, KINDS[k as usize], key, 7);
                        model.push(Timer { due: (now_ns + d) << 2 | u64::from(k), key, generation: 7 });
                        key += 1;
                    }
                    Op::Advance(d) => {
                        now_ns += d;
                        let now = t0 + Duration::from_nanos(now_ns);
                        let now_tick = now_ns / TICK_NS;
                        let mut expected = Vec::new();
                        while model.peek().is_some_and(|t| t.tick() <= now_tick) {
                            expected.extend(model.pop());
                        }
                        let got: Vec<Timer> = std::iter::from_fn(|| wheel.pop_due(now)).collect();
                        prop_assert_eq!(&got, &expected);
                        for t in &got {
                            // Never early; late by less than a tick.
                            prop_assert!(t.due >> 2 <= now_ns);
                            prop_assert!(t.tick() <= now_tick);
                        }
                    }
                }
                let want = model.peek().map(|t| t0 + Duration::from_nanos(t.tick() * TICK_NS));
                prop_assert_eq!(wheel.next_deadline(), want);
                prop_assert_eq!(wheel.len(), model.len());
            }
        }
    }
}
