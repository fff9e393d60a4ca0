//! Chunked storage for tables that grow to 100k+ entries and are not looked up per
//! delivered copy (trie nodes and values, the timer wheel's slots). The connection and session slabs are
//! presized instead (see `shard::PRESIZE_MAX`): a chunk lookup costs ~5 more
//! instructions, paid several times per subscriber on every publish.
//!
//! A growing `Vec` (and `slab::Slab`, built on one) doubles: at 10k entries it holds
//! room for 16k, and every doubling copies the table and hands the old block back to
//! the allocator, which keeps it resident. Fixed-size chunks never copy and leave at
//! most one chunk of slack, so memory follows the live entry count.
//!
//! A leaf utility: imports nothing from the broker, so every layer may use it.

/// Entries per chunk.
/// 1023, not 1024: mimalloc (through the `mimalloc` crate, which always calls
/// `mi_malloc_aligned`) reserves `size + align - 1` for medium blocks, so an exact
/// 64 KiB request (1024 trie nodes) lands in the 80 KiB size class; 1023 entries
/// leave room for that.
pub(crate) const CHUNK_LEN: usize = 1023;

/// Index distance between chunks: an index is `chunk << CHUNK_SHIFT | offset`, so
/// splitting one (every node visit of every topic walk) is a
/// shift and a mask, not a division by `CHUNK_LEN`. Offset `CHUNK_LEN` (1023) is
/// never used, so `u32::MAX` (all ones) never names an entry.
pub(crate) const CHUNK_SHIFT: u32 = 10;
const _: () = assert!(CHUNK_LEN < 1 << CHUNK_SHIFT);

/// "No entry" for `u32` indices (never handed out, see `CHUNK_SHIFT`).
pub(crate) const NIL: u32 = u32::MAX;

/// Splits an index into (chunk, offset).
#[inline(always)]
pub(crate) fn chunk_of(i: u32) -> (usize, usize) {
    split(i as usize)
}

#[inline(always)]
fn split(i: usize) -> (usize, usize) {
    (i >> CHUNK_SHIFT, i & ((1 << CHUNK_SHIFT) - 1))
}

/// Appends to the last chunk, opening a full-size one when it is full, and returns
/// the new entry's index. The first chunk grows by doubling (capped at `CHUNK_LEN`)
/// so a small table stays small.
pub(crate) fn push_chunked<T>(chunks: &mut Vec<Vec<T>>, t: T) -> u32 {
    if chunks.last().map_or(true, |c| c.len() == CHUNK_LEN) {
        let cap = if chunks.is_empty() { 4 } else { CHUNK_LEN };
        chunks.push(Vec::with_capacity(cap));
    }
    let chunk = chunks.len() - 1;
    let last = &mut chunks[chunk];
    if last.len() == last.capacity() {
        last.reserve_exact(last.len().min(CHUNK_LEN - last.len()));
    }
    let i = ((chunk << CHUNK_SHIFT) + last.len()) as u32;
    last.push(t);
    i
}

enum Entry<T> {
    Full(T),
    /// Next free entry.
    Free(u32),
}

/// A slab (stable keys below `u32::MAX`, reuse of freed keys) in fixed-size chunks: growth
/// never copies and the slack stays under one chunk. A freed key is the next one
/// handed out (last in, first out), as with `slab::Slab`.
pub(crate) struct ChunkSlab<T> {
    chunks: Vec<Vec<Entry<T>>>,
    /// Head of the free list (`NIL`: none).
    free: u32,
    len: usize,
}

impl<T> Default for ChunkSlab<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for ChunkSlab<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<T> ChunkSlab<T> {
    pub fn new() -> Self {
        ChunkSlab {
            chunks: Vec::new(),
            free: NIL,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn entry(&self, i: usize) -> Option<&Entry<T>> {
        let (c, o) = split(i);
        self.chunks.get(c)?.get(o)
    }

    #[inline]
    fn entry_mut(&mut self, i: usize) -> Option<&mut Entry<T>> {
        let (c, o) = split(i);
        self.chunks.get_mut(c)?.get_mut(o)
    }

    #[inline]
    pub fn get(&self, i: usize) -> Option<&T> {
        match self.entry(i)? {
            Entry::Full(v) => Some(v),
            Entry::Free(_) => None,
        }
    }

    #[inline]
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        match self.entry_mut(i)? {
            Entry::Full(v) => Some(v),
            Entry::Free(_) => None,
        }
    }

    /// Stores `v` under the most recently freed key, or a new one.
    pub fn insert(&mut self, v: T) -> usize {
        self.len += 1;
        let free = self.free as usize;
        if let Some(e) = self.entry_mut(free) {
            if let Entry::Free(next) = *e {
                *e = Entry::Full(v);
                self.free = next;
                return free;
            }
        }
        push_chunked(&mut self.chunks, Entry::Full(v)) as usize
    }

    pub fn remove(&mut self, i: usize) -> Option<T> {
        let next = self.free;
        let e = self.entry_mut(i)?;
        if let Entry::Free(_) = e {
            return None;
        }
        let Entry::Full(v) = std::mem::replace(e, Entry::Free(next)) else {
            return None;
        };
        // Keys come from `insert`, so they fit a u32.
        self.free = i as u32;
        self.len -= 1;
        Some(v)
    }

    /// The first live entry whose key is `start` or above (resumable in-order walk).
    pub fn next_from(&self, start: usize) -> Option<(usize, &T)> {
        let (mut c, mut o) = split(start);
        while let Some(chunk) = self.chunks.get(c) {
            while let Some(e) = chunk.get(o) {
                if let Entry::Full(v) = e {
                    return Some(((c << CHUNK_SHIFT) + o, v));
                }
                o += 1;
            }
            c += 1;
            o = 0;
        }
        None
    }

    /// Live entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.chunks.iter().enumerate().flat_map(|(c, chunk)| {
            chunk.iter().enumerate().filter_map(move |(o, e)| match e {
                Entry::Full(v) => Some(((c << CHUNK_SHIFT) + o, v)),
                Entry::Free(_) => None,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_free_entry_costs_no_more_than_a_u32_value() {
        assert_eq!(std::mem::size_of::<Entry<u32>>(), 8);
    }

    #[test]
    fn keys_are_dense_then_reused_last_freed_first() {
        let mut s = ChunkSlab::new();
        assert_eq!((s.insert('a'), s.insert('b'), s.insert('c')), (0, 1, 2));
        assert_eq!(s.remove(0), Some('a'));
        assert_eq!(s.remove(2), Some('c'));
        assert_eq!(s.remove(2), None, "already free");
        assert_eq!(s.insert('d'), 2);
        assert_eq!(s.insert('e'), 0);
        assert_eq!(s.insert('f'), 3);
        assert_eq!(s.len(), 4);
        assert_eq!(
            s.iter().map(|(k, v)| (k, *v)).collect::<Vec<_>>(),
            vec![(0, 'e'), (1, 'b'), (2, 'd'), (3, 'f')]
        );
        assert_eq!(s.get(NIL as usize), None);
        assert_eq!(s.remove(NIL as usize), None);
    }

    #[test]
    fn keys_skip_the_unused_offset_of_each_chunk() {
        let mut s = ChunkSlab::new();
        let keys: Vec<usize> = (0..CHUNK_LEN + 2).map(|i| s.insert(i)).collect();
        assert_eq!(keys[CHUNK_LEN - 1], CHUNK_LEN - 1);
        assert_eq!(keys[CHUNK_LEN], 1 << CHUNK_SHIFT);
        assert_eq!(keys[CHUNK_LEN + 1], (1 << CHUNK_SHIFT) + 1);
        assert_eq!(s.get(CHUNK_LEN), None, "offset 1023 names nothing");
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(s.get(*k), Some(&i));
        }
        // Only whole chunks: no doubling beyond the first.
        assert!(s.chunks.iter().all(|c| c.capacity() <= CHUNK_LEN));
    }

    /// Random inserts and removes against a `BTreeMap` model: same contents, and
    /// every key is handed out by the last-freed-first rule.
    #[test]
    fn matches_a_map_model() {
        let mut s = ChunkSlab::new();
        let mut model: BTreeMap<usize, u64> = BTreeMap::new();
        let mut freed: Vec<usize> = Vec::new();
        let mut next_new = 0usize;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 5 < 3 || model.is_empty() {
                let k = s.insert(step);
                let want = freed.pop().unwrap_or_else(|| {
                    let k = next_new;
                    next_new += 1;
                    if next_new & ((1 << CHUNK_SHIFT) - 1) == CHUNK_LEN {
                        next_new += 1;
                    }
                    k
                });
                assert_eq!(k, want);
                model.insert(k, step);
            } else {
                let nth = (x >> 8) as usize % model.len();
                let k = *model.keys().nth(nth).expect("non-empty");
                assert_eq!(s.remove(k), model.remove(&k));
                freed.push(k);
            }
            assert_eq!(s.len(), model.len());
        }
        let got: Vec<(usize, u64)> = s.iter().map(|(k, v)| (k, *v)).collect();
        let want: Vec<(usize, u64)> = model.into_iter().collect();
        assert_eq!(got, want);
    }
}
