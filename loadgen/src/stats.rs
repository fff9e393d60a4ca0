//! Sequence accounting per (publisher stream, subscriber): loss, duplicates, reordering.

use std::collections::BTreeMap;

/// What one arrival meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next expected sequence number.
    InOrder,
    /// Ahead of the next expected one: the skipped numbers are now missing.
    Gap,
    /// A number that was missing arrived late.
    OutOfOrder,
    /// Already received.
    Duplicate,
}

/// Tracks one stream as seen by one subscriber. Missing numbers are kept as ranges
/// so a large QoS 0 loss costs one entry, not one per message.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    next_seq: u64,
    /// Missing ranges, start -> end (exclusive).
    missing: BTreeMap<u64, u64>,
    pub unique: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl SeqTracker {
    pub fn record(&mut self, seq: u64) -> Arrival {
        if seq == self.next_seq {
            self.next_seq += 1;
            self.unique += 1;
            return Arrival::InOrder;
        }
        if seq > self.next_seq {
            self.missing.insert(self.next_seq, seq);
            self.next_seq = seq + 1;
            self.unique += 1;
            return Arrival::Gap;
        }
        // seq < next_seq: either fills a hole or was seen before.
        let Some((&start, &end)) = self.missing.range(..=seq).next_back() else {
            self.duplicates += 1;
            return Arrival::Duplicate;
        };
        if seq >= end {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        self.missing.remove(&start);
        if start < seq {
            self.missing.insert(start, seq);
        }
        if seq + 1 < end {
            self.missing.insert(seq + 1, end);
        }
        self.unique += 1;
        self.out_of_order += 1;
        Arrival::OutOfOrder
    }

    #[cfg(test)]
    /// Numbers below the highest seen that never arrived.
    pub fn missing_count(&self) -> u64 {
        self.missing.iter().map(|(s, e)| e - s).sum()
    }

    #[cfg(test)]
    /// Messages lost given that the publisher sent `sent` (sequence numbers 0..sent).
    pub fn lost(&self, sent: u64) -> u64 {
        sent.saturating_sub(self.unique)
    }
}

/// Counters summed over all (stream, subscriber) pairs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryTotals {
    pub expected: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
}

impl DeliveryTotals {
    pub fn lost(&self) -> u64 {
        self.expected.saturating_sub(self.unique)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream() {
        let mut t = SeqTracker::default();
        for s in 0..100 {
            assert_eq!(t.record(s), Arrival::InOrder);
        }
        assert_eq!(
            (t.unique, t.duplicates, t.out_of_order, t.missing_count()),
            (100, 0, 0, 0)
        );
        assert_eq!(t.lost(100), 0);
        assert_eq!(t.lost(105), 5);
    }

    #[test]
    fn gap_then_late_fill_counts_out_of_order() {
        let mut t = SeqTracker::default();
        assert_eq!(t.record(0), Arrival::InOrder);
        assert_eq!(t.record(5), Arrival::Gap);
        assert_eq!(t.missing_count(), 4);
        assert_eq!(t.record(3), Arrival::OutOfOrder);
        assert_eq!(t.record(1), Arrival::OutOfOrder);
        assert_eq!(t.missing_count(), 2);
        assert_eq!(t.record(3), Arrival::Duplicate);
        assert_eq!(t.record(2), Arrival::OutOfOrder);
        assert_eq!(t.record(4), Arrival::OutOfOrder);
        assert_eq!(t.missing_count(), 0);
        assert_eq!(t.record(6), Arrival::InOrder);
        assert_eq!((t.unique, t.duplicates, t.out_of_order), (7, 1, 4));
        assert_eq!(t.lost(7), 0);
    }

    #[test]
    fn duplicates_of_in_order_and_of_gap_edges() {
        let mut t = SeqTracker::default();
        t.record(0);
        t.record(1);
        assert_eq!(t.record(0), Arrival::Duplicate);
        assert_eq!(t.record(1), Arrival::Duplicate);
        assert_eq!(t.record(10), Arrival::Gap);
        assert_eq!(t.record(10), Arrival::Duplicate);
        assert_eq!(t.record(2), Arrival::OutOfOrder);
        assert_eq!(t.record(9), Arrival::OutOfOrder);
        assert_eq!(t.record(2), Arrival::Duplicate);
        assert_eq!(t.missing_count(), 6);
        assert_eq!((t.unique, t.duplicates, t.out_of_order), (5, 4, 2));
        // 12 sent: 0..=11; 11 never arrived and 3..=8 are missing.
        assert_eq!(t.lost(12), 7);
    }

    #[test]
    fn large_loss_is_one_range() {
        let mut t = SeqTracker::default();
        t.record(1_000_000_000);
        assert_eq!(t.missing.len(), 1);
        assert_eq!(t.missing_count(), 1_000_000_000);
    }

    #[test]
    fn totals_loss() {
        let d = DeliveryTotals {
            expected: 10,
            unique: 8,
            duplicates: 1,
            out_of_order: 0,
        };
        assert_eq!(d.lost(), 2);
    }
}
