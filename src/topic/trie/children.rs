//! The trie's children: how a node finds, attaches and detaches a child by level.
//! One child is the node's own `kids` link; two or more are a [`Kids`] entry in the
//! trie's `kid_sets`: a short unsorted list up to `SMALL_MAX` children and an
//! open-addressing table keyed by the hash of the child label's first level above
//! it (a compressed label is found by its first level). Split out of `topic/trie.rs`.

use super::*;

/// The literal children of a node with two or more, as `[child, tag]` pairs in
/// `slots` (`tag` is the child label's 32-bit hash, compared before the label to
/// skip wrong candidates without visiting them). Up to `SMALL_MAX` children: an
/// exact-size list. Above: a power-of-two open-addressing table (linear probing,
/// home slot `tag & mask`, child `NONE` = empty), 8 bytes per slot and no
/// duplicated label. Kept outside the node so that leaves, most nodes, do not
/// carry the 16-byte slice and the count.
pub(super) struct Kids {
    pub(super) slots: Box<[Idx]>,
    count: u32,
}

impl Kids {
    fn is_table(&self) -> bool {
        self.slots.len() > 2 * SMALL_MAX
    }
}

impl<V, P: Pack<V>> TopicTrie<V, P> {
    /// A label's 32-bit hash: the table's home slot is `tag & mask`, so tables
    /// rehash and shift entries without visiting the child nodes.
    pub(super) fn tag(&self, label: &[u8]) -> Idx {
        self.hasher.hash_one(label) as Idx
    }

    /// The children of `node` when it has two or more.
    #[inline(always)]
    pub(super) fn kid_set(&self, node: &Node) -> Option<&Kids> {
        match node.kids {
            NONE => None,
            k if k >= MANY => self.kid_sets.get((k - MANY) as usize),
            _ => None,
        }
    }

    /// The child of `n` for `level` (`+` is the plus child), or `NONE`.
    pub(super) fn child(&self, n: Idx, level: &[u8]) -> Idx {
        if level == b"+" {
            return self.node(n).plus;
        }
        self.literal_child(n, level)
    }

    /// The literal child of `n` labelled `level`, or `NONE`; never the plus child.
    pub(super) fn literal_child(&self, n: Idx, level: &[u8]) -> Idx {
        self.literal_child_of(self.node(n), level)
    }

    /// As `literal_child`, given the node itself.
    pub(super) fn literal_child_of(&self, node: &Node, level: &[u8]) -> Idx {
        if let Some(one) = node.only_child() {
            let hit = self.node(one).label.first_level_is(level);
            return if hit { one } else { NONE };
        }
        self.find_kid(node, level, |c| {
            self.node(c).label.first_level_is(level).then_some(c)
        })
        .unwrap_or(NONE)
    }

    /// The topic walk's lookup among several children: the child whose label the
    /// topic continues with at `pos` (`level` is its level there, `next` the
    /// position after it), and the position after that label.
    #[inline]
    pub(super) fn literal_child_at(
        &self,
        node: &Node,
        topic: &[u8],
        pos: usize,
        level: &[u8],
        next: usize,
    ) -> Option<(Idx, usize)> {
        self.find_kid(node, level, |c| {
            let p = self.node(c).label.consumes(topic, pos, level, next)?;
            Some((c, p))
        })
    }

    /// Probes the children of `node` (two or more, in its `Kids`) whose tag is that
    /// of `level`, returning the first for which `hit` says yes.
    #[inline(always)]
    fn find_kid<T>(&self, node: &Node, level: &[u8], hit: impl Fn(Idx) -> Option<T>) -> Option<T> {
        let kids = self.kid_set(node)?;
        let tag = self.tag(level);
        let slots = &kids.slots;
        if !kids.is_table() {
            return pairs(slots).find_map(|p| if p[1] == tag { hit(p[0]) } else { None });
        }
        let cap = slots.len() / 2;
        let mask = cap - 1;
        let mut i = tag as usize & mask;
        // Load stays at most 3/4, so an empty slot ends the probe; the bound is a backstop.
        for _ in 0..cap {
            let c = slots[2 * i];
            if c == NONE {
                return None;
            }
            if slots[2 * i + 1] == tag {
                if let Some(t) = hit(c) {
                    return Some(t);
                }
            }
            i = (i + 1) & mask;
        }
        None
    }

    pub(super) fn attach(&mut self, parent: Idx, child: Idx, level: &[u8]) {
        if level == b"+" {
            self.node_mut(parent).plus = child;
            return;
        }
        let tag = self.tag(level);
        let k = self.node(parent).kids;
        if k == NONE {
            self.node_mut(parent).kids = child;
            return;
        }
        if k < MANY {
            let one_tag = self.tag(self.node(k).label.first_level());
            let set = self.kid_sets.insert(Kids {
                slots: Box::new([k, one_tag, child, tag]),
                count: 2,
            });
            // Fewer sets than nodes, so `set` stays far below `NONE - MANY` (see `MANY`).
            self.node_mut(parent).kids = MANY + set as Idx;
            return;
        }
        let Some(kids) = self.kid_sets.get_mut((k - MANY) as usize) else {
            return;
        };
        let count = kids.count as usize + 1;
        let mut slots = std::mem::take(&mut kids.slots);
        if slots.len() > 2 * SMALL_MAX {
            let cap = slots.len() / 2;
            if count * 4 > cap * 3 {
                slots = rebuild_table(&slots, cap * 2);
            }
            table_insert(&mut slots, child, tag);
        } else if count <= SMALL_MAX {
            let mut list = Vec::with_capacity(2 * count);
            list.extend_from_slice(&slots);
            list.extend_from_slice(&[child, tag]);
            slots = list.into_boxed_slice();
        } else {
            slots = rebuild_table(&slots, TABLE_MIN);
            table_insert(&mut slots, child, tag);
        }
        kids.slots = slots;
        kids.count = count as u32;
    }

    pub(super) fn detach(&mut self, parent: Idx, child: Idx) {
        let p = self.node(parent);
        if p.plus == child {
            self.node_mut(parent).plus = NONE;
            return;
        }
        if p.kids == child {
            self.node_mut(parent).kids = NONE;
            return;
        }
        let k = p.kids;
        if k < MANY || k == NONE {
            return;
        }
        let set = (k - MANY) as usize;
        let tag = self.tag(self.node(child).label.first_level());
        let Some(kids) = self.kid_sets.get_mut(set) else {
            return;
        };
        let mut slots = std::mem::take(&mut kids.slots);
        let count = (kids.count as usize).saturating_sub(1);
        if slots.len() > 2 * SMALL_MAX {
            table_remove(&mut slots, child, tag);
            let cap = slots.len() / 2;
            if count <= SMALL_BACK {
                slots = pairs(&slots)
                    .filter(|p| p[0] != NONE)
                    .flatten()
                    .copied()
                    .collect();
            } else if cap > TABLE_MIN && count * 8 < cap {
                slots = rebuild_table(&slots, cap / 2);
            }
        } else {
            slots = pairs(&slots)
                .filter(|p| p[0] != child)
                .flatten()
                .copied()
                .collect();
        }
        if count == 1 {
            // Back to the node's own link; `slots` is a one-pair list here.
            let one = slots.first().copied().unwrap_or(NONE);
            self.kid_sets.remove(set);
            self.node_mut(parent).kids = one;
            return;
        }
        kids.slots = slots;
        kids.count = count as u32;
    }
}

pub(super) fn pairs(kids: &[Idx]) -> std::slice::ChunksExact<'_, Idx> {
    kids.chunks_exact(2)
}

pub(super) fn rebuild_table(old: &[Idx], cap: usize) -> Box<[Idx]> {
    let mut table = vec![NONE; 2 * cap].into_boxed_slice();
    for p in pairs(old).filter(|p| p[0] != NONE) {
        table_insert(&mut table, p[0], p[1]);
    }
    table
}

pub(super) fn table_insert(table: &mut [Idx], child: Idx, tag: Idx) {
    let cap = table.len() / 2;
    let mask = cap - 1;
    let mut i = tag as usize & mask;
    for _ in 0..cap {
        if table[2 * i] == NONE {
            table[2 * i] = child;
            table[2 * i + 1] = tag;
            return;
        }
        i = (i + 1) & mask;
    }
}

/// Linear-probing deletion by backward shift, so no tombstones accumulate.
pub(super) fn table_remove(table: &mut [Idx], child: Idx, tag: Idx) {
    let cap = table.len() / 2;
    let mask = cap - 1;
    let mut hole = tag as usize & mask;
    let mut probes = 0;
    while table[2 * hole] != child {
        if table[2 * hole] == NONE || probes == cap {
            return;
        }
        hole = (hole + 1) & mask;
        probes += 1;
    }
    table[2 * hole] = NONE;
    let mut j = hole;
    loop {
        j = (j + 1) & mask;
        let c = table[2 * j];
        if c == NONE {
            return;
        }
        let home = table[2 * j + 1] as usize & mask;
        // Move the entry into the hole unless its home lies cyclically in (hole, j].
        let stays = if hole <= j {
            hole < home && home <= j
        } else {
            hole < home || home <= j
        };
        if !stays {
            table[2 * hole] = c;
            table[2 * hole + 1] = table[2 * j + 1];
            table[2 * j] = NONE;
            hole = j;
        }
    }
}
