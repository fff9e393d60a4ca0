//! Outbound bytes as a queue of segments (a leaf: imports no broker module).
//!
//! [`TxBuf`] is what the shard builds for one connection: small packets and the
//! per-connection parts of large ones (fixed header, topic or alias, packet id,
//! properties) are coalesced into one growing buffer; a large payload is appended
//! as a shared [`Bytes`] segment (a reference count, no copy), so one payload serves
//! every subscriber of a fan-out. [`TxChain`] is what the IO side sends: the same
//! segments frozen, read as slices (`chunks`, vectored sends) and consumed from the
//! front by [`TxChain::advance`] after a partial write, without copying the rest.
//!
//! Transforms (TLS now, WebSocket framing next) consume a chain through `chunks`:
//! the one seam that says "these are the pending outbound bytes, in order".
//!
//! Accounting: [`TxBuf::len`] is every byte the connection holds alive (what its
//! `max_outbound_bytes` bound and slow-consumer decisions use); [`TxBuf::own_len`]
//! leaves out shared payload segments, which the memory mark counts once per node
//! (see `docs/ARCHITECTURE.md`, "Backpressure").

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

/// Payloads at least this long travel as a shared segment; shorter ones are copied
/// into the connection's buffer, where one contiguous write is cheaper than a frozen
/// head, one more segment and iovec entry and a reference count per copy. Small
/// messages (the 64 B budget paths) therefore keep the single-buffer path. Measured
/// (`perf/share_threshold.sh`, callgrind instructions per delivery of one PUBLISH to
/// 16 subscribers, 2026-12-06): copying costs ~0.22 instructions per byte and
/// sharing a flat ~2,700 (QoS 1) / ~1,720 (QoS 0); at 3,584 B copying still wins
/// (2,682 vs 2,702 and 1,679 vs 1,724), at 4,096 B sharing does (2,708 vs 2,828 and
/// 1,730 vs 1,824). A connection's output stays bounded by `max_outbound_bytes`
/// either way, so copies below the threshold cannot pile up.
pub const SHARE_MIN_BYTES: usize = 4096;

/// The threshold in force: [`SHARE_MIN_BYTES`] unless a measuring tool set another
/// (`perf/share_threshold.sh` compares shared and copied deliveries of one build).
static SHARE_MIN: AtomicUsize = AtomicUsize::new(SHARE_MIN_BYTES);

/// Whether a payload of `len` bytes travels as a shared segment. One relaxed load:
/// a plain read of a word no broker code ever writes.
#[inline]
pub fn shares(len: usize) -> bool {
    len >= SHARE_MIN.load(Ordering::Relaxed)
}

/// Sets the share threshold for this process. For measuring tools only
/// (`callgrind-paths share_*`): the broker never calls it, and every shard of a
/// process must see one value (set it before any shard exists).
pub fn set_share_min_bytes_for_measurement(len: usize) {
    SHARE_MIN.store(len, Ordering::Relaxed);
}

/// At most this many segments go into one vectored send; the rest follow when it
/// completes (one send in flight per socket). Well under `UIO_MAXIOV` (1024).
pub const MAX_IOV: usize = 64;

/// Segments waiting before the buffer's tail: frozen runs of coalesced bytes and
/// shared payloads. Boxed in [`TxBuf`], so a connection that never carries a large
/// payload pays one pointer.
#[derive(Debug, Default)]
struct Segs {
    q: VecDeque<Bytes>,
    /// Bytes in `q`.
    len: usize,
    /// Bytes of `q` that are shared payloads.
    shared: usize,
}

/// One connection's encoded output, not yet taken by the IO side.
#[derive(Debug, Default)]
pub struct TxBuf {
    /// The segment being written: coalesced small packets and headers.
    tail: BytesMut,
    segs: Option<Box<Segs>>,
}

impl TxBuf {
    /// Every byte waiting, shared payloads included: the bytes this connection keeps
    /// alive, which its outbound bound counts.
    #[inline]
    pub fn len(&self) -> usize {
        self.tail.len() + self.segs.as_ref().map_or(0, |s| s.len)
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.tail.is_empty() && self.segs.is_none()
    }

    /// Bytes this connection alone owns (shared payload segments left out).
    #[inline]
    pub fn own_len(&self) -> usize {
        self.tail.len() + self.segs.as_ref().map_or(0, |s| s.len - s.shared)
    }

    /// Bytes of shared payload segments this connection references.
    #[inline]
    pub fn shared_len(&self) -> usize {
        self.segs.as_ref().map_or(0, |s| s.shared)
    }

    /// Allocated bytes of the coalescing buffer (an idle connection holds none).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.tail.capacity()
    }

    /// Gives an empty buffer (as `take` leaves it) exactly `len` bytes of room: the
    /// first packet after a flush allocates directly, far cheaper than `BytesMut`'s
    /// general growth path, and a buffer frozen full needs no second allocation.
    #[inline]
    pub fn reserve_first(&mut self, len: usize) {
        if self.tail.capacity() == 0 {
            self.tail = BytesMut::with_capacity(len);
        }
    }

    /// The buffer encoders append to.
    #[inline]
    pub fn tail_mut(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    /// Appends `payload` as a segment of its own: the bytes written before it are
    /// frozen into a segment, and the payload is referenced, not copied.
    pub fn push_shared(&mut self, payload: Bytes) {
        if payload.is_empty() {
            return;
        }
        let segs = self.segs.get_or_insert_with(Box::default);
        if !self.tail.is_empty() {
            let head = std::mem::take(&mut self.tail).freeze();
            segs.len += head.len();
            segs.q.push_back(head);
        }
        segs.len += payload.len();
        segs.shared += payload.len();
        segs.q.push_back(payload);
    }

    /// `(len, own_len)` in one look at the segments.
    #[inline]
    pub fn lens(&self) -> (usize, usize) {
        let t = self.tail.len();
        match &self.segs {
            None => (t, t),
            Some(s) => (t + s.len, t + s.len - s.shared),
        }
    }

    /// Everything written so far as one `Bytes`: the buffer itself when there are no
    /// segments (no copy), else one contiguous copy. For tests and in-memory drivers.
    #[inline]
    pub fn take_bytes(&mut self) -> Bytes {
        if self.segs.is_none() {
            return std::mem::take(&mut self.tail).freeze();
        }
        self.take().to_bytes()
    }

    /// Everything written so far, as a chain for the IO side; leaves the buffer
    /// without an allocation, so an idle connection parks nothing.
    #[inline]
    pub fn take(&mut self) -> TxChain {
        let first = std::mem::take(&mut self.tail).freeze();
        match self.segs.take() {
            None => TxChain { first, rest: None },
            Some(segs) => {
                // The segment list moves over as it is (no second allocation): a
                // stalled subscriber holds one list, not two.
                let mut q = segs.q;
                if !first.is_empty() {
                    q.push_back(first);
                }
                let first = q.pop_front().unwrap_or_default();
                let rest = (!q.is_empty()).then(|| Box::new(q));
                TxChain { first, rest }
            }
        }
    }
}

/// Outbound bytes in order, as segments, consumed from the front.
#[derive(Debug, Default)]
pub struct TxChain {
    /// The segment being sent.
    first: Bytes,
    /// The segments after `first`; `None` for the common single-buffer case, so a
    /// small send allocates nothing here. Boxed: 8 bytes in every socket's state
    /// instead of a 32-byte `VecDeque`, for the one rarer multi-segment case.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<Bytes>>>,
}

impl From<Bytes> for TxChain {
    #[inline]
    fn from(first: Bytes) -> TxChain {
        TxChain { first, rest: None }
    }
}

impl From<Vec<u8>> for TxChain {
    fn from(v: Vec<u8>) -> TxChain {
        TxChain::from(Bytes::from(v))
    }
}

impl TxChain {
    /// A chain of `segs` in order (empty segments are skipped).
    pub fn from_segments(segs: impl IntoIterator<Item = Bytes>) -> TxChain {
        let mut q: VecDeque<Bytes> = segs.into_iter().filter(|b| !b.is_empty()).collect();
        let first = q.pop_front().unwrap_or_default();
        let rest = (!q.is_empty()).then(|| Box::new(q));
        TxChain { first, rest }
    }

    /// Bytes left to send.
    pub fn len(&self) -> usize {
        self.first.len()
            + self
                .rest
                .as_ref()
                .map_or(0, |r| r.iter().map(Bytes::len).sum())
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_empty() && self.rest.is_none()
    }

    /// Segments left (0 when empty).
    pub fn segments(&self) -> usize {
        usize::from(!self.first.is_empty()) + self.rest.as_ref().map_or(0, |r| r.len())
    }

    /// The bytes left, as slices in order: what a vectored send or a transform
    /// (TLS, WebSocket) reads.
    pub fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(&self.first[..])
            .filter(|c| !c.is_empty())
            .chain(self.rest.iter().flat_map(|r| r.iter().map(|b| &b[..])))
    }

    /// Drops the first `n` bytes (a partial send): whole segments are released, a
    /// segment sent in part is sliced (no copy). `n` past the end empties the chain.
    pub fn advance(&mut self, mut n: usize) {
        loop {
            if n < self.first.len() {
                self.first.advance(n);
                return;
            }
            n -= self.first.len();
            match self.rest.as_mut().and_then(|r| r.pop_front()) {
                Some(next) => {
                    self.first = next;
                    if self.rest.as_ref().is_some_and(|r| r.is_empty()) {
                        self.rest = None;
                    }
                }
                None => {
                    self.first = Bytes::new();
                    self.rest = None;
                    return;
                }
            }
        }
    }

    /// The bytes left as one `Bytes`: the segment itself when there is one (no
    /// copy), else one contiguous copy (tests and in-memory drivers).
    #[inline]
    pub fn into_bytes(self) -> Bytes {
        match self.rest {
            None => self.first,
            Some(_) => self.to_bytes(),
        }
    }

    /// One contiguous copy of the bytes left (tests and in-memory drivers).
    pub fn to_bytes(&self) -> Bytes {
        if self.rest.is_none() {
            return self.first.clone();
        }
        let mut out = BytesMut::with_capacity(self.len());
        for c in self.chunks() {
            out.extend_from_slice(c);
        }
        out.freeze()
    }
}

/// Bytes of shared payloads alive, counted once each, however many connections,
/// queues or loops reference them: the payload's owner adds its length when made
/// and subtracts it when the last reference is dropped, on whatever loop that is.
/// One atomic add per payload (not per copy), and only for payloads of at least
/// [`SHARE_MIN_BYTES`].
#[derive(Debug, Clone, Default)]
pub struct PayloadGauge(Arc<AtomicUsize>);

impl PayloadGauge {
    pub fn bytes(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// A shared payload holding a copy of `data`, counted until its last reference
    /// goes.
    pub fn share(&self, data: &[u8]) -> Bytes {
        self.0.fetch_add(data.len(), Ordering::Relaxed);
        Bytes::from_owner(Counted {
            data: data.into(),
            gauge: self.0.clone(),
        })
    }
}

/// The owner behind a counted payload `Bytes`.
struct Counted {
    data: Box<[u8]>,
    gauge: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for Counted {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.gauge.fetch_sub(self.data.len(), Ordering::Relaxed);
    }
}
