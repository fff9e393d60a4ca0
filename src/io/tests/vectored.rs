//! Vectored sends: a chain of many segments (more than one `SENDMSG`/`writev`
//! takes) to a client with a tiny receive buffer that reads in small steps, so
//! the kernel takes it in short writes that fall anywhere, segment boundaries
//! included; the client must read exactly the chain, on both backends.

use super::*;
use crate::tx::{TxChain, MAX_IOV};

/// Segment sizes around the coalescing threshold and the iovec limit: tiny
/// headers, payloads of one byte to hundreds of KiB, 3 × `MAX_IOV` segments.
fn segments() -> Vec<Bytes> {
    let sizes = [1usize, 2, 5, 4096, 3, 300_000, 7, 2048, 65_536, 11];
    (0..3 * MAX_IOV)
        .map(|i| Bytes::from(pattern(i, sizes[i % sizes.len()])))
        .collect()
}

#[test]
fn chain_arrives_whole_through_short_writes() {
    for (name, ctor) in backends() {
        let mut lp = ctor(0, &opts()).expect("loop");
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        lp.add_listener(l).expect("listen");
        // A small receive window (set before connecting) keeps every write short.
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        s.set_recv_buffer_size(4096).expect("rcvbuf");
        s.connect(&addr.into()).expect("connect");
        let mut c: TcpStream = s.into();
        c.set_read_timeout(Some(WAIT)).expect("timeout");
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
        let segs = segments();
        let want: Vec<u8> = segs.iter().flat_map(|b| b.iter().copied()).collect();
        let chain = TxChain::from_segments(segs);
        assert_eq!(chain.segments(), 3 * MAX_IOV, "{name}");
        lp.send(sock, chain);
        let total = want.len();
        // Reads in odd-sized small steps, so the sender keeps meeting a full window.
        let reader = thread::spawn(move || {
            let mut got = Vec::with_capacity(total);
            let mut buf = [0u8; 1021];
            while got.len() < total {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) => panic!("read: {e}"),
                }
            }
            got
        });
        let mut done = None;
        for _ in 0..100_000 {
            out.clear();
            lp.turn(Some(Duration::from_millis(10)), &mut out)
                .expect("turn");
            done = out.iter().find_map(|c| match c {
                Completion::SendDone { errno, .. } => Some(*errno),
                _ => None,
            });
            if done.is_some() {
                break;
            }
        }
        assert_eq!(done, Some(0), "{name}: send never completed");
        let got = reader.join().expect("reader");
        assert_eq!(got.len(), want.len(), "{name}");
        assert!(got == want, "{name}: bytes differ");
        // More segments than one vectored send takes, and a window far smaller
        // than the chain: the send was resumed, each time at the right byte.
        assert!(lp.stats().sends_resumed >= 2, "{name}: {:?}", lp.stats());
        lp.close(sock);
        for _ in 0..100 {
            out.clear();
            lp.turn(Some(Duration::from_millis(1)), &mut out)
                .expect("turn");
        }
    }
}
