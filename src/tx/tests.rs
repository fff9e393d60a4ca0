//! Segment queue tests: what is taken equals what was written, partial sends resume
//! at every byte (segment boundaries included), accounting of shared bytes.

use bytes::Bytes;

use super::{PayloadGauge, TxBuf, TxChain};

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A buffer of header, shared payload, header, shared payload, trailer bytes.
fn sample() -> (TxBuf, Vec<u8>) {
    let mut b = TxBuf::default();
    let mut want = Vec::new();
    for (i, (head, payload)) in [(5usize, 3000usize), (7, 1), (0, 2500)].iter().enumerate() {
        let h = pattern(*head, i as u8);
        b.tail_mut().extend_from_slice(&h);
        want.extend_from_slice(&h);
        let p = pattern(*payload, 100 + i as u8);
        b.push_shared(Bytes::from(p.clone()));
        want.extend_from_slice(&p);
    }
    b.tail_mut().extend_from_slice(b"end");
    want.extend_from_slice(b"end");
    (b, want)
}

#[test]
fn take_gives_every_byte_in_order() {
    let (mut b, want) = sample();
    assert_eq!(b.len(), want.len());
    assert_eq!(b.shared_len(), 3000 + 1 + 2500);
    assert_eq!(b.own_len(), 5 + 7 + 3);
    let chain = b.take();
    assert!(b.is_empty() && b.capacity() == 0 && b.shared_len() == 0);
    assert_eq!(chain.len(), want.len());
    // header, payload, header, payload, payload, trailer
    assert_eq!(chain.segments(), 6);
    assert_eq!(&chain.to_bytes()[..], &want[..]);
    let joined: Vec<u8> = chain.chunks().flatten().copied().collect();
    assert_eq!(joined, want);
}

/// A send that stops at any byte, then a second that stops at any later byte:
/// what is left is always exactly the rest, whichever segment the cuts fall in.
#[test]
fn advance_resumes_at_every_byte() {
    let (b0, want) = sample();
    drop(b0);
    for first in 0..=want.len() {
        let (mut b, _) = sample();
        let mut chain = b.take();
        chain.advance(first);
        assert_eq!(chain.len(), want.len() - first, "cut at {first}");
        assert_eq!(&chain.to_bytes()[..], &want[first..], "cut at {first}");
        assert_eq!(chain.is_empty(), first == want.len());
    }
    // Two cuts at each pair of segment boundaries ± 1.
    let bounds = [0usize, 5, 3005, 3012, 3013, 5513, 5516];
    for &a in &bounds {
        for &c in &bounds {
            for da in [0usize, 1] {
                for dc in [0usize, 1] {
                    let (x, y) = ((a + da).min(want.len()), (c + dc).min(want.len()));
                    if y < x {
                        continue;
                    }
                    let (mut b, _) = sample();
                    let mut chain = b.take();
                    chain.advance(x);
                    chain.advance(y - x);
                    assert_eq!(&chain.to_bytes()[..], &want[y..], "cuts {x} {y}");
                }
            }
        }
    }
}

#[test]
fn advance_past_the_end_empties() {
    let (mut b, want) = sample();
    let mut chain = b.take();
    chain.advance(want.len() + 10);
    assert!(chain.is_empty());
    assert_eq!(chain.segments(), 0);
    assert_eq!(chain.chunks().count(), 0);
}

#[test]
fn small_output_is_one_segment() {
    let mut b = TxBuf::default();
    b.tail_mut().extend_from_slice(b"\x30\x03\x00\x01a");
    let chain = b.take();
    assert_eq!(chain.segments(), 1);
    assert_eq!(&chain.to_bytes()[..], b"\x30\x03\x00\x01a");
    assert!(TxBuf::default().take().is_empty());
    assert!(TxChain::from_segments([Bytes::new(), Bytes::new()]).is_empty());
}

/// The payload is referenced by every buffer, not copied: the same memory.
#[test]
fn shared_payload_is_not_copied() {
    let payload = Bytes::from(pattern(10_000, 7));
    let mut a = TxBuf::default();
    let mut b = TxBuf::default();
    a.push_shared(payload.clone());
    b.push_shared(payload.clone());
    let (ca, cb) = (a.take(), b.take());
    let pa = ca.chunks().next().unwrap().as_ptr();
    let pb = cb.chunks().next().unwrap().as_ptr();
    assert_eq!(pa, payload.as_ptr());
    assert_eq!(pb, payload.as_ptr());
}

/// The gauge counts a payload once while any reference lives, on any thread.
#[test]
fn gauge_counts_once_until_the_last_reference() {
    let g = PayloadGauge::default();
    let p = g.share(&pattern(4096, 1));
    assert_eq!(g.bytes(), 4096);
    let copies: Vec<Bytes> = (0..1000).map(|_| p.clone()).collect();
    assert_eq!(g.bytes(), 4096);
    let slice = p.slice(10..20);
    drop(p);
    drop(copies);
    assert_eq!(g.bytes(), 4096, "a slice still holds it");
    std::thread::spawn(move || drop(slice)).join().unwrap();
    assert_eq!(g.bytes(), 0);
}
