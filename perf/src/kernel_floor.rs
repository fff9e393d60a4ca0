//! The kernel's floor under #21's fan-out and pairs latency targets, measured with no
//! broker: what this machine's loopback TCP and scheduler give a program that does
//! nothing but move the same bytes the broker moves. Prints one JSON line; asserts
//! nothing.
//!
//! `fanout`: sender threads write one 70-byte frame (the size of a 64 B QoS 0 PUBLISH
//! on `lg/fanout`) to each of N loopback TCP sockets per round, at a fixed round rate,
//! as N `send` syscalls or as one io_uring submission of N `SEND` SQEs on registered
//! files (the broker's ring flags); receiver threads on epoll timestamp each arrival.
//! Latency is arrival − the round's scheduled start (loadgen's open-loop clock, so a
//! late wake-up counts) and arrival − the burst's actual start.
//!
//! `pairs`: N socket pairs through one relay thread (read A_i, write B_i; on epoll,
//! or on io_uring as the broker's loop does: `--relay uring`);
//! one client thread on the other core paces the writes (open loop at a total message
//! rate, round robin over the pairs) and reads the relayed frames from one epoll set,
//! as loadgen's one thread per ring does; one-way latency from each message's
//! scheduled send time.
//!
//! `pairs --spin 1`: the relay and the client never sleep (epoll and io_uring polled
//! without waiting), which takes the wake-ups out of the path: what the loopback data
//! path alone costs.
//!
//! `--ring defer` builds the sending and relay rings with `SINGLE_ISSUER` +
//! `DEFER_TASKRUN` instead of the broker's `COOP_TASKRUN` + `TASKRUN_FLAG`.
//!
//! The receiving (fan-out) and client (pairs) threads ask for loadgen's default
//! 100 us EEVDF slice, the sending and relay threads keep the kernel's as the broker
//! does by default (`--client-slice-us`, `--server-slice-us`; 0 = the kernel's).
//!
//!   cargo build --release -p ringmq-perf --bin kernel-floor
//!   target/release/kernel-floor fanout --mode uring --sender-cores 0 --receiver-cores 1
//!   target/release/kernel-floor pairs --pairs 1000 --rate 20000

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use io_uring::{opcode, types, IoUring};

mod cpu;
use cpu::thread_cpu_ns;

/// A 64-byte QoS 0 PUBLISH on `lg/fanout` with loadgen's header is 70 bytes on the wire.
const FRAME: usize = 70;
/// How long receivers wait for stragglers after the writers stop.
const DRAIN: Duration = Duration::from_secs(3);
/// The epoll token of `FrameReceiver`'s timer (socket indices are below it).
const TIMER_TOKEN: u64 = u64::MAX;

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which lives across the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn sleep_until(ns: u64) {
    let ts = libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: `ts` is a valid absolute time; the remainder pointer may be null
        // with TIMER_ABSTIME.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        if rc != libc::EINTR {
            return;
        }
    }
}

/// Pins the calling thread and, for `slice_us` > 0, asks EEVDF for that slice, as
/// loadgen's `--sched-slice` (default 100 us) and the broker's `--sched-slice-us`
/// (default 0: the kernel's) do, so each side is scheduled as its counterpart is.
fn place(core: usize, slice_us: u64) {
    if let Err(e) = ringmq::worker::pin_to_cpu(core) {
        die(&format!("cannot pin to core {core}: {e}"));
    }
    if slice_us > 0 {
        match ringmq::worker::set_fair_slice(slice_us as u32) {
            Ok(true) => {}
            Ok(false) => die("this kernel keeps its default time slice (needs Linux 6.12+)"),
            Err(e) => die(&format!(
                "sched_setattr refused the {slice_us} us slice: {e}"
            )),
        }
    }
}

fn raise_nofile(need: u64) {
    match ringmq::io::raise_nofile_limit() {
        Ok(have) if have >= need => {}
        Ok(have) => die(&format!(
            "needs {need} descriptors, the hard limit is {have}"
        )),
        Err(e) => die(&format!("cannot raise the descriptor limit: {e}")),
    }
}

fn die(msg: &str) -> ! {
    eprintln!("kernel-floor: {msg}");
    std::process::exit(2);
}

/// `n` connected loopback TCP pairs (dialled side, accepted side), both non-blocking
/// with Nagle off, as the broker and loadgen set theirs.
fn socket_pairs(n: usize) -> Vec<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| die(&format!("bind: {e}")));
    let addr = listener.local_addr().expect("listener address");
    (0..n)
        .map(|_| {
            let dialled =
                TcpStream::connect(addr).unwrap_or_else(|e| die(&format!("connect: {e}")));
            let (accepted, _) = listener
                .accept()
                .unwrap_or_else(|e| die(&format!("accept: {e}")));
            for s in [&dialled, &accepted] {
                s.set_nodelay(true).expect("TCP_NODELAY");
                s.set_nonblocking(true).expect("O_NONBLOCK");
            }
            (dialled, accepted)
        })
        .collect()
}

#[derive(Clone, Copy)]
struct Header {
    due_ns: u64,
    start_ns: u64,
    seq: u64,
}

fn write_header(buf: &mut [u8; FRAME], h: Header) {
    buf[0..8].copy_from_slice(&h.due_ns.to_le_bytes());
    buf[8..16].copy_from_slice(&h.start_ns.to_le_bytes());
    buf[16..24].copy_from_slice(&h.seq.to_le_bytes());
}

fn read_header(frame: &[u8]) -> Header {
    let word = |i: usize| u64::from_le_bytes(frame[i..i + 8].try_into().expect("8 bytes"));
    Header {
        due_ns: word(0),
        start_ns: word(8),
        seq: word(16),
    }
}

/// Level-triggered epoll over a set of sockets, reassembling fixed-size frames.
struct FrameReceiver {
    epfd: RawFd,
    /// A timerfd in the same epoll set (the pairs client's pacing), or -1.
    timer: RawFd,
    armed_ns: u64,
    fds: Vec<RawFd>,
    partial: Vec<Vec<u8>>,
    scratch: Vec<u8>,
}

impl FrameReceiver {
    fn new(fds: Vec<RawFd>) -> Self {
        // SAFETY: epoll_create1 takes no pointers.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            die(&format!(
                "epoll_create1: {}",
                std::io::Error::last_os_error()
            ));
        }
        for (i, &fd) in fds.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: `ev` lives across the call; `fd` is an open socket we own.
            if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
                die(&format!("epoll_ctl: {}", std::io::Error::last_os_error()));
            }
        }
        let partial = vec![Vec::with_capacity(FRAME); fds.len()];
        FrameReceiver {
            epfd,
            timer: -1,
            armed_ns: 0,
            fds,
            partial,
            scratch: vec![0; 64 * 1024],
        }
    }

    /// Adds a timer to the epoll set, so one thread both paces its writes and reads
    /// (loadgen's shape: one thread per ring).
    fn add_timer(&mut self) {
        // SAFETY: timerfd_create takes no pointers.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK) };
        if fd < 0 {
            die(&format!(
                "timerfd_create: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: TIMER_TOKEN,
        };
        // SAFETY: `ev` lives across the call; `fd` is the timerfd just made.
        if unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            die(&format!("epoll_ctl: {}", std::io::Error::last_os_error()));
        }
        self.timer = fd;
    }

    /// Makes the timer fire at `at_ns` (CLOCK_MONOTONIC), unless it already will.
    fn arm(&mut self, at_ns: u64) {
        if self.armed_ns == at_ns {
            return;
        }
        self.armed_ns = at_ns;
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (at_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (at_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `spec` lives across the call; the old value pointer may be null.
        unsafe {
            libc::timerfd_settime(
                self.timer,
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
    }

    /// Waits up to `timeout_ms` and hands every complete frame to `on_frame` with the
    /// socket's index and the time its `recv` returned.
    fn poll(&mut self, timeout_ms: i32, mut on_frame: impl FnMut(usize, &[u8], u64)) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 256];
        // SAFETY: the kernel writes at most `events.len()` entries into `events`.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd,
                events.as_mut_ptr(),
                events.len() as i32,
                timeout_ms,
            )
        };
        for ev in events.iter().take(n.max(0) as usize) {
            if ev.u64 == TIMER_TOKEN {
                let mut expirations = [0u8; 8];
                // SAFETY: a timerfd read writes one u64 into the 8 bytes we pass.
                unsafe { libc::read(self.timer, expirations.as_mut_ptr().cast(), 8) };
                continue;
            }
            let idx = ev.u64 as usize;
            loop {
                // SAFETY: `scratch` is ours and `recv` writes at most its length.
                let got = unsafe {
                    libc::recv(
                        self.fds[idx],
                        self.scratch.as_mut_ptr().cast(),
                        self.scratch.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if got <= 0 {
                    break;
                }
                let at = now_ns();
                let mut data = &self.scratch[..got as usize];
                let part = &mut self.partial[idx];
                if !part.is_empty() {
                    let take = (FRAME - part.len()).min(data.len());
                    part.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if part.len() == FRAME {
                        on_frame(idx, part, at);
                        part.clear();
                    }
                }
                while data.len() >= FRAME {
                    on_frame(idx, &data[..FRAME], at);
                    data = &data[FRAME..];
                }
                part.extend_from_slice(data);
                if (got as usize) < self.scratch.len() {
                    break;
                }
            }
        }
    }
}

impl Drop for FrameReceiver {
    fn drop(&mut self) {
        // SAFETY: `epfd` and `timer` are ours and closed once.
        unsafe {
            libc::close(self.epfd);
            if self.timer >= 0 {
                libc::close(self.timer);
            }
        }
    }
}

/// Latencies in ns, summarised in µs.
fn summary(name: &str, v: &mut [u64]) -> String {
    v.sort_unstable();
    let pct = |p: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1e3
    };
    format!(
        "\"{name}\":{{\"n\":{},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"max_us\":{:.1}}}",
        v.len(),
        pct(0.5),
        pct(0.99),
        pct(0.999),
        v.last().map_or(0.0, |&x| x as f64 / 1e3),
    )
}

struct Args {
    kv: Vec<(String, String)>,
}

impl Args {
    fn get(&self, key: &str, default: &str) -> String {
        self.kv
            .iter()
            .find(|(k, _)| k == key)
            .map_or_else(|| default.to_string(), |(_, v)| v.clone())
    }
    fn num(&self, key: &str, default: u64) -> u64 {
        let v = self.get(key, &default.to_string());
        v.parse()
            .unwrap_or_else(|_| die(&format!("--{key} {v}: not a whole number")))
    }
    /// `--ring`: `defer` (`SINGLE_ISSUER` + `DEFER_TASKRUN`) or `coop` (the
    /// broker's flags, the default).
    fn defer_taskrun(&self) -> bool {
        match self.get("ring", "coop").as_str() {
            "coop" => false,
            "defer" => true,
            other => die(&format!(
                "--ring {other}: coop (the broker's flags) or defer"
            )),
        }
    }
    fn cores(&self, key: &str, default: &str) -> Vec<usize> {
        let v = self.get(key, default);
        v.split(',')
            .map(|c| {
                c.parse()
                    .unwrap_or_else(|_| die(&format!("--{key} {v}: not a core list like 0,1")))
            })
            .collect()
    }
}

fn parse_args(rest: &[String], known: &[&str]) -> Args {
    let mut kv = Vec::new();
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        let Some(key) = flag.strip_prefix("--").filter(|k| known.contains(k)) else {
            die(&format!(
                "unknown option {flag} (known: --{})",
                known.join(", --")
            ));
        };
        let Some(v) = it.next() else {
            die(&format!("{flag} needs a value"));
        };
        kv.push((key.to_string(), v.clone()));
    }
    Args { kv }
}

#[derive(Clone, Copy, PartialEq)]
enum SendMode {
    Syscalls,
    Uring,
}

struct SenderReport {
    cpu_ns: u64,
    copies: u64,
    bursts_ns: Vec<u64>,
    late_ns: Vec<u64>,
    short_writes: u64,
}

/// The broker's ring flags (src/io/uring/ring.rs: `COOP_TASKRUN` + `TASKRUN_FLAG`), or
/// with `defer_taskrun` #21's lever `SINGLE_ISSUER` + `DEFER_TASKRUN` instead (task work
/// then runs only when the one submitting thread waits for completions). Built on the
/// thread that submits, as `SINGLE_ISSUER` requires.
fn build_ring(entries: u32, defer_taskrun: bool) -> IoUring {
    let mut b = IoUring::builder();
    b.setup_cqsize(entries * 4);
    if defer_taskrun {
        b.setup_single_issuer().setup_defer_taskrun();
    } else {
        b.setup_coop_taskrun().setup_taskrun_flag();
    }
    b.build(entries)
        .unwrap_or_else(|e| die(&format!("io_uring setup: {e}")))
}

/// One sender thread: `rounds` bursts of one frame to each of `fds`, a round every
/// `period_ns` from `t0`; rounds before `warmup` are not counted.
fn fanout_sender(
    fds: &[RawFd],
    mode: SendMode,
    t0: u64,
    period_ns: u64,
    rounds: u64,
    warmup: u64,
    defer_taskrun: bool,
) -> SenderReport {
    let mut ring = (mode == SendMode::Uring).then(|| {
        let entries = (fds.len() as u32).next_power_of_two();
        let ring = build_ring(entries, defer_taskrun);
        ring.submitter()
            .register_files(fds)
            .unwrap_or_else(|e| die(&format!("io_uring register_files: {e}")));
        ring
    });
    let mut buf = [0x5a_u8; FRAME];
    let mut rep = SenderReport {
        cpu_ns: 0,
        copies: 0,
        bursts_ns: Vec::new(),
        late_ns: Vec::new(),
        short_writes: 0,
    };
    let mut cpu0 = thread_cpu_ns();
    for seq in 0..rounds {
        if seq == warmup {
            cpu0 = thread_cpu_ns();
        }
        let due = t0 + seq * period_ns;
        sleep_until(due);
        let start = now_ns();
        write_header(
            &mut buf,
            Header {
                due_ns: due,
                start_ns: start,
                seq,
            },
        );
        let mut short = 0;
        match ring.as_mut() {
            None => {
                for &fd in fds {
                    // SAFETY: `buf` lives across the call; the kernel reads FRAME bytes.
                    let n = unsafe {
                        libc::send(
                            fd,
                            buf.as_ptr().cast(),
                            FRAME,
                            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                        )
                    };
                    short += u64::from(n != FRAME as isize);
                }
            }
            Some(ring) => {
                {
                    let mut sq = ring.submission();
                    for i in 0..fds.len() {
                        let e =
                            opcode::Send::new(types::Fixed(i as u32), buf.as_ptr(), FRAME as u32)
                                .flags(libc::MSG_NOSIGNAL)
                                .build();
                        // SAFETY: `buf` is not written again until every completion of
                        // this burst is reaped below; the queue holds `fds.len()` entries.
                        unsafe { sq.push(&e) }.expect("submission queue sized to the sockets");
                    }
                }
                ring.submit_and_wait(fds.len())
                    .unwrap_or_else(|e| die(&format!("io_uring_enter: {e}")));
                let mut reaped = 0;
                while reaped < fds.len() {
                    for cqe in ring.completion() {
                        short += u64::from(cqe.result() != FRAME as i32);
                        reaped += 1;
                    }
                    if reaped < fds.len() {
                        ring.submit_and_wait(fds.len() - reaped)
                            .unwrap_or_else(|e| die(&format!("io_uring_enter: {e}")));
                    }
                }
            }
        }
        let end = now_ns();
        if seq >= warmup {
            rep.bursts_ns.push(end - start);
            rep.late_ns.push(start - due);
            rep.copies += fds.len() as u64;
            rep.short_writes += short;
        }
    }
    rep.cpu_ns = thread_cpu_ns() - cpu0;
    rep
}

struct ReceiverReport {
    from_due: Vec<u64>,
    from_start: Vec<u64>,
    frames: u64,
    cpu_ns: u64,
}

/// Reads until `expected` frames came or the writers are done and `DRAIN` has passed.
fn receive_frames(
    fds: Vec<RawFd>,
    expected: u64,
    warmup_seq: u64,
    writers_done: &AtomicBool,
) -> ReceiverReport {
    let mut rx = FrameReceiver::new(fds);
    let mut rep = ReceiverReport {
        from_due: Vec::new(),
        from_start: Vec::new(),
        frames: 0,
        cpu_ns: 0,
    };
    let cpu0 = thread_cpu_ns();
    let mut done_at = None;
    while rep.frames < expected {
        rx.poll(50, |_, frame, at| {
            let h = read_header(frame);
            rep.frames += 1;
            if h.seq >= warmup_seq {
                rep.from_due.push(at.saturating_sub(h.due_ns));
                rep.from_start.push(at.saturating_sub(h.start_ns));
            }
        });
        if writers_done.load(Ordering::Acquire) {
            let since = *done_at.get_or_insert_with(now_ns);
            if now_ns() - since > DRAIN.as_nanos() as u64 {
                break;
            }
        }
    }
    rep.cpu_ns = thread_cpu_ns() - cpu0;
    rep
}

fn fanout(args: &Args) {
    let clients = args.num("clients", 1000) as usize;
    let rate = args.num("rate", 100).max(1);
    let secs = args.num("duration", 5);
    let warmup_secs = args.num("warmup", 1);
    let defer_taskrun = args.defer_taskrun();
    let mode = match args.get("mode", "uring").as_str() {
        "send" => SendMode::Syscalls,
        "uring" => SendMode::Uring,
        other => die(&format!("--mode {other}: send or uring")),
    };
    let sender_cores = args.cores("sender-cores", "0");
    let receiver_cores = args.cores("receiver-cores", "1");
    let (client_slice, server_slice) = (
        args.num("client-slice-us", 100),
        args.num("server-slice-us", 0),
    );
    raise_nofile(2 * clients as u64 + 64);

    let pairs = socket_pairs(clients);
    let period = 1_000_000_000 / rate;
    let warmup = warmup_secs * rate;
    let rounds = warmup + secs * rate;
    let done = Arc::new(AtomicBool::new(false));

    let mut receivers = Vec::new();
    for (r, &core) in receiver_cores.iter().enumerate() {
        let fds: Vec<RawFd> = pairs
            .iter()
            .skip(r)
            .step_by(receiver_cores.len())
            .map(|(d, _)| d.as_raw_fd())
            .collect();
        let expected = rounds * fds.len() as u64;
        let done = Arc::clone(&done);
        receivers.push(thread::spawn(move || {
            place(core, client_slice);
            receive_frames(fds, expected, warmup, &done)
        }));
    }
    // Every sender starts its rounds at the same instants, 100 ms from now.
    let t0 = now_ns() + 100_000_000;
    let start_line = Arc::new(Barrier::new(sender_cores.len()));
    let mut senders = Vec::new();
    for (s, &core) in sender_cores.iter().enumerate() {
        let fds: Vec<RawFd> = pairs
            .iter()
            .skip(s)
            .step_by(sender_cores.len())
            .map(|(_, a)| a.as_raw_fd())
            .collect();
        let start_line = Arc::clone(&start_line);
        senders.push(thread::spawn(move || {
            place(core, server_slice);
            start_line.wait();
            fanout_sender(&fds, mode, t0, period, rounds, warmup, defer_taskrun)
        }));
    }
    let sent: Vec<SenderReport> = senders
        .into_iter()
        .map(|h| h.join().expect("sender"))
        .collect();
    done.store(true, Ordering::Release);
    let got: Vec<ReceiverReport> = receivers
        .into_iter()
        .map(|h| h.join().expect("receiver"))
        .collect();

    let copies: u64 = sent.iter().map(|r| r.copies).sum();
    let sender_cpu: u64 = sent.iter().map(|r| r.cpu_ns).sum();
    let short: u64 = sent.iter().map(|r| r.short_writes).sum();
    let mut bursts: Vec<u64> = sent.iter().flat_map(|r| r.bursts_ns.clone()).collect();
    let mut late: Vec<u64> = sent.iter().flat_map(|r| r.late_ns.clone()).collect();
    let frames: u64 = got.iter().map(|r| r.frames).sum();
    let rx_cpu: u64 = got.iter().map(|r| r.cpu_ns).sum();
    let mut from_due: Vec<u64> = got.iter().flat_map(|r| r.from_due.clone()).collect();
    let mut from_start: Vec<u64> = got.iter().flat_map(|r| r.from_start.clone()).collect();
    println!(
        "{{\"scenario\":\"fanout\",\"mode\":\"{}\",\"clients\":{clients},\"rounds_per_s\":{rate},\"measured_s\":{secs},\"sender_cores\":\"{}\",\"receiver_cores\":\"{}\",\"client_slice_us\":{client_slice},\"server_slice_us\":{server_slice},\"ring\":\"{}\",\"frames_sent\":{},\"frames_received\":{frames},\"short_writes\":{short},\"sender_cpu_ns_per_copy\":{:.0},\"receiver_cpu_ns_per_copy\":{:.0},{},{},{},{}}}",
        if mode == SendMode::Uring { "uring" } else { "send" },
        args.get("sender-cores", "0"),
        args.get("receiver-cores", "1"),
        args.get("ring", "coop"),
        rounds * clients as u64,
        sender_cpu as f64 / copies.max(1) as f64,
        rx_cpu as f64 / frames.max(1) as f64,
        summary("latency_from_due", &mut from_due),
        summary("latency_from_burst_start", &mut from_start),
        summary("burst", &mut bursts),
        summary("wake_late", &mut late),
    );
    drop(pairs);
}

/// The relay: whatever arrives on `inbound[i]` is written to `outbound[i]`.
fn relay(
    inbound: Vec<RawFd>,
    outbound: Vec<RawFd>,
    stop: &AtomicBool,
    relayed: &AtomicU64,
    spin: bool,
) {
    // SAFETY: epoll_create1 takes no pointers.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(epfd >= 0, "epoll_create1");
    for (i, &fd) in inbound.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: `ev` lives across the call; `fd` is an open socket we own.
        assert_eq!(
            unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) },
            0
        );
    }
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    while !stop.load(Ordering::Acquire) {
        // SAFETY: the kernel writes at most `events.len()` entries into `events`.
        let n = unsafe {
            libc::epoll_wait(
                epfd,
                events.as_mut_ptr(),
                events.len() as i32,
                if spin { 0 } else { 50 },
            )
        };
        for ev in events.iter().take(n.max(0) as usize) {
            let i = ev.u64 as usize;
            // SAFETY: `buf` is ours and `recv` writes at most its length.
            let got = unsafe {
                libc::recv(
                    inbound[i],
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if got <= 0 {
                continue;
            }
            let mut off = 0usize;
            while off < got as usize {
                // SAFETY: `buf[off..got]` is initialised and lives across the call.
                let w = unsafe {
                    libc::send(
                        outbound[i],
                        buf[off..].as_ptr().cast(),
                        got as usize - off,
                        libc::MSG_NOSIGNAL,
                    )
                };
                if w > 0 {
                    off += w as usize;
                } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
                    die(&format!("relay send: {}", std::io::Error::last_os_error()));
                }
            }
            bytes += got as u64;
        }
    }
    relayed.store(bytes / FRAME as u64, Ordering::Release);
    // SAFETY: `epfd` is ours and closed once.
    unsafe { libc::close(epfd) };
}

/// The relay on io_uring, the broker's shape: one `RECV` in flight per inbound socket,
/// each completion answered by a `SEND` of the same bytes on the outbound socket (then
/// the `RECV` again), one `io_uring_enter` per wake-up for all of them, registered
/// files, the broker's ring flags.
fn relay_uring(
    inbound: Vec<RawFd>,
    outbound: Vec<RawFd>,
    stop: &AtomicBool,
    relayed: &AtomicU64,
    defer_taskrun: bool,
    spin: bool,
) {
    const BUF: usize = 4096;
    const SEND_BIT: u64 = 1 << 63;
    let n = inbound.len();
    // io_uring would answer -EAGAIN on a non-blocking socket instead of waiting.
    for &fd in inbound.iter().chain(&outbound) {
        // SAFETY: fcntl on a socket we own, no pointers.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
    // Leaked: a RECV still in flight when the thread ends may write into it.
    let bufs: &'static mut [u8] = Vec::leak(vec![0u8; n * BUF]);
    let entries = (2 * n as u32).next_power_of_two();
    let mut ring = build_ring(entries, defer_taskrun);
    let files: Vec<RawFd> = inbound.iter().chain(&outbound).copied().collect();
    ring.submitter()
        .register_files(&files)
        .unwrap_or_else(|e| die(&format!("io_uring register_files: {e}")));
    let recv = |i: usize, bufs: &mut [u8]| {
        opcode::Recv::new(
            types::Fixed(i as u32),
            bufs[i * BUF..].as_mut_ptr(),
            BUF as u32,
        )
        .build()
        .user_data(i as u64)
    };
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        pending.push(recv(i, bufs));
    }
    let mut bytes = 0u64;
    let timeout = types::Timespec::new().nsec(50_000_000);
    while !stop.load(Ordering::Acquire) {
        {
            let mut sq = ring.submission();
            for e in pending.drain(..) {
                // SAFETY: every buffer is leaked, so it outlives the operation; the
                // queue holds 2n entries and at most one operation per pair is queued.
                unsafe { sq.push(&e) }.expect("submission queue sized to the pairs");
            }
        }
        let args = types::SubmitArgs::new().timespec(&timeout);
        // Spinning: enter without waiting; COOP_TASKRUN runs the completions' task
        // work on the way out of any syscall.
        let entered = if spin {
            ring.submit()
        } else {
            ring.submitter().submit_with_args(1, &args)
        };
        match entered {
            Ok(_) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::ETIME)
                    || e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => die(&format!("io_uring_enter: {e}")),
        }
        for cqe in ring.completion() {
            let i = (cqe.user_data() & !SEND_BIT) as usize;
            let res = cqe.result();
            if cqe.user_data() & SEND_BIT != 0 {
                if res < 0 {
                    die(&format!(
                        "relay send: {}",
                        std::io::Error::from_raw_os_error(-res)
                    ));
                }
                // A short send of a few dozen bytes does not happen on an idle
                // socket; counted as lost frames if it did (received < sent).
                bytes += res as u64;
                pending.push(recv(i, bufs));
            } else if res > 0 {
                let e = opcode::Send::new(
                    types::Fixed((n + i) as u32),
                    bufs[i * BUF..].as_ptr(),
                    res as u32,
                )
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(i as u64 | SEND_BIT);
                pending.push(e);
            }
        }
    }
    relayed.store(bytes / FRAME as u64, Ordering::Release);
}

fn pairs(args: &Args) {
    let n = args.num("pairs", 1000) as usize;
    let rate = args.num("rate", 20_000).max(1);
    let secs = args.num("duration", 5);
    let warmup_secs = args.num("warmup", 1);
    let relay_core = args.cores("relay-core", "0")[0];
    let client_core = args.cores("client-core", "1")[0];
    let (client_slice, server_slice) = (
        args.num("client-slice-us", 100),
        args.num("server-slice-us", 0),
    );
    let defer_taskrun = args.defer_taskrun();
    let uring_relay = match args.get("relay", "epoll").as_str() {
        "epoll" => false,
        "uring" => true,
        other => die(&format!("--relay {other}: epoll or uring")),
    };
    let spin = match args.num("spin", 0) {
        0 => false,
        1 if !defer_taskrun => true,
        1 => die("--spin 1 needs --ring coop: a deferred ring runs task work only in a wait"),
        other => die(&format!("--spin {other}: 0 or 1")),
    };
    raise_nofile(4 * n as u64 + 64);

    // Publisher side (client writes, relay reads) and subscriber side (relay writes,
    // client reads).
    let pubs = socket_pairs(n);
    let subs = socket_pairs(n);
    let gap = 1_000_000_000 / rate;
    let total = (warmup_secs + secs) * rate;
    let t0 = now_ns() + 100_000_000;
    let warmup_due = t0 + warmup_secs * 1_000_000_000;
    let stop_relay = Arc::new(AtomicBool::new(false));
    let relayed = Arc::new(AtomicU64::new(0));

    let relay_thread = {
        let inbound: Vec<RawFd> = pubs.iter().map(|(_, a)| a.as_raw_fd()).collect();
        let outbound: Vec<RawFd> = subs.iter().map(|(_, a)| a.as_raw_fd()).collect();
        let (stop, relayed) = (Arc::clone(&stop_relay), Arc::clone(&relayed));
        thread::spawn(move || {
            place(relay_core, server_slice);
            let cpu0 = thread_cpu_ns();
            if uring_relay {
                relay_uring(inbound, outbound, &stop, &relayed, defer_taskrun, spin);
            } else {
                relay(inbound, outbound, &stop, &relayed, spin);
            }
            thread_cpu_ns() - cpu0
        })
    };
    // One client thread paces the writes and reads the relayed frames, as loadgen's
    // one thread per ring does.
    let client = {
        let writes: Vec<RawFd> = pubs.iter().map(|(d, _)| d.as_raw_fd()).collect();
        let reads: Vec<RawFd> = subs.iter().map(|(d, _)| d.as_raw_fd()).collect();
        thread::spawn(move || {
            place(client_core, client_slice);
            let mut rx = FrameReceiver::new(reads);
            if !spin {
                rx.add_timer();
            }
            let mut rep = ReceiverReport {
                from_due: Vec::new(),
                from_start: Vec::new(),
                frames: 0,
                cpu_ns: 0,
            };
            let mut buf = [0x5a_u8; FRAME];
            let (mut short, mut k) = (0u64, 0u64);
            let mut last_write = None;
            while rep.frames < total {
                let now = now_ns();
                while k < total && t0 + k * gap <= now {
                    write_header(
                        &mut buf,
                        Header {
                            due_ns: t0 + k * gap,
                            start_ns: now_ns(),
                            seq: k,
                        },
                    );
                    // SAFETY: `buf` lives across the call; the kernel reads FRAME bytes.
                    let w = unsafe {
                        libc::send(
                            writes[k as usize % writes.len()],
                            buf.as_ptr().cast(),
                            FRAME,
                            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                        )
                    };
                    short += u64::from(w != FRAME as isize);
                    k += 1;
                }
                if k < total {
                    if !spin {
                        rx.arm(t0 + k * gap);
                    }
                } else if now - *last_write.get_or_insert(now) > DRAIN.as_nanos() as u64 {
                    break;
                }
                rx.poll(if spin { 0 } else { 50 }, |_, frame, at| {
                    let h = read_header(frame);
                    rep.frames += 1;
                    if h.due_ns >= warmup_due {
                        rep.from_due.push(at.saturating_sub(h.due_ns));
                        rep.from_start.push(at.saturating_sub(h.start_ns));
                    }
                });
            }
            (short, rep)
        })
    };
    let (short, got) = client.join().expect("client");
    stop_relay.store(true, Ordering::Release);
    let relay_cpu = relay_thread.join().expect("relay");
    let relayed = relayed.load(Ordering::Acquire);
    let (mut from_due, mut from_send) = (got.from_due, got.from_start);
    println!(
        "{{\"scenario\":\"pairs\",\"relay\":\"{}\",\"spin\":{spin},\"pairs\":{n},\"msgs_per_s\":{rate},\"measured_s\":{secs},\"relay_core\":{relay_core},\"client_core\":{client_core},\"client_slice_us\":{client_slice},\"server_slice_us\":{server_slice},\"ring\":\"{}\",\"sent\":{total},\"received\":{},\"short_writes\":{short},\"relay_cpu_ns_per_msg\":{:.0},{},{}}}",
        if uring_relay { "uring" } else { "epoll" },
        args.get("ring", "coop"),
        got.frames,
        relay_cpu as f64 / relayed.max(1) as f64,
        summary("latency_from_due", &mut from_due),
        summary("latency_from_send", &mut from_send),
    );
    drop((pubs, subs));
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some("fanout") => fanout(&parse_args(
            &argv[2..],
            &[
                "clients",
                "rate",
                "duration",
                "warmup",
                "mode",
                "sender-cores",
                "receiver-cores",
                "client-slice-us",
                "server-slice-us",
                "ring",
            ],
        )),
        Some("pairs") => pairs(&parse_args(
            &argv[2..],
            &[
                "pairs",
                "rate",
                "duration",
                "warmup",
                "relay",
                "spin",
                "relay-core",
                "client-core",
                "client-slice-us",
                "server-slice-us",
                "ring",
            ],
        )),
        _ => die("usage: kernel-floor fanout|pairs [--option value ...] (see the file comment)"),
    }
}
