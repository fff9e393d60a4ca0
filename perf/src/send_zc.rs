//! Whether `IORING_OP_SEND_ZC` would pay for large shared payload segments (issue
//! #24): one TCP connection over loopback, one send in flight as the broker keeps
//! per socket, the same shared payload written again and again, as `SEND` (the
//! kernel copies it) and as `SEND_ZC` (pages pinned, a notification per send).
//! Prints the sending thread's CPU (user + system, `getrusage(RUSAGE_THREAD)`) per
//! KiB and the process's peak RSS for each payload size. A receiving thread reads
//! and discards. Measures; asserts nothing.
//!
//!   retained-bench's sibling: cargo build --release -p ringmq-perf --bin send-zc
//!   target/release/send-zc [MiB per size, default 256] [sizes in bytes ...]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use io_uring::{cqueue, opcode, types, IoUring};

mod cpu;
use cpu::thread_cpu_ns;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Sends `total` bytes as writes of `buf` (short writes resumed), one in flight.
/// Returns (sender CPU ns, wall seconds).
fn run(ring: &mut IoUring, fd: i32, buf: &[u8], total: usize, zc: bool) -> (u64, f64) {
    let cpu0 = thread_cpu_ns();
    let t0 = Instant::now();
    let mut sent = 0usize;
    let mut notifs_owed = 0usize;
    while sent < total {
        let mut off = 0;
        while off < buf.len() {
            let rest = &buf[off..];
            let e = if zc {
                opcode::SendZc::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            } else {
                opcode::Send::new(types::Fd(fd), rest.as_ptr(), rest.len() as u32)
                    .flags(libc::MSG_NOSIGNAL)
                    .build()
            };
            // SAFETY: `buf` outlives every send and its notification: we wait for
            // all of them below before returning.
            unsafe { ring.submission().push(&e).expect("sq has room") };
            // Wait for the send's result; notifications are counted as they come.
            let mut done = None;
            while done.is_none() {
                ring.submit_and_wait(1).expect("submit");
                for c in ring.completion() {
                    if cqueue::notif(c.flags()) {
                        notifs_owed -= 1;
                        continue;
                    }
                    if cqueue::more(c.flags()) {
                        notifs_owed += 1;
                    }
                    done = Some(c.result());
                }
            }
            let n = done.unwrap_or(-1);
            assert!(n > 0, "send failed: {n}");
            off += n as usize;
        }
        sent += buf.len();
    }
    while notifs_owed > 0 {
        ring.submit_and_wait(1).expect("submit");
        for c in ring.completion() {
            if cqueue::notif(c.flags()) {
                notifs_owed -= 1;
            }
        }
    }
    (thread_cpu_ns() - cpu0, t0.elapsed().as_secs_f64())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mib: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(256);
    let sizes: Vec<usize> = if args.len() > 1 {
        args[1..]
            .iter()
            .map(|a| a.parse().expect("size in bytes"))
            .collect()
    } else {
        vec![4096, 16384, 65536, 262144]
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("addr");
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut b = vec![0u8; 1 << 18];
        let cpu0 = thread_cpu_ns();
        let mut n = 0u64;
        loop {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k as u64,
            }
        }
        (n, thread_cpu_ns() - cpu0)
    });
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let fd = stream.as_raw_fd();
    let mut ring = IoUring::new(64).expect("io_uring");
    println!("size_bytes mode cpu_ns_per_kib wall_mib_per_s peak_rss_kib");
    for &size in &sizes {
        let buf: Vec<u8> = (0..size).map(|i| i as u8).collect();
        let total = (mib << 20).max(size);
        // Alternate so load changes hit both alike; two rounds each.
        for round in 0..2 {
            for zc in [false, true] {
                let (cpu, wall) = run(&mut ring, fd, &buf, total, zc);
                println!(
                    "{size} {} {:.0} {:.0} {} (round {round})",
                    if zc { "send_zc" } else { "send" },
                    cpu as f64 / (total as f64 / 1024.0),
                    total as f64 / (1 << 20) as f64 / wall,
                    peak_rss_kib(),
                );
            }
        }
    }
    drop(stream);
    let (n, cpu) = reader.join().expect("reader");
    println!(
        "reader: {n} bytes, {:.0} cpu ns per KiB",
        cpu as f64 / (n as f64 / 1024.0)
    );
}
