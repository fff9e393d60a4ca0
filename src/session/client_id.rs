//! `ClientId`: a session's client identifier in 16 bytes, kept inline when it is at
//! most 15 bytes long and in an exact-size heap block otherwise.
//!
//! Every session holds its id for life, and an idle device's id is typically short
//! (serial numbers, MACs, `dev-12345`). As a `Box<[u8]>` a 12-byte id cost the
//! 16-byte pointer and length plus a 16-byte heap block (mimalloc's smallest size
//! class); inline it costs the 16 bytes alone (issue #21: ≤ 300 B per idle
//! connection). Longer ids cost exactly what a `Box<[u8]>` did.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::ptr::NonNull;

/// Longest id kept inline: byte 15 holds the length (or the heap marker).
pub const INLINE_MAX: usize = 15;
/// Byte 15 of a heap id: no inline length reaches it.
const HEAP_TAG: u8 = u8::MAX;

#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Inline {
    bytes: [u8; INLINE_MAX],
    /// 0..=`INLINE_MAX`.
    len: u8,
}

#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Heap {
    /// From `Box<[u8]>` of `len` bytes, owned by this id.
    ptr: NonNull<u8>,
    len: u32,
    /// Explicit so that every byte of the union is initialised whichever variant
    /// was written (reading `tag` through `Inline::len` then reads a written byte).
    _pad: [u8; 3],
    /// `HEAP_TAG`, at the offset of `Inline::len`.
    tag: u8,
}

/// Both variants are 16 bytes with the discriminating byte at offset 15.
union Repr {
    inline: Inline,
    heap: Heap,
}

/// A client identifier (MQTT: at most 65,535 bytes; this type takes up to
/// `u32::MAX`). Reads as `&[u8]`.
pub struct ClientId(Repr);

// SAFETY: a `ClientId` owns its heap block exactly as a `Box<[u8]>` would (nothing
// else points to it, and it is only read through `&self`), so it may move to and be
// shared between threads like one.
unsafe impl Send for ClientId {}
// SAFETY: as above; `&ClientId` gives only shared reads of immutable bytes.
unsafe impl Sync for ClientId {}

impl ClientId {
    /// A copy of `id`.
    ///
    /// # Panics
    /// If `id` is longer than `u32::MAX` bytes, which no MQTT client id can be
    /// (its length is a 2-byte field).
    pub fn new(id: &[u8]) -> ClientId {
        if id.len() <= INLINE_MAX {
            let mut bytes = [0u8; INLINE_MAX];
            bytes[..id.len()].copy_from_slice(id);
            return ClientId(Repr {
                inline: Inline {
                    bytes,
                    len: id.len() as u8,
                },
            });
        }
        let len = u32::try_from(id.len()).expect("a client id is at most u32::MAX bytes");
        let block: Box<[u8]> = id.into();
        let ptr = NonNull::from(Box::leak(block)).cast::<u8>();
        ClientId(Repr {
            heap: Heap {
                ptr,
                len,
                _pad: [0; 3],
                tag: HEAP_TAG,
            },
        })
    }

    fn tag(&self) -> u8 {
        // SAFETY: both variants initialise byte 15 (`Inline::len`, `Heap::tag`) and it
        // is a `u8` in both, so reading it through `inline` is valid either way.
        unsafe { self.0.inline.len }
    }

    /// Whether the bytes live in the struct itself (no heap block).
    pub fn is_inline(&self) -> bool {
        self.tag() != HEAP_TAG
    }

    pub fn as_bytes(&self) -> &[u8] {
        if self.is_inline() {
            // SAFETY: the tag says `inline` was written; its `len` is at most
            // `INLINE_MAX` (only `new` writes it), so the range is in bounds.
            let inline = unsafe { &self.0.inline };
            &inline.bytes[..usize::from(inline.len)]
        } else {
            // SAFETY: the tag says `heap` was written by `new`, from a leaked
            // `Box<[u8]>` of exactly `len` bytes that this id owns until `drop`.
            unsafe {
                let heap = self.0.heap;
                std::slice::from_raw_parts(heap.ptr.as_ptr(), heap.len as usize)
            }
        }
    }
}

impl Drop for ClientId {
    fn drop(&mut self) {
        if self.is_inline() {
            return;
        }
        // SAFETY: `heap` is the variant written (tag), its pointer and length are
        // those of the `Box<[u8]>` leaked in `new`, and nothing else frees it: this
        // rebuilds that box once, to free it.
        unsafe {
            let heap = self.0.heap;
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                heap.ptr.as_ptr(),
                heap.len as usize,
            )));
        }
    }
}

impl Deref for ClientId {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for ClientId {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Clone for ClientId {
    fn clone(&self) -> ClientId {
        ClientId::new(self.as_bytes())
    }
}

impl From<&[u8]> for ClientId {
    fn from(id: &[u8]) -> ClientId {
        ClientId::new(id)
    }
}

impl PartialEq for ClientId {
    fn eq(&self, other: &ClientId) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for ClientId {}

impl PartialEq<[u8]> for ClientId {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_bytes() == other
    }
}

/// Hashes as the `[u8]` it reads as, so a lookup by `&[u8]` finds it.
impl Hash for ClientId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_client_id_is_sixteen_bytes() {
        assert_eq!(std::mem::size_of::<ClientId>(), 16);
    }

    /// Every length an MQTT client id can have, each a different slice of
    /// pseudo-random bytes, read back, cloned and compared.
    #[test]
    fn every_length_up_to_65535_round_trips() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let source: Vec<u8> = (0..2 * 65_536)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for len in 0..=65_535usize {
            let start = len % 65_536;
            let want = &source[start..start + len];
            let id = ClientId::new(want);
            assert_eq!(id.as_bytes(), want, "length {len}");
            assert_eq!(id.is_inline(), len <= INLINE_MAX, "length {len}");
            let copy = id.clone();
            drop(id);
            assert_eq!(&*copy, want, "clone of length {len}");
        }
    }

    proptest! {
        #[test]
        fn reads_back_and_compares_as_its_bytes(
            a in proptest::collection::vec(any::<u8>(), 0..64),
            b in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let (ia, ib) = (ClientId::new(&a), ClientId::new(&b));
            prop_assert_eq!(ia.as_bytes(), &a[..]);
            prop_assert_eq!(ia == ib, a == b);
            prop_assert!(ia == *a.as_slice());
            let hash = |v: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                v(&mut h);
                h.finish()
            };
            prop_assert_eq!(hash(&|h| ia.hash(h)), hash(&|h| a[..].hash(h)));
        }
    }

    #[test]
    fn ids_move_between_threads() {
        let ids: Vec<ClientId> = [&b"short"[..], &[7u8; 300][..]]
            .iter()
            .map(|b| ClientId::new(b))
            .collect();
        let back = std::thread::spawn(move || ids).join().expect("thread");
        assert_eq!(&*back[0], b"short");
        assert_eq!(&*back[1], &[7u8; 300][..]);
    }
}
