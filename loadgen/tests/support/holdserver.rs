//! Accept-and-hold MQTT server on io_uring direct descriptors: answers CONNECT with a
//! CONNACK, holds the connection, closes on EOF. Several rings (each a SO_REUSEPORT
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
    let mut partial: HashMap<u32, Vec<u8>> = HashMap::new();
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
            if ud >> 32 == 2 {
                continue; // send or close completion
            }
            let slot = ud as u32;
            let mut closed = res <= 0 && res != -libc::ENOBUFS;
            if let Some(bid) = cqueue::buffer_select(flags) {
                if res > 0 {
                    let start = usize::from(bid) * BUF_SIZE;
                    let buf = partial.entry(slot).or_default();
                    buf.extend_from_slice(&bufs[start..start + res as usize]);
                    // Walk whole frames: answer CONNECT; everything else is ignored.
                    loop {
                        if buf.len() < 2 {
                            break;
                        }
                        let (mut rl, mut mult, mut i) = (0usize, 1usize, 1usize);
                        while i < buf.len() && i <= 4 {
                            rl += usize::from(buf[i] & 0x7f) * mult;
                            mult *= 128;
                            i += 1;
                            if buf[i - 1] & 0x80 == 0 {
                                break;
                            }
                        }
                        if buf[i - 1] & 0x80 != 0 || buf.len() < i + rl {
                            break;
                        }
                        if buf[0] >> 4 == 1 && rl >= 7 {
                            let level = buf[i + 6];
                            let msg: &[u8] = if level == 5 { &CONNACK_V5 } else { &CONNACK_V3 };
                            sqes.push(
                                opcode::Send::new(
                                    types::Fixed(slot),
                                    msg.as_ptr(),
                                    msg.len() as u32,
                                )
                                .build()
                                .user_data(2 << 32),
                            );
                            connacks.fetch_add(1, Ordering::Relaxed);
                        }
                        buf.drain(..i + rl);
                    }
                }
                give(&mut tail, bid);
            }
            if res < 0 && res == -libc::ENOBUFS {
                sqes.push(
                    opcode::RecvMulti::new(types::Fixed(slot), 0)
                        .build()
                        .user_data(u64::from(slot)),
                );
            } else if !closed && !cqueue::more(flags) {
                closed = true;
            }
            if closed {
                partial.remove(&slot);
                current.fetch_sub(1, Ordering::AcqRel);
                sqes.push(
                    opcode::Close::new(types::Fixed(slot))
                        .build()
                        .user_data(2 << 32),
                );
            }
        }
        publish(tail);
        for e in &sqes {
            loop {
                // SAFETY: Send SQEs point into statics; others carry no pointers.
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
