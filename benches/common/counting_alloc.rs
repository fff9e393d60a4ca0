//! A global allocator for the memory-reporting benches: mimalloc (the allocator the
//! broker binary uses) plus counters of live heap bytes, as requested and as mimalloc
//! sized them, and of allocations. Include with
//! `#[path = "common/counting_alloc.rs"] mod counting_alloc;` and install with
//! `#[global_allocator] static GLOBAL: counting_alloc::Counting = counting_alloc::Counting;`.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

/// Counts heap use on top of mimalloc; see the statics below.
pub struct Counting;

/// Bytes currently allocated, as requested by callers.
pub static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
/// Bytes currently allocated, as mimalloc sized the blocks.
pub static LIVE_USABLE: AtomicIsize = AtomicIsize::new(0);
/// Blocks currently allocated (alloc adds one, dealloc takes one away; realloc keeps
/// the count).
pub static LIVE_ALLOCS: AtomicIsize = AtomicIsize::new(0);
/// Allocation calls ever made (alloc and realloc each count one; dealloc none).
pub static TOTAL_ALLOCS: AtomicUsize = AtomicUsize::new(0);

extern "C" {
    // Part of mimalloc's C API, linked by libmimalloc-sys.
    fn mi_usable_size(p: *const std::ffi::c_void) -> usize;
}

fn usable(p: *mut u8) -> isize {
    if p.is_null() {
        return 0;
    }
    // SAFETY: `p` is a live block allocated by mimalloc (checked non-null above).
    unsafe { mi_usable_size(p.cast()) as isize }
}

// SAFETY: every method forwards to mimalloc with the caller's arguments unchanged and
// only updates counters, so mimalloc's guarantees carry over.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as our caller's.
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
            LIVE_USABLE.fetch_add(usable(p), Ordering::Relaxed);
            LIVE_ALLOCS.fetch_add(1, Ordering::Relaxed);
            TOTAL_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        LIVE_USABLE.fetch_sub(usable(ptr), Ordering::Relaxed);
        LIVE_ALLOCS.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc`/`realloc` above with this layout.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_usable = usable(ptr);
        // SAFETY: same contract as our caller's.
        let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE_BYTES.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
            LIVE_USABLE.fetch_add(usable(p) - old_usable, Ordering::Relaxed);
            TOTAL_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        p
    }
}
