//! The PUBLISH → kernel latency histogram of one loop: for each send of a
//! connection's output that held a live delivery, the time from the turn that read
//! the oldest PUBLISH in it (on whichever loop) to the turn that reaped the send's
//! completion, when the bytes were in the kernel's socket buffer.
//!
//! Plain counters on the loop's own thread (no atomics): a record is a bucket
//! index from the leading zeros of the value and two adds. Times are the loops'
//! turn clocks (one clock read per turn), in µs, so the resolution is a loop turn;
//! the shard stamps them (`Shard::latency_stamp`). Buckets are powers of two from
//! 32 µs to ~4.2 s, one overflow bucket above; a scrape merges every loop's
//! histogram and renders it as a Prometheus histogram.

/// Upper bound of the first bucket, in µs.
pub const FIRST_BOUND_US: u64 = 32;
/// Finite buckets: 32 µs · 2^i for i in 0..BUCKETS (the last bound is ~4.2 s).
pub const BUCKETS: usize = 18;

/// One loop's (or the merged node's) histogram. `counts` are per bucket, not
/// cumulative; `counts[BUCKETS]` holds the samples over the last bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    pub counts: [u64; BUCKETS + 1],
    pub sum_us: u64,
    pub count: u64,
}

impl LatencyHistogram {
    /// One sample of `us` microseconds.
    #[inline]
    pub fn record(&mut self, us: u32) {
        // Bucket i holds (32·2^(i-1), 32·2^i]; bucket 0 everything up to 32.
        let v = u64::from(us).max(1);
        let log = 64 - (v - 1).leading_zeros() as usize; // ceil(log2(v))
        let i = log.saturating_sub(5).min(BUCKETS);
        self.counts[i] += 1;
        self.sum_us += u64::from(us);
        self.count += 1;
    }

    /// A sample from two stamps of `Shard::latency_stamp` (`read_at` non-zero).
    /// The stamps wrap after ~71 minutes; a difference is right below that.
    #[inline]
    pub fn record_since(&mut self, read_at: u32, now: u32) {
        self.record(now.wrapping_sub(read_at));
    }

    pub fn add(&mut self, b: &LatencyHistogram) {
        for (x, y) in self.counts.iter_mut().zip(&b.counts) {
            *x += y;
        }
        self.sum_us += b.sum_us;
        self.count += b.count;
    }

    /// `(upper bound in seconds, cumulative count)` per finite bucket; the
    /// `+Inf` bucket is `count`.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let mut acc = 0;
        (0..BUCKETS).map(move |i| {
            acc += self.counts[i];
            ((FIRST_BOUND_US << i) as f64 / 1e6, acc)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_the_bucket_whose_bound_is_the_first_at_or_above_them() {
        let mut h = LatencyHistogram::default();
        for us in [0, 1, 32, 33, 64, 65, 1000, 4_194_304, 4_194_305, u32::MAX] {
            h.record(us);
        }
        assert_eq!(h.counts[0], 3, "0, 1 and 32 are within 32 µs");
        assert_eq!(h.counts[1], 2, "33 and 64");
        assert_eq!(h.counts[2], 1, "65");
        assert_eq!(h.counts[5], 1, "1000 is within 1024");
        assert_eq!(h.counts[17], 1, "4,194,304 µs is the last bound");
        assert_eq!(h.counts[BUCKETS], 2, "above it: overflow");
        assert_eq!(h.count, 10);
        let cum: Vec<(f64, u64)> = h.cumulative().collect();
        assert_eq!(cum[0], (0.000032, 3));
        assert_eq!(cum[1], (0.000064, 5));
        assert_eq!(cum[BUCKETS - 1], (4.194304, 8));
    }

    #[test]
    fn stamps_that_wrapped_still_give_the_difference() {
        let mut h = LatencyHistogram::default();
        h.record_since(u32::MAX - 9, 10);
        assert_eq!(h.sum_us, 20);
    }
}
