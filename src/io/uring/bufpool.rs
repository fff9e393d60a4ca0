//! The provided-buffer pool of one ring: the buffers multishot receives land in, and
//! the window of them posted to the kernel so an idle loop keeps few pages resident.

use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// An anonymous private mapping, unmapped on drop.
struct Mmap {
    ptr: *mut u8,
    len: usize,
}

impl Mmap {
    fn new(len: usize) -> io::Result<Mmap> {
        // SAFETY: anonymous private mapping with no address hint; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmap {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap and nothing refers to it any more
        // (owners leak the mapping instead when the kernel may still write to it).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// A provided-buffer ring: `count` buffers of `size` bytes, handed to the kernel through
/// a shared ring of `BufRingEntry`; the kernel picks one per multishot receive.
///
/// The kernel takes entries in ring order, so with every free buffer posted it cycles
/// through the whole pool and every page of it becomes resident (2 MiB for 512 × 4 KiB,
/// ~200 B per connection at 10k idle connections). Instead only `window` entries are
/// posted; the other free buffers wait in `spare`, most recently returned on top, and
/// refill the ring as the kernel takes entries. So the same few warm buffers circulate
/// and the pool's resident size follows the receive concurrency, not the pool size.
/// Running out of posted entries is `ENOBUFS` (the receive is re-armed after the turn,
/// see `rearm_starved`), and widens the window, up to the whole pool. A burst (a
/// connect storm) still warms the whole pool, so `trim`, run when the loop is idle,
/// narrows the window again (straight to `WINDOW_IDLE` after an interval that took
/// almost nothing) and releases the pages of buffers that sat in `spare` for a whole
/// trim interval. Entries posted beyond the narrowed window cannot be taken back one
/// by one, and after a burst that is the whole pool, resident for good (~200 B per
/// connection at 10k idle ones): `recall` takes them all back while the ring's
/// registration is withdrawn (the loop's `recall_posted_buffers`), releases their
/// pages and posts the window again.
pub(super) struct BufPool {
    ring: Mmap,
    data: Mmap,
    pub(super) count: u16,
    size: usize,
    /// The system page size: `trim` releases whole pages only.
    page: usize,
    /// Our copy of the tail; published to the kernel with a release store.
    tail: u16,
    /// Free buffers not posted to the kernel; the last one was returned most recently.
    spare: Vec<u16>,
    /// Entries posted and not yet taken by the kernel (`taken`).
    posted: u16,
    /// Entries kept posted while `spare` has buffers.
    window: u16,
    initial_window: u16,
    /// Smallest `spare.len()` since the last `trim`: `spare[..spare_low]` were not
    /// used during the whole interval.
    spare_low: usize,
    /// `spare[..trimmed]` have had their pages released and were not used since.
    trimmed: usize,
    /// A receive starved since the last `trim`.
    starved: bool,
    /// Buffers the kernel took since the last `trim`: what the interval asked of
    /// the pool.
    taken_in_interval: u32,
}

/// The system page size (4 KiB if it cannot be read).
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page)
        .ok()
        .filter(|p| *p > 0)
        .unwrap_or(4096)
}

/// A pool posts this share of its buffers at first (and at least `WINDOW_MIN`).
const WINDOW_DIVISOR: usize = 4;
const WINDOW_MIN: usize = 64;
/// The window of a pool that took at most this many buffers in a whole trim
/// interval (idle connections, a few pings): 64 KiB posted with 4 KiB buffers
/// instead of a quarter of the pool. A burst after it widens the window again, by
/// two per starved receive.
const WINDOW_IDLE: u16 = 16;

impl BufPool {
    pub(super) fn new(count: usize, size: usize) -> io::Result<BufPool> {
        assert!(
            count.is_power_of_two() && count <= 32768,
            "buffer count must be a power of two <= 32768"
        );
        let ring = Mmap::new(count * std::mem::size_of::<BufRingEntry>())?;
        let data = Mmap::new(count * size)?;
        let window = (count / WINDOW_DIVISOR).max(WINDOW_MIN).min(count);
        let mut pool = BufPool {
            ring,
            data,
            count: count as u16,
            size,
            page: page_size(),
            tail: 0,
            // Lowest ids on top: the first buffers used are the first pages.
            spare: (0..count as u16).rev().collect(),
            posted: 0,
            window: window as u16,
            initial_window: window as u16,
            spare_low: count,
            trimmed: 0,
            starved: false,
            taken_in_interval: 0,
        };
        pool.top_up();
        Ok(pool)
    }

    /// Posts spare buffers until `window` entries are available to the kernel.
    fn top_up(&mut self) {
        let mut any = false;
        while self.posted < self.window {
            let Some(bid) = self.spare.pop() else { break };
            self.write_entry(bid);
            self.posted += 1;
            any = true;
        }
        if any {
            self.spare_low = self.spare_low.min(self.spare.len());
            self.trimmed = self.trimmed.min(self.spare.len());
            self.publish();
        }
    }

    /// Buffers posted to the kernel and not yet taken (by our count: a completion
    /// carrying a buffer is `taken`).
    pub(super) fn posted(&self) -> u16 {
        self.posted
    }

    /// The kernel took a posted entry (a completion carried buffer `bid`).
    pub(super) fn taken(&mut self) {
        self.posted = self.posted.saturating_sub(1);
        self.taken_in_interval = self.taken_in_interval.saturating_add(1);
        self.top_up();
    }

    /// A receive found no posted buffer: post more from now on. Each starved receive
    /// is one buffer short (a multishot receive ends at its first `ENOBUFS`), so the
    /// window grows by about the shortfall of a burst, not by doubling per starved
    /// socket.
    pub(super) fn widen(&mut self) {
        self.window = self.window.saturating_add(2).min(self.count);
        self.starved = true;
        self.top_up();
    }

    /// Ends a trim interval: unless a receive starved during the interval, halves a
    /// widened window down to the initial one, or narrows it to `WINDOW_IDLE` if the
    /// interval took no more buffers than that; and releases the pages of the spare buffers unused
    /// throughout it. Only whole pages that hold nothing but such buffers are released: a buffer
    /// size that is not a multiple of the page size (or a page larger than the
    /// buffer) makes neighbours share a page, and one of them may be posted (the
    /// kernel may be writing a receive into it) or lent. Returns how many newly cold
    /// buffers lost all their pages.
    pub(super) fn trim(&mut self) -> usize {
        if !self.starved {
            self.window = if self.taken_in_interval <= u32::from(WINDOW_IDLE) {
                WINDOW_IDLE.min(self.count)
            } else {
                // Towards the initial window, never above the current one: traffic
                // a narrow window served without starving needs no more.
                (self.window / 2).max(self.initial_window.min(self.window))
            };
        }
        self.starved = false;
        self.taken_in_interval = 0;
        let cold = self.spare_low.min(self.spare.len());
        let first_new = self.trimmed.min(cold);
        let mut released = 0;
        if first_new < cold {
            // Every cold buffer, marked newly cold or not: a page shared by a buffer
            // that went cold earlier and one that went cold now is released now.
            let mut bids: Vec<(u16, bool)> = self.spare[..cold]
                .iter()
                .enumerate()
                .map(|(i, &bid)| (bid, i >= first_new))
                .collect();
            bids.sort_unstable();
            // Adjacent buffers are one range: one call each.
            let mut i = 0;
            while i < bids.len() {
                let mut j = i + 1;
                while j < bids.len() && bids[j].0 == bids[j - 1].0 + 1 {
                    j += 1;
                }
                if bids[i..j].iter().any(|&(_, new)| new) {
                    released += self.release(&bids[i..j]);
                }
                i = j;
            }
        }
        self.trimmed = cold;
        self.spare_low = self.spare.len();
        released
    }

    /// Releases the pages lying wholly inside `run`, buffers with consecutive ids
    /// that all sat in `spare[..spare_low]` for the interval or that `recall` took
    /// back. Returns how many of the newly cold ones lost all their pages.
    fn release(&self, run: &[(u16, bool)]) -> usize {
        let (Some(&(first, _)), Some(&(last, _))) = (run.first(), run.last()) else {
            return 0;
        };
        let start = usize::from(first) * self.size;
        let end = (usize::from(last) + 1) * self.size;
        // Inward to page boundaries: `madvise` acts on whole pages.
        let lo = start.div_ceil(self.page) * self.page;
        let hi = end / self.page * self.page;
        if lo >= hi {
            return 0;
        }
        // SAFETY: `data` is page-aligned (mmap) and `[lo, hi)` is a whole number of
        // pages inside `[start, end)`, which lies inside the mapping (bid < count).
        // Every byte of those pages belongs to a buffer of `run`; they are in
        // `spare` or being recalled: neither posted to the kernel (a recalled entry
        // is in no registered ring) nor lent to the caller, so nothing
        // reads or writes them until they are posted again, and a private anonymous
        // page released here reads back as zeros.
        unsafe {
            libc::madvise(self.data.ptr.add(lo).cast(), hi - lo, libc::MADV_DONTNEED);
        }
        run.iter()
            .filter(|&&(bid, new)| {
                let s = usize::from(bid) * self.size;
                new && s >= lo && s + self.size <= hi
            })
            .count()
    }

    /// Nothing left for a trim to do on an idle loop: the idle window, nothing
    /// posted beyond it, every spare buffer's pages released.
    pub(super) fn settled(&self) -> bool {
        self.window <= WINDOW_IDLE && !self.overposted() && self.trimmed >= self.spare.len()
    }

    /// More entries are posted than the window asks for: only `recall` takes them
    /// back (the kernel keeps a posted entry until a receive takes it).
    pub(super) fn overposted(&self) -> bool {
        self.posted > self.window
    }

    /// Takes back every entry still posted, for a ring whose buffer registration the
    /// caller has withdrawn after reporting every completion of it (so the entries
    /// left, the last `posted` in ring order, were never taken and never will be),
    /// releases their pages and resets the ring to empty. The caller registers the
    /// ring again (the kernel starts it at head 0) and then calls `refill`. Returns
    /// how many buffers lost all their pages.
    pub(super) fn recall(&mut self) -> usize {
        let mask = self.count.wrapping_sub(1);
        let mut bids: Vec<(u16, bool)> = (0..self.posted)
            .map(|i| {
                let idx = (self.tail.wrapping_sub(self.posted).wrapping_add(i) & mask) as usize;
                // SAFETY: idx < count, inside the ring mapping; the kernel no longer
                // reads the ring (its registration is withdrawn).
                (unsafe { (*self.entries().add(idx)).bid() }, true)
            })
            .collect();
        self.posted = 0;
        self.tail = 0;
        self.publish();
        bids.sort_unstable();
        let mut released = 0;
        let mut i = 0;
        while i < bids.len() {
            let mut j = i + 1;
            while j < bids.len() && bids[j].0 == bids[j - 1].0 + 1 {
                j += 1;
            }
            released += self.release(&bids[i..j]);
            i = j;
        }
        // Below the warm buffers, among those already released: the window is
        // posted again from the top, the most recently used first.
        let recalled = bids.len();
        let trimmed = self.trimmed.min(self.spare.len());
        self.spare
            .splice(trimmed..trimmed, bids.into_iter().map(|(bid, _)| bid));
        self.trimmed = trimmed + recalled;
        self.spare_low = self.spare_low.min(self.spare.len() - recalled) + recalled;
        released
    }

    /// Drops every entry still posted from the pool's books, for a withdrawn ring
    /// whose completions could not all be reported: a taken one comes back through
    /// its completion and `give_back`, an untaken one is lost to the pool. Returns
    /// how many were dropped.
    pub(super) fn forget_posted(&mut self) -> u16 {
        let dropped = self.posted;
        self.posted = 0;
        self.tail = 0;
        self.publish();
        dropped
    }

    /// Posts the window again after `recall` and the ring's new registration.
    pub(super) fn refill(&mut self) {
        self.top_up();
    }

    pub(super) fn ring_addr(&self) -> u64 {
        self.ring.ptr as u64
    }

    fn entries(&self) -> *mut BufRingEntry {
        self.ring.ptr.cast()
    }

    fn write_entry(&mut self, bid: u16) {
        let mask = self.count.wrapping_sub(1);
        let idx = (self.tail & mask) as usize;
        // SAFETY: idx < count, inside the ring mapping; the kernel only reads entries
        // between its head and our published tail, and this one is beyond the tail.
        unsafe {
            let e = &mut *self.entries().add(idx);
            e.set_addr(self.data.ptr.add(bid as usize * self.size) as u64);
            e.set_len(self.size as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives in entry 0 of the page-aligned ring mapping; the
        // kernel reads it concurrently, hence the atomic release store, which makes the
        // entries written before it visible.
        unsafe {
            let tail = BufRingEntry::tail(self.entries()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    pub(super) fn give_back(&mut self, bid: u16) {
        self.spare.push(bid);
        self.top_up();
    }

    pub(super) fn slice(&self, bid: u16, len: usize) -> &[u8] {
        let len = len.min(self.size);
        let bid = (bid as usize).min(self.count as usize - 1);
        // SAFETY: bid < count and len <= size, so the range is inside the data mapping;
        // the kernel wrote these bytes before posting the completion and does not touch
        // this buffer again until it is given back.
        unsafe { std::slice::from_raw_parts(self.data.ptr.add(bid * self.size), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, VecDeque};

    /// Plays the kernel: takes posted entries in ring order (no real io_uring).
    struct FakeKernel {
        head: u16,
    }

    impl FakeKernel {
        /// The next posted buffer, as a multishot receive would pick it; `None` is
        /// `ENOBUFS`.
        fn take(&mut self, pool: &mut BufPool) -> Option<u16> {
            if pool.posted == 0 {
                return None;
            }
            let idx = (self.head & (pool.count - 1)) as usize;
            // SAFETY: idx < count, inside the ring mapping; the pool wrote this entry
            // (it is between our head and its tail) and nothing else touches it.
            let e = unsafe { &*pool.entries().add(idx) };
            let bid = e.bid();
            assert_eq!(e.len() as usize, pool.size);
            assert_eq!(
                e.addr(),
                pool.data.ptr as u64 + u64::from(bid) * pool.size as u64
            );
            self.head = self.head.wrapping_add(1);
            pool.taken();
            Some(bid)
        }
    }

    /// Buffers are conserved (posted + spare + held = count), only `window` are
    /// posted, and one receive at a time keeps reusing the same warm buffers
    /// instead of cycling through the pool.
    #[test]
    fn a_quiet_pool_reuses_a_window_of_warm_buffers() {
        let mut pool = BufPool::new(512, 64).expect("mmap");
        assert_eq!(
            (pool.window, pool.posted, pool.spare.len()),
            (128, 128, 384)
        );
        let mut k = FakeKernel { head: 0 };
        let mut used = BTreeSet::new();
        for _ in 0..10_000 {
            let bid = k.take(&mut pool).expect("posted");
            used.insert(bid);
            assert_eq!(usize::from(pool.posted) + pool.spare.len() + 1, 512);
            pool.give_back(bid);
        }
        assert_eq!(usize::from(pool.posted) + pool.spare.len(), 512);
        assert_eq!(used.len(), 129, "the window plus the one in hand");
        assert_eq!(used.iter().max(), Some(&128));
    }

    /// Buffers held by the application do not shrink what the kernel can take:
    /// spare ones are posted instead, until the pool is exhausted; then `ENOBUFS`.
    #[test]
    fn held_buffers_are_replaced_from_spare_until_exhausted() {
        let mut pool = BufPool::new(256, 64).expect("mmap");
        assert_eq!(pool.window, 64);
        let mut k = FakeKernel { head: 0 };
        let mut held = VecDeque::new();
        for _ in 0..256 {
            held.push_back(k.take(&mut pool).expect("a buffer"));
        }
        assert_eq!(k.take(&mut pool), None, "all 256 held");
        assert_eq!(held.iter().collect::<BTreeSet<_>>().len(), 256);
        // Returned buffers are posted again at once (the window is not full).
        let first = held.pop_front().expect("held");
        pool.give_back(first);
        assert_eq!(k.take(&mut pool), Some(first));
    }

    /// Each starved receive widens the window by two, up to the pool size.
    #[test]
    fn starvation_widens_the_window_up_to_the_pool() {
        let mut pool = BufPool::new(128, 64).expect("mmap");
        assert_eq!(pool.window, 64);
        let mut k = FakeKernel { head: 0 };
        let mut held = Vec::new();
        for _ in 0..64 {
            held.push(k.take(&mut pool).expect("posted"));
        }
        // Spare buffers were posted as entries were taken.
        assert_eq!((pool.posted, pool.spare.len()), (64, 0));
        pool.widen();
        assert_eq!(pool.window, 66);
        for _ in 0..40 {
            pool.widen();
        }
        assert_eq!(pool.window, 128);
        for bid in held {
            pool.give_back(bid);
        }
        assert_eq!((pool.posted, pool.spare.len()), (128, 0));
    }

    fn fill(pool: &BufPool, bid: u16, byte: u8) {
        // SAFETY: the buffer is inside the data mapping and held by the test.
        unsafe {
            std::ptr::write_bytes(
                pool.data.ptr.add(usize::from(bid) * pool.size),
                byte,
                pool.size,
            )
        }
    }

    /// After a burst widened the window to the whole pool, trims narrow it again,
    /// and buffers unused for a whole interval lose their pages (they read back as
    /// zeros), while the warm ones keep theirs.
    #[test]
    fn trims_narrow_the_window_and_release_cold_buffers() {
        let mut pool = BufPool::new(256, 4096).expect("mmap");
        let mut k = FakeKernel { head: 0 };
        // A burst: every buffer taken and written, receives starving meanwhile.
        let held: Vec<u16> = (0..256)
            .map(|_| k.take(&mut pool).expect("a buffer"))
            .collect();
        for &bid in &held {
            fill(&pool, bid, 0xAB);
        }
        for _ in 0..100 {
            pool.widen();
        }
        for &bid in &held {
            pool.give_back(bid);
        }
        assert_eq!((pool.window, pool.posted), (256, 256));
        assert_eq!(pool.trim(), 0, "a starved interval keeps the window");
        assert_eq!(pool.window, 256);
        // Traffic that does not starve: the window halves.
        for _ in 0..100 {
            let bid = k.take(&mut pool).expect("posted");
            pool.give_back(bid);
        }
        assert_eq!(pool.trim(), 0, "everything is posted: nothing spare");
        assert_eq!(pool.window, 128);
        // Nothing taken for an interval: straight to the idle window.
        assert_eq!(pool.trim(), 0);
        assert_eq!(pool.window, WINDOW_IDLE);
        // Quiet traffic, one buffer at a time: the posted entries drain to the
        // window, returned buffers pile up in spare and only the top one circulates.
        let mut warm = BTreeSet::new();
        for _ in 0..1000 {
            let bid = k.take(&mut pool).expect("posted");
            warm.insert(bid);
            pool.give_back(bid);
        }
        assert_eq!((pool.posted, pool.spare.len()), (16, 240));
        // Spare filled up during this interval (its low mark is 0): nothing is
        // known to be cold yet. Traffic a narrow window served keeps it narrow.
        assert_eq!(pool.trim(), 0);
        assert_eq!(pool.window, WINDOW_IDLE);
        warm.clear();
        for _ in 0..1000 {
            let bid = k.take(&mut pool).expect("posted");
            warm.insert(bid);
            pool.give_back(bid);
        }
        // This interval used only the top of spare: the rest is released.
        assert_eq!(pool.trim(), 239, "all spare but the circulating top one");
        assert_eq!(warm.len(), 256 - 239, "the window and the top of spare");
        let zeroed = pool.spare[..239]
            .iter()
            .filter(|&&bid| pool.slice(bid, 4096).iter().all(|&b| b == 0))
            .count();
        assert_eq!(zeroed, 239);
        let top = pool.spare[239];
        assert!(
            pool.slice(top, 4096).iter().all(|&b| b == 0xAB),
            "warm buffer kept"
        );
        // A wholly idle interval: the last spare buffer goes too, and none twice.
        assert_eq!(pool.trim(), 1);
        assert_eq!(pool.trim(), 0);
    }

    /// A burst leaves the whole pool posted and resident; an idle interval narrows
    /// the window, and `recall` (the ring's registration withdrawn, then renewed at
    /// head 0) takes back every entry the kernel had not taken, releases their
    /// pages and posts the window again, with every buffer posted once, held or
    /// spare: none lost, none twice.
    #[test]
    fn recall_takes_back_what_a_burst_left_posted() {
        let mut pool = BufPool::new(512, 4096).expect("mmap");
        let mut k = FakeKernel { head: 0 };
        let burst: Vec<u16> = (0..512)
            .map(|_| k.take(&mut pool).expect("a buffer"))
            .collect();
        for &bid in &burst {
            fill(&pool, bid, 0xAB);
        }
        for _ in 0..300 {
            pool.widen();
        }
        for &bid in &burst {
            pool.give_back(bid);
        }
        assert_eq!((pool.window, pool.posted), (512, 512));
        assert!(!pool.overposted());
        pool.trim();
        assert_eq!(pool.window, 512, "the burst starved");
        pool.trim();
        assert_eq!(pool.window, WINDOW_IDLE, "an idle interval");
        assert!(pool.overposted(), "all 512 still posted");
        // Two receives landed before the registration was withdrawn; the caller
        // holds their buffers.
        let held = [
            k.take(&mut pool).expect("posted"),
            k.take(&mut pool).expect("posted"),
        ];
        assert_eq!(pool.recall(), 510, "every untaken entry's page released");
        assert_eq!((pool.posted, pool.spare.len()), (0, 510));
        assert!(!pool.overposted());
        k.head = 0;
        pool.refill();
        assert_eq!(pool.posted, WINDOW_IDLE);
        for &bid in &held {
            assert!(pool.slice(bid, 4096).iter().all(|&b| b == 0xAB), "held");
        }
        let zeroed = (0..512u16)
            .filter(|bid| pool.slice(*bid, 4096).iter().all(|&b| b == 0))
            .count();
        assert_eq!(zeroed, 510);
        // The kernel can now take each buffer not held exactly once.
        let mut taken = BTreeSet::new();
        while let Some(bid) = k.take(&mut pool) {
            assert!(taken.insert(bid), "buffer {bid} posted twice");
        }
        assert_eq!(taken.len(), 510);
        assert!(held.iter().all(|bid| !taken.contains(bid)));
        for bid in taken.into_iter().chain(held) {
            pool.give_back(bid);
        }
        assert_eq!(usize::from(pool.posted) + pool.spare.len(), 512);
    }

    /// Entries that cannot be told taken or not are dropped from the books, never
    /// posted again while the kernel may hold them; a taken one comes back through
    /// its completion.
    #[test]
    fn forgotten_entries_are_never_posted_again() {
        let mut pool = BufPool::new(64, 64).expect("mmap");
        let mut k = FakeKernel { head: 0 };
        let first = k.take(&mut pool).expect("posted");
        let posted = pool.posted;
        assert_eq!(pool.forget_posted(), posted);
        k.head = 0;
        pool.refill();
        let mut seen = BTreeSet::new();
        while let Some(bid) = k.take(&mut pool) {
            assert!(seen.insert(bid));
        }
        assert!(
            seen.is_empty(),
            "every other buffer was posted and forgotten"
        );
        pool.give_back(first);
        assert_eq!(k.take(&mut pool), Some(first));
    }

    /// Buffers smaller than a page share it (so do 4 KiB buffers on a 16 or 64 KiB
    /// page kernel): a trim never releases a page that also holds a buffer in use
    /// (here lent to the caller; a posted one may be receiving), and releases it once
    /// every buffer on it is cold.
    #[test]
    fn trim_releases_only_pages_holding_nothing_but_cold_buffers() {
        let size = page_size() / 2;
        let mut pool = BufPool::new(256, size).expect("mmap");
        let mut k = FakeKernel { head: 0 };
        // Buffers 0 and 1 share the first page; 1 stays with the caller.
        assert_eq!((k.take(&mut pool), k.take(&mut pool)), (Some(0), Some(1)));
        fill(&pool, 0, 0xAB);
        fill(&pool, 1, 0xCD);
        pool.give_back(0);
        // 0 was in use during the first interval, cold during the second.
        pool.trim();
        pool.trim();
        assert!(
            pool.slice(1, size).iter().all(|&b| b == 0xCD),
            "buffer 1, lent to the caller, was zeroed by a trim of buffer 0"
        );
        // Once 1 is cold too, their page goes.
        pool.give_back(1);
        assert_eq!(pool.trim(), 0, "1 was in use during this interval");
        assert_eq!(pool.trim(), 1);
        assert!(pool.slice(0, size).iter().all(|&b| b == 0));
        assert!(pool.slice(1, size).iter().all(|&b| b == 0));
    }
}
