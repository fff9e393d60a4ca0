/// A trie over `/`-separated levels mapping keys to values `V`.
///
/// Used two ways: keys are *filters* (subscriptions; `for_each_match` finds the
/// values of every filter matching a topic name), or keys are *topic names*
/// (retained messages; `for_each_matching_filter` finds every name a filter matches).
/// Empty nodes are pruned on removal so memory follows the live key count.
pub struct TopicTrie<V> {
    _v: std::marker::PhantomData<V>,
}

impl<V> Default for TopicTrie<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> TopicTrie<V> {
    pub fn new() -> Self {
        todo!("topic")
    }

    /// Number of keys with a value.
    pub fn len(&self) -> usize {
        todo!("topic")
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: &[u8]) -> Option<&V> {
        let _ = key;
        todo!("topic")
    }

    pub fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let _ = key;
        todo!("topic")
    }

    /// The value at `key`, inserted with `make` if absent.
    pub fn entry_or_insert_with(&mut self, key: &[u8], make: impl FnOnce() -> V) -> &mut V {
        let _ = (key, make);
        todo!("topic")
    }

    /// Sets `key` to `value`, returning the previous value.
    pub fn insert(&mut self, key: &[u8], value: V) -> Option<V> {
        let _ = (key, value);
        todo!("topic")
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let _ = key;
        todo!("topic")
    }

    /// Keys are filters: calls `f(value)` for every stored filter matching `topic`.
    pub fn for_each_match(&self, topic: &[u8], f: impl FnMut(&V)) {
        let _ = (topic, f);
        todo!("topic")
    }

    /// Keys are topic names: calls `f(name, value)` for every stored name `filter` matches.
    pub fn for_each_matching_filter(&self, filter: &[u8], f: impl FnMut(&[u8], &V)) {
        let _ = (filter, f);
        todo!("topic")
    }

    /// Every key and value, in no particular order.
    pub fn for_each(&self, f: impl FnMut(&[u8], &V)) {
        let _ = f;
        todo!("topic")
    }
}
