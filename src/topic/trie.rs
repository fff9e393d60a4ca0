//! The topic trie: filters (with `+`/`#`) or names as paths of levels in an arena of
//! nodes, answering "which filters match this topic" and "which names match this filter".
//! Children are a short list or, past a size, an open-addressing table (`children`);
//! tests in `trie/tests.rs`.
//!
//! Paths are compressed: a chain of literal levels with nothing hanging between them
//! (no value, `#` slot, `+` child or other child) is one node whose label holds all
//! of them, so a device's `dev/<id>/cmd` costs one node below `dev`, not two. Such a
//! node is split where a new key branches off, ends or adds a wildcard inside it, and
//! joined with its only child again when that key is removed, so the shape depends on
//! the live keys only. `+` and `#` levels always have nodes of their own.
//!
//! Values live in a slab beside the nodes, or, for a trie with a [`Pack`], inside the
//! node's 4-byte value slot when the value packs into 31 bits: a shard's row for a
//! filter only other loops subscribe to is a loop bitmask, and storing it in place
//! saves the 64-byte slab entry per subscription on every other loop.

use std::ops::Deref;

use smallvec::SmallVec;
use thin_vec::ThinVec;

use crate::arena::{chunk_of, push_chunked, ChunkSlab};

mod children;

/// Index of a node in the arena, or of a value in the value slab.
type Idx = u32;
/// "No node" / "no value". Indices are u32 to halve link size; 4G nodes would need
/// hundreds of GB, so memory runs out long before an index could reach this.
const NONE: Idx = crate::arena::NIL;
const ROOT: Idx = 0;

/// A value slot at or above this (and not `NONE`) holds a packed value in its low
/// 31 bits rather than a slab index. 2^31 slab values would take 64+ GB, so slab
/// indices never get here.
const PACKED: Idx = 1 << 31;
/// The largest packed value: all 31 bits set would read as `NONE`.
pub const PACKED_MAX: u32 = NONE - PACKED - 1;

/// How a trie keeps some values inside the node's value slot instead of the value
/// slab. `pack` says whether a value fits (at most [`PACKED_MAX`]); `unpack` gives it
/// back. A packed value is rebuilt on every visit, so it should be cheap to build
/// and to drop (no heap). The packer is a value the trie holds, so the encoding
/// may depend on context (a shard packs rows relative to its own id).
pub trait Pack<V> {
    fn pack(&self, v: &V) -> Option<u32>;
    fn unpack(&self, bits: u32) -> Option<V>;
}

/// Every value in the slab (the default).
pub struct Unpacked;

impl<V> Pack<V> for Unpacked {
    #[inline(always)]
    fn pack(&self, _: &V) -> Option<u32> {
        None
    }
    #[inline(always)]
    fn unpack(&self, _: u32) -> Option<V> {
        None
    }
}

/// A value read from the trie: borrowed from the slab, or rebuilt from its packed form.
pub enum ValueRef<'a, V> {
    Stored(&'a V),
    Packed(V),
}

impl<V> Deref for ValueRef<'_, V> {
    type Target = V;
    #[inline(always)]
    fn deref(&self) -> &V {
        match self {
            ValueRef::Stored(v) => v,
            ValueRef::Packed(v) => v,
        }
    }
}

/// Up to this many literal children are an unsorted exact-size list scanned
/// linearly; above it they become an open-addressing table.
const SMALL_MAX: usize = 8;
/// A table shrinks back to a list once it holds this few children.
const SMALL_BACK: usize = 4;
/// Smallest table capacity (slots), a power of two.
const TABLE_MIN: usize = 32;

/// Labels up to this length are stored inside the node without a heap allocation:
/// what fits beside the tag and length in 16 bytes. A device's compressed
/// `<id>/cmd` below `dev` fits up to 10-byte ids.
const INLINE_MAX: usize = 14;

/// One level's bytes (or a compressed chain of levels). 16 bytes whether inline or
/// on the heap: a thin pointer, since a fat `Box<[u8]>` would make every node 8 bytes
/// larger for the few labels that do not fit inline.
enum Label {
    Inline { len: u8, bytes: [u8; INLINE_MAX] },
    Heap(ThinVec<u8>),
}

impl Label {
    fn new(level: &[u8]) -> Self {
        if level.len() <= INLINE_MAX {
            let mut bytes = [0; INLINE_MAX];
            bytes[..level.len()].copy_from_slice(level);
            Label::Inline {
                len: level.len() as u8,
                bytes,
            }
        } else {
            Label::Heap(ThinVec::from(level))
        }
    }

    /// `self.as_bytes() == level`, without a `memcmp` call for inline labels: the
    /// topic walk compares one label per level of every PUBLISH.
    #[inline(always)]
    fn is(&self, level: &[u8]) -> bool {
        match self {
            Label::Inline { len, bytes } => {
                let n = usize::from(*len);
                n == level.len() && n <= INLINE_MAX && short_eq(&bytes[..n], level)
            }
            Label::Heap(b) => b.as_slice() == level,
        }
    }

    /// `self.first_level() == level`: how insertion and removal find a child.
    fn first_level_is(&self, level: &[u8]) -> bool {
        let b = self.as_bytes();
        match b.len().cmp(&level.len()) {
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => self.is(level),
            std::cmp::Ordering::Greater => b[level.len()] == b'/' && b[..level.len()] == *level,
        }
    }

    /// Whether the label holds more than one level (a compressed chain).
    fn is_multi(&self) -> bool {
        find_slash(self.as_bytes()).is_some()
    }

    /// The label's first level: the one its parent finds it by.
    fn first_level(&self) -> &[u8] {
        let b = self.as_bytes();
        match find_slash(b) {
            Some(i) => &b[..i],
            None => b,
        }
    }

    /// The topic walk's compare: `level` is the topic's level at `pos` and `next` the
    /// position after it. A one-level label must equal `level`; a compressed label
    /// (several levels) must equal the topic's next levels. `Some(position after
    /// the label)` on a match.
    #[inline(always)]
    fn consumes(&self, topic: &[u8], pos: usize, level: &[u8], next: usize) -> Option<usize> {
        match self {
            Label::Inline { len, bytes } => {
                let n = usize::from(*len);
                if n == level.len() {
                    return (n <= INLINE_MAX && short_eq(&bytes[..n], level)).then_some(next);
                }
                if n < level.len() || n > INLINE_MAX {
                    return None;
                }
                let end = pos + n;
                let t = topic.get(pos..end)?;
                if !short_eq(&bytes[..n], t) {
                    return None;
                }
                after_levels(topic, end)
            }
            Label::Heap(b) => {
                if b.len() == level.len() {
                    return (b.as_slice() == level).then_some(next);
                }
                let end = pos + b.len();
                if topic.get(pos..end)? != b.as_slice() {
                    return None;
                }
                after_levels(topic, end)
            }
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            // `len <= INLINE_MAX` by construction; `get` keeps this panic-free regardless.
            Label::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(&[]),
            Label::Heap(b) => b,
        }
    }
}

/// `a == b` for equal-length slices of at most `INLINE_MAX` bytes, as overlapping
/// word compares (first and last 8 or 4 bytes, plus the middle 8 above 16 bytes).
#[inline(always)]
fn short_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let w8 = |s: &[u8], i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&s[i..i + 8]);
        u64::from_le_bytes(w)
    };
    let w4 = |s: &[u8], i: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&s[i..i + 4]);
        u32::from_le_bytes(w)
    };
    if n >= 8 {
        let mid = if n > 16 { w8(a, 8) == w8(b, 8) } else { true };
        w8(a, 0) == w8(b, 0) && w8(a, n - 8) == w8(b, n - 8) && mid
    } else if n >= 4 {
        w4(a, 0) == w4(b, 0) && w4(a, n - 4) == w4(b, n - 4)
    } else {
        a == b
    }
}

/// Where the walk goes on after a compressed label ending at `end` matched: the
/// topic ends there, or a level boundary follows (else the label's last level was
/// only a prefix of the topic's).
#[inline]
fn after_levels(topic: &[u8], end: usize) -> Option<usize> {
    match topic.get(end) {
        None => Some(topic.len() + 1),
        Some(b'/') => Some(end + 1),
        Some(_) => None,
    }
}

const EMPTY_LABEL: Label = Label::Inline {
    len: 0,
    bytes: [0; INLINE_MAX],
};

/// A `Node::kids` at or above this (and not `NONE`) names a `Kids` entry in
/// `TopicTrie::kid_sets` rather than the only child. Node indices never get here
/// (2^31 nodes would take 64 GB), nor do entry indices (far fewer than nodes).
const MANY: Idx = 1 << 31;

/// 32 bytes: every subscription of its own (a device's `dev/<id>/cmd`) is one leaf
/// node on every loop, so the node size is most of what a route row costs. A chunk
/// of `CHUNK_LEN` nodes fits the 32 KiB allocator size class. Values live in a
/// separate arena so the node size does not depend on `V` and intermediate nodes
/// pay 4 bytes, not `size_of::<Option<V>>()`, per slot; several children live in
/// `kid_sets` so a leaf pays 4 bytes for having none.
struct Node {
    /// This node's own level (`+` for a plus child), or several literal levels joined
    /// by `/` (a compressed chain); the root's is empty.
    label: Label,
    /// The literal children: `NONE`, the only child (below `MANY`: the common case,
    /// `dev/<id>/cmd`, needs no allocation and no hashing), or `MANY + i` for
    /// two or more, kept in `kid_sets[i]`.
    kids: Idx,
    /// Value of the key ending at this node.
    value: Idx,
    /// Value of the key `<this node's path>/#`: `#` is always last, so it needs no node.
    /// On a free node: the next free node.
    hash: Idx,
    /// The `+` child.
    plus: Idx,
}

impl Node {
    fn new(level: &[u8]) -> Self {
        Node {
            label: Label::new(level),
            kids: NONE,
            value: NONE,
            hash: NONE,
            plus: NONE,
        }
    }

    /// The only literal child, if there is exactly one.
    #[inline(always)]
    fn only_child(&self) -> Option<Idx> {
        (self.kids < MANY).then_some(self.kids)
    }

    fn is_prunable(&self) -> bool {
        self.value == NONE && self.hash == NONE && self.plus == NONE && self.kids == NONE
    }
}

/// Where a key's value sits: a node's own slot or its `#` slot.
#[derive(Clone, Copy)]
enum Slot {
    Value(Idx),
    Hash(Idx),
}

/// A trie over `/`-separated levels mapping keys to values `V`.
///
/// Used two ways: keys are *filters* (subscriptions; `for_each_match` finds the
/// values of every filter matching a topic name), or keys are *topic names*
/// (retained messages; `for_each_matching_filter` finds every name a filter matches).
/// Empty nodes are pruned on removal so memory follows the live key count.
///
/// Keys are arbitrary bytes. Only whole levels are wildcards: `+` anywhere, `#` as
/// the last level; anything else is literal (the same rules as [`super::matches`]).
pub struct TopicTrie<V, P = Unpacked> {
    chunks: Vec<Vec<Node>>,
    /// Head of the free-node list (linked through `Node::hash`).
    free: Idx,
    live_nodes: usize,
    /// The children of nodes with two or more literal children (see `Node::kids`).
    kid_sets: ChunkSlab<children::Kids>,
    /// Values by index, so a node pays 4 bytes, not `size_of::<Option<V>>()`, per slot.
    values: ChunkSlab<V>,
    /// Values kept in their node's slot (see [`Pack`]).
    packed: usize,
    hasher: ahash::RandomState,
    pack: P,
}

impl<V> Default for TopicTrie<V> {
    fn default() -> Self {
        Self::new()
    }
}

/// Position of the next level in a topic/filter being matched: a byte offset, or
/// `len + 1` once every level is consumed (`len` itself is a trailing empty level).
#[inline]
fn level_at(s: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let rest = s.get(pos..)?;
    Some(match find_slash(rest) {
        Some(i) => (&rest[..i], pos + i + 1),
        None => (rest, s.len() + 1),
    })
}

/// Position of the first `/` in `s`, eight bytes per step (SWAR: a byte of
/// `w ^ 0x2f2f..` is zero exactly where `w` holds `/`), since every publish splits
/// its topic into levels this way.
#[inline]
fn find_slash(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut chunks = s.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ (ONES * u64::from(b'/'));
        // Exact for the lowest zero byte, which is the one reported.
        let zero = x.wrapping_sub(ONES) & !x & HIGHS;
        if zero != 0 {
            return Some(at + (zero.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == b'/')
        .map(|i| at + i)
}

/// `+` or `#`: a level that never joins a compressed label.
fn is_wild(level: &[u8]) -> bool {
    level == b"+" || level == b"#"
}

/// The run of literal levels of `key` from `pos`, whose first level (`level`,
/// ending before `next`) is what a new node is attached by: (end of the run, key
/// position after it). A wildcard level (`+`, or `#` anywhere) stands alone.
fn literal_run(key: &[u8], pos: usize, level: &[u8], next: usize) -> (usize, usize) {
    let mut end = pos + level.len();
    let mut after = next;
    if is_wild(level) {
        return (end, after);
    }
    while let Some((l, n)) = level_at(key, after) {
        if is_wild(l) {
            break;
        }
        end = after + l.len();
        after = n;
    }
    (end, after)
}

/// Does the filter from `pos` match zero levels? (Exhausted, or exactly a final `#`.)
fn rest_matches_nothing(filter: &[u8], pos: usize) -> bool {
    match level_at(filter, pos) {
        None => true,
        Some((level, next)) => level == b"#" && next > filter.len(),
    }
}

/// A pending node in `for_each_matching_filter`'s walk.
#[derive(Clone, Copy)]
struct NameFrame {
    node: Idx,
    /// Next filter level to match, or `usize::MAX` to emit the whole subtree.
    filter_pos: usize,
    /// Length of the parent's name (with its trailing `/`) in the name buffer.
    parent_len: usize,
}

const DUMP: usize = usize::MAX;

impl<V> TopicTrie<V> {
    /// An empty trie keeping every value in the slab.
    pub fn new() -> Self {
        Self::with_pack(Unpacked)
    }
}

impl<V, P: Pack<V>> TopicTrie<V, P> {
    /// An empty trie packing values with `pack`.
    pub fn with_pack(pack: P) -> Self {
        let mut chunks = Vec::new();
        push_chunked(&mut chunks, Node::new(b""));
        TopicTrie {
            chunks,
            free: NONE,
            live_nodes: 1,
            kid_sets: ChunkSlab::new(),
            values: ChunkSlab::new(),
            packed: 0,
            hasher: ahash::RandomState::new(),
            pack,
        }
    }

    /// Number of keys with a value.
    pub fn len(&self) -> usize {
        self.values.len() + self.packed
    }

    /// Values kept packed in their node (see [`Pack`]), for tests and metrics.
    pub fn packed_len(&self) -> usize {
        self.packed
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live trie nodes, the root included (1 when empty). For memory metrics and tests.
    pub fn node_count(&self) -> usize {
        self.live_nodes
    }

    /// Bytes the keys take beyond an empty trie, estimated: their nodes, the kid
    /// sets of nodes with several children and slab values (packed values cost
    /// nothing beyond their node). Labels longer than a node's inline room, the
    /// kid sets' slot arrays and whatever a value owns on the heap are not counted.
    pub fn approx_bytes(&self) -> usize {
        (self.live_nodes - 1) * std::mem::size_of::<Node>()
            + self.kid_sets.len() * std::mem::size_of::<children::Kids>()
            + self.values.len() * std::mem::size_of::<V>()
    }

    pub fn get(&self, key: &[u8]) -> Option<ValueRef<'_, V>> {
        self.load(self.slot_value(self.find(key)?))
    }

    /// Runs `f` on the value at `key`, if there is one, and stores it back packed or
    /// in the slab, whichever it now fits.
    pub fn update<R>(&mut self, key: &[u8], f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let slot = self.find(key)?;
        self.modify(slot, None::<fn() -> V>, f)
    }

    /// As `update`, inserting `make()` first when `key` has no value.
    pub fn upsert<R>(
        &mut self,
        key: &[u8],
        make: impl FnOnce() -> V,
        f: impl FnOnce(&mut V) -> R,
    ) -> R {
        let slot = self.find_or_create(key);
        match self.modify(slot, Some(make), f) {
            Some(r) => r,
            // `make` is given, so `modify` always has a value to run `f` on.
            None => unreachable!("upsert without a value"),
        }
    }

    /// Sets `key` to `value`, returning the previous value.
    pub fn insert(&mut self, key: &[u8], value: V) -> Option<V> {
        let slot = self.find_or_create(key);
        let old = self.take_slot(slot);
        self.store(slot, value);
        old
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        // The path from the root, to prune bottom-up afterwards.
        let mut path: SmallVec<[Idx; 16]> = SmallVec::new();
        let slot = self.find_with(key, |n| path.push(n))?;
        let value = self.take_slot(slot)?;
        // A `#` slot lives on `node` itself, so both kinds prune from `node`.
        let (Slot::Value(node) | Slot::Hash(node)) = slot;
        if node != ROOT {
            path.pop();
        }
        self.prune(node, &path);
        Some(value)
    }

    /// Keys are filters: calls `f(value)` for every stored filter matching `topic`.
    ///
    /// Each matching filter is reported once. A topic starting with `$` is not
    /// matched by filters whose first level is a wildcard. Allocates nothing for
    /// topics up to 8 levels deep.
    pub fn for_each_match(&self, topic: &[u8], mut f: impl FnMut(&V)) {
        let dollar = topic.first() == Some(&b'$');
        // Only `+` branches wait on the stack; the literal path is followed in place,
        // so a topic matched by literal filters alone pushes nothing. The visit order
        // is the same depth-first order (literal subtree first, then `+`).
        let mut stack: SmallVec<[(Idx, usize); 8]> = SmallVec::new();
        let (mut n, mut pos) = (ROOT, 0);
        loop {
            let node = self.node(n);
            match level_at(topic, pos) {
                None => {
                    // Topic exhausted: the filter ending here, and `<here>/#` (zero levels).
                    self.emit(node.value, &mut f);
                    self.emit(node.hash, &mut f);
                }
                Some((level, next)) => {
                    if !(dollar && n == ROOT) {
                        self.emit(node.hash, &mut f);
                        if node.plus != NONE {
                            stack.push((node.plus, next));
                        }
                    }
                    // Literal only: a topic level `+` must not reach the plus child twice.
                    // The single-child case inline: it is most of a topic's levels.
                    let c = if let Some(one) = node.only_child() {
                        self.node(one)
                            .label
                            .consumes(topic, pos, level, next)
                            .map(|p| (one, p))
                    } else {
                        self.literal_child_at(node, topic, pos, level, next)
                    };
                    if let Some(c) = c {
                        (n, pos) = c;
                        continue;
                    }
                }
            }
            match stack.pop() {
                Some(frame) => (n, pos) = frame,
                None => return,
            }
        }
    }

    /// Keys are topic names: calls `f(name, value)` for every stored name `filter` matches.
    pub fn for_each_matching_filter(&self, filter: &[u8], f: impl FnMut(&[u8], &V)) {
        let mut buf = Vec::new();
        self.for_each_matching_filter_with(filter, &mut buf, f);
    }

    /// As `for_each_matching_filter`, building names in `buf` (cleared first) so a
    /// caller can reuse one buffer across calls.
    pub fn for_each_matching_filter_with(
        &self,
        filter: &[u8],
        buf: &mut Vec<u8>,
        mut f: impl FnMut(&[u8], &V),
    ) {
        self.walk_filter(filter, buf, |name, _, v| {
            f(name, v);
            true
        });
    }

    /// The filter walk behind `for_each_matching_filter_with` and `matching_keys`:
    /// `f(name, value key, value)` returns whether to go on; `false` from the walk
    /// when `f` stopped it.
    fn walk_filter(
        &self,
        filter: &[u8],
        buf: &mut Vec<u8>,
        mut f: impl FnMut(&[u8], Idx, &V) -> bool,
    ) -> bool {
        buf.clear();
        let mut stack: SmallVec<[NameFrame; 16]> = SmallVec::new();
        stack.push(NameFrame {
            node: ROOT,
            filter_pos: 0,
            parent_len: 0,
        });
        while let Some(frame) = stack.pop() {
            let n = frame.node;
            let node = self.node(n);
            // The buffer holds the node's name followed by '/'; the root has none.
            buf.truncate(frame.parent_len);
            if n != ROOT {
                buf.extend_from_slice(node.label.as_bytes());
                buf.push(b'/');
            }
            let here = buf.len();
            let Some(filter_pos) = self.past_label(node, filter, frame.filter_pos) else {
                continue;
            };
            let frame = NameFrame {
                filter_pos,
                ..frame
            };
            if frame.filter_pos == DUMP {
                if !self.emit_keyed(node.value, buf, &mut f) {
                    return false;
                }
                if !self.emit_hash_keyed(node.hash, buf, &mut f) {
                    return false;
                }
                self.push_children(n, DUMP, here, false, &mut stack);
                continue;
            }
            let Some((level, next)) = level_at(filter, frame.filter_pos) else {
                if !self.emit_keyed(node.value, buf, &mut f) {
                    return false;
                }
                continue;
            };
            // MQTT §4.7.2: leading wildcards skip `$` names.
            let skip_dollar = n == ROOT;
            if level == b"#" && next > filter.len() {
                // Zero levels (this node's own name), then every descendant.
                if !self.emit_keyed(node.value, buf, &mut f) {
                    return false;
                }
                if !self.emit_hash_keyed(node.hash, buf, &mut f) {
                    return false;
                }
                self.push_children(n, DUMP, here, skip_dollar, &mut stack);
            } else if level == b"+" {
                if rest_matches_nothing(filter, next)
                    && !self.emit_hash_keyed(node.hash, buf, &mut f)
                {
                    return false;
                }
                self.push_children(n, next, here, skip_dollar, &mut stack);
            } else {
                // A literal level; a non-final `#` is literal too and can match a
                // stored name's final `#` level if the filter then ends or ends in `#`.
                if level == b"#"
                    && rest_matches_nothing(filter, next)
                    && !self.emit_hash_keyed(node.hash, buf, &mut f)
                {
                    return false;
                }
                let c = self.literal_child(n, level);
                if c != NONE {
                    stack.push(NameFrame {
                        node: c,
                        filter_pos: next,
                        parent_len: here,
                    });
                }
            }
        }
        true
    }

    /// A frame reaches a node with its label's first level matched; a compressed
    /// label's other levels must match the filter from `filter_pos` too. The filter
    /// position after the label (`DUMP` when a final `#` covers the rest), or `None`.
    /// Levels inside a label hold no value, so a filter ending inside one matches
    /// nothing there.
    fn past_label(&self, node: &Node, filter: &[u8], filter_pos: usize) -> Option<usize> {
        if filter_pos == DUMP || !node.label.is_multi() {
            return Some(filter_pos);
        }
        let label = node.label.as_bytes();
        let mut fpos = filter_pos;
        let mut lpos = node.label.first_level().len() + 1;
        loop {
            let (lvl, lnext) = match level_at(label, lpos) {
                Some(x) => x,
                None => return Some(fpos),
            };
            let (f, fnext) = level_at(filter, fpos)?;
            if f == b"#" && fnext > filter.len() {
                return Some(DUMP);
            }
            if f != b"+" && f != lvl {
                return None;
            }
            (fpos, lpos) = (fnext, lnext);
        }
    }

    /// Every key and value, in no particular order.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &V)) {
        let mut buf = Vec::new();
        let mut stack: SmallVec<[NameFrame; 16]> = SmallVec::new();
        stack.push(NameFrame {
            node: ROOT,
            filter_pos: DUMP,
            parent_len: 0,
        });
        while let Some(frame) = stack.pop() {
            let n = frame.node;
            let node = self.node(n);
            buf.truncate(frame.parent_len);
            if n != ROOT {
                buf.extend_from_slice(node.label.as_bytes());
                buf.push(b'/');
            }
            self.emit_named(node.value, &buf, &mut f);
            self.emit_hash_leaf(node.hash, &mut buf, &mut f);
            self.push_children(n, DUMP, buf.len(), false, &mut stack);
        }
    }

    // ---- walking helpers ----

    // Always inlined: with the caller's closure in it, the compiler would otherwise
    // keep it out of line (a call per matching filter on every publish).
    #[inline(always)]
    fn emit(&self, idx: Idx, f: &mut impl FnMut(&V)) {
        if idx == NONE {
            return;
        }
        if idx < PACKED {
            if let Some(v) = self.values.get(idx as usize) {
                f(v);
            }
        } else if let Some(v) = self.pack.unpack(idx - PACKED) {
            f(&v);
        }
    }

    /// The value in a slot (`NONE`, a slab index or a packed value).
    #[inline]
    fn load(&self, idx: Idx) -> Option<ValueRef<'_, V>> {
        if idx < PACKED {
            self.values.get(idx as usize).map(ValueRef::Stored)
        } else if idx != NONE {
            self.pack.unpack(idx - PACKED).map(ValueRef::Packed)
        } else {
            None
        }
    }

    /// Takes the value out of `slot`, leaving it empty.
    fn take_slot(&mut self, slot: Slot) -> Option<V> {
        let idx = self.slot_value(slot);
        let v = if idx < PACKED {
            self.values.remove(idx as usize)
        } else if idx != NONE {
            self.packed -= 1;
            self.pack.unpack(idx - PACKED)
        } else {
            None
        };
        self.set_slot(slot, NONE);
        v
    }

    /// Stores `v` in the empty `slot`: packed if it fits, else in the slab.
    fn store(&mut self, slot: Slot, v: V) {
        let idx = match self.pack.pack(&v).filter(|b| *b <= PACKED_MAX) {
            Some(bits) => {
                self.packed += 1;
                PACKED + bits
            }
            None => self.values.insert(v) as Idx,
        };
        self.set_slot(slot, idx);
    }

    /// `update`/`upsert` on a found slot: a slab value is changed in place and
    /// moved into the node if it now packs; a packed one is rebuilt, changed and
    /// stored back wherever it then fits. `None` when the slot is empty and there
    /// is no `make`.
    fn modify<R>(
        &mut self,
        slot: Slot,
        make: Option<impl FnOnce() -> V>,
        f: impl FnOnce(&mut V) -> R,
    ) -> Option<R> {
        let idx = self.slot_value(slot);
        if idx < PACKED {
            if let Some(v) = self.values.get_mut(idx as usize) {
                let r = f(v);
                if self.pack.pack(v).is_some_and(|b| b <= PACKED_MAX) {
                    if let Some(v) = self.values.remove(idx as usize) {
                        self.set_slot(slot, NONE);
                        self.store(slot, v);
                    }
                }
                return Some(r);
            }
        }
        let mut v = match self.take_slot(slot) {
            Some(v) => v,
            None => make?(),
        };
        let r = f(&mut v);
        self.store(slot, v);
        Some(r)
    }

    /// Emits `idx` under the name in `buf` minus its trailing '/'.
    fn emit_named(&self, idx: Idx, buf: &[u8], f: &mut impl FnMut(&[u8], &V)) {
        if let Some(v) = self.load(idx) {
            f(&buf[..buf.len().saturating_sub(1)], &v);
        }
    }

    /// Emits a `#` slot as the name in `buf` followed by a final `#` level.
    fn emit_hash_leaf(&self, idx: Idx, buf: &mut Vec<u8>, f: &mut impl FnMut(&[u8], &V)) {
        if let Some(v) = self.load(idx) {
            buf.push(b'#');
            f(buf, &v);
            buf.pop();
        }
    }

    /// `emit_named` for `walk_filter`: `false` when `f` stops the walk.
    fn emit_keyed(&self, idx: Idx, buf: &[u8], f: &mut impl FnMut(&[u8], Idx, &V) -> bool) -> bool {
        match self.load(idx) {
            Some(v) => f(&buf[..buf.len().saturating_sub(1)], idx, &v),
            None => true,
        }
    }

    /// `emit_hash_leaf` for `walk_filter`: `false` when `f` stops the walk.
    fn emit_hash_keyed(
        &self,
        idx: Idx,
        buf: &mut Vec<u8>,
        f: &mut impl FnMut(&[u8], Idx, &V) -> bool,
    ) -> bool {
        let Some(v) = self.load(idx) else {
            return true;
        };
        buf.push(b'#');
        let go_on = f(buf, idx, &v);
        buf.pop();
        go_on
    }

    fn push_children(
        &self,
        n: Idx,
        filter_pos: usize,
        parent_len: usize,
        skip_dollar: bool,
        stack: &mut SmallVec<[NameFrame; 16]>,
    ) {
        let node = self.node(n);
        if node.plus != NONE {
            stack.push(NameFrame {
                node: node.plus,
                filter_pos,
                parent_len,
            });
        }
        let set = self.kid_set(node).map_or(&[][..], |k| &k.slots[..]);
        let kids = set.iter().step_by(2);
        for &c in std::iter::once(&node.kids)
            .filter(|&&c| c < MANY)
            .chain(kids)
            .filter(|&&c| c != NONE)
        {
            if skip_dollar && self.node(c).label.as_bytes().first() == Some(&b'$') {
                continue;
            }
            stack.push(NameFrame {
                node: c,
                filter_pos,
                parent_len,
            });
        }
    }

    fn find(&self, key: &[u8]) -> Option<Slot> {
        self.find_with(key, |_| {})
    }

    /// `key`'s slot, if its path exists; `visit` sees every node of the path from the
    /// root, the slot's own node last.
    fn find_with(&self, key: &[u8], mut visit: impl FnMut(Idx)) -> Option<Slot> {
        let (mut node, mut pos) = (ROOT, 0);
        visit(ROOT);
        loop {
            let Some((level, next)) = level_at(key, pos) else {
                return Some(Slot::Value(node));
            };
            if level == b"#" && next > key.len() {
                return Some(Slot::Hash(node));
            }
            let c = self.child(node, level);
            if c == NONE {
                return None;
            }
            let (matched, after) = self.common_levels(c, key, pos);
            if matched < self.node(c).label.as_bytes().len() {
                return None;
            }
            visit(c);
            (node, pos) = (c, after);
        }
    }

    fn find_or_create(&mut self, key: &[u8]) -> Slot {
        let (mut node, mut pos) = (ROOT, 0);
        loop {
            let Some((level, next)) = level_at(key, pos) else {
                return Slot::Value(node);
            };
            if level == b"#" && next > key.len() {
                return Slot::Hash(node);
            }
            let c = self.child(node, level);
            if c == NONE {
                // One node for the whole run of literal levels from here: a
                // device's own `dev/<id>/cmd` then costs one node below `dev`.
                let (end, after) = literal_run(key, pos, level, next);
                let c = self.alloc(&key[pos..end]);
                self.attach(node, c, level);
                (node, pos) = (c, after);
                continue;
            }
            let (matched, after) = self.common_levels(c, key, pos);
            if matched < self.node(c).label.as_bytes().len() {
                self.split(c, matched);
            }
            (node, pos) = (c, after);
        }
    }

    /// How far `key` from `pos` follows the label of `c`, whose first level it
    /// matches already: (label bytes matched, whole levels only; the key position
    /// after them). A `+` or final `#` key level never matches inside a label.
    fn common_levels(&self, c: Idx, key: &[u8], pos: usize) -> (usize, usize) {
        let label = self.node(c).label.as_bytes();
        let Some((first, mut kpos)) = level_at(key, pos) else {
            return (0, pos);
        };
        let mut matched = first.len();
        while matched < label.len() {
            // `label[matched]` is a '/': the next label level starts after it.
            let (lvl, lnext) = match find_slash(&label[matched + 1..]) {
                Some(i) => (&label[matched + 1..matched + 1 + i], matched + 1 + i),
                None => (&label[matched + 1..], label.len()),
            };
            match level_at(key, kpos) {
                Some((k, knext)) if k == lvl => {
                    matched = lnext;
                    kpos = knext;
                }
                _ => break,
            }
        }
        (matched, kpos)
    }

    /// Splits the label of `c` after `at` bytes (a level boundary): `c` keeps the
    /// first part and everything below moves to a new only child holding the rest,
    /// so the parent's link (and tag: the first level is unchanged) stays valid.
    fn split(&mut self, c: Idx, at: usize) {
        let label = self.node(c).label.as_bytes();
        let (head, tail) = (Label::new(&label[..at]), label[at + 1..].to_vec());
        let d = self.alloc(&tail);
        let node = self.node_mut(c);
        let moved = Node {
            label: EMPTY_LABEL,
            kids: std::mem::replace(&mut node.kids, d),
            value: std::mem::replace(&mut node.value, NONE),
            hash: std::mem::replace(&mut node.hash, NONE),
            plus: std::mem::replace(&mut node.plus, NONE),
        };
        node.label = head;
        let below = self.node_mut(d);
        below.kids = moved.kids;
        below.value = moved.value;
        below.hash = moved.hash;
        below.plus = moved.plus;
    }

    /// Joins `n` with its only child when nothing else hangs at `n` (no value, `#`
    /// slot or `+` child), undoing a `split` once the branch that caused it is gone.
    /// Wildcard levels keep their own nodes: a `+` child is structural and a literal
    /// `#` level stays findable as itself.
    fn merge_with_child(&mut self, n: Idx) {
        let node = self.node(n);
        if n == ROOT
            || node.value != NONE
            || node.hash != NONE
            || node.plus != NONE
            || is_wild(node.label.as_bytes())
        {
            return;
        }
        let Some(d) = node.only_child() else {
            return;
        };
        let child = self.node(d);
        if is_wild(child.label.as_bytes()) {
            return;
        }
        let mut joined =
            Vec::with_capacity(node.label.as_bytes().len() + 1 + child.label.as_bytes().len());
        joined.extend_from_slice(node.label.as_bytes());
        joined.push(b'/');
        joined.extend_from_slice(child.label.as_bytes());
        let below = self.node_mut(d);
        let kids = std::mem::replace(&mut below.kids, NONE);
        let (value, hash, plus) = (below.value, below.hash, below.plus);
        let node = self.node_mut(n);
        node.label = Label::new(&joined);
        node.kids = kids;
        node.value = value;
        node.hash = hash;
        node.plus = plus;
        self.release(d);
    }

    fn slot_value(&self, slot: Slot) -> Idx {
        match slot {
            Slot::Value(n) => self.node(n).value,
            Slot::Hash(n) => self.node(n).hash,
        }
    }

    fn set_slot(&mut self, slot: Slot, idx: Idx) {
        match slot {
            Slot::Value(n) => self.node_mut(n).value = idx,
            Slot::Hash(n) => self.node_mut(n).hash = idx,
        }
    }

    /// Frees empty nodes from `node` upward, then joins the first one kept with its
    /// only child if it can (`merge_with_child`); `path` holds `node`'s ancestors,
    /// root first.
    fn prune(&mut self, mut node: Idx, path: &[Idx]) {
        for &parent in path.iter().rev() {
            if node == ROOT {
                return;
            }
            if !self.node(node).is_prunable() {
                self.merge_with_child(node);
                return;
            }
            self.detach(parent, node);
            self.release(node);
            node = parent;
        }
        self.merge_with_child(node);
    }

    // ---- arena ----

    fn node(&self, n: Idx) -> &Node {
        let (c, o) = chunk_of(n);
        &self.chunks[c][o]
    }

    fn node_mut(&mut self, n: Idx) -> &mut Node {
        let (c, o) = chunk_of(n);
        &mut self.chunks[c][o]
    }

    fn alloc(&mut self, level: &[u8]) -> Idx {
        self.live_nodes += 1;
        if self.free != NONE {
            let n = self.free;
            let node = self.node_mut(n);
            let next = node.hash;
            *node = Node::new(level);
            self.free = next;
            return n;
        }
        push_chunked(&mut self.chunks, Node::new(level))
    }

    fn release(&mut self, n: Idx) {
        self.live_nodes -= 1;
        let next = self.free;
        let node = self.node_mut(n);
        // Drop the label's heap memory now, not on reuse. A released node has no
        // children left (pruned) or has handed them to its parent (merged).
        node.label = EMPTY_LABEL;
        node.kids = NONE;
        node.value = NONE;
        node.plus = NONE;
        node.hash = next;
        self.free = n;
    }
}

/// Key-based access, for tries whose values all live in the slab: a value's key is
/// its slab index, stable while it is stored. References into the slab stay valid
/// here because nothing is ever moved into a node.
impl<V> TopicTrie<V, Unpacked> {
    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let idx = self.slot_value(self.find(key)?);
        self.values.get_mut(idx as usize)
    }

    /// The value at `key`, inserted with `make` if absent.
    pub fn entry_or_insert_with(&mut self, key: &[u8], make: impl FnOnce() -> V) -> &mut V {
        let slot = self.find_or_create(key);
        let mut idx = self.slot_value(slot);
        if self.values.get(idx as usize).is_none() {
            idx = self.values.insert(make()) as Idx;
            self.set_slot(slot, idx);
        }
        match self.values.get_mut(idx as usize) {
            Some(v) => v,
            // `idx` was found or inserted just above.
            None => unreachable!("value {idx} vanished"),
        }
    }

    /// Keys are topic names: appends to `out` the value keys (see [`Self::value_at`])
    /// of the names `filter` matches, at most `max` of them. `false` when more match
    /// than that (the walk stops there, so a broad filter over a large set costs
    /// `max` visits, not one per name).
    pub fn matching_keys(&self, filter: &[u8], max: usize, out: &mut Vec<u32>) -> bool {
        let mut buf = Vec::new();
        self.walk_filter(filter, &mut buf, |_, key, _| {
            if out.len() >= max {
                return false;
            }
            out.push(key);
            true
        })
    }

    /// The value stored under `key` (a value key from `matching_keys` or
    /// `next_value_from`): keys are stable while the value is stored; a removed
    /// value's key may be reused by a later insert.
    pub fn value_at(&self, key: u32) -> Option<&V> {
        self.values.get(key as usize)
    }

    /// The first stored value whose key is `key` or above, in key order: a walk
    /// over every value that can be resumed after the trie changed.
    pub fn next_value_from(&self, key: usize) -> Option<(usize, &V)> {
        self.values.next_from(key)
    }
}

#[cfg(test)]
mod tests;
