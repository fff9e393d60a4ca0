//! Issue #13's choice of how a loop's group commit reaches the disk, measured:
//! the disk thread the broker uses (`io/store_thread.rs` running `LoopDir::run`,
//! woken back through an eventfd the "loop" blocks on, as a parked loop is woken)
//! against a write linked to an `IORING_FSYNC_DATASYNC` on an io_uring of the
//! loop's own, and the broker's own path for that (`UringLoop::write_file`, what an
//! io_uring loop now runs, driven through `EventLoop::turn`). Same file, same
//! group-commit sizes, one commit in flight, as the writer keeps it. Printed, never asserted: latency per commit (p50/p99) and CPU
//! time per commit (user + system of the whole process, both threads).
//!
//! `disk-path DIR [COMMITS] [BYTES]` (defaults 300 and 4096): DIR must exist; a
//! 64 MiB file is created in it (preallocated, as segments are) and removed after.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};
use ringmq::io::datadir::DataDir;
use ringmq::io::store_thread::StoreThread;
use ringmq::io::uring::UringLoop;
use ringmq::io::{Completion, EventLoop, LoopOptions};
use ringmq::store::DiskOp;

const FILE_BYTES: u64 = 64 << 20;
const NAME: &str = "disk-path.bench";
const ROUNDS: usize = 10;

fn cpu_us() -> u64 {
    // SAFETY: getrusage fills the zeroed struct we own; RUSAGE_SELF covers every thread.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; the pointer is to a live local.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

struct Figures {
    lat: Vec<Duration>,
    cpu_us: u64,
}

fn report(what: &str, mut f: Figures) {
    f.lat.sort();
    let p = |q: f64| f.lat[((f.lat.len() - 1) as f64 * q) as usize];
    let n = f.lat.len() as u64;
    let total: Duration = f.lat.iter().sum();
    println!(
        "{what:<28} commits {n:>6}  p50 {:>10.1?}  p99 {:>10.1?}  commits/s {:>8.0}  CPU {:>6.1} us/commit",
        p(0.5),
        p(0.99),
        n as f64 / total.as_secs_f64(),
        f.cpu_us as f64 / n as f64
    );
}

fn eventfd() -> std::fs::File {
    // SAFETY: eventfd returns a new descriptor (checked below) we then own.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }
}

fn via_thread(data: &DataDir, commits: usize, bytes: usize, sync: bool) -> Figures {
    use std::io::Read;
    let dir = data.loop_dir(0).expect("loop dir");
    let efd = eventfd();
    let wake_fd = efd.as_raw_fd();
    let mut t = StoreThread::spawn(
        dir,
        "disk-path".into(),
        Box::new(move || {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live local to the eventfd, which outlives
            // the thread (joined when `t` drops, before `efd`).
            unsafe { libc::write(wake_fd, one.as_ptr().cast(), 8) };
        }),
    )
    .expect("spawn");
    let mut efd_r = &efd;
    let buf = vec![0xa5u8; bytes];
    let mut lat = Vec::with_capacity(commits);
    let cpu0 = cpu_us();
    for i in 0..commits {
        let offset = (i * bytes) as u64 % (FILE_BYTES - bytes as u64);
        let start = Instant::now();
        t.submit(DiskOp::Write {
            name: format!("../{NAME}"),
            offset,
            data: buf.clone(),
            sync,
        })
        .expect("one in flight");
        let res = loop {
            let mut v = [0u8; 8];
            efd_r.read_exact(&mut v).expect("eventfd");
            if let Some((r, _)) = t.poll() {
                break r;
            }
        };
        res.expect("write");
        lat.push(start.elapsed());
    }
    let cpu_us = cpu_us() - cpu0;
    drop(t);
    Figures { lat, cpu_us }
}

fn via_uring(path: &std::path::Path, commits: usize, bytes: usize, sync: bool) -> Figures {
    let f = OpenOptions::new().write(true).open(path).expect("open");
    let fd = types::Fd(f.as_raw_fd());
    let mut ring = IoUring::new(8).expect("io_uring");
    let buf = vec![0xa5u8; bytes];
    let mut lat = Vec::with_capacity(commits);
    let cpu0 = cpu_us();
    for i in 0..commits {
        let offset = (i * bytes) as u64 % (FILE_BYTES - bytes as u64);
        let start = Instant::now();
        // As a loop would: the turn's buffer copied once into the write it owns.
        let data = buf.clone();
        let write = opcode::Write::new(fd, data.as_ptr(), data.len() as u32)
            .offset(offset)
            .build()
            .user_data(1);
        let want = if sync { 2 } else { 1 };
        // SAFETY: `data` and the file live until both completions are reaped below.
        unsafe {
            if sync {
                let fsync = opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build()
                    .user_data(2);
                ring.submission()
                    .push(&write.flags(squeue::Flags::IO_LINK))
                    .expect("sq");
                ring.submission().push(&fsync).expect("sq");
            } else {
                ring.submission().push(&write).expect("sq");
            }
        }
        ring.submit_and_wait(want).expect("submit");
        let mut got = 0;
        for cqe in ring.completion() {
            assert!(
                cqe.result() >= 0,
                "uring op {} failed: {}",
                cqe.user_data(),
                cqe.result()
            );
            got += 1;
        }
        assert_eq!(got, want);
        drop(data);
        lat.push(start.elapsed());
    }
    Figures {
        lat,
        cpu_us: cpu_us() - cpu0,
    }
}

/// The broker's path: the loop's `write_file`, completions taken by `turn`.
fn via_loop(path: &std::path::Path, commits: usize, bytes: usize, sync: bool) -> Figures {
    let f = OpenOptions::new().write(true).open(path).expect("open");
    let mut lp = UringLoop::new(0, &LoopOptions::default()).expect("io_uring loop");
    let buf = vec![0xa5u8; bytes];
    let mut out = Vec::new();
    let mut lat = Vec::with_capacity(commits);
    let cpu0 = cpu_us();
    for i in 0..commits {
        let offset = (i * bytes) as u64 % (FILE_BYTES - bytes as u64);
        let start = Instant::now();
        lp.write_file(f.as_raw_fd(), offset, buf.clone(), sync)
            .expect("one in flight");
        'wait: loop {
            lp.turn(None, &mut out).expect("turn");
            for c in out.drain(..) {
                if let Completion::FileWritten { errno, sync_errno } = c {
                    assert_eq!((errno, sync_errno), (0, 0), "write failed");
                    break 'wait;
                }
            }
        }
        lat.push(start.elapsed());
    }
    Figures {
        lat,
        cpu_us: cpu_us() - cpu0,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = PathBuf::from(args.get(1).expect("usage: disk-path DIR [COMMITS] [BYTES]"));
    let commits: usize = args.get(2).map_or(300, |s| s.parse().expect("COMMITS"));
    let bytes: usize = args.get(3).map_or(4096, |s| s.parse().expect("BYTES"));
    let data = DataDir::open(&root.join("disk-path-data")).unwrap_or_else(|e| panic!("{e}"));
    let file = data.path().join(NAME);
    {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&file)
            .expect("create");
        // SAFETY: fallocate on a descriptor owned by `f`.
        let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, FILE_BYTES as i64) };
        assert_eq!(r, 0, "fallocate: {}", std::io::Error::last_os_error());
        f.sync_all().expect("sync");
    }
    println!(
        "{bytes} B per group commit, one in flight, file preallocated; {ROUNDS} alternating rounds:"
    );
    // Alternating short rounds, so both paths see the same moments of the shared
    // machine and of the disk (whose fdatasync latency drifts by 10x within seconds).
    let mut figs: Vec<Figures> = (0..6)
        .map(|_| Figures {
            lat: Vec::new(),
            cpu_us: 0,
        })
        .collect();
    let per = commits.div_ceil(ROUNDS);
    for _ in 0..ROUNDS {
        let runs = [
            via_thread(&data, per, bytes, true),
            via_uring(&file, per, bytes, true),
            via_thread(&data, per * 20, bytes, false),
            via_uring(&file, per * 20, bytes, false),
            via_loop(&file, per, bytes, true),
            via_loop(&file, per * 20, bytes, false),
        ];
        for (acc, f) in figs.iter_mut().zip(runs) {
            acc.lat.extend(f.lat);
            acc.cpu_us += f.cpu_us;
        }
    }
    let names = [
        "thread, write+fdatasync",
        "io_uring, write+fdatasync",
        "thread, write only",
        "io_uring, write only",
        "UringLoop, write+fdatasync",
        "UringLoop, write only",
    ];
    for (name, f) in names.iter().zip(figs) {
        report(name, f);
    }
    let _ = std::fs::remove_file(&file);
}
