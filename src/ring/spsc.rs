//! Bounded lock-free single-producer single-consumer ring (the rtrb design).
//!
//! Indices `head` (next slot to read) and `tail` (next slot to write) grow without bound
//! and wrap at `usize::MAX`; the slot is `index & mask`. Because the capacity is a power
//! of two it divides 2^usize::BITS, so `tail.wrapping_sub(head)` is the length even
//! across the wrap. Each index is written by exactly one side and sits on its own
//! 128-byte line; each side keeps a private copy of its own index and a cached copy of
//! the other side's, and re-reads the shared one only when the cache says "full" or
//! "empty", so in steady state the two cores do not bounce each other's lines.
//!
//! Orderings: the producer writes a slot, then publishes `tail` with `Release`; the
//! consumer loads `tail` with `Acquire` before reading the slot. Symmetrically the
//! consumer moves a value out, then publishes `head` with `Release`; the producer loads
//! `head` with `Acquire` before overwriting that slot.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

use super::sync::{Arc, AtomicUsize, CachePadded, Ordering, UnsafeCell};

/// State shared by the two halves; dropped when both halves are gone.
struct Shared<T> {
    /// Next index the consumer reads. Written only by the consumer.
    head: CachePadded<AtomicUsize>,
    /// Next index the producer writes. Written only by the producer.
    tail: CachePadded<AtomicUsize>,
    /// Slots `head..tail` (mod capacity) are initialised; all others are not.
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    /// `capacity - 1`; capacity is a power of two.
    mask: usize,
}

// SAFETY: `Shared` hands out each slot to exactly one side at a time (the producer owns
// slots outside `head..tail`, the consumer owns slots inside it), and the hand-over is
// ordered by the Release/Acquire pairs on `head`/`tail`. Values of `T` move between
// threads, so `T: Send` is required; no `&T` is ever shared, so `T: Sync` is not.
unsafe impl<T: Send> Send for Shared<T> {}
// SAFETY: see the `Send` impl: concurrent access through `&Shared` is limited to the
// atomics and to disjoint slots.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    #[inline(always)]
    fn capacity(&self) -> usize {
        self.mask + 1
    }

    #[inline(always)]
    fn slot(&self, index: usize) -> &UnsafeCell<MaybeUninit<T>> {
        // SAFETY: `index & mask < capacity == slots.len()`.
        unsafe { self.slots.get_unchecked(index & self.mask) }
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // Both halves are gone; dropping the last `Arc` synchronised with their last
        // stores, so these loads see the final indices.
        let mut head = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        while head != tail {
            // SAFETY: slots in `head..tail` hold initialised values that were never moved
            // out (the consumer advances `head` past every value it takes); each is
            // dropped once here because `head` advances past it.
            self.slot(head)
                .with_mut(|p| unsafe { (*p).assume_init_drop() });
            head = head.wrapping_add(1);
        }
    }
}

/// Producer half of a bounded single-producer single-consumer ring.
///
/// `Send` (when `T: Send`) so it can move to the producing thread; not `Clone` and not
/// `Sync`, so there is exactly one producer.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// Private copy of `shared.tail`: only this half writes it.
    tail: usize,
    /// Last `shared.head` seen; refreshed only when the ring looks full.
    cached_head: usize,
    _not_sync: PhantomData<Cell<()>>,
}

/// Consumer half. `Send` (when `T: Send`), not `Clone`, not `Sync`.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// Private copy of `shared.head`: only this half writes it.
    head: usize,
    /// Last `shared.tail` seen; refreshed only when the ring looks empty.
    cached_tail: usize,
    _not_sync: PhantomData<Cell<()>>,
}

/// A ring holding at least `capacity` items (rounded up to a power of two, minimum 1).
///
/// # Panics
/// If the rounded capacity overflows `usize` (a configuration error, not input).
pub fn channel<T>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let capacity = capacity
        .max(1)
        .checked_next_power_of_two()
        .expect("ring capacity overflows usize");
    let slots = (0..capacity)
        .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
        .collect();
    let shared = Arc::new(Shared {
        head: CachePadded::new(AtomicUsize::new(0)),
        tail: CachePadded::new(AtomicUsize::new(0)),
        slots,
        mask: capacity - 1,
    });
    let producer = Producer {
        shared: shared.clone(),
        tail: 0,
        cached_head: 0,
        _not_sync: PhantomData,
    };
    let consumer = Consumer {
        shared,
        head: 0,
        cached_tail: 0,
        _not_sync: PhantomData,
    };
    (producer, consumer)
}

impl<T> Producer<T> {
    /// Free slots, re-reading the consumer's `head` only if the cached value shows
    /// fewer than `want`.
    #[inline]
    fn reserve(&mut self, want: usize) -> usize {
        let capacity = self.shared.capacity();
        let free = capacity - self.tail.wrapping_sub(self.cached_head);
        if free >= want {
            return free;
        }
        // Acquire: the consumer's move out of a slot happens-before we overwrite it.
        self.cached_head = self.shared.head.load(Ordering::Acquire);
        capacity - self.tail.wrapping_sub(self.cached_head)
    }

    /// Writes `value` at `self.tail` without publishing it.
    ///
    /// # Safety
    /// The slot at `self.tail` must be free: `reserve` returned a count covering it.
    #[inline(always)]
    unsafe fn write_unpublished(&mut self, value: T) {
        // SAFETY: the caller guarantees the slot is outside `head..tail`, so the consumer
        // does not touch it and it holds no initialised value to leak.
        self.shared
            .slot(self.tail)
            .with_mut(|p| unsafe { p.write(MaybeUninit::new(value)) });
        self.tail = self.tail.wrapping_add(1);
    }

    #[inline(always)]
    fn publish(&self) {
        // Release: the slot writes above happen-before the consumer's Acquire of `tail`.
        self.shared.tail.store(self.tail, Ordering::Release);
    }

    /// `Err(value)` when the ring is full; never blocks.
    #[inline]
    pub fn push(&mut self, value: T) -> Result<(), T> {
        if self.reserve(1) == 0 {
            return Err(value);
        }
        // SAFETY: `reserve(1)` reported at least one free slot at `self.tail`.
        unsafe { self.write_unpublished(value) };
        self.publish();
        Ok(())
    }

    /// Moves as many items as fit from the front of `source` into the ring, in order,
    /// publishing them with one store. Returns how many moved.
    pub fn push_from(&mut self, source: &mut VecDeque<T>) -> usize {
        if source.is_empty() {
            return 0;
        }
        let count = self.reserve(source.len()).min(source.len());
        for value in source.drain(..count) {
            // SAFETY: `count` slots starting at the entry `self.tail` were free.
            unsafe { self.write_unpublished(value) };
        }
        if count > 0 {
            self.publish();
        }
        count
    }

    /// Slots this ring holds in total.
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }

    /// Items currently in the ring (a snapshot; the consumer may be draining it).
    pub fn len(&self) -> usize {
        self.tail
            .wrapping_sub(self.shared.head.load(Ordering::Acquire))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots free for `push` right now (a lower bound: the consumer may free more).
    pub fn free_slots(&self) -> usize {
        self.capacity() - self.len()
    }
}

impl<T> Consumer<T> {
    /// Items ready, re-reading the producer's `tail` only if the cached value shows
    /// fewer than `want`.
    #[inline]
    fn available(&mut self, want: usize) -> usize {
        let ready = self.cached_tail.wrapping_sub(self.head);
        if ready >= want {
            return ready;
        }
        // Acquire: the producer's slot writes happen-before our reads of them.
        self.cached_tail = self.shared.tail.load(Ordering::Acquire);
        self.cached_tail.wrapping_sub(self.head)
    }

    /// Moves the value at `self.head` out without publishing the new `head`.
    ///
    /// # Safety
    /// The slot at `self.head` must be initialised: `available` returned a count covering it.
    #[inline(always)]
    unsafe fn read_unpublished(&mut self) -> T {
        // SAFETY: the caller guarantees the slot is inside `head..tail`, so it is
        // initialised and the producer does not touch it; advancing `head` right after
        // means it is never read twice.
        let value = self
            .shared
            .slot(self.head)
            .with_mut(|p| unsafe { p.read().assume_init() });
        self.head = self.head.wrapping_add(1);
        value
    }

    #[inline(always)]
    fn publish(&self) {
        // Release: our moves out of the slots happen-before the producer reuses them.
        self.shared.head.store(self.head, Ordering::Release);
    }

    /// `None` when the ring is empty; never blocks.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        if self.available(1) == 0 {
            return None;
        }
        // SAFETY: `available(1)` reported at least one value at `self.head`.
        let value = unsafe { self.read_unpublished() };
        self.publish();
        Some(value)
    }

    /// Hands up to `max` items to `f` in order and publishes the new `head` once at
    /// the end, so a batch costs one store on the shared line. Returns how many.
    ///
    /// If `f` panics, the items already taken (including the one `f` was given) count
    /// as consumed; the rest stay in the ring.
    pub fn pop_batch(&mut self, max: usize, mut f: impl FnMut(T)) -> usize {
        if max == 0 {
            return 0;
        }
        let count = self.available(max).min(max);
        if count == 0 {
            return 0;
        }
        // Publishes on drop, so a panic in `f` cannot leave moved-out slots inside
        // `head..tail` (which the ring's `Drop` would drop a second time).
        struct PublishOnDrop<'a, T>(&'a mut Consumer<T>);
        impl<T> Drop for PublishOnDrop<'_, T> {
            fn drop(&mut self) {
                self.0.publish();
            }
        }
        let guard = PublishOnDrop(self);
        for _ in 0..count {
            // SAFETY: `count` values starting at the entry `head` were available.
            let value = unsafe { guard.0.read_unpublished() };
            f(value);
        }
        drop(guard);
        count
    }

    /// Slots this ring holds in total.
    pub fn capacity(&self) -> usize {
        self.shared.capacity()
    }

    /// Items ready to pop (a snapshot; the producer may be adding more).
    pub fn len(&self) -> usize {
        self.shared
            .tail
            .load(Ordering::Acquire)
            .wrapping_sub(self.head)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots free in the ring right now (an upper bound: the producer may fill some).
    pub fn free_slots(&self) -> usize {
        self.capacity() - self.len()
    }
}

impl<T> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish()
    }
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::AtomicUsize as StdAtomicUsize;
    use std::sync::Arc as StdArc;

    // Compile-time ownership checks: these fail to build if a half becomes `Sync` or
    // `Clone` (the blanket impl and the bounded impl would both apply: ambiguity).
    trait AmbiguousIfSync<A> {
        fn check() {}
    }
    impl<T: ?Sized> AmbiguousIfSync<()> for T {}
    impl<T: ?Sized + Sync> AmbiguousIfSync<u8> for T {}
    trait AmbiguousIfClone<A> {
        fn check() {}
    }
    impl<T: ?Sized> AmbiguousIfClone<()> for T {}
    impl<T: Clone> AmbiguousIfClone<u8> for T {}

    #[test]
    fn halves_are_send_not_sync_not_clone() {
        fn assert_send<S: Send>() {}
        assert_send::<Producer<String>>();
        assert_send::<Consumer<String>>();
        <Producer<String> as AmbiguousIfSync<_>>::check();
        <Consumer<String> as AmbiguousIfSync<_>>::check();
        <Producer<String> as AmbiguousIfClone<_>>::check();
        <Consumer<String> as AmbiguousIfClone<_>>::check();
    }

    /// The 128-byte line (`CachePadded`'s alignment) a byte offset falls on.
    fn line_of(offset: usize) -> usize {
        offset / 128
    }

    #[test]
    fn head_and_tail_sit_on_separate_128_byte_lines() {
        use std::mem::{align_of, offset_of, size_of};
        // Offsets are relative to a 128-aligned base, so equal line numbers mean a
        // shared line at run time and different ones mean disjoint lines.
        assert_eq!(align_of::<Shared<u64>>() % 128, 0);
        let word = size_of::<AtomicUsize>();
        let head = offset_of!(Shared<u64>, head);
        let tail = offset_of!(Shared<u64>, tail);
        let slots = offset_of!(Shared<u64>, slots);
        let mask = offset_of!(Shared<u64>, mask);
        // Each index lies within one line (it does not straddle into the next)...
        assert_eq!(line_of(head), line_of(head + word - 1));
        assert_eq!(line_of(tail), line_of(tail + word - 1));
        // ...that it shares with neither the other index nor the read-mostly fields
        // (every push and pop reads `slots` and `mask`).
        assert_ne!(line_of(head), line_of(tail));
        for other in [slots, mask] {
            for end in [other, other + size_of::<usize>() - 1] {
                assert_ne!(line_of(end), line_of(head), "offset {end} on head's line");
                assert_ne!(line_of(end), line_of(tail), "offset {end} on tail's line");
            }
        }

        // And in a real ring: the `Arc` allocation keeps the alignment.
        let (p, _c) = channel::<u64>(4);
        let head_addr = &*p.shared.head as *const AtomicUsize as usize;
        let tail_addr = &*p.shared.tail as *const AtomicUsize as usize;
        assert_eq!((head_addr % 128, tail_addr % 128), (0, 0));
        assert_ne!(head_addr / 128, tail_addr / 128);
    }

    #[test]
    fn capacity_rounds_up_to_power_of_two() {
        let cases = [(0, 1), (1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (1000, 1024)];
        for (asked, got) in cases {
            let (p, c) = channel::<u8>(asked);
            assert_eq!((asked, p.capacity(), c.capacity()), (asked, got, got));
        }
    }

    #[test]
    fn push_until_full_then_pop_until_empty() {
        let (mut p, mut c) = channel(4);
        for i in 0..4 {
            assert_eq!(p.push(i), Ok(()));
        }
        assert_eq!(p.push(9), Err(9));
        assert_eq!((p.len(), p.free_slots(), c.len()), (4, 0, 4));
        assert_eq!(c.pop(), Some(0));
        assert_eq!(p.free_slots(), 1);
        assert_eq!(p.push(4), Ok(()));
        let mut seen = Vec::new();
        assert_eq!(c.pop_batch(10, |v| seen.push(v)), 4);
        assert_eq!(seen, [1, 2, 3, 4]);
        assert_eq!(c.pop(), None);
        assert!(c.is_empty() && p.is_empty());
    }

    #[test]
    fn indices_wrap_around_usize_max() {
        let (mut p, mut c) = channel(4);
        // Start both sides just below the wrap point.
        let start = usize::MAX - 5;
        p.tail = start;
        p.cached_head = start;
        p.shared.tail.store(start, Ordering::Relaxed);
        p.shared.head.store(start, Ordering::Relaxed);
        c.head = start;
        c.cached_tail = start;
        for round in 0..5u32 {
            for i in 0..4 {
                assert_eq!(p.push(round * 10 + i), Ok(()));
            }
            assert_eq!(p.push(99), Err(99));
            assert_eq!(c.len(), 4);
            let mut seen = Vec::new();
            c.pop_batch(usize::MAX, |v| seen.push(v));
            let want: Vec<u32> = (0..4).map(|i| round * 10 + i).collect();
            assert_eq!(seen, want);
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u16),
        Pop,
        PopBatch(usize),
        PushFrom(Vec<u16>),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => any::<u16>().prop_map(Op::Push),
            2 => Just(Op::Pop),
            1 => (0usize..6).prop_map(Op::PopBatch),
            1 => proptest::collection::vec(any::<u16>(), 0..6).prop_map(Op::PushFrom),
        ]
    }

    proptest! {
        #[test]
        fn matches_vecdeque_model(cap_log2 in 0u32..4, ops in proptest::collection::vec(op(), 0..200)) {
            let capacity = 1usize << cap_log2;
            let (mut p, mut c) = channel::<u16>(capacity);
            let mut model: VecDeque<u16> = VecDeque::new();
            for op in ops {
                match op {
                    Op::Push(v) => {
                        let want = if model.len() < capacity { model.push_back(v); Ok(()) } else { Err(v) };
                        prop_assert_eq!(p.push(v), want);
                    }
                    Op::Pop => prop_assert_eq!(c.pop(), model.pop_front()),
                    Op::PopBatch(max) => {
                        let mut got = Vec::new();
                        let n = c.pop_batch(max, |v| got.push(v));
                        let want: Vec<u16> = model.drain(..max.min(model.len())).collect();
                        prop_assert_eq!(n, want.len());
                        prop_assert_eq!(got, want);
                    }
                    Op::PushFrom(items) => {
                        let mut source: VecDeque<u16> = items.iter().copied().collect();
                        let fit = (capacity - model.len()).min(items.len());
                        model.extend(&items[..fit]);
                        prop_assert_eq!(p.push_from(&mut source), fit);
                        let left: Vec<u16> = source.into_iter().collect();
                        prop_assert_eq!(left, &items[fit..]);
                    }
                }
                prop_assert_eq!(p.len(), model.len());
                prop_assert_eq!(c.len(), model.len());
                prop_assert_eq!(p.free_slots(), capacity - model.len());
                prop_assert_eq!(c.is_empty(), model.is_empty());
            }
        }
    }

    /// Spins, yielding the CPU after a while: the machine is shared and may have fewer
    /// cores than runnable threads.
    fn backoff(spins: &mut u32) {
        *spins += 1;
        if *spins < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }

    #[test]
    fn cross_thread_in_order_exactly_once() {
        // Miri is ~1000x slower; the interleavings it checks do not need a million.
        const N: u64 = if cfg!(miri) { 1_000 } else { 1_000_000 };
        let (mut p, mut c) = channel::<u64>(1024);
        let producer = std::thread::spawn(move || {
            for i in 1..=N {
                let mut value = i;
                let mut spins = 0;
                while let Err(back) = p.push(value) {
                    value = back;
                    backoff(&mut spins);
                }
            }
        });
        let mut expected = 1u64;
        let mut spins = 0;
        while expected <= N {
            let got = c.pop_batch(256, |v| {
                assert_eq!(v, expected);
                expected += 1;
            });
            if got == 0 {
                backoff(&mut spins);
            } else {
                spins = 0;
            }
        }
        producer.join().expect("producer thread panicked");
        assert_eq!(expected, N + 1);
        assert_eq!(c.pop(), None);
    }

    #[derive(Debug)]
    struct Counted(StdArc<StdAtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn remaining_items_dropped_exactly_once() {
        let drops = StdArc::new(StdAtomicUsize::new(0));
        let (mut p, mut c) = channel(8);
        for _ in 0..6 {
            p.push(Counted(drops.clone())).expect("ring has room");
        }
        drop(c.pop());
        drop(c.pop());
        assert_eq!(drops.load(Ordering::Relaxed), 2);
        drop(p);
        assert_eq!(drops.load(Ordering::Relaxed), 2);
        drop(c);
        assert_eq!(drops.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn drop_across_threads_after_wraparound() {
        let drops = StdArc::new(StdAtomicUsize::new(0));
        let (mut p, mut c) = channel(4);
        // Push 10 with 7 popped, so live items straddle the end of the buffer.
        for _ in 0..10 {
            if p.free_slots() == 0 {
                drop(c.pop());
            }
            p.push(Counted(drops.clone())).expect("a slot is free");
        }
        drop(c.pop());
        let live = c.len();
        assert_eq!(live, 3);
        assert_eq!(drops.load(Ordering::Relaxed), 7);
        std::thread::spawn(move || drop(p))
            .join()
            .expect("drop thread panicked");
        std::thread::spawn(move || drop(c))
            .join()
            .expect("drop thread panicked");
        assert_eq!(drops.load(Ordering::Relaxed), 10);
    }

    #[test]
    fn pop_batch_panic_consumes_only_taken_items() {
        let drops = StdArc::new(StdAtomicUsize::new(0));
        let (mut p, mut c) = channel(8);
        for _ in 0..5 {
            p.push(Counted(drops.clone())).expect("ring has room");
        }
        let mut calls = 0;
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            c.pop_batch(5, |item| {
                calls += 1;
                if calls == 2 {
                    panic!("handler failed");
                }
                drop(item);
            })
        }));
        assert!(result.is_err());
        assert_eq!(drops.load(Ordering::Relaxed), 2);
        assert_eq!(c.len(), 3);
        drop((p, c));
        assert_eq!(drops.load(Ordering::Relaxed), 5);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::thread;

    #[test]
    fn push_pop_across_wrap() {
        loom::model(|| {
            let (mut p, mut c) = channel::<u32>(2);
            let producer = thread::spawn(move || {
                let mut next = 0;
                while next < 3 {
                    if p.push(next).is_ok() {
                        next += 1;
                    } else {
                        thread::yield_now();
                    }
                }
            });
            let mut got = Vec::new();
            while got.len() < 3 {
                match c.pop() {
                    Some(v) => got.push(v),
                    None => thread::yield_now(),
                }
            }
            producer.join().expect("producer panicked");
            assert_eq!(got, [0, 1, 2]);
        });
    }

    #[test]
    fn batch_push_and_pop() {
        loom::model(|| {
            let (mut p, mut c) = channel::<u32>(2);
            let producer = thread::spawn(move || {
                let mut source: VecDeque<u32> = (0..3).collect();
                while !source.is_empty() {
                    if p.push_from(&mut source) == 0 {
                        thread::yield_now();
                    }
                }
            });
            let mut got = Vec::new();
            while got.len() < 3 {
                if c.pop_batch(2, |v| got.push(v)) == 0 {
                    thread::yield_now();
                }
            }
            producer.join().expect("producer panicked");
            assert_eq!(got, [0, 1, 2]);
        });
    }

    #[test]
    fn concurrent_drop_drops_each_item_once() {
        use loom::sync::atomic::AtomicUsize as LoomAtomicUsize;
        struct Counted(Arc<LoomAtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        loom::model(|| {
            let drops = Arc::new(LoomAtomicUsize::new(0));
            let (mut p, mut c) = channel::<Counted>(2);
            let d = drops.clone();
            let producer = thread::spawn(move || {
                let _ = p.push(Counted(d.clone()));
                let _ = p.push(Counted(d));
                // Dropped here, possibly while the consumer still runs.
            });
            drop(c.pop());
            drop(c);
            producer.join().expect("producer panicked");
            assert_eq!(drops.load(Ordering::Relaxed), 2);
        });
    }
}
