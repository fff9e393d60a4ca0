//! The topic trie: filters (with `+`/`#`) or names as paths of levels in an arena of
//! nodes, answering "which filters match this topic" and "which names match this filter".
//! Children are a short list or, past a size, an open-addressing table (`children`);
//! tests in `trie/tests.rs`.

use smallvec::SmallVec;

use crate::arena::{chunk_of, push_chunked, ChunkSlab};

mod children;

/// Index of a node in the arena, or of a value in the value slab.
type Idx = u32;
/// "No node" / "no value". Indices are u32 to halve link size; 4G nodes would need
/// hundreds of GB, so memory runs out long before an index could reach this.
const NONE: Idx = crate::arena::NIL;
const ROOT: Idx = 0;

/// Up to this many literal children are an unsorted exact-size list scanned
/// linearly; above it they become an open-addressing table.
const SMALL_MAX: usize = 8;
/// A table shrinks back to a list once it holds this few children.
const SMALL_BACK: usize = 4;
/// Smallest table capacity (slots), a power of two.
const TABLE_MIN: usize = 32;

/// Levels up to this length are stored inside the node without a heap allocation.
const INLINE_MAX: usize = 22;

/// One level's bytes. 24 bytes whether inline or boxed.
enum Label {
    Inline { len: u8, bytes: [u8; INLINE_MAX] },
    Heap(Box<[u8]>),
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
            Label::Heap(level.into())
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
            Label::Heap(b) => **b == *level,
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

const EMPTY_LABEL: Label = Label::Inline {
    len: 0,
    bytes: [0; INLINE_MAX],
};

/// 64 bytes, so a chunk of `CHUNK_LEN` nodes fits the 64 KiB allocator size class. Values live in a separate arena so the node size does not depend on `V`
/// and intermediate nodes pay 4 bytes, not `size_of::<Option<V>>()`, per slot.
struct Node {
    /// This node's own level (`+` for a plus child); the root's is empty.
    label: Label,
    /// Literal children when there are 2 or more, as `[child, tag]` pairs (`tag` is
    /// the child label's 32-bit hash, compared before the label to skip wrong
    /// candidates without visiting them). Up to `SMALL_MAX` children: an exact-size
    /// list. Above: a power-of-two open-addressing table (linear probing, home slot
    /// `tag & mask`, child `NONE` = empty), 8 bytes per slot and no duplicated label.
    kids: Box<[Idx]>,
    /// The only literal child, when there is exactly one: the common case
    /// (`dev/<id>/cmd`) then needs no allocation and no hashing.
    one: Idx,
    child_count: u32,
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
            kids: Box::default(),
            one: NONE,
            child_count: 0,
            value: NONE,
            hash: NONE,
            plus: NONE,
        }
    }

    fn is_table(&self) -> bool {
        self.kids.len() > 2 * SMALL_MAX
    }

    fn is_prunable(&self) -> bool {
        self.value == NONE && self.hash == NONE && self.plus == NONE && self.child_count == 0
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
pub struct TopicTrie<V> {
    chunks: Vec<Vec<Node>>,
    /// Head of the free-node list (linked through `Node::hash`).
    free: Idx,
    live_nodes: usize,
    /// Values by index, so a node pays 4 bytes, not `size_of::<Option<V>>()`, per slot.
    values: ChunkSlab<V>,
    hasher: ahash::RandomState,
}

impl<V> Default for TopicTrie<V> {
    fn default() -> Self {
        Self::new()
    }
}

/// Iterates the levels of a key or topic; `next` also says whether the level is last.
struct Levels<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Levels<'a> {
    fn new(s: &'a [u8]) -> Self {
        Levels { rest: Some(s) }
    }
}

impl<'a> Iterator for Levels<'a> {
    type Item = (&'a [u8], bool);

    fn next(&mut self) -> Option<Self::Item> {
        let s = self.rest?;
        match s.iter().position(|&b| b == b'/') {
            Some(i) => {
                self.rest = Some(&s[i + 1..]);
                Some((&s[..i], false))
            }
            None => {
                self.rest = None;
                Some((s, true))
            }
        }
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
    pub fn new() -> Self {
        let mut chunks = Vec::new();
        push_chunked(&mut chunks, Node::new(b""));
        TopicTrie {
            chunks,
            free: NONE,
            live_nodes: 1,
            values: ChunkSlab::new(),
            hasher: ahash::RandomState::new(),
        }
    }

    /// Number of keys with a value.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live trie nodes, the root included (1 when empty). For memory metrics and tests.
    pub fn node_count(&self) -> usize {
        self.live_nodes
    }

    /// Bytes the keys take beyond an empty trie, estimated: their nodes and values
    /// inline. Labels longer than a node's inline room, child tables and whatever a
    /// value owns on the heap are not counted.
    pub fn approx_bytes(&self) -> usize {
        (self.live_nodes - 1) * std::mem::size_of::<Node>()
            + self.values.len() * std::mem::size_of::<V>()
    }

    pub fn get(&self, key: &[u8]) -> Option<&V> {
        let idx = self.slot_value(self.find(key)?);
        self.values.get(idx as usize)
    }

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

    /// Sets `key` to `value`, returning the previous value.
    pub fn insert(&mut self, key: &[u8], value: V) -> Option<V> {
        let slot = self.find_or_create(key);
        let idx = self.slot_value(slot);
        if let Some(old) = self.values.get_mut(idx as usize) {
            return Some(std::mem::replace(old, value));
        }
        let idx = self.values.insert(value) as Idx;
        self.set_slot(slot, idx);
        None
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        // The path from the root, to prune bottom-up afterwards.
        let mut path: SmallVec<[Idx; 16]> = SmallVec::new();
        let mut node = ROOT;
        let mut slot = None;
        for (level, is_last) in Levels::new(key) {
            if is_last && level == b"#" {
                slot = Some(Slot::Hash(node));
                break;
            }
            path.push(node);
            node = self.child(node, level);
            if node == NONE {
                return None;
            }
        }
        let slot = slot.unwrap_or(Slot::Value(node));
        let idx = self.slot_value(slot);
        let value = self.values.remove(idx as usize)?;
        self.set_slot(slot, NONE);
        // A `#` slot lives on `node` itself, so both kinds prune from `node`.
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
                    let c = if node.one != NONE {
                        if self.node(node.one).label.is(level) {
                            node.one
                        } else {
                            NONE
                        }
                    } else {
                        self.literal_child_of(node, level)
                    };
                    if c != NONE {
                        (n, pos) = (c, next);
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
        if let Some(v) = self.values.get(idx as usize) {
            f(v);
        }
    }

    /// Emits `idx` under the name in `buf` minus its trailing '/'.
    fn emit_named(&self, idx: Idx, buf: &[u8], f: &mut impl FnMut(&[u8], &V)) {
        if let Some(v) = self.values.get(idx as usize) {
            f(&buf[..buf.len().saturating_sub(1)], v);
        }
    }

    /// Emits a `#` slot as the name in `buf` followed by a final `#` level.
    fn emit_hash_leaf(&self, idx: Idx, buf: &mut Vec<u8>, f: &mut impl FnMut(&[u8], &V)) {
        if let Some(v) = self.values.get(idx as usize) {
            buf.push(b'#');
            f(buf, v);
            buf.pop();
        }
    }

    /// `emit_named` for `walk_filter`: `false` when `f` stops the walk.
    fn emit_keyed(&self, idx: Idx, buf: &[u8], f: &mut impl FnMut(&[u8], Idx, &V) -> bool) -> bool {
        match self.values.get(idx as usize) {
            Some(v) => f(&buf[..buf.len().saturating_sub(1)], idx, v),
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
        let Some(v) = self.values.get(idx as usize) else {
            return true;
        };
        buf.push(b'#');
        let go_on = f(buf, idx, v);
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
        let kids = node.kids.iter().step_by(2);
        for &c in std::iter::once(&node.one)
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
        let mut node = ROOT;
        for (level, is_last) in Levels::new(key) {
            if is_last && level == b"#" {
                return Some(Slot::Hash(node));
            }
            node = self.child(node, level);
            if node == NONE {
                return None;
            }
        }
        Some(Slot::Value(node))
    }

    fn find_or_create(&mut self, key: &[u8]) -> Slot {
        let mut node = ROOT;
        for (level, is_last) in Levels::new(key) {
            if is_last && level == b"#" {
                return Slot::Hash(node);
            }
            let c = self.child(node, level);
            node = if c != NONE {
                c
            } else {
                let c = self.alloc(level);
                self.attach(node, c, level);
                c
            };
        }
        Slot::Value(node)
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

    /// Frees empty nodes from `node` upward; `path` holds its ancestors, root first.
    fn prune(&mut self, mut node: Idx, path: &[Idx]) {
        for &parent in path.iter().rev() {
            if node == ROOT || !self.node(node).is_prunable() {
                return;
            }
            self.detach(parent, node);
            self.release(node);
            node = parent;
        }
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
        // Drop the label's and children's heap memory now, not on reuse.
        node.label = EMPTY_LABEL;
        node.kids = Box::default();
        node.one = NONE;
        node.child_count = 0;
        node.value = NONE;
        node.plus = NONE;
        node.hash = next;
        self.free = n;
    }
}

#[cfg(test)]
mod tests;
