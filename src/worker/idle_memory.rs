//! What a loop hands back to the OS when it goes idle: the storage its per-turn
//! queues kept from the last burst (`arena::ReleaseBurst`) and the allocator's freed
//! pages (`WorkerSetup::allocator_collect`), with the follow-up wake-ups that purging
//! those pages needs. Sans-IO: the worker passes `now` and the hooks.

use std::time::{Duration, Instant};

/// Between two allocator collects of one loop. mimalloc purges a freed page only
/// after its purge delay (1 s) and only from inside an allocator call, so a loop
/// that went idle after a burst would keep the burst's freed pages resident until
/// traffic came back; two collects a delay apart hand them back.
pub(super) const ALLOCATOR_COLLECT_INTERVAL: Duration = Duration::from_secs(1);

/// When a follow-up collect is due after the last one: past the purge delay, with a
/// margin for the allocator's own clock, so the follow-up finds the pages the last
/// collect freed purgeable.
pub(super) const FOLLOW_UP_DELAY: Duration = Duration::from_millis(1_100);

/// Collects after the last turn that did work: the first releases the scratch
/// queues (their blocks become free pages, purgeable one delay later), the second
/// purges them. A loop that stays idle then sleeps until its own deadlines.
const FOLLOW_UPS: u8 = 2;

/// The idle-time allocator collect of one loop.
pub(super) struct AllocatorCollect {
    collect: Option<fn()>,
    last: Instant,
    /// A turn since the last collect had completions: a burst may have freed pages.
    worked: bool,
    /// Collects still wanted without new work (see `FOLLOW_UPS`).
    follow_ups: u8,
}

impl AllocatorCollect {
    pub(super) fn new(collect: Option<fn()>, now: Instant) -> AllocatorCollect {
        AllocatorCollect {
            collect,
            last: now,
            worked: false,
            follow_ups: 0,
        }
    }

    /// Called every turn: `worked` when the turn had completions to dispatch.
    #[inline]
    pub(super) fn note_work(&mut self, worked: bool) {
        self.worked |= worked;
    }

    /// Called when the loop may block, before it reads its deadlines (so the
    /// follow-up deadline is never in the past, which would make an idle loop spin).
    /// Collects at most once per interval, so a loop that blocks between every
    /// message pays one comparison per block; `release` runs just before each collect
    /// so the blocks it frees are among those purged.
    pub(super) fn on_idle(&mut self, now: Instant, release: impl FnOnce()) -> bool {
        let Some(collect) = self.collect else {
            return false;
        };
        if now.saturating_duration_since(self.last) < ALLOCATOR_COLLECT_INTERVAL {
            return false;
        }
        self.last = now;
        self.follow_ups = if std::mem::take(&mut self.worked) {
            FOLLOW_UPS
        } else {
            self.follow_ups.saturating_sub(1)
        };
        release();
        collect();
        true
    }

    /// When the loop should wake for a follow-up collect even if nothing else
    /// happens; `None` once the follow-ups after the last work are done.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let wanted = self.collect.is_some() && (self.worked || self.follow_ups > 0);
        wanted.then(|| self.last + FOLLOW_UP_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static COLLECTS: AtomicUsize = AtomicUsize::new(0);

    fn count_collect() {
        COLLECTS.fetch_add(1, Ordering::Relaxed);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_allocator_is_collected_at_most_once_per_interval_and_only_with_a_hook() {
        let t0 = Instant::now();
        let mut none = AllocatorCollect::new(None, t0);
        none.note_work(true);
        assert!(!none.on_idle(t0 + ALLOCATOR_COLLECT_INTERVAL * 5, || {}));
        assert_eq!(none.next_deadline(), None, "no hook: no wake-ups for it");

        let mut hooked = AllocatorCollect::new(Some(count_collect), t0);
        let before = COLLECTS.load(Ordering::Relaxed);
        // A loop blocking between every message within the first interval: no collect.
        for n in 0..1000 {
            assert!(!hooked.on_idle(t0 + ms(n), || {}));
        }
        assert!(hooked.on_idle(t0 + ALLOCATOR_COLLECT_INTERVAL, || {}));
        assert!(!hooked.on_idle(t0 + ALLOCATOR_COLLECT_INTERVAL + ms(999), || {}));
        assert!(hooked.on_idle(t0 + ALLOCATOR_COLLECT_INTERVAL * 2, || {}));
        assert_eq!(COLLECTS.load(Ordering::Relaxed) - before, 2);
    }

    #[test]
    fn after_work_the_loop_wakes_for_two_follow_up_collects_then_sleeps() {
        let t0 = Instant::now();
        let mut a = AllocatorCollect::new(Some(count_collect), t0);
        assert_eq!(
            a.next_deadline(),
            None,
            "an idle loop that never worked sleeps"
        );

        // A burst ends 300 ms in: the collect is not due yet, but a wake-up is.
        a.note_work(true);
        assert!(!a.on_idle(t0 + ms(300), || {}));
        assert_eq!(a.next_deadline(), Some(t0 + FOLLOW_UP_DELAY));

        // Each wake-up collects and, while follow-ups remain, sets the next one
        // after the collect it just did: never in the past, so the loop cannot spin.
        let mut released = 0;
        let mut now = t0 + FOLLOW_UP_DELAY;
        let mut wakes = 0;
        while let Some(at) = a.next_deadline() {
            assert!(at >= now, "the follow-up deadline lies ahead");
            now = at;
            a.note_work(false);
            assert!(a.on_idle(now, || released += 1));
            wakes += 1;
            assert!(wakes <= 3, "the follow-ups end");
        }
        assert_eq!(wakes, 3, "the collect after the burst, then two follow-ups");
        assert_eq!(
            released, 3,
            "the scratch queues are released before each collect"
        );

        // New work brings the follow-ups back.
        a.note_work(true);
        assert_eq!(a.next_deadline(), Some(now + FOLLOW_UP_DELAY));
    }

    #[test]
    fn a_busy_loop_collects_once_per_interval_and_never_releases_between() {
        let t0 = Instant::now();
        let mut a = AllocatorCollect::new(Some(count_collect), t0);
        let mut released = 0;
        for n in 1..=3_000 {
            a.note_work(true);
            a.on_idle(t0 + ms(n), || released += 1);
        }
        assert_eq!(released, 3, "at 1, 2 and 3 s");
    }
}
