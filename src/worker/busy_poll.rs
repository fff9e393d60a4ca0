//! The adaptive busy-poll window of an idle loop (how long it spins before blocking).

use std::time::Duration;

/// Adaptive busy-poll window: how long a loop that just went idle spins on its
/// completion queues and mesh before it blocks. KVM's halt-polling policy: an idle gap
/// the cap would have covered grows the window (doubling from `BUSY_POLL_START_NS`),
/// a longer one halves it, down to zero. A steady stream of events keeps the loop
/// spinning between them (no wake-up latency); an idle fleet, whose rare events are
/// far apart, costs a few halving spins and then none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BusyPoll {
    max_ns: u64,
    window_ns: u64,
}

/// First window after an idle gap the cap covers (or the cap, if smaller).
const BUSY_POLL_START_NS: u64 = 10_000;

impl BusyPoll {
    pub(super) fn new(max_us: u32) -> BusyPoll {
        BusyPoll {
            max_ns: u64::from(max_us) * 1000,
            window_ns: 0,
        }
    }

    pub(super) fn window(&self) -> Duration {
        Duration::from_nanos(self.window_ns)
    }

    /// Learns from one idle gap: from going idle to the next turn with work (found by
    /// the spin or after blocking).
    pub(super) fn observe(&mut self, idle: Duration) {
        let idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        if idle_ns <= self.max_ns {
            self.window_ns = self
                .window_ns
                .saturating_mul(2)
                .max(BUSY_POLL_START_NS)
                .min(self.max_ns);
        } else {
            self.window_ns /= 2;
            if self.window_ns < BUSY_POLL_START_NS.min(self.max_ns) {
                self.window_ns = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn busy_poll_grows_on_short_gaps_up_to_the_cap() {
        let mut b = BusyPoll::new(50);
        assert_eq!(b.window(), Duration::ZERO);
        b.observe(us(3));
        assert_eq!(b.window(), us(10));
        b.observe(us(30));
        assert_eq!(b.window(), us(20));
        b.observe(us(50));
        assert_eq!(b.window(), us(40));
        b.observe(us(1));
        assert_eq!(b.window(), us(50));
        b.observe(us(1));
        assert_eq!(b.window(), us(50));
    }

    #[test]
    fn busy_poll_halves_on_long_gaps_down_to_zero() {
        let mut b = BusyPoll::new(50);
        for _ in 0..4 {
            b.observe(us(1));
        }
        assert_eq!(b.window(), us(50));
        let mut seen = Vec::new();
        for _ in 0..4 {
            b.observe(Duration::from_secs(60));
            seen.push(b.window());
        }
        assert_eq!(
            seen,
            vec![
                us(25),
                us(12) + Duration::from_nanos(500),
                Duration::ZERO,
                Duration::ZERO
            ]
        );
    }

    #[test]
    fn busy_poll_off_never_spins_and_a_small_cap_is_its_own_start() {
        let mut off = BusyPoll::new(0);
        off.observe(Duration::ZERO);
        assert_eq!(off.window(), Duration::ZERO);
        let mut small = BusyPoll::new(4);
        small.observe(us(2));
        assert_eq!(small.window(), us(4));
        // Half of a 4 µs cap is below the smallest window worth spinning (the cap).
        small.observe(us(5));
        assert_eq!(small.window(), Duration::ZERO);
    }
}
