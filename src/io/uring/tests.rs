//! Tests of the io_uring loop's teardown (what a dropped loop must leave to the
//! kernel), of its file writes (`file.rs`), of the size of its per-socket state and
//! of an idle loop's recall of posted receive buffers.

use super::accept::ACCEPT_ADDRS_FREED;
use super::*;
use std::io::Write;
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
    let sock = accepted(&mut lp);
    let mut out = Vec::new();
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

/// Turns `lp` until its file write reports, then a few more times to show it
/// reports once.
fn file_written(lp: &mut UringLoop) -> (i32, i32) {
    let mut out = Vec::new();
    let mut got = Vec::new();
    for _ in 0..2000 {
        lp.turn(Some(Duration::from_millis(5)), &mut out)
            .expect("turn");
        got.extend(out.drain(..).filter_map(|c| match c {
            Completion::FileWritten { errno, sync_errno } => Some((errno, sync_errno)),
            _ => None,
        }));
        if !got.is_empty() {
            break;
        }
    }
    for _ in 0..3 {
        lp.turn(Some(Duration::ZERO), &mut out).expect("turn");
        got.extend(out.drain(..).filter_map(|c| match c {
            Completion::FileWritten { errno, sync_errno } => Some((errno, sync_errno)),
            _ => None,
        }));
    }
    assert_eq!(got.len(), 1, "one report per write: {got:?}");
    got[0]
}

fn temp_file(tag: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("ringmq-uring-file-{}-{tag}", std::process::id()));
    std::fs::write(&p, vec![0u8; 64 << 10]).expect("create");
    p
}

/// A write linked to its fdatasync, a write alone and an fdatasync alone each land
/// where asked and report once; a second write while one is out is given back.
#[test]
fn file_writes_land_at_their_offset_and_report_once() {
    let p = temp_file("ok");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .expect("open");
    let fd = f.as_raw_fd();
    let mut lp = UringLoop::new(0, &LoopOptions::default()).expect("loop");
    let first: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    lp.write_file(fd, 4096, first.clone(), true)
        .expect("started");
    let refused = lp
        .write_file(fd, 0, vec![1, 2, 3], false)
        .expect_err("one at a time");
    assert_eq!(refused, vec![1, 2, 3], "the refused bytes come back");
    assert_eq!(file_written(&mut lp), (0, 0));
    lp.write_file(fd, 20_000, vec![9; 100], false)
        .expect("started");
    assert_eq!(file_written(&mut lp), (0, 0));
    lp.write_file(fd, 0, Vec::new(), true).expect("sync alone");
    assert_eq!(file_written(&mut lp), (0, 0));
    let back = std::fs::read(&p).expect("read");
    assert_eq!(&back[4096..14_096], &first[..]);
    assert_eq!(&back[20_000..20_100], &[9u8; 100][..]);
    assert!(
        back[..4096].iter().all(|&b| b == 0),
        "nothing before the offset"
    );
    drop(lp);
    let _ = std::fs::remove_file(&p);
}

/// A write the kernel refuses reports its errno, not a sync error (the linked
/// fdatasync is cancelled with it), and the next write goes through.
#[test]
fn a_failed_file_write_reports_its_errno_and_the_next_one_runs() {
    let p = temp_file("fail");
    let ro = std::fs::File::open(&p).expect("open read-only");
    let rw = std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .expect("open");
    let mut lp = UringLoop::new(0, &LoopOptions::default()).expect("loop");
    lp.write_file(ro.as_raw_fd(), 0, vec![5; 512], true)
        .expect("started");
    assert_eq!(file_written(&mut lp), (libc::EBADF, 0));
    lp.write_file(rw.as_raw_fd(), 0, vec![6; 512], true)
        .expect("started after the failure");
    assert_eq!(file_written(&mut lp), (0, 0));
    assert_eq!(&std::fs::read(&p).expect("read")[..512], &[6u8; 512][..]);
    drop(lp);
    let _ = std::fs::remove_file(&p);
}

/// Set in the child process of `a_short_file_write_writes_the_rest_then_reports_its_error`.
const FSIZE_CHILD: &str = "RINGMQ_TEST_FSIZE_CHILD";

/// A short write: the file-size limit (RLIMIT_FSIZE, in a child process so the
/// limit binds nothing else) lets the kernel write the first 4 KiB of an 8 KiB
/// write linked to an fdatasync. The link breaks (the sync is cancelled), the rest
/// is written again, which fails with EFBIG: reported as the write's errno, once,
/// not as a sync failure, with the first 4 KiB on disk.
#[test]
fn a_short_file_write_writes_the_rest_then_reports_its_error() {
    if let Ok(path) = std::env::var(FSIZE_CHILD) {
        // SAFETY: setrlimit on this (child) process with a live struct; SIGXFSZ is
        // ignored so the failing write returns EFBIG instead of killing it.
        unsafe {
            let lim = libc::rlimit {
                rlim_cur: 4096,
                rlim_max: libc::RLIM_INFINITY,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        let mut lp = UringLoop::new(0, &LoopOptions::default()).expect("loop");
        lp.write_file(f.as_raw_fd(), 0, vec![3; 8192], true)
            .expect("started");
        let (errno, sync_errno) = file_written(&mut lp);
        println!("child result: errno {errno} sync_errno {sync_errno}");
        return;
    }
    let p = std::env::temp_dir().join(format!("ringmq-uring-short-{}", std::process::id()));
    std::fs::write(&p, b"").expect("create");
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "io::uring::tests::a_short_file_write_writes_the_rest_then_reports_its_error",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FSIZE_CHILD, &p)
        .output()
        .expect("child runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {stdout}");
    assert!(
        stdout.contains(&format!("child result: errno {} sync_errno 0", libc::EFBIG)),
        "{stdout}"
    );
    let back = std::fs::read(&p).expect("read");
    assert_eq!(
        back,
        vec![3u8; 4096],
        "the first 4 KiB landed, nothing more"
    );
    let _ = std::fs::remove_file(&p);
}

/// A `Sock` exists per connection (100k+ per loop): part of issue #21's ≤ 300 B of RSS
/// per idle connection. 80 bytes while the send in flight was held inline (a 40-byte
/// `TxChain` and the iovec array's pointer in every socket, idle or not); boxed, 40.
#[test]
fn socket_state_stays_small() {
    // 40 until session 10 packed seven bools into `SockFlags`; 32 until session 11
    // kept only a hand-off ticket's sequence number in `SockState` (issue #21).
    assert_eq!(std::mem::size_of::<SockState>(), 8);
    assert_eq!(std::mem::size_of::<Sock>(), 24);
}

/// Turns the loop until it reports the one connection a test opened.
fn accepted(lp: &mut UringLoop) -> SockId {
    let mut out = Vec::new();
    for _ in 0..1000 {
        lp.turn(Some(Duration::from_millis(10)), &mut out)
            .expect("turn");
        let sock = out.iter().find_map(|c| match c {
            Completion::Accepted { sock, .. } => Some(*sock),
            _ => None,
        });
        if let Some(sock) = sock {
            return sock;
        }
    }
    panic!("no connection accepted in 1000 turns");
}

/// Turns `lp` until `want` bytes arrived on `sock`, giving each buffer back.
fn received(lp: &mut UringLoop, sock: SockId, want: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut got = Vec::new();
    for _ in 0..2000 {
        lp.turn(Some(Duration::from_millis(5)), &mut out)
            .expect("turn");
        for c in out.drain(..) {
            match c {
                Completion::Recv { sock: s, buf } => {
                    assert_eq!(s, sock);
                    got.extend_from_slice(lp.buf(buf));
                    lp.recycle(buf);
                }
                other => panic!("unexpected completion {other:?}"),
            }
        }
        if got.len() >= want {
            break;
        }
    }
    got
}

/// An idle loop takes back the buffers posted beyond its narrowed window: the
/// recall withdraws the ring's buffer registration and renews it, and the
/// connection's multishot receive, armed all along, still gets every byte after it,
/// in order.
#[test]
fn an_idle_recall_keeps_receives_working() {
    let opts = LoopOptions {
        max_connections: 100,
        recv_bufs_per_ring: 64,
        recv_buf_size_bytes: 512,
        ..LoopOptions::default()
    };
    let mut lp = UringLoop::new(0, &opts).expect("loop");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    lp.add_listener(l).expect("listen");
    let mut client = std::net::TcpStream::connect(addr).expect("connect");
    let sock = accepted(&mut lp);
    let mut out = Vec::new();
    lp.start_recv(sock);
    let r = lp.socks[sock as usize].ring as usize;
    let first: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    client.write_all(&first).expect("write");
    assert_eq!(received(&mut lp, sock, first.len()), first);
    // The whole pool is posted (a window of 64 of 64); an interval that took a
    // few buffers narrows the window, and the recall takes the rest back.
    assert!(lp.rings[r].bufs.posted() > 16);
    for _ in 0..2 {
        lp.last_trim = Instant::now() - TRIM_INTERVAL;
        lp.turn(Some(Duration::from_millis(1)), &mut out)
            .expect("turn");
        assert!(out.is_empty(), "{out:?}");
    }
    assert_eq!(
        lp.rings[r].bufs.posted(),
        16,
        "the idle window, posted again"
    );
    assert!(lp.rings[r].bufs.settled());
    let second: Vec<u8> = (0..20_000u32).map(|i| (i % 241) as u8).collect();
    client.write_all(&second).expect("write");
    assert_eq!(received(&mut lp, sock, second.len()), second);
}

/// A ring whose completion queue overflowed gets the rest of its completions only
/// by being entered; `needs_enter` says so even with nothing to submit, which is
/// what keeps rings 1.. of a loop from stalling after a burst (`UringLoop::turn`).
#[test]
fn an_overflowed_completion_queue_is_entered_until_every_completion_is_out() {
    // 4 SQEs, 16 CQEs: five submissions of four no-ops overflow it by four.
    let mut uring = ring::build_ring(4).expect("ring");
    let cq_size = uring.completion().capacity();
    let total = cq_size + 4;
    for _ in 0..total / 4 {
        for _ in 0..4 {
            let nop = opcode::Nop::new().build().user_data(7);
            // SAFETY: a no-op carries no pointers.
            unsafe { uring.submission().push(&nop) }.expect("room for four");
        }
        uring.submit().expect("submit");
    }
    assert!(
        ring::needs_enter(&mut uring),
        "overflow pending, nothing to submit"
    );
    let mut seen = 0;
    for _ in 0..8 {
        seen += uring.completion().count();
        if !ring::needs_enter(&mut uring) {
            break;
        }
        uring.submit().expect("enter to flush the overflow");
    }
    seen += uring.completion().count();
    assert_eq!(
        seen, total,
        "every no-op completed, none stranded in the kernel"
    );
    assert!(!ring::needs_enter(&mut uring));
}
