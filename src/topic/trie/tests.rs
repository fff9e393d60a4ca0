//! Tests of the topic trie: filter and name matching against a naive matcher,
//! list/table growth and shrinking, pruning, and memory accounting.

use super::*;
use crate::topic::matches;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap};

fn matched_filters(trie: &TopicTrie<String>, topic: &str) -> Vec<String> {
    let mut out = Vec::new();
    trie.for_each_match(topic.as_bytes(), |v| out.push(v.clone()));
    out.sort();
    out
}

fn matched_names(trie: &TopicTrie<String>, filter: &str) -> Vec<String> {
    let mut out = Vec::new();
    trie.for_each_matching_filter(filter.as_bytes(), |name, v| {
        assert_eq!(name, v.as_bytes(), "reconstructed name");
        out.push(v.clone());
    });
    out.sort();
    out
}

fn trie_of(keys: &[&str]) -> TopicTrie<String> {
    let mut t = TopicTrie::new();
    for k in keys {
        t.insert(k.as_bytes(), k.to_string());
    }
    t
}

#[test]
fn find_slash_equals_position() {
    for len in 0..40 {
        let mut s = vec![b'a'; len];
        assert_eq!(find_slash(&s), None, "len {len}");
        for at in 0..len {
            s.fill(b'a');
            s[at] = b'/';
            // A second slash later must not change the answer.
            if at + 3 < len {
                s[at + 3] = b'/';
            }
            // Bytes that differ from '/' in one bit must not match.
            if at > 0 {
                s[at - 1] = b'/' ^ 0x80;
            }
            assert_eq!(find_slash(&s), Some(at), "len {len} at {at}");
        }
    }
}

#[test]
fn short_eq_equals_slice_eq() {
    for n in 0..=INLINE_MAX {
        let a: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
        assert!(short_eq(&a, &a.clone()), "n {n}");
        for i in 0..n {
            let mut b = a.clone();
            b[i] ^= 1;
            assert!(!short_eq(&a, &b), "n {n} differs at {i}");
        }
        assert!(!short_eq(&a, &a[..n.saturating_sub(1)]) || n == 0);
        let label = Label::new(&a);
        assert!(label.is(&a));
        assert!(!label.is(&[a.as_slice(), b"x"].concat()));
    }
    let long = vec![b'z'; INLINE_MAX + 5];
    assert!(Label::new(&long).is(&long));
    assert!(!Label::new(&long).is(&long[1..]));
}

#[test]
fn layout_sizes() {
    // A leaf (a device's own subscription) is one node on every loop: 32 bytes,
    // half of the 64 it took with the child slice and count inside the node.
    assert_eq!(std::mem::size_of::<Label>(), 16);
    assert_eq!(std::mem::size_of::<Node>(), 32);
}

#[test]
fn spec_examples_filters_in_trie() {
    let cases = crate::topic::validate::tests::SPEC_CASES;
    let filters: BTreeSet<&str> = cases.iter().map(|c| c.0).collect();
    let trie = trie_of(&filters.iter().copied().collect::<Vec<_>>());
    let topics: BTreeSet<&str> = cases.iter().map(|c| c.1).collect();
    for &(f, t, want) in cases {
        assert_eq!(
            matched_filters(&trie, t).contains(&f.to_string()),
            want,
            "{f:?} vs {t:?}"
        );
    }
    for t in topics {
        let want: Vec<String> = filters
            .iter()
            .filter(|f| matches(f.as_bytes(), t.as_bytes()))
            .map(|f| f.to_string())
            .collect();
        assert_eq!(matched_filters(&trie, t), want, "topic {t:?}");
    }
}

#[test]
fn spec_examples_names_in_trie() {
    let cases = crate::topic::validate::tests::SPEC_CASES;
    let names: BTreeSet<&str> = cases.iter().map(|c| c.1).collect();
    let trie = trie_of(&names.iter().copied().collect::<Vec<_>>());
    for &(f, t, want) in cases {
        assert_eq!(
            matched_names(&trie, f).contains(&t.to_string()),
            want,
            "{f:?} vs {t:?}"
        );
    }
}

#[test]
fn dollar_topics_and_explicit_examples() {
    let trie = trie_of(&[
        "#",
        "+/monitor/Clients",
        "$SYS/#",
        "$SYS/monitor/+",
        "+/#",
        "sport/#",
    ]);
    assert_eq!(
        matched_filters(&trie, "$SYS/monitor/Clients"),
        ["$SYS/#", "$SYS/monitor/+"]
    );
    assert_eq!(
        matched_filters(&trie, "x/monitor/Clients"),
        ["#", "+/#", "+/monitor/Clients"]
    );
    assert_eq!(matched_filters(&trie, "sport"), ["#", "+/#", "sport/#"]);
    assert_eq!(matched_filters(&trie, "$SYS"), ["$SYS/#"]);

    let names = trie_of(&[
        "$SYS/monitor/Clients",
        "$SYS",
        "a",
        "a/",
        "a/b/c",
        "/finance",
        "sport",
    ]);
    assert_eq!(
        matched_names(&names, "#"),
        ["/finance", "a", "a/", "a/b/c", "sport"]
    );
    assert_eq!(matched_names(&names, "+"), ["a", "sport"]);
    assert_eq!(matched_names(&names, "+/+"), ["/finance", "a/"]);
    assert_eq!(matched_names(&names, "a/#"), ["a", "a/", "a/b/c"]);
    assert_eq!(
        matched_names(&names, "$SYS/#"),
        ["$SYS", "$SYS/monitor/Clients"]
    );
    assert_eq!(
        matched_names(&names, "+/monitor/Clients"),
        Vec::<String>::new()
    );
}

#[test]
fn reused_buffer_and_for_each() {
    let trie = trie_of(&["a/b", "a/#", "c", "/", "+/x"]);
    let mut buf = b"garbage".to_vec();
    let mut seen = Vec::new();
    trie.for_each_matching_filter_with(b"a/+", &mut buf, |n, _| seen.push(n.to_vec()));
    seen.sort();
    assert_eq!(seen, [b"a/#".to_vec(), b"a/b".to_vec()]);
    let mut all = Vec::new();
    trie.for_each(|k, v| {
        assert_eq!(k, v.as_bytes());
        all.push(v.clone());
    });
    all.sort();
    assert_eq!(all, ["+/x", "/", "a/#", "a/b", "c"]);
}

#[test]
fn insert_get_remove_prunes() {
    let mut t: TopicTrie<u32> = TopicTrie::new();
    assert_eq!(t.node_count(), 1);
    assert_eq!(t.insert(b"a/b/c", 1), None);
    assert_eq!(t.insert(b"a/b/c", 2), Some(1));
    assert_eq!(t.insert(b"a/#", 3), None);
    assert_eq!(t.insert(b"#", 4), None);
    assert_eq!(t.insert(b"+/+", 5), None);
    assert_eq!(t.len(), 4);
    assert_eq!(t.get(b"a/b/c").as_deref(), Some(&2));
    assert_eq!(t.get(b"a/b").as_deref(), None);
    assert_eq!(t.get(b"a/#").as_deref(), Some(&3));
    *t.get_mut(b"#").expect("inserted above") += 10;
    assert_eq!(t.get(b"#").as_deref(), Some(&14));
    *t.entry_or_insert_with(b"+/+", || 0) += 1;
    *t.entry_or_insert_with(b"x", || 7) += 1;
    assert_eq!(t.get(b"+/+").as_deref(), Some(&6));
    assert_eq!(t.get(b"x").as_deref(), Some(&8));
    // root, a, b/c (one node for the chain), +, + (second level), x
    assert_eq!(t.node_count(), 6);
    assert_eq!(t.remove(b"a/b"), None);
    assert_eq!(t.remove(b"a/b/c"), Some(2));
    assert_eq!(t.node_count(), 5, "b and c pruned, a kept for a/#");
    assert_eq!(t.remove(b"a/#"), Some(3));
    assert_eq!(t.remove(b"a/#"), None);
    assert_eq!(t.remove(b"#"), Some(14));
    assert_eq!(t.remove(b"+/+"), Some(6));
    assert_eq!(t.remove(b"x"), Some(8));
    assert!(t.is_empty());
    assert_eq!(t.node_count(), 1);
}

#[test]
fn many_children_switch_to_table_and_back() {
    let mut t: TopicTrie<usize> = TopicTrie::new();
    let key = |i: usize| format!("dev/{i}/cmd");
    for i in 0..5000 {
        assert_eq!(t.insert(key(i).as_bytes(), i), None);
    }
    assert_eq!(t.len(), 5000);
    // root, dev, and one `<i>/cmd` node per key.
    assert_eq!(t.node_count(), 1 + 1 + 5000);
    for i in (0..5000).step_by(7) {
        let mut got = Vec::new();
        t.for_each_match(key(i).as_bytes(), |v| got.push(*v));
        assert_eq!(got, [i]);
    }
    // Remove in an order unrelated to insertion to exercise backward-shift deletion.
    let mut live = vec![true; 5000];
    for (n, i) in (0..5000).map(|i| (i * 7919) % 5000).enumerate() {
        assert_eq!(t.remove(key(i).as_bytes()), Some(i), "{i}");
        live[i] = false;
        if n % 97 == 0 {
            for (j, &is_live) in live.iter().enumerate() {
                assert_eq!(
                    t.get(key(j).as_bytes()).as_deref(),
                    is_live.then_some(&j),
                    "{j} after {n} removals"
                );
            }
        }
    }
    assert!(t.is_empty());
    assert_eq!(t.node_count(), 1);
    assert_eq!(t.kid_sets.len(), 0, "dev's children went with it");
}

#[test]
fn long_and_odd_labels() {
    let long = "x".repeat(300);
    let keys = [long.as_str(), "a/\u{0}/b", "é/ü", "", "//", "a+/#/b"];
    let mut t = trie_of(&keys);
    for k in keys {
        assert_eq!(t.get(k.as_bytes()).as_deref(), Some(&k.to_string()));
    }
    assert_eq!(matched_filters(&t, &long), std::slice::from_ref(&long));
    assert_eq!(matched_names(&t, "#"), {
        let mut v: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        v.sort();
        v
    });
    for k in keys {
        assert!(t.remove(k.as_bytes()).is_some());
    }
    assert_eq!(t.node_count(), 1);
}

#[test]
fn deep_topic_does_not_overflow() {
    let deep = "a/".repeat(20_000) + "a";
    let mut t = trie_of(&[&deep, "#", "a/#"]);
    assert_eq!(matched_filters(&t, &deep).len(), 3);
    assert_eq!(matched_names(&t, "a/#").len(), 2);
    assert!(t.remove(deep.as_bytes()).is_some());
    assert_eq!(t.node_count(), 2);
}

/// Compressed paths: a chain of literal levels is one node, split when a key
/// branches, ends or hangs a wildcard inside it, and joined again when that key goes.
#[test]
fn compressed_paths_split_and_merge() {
    let mut t: TopicTrie<String> = TopicTrie::new();
    let mut live: Vec<&str> = Vec::new();
    let check = |t: &TopicTrie<String>, live: &[&str], nodes: usize| {
        assert_eq!(t.node_count(), nodes, "{live:?}");
        for k in live {
            assert_eq!(t.get(k.as_bytes()).as_deref(), Some(&k.to_string()));
        }
        for topic in [
            "dev/1/cmd",
            "dev/1",
            "dev/1/cmd/x",
            "dev/2/cmd",
            "dev/1/x",
            "dev",
            "dev/1/cm",
        ] {
            let mut want: Vec<String> = live
                .iter()
                .filter(|f| matches(f.as_bytes(), topic.as_bytes()))
                .map(|f| f.to_string())
                .collect();
            want.sort();
            assert_eq!(matched_filters(t, topic), want, "topic {topic}, {live:?}");
            assert_eq!(
                matched_names(t, topic).len(),
                live.iter()
                    .filter(|k| matches(topic.as_bytes(), k.as_bytes()))
                    .count()
            );
        }
    };
    // (key inserted, node count after it): root plus ...
    let steps: [(&str, usize); 7] = [
        ("dev/1/cmd", 2),   // dev/1/cmd
        ("dev/2/cmd", 4),   // dev, 1/cmd, 2/cmd
        ("dev/1/cmd/x", 5), // ... x below 1/cmd
        ("dev/1", 6),       // 1/cmd splits into 1 and cmd
        ("dev/1/+", 7),     // a `+` child of 1
        ("dev/1/cmd/#", 7), // the `#` slot of cmd: no node
        ("dev/+/cmd", 9),   // + and cmd below dev
    ];
    for (k, nodes) in steps {
        assert_eq!(t.insert(k.as_bytes(), k.to_string()), None);
        live.push(k);
        check(&t, &live, nodes);
    }
    assert_eq!(
        t.get(b"dev/1/cm").as_deref(),
        None,
        "a partial level is no key"
    );
    assert_eq!(
        t.get(b"dev/2").as_deref(),
        None,
        "a level inside a label is no key"
    );
    assert_eq!(t.remove(b"dev/2"), None);
    // Removed in reverse: the same shapes back, joins included.
    for i in (0..steps.len()).rev() {
        let k = live.pop().expect("live key");
        assert_eq!(t.remove(k.as_bytes()), Some(k.to_string()));
        check(&t, &live, if i == 0 { 1 } else { steps[i - 1].1 });
    }
    // Removed in insertion order, the dev node joins its last child again.
    for (k, _) in steps {
        t.insert(k.as_bytes(), k.to_string());
    }
    for (k, _) in &steps[..6] {
        t.remove(k.as_bytes());
    }
    assert_eq!(
        t.node_count(),
        4,
        "root, dev (kept for its + child), +, cmd"
    );
    assert_eq!(matched_filters(&t, "dev/9/cmd"), ["dev/+/cmd"]);
}

/// `twelve-bytes` makes compressed labels of either form: `a/twelve-bytes` (14
/// bytes) is inline, `twelve-bytes/a/b` (16) on the heap.
const LEVELS: &[&str] = &["", "$SYS", "$", "a", "b", "+", "#", "a+", "twelve-bytes"];

fn key() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(LEVELS), 1..5).prop_map(|v| v.join("/"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn for_each_match_equals_naive(filters in prop::collection::vec(key(), 0..24), topics in prop::collection::vec(key(), 1..8)) {
        let trie = trie_of(&filters.iter().map(String::as_str).collect::<Vec<_>>());
        for t in &topics {
            let want: BTreeSet<String> =
                filters.iter().filter(|f| matches(f.as_bytes(), t.as_bytes())).cloned().collect();
            let mut got = Vec::new();
            trie.for_each_match(t.as_bytes(), |v| got.push(v.clone()));
            let n = got.len();
            let got: BTreeSet<String> = got.into_iter().collect();
            prop_assert_eq!(n, got.len(), "a filter reported twice for {:?}", t);
            prop_assert_eq!(got, want, "topic {:?}", t);
        }
    }

    #[test]
    fn for_each_matching_filter_equals_naive(names in prop::collection::vec(key(), 0..24), filters in prop::collection::vec(key(), 1..8)) {
        let trie = trie_of(&names.iter().map(String::as_str).collect::<Vec<_>>());
        let mut buf = Vec::new();
        for f in &filters {
            let want: BTreeSet<String> =
                names.iter().filter(|n| matches(f.as_bytes(), n.as_bytes())).cloned().collect();
            let mut got = Vec::new();
            trie.for_each_matching_filter_with(f.as_bytes(), &mut buf, |name, v| {
                assert_eq!(name, v.as_bytes());
                got.push(v.clone());
            });
            let n = got.len();
            let got: BTreeSet<String> = got.into_iter().collect();
            prop_assert_eq!(n, got.len(), "a name reported twice for {:?}", f);
            prop_assert_eq!(got, want, "filter {:?}", f);
        }
    }

    /// `matching_keys` finds the keys of exactly the names the naive matcher
    /// matches, or stops at `max` with `false`; `value_at` and
    /// `next_value_from` walk the same values by key.
    #[test]
    fn matching_keys_equals_naive(names in prop::collection::vec(key(), 0..24), filters in prop::collection::vec(key(), 1..8), max in 0usize..6) {
        let trie = trie_of(&names.iter().map(String::as_str).collect::<Vec<_>>());
        for f in &filters {
            let want: BTreeSet<String> =
                names.iter().filter(|n| matches(f.as_bytes(), n.as_bytes())).cloned().collect();
            let mut keys = Vec::new();
            let all = trie.matching_keys(f.as_bytes(), usize::MAX, &mut keys);
            prop_assert!(all);
            let got: BTreeSet<String> =
                keys.iter().filter_map(|&k| trie.value_at(k).cloned()).collect();
            prop_assert_eq!(keys.len(), got.len());
            prop_assert_eq!(&got, &want, "filter {:?}", f);
            let mut some = Vec::new();
            let complete = trie.matching_keys(f.as_bytes(), max, &mut some);
            prop_assert_eq!(complete, want.len() <= max);
            prop_assert_eq!(some.len(), want.len().min(max));
        }
        let mut walked = BTreeSet::new();
        let mut next = 0;
        while let Some((k, v)) = trie.next_value_from(next) {
            prop_assert_eq!(trie.value_at(k as u32), Some(v));
            walked.insert(v.clone());
            next = k + 1;
        }
        let all: BTreeSet<String> = names.iter().cloned().collect();
        prop_assert_eq!(walked, all);
    }

    #[test]
    fn insert_remove_equals_hashmap(ops in prop::collection::vec((any::<bool>(), key(), any::<u8>()), 0..200)) {
        let mut trie: TopicTrie<u8> = TopicTrie::new();
        let mut model: HashMap<String, u8> = HashMap::new();
        for (is_insert, k, v) in &ops {
            if *is_insert {
                prop_assert_eq!(trie.insert(k.as_bytes(), *v), model.insert(k.clone(), *v));
            } else {
                prop_assert_eq!(trie.remove(k.as_bytes()), model.remove(k));
            }
            prop_assert_eq!(trie.len(), model.len());
            prop_assert_eq!(trie.get(k.as_bytes()).as_deref().copied(), model.get(k).copied());
        }
        for (k, v) in &model {
            prop_assert_eq!(trie.get(k.as_bytes()).as_deref().copied(), Some(*v));
        }
        let mut all = HashMap::new();
        trie.for_each(|k, v| { all.insert(String::from_utf8_lossy(k).into_owned(), *v); });
        prop_assert_eq!(&all, &model);
        for k in model.keys() {
            prop_assert!(trie.remove(k.as_bytes()).is_some());
        }
        prop_assert!(trie.is_empty());
        prop_assert_eq!(trie.node_count(), 1);
    }

    /// Whatever the order of inserts and removals, the trie has the shape it would
    /// have if built from its live keys alone: splits and joins leave no extra node.
    #[test]
    fn shape_depends_on_live_keys_only(ops in prop::collection::vec((any::<bool>(), key()), 0..120)) {
        let mut trie: TopicTrie<()> = TopicTrie::new();
        let mut model: BTreeSet<String> = BTreeSet::new();
        for (is_insert, k) in &ops {
            if *is_insert {
                trie.insert(k.as_bytes(), ());
                model.insert(k.clone());
            } else {
                trie.remove(k.as_bytes());
                model.remove(k);
            }
            let mut fresh: TopicTrie<()> = TopicTrie::new();
            for m in &model {
                fresh.insert(m.as_bytes(), ());
            }
            prop_assert_eq!(trie.node_count(), fresh.node_count(), "{:?}", model);
            prop_assert_eq!(trie.kid_sets.len(), fresh.kid_sets.len(), "{:?}", model);
        }
    }

    #[test]
    fn many_siblings_equal_hashmap(ops in prop::collection::vec((any::<bool>(), 0u16..64), 0..400)) {
        // Enough siblings under one node to cross the list/table thresholds both ways.
        let mut trie: TopicTrie<u16> = TopicTrie::new();
        let mut model: HashMap<u16, u16> = HashMap::new();
        for (is_insert, i) in &ops {
            let k = format!("p/{i}");
            if *is_insert {
                prop_assert_eq!(trie.insert(k.as_bytes(), *i), model.insert(*i, *i));
            } else {
                prop_assert_eq!(trie.remove(k.as_bytes()), model.remove(i));
            }
            for j in 0..64u16 {
                prop_assert_eq!(trie.get(format!("p/{j}").as_bytes()).as_deref().copied(), model.get(&j).copied());
            }
            // Only `p` can have several children: its set lives while it has two or more.
            prop_assert_eq!(trie.kid_sets.len(), usize::from(model.len() >= 2));
        }
        let mut got = Vec::new();
        trie.for_each_matching_filter(b"p/+", |_, v| got.push(*v));
        got.sort_unstable();
        let mut want: Vec<u16> = model.keys().copied().collect();
        want.sort_unstable();
        prop_assert_eq!(got, want);
    }
}

/// Packs values below 1000 (and `u32::MAX >> 1`, which must not fit: it would read
/// as "no value") into the node, so updates move values between node and slab.
struct Below1000;

impl Pack<u32> for Below1000 {
    fn pack(&self, v: &u32) -> Option<u32> {
        (*v < 1000 || *v == u32::MAX >> 1).then_some(*v)
    }
    fn unpack(&self, bits: u32) -> Option<u32> {
        Some(bits)
    }
}

#[test]
fn packed_values_live_in_the_node() {
    let mut t = TopicTrie::with_pack(Below1000);
    t.insert(b"dev/1/cmd", 7);
    t.insert(b"dev/2/cmd", 5000);
    t.insert(b"dev/#", 9);
    t.insert(b"all", u32::MAX >> 1);
    assert_eq!(
        (t.len(), t.packed_len()),
        (4, 2),
        "all-ones 31 bits stays in the slab"
    );
    assert_eq!(
        t.approx_bytes(),
        t.node_count().saturating_sub(1) * 32 + 2 * 4 + 2 * std::mem::size_of::<children::Kids>(),
        "root's and dev's children are kid sets"
    );
    assert_eq!(t.get(b"all").as_deref(), Some(&(u32::MAX >> 1)));
    // Growing past what packs moves the value to the slab, shrinking moves it back.
    assert_eq!(t.update(b"dev/1/cmd", |v| *v += 2000), Some(()));
    assert_eq!(
        (t.get(b"dev/1/cmd").as_deref(), t.packed_len()),
        (Some(&2007), 1)
    );
    t.update(b"dev/1/cmd", |v| *v -= 2000);
    assert_eq!(
        (t.get(b"dev/1/cmd").as_deref(), t.packed_len()),
        (Some(&7), 2)
    );
    assert_eq!(
        t.update(b"dev/3/cmd", |v| *v += 1),
        None,
        "no value, nothing made"
    );
    assert_eq!(t.upsert(b"dev/3/cmd", || 1, |v| *v), 1);
    let mut got = Vec::new();
    t.for_each_match(b"dev/1/cmd", |v| got.push(*v));
    got.sort();
    assert_eq!(got, [7, 9]);
    assert_eq!(t.remove(b"dev/1/cmd"), Some(7));
    assert_eq!(t.remove(b"dev/1/cmd"), None);
    for k in ["dev/2/cmd", "dev/3/cmd", "dev/#", "all"] {
        assert!(t.remove(k.as_bytes()).is_some(), "{k}");
    }
    assert_eq!((t.len(), t.packed_len(), t.node_count()), (0, 0, 1));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Packed and slab values through `upsert`/`update`/`remove`: the same values
    /// as a map, the same matches as the naive matcher, and the right count packed.
    #[test]
    fn packed_trie_equals_model(ops in prop::collection::vec((0u8..4, key(), 0u32..1500), 1..64), topics in prop::collection::vec(key(), 1..6)) {
        let mut trie = TopicTrie::with_pack(Below1000);
        let mut model: HashMap<String, u32> = HashMap::new();
        for (op, k, x) in &ops {
            match op {
                0 => prop_assert_eq!(trie.insert(k.as_bytes(), *x), model.insert(k.clone(), *x)),
                1 => prop_assert_eq!(trie.remove(k.as_bytes()), model.remove(k)),
                2 => {
                    let got = trie.update(k.as_bytes(), |v| { *v = (*v + x) % 3000; *v });
                    let want = model.get_mut(k).map(|v| { *v = (*v + x) % 3000; *v });
                    prop_assert_eq!(got, want);
                }
                _ => {
                    let got = trie.upsert(k.as_bytes(), || *x, |v| { *v ^= 1; *v });
                    let v = model.entry(k.clone()).or_insert(*x);
                    *v ^= 1;
                    prop_assert_eq!(got, *v);
                }
            }
            prop_assert_eq!(trie.len(), model.len());
            prop_assert_eq!(trie.packed_len(), model.values().filter(|v| **v < 1000).count());
        }
        for t in &topics {
            let mut want: Vec<u32> = model.iter().filter(|(f, _)| matches(f.as_bytes(), t.as_bytes())).map(|(_, v)| *v).collect();
            let mut got = Vec::new();
            trie.for_each_match(t.as_bytes(), |v| got.push(*v));
            want.sort();
            got.sort();
            prop_assert_eq!(got, want, "topic {:?}", t);
        }
        let mut all = HashMap::new();
        trie.for_each(|k, v| { all.insert(String::from_utf8_lossy(k).into_owned(), *v); });
        prop_assert_eq!(&all, &model);
        for k in model.keys() {
            prop_assert!(trie.remove(k.as_bytes()).is_some());
        }
        prop_assert_eq!((trie.len(), trie.packed_len(), trie.node_count()), (0, 0, 1));
    }
}
