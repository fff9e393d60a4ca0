//! Accept-and-hold MQTT server on io_uring direct descriptors: answers CONNECT with a
//! CONNACK and SUBSCRIBE with a SUBACK (QoS 0 granted), forwards every QoS 0 PUBLISH to the
//! subscribers on the same ring (a "fast broker" for measuring loadgen itself: no topic
//! matching), holds connections, closes on EOF. Several rings (each a SO_REUSEPORT
//! listener and a registered table below RLIMIT_NOFILE) so it can hold 100k connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use io_uring::{cqueue, opcode, types, IoUring};

pub struct HoldServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
    pub current: Arc<AtomicI64>,
    pub peak: Arc<AtomicI64>,
    pub connacks: Arc<AtomicU64>,
    pub accept_errors: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

static CONNACK_V3: [u8; 4] = [0x20, 2, 0, 0];
static CONNACK_V5: [u8; 5] = [0x20, 3, 0, 0, 0];

fn listener(port: u16) -> (i32, u16) {
    // SAFETY: plain socket syscalls on a socket we own; pointers are to locals.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let one: libc::c_int = 1;
        let p = &one as *const libc::c_int as *const libc::c_void;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, p, 4);
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, p, 4);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::bind(
            fd,
            &addr as *const libc::sockaddr_in as *const libc::sockaddr,
            16,
        );
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        assert_eq!(
            libc::listen(fd, 65535),
            0,
            "listen: {}",
            std::io::Error::last_os_error()
        );
        let mut got: libc::sockaddr_in = std::mem::zeroed();
        let mut len: libc::socklen_t = 16;
        libc::getsockname(
            fd,
            &mut got as *mut libc::sockaddr_in as *mut libc::sockaddr,
            &mut len,
        );
        (fd, u16::from_be(got.sin_port))
    }
}

impl HoldServer {
    pub fn start(rings: usize, slots_per_ring: u32) -> HoldServer {
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(AtomicI64::new(0));
        let peak = Arc::new(AtomicI64::new(0));
        let connacks = Arc::new(AtomicU64::new(0));
        let accept_errors = Arc::new(AtomicU64::new(0));
        let (first, port) = listener(0);
        let mut fds = vec![first];
        for _ in 1..rings {
            fds.push(listener(port).0);
        }
        let threads = fds
            .into_iter()
            .map(|fd| {
                let (stop, current, peak, connacks, accept_errors) = (
                    stop.clone(),
                    current.clone(),
                    peak.clone(),
                    connacks.clone(),
                    accept_errors.clone(),
                );
                std::thread::spawn(move || {
                    serve(
                        fd,
                        slots_per_ring,
                        &stop,
                        &current,
                        &peak,
                        &connacks,
                        &accept_errors,
                    );
                    // SAFETY: we own fd.
                    unsafe { libc::close(fd) };
                })
            })
            .collect();
        HoldServer {
            port,
            stop,
            current,
            peak,
            connacks,
            accept_errors,
            threads,
        }
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

const SEND: u64 = 2;
const CLOSE: u64 = 3;

#[derive(Default)]
struct Conn {
    partial: Vec<u8>,
    out: Vec<u8>,
    sending: Vec<u8>,
    sent: usize,
    busy: bool,
    level: u8,
}

/// Calls `f` on every complete frame at the front of `buf`; returns the bytes used.
fn for_each_frame(buf: &[u8], mut f: impl FnMut(&[u8])) -> usize {
    let mut at = 0;
    loop {
        let b = &buf[at..];
        if b.len() < 2 {
            break;
        }
        let (mut rl, mut mult, mut i) = (0usize, 1usize, 1usize);
        loop {
            if i >= b.len() || i > 4 {
                break;
            }
            rl += usize::from(b[i] & 0x7f) * mult;
            mult *= 128;
            i += 1;
            if b[i - 1] & 0x80 == 0 {
                break;
            }
        }
        if b[i - 1] & 0x80 != 0 || b.len() < i + rl {
            break;
        }
        f(&b[..i + rl]);
        at += i + rl;
    }
    at
}

fn handle_frame(
    slot: u32,
    f: &[u8],
    conns: &mut HashMap<u32, Conn>,
    subscribers: &mut Vec<u32>,
    touched: &mut Vec<u32>,
    connacks: &AtomicU64,
) {
    let hdr = 1 + f[1..].iter().position(|b| b & 0x80 == 0).unwrap_or(0) + 1;
    match f[0] >> 4 {
        1 if f.len() >= hdr + 7 => {
            let level = f[hdr + 6];
            if let Some(c) = conns.get_mut(&slot) {
                c.level = level;
                c.out
                    .extend_from_slice(if level == 5 { &CONNACK_V5 } else { &CONNACK_V3 });
                touched.push(slot);
            }
            connacks.fetch_add(1, Ordering::Relaxed);
        }
        8 if f.len() >= hdr + 2 => {
            if let Some(c) = conns.get_mut(&slot) {
                let (hi, lo) = (f[hdr], f[hdr + 1]);
                if c.level == 5 {
                    c.out.extend_from_slice(&[0x90, 4, hi, lo, 0, 0]);
                } else {
                    c.out.extend_from_slice(&[0x90, 3, hi, lo, 0]);
                }
                touched.push(slot);
                subscribers.push(slot);
            }
        }
        3 if f[0] & 0x06 == 0 => {
            for s in subscribers.iter() {
                if let Some(c) = conns.get_mut(s) {
                    c.out.extend_from_slice(f);
                    touched.push(*s);
                }
            }
        }
        _ => {}
    }
}

const BUFS: u16 = 1024;
const BUF_SIZE: usize = 2048;

fn serve(
    lfd: i32,
    slots: u32,
    stop: &AtomicBool,
    current: &AtomicI64,
    peak: &AtomicI64,
    connacks: &AtomicU64,
    accept_errors: &AtomicU64,
) {
    let mut ring = IoUring::builder()
        .setup_cqsize(65536)
        .build(4096)
        .expect("io_uring_setup");
    ring.submitter()
        .register_files_sparse(slots)
        .expect("register_files_sparse");
    let layout = std::alloc::Layout::from_size_align(usize::from(BUFS) * 16, 4096).expect("layout");
    // SAFETY: non-zero layout; freed at the end of this function after the ring is dropped.
    let entries = unsafe { std::alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
    let bufs = vec![0u8; usize::from(BUFS) * BUF_SIZE];
    // SAFETY: `entries` outlives the ring (dropped explicitly below before dealloc).
    unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(entries as u64, BUFS, 0, 0)
    }
    .expect("register_buf_ring");
    let mut tail: u16 = 0;
    let give = |tail: &mut u16, bid: u16| {
        // SAFETY: index masked into the allocation.
        let e = unsafe { &mut *entries.add(usize::from(*tail & (BUFS - 1))) };
        e.set_addr(bufs.as_ptr() as u64 + u64::from(bid) * BUF_SIZE as u64);
        e.set_len(BUF_SIZE as u32);
        e.set_bid(bid);
        *tail = tail.wrapping_add(1);
    };
    let publish = |tail: u16| {
        // SAFETY: tail field inside our allocation, read by the kernel concurrently.
        unsafe {
            (*(types::BufRingEntry::tail(entries) as *const AtomicU16))
                .store(tail, Ordering::Release)
        };
    };
    for bid in 0..BUFS {
        give(&mut tail, bid);
    }
    publish(tail);
    let accept = opcode::AcceptMulti::new(types::Fd(lfd))
        .allocate_file_index(true)
        .build()
        .user_data(u64::MAX);
    // SAFETY: no pointers in the accept SQE.
    unsafe { ring.submission().push(&accept).expect("sq") };
    let mut conns: HashMap<u32, Conn> = HashMap::new();
    let mut subscribers: Vec<u32> = Vec::new();
    let mut touched: Vec<u32> = Vec::new();
    let mut cqes: Vec<(u64, i32, u32)> = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let ts = types::Timespec::new().nsec(10_000_000);
        let args = types::SubmitArgs::new().timespec(&ts);
        let _ = ring.submitter().submit_with_args(1, &args);
        cqes.clear();
        cqes.extend(
            ring.completion()
                .map(|c: cqueue::Entry| (c.user_data(), c.result(), c.flags())),
        );
        let mut sqes = Vec::new();
        for &(ud, res, flags) in &cqes {
            if ud == u64::MAX {
                if res >= 0 {
                    let slot = res as u32;
                    let now = current.fetch_add(1, Ordering::AcqRel) + 1;
                    peak.fetch_max(now, Ordering::AcqRel);
                    conns.insert(slot, Conn::default());
                    sqes.push(
                        opcode::RecvMulti::new(types::Fixed(slot), 0)
                            .build()
                            .user_data(u64::from(slot)),
                    );
                } else {
                    accept_errors.fetch_add(1, Ordering::Relaxed);
                }
                if !cqueue::more(flags) {
                    sqes.push(accept.clone());
                }
                continue;
            }
            let slot = ud as u32;
            if ud >> 32 == SEND {
                let Some(c) = conns.get_mut(&slot) else {
                    continue;
                };
                c.busy = false;
                if res > 0 {
                    c.sent += res as usize;
                }
                if res <= 0 || c.sent >= c.sending.len() {
                    c.sending.clear();
                    c.sent = 0;
                }
                touched.push(slot);
                continue;
            }
            if ud >> 32 == CLOSE {
                continue;
            }
            let mut closed = res <= 0 && res != -libc::ENOBUFS;
            if let Some(bid) = cqueue::buffer_select(flags) {
                if res > 0 {
                    let start = usize::from(bid) * BUF_SIZE;
                    // Take the input buffer out so frames can be handled in place while
                    // other connections' output buffers are appended to.
                    let mut input = match conns.get_mut(&slot) {
                        Some(c) => std::mem::take(&mut c.partial),
                        None => Vec::new(),
                    };
                    input.extend_from_slice(&bufs[start..start + res as usize]);
                    let used = for_each_frame(&input, |f| {
                        handle_frame(
                            slot,
                            f,
                            &mut conns,
                            &mut subscribers,
                            &mut touched,
                            connacks,
                        )
                    });
                    input.drain(..used);
                    if let Some(c) = conns.get_mut(&slot) {
                        c.partial = input;
                    }
                }
                give(&mut tail, bid);
            }
            if res == -libc::ENOBUFS {
                sqes.push(
                    opcode::RecvMulti::new(types::Fixed(slot), 0)
                        .build()
                        .user_data(u64::from(slot)),
                );
            } else if !closed && !cqueue::more(flags) {
                closed = true;
            }
            if closed && conns.remove(&slot).is_some() {
                subscribers.retain(|s| *s != slot);
                current.fetch_sub(1, Ordering::AcqRel);
                sqes.push(
                    opcode::Close::new(types::Fixed(slot))
                        .build()
                        .user_data(CLOSE << 32),
                );
            }
        }
        publish(tail);
        for slot in touched.drain(..) {
            let Some(c) = conns.get_mut(&slot) else {
                continue;
            };
            if c.busy || (c.sending.is_empty() && c.out.is_empty()) {
                continue;
            }
            if c.sending.is_empty() {
                std::mem::swap(&mut c.sending, &mut c.out);
            }
            c.busy = true;
            let rest = &c.sending[c.sent..];
            sqes.push(
                opcode::Send::new(types::Fixed(slot), rest.as_ptr(), rest.len() as u32)
                    .build()
                    .user_data((SEND << 32) | u64::from(slot)),
            );
        }
        for e in &sqes {
            loop {
                // SAFETY: Send SQEs point into a connection's `sending` buffer, which is
                // not touched until its completion; others carry no pointers.
                if unsafe { ring.submission().push(e) }.is_ok() {
                    break;
                }
                let _ = ring.submit();
            }
        }
    }
    drop(ring);
    // SAFETY: allocated above with this layout; the ring using it is gone.
    unsafe { std::alloc::dealloc(entries as *mut u8, layout) };
}
