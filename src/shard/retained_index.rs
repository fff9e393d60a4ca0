//! A loop's index of its retained replica: the stored bodies ordered by topic, with
//! no copy of the topic. This file owns the index, its lookups and the bounded walk
//! a retained stream makes over the topics a filter matches.
//!
//! # Why an ordered set of bodies, not a trie
//! Every loop keeps the whole retained set (`retained.rs`), and the bodies (topic and
//! payload in one `ThinArc`) are shared by the loops, so what each extra loop costs
//! is its index. A trie copies every topic level into its own nodes (2 × 64 B for
//! `fleet/devNNNNNN/state`, plus a value slot and hash slot: ~185 B per message per
//! loop). Here an entry is the body's thin pointer and the replica's store count,
//! 16 B, in a `BTreeSet` leaf of up to 11 entries (192 B) that keys on the body's
//! own topic bytes: 20–40 B per message per loop, whatever the topic length.
//! - Exact lookups (every retained PUBLISH, replica update and delete) are a
//!   binary search by topic.
//! - A filter's matches are contiguous from its literal prefix (the levels before
//!   the first `+` or `#`): a walk starts there and stops at the first topic past
//!   the prefix, matching each topic against the filter. `a/b/#` and `a/+/c` read
//!   only `a/b…` and `a/…`; a filter starting with a wildcard reads the whole set,
//!   which a stream does in bounded slices per turn (`stream.rs`).
//! - Topic order is stable under inserts and deletes, so a stream's position is
//!   just the last topic it handled, valid however the set changes.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::ops::Bound;

use super::retained::RetainedBody;

/// A retained message as a replica holds it. Ordered and compared by its topic
/// alone (a set holds one entry per topic), so the set can be searched by `&[u8]`.
#[derive(Debug, Clone)]
pub(crate) struct RetainedEntry {
    pub body: RetainedBody,
    /// The replica's store count when this message was stored (`Shard::retained_seq`):
    /// a stream of retained messages skips the topics stored after it started, whose
    /// subscriber got them live (see `stream.rs`).
    pub seq: u64,
}

impl Borrow<[u8]> for RetainedEntry {
    fn borrow(&self) -> &[u8] {
        self.body.topic()
    }
}

impl PartialEq for RetainedEntry {
    fn eq(&self, other: &Self) -> bool {
        self.body.topic() == other.body.topic()
    }
}

impl Eq for RetainedEntry {}

impl PartialOrd for RetainedEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RetainedEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.body.topic().cmp(other.body.topic())
    }
}

/// Where a walk resumes: at a topic (a candidate not sent yet) or after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum From {
    At,
    After,
}

/// Topic → retained entry of one replica, ordered by topic.
#[derive(Debug, Default)]
pub(crate) struct RetainedIndex {
    set: BTreeSet<RetainedEntry>,
}

/// The end of one bounded walk (`RetainedIndex::walk`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WalkEnd {
    /// No topic of the filter's range is left after the last one examined.
    Done,
    /// `max_examined` entries were examined; resume after the last one.
    More,
}

impl RetainedIndex {
    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }

    pub(crate) fn get(&self, topic: &[u8]) -> Option<&RetainedEntry> {
        self.set.get(topic)
    }

    /// Stores `entry`, replacing the one of the same topic; returns that one.
    pub(crate) fn replace(&mut self, entry: RetainedEntry) -> Option<RetainedEntry> {
        self.set.replace(entry)
    }

    pub(crate) fn remove(&mut self, topic: &[u8]) -> Option<RetainedEntry> {
        self.set.take(topic)
    }

    /// Every entry, in topic order.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&[u8], &RetainedEntry)) {
        for e in &self.set {
            f(e.body.topic(), e);
        }
    }

    /// Walks the entries `filter` may match in topic order, starting at or after
    /// `from` (the filter's first candidate when `None`), calling `f` with each one
    /// the filter matches until `f` says stop (`false`) or `max_examined` entries
    /// (matching or not) were examined. `last` is set to the topic of the last entry
    /// examined, the one `f` stopped at included. Returns `Done` when the range was
    /// exhausted, and how many entries were examined.
    pub(crate) fn walk(
        &self,
        filter: &[u8],
        from: Option<(&[u8], From)>,
        max_examined: usize,
        last: &mut Vec<u8>,
        mut f: impl FnMut(&RetainedEntry) -> bool,
    ) -> (WalkEnd, usize) {
        let (prefix, exact) = literal_prefix(filter);
        let start: Bound<&[u8]> = match from {
            Some((t, From::At)) => Bound::Included(t),
            Some((t, From::After)) => Bound::Excluded(t),
            None => Bound::Included(prefix),
        };
        let end: Bound<&[u8]> = if exact {
            Bound::Included(filter)
        } else {
            Bound::Unbounded
        };
        // A position before the prefix (none is made so) would still be correct:
        // entries before it do not match.
        if let (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e)) = (start, end) {
            if s > e {
                return (WalkEnd::Done, 0);
            }
        }
        let mut examined = 0;
        for e in self.set.range::<[u8], _>((start, end)) {
            let topic = e.body.topic();
            if !topic.starts_with(prefix) {
                return (WalkEnd::Done, examined);
            }
            if examined == max_examined {
                return (WalkEnd::More, examined);
            }
            examined += 1;
            last.clear();
            last.extend_from_slice(topic);
            if crate::topic::matches(filter, topic) && !f(e) {
                return (WalkEnd::More, examined);
            }
        }
        (WalkEnd::Done, examined)
    }
}

/// The filter's bytes before its first wildcard level, without the separator in
/// front of it (`a/b/#` → `a/b`, which `#` matches too), and whether the filter has
/// no wildcard at all (then it is its own prefix and matches itself only). Every
/// topic the filter matches starts with the prefix.
fn literal_prefix(filter: &[u8]) -> (&[u8], bool) {
    let mut pos = 0;
    loop {
        let end = filter[pos..]
            .iter()
            .position(|&b| b == b'/')
            .map_or(filter.len(), |i| pos + i);
        let level = &filter[pos..end];
        if level == b"+" || level == b"#" {
            return (&filter[..pos.saturating_sub(1)], false);
        }
        if end == filter.len() {
            return (filter, true);
        }
        pos = end + 1;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::QoS;
    use crate::session::Message;

    fn entry(topic: &str, seq: u64) -> RetainedEntry {
        let m = Message {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::from_static(b"p"),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: Default::default(),
            arrived_at: Instant::now(),
            origin_shard: 0,
            origin_session: crate::session::NONE,
            owned: true,
            cluster_key: 0,
        };
        RetainedEntry {
            body: RetainedBody::new(&m),
            seq,
        }
    }

    /// Every topic `walk` yields for `filter`, resuming after each `step` examined
    /// entries, the way a stream's slices do.
    fn walk_all(ix: &RetainedIndex, filter: &str, step: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut last = Vec::new();
        let mut pos: Option<Vec<u8>> = None;
        loop {
            let from = pos.as_deref().map(|t| (t, From::After));
            let (end, _) = ix.walk(filter.as_bytes(), from, step, &mut last, |e| {
                out.push(String::from_utf8_lossy(e.body.topic()).into_owned());
                true
            });
            if end == WalkEnd::Done {
                return out;
            }
            pos = Some(last.clone());
        }
    }

    #[test]
    fn literal_prefixes() {
        let p = |f: &str| {
            let (p, exact) = literal_prefix(f.as_bytes());
            (String::from_utf8_lossy(p).into_owned(), exact)
        };
        assert_eq!(p("#"), (String::new(), false));
        assert_eq!(p("+/x"), (String::new(), false));
        assert_eq!(p("a/b/#"), ("a/b".into(), false));
        assert_eq!(p("a/+/c"), ("a".into(), false));
        assert_eq!(p("a/b/c"), ("a/b/c".into(), true));
        assert_eq!(p("a/b+/c"), ("a/b+/c".into(), true));
        assert_eq!(p("/+"), (String::new(), false));
        assert_eq!(p("a//#"), ("a/".into(), false));
    }

    /// A walk stopped by its callback resumes at the topic it stopped at.
    #[test]
    fn a_stopped_walk_resumes_at_the_refused_topic() {
        let mut ix = RetainedIndex::default();
        for t in ["a/1", "a/2", "a/3", "b/1"] {
            ix.replace(entry(t, 1));
        }
        let mut last = Vec::new();
        let mut seen = Vec::new();
        let (end, _) = ix.walk(b"a/#", None, 100, &mut last, |e| {
            seen.push(e.body.topic().to_vec());
            seen.len() < 2
        });
        assert_eq!(end, WalkEnd::More);
        assert_eq!(last, b"a/2");
        let mut rest = Vec::new();
        let at = last.clone();
        let (end, _) = ix.walk(b"a/#", Some((&at, From::At)), 100, &mut last, |e| {
            rest.push(e.body.topic().to_vec());
            true
        });
        assert_eq!(end, WalkEnd::Done);
        assert_eq!(rest, vec![b"a/2".to_vec(), b"a/3".to_vec()]);
    }

    fn level() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["a", "b", "ab", "", "$s", "a+", "c"]).prop_map(String::from)
    }

    fn name() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..4).prop_map(|v| v.join("/"))
    }

    fn filter() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec!["a", "b", "ab", "", "$s", "+", "c"]),
            1..4,
        )
        .prop_flat_map(|v| {
            (Just(v.join("/")), any::<bool>())
                .prop_map(|(f, hash)| if hash { format!("{f}/#") } else { f })
        })
        .boxed()
        .prop_union(Just("#".to_string()).boxed())
        .boxed()
    }

    proptest! {
        /// Whatever the slice size, a walk yields exactly the topics the filter
        /// matches, each once, in topic order: what `topic::matches` says over
        /// the whole set.
        #[test]
        fn walk_equals_naive(names in prop::collection::vec(name(), 0..30), f in filter(), step in 1usize..5) {
            let mut ix = RetainedIndex::default();
            for (i, n) in names.iter().enumerate() {
                ix.replace(entry(n, i as u64));
            }
            let mut want: Vec<String> = names
                .iter()
                .filter(|n| crate::topic::matches(f.as_bytes(), n.as_bytes()))
                .cloned()
                .collect();
            want.sort();
            want.dedup();
            prop_assert_eq!(walk_all(&ix, &f, step), want);
        }
    }

    /// The per-loop cost the module docs promise: an entry is a thin pointer and a
    /// count, whatever the topic.
    #[test]
    fn an_entry_is_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<RetainedEntry>(), 16);
    }
}
