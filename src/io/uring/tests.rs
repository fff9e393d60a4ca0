//! Tests of the io_uring loop's teardown (what a dropped loop must leave to the kernel)
//! and of the size of its per-socket state.

use super::accept::ACCEPT_ADDRS_FREED;
use super::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// Send data that records being freed.
struct Watched {
    data: Vec<u8>,
    freed: Arc<AtomicBool>,
}

impl AsRef<[u8]> for Watched {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.freed.store(true, Ordering::SeqCst);
    }
}

/// Dropped with a send in flight and single-shot accepts armed, a loop frees
/// neither the send's bytes nor those accepts' address buffers: the kernel may
/// still read or write them while it tears the ring down. Idle accept buffers go.
#[test]
fn a_busy_loop_leaves_what_the_kernel_may_still_use() {
    let opts = LoopOptions {
        max_connections: 100,
        accept_peer_addr: true,
        ..LoopOptions::default()
    };
    let mut lp = UringLoop::new(0, &opts).expect("loop");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    lp.add_listener(l).expect("listen");
    let client = std::net::TcpStream::connect(addr).expect("connect");
    let mut out = Vec::new();
    let mut sock = None;
    for _ in 0..1000 {
        lp.turn(Some(Duration::from_millis(10)), &mut out)
            .expect("turn");
        sock = out.iter().find_map(|c| match c {
            Completion::Accepted { sock, .. } => Some(*sock),
            _ => None,
        });
        if sock.is_some() {
            break;
        }
    }
    let sock = sock.expect("accepted");
    let freed = Arc::new(AtomicBool::new(false));
    // Larger than the socket buffers, and the client does not read: the send
    // stays in flight.
    lp.send(
        sock,
        bytes::Bytes::from_owner(Watched {
            data: vec![7; 8 << 20],
            freed: freed.clone(),
        })
        .into(),
    );
    for _ in 0..3 {
        out.clear();
        lp.turn(Some(Duration::from_millis(1)), &mut out)
            .expect("turn");
        assert!(
            !out.iter().any(|c| matches!(c, Completion::SendDone { .. })),
            "the send must still be in flight"
        );
    }
    let slots: usize = lp.listeners.iter().map(|l| l.slots.len()).sum();
    let armed: usize = lp
        .listeners
        .iter()
        .map(|l| l.slots.iter().filter(|s| s.armed).count())
        .sum();
    assert!(armed > 0, "accepts armed");
    let freed_before = ACCEPT_ADDRS_FREED.with(|n| n.get());
    drop(lp);
    assert!(
        !freed.load(Ordering::SeqCst),
        "the data of a send in flight was freed"
    );
    assert_eq!(
        ACCEPT_ADDRS_FREED.with(|n| n.get()) - freed_before,
        slots - armed,
        "only the address buffers of idle accept slots are freed"
    );
    drop(client);
}

/// A `Sock` exists per connection (100k+ per loop): part of issue #21's ≤ 300 B of RSS
/// per idle connection. 80 bytes while the send in flight was held inline (a 40-byte
/// `TxChain` and the iovec array's pointer in every socket, idle or not); boxed, 40.
#[test]
fn socket_state_stays_small() {
    assert_eq!(std::mem::size_of::<Sock>(), 40);
}
