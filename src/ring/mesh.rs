//! The N×N mesh: one SPSC ring per ordered pair of shards, a bounded local overflow
//! list per destination, and one "parked" flag per shard for doorbells.
//!
//! # Parked protocol (why no wake-up is lost)
//!
//! Consumer `c` before blocking, in [`Endpoint::prepare_park`]:
//! `parked[c] = true; fence(SeqCst); any inbound ring non-empty?` — if so it clears the
//! flag and does not block.
//! Producer `p` after publishing a message into the ring to `c` (`tail` store):
//! `fence(SeqCst); if parked[c] { claim it, ring c's doorbell }`.
//!
//! This is Dekker's store→fence→load pattern. The two SeqCst fences are totally
//! ordered. If the consumer's fence comes first, the producer's load of `parked[c]`
//! (after its fence) sees `true` or a later value; if the producer's fence comes
//! first, the consumer's load of `tail` (after its fence) sees the new message. So
//! either the consumer sees the message and stays awake, or the producer sees the flag
//! and rings the doorbell (possibly both: a spurious doorbell, which is harmless).
//! Only the load→store reordering that plain Release/Acquire allows is excluded, which
//! is why both fences are needed.
//!
//! A producer claims the flag with a swap, so one park gets at most one doorbell even
//! with many producers. The claim can land after the consumer already decided not to
//! block; the doorbell must therefore be *sticky* (an io_uring `MSG_RING` completion, an
//! eventfd count, a `thread::park` token): a doorbell arriving while awake makes the next
//! wait return at once instead of being lost.
//!
//! Overflow: a message kept on the local overflow list is not yet visible to the
//! consumer, so it needs no doorbell until [`Endpoint::flush`] publishes it; `flush`
//! then runs the producer side of the protocol and reports which consumers to wake.
//! A shard with overflow pending must not block indefinitely itself (nobody would wake
//! it to retry), so `prepare_park` refuses while any overflow list is non-empty.
//!
//! Reservations: a message that must not be refused later (a hand-off whose socket is
//! already on its way) reserves its place first with [`Endpoint::reserve`]. Reserved
//! places count against the overflow bound, so the matching
//! [`Endpoint::send_reserved`] always finds room and the list still never exceeds
//! `overflow_max`.

use std::collections::VecDeque;
use std::fmt;

use super::spsc::{channel, Consumer, Producer};
use super::sync::{fence, Arc, AtomicBool, CachePadded, Ordering};

/// Most shards a mesh can hold; bounds [`WakeSet`] to a fixed inline bitset.
pub const MAX_SHARDS: usize = 256;

const WAKE_WORDS: usize = MAX_SHARDS / 64;

/// What a send did, so the caller knows whether to ring the consumer's doorbell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// In the ring; the consumer is running and will see it.
    Queued,
    /// In the ring, and the consumer had published "parked": ring its doorbell.
    /// This send claimed the flag, so no other producer reports it for this park.
    QueuedWake,
    /// The ring was full (or older messages are still waiting): kept on the bounded
    /// local overflow list, moved into the ring by a later `flush`.
    Overflowed,
}

/// A message the mesh did not take; the caller gets it back and counts the drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError<T> {
    /// The ring and the overflow list to that shard are both full.
    Rejected(T),
    /// The destination is this shard itself or not a shard of this mesh.
    NoSuchShard(T),
}

impl<T> SendError<T> {
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            SendError::Rejected(msg) | SendError::NoSuchShard(msg) => msg,
        }
    }
}

/// Why a mesh could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    NoShards,
    TooManyShards { shards: usize, max: usize },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::NoShards => write!(f, "a mesh needs at least one shard"),
            RingError::TooManyShards { shards, max } => {
                write!(
                    f,
                    "{shards} shards requested, the mesh supports at most {max}"
                )
            }
        }
    }
}

impl std::error::Error for RingError {}

/// Per-endpoint counters (outbound side). Plain integers: the endpoint has one owner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshStats {
    /// Messages published into a ring, directly or later from overflow.
    pub sent: u64,
    /// Messages that went onto an overflow list (each also counts in `sent` once
    /// `flush` publishes it).
    pub overflowed: u64,
    /// Messages handed back with `SendError::Rejected`.
    pub rejected: u64,
}

/// A set of shard ids (fixed inline bitset, no allocation per loop turn).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct WakeSet {
    words: [u64; WAKE_WORDS],
}

impl WakeSet {
    /// Adds `shard`; ids at or beyond [`MAX_SHARDS`] are ignored (no mesh has them).
    pub fn insert(&mut self, shard: usize) {
        if let Some(word) = self.words.get_mut(shard / 64) {
            *word |= 1 << (shard % 64);
        }
    }

    pub fn contains(&self, shard: usize) -> bool {
        self.words
            .get(shard / 64)
            .is_some_and(|word| word & (1 << (shard % 64)) != 0)
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&word| word == 0)
    }

    pub fn len(&self) -> usize {
        self.words
            .iter()
            .map(|word| word.count_ones() as usize)
            .sum()
    }

    /// Shard ids in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                Some(i * 64 + bit)
            })
        })
    }
}

impl fmt::Debug for WakeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// Producer side of one pair: the ring plus messages that did not fit yet.
struct Outbound<T> {
    ring: Producer<T>,
    /// FIFO behind the ring's contents; at most `overflow_max - reserved` long.
    overflow: VecDeque<T>,
    /// Places promised by `reserve` and not yet used by `send_reserved` or given back.
    reserved: usize,
}

type ParkedFlag = Arc<CachePadded<AtomicBool>>;

/// One shard's view of the N×N mesh: a producer to every other shard, a consumer
/// from every other shard, and the shared parked flags.
///
/// `Send` (when `T: Send`) so it can move to its shard's thread; not `Sync`, not `Clone`.
pub struct Endpoint<T> {
    id: usize,
    /// Indexed by destination shard; `None` at `id`.
    outbound: Vec<Option<Outbound<T>>>,
    /// Indexed by source shard; `None` at `id`.
    inbound: Vec<Option<Consumer<T>>>,
    /// Every shard's parked flag, indexed by shard; each on its own cache line because
    /// all producers read it on every send.
    parked: Vec<ParkedFlag>,
    overflow_max: usize,
    /// Destinations whose overflow list is non-empty, so `flush` is free when none are.
    overflowing: usize,
    /// Source `recv_batch` starts from; rotates so no source is always served first.
    next_source: usize,
    stats: MeshStats,
}

/// Builds the mesh for `n` shards with rings of `capacity` (rounded up to a power of
/// two) and at most `overflow_max` overflow messages per destination per shard.
/// Endpoint `i` is at index `i`.
pub fn mesh<T>(
    n: usize,
    capacity: usize,
    overflow_max: usize,
) -> Result<Vec<Endpoint<T>>, RingError> {
    if n == 0 {
        return Err(RingError::NoShards);
    }
    if n > MAX_SHARDS {
        return Err(RingError::TooManyShards {
            shards: n,
            max: MAX_SHARDS,
        });
    }
    let mut outbound: Vec<Vec<Option<Outbound<T>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut inbound: Vec<Vec<Option<Consumer<T>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for from in 0..n {
        for to in (0..n).filter(|&to| to != from) {
            let (ring, consumer) = channel(capacity);
            outbound[from][to] = Some(Outbound {
                ring,
                overflow: VecDeque::new(),
                reserved: 0,
            });
            inbound[to][from] = Some(consumer);
        }
    }
    let parked: Vec<ParkedFlag> = (0..n)
        .map(|_| Arc::new(CachePadded::new(AtomicBool::new(false))))
        .collect();
    Ok(outbound
        .into_iter()
        .zip(inbound)
        .enumerate()
        .map(|(id, (outbound, inbound))| Endpoint {
            id,
            outbound,
            inbound,
            parked: parked.clone(),
            overflow_max,
            overflowing: 0,
            next_source: 0,
            stats: MeshStats::default(),
        })
        .collect())
}

/// Producer half of the parked protocol, run after publishing into `flag`'s shard's ring.
/// True when this call claimed the flag: the caller must ring that shard's doorbell.
#[inline]
fn claim_wake(flag: &AtomicBool) -> bool {
    // Orders our `tail` store before the flag load (see the module docs).
    fence(Ordering::SeqCst);
    // Load first so the common case (consumer awake) stays a shared read of the line.
    flag.load(Ordering::Relaxed) && flag.swap(false, Ordering::Relaxed)
}

impl<T> Endpoint<T> {
    /// This shard's id.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Shards in the mesh, including this one.
    pub fn shard_count(&self) -> usize {
        self.parked.len()
    }

    pub fn stats(&self) -> MeshStats {
        self.stats
    }

    /// Messages waiting on the overflow list to `to` (0 for unknown shards).
    pub fn overflow_len(&self, to: usize) -> usize {
        match self.outbound.get(to) {
            Some(Some(out)) => out.overflow.len(),
            _ => 0,
        }
    }

    /// Whether a `send` to `to` would be rejected now (ring and overflow list full).
    /// Only this endpoint adds to them, so `false` holds until its next `send`
    /// (unknown shards: true).
    pub fn is_full(&self, to: usize) -> bool {
        match self.outbound.get(to) {
            Some(Some(out)) => {
                out.overflow.len() + out.reserved >= self.overflow_max
                    && (!out.overflow.is_empty() || out.ring.free_slots() == 0)
            }
            _ => true,
        }
    }

    /// Promises one later [`Endpoint::send_reserved`] to `to` a place: false when the
    /// overflow list has no unpromised room left (or `to` is not another shard).
    /// Every `true` must be followed by exactly one `send_reserved` or `unreserve`.
    pub fn reserve(&mut self, to: usize) -> bool {
        let Some(Some(out)) = self.outbound.get_mut(to) else {
            return false;
        };
        if out.overflow.len() + out.reserved >= self.overflow_max {
            return false;
        }
        out.reserved += 1;
        true
    }

    /// Gives back a place promised by `reserve` that will not be used.
    pub fn unreserve(&mut self, to: usize) {
        if let Some(Some(out)) = self.outbound.get_mut(to) {
            out.reserved = out.reserved.saturating_sub(1);
        }
    }

    /// Sends `msg` into a place promised by `reserve`: never `Rejected`. Without a
    /// reservation it is a plain [`Endpoint::send`].
    pub fn send_reserved(&mut self, to: usize, msg: T) -> Result<SendOutcome, SendError<T>> {
        // Released first: `send` then sees the place as free overflow room.
        self.unreserve(to);
        self.send(to, msg)
    }

    /// True while some overflow list is non-empty: `flush` still has work, so the loop
    /// must come back (and `prepare_park` refuses).
    pub fn has_overflow(&self) -> bool {
        self.overflowing > 0
    }

    /// Sends `msg` to shard `to` without blocking. FIFO per destination, also across
    /// overflow: while older messages wait on the overflow list, new ones queue behind
    /// them.
    pub fn send(&mut self, to: usize, msg: T) -> Result<SendOutcome, SendError<T>> {
        let Some(Some(out)) = self.outbound.get_mut(to) else {
            return Err(SendError::NoSuchShard(msg));
        };
        let msg = if out.overflow.is_empty() {
            match out.ring.push(msg) {
                Ok(()) => {
                    self.stats.sent += 1;
                    return Ok(if claim_wake(&self.parked[to]) {
                        SendOutcome::QueuedWake
                    } else {
                        SendOutcome::Queued
                    });
                }
                Err(msg) => msg,
            }
        } else {
            msg
        };
        if out.overflow.len() + out.reserved >= self.overflow_max {
            self.stats.rejected += 1;
            return Err(SendError::Rejected(msg));
        }
        if out.overflow.is_empty() {
            self.overflowing += 1;
        }
        out.overflow.push_back(msg);
        self.stats.overflowed += 1;
        Ok(SendOutcome::Overflowed)
    }

    /// Moves overflow into rings as space has freed. Call once per loop turn. Returns
    /// the shards that were parked and now have messages: ring their doorbells.
    pub fn flush(&mut self) -> WakeSet {
        let mut wake = WakeSet::default();
        if self.overflowing == 0 {
            return wake;
        }
        let mut published = WakeSet::default();
        for (to, out) in self.outbound.iter_mut().enumerate() {
            let Some(out) = out else { continue };
            if out.overflow.is_empty() {
                continue;
            }
            let moved = out.ring.push_from(&mut out.overflow);
            if moved == 0 {
                continue;
            }
            self.stats.sent += moved as u64;
            if out.overflow.is_empty() {
                self.overflowing -= 1;
            }
            published.insert(to);
        }
        if published.is_empty() {
            return wake;
        }
        // One fence covers every ring published above (see the module docs).
        fence(Ordering::SeqCst);
        for to in published.iter() {
            let flag = &self.parked[to];
            if flag.load(Ordering::Relaxed) && flag.swap(false, Ordering::Relaxed) {
                wake.insert(to);
            }
        }
        wake
    }

    /// Hands up to `max` inbound messages to `f(from, msg)`, FIFO per source. Sources
    /// share the budget: each first gets up to `ceil(max / sources)`, leftover budget
    /// then goes round again; the starting source rotates every call. Returns how many.
    pub fn recv_batch(&mut self, max: usize, mut f: impl FnMut(usize, T)) -> usize {
        let n = self.inbound.len();
        let sources = n.saturating_sub(1);
        if max == 0 || sources == 0 {
            return 0;
        }
        let share = max.div_ceil(sources);
        let start = self.next_source;
        self.next_source = (start + 1) % n;
        let mut taken = 0;
        for pass in 0..2 {
            for k in 0..n {
                let from = (start + k) % n;
                let Some(consumer) = &mut self.inbound[from] else {
                    continue;
                };
                let left = max - taken;
                if left == 0 {
                    return taken;
                }
                let budget = if pass == 0 { share.min(left) } else { left };
                taken += consumer.pop_batch(budget, |msg| f(from, msg));
            }
            if taken == max {
                break;
            }
        }
        taken
    }

    /// Consumer half of the parked protocol. Publishes "parked", then re-checks every
    /// inbound ring. `true`: nothing is pending and a producer that publishes from now
    /// on will ring the doorbell, so the caller may block until it rings. `false`: the
    /// flag is cleared again and the caller must not block — a message is pending, or
    /// this shard's own overflow needs further `flush` turns.
    pub fn prepare_park(&mut self) -> bool {
        if self.overflowing > 0 {
            return false;
        }
        let flag = &self.parked[self.id];
        flag.store(true, Ordering::SeqCst);
        // Orders the flag store before the `tail` loads below (see the module docs).
        fence(Ordering::SeqCst);
        if self.inbound.iter().flatten().any(|ring| !ring.is_empty()) {
            flag.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Whether any inbound ring holds a message (a busy-polling consumer's check; no
    /// flag is published, so producers send no doorbell).
    pub fn has_inbound(&self) -> bool {
        self.inbound.iter().flatten().any(|ring| !ring.is_empty())
    }

    /// Messages waiting in the inbound rings (a snapshot, for metrics).
    pub fn inbound_len(&self) -> usize {
        self.inbound.iter().flatten().map(|ring| ring.len()).sum()
    }

    /// Call after waking from a park: producers stop sending doorbells. A producer
    /// that still saw the old flag sends one spurious doorbell, which is harmless.
    pub fn unpark(&mut self) {
        self.parked[self.id].store(false, Ordering::Relaxed);
    }
}

impl<T> fmt::Debug for Endpoint<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("id", &self.id)
            .field("shard_count", &self.shard_count())
            .field("overflowing", &self.overflowing)
            .field("stats", &self.stats)
            .finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::thread;

    /// The Dekker race: a consumer deciding to block and a producer publishing. If the
    /// consumer blocks, the producer must have claimed the doorbell.
    #[test]
    fn park_races_send() {
        loom::model(|| {
            let mut eps = mesh::<u32>(2, 2, 2).expect("valid mesh");
            let mut consumer = eps.pop().expect("endpoint 1");
            let mut producer = eps.pop().expect("endpoint 0");
            let sender = thread::spawn(move || producer.send(1, 7));
            let parked = consumer.prepare_park();
            let outcome = sender.join().expect("sender panicked");
            assert!(matches!(
                outcome,
                Ok(SendOutcome::Queued | SendOutcome::QueuedWake)
            ));
            if parked {
                assert_eq!(outcome, Ok(SendOutcome::QueuedWake), "lost wake-up");
            }
            let mut got = Vec::new();
            consumer.recv_batch(4, |_, m| got.push(m));
            assert_eq!(got, [7]);
        });
    }

    /// Two producers race one parking consumer: at most one doorbell per park, and
    /// exactly one if it blocked.
    #[test]
    fn one_doorbell_per_park() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let mut eps = mesh::<u32>(3, 2, 2).expect("valid mesh");
            let mut consumer = eps.pop().expect("endpoint 2");
            let handles: Vec<_> = eps
                .into_iter()
                .map(|mut ep| thread::spawn(move || ep.send(2, 1)))
                .collect();
            let parked = consumer.prepare_park();
            let wakes = handles
                .into_iter()
                .map(|h| h.join().expect("sender panicked"))
                .filter(|outcome| *outcome == Ok(SendOutcome::QueuedWake))
                .count();
            assert!(wakes <= 1);
            if parked {
                assert_eq!(wakes, 1, "lost wake-up");
            }
        });
    }

    /// Overflow published by `flush` runs the same protocol: if the consumer blocks
    /// after draining, some flush must report it in the wake set.
    #[test]
    fn flush_wakes_parked_consumer() {
        loom::model(|| {
            let mut eps = mesh::<u32>(2, 1, 2).expect("valid mesh");
            let mut consumer = eps.pop().expect("endpoint 1");
            let mut producer = eps.pop().expect("endpoint 0");
            assert_eq!(producer.send(1, 1), Ok(SendOutcome::Queued));
            assert_eq!(producer.send(1, 2), Ok(SendOutcome::Overflowed));
            let flusher = thread::spawn(move || {
                let mut woke = false;
                while producer.has_overflow() {
                    woke |= producer.flush().contains(1);
                    thread::yield_now();
                }
                woke
            });
            let mut got = Vec::new();
            while got.is_empty() {
                if consumer.recv_batch(1, |_, m| got.push(m)) == 0 {
                    thread::yield_now();
                }
            }
            let parked = got.len() == 1 && consumer.prepare_park();
            let woke = flusher.join().expect("flusher panicked");
            if parked {
                assert!(woke, "lost wake-up after flush");
            }
            consumer.recv_batch(4, |_, m| got.push(m));
            assert_eq!(got, [1, 2]);
        });
    }
}
