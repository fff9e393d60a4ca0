//! The loadgen thread's provided-buffer ring: one registered buffer group the kernel
//! picks from per multishot receive, so an idle client holds no buffer.
//! Split out of `engine.rs`, unchanged.

use super::*;

/// A provided-buffer ring: the kernel picks a buffer per receive, so idle clients hold none.
pub(super) struct BufRing {
    entries: *mut types::BufRingEntry,
    layout: std::alloc::Layout,
    count: u16,
    tail: u16,
    buf_size: usize,
    bufs: Vec<u8>,
}

impl BufRing {
    pub(super) fn new(ring: &IoUring, count: u16, buf_size: usize) -> Result<BufRing, SetupError> {
        let layout = std::alloc::Layout::from_size_align(usize::from(count) * 16, 4096)
            .map_err(|_| SetupError("buffer ring layout".into()))?;
        // SAFETY: layout has non-zero size (count > 0).
        let entries = unsafe { std::alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
        if entries.is_null() {
            return Err(SetupError("buffer ring allocation failed".into()));
        }
        let mut br = BufRing {
            entries,
            layout,
            count,
            tail: 0,
            buf_size,
            bufs: vec![0u8; usize::from(count) * buf_size],
        };
        // SAFETY: `entries` stays allocated until BufRing drops, which happens after the
        // IoUring that uses it (Worker declares `ring` before `bufs`).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, count, BGID, 0)
        }
        .map_err(|e| setup_err("io_uring_register(PBUF_RING)", e))?;
        for bid in 0..count {
            br.give(bid);
        }
        br.publish();
        Ok(br)
    }

    pub(super) fn give(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (self.count - 1));
        // SAFETY: idx < count, inside the allocation; the kernel only reads entries
        // below the published tail, and this one is past it until `publish`.
        let e = unsafe { &mut *self.entries.add(idx) };
        e.set_addr(self.bufs.as_ptr() as u64 + u64::from(bid) * self.buf_size as u64);
        e.set_len(self.buf_size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    pub(super) fn publish(&self) {
        // SAFETY: the tail field lives in the first entry of our allocation; the kernel
        // reads it concurrently, hence the atomic release store.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    pub(super) fn data(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * self.buf_size;
        &self.bufs[start..start + len.min(self.buf_size)]
    }
}

// SAFETY: the entries and buffers are owned by this BufRing alone; it moves to its
// worker thread once, before any use, and is only touched from that thread afterwards.
unsafe impl Send for BufRing {}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.entries as *mut u8, self.layout) };
    }
}
