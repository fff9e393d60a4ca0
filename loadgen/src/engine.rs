//! One worker thread: one io_uring with a sparse registered file table holding its
//! clients' sockets as direct descriptors (no process fds), one provided-buffer ring
//! for multishot receives, and a bounded completion loop.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use ringmq::protocol::{
    decode_packet, encode_packet, Connect, Disconnect, Packet, Properties, ProtocolVersion,
    PubResp, Publish, PublishProperties, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};

use crate::cli::Config;
use crate::payload::{self, Header, KIND_COMMAND};
use crate::plan::{ClientSpec, Plan, Role};
use crate::rx::{self, Conn, Delivery, RxStats, Stop, Streams};
use crate::stats::DeliveryTotals;
use crate::ws::{self, WsClient};

pub const PHASE_CONNECT: u8 = 0;
pub const PHASE_WARMUP: u8 = 1;
pub const PHASE_MEASURE: u8 = 2;
pub const PHASE_DRAIN: u8 = 3;
pub const PHASE_DISCONNECT: u8 = 4;
const PHASES: usize = 5;

/// Largest packet accepted from the broker.
const MAX_PACKET_BYTES: usize = 64 * 1024 * 1024;
/// How long a closed loop waits without progress before writing off a QoS 0 window.
const STALL_NS: u64 = 1_000_000_000;
/// Most messages one publisher emits per loop turn, so one publisher can't starve others.
const BURST_MAX: u32 = 256;
/// After DISCONNECT was requested, how long a thread waits for its closes without any
/// close completing (progress-based: tearing down 100k sockets on a busy 2-core box
/// takes many seconds of wall time but never stalls).
const CLOSE_GRACE_NS: u64 = 5_000_000_000;

/// State every thread reads and the main thread drives.
pub struct Shared {
    pub phase: AtomicU8,
    pub ready: AtomicU64,
    pub failed: AtomicU64,
    pub last_connack_ns: AtomicU64,
    /// CLOCK_MONOTONIC ns when MEASURE started; receipts of earlier sends are not recorded.
    pub measure_start_ns: AtomicU64,
    /// Messages sent per stream (sequence numbers 0..sent).
    pub sent: Vec<AtomicU64>,
    /// Copies received per stream (drives the QoS 0 closed loop across threads).
    pub delivered: Vec<AtomicU64>,
    pub unique_received: AtomicU64,
    pub multiplicity: Vec<u32>,
}

impl Shared {
    pub fn new(plan: &Plan) -> Shared {
        let n = plan.multiplicity.len();
        Shared {
            phase: AtomicU8::new(PHASE_CONNECT),
            ready: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_connack_ns: AtomicU64::new(0),
            measure_start_ns: AtomicU64::new(u64::MAX),
            sent: (0..n).map(|_| AtomicU64::new(0)).collect(),
            delivered: (0..n).map(|_| AtomicU64::new(0)).collect(),
            unique_received: AtomicU64::new(0),
            multiplicity: plan.multiplicity.clone(),
        }
    }

    /// Copies every stream's messages should have produced by now.
    pub fn expected(&self) -> u64 {
        self.sent
            .iter()
            .zip(&self.multiplicity)
            .map(|(s, m)| s.load(Ordering::Acquire) * u64::from(*m))
            .sum()
    }
}

/// What a thread hands back when it ends.
pub struct ThreadResult {
    pub latency: Histogram<u64>,
    pub rtt: Histogram<u64>,
    pub connect: Histogram<u64>,
    pub delivery: DeliveryTotals,
    pub sent_measure: u64,
    /// Sends submitted during the measured phase (publishes and acknowledgements):
    /// the kernel's cost per message falls with the messages each one carries.
    pub sends_measure: u64,
    pub received_measure: u64,
    pub received_bytes_measure: u64,
    pub unexpected: u64,
    pub qos0_written_off: u64,
    pub errors: BTreeMap<String, u64>,
    /// Thread CPU ns when it saw each phase begin, and at exit, not counting busy-poll
    /// spins (time with nothing to do, which the spin only keeps the core awake for).
    pub cpu_at_phase_ns: [u64; PHASES],
    pub cpu_end_ns: u64,
    /// Busy-poll ns spun before each phase began (left out of the process CPU figure).
    pub spin_at_phase_ns: [u64; PHASES],
    pub spin_end_ns: u64,
    pub unclean_close: u64,
}

pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the valid timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn new_histogram() -> Histogram<u64> {
    rx::new_histogram()
}

/// Setup failures, each naming the call and errno.
#[derive(Debug)]
pub struct SetupError(pub String);

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn setup_err(what: &str, e: std::io::Error) -> SetupError {
    let hint = match e.raw_os_error() {
        Some(libc::ENOSYS) | Some(libc::EPERM) => {
            " (io_uring unavailable: check sysctl kernel.io_uring_disabled and the container's seccomp profile)"
        }
        Some(libc::EMFILE) | Some(libc::EINVAL) if what.contains("files") => {
            " (a registered file table may not exceed RLIMIT_NOFILE; use more --threads)"
        }
        Some(libc::ENOMEM) => " (locked memory or kernel memory exhausted)",
        _ => "",
    };
    SetupError(format!(
        "{what} failed: {e} (errno {}){hint}",
        e.raw_os_error().unwrap_or(0)
    ))
}

// Steps of the connect chain, so a failure names its step.
const OP_SOCKET: u64 = 7;
const OP_NODELAY: u64 = 8;
const OP_NOPORT: u64 = 9;
const OP_BIND: u64 = 10;
const OP_CONNECT: u64 = 2;
const OP_SEND: u64 = 3;
const OP_RECV: u64 = 4;
const OP_CANCEL: u64 = 5;
const OP_CLOSE: u64 = 6;

fn ud(op: u64, idx: usize) -> u64 {
    (op << 32) | idx as u64
}

static ONE: libc::c_int = 1;
const BGID: u16 = 0;

/// A provided-buffer ring: the kernel picks a buffer per receive, so idle clients hold none.
struct BufRing {
    entries: *mut types::BufRingEntry,
    layout: std::alloc::Layout,
    count: u16,
    tail: u16,
    buf_size: usize,
    bufs: Vec<u8>,
}

impl BufRing {
    fn new(ring: &IoUring, count: u16, buf_size: usize) -> Result<BufRing, SetupError> {
        let layout = std::alloc::Layout::from_size_align(usize::from(count) * 16, 4096)
            .map_err(|_| SetupError("buffer ring layout".into()))?;
        // SAFETY: layout has non-zero size (count > 0).
        let entries = unsafe { std::alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
        if entries.is_null() {
            return Err(SetupError("buffer ring allocation failed".into()));
        }
        let mut br = BufRing {
            entries,
            layout,
            count,
            tail: 0,
            buf_size,
            bufs: vec![0u8; usize::from(count) * buf_size],
        };
        // SAFETY: `entries` stays allocated until BufRing drops, which happens after the
        // IoUring that uses it (Worker declares `ring` before `bufs`).
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(entries as u64, count, BGID, 0)
        }
        .map_err(|e| setup_err("io_uring_register(PBUF_RING)", e))?;
        for bid in 0..count {
            br.give(bid);
        }
        br.publish();
        Ok(br)
    }

    fn give(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (self.count - 1));
        // SAFETY: idx < count, inside the allocation; the kernel only reads entries
        // below the published tail, and this one is past it until `publish`.
        let e = unsafe { &mut *self.entries.add(idx) };
        e.set_addr(self.bufs.as_ptr() as u64 + u64::from(bid) * self.buf_size as u64);
        e.set_len(self.buf_size as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives in the first entry of our allocation; the kernel
        // reads it concurrently, hence the atomic release store.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    fn data(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * self.buf_size;
        &self.bufs[start..start + len.min(self.buf_size)]
    }
}

// SAFETY: the entries and buffers are owned by this BufRing alone; it moves to its
// worker thread once, before any use, and is only touched from that thread afterwards.
unsafe impl Send for BufRing {}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.entries as *mut u8, self.layout) };
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Idle,
    Connecting,
    AwaitConnAck,
    AwaitSubAck,
    Ready,
    Dead,
}

struct PubState {
    stream: u32,
    template: crate::tx::Template,
    period_ns: u64,
    next_due_ns: u64,
    seq: u64,
    /// QoS 0 closed loop: messages written off after a stall (lost, not in flight).
    written_off: u64,
    last_delivered: u64,
    last_progress_ns: u64,
}

struct Client {
    spec: ClientSpec,
    /// Index in `Worker::dst` of the node this client connects to.
    target: usize,
    state: St,
    inbuf: BytesMut,
    out: Vec<u8>,
    sending: Vec<u8>,
    send_off: usize,
    send_busy: bool,
    dirty: bool,
    closing: bool,
    close_submitted: bool,
    /// Counted in `connects_inflight` until CONNACK or failure.
    attempt_open: bool,
    connect_start_ns: u64,
    next_pid: u16,
    /// QoS >= 1 publishes not yet acknowledged (PUBACK / PUBCOMP).
    inflight: u32,
    /// MQTT 5 CONNACK Receive Maximum: the broker disconnects a client that exceeds it,
    /// so the closed-loop window is clamped to it.
    server_receive_max: u32,
    publ: Option<PubState>,
    streams: Streams,
    /// Controller: next sequence number per device command stream.
    cmd_seq: Vec<u64>,
    cmd_next_device: u32,
    cmd_outstanding: u64,
    /// `--transport ws`: the connection's WebSocket receive side (boxed: a pointer
    /// per client when unused).
    ws: Option<Box<WsClient>>,
    /// With --tls: the connection's rustls client. `out` stays plaintext (what the
    /// protocol code writes); `flush_one` turns it into records.
    tls: Option<Box<rustls::ClientConnection>>,
}

pub struct Worker {
    // Declared first so it drops before the buffer memory it points into.
    ring: IoUring,
    bufs: BufRing,
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    clients: Vec<Client>,
    devices: u32,
    /// The broker nodes (one unless `--hosts`); each client connects to `Client::target`.
    dst: Box<[libc::sockaddr_in]>,
    srcs: Box<[libc::sockaddr_in]>,
    next_connect: usize,
    connects_inflight: u32,
    connect_t0_ns: u64,
    connect_rate_per_thread: f64,
    open: usize,
    dirty: Vec<usize>,
    rearm: Vec<usize>,
    paced: BinaryHeap<Reverse<(u64, usize)>>,
    unpaced: Vec<usize>,
    cqes: Vec<(u64, i32, u32)>,
    phase: u8,
    run_start_ns: u64,
    measure_start_ns: u64,
    disconnect_ns: u64,
    /// Last completion seen: the close grace period counts from here.
    last_close_ns: u64,
    /// Deliveries: sequence tracking, latency, counts (the latency histogram lives
    /// here until the thread ends).
    rx: RxStats,
    /// Set while re-arming receives, so a nested reap leaves the rearm list alone.
    reaping: bool,
    /// `--spin` in ns, and the total spun so far.
    spin_ns: u64,
    spun_ns: u64,
    result: ThreadResult,
    /// `--transport ws`: one receive's MQTT bytes, out of their frames (reused).
    ws_scratch: Vec<u8>,
}

fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn client_id(index: u64) -> String {
    format!("lg{}-{index}", std::process::id())
}

fn encode(p: &Packet, v: ProtocolVersion, out: &mut Vec<u8>) {
    let mut b = BytesMut::new();
    encode_packet(p, v, &mut b);
    out.extend_from_slice(&b);
}

/// Bytes of the fixed header: 1 type byte plus the variable-length remaining length.
fn fixed_header_len(frame: &[u8]) -> usize {
    1 + frame[1..]
        .iter()
        .take(4)
        .position(|b| b & 0x80 == 0)
        .map_or(4, |p| p + 1)
}

impl Worker {
    pub fn new(
        cfg: Arc<Config>,
        shared: Arc<Shared>,
        specs: Vec<ClientSpec>,
        devices: u32,
    ) -> Result<Worker, SetupError> {
        let n = specs.len();
        let streams_total = shared.delivered.len();
        let entries = 4096u32;
        // Cooperative task running: completions wait for this thread's next kernel
        // entry instead of interrupting it (an IPI per burst); the spin below watches
        // IORING_SQ_TASKRUN. Kernels before 5.19 reject the flags: plain ring then.
        let ring = match IoUring::builder()
            .setup_cqsize(entries * 8)
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build(entries)
        {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                IoUring::builder().setup_cqsize(entries * 8).build(entries)
            }
            r => r,
        }
        .map_err(|e| setup_err("io_uring_setup", e))?;
        ring.submitter()
            .register_files_sparse(n.max(1) as u32)
            .map_err(|e| setup_err(&format!("io_uring_register(FILES_SPARSE, {n} files)"), e))?;
        let (count, size) = if cfg.scenario == crate::cli::Scenario::Connect {
            (256, 4096)
        } else {
            (1024, 16 * 1024)
        };
        let bufs = BufRing::new(&ring, count, size)?;
        let spin_ns = u64::try_from(cfg.spin.as_nanos()).unwrap_or(u64::MAX);
        let dst: Box<[libc::sockaddr_in]> = cfg
            .targets
            .iter()
            .map(|(ip, port)| sockaddr(*ip, *port))
            .collect();
        let nodes = dst.len().max(1) as u64;
        let srcs: Box<[libc::sockaddr_in]> =
            cfg.src_ips.iter().map(|ip| sockaddr(*ip, 0)).collect();
        let threads = (cfg.threads as f64).max(1.0);
        let connect_rate_per_thread = cfg.connect_rate / threads;
        let clients = specs
            .into_iter()
            .map(|spec| {
                let streams = Streams::new(spec.expect);
                let cmd_seq = if spec.role == Role::Controller {
                    vec![0; devices as usize]
                } else {
                    Vec::new()
                };
                let target = match (&spec.publish, &spec.subscribe) {
                    (Some(p), None) => u64::from(p.stream) % nodes,
                    (None, Some(_)) => (spec.index + 1) % nodes,
                    _ => spec.index % nodes,
                } as usize;
                Client {
                    spec,
                    target,
                    state: St::Idle,
                    inbuf: BytesMut::new(),
                    out: Vec::new(),
                    sending: Vec::new(),
                    send_off: 0,
                    send_busy: false,
                    dirty: false,
                    closing: false,
                    close_submitted: false,
                    attempt_open: false,
                    connect_start_ns: 0,
                    next_pid: 0,
                    inflight: 0,
                    server_receive_max: u32::MAX,
                    publ: None,
                    streams,
                    cmd_seq,
                    cmd_next_device: 0,
                    cmd_outstanding: 0,
                    ws: cfg.ws_path.as_ref().map(|_| Box::default()),
                    tls: None,
                }
            })
            .collect();
        Ok(Worker {
            ring,
            bufs,
            cfg,
            shared,
            clients,
            devices,
            dst,
            srcs,
            next_connect: 0,
            connects_inflight: 0,
            connect_t0_ns: 0,
            connect_rate_per_thread,
            open: 0,
            dirty: Vec::new(),
            rearm: Vec::new(),
            paced: BinaryHeap::new(),
            unpaced: Vec::new(),
            cqes: Vec::with_capacity(4096),
            phase: PHASE_CONNECT,
            run_start_ns: 0,
            measure_start_ns: u64::MAX,
            disconnect_ns: 0,
            last_close_ns: 0,
            rx: RxStats::new(streams_total, new_histogram()),
            reaping: false,
            spin_ns,
            spun_ns: 0,
            ws_scratch: Vec::new(),
            result: ThreadResult {
                latency: new_histogram(),
                rtt: new_histogram(),
                connect: new_histogram(),
                delivery: DeliveryTotals::default(),
                sent_measure: 0,
                sends_measure: 0,
                received_measure: 0,
                received_bytes_measure: 0,
                unexpected: 0,
                qos0_written_off: 0,
                errors: BTreeMap::new(),
                cpu_at_phase_ns: [0; PHASES],
                cpu_end_ns: 0,
                spin_at_phase_ns: [0; PHASES],
                spin_end_ns: 0,
                unclean_close: 0,
            },
        })
    }

    fn err(&mut self, what: &str, errno: i32) {
        let e = std::io::Error::from_raw_os_error(errno);
        *self
            .result
            .errors
            .entry(format!("{what}: {e}"))
            .or_insert(0) += 1;
    }

    fn err_msg(&mut self, what: String) {
        *self.result.errors.entry(what).or_insert(0) += 1;
    }

    fn push(&mut self, entries: &[squeue::Entry]) {
        loop {
            let free = {
                let sq = self.ring.submission();
                sq.capacity() - sq.len()
            };
            if free >= entries.len() {
                break;
            }
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    self.reap();
                }
            }
        }
        // SAFETY: every pointer in these entries (sockaddrs in Box'd fields, socket option
        // value in a static, send buffers in `Client::sending` which is not touched until
        // its completion) stays valid until the operation completes.
        unsafe {
            let mut sq = self.ring.submission();
            for e in entries {
                // Space was checked above; a failure here is impossible.
                let _ = sq.push(e);
            }
        }
    }

    pub fn run(mut self) -> ThreadResult {
        self.result.cpu_at_phase_ns[0] = thread_cpu_ns();
        self.connect_t0_ns = now_ns();
        loop {
            let phase = self.shared.phase.load(Ordering::Acquire);
            let now = now_ns();
            while self.phase < phase {
                self.phase += 1;
                let p = usize::from(self.phase);
                self.result.cpu_at_phase_ns[p] = thread_cpu_ns().saturating_sub(self.spun_ns);
                self.result.spin_at_phase_ns[p] = self.spun_ns;
                self.enter_phase(now);
            }
            if self.phase == PHASE_CONNECT || self.phase < PHASE_DISCONNECT {
                self.start_connects(now);
            }
            if self.phase == PHASE_WARMUP || self.phase == PHASE_MEASURE {
                self.generate(now);
            }
            self.flush();
            if self.phase == PHASE_DISCONNECT
                && (self.open == 0
                    || now_ns().saturating_sub(self.disconnect_ns.max(self.last_close_ns))
                        > CLOSE_GRACE_NS)
            {
                self.result.unclean_close = self.open as u64;
                break;
            }
            let wait_ns = self.wait_ns(now);
            self.wait(now, wait_ns);
            self.reap();
        }
        self.result.cpu_end_ns = thread_cpu_ns().saturating_sub(self.spun_ns);
        self.result.spin_end_ns = self.spun_ns;
        self.flush_unique();
        self.result.latency = std::mem::replace(&mut self.rx.latency, new_histogram());
        self.result.received_measure = self.rx.received_measure;
        self.result.received_bytes_measure = self.rx.received_bytes_measure;
        self.result.unexpected += self.rx.unexpected;
        for c in &self.clients {
            for t in c.streams.trackers() {
                self.result.delivery.duplicates += t.duplicates;
                self.result.delivery.out_of_order += t.out_of_order;
                self.result.delivery.unique += t.unique;
            }
        }
        self.result
    }

    /// Submits what this turn queued and waits up to `wait_ns` from `now` for a
    /// completion. With a spin: polls the completion queue for the first `spin_ns` of
    /// the wait; if it must sleep longer, sleeps until one spin before the deadline,
    /// so the next turn spins up to it rather than waking late from the sleep.
    fn wait(&mut self, now: u64, wait_ns: u64) {
        if self.spin_ns == 0 {
            self.enter(1, wait_ns);
            return;
        }
        self.enter(0, 0);
        let until = now.saturating_add(wait_ns.min(self.spin_ns));
        let mut t = now_ns();
        if !self.has_completions() && t < until {
            // Thread CPU, not wall time: a spin preempted by another process must not
            // count more than it used.
            let cpu0 = thread_cpu_ns();
            while !self.has_completions() && t < until {
                std::hint::spin_loop();
                t = now_ns();
            }
            self.spun_ns += thread_cpu_ns().saturating_sub(cpu0);
        }
        if self.ring.submission().taskrun() {
            // Completions held for our next kernel entry: post them.
            self.enter(0, 0);
        }
        if !self.ring.completion().is_empty() {
            return;
        }
        let left = now.saturating_add(wait_ns).saturating_sub(t);
        if left > self.spin_ns {
            self.enter(1, left - self.spin_ns);
        }
    }

    /// Completions posted, or held by the kernel until this thread enters it.
    fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty() || self.ring.submission().taskrun()
    }

    /// `io_uring_enter`: submits, and waits for `want` completions up to `wait_ns`.
    fn enter(&mut self, want: usize, wait_ns: u64) {
        let res = if want == 0 {
            self.ring.submit()
        } else {
            let ts = types::Timespec::new().nsec(wait_ns as u32);
            let args = types::SubmitArgs::new().timespec(&ts);
            self.ring.submitter().submit_with_args(want, &args)
        };
        match res {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                ) => {}
            Err(e) => {
                self.err("io_uring_enter", e.raw_os_error().unwrap_or(0));
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
    }

    fn wait_ns(&self, now: u64) -> u64 {
        let mut wait = 10_000_000u64;
        if self.phase == PHASE_CONNECT
            && self.next_connect < self.clients.len()
            && self.connect_rate_per_thread > 0.0
        {
            wait = wait.min(1_000_000);
        }
        if self.phase == PHASE_WARMUP || self.phase == PHASE_MEASURE {
            if let Some(Reverse((due, _))) = self.paced.peek() {
                // Without a spin, sleeps shorter than 20 µs only add wake-ups.
                let floor = if self.spin_ns == 0 { 20_000 } else { 1 };
                wait = wait.min(due.saturating_sub(now).max(floor));
            }
            // A QoS 0 closed loop advances when another thread's subscriber counts a
            // delivery, which does not wake this ring: poll it often. With one thread
            // the subscriber's receive is this ring's own completion, so a wake-up
            // every 50 µs (20,000/s, each a sleep and a context switch) buys nothing.
            if !self.unpaced.is_empty() && self.cfg.qos == QoS::AtMostOnce && self.cfg.threads > 1 {
                wait = wait.min(50_000);
            }
            if !self.unpaced.is_empty() && self.cfg.qos != QoS::AtMostOnce {
                wait = wait.min(1_000_000);
            }
        }
        wait.min(999_999_999)
    }

    fn enter_phase(&mut self, now: u64) {
        match self.phase {
            PHASE_WARMUP => {
                self.run_start_ns = now;
                for idx in 0..self.clients.len() {
                    self.init_publisher(idx, now);
                }
            }
            PHASE_MEASURE => {
                self.measure_start_ns = self.shared.measure_start_ns.load(Ordering::Acquire);
                self.rx.measure_start_ns = self.measure_start_ns;
                self.rx.measuring = true;
            }
            PHASE_DRAIN => self.rx.measuring = false,
            PHASE_DISCONNECT => {
                self.disconnect_ns = now;
                for idx in 0..self.clients.len() {
                    self.begin_close(idx, true);
                }
            }
            _ => {}
        }
    }

    fn init_publisher(&mut self, idx: usize, now: u64) {
        let v = self.cfg.protocol;
        let qos = self.cfg.qos;
        let size = self.cfg.size;
        let c = &mut self.clients[idx];
        if c.state != St::Ready {
            return;
        }
        if c.spec.role == Role::Controller && self.cfg.cmd_rate > 0.0 && self.devices > 0 {
            let period_ns = (1e9 / self.cfg.cmd_rate) as u64;
            c.publ = Some(PubState {
                stream: u32::MAX,
                template: Default::default(),
                period_ns,
                next_due_ns: now + period_ns,
                seq: 0,
                written_off: 0,
                last_delivered: 0,
                last_progress_ns: now,
            });
            self.paced.push(Reverse((now + period_ns, idx)));
            return;
        }
        let Some(spec) = c.spec.publish.clone() else {
            return;
        };
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: Bytes::from(spec.topic.clone().into_bytes()),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 1 },
            properties: PublishProperties::default(),
            payload: Bytes::from(vec![0u8; size]),
        };
        let mut template = Vec::new();
        encode(&Packet::Publish(publish), v, &mut template);
        let pid_off = fixed_header_len(&template) + 2 + spec.topic.len();
        let period_ns = if spec.rate > 0.0 {
            (1e9 / spec.rate).max(1.0) as u64
        } else {
            0
        };
        let first = now + spec.phase_offset_ns;
        c.publ = Some(PubState {
            stream: spec.stream,
            template: crate::tx::Template {
                frame: template,
                pid_off,
                payload_len: size,
                stream: spec.stream,
            },
            period_ns,
            next_due_ns: first,
            seq: 0,
            written_off: 0,
            last_delivered: 0,
            last_progress_ns: now,
        });
        if period_ns > 0 {
            self.paced.push(Reverse((first, idx)));
        } else {
            self.unpaced.push(idx);
        }
    }

    fn start_connects(&mut self, now: u64) {
        if self.phase >= PHASE_DISCONNECT {
            return;
        }
        let mut budget = self
            .cfg
            .connect_inflight
            .saturating_sub(self.connects_inflight) as usize;
        if self.connect_rate_per_thread > 0.0 {
            let allowed = ((now - self.connect_t0_ns) as f64 * 1e-9 * self.connect_rate_per_thread)
                as usize
                + 1;
            budget = budget.min(allowed.saturating_sub(self.next_connect));
        }
        // Bound the work per turn so completions keep flowing.
        budget = budget.min(512);
        for _ in 0..budget {
            if self.next_connect >= self.clients.len() {
                return;
            }
            let idx = self.next_connect;
            self.next_connect += 1;
            self.connect(idx, now);
        }
    }

    fn connect(&mut self, idx: usize, now: u64) {
        let slot = idx as u32;
        let Ok(dest) = types::DestinationSlot::try_from_slot_target(slot) else {
            self.err_msg(format!("slot {slot} out of range"));
            return;
        };
        let c = &mut self.clients[idx];
        c.state = St::Connecting;
        c.connect_start_ns = now;
        let global = c.spec.index as usize;
        self.connects_inflight += 1;
        self.clients[idx].attempt_open = true;
        self.open += 1;
        let link = squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS;
        let fixed = types::Fixed(slot);
        let mut chain = Vec::with_capacity(5);
        chain.push(
            opcode::Socket::new(libc::AF_INET, libc::SOCK_STREAM, 0)
                .file_index(Some(dest))
                .build()
                .flags(link)
                .user_data(ud(OP_SOCKET, idx)),
        );
        let one = &ONE as *const libc::c_int as *const libc::c_void;
        chain.push(
            opcode::SetSockOpt::new(
                fixed,
                libc::IPPROTO_TCP as u32,
                libc::TCP_NODELAY as u32,
                one,
                4,
            )
            .build()
            .flags(link)
            .user_data(ud(OP_NODELAY, idx)),
        );
        if !self.srcs.is_empty() {
            let src = &self.srcs[global % self.srcs.len()];
            // Port chosen at connect time, so the 4-tuple (not the port alone) must be unique.
            chain.push(
                opcode::SetSockOpt::new(
                    fixed,
                    libc::SOL_IP as u32,
                    libc::IP_BIND_ADDRESS_NO_PORT as u32,
                    one,
                    4,
                )
                .build()
                .flags(link)
                .user_data(ud(OP_NOPORT, idx)),
            );
            chain.push(
                opcode::Bind::new(
                    fixed,
                    src as *const libc::sockaddr_in as *const libc::sockaddr,
                    16,
                )
                .build()
                .flags(link)
                .user_data(ud(OP_BIND, idx)),
            );
        }
        chain.push(
            opcode::Connect::new(
                fixed,
                &self.dst[self.clients[idx].target] as *const libc::sockaddr_in
                    as *const libc::sockaddr,
                16,
            )
            .build()
            .user_data(ud(OP_CONNECT, idx)),
        );
        self.push(&chain);
    }

    fn mark_dirty(&mut self, idx: usize) {
        let c = &mut self.clients[idx];
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(idx);
        }
    }

    fn next_pid(c: &mut Client) -> u16 {
        c.next_pid = if c.next_pid == u16::MAX {
            1
        } else {
            c.next_pid + 1
        };
        c.next_pid
    }

    fn fail(&mut self, idx: usize, what: &str, errno: i32) {
        self.err(what, errno);
        let c = &mut self.clients[idx];
        let was_connecting = matches!(c.state, St::Connecting | St::AwaitConnAck | St::AwaitSubAck);
        c.state = St::Dead;
        if was_connecting {
            self.shared.failed.fetch_add(1, Ordering::AcqRel);
        }
        self.submit_close(idx);
    }

    /// The connection attempt (SOCKET .. CONNACK) is over, whichever way it ended.
    fn end_attempt(&mut self, idx: usize) {
        let c = &mut self.clients[idx];
        if c.attempt_open {
            c.attempt_open = false;
            self.connects_inflight -= 1;
        }
    }

    fn submit_close(&mut self, idx: usize) {
        self.end_attempt(idx);
        let c = &mut self.clients[idx];
        if c.close_submitted {
            return;
        }
        c.close_submitted = true;
        c.state = St::Dead;
        let fixed = types::Fixed(idx as u32);
        // Cancel the multishot receive (it holds a reference to the socket), then close
        // the slot: the last reference goes and the kernel sends FIN. Both run inline;
        // SHUTDOWN would be punted to io-wq threads and crawl at 100k connections.
        let sh = opcode::AsyncCancel::new(ud(OP_RECV, idx))
            .build()
            .flags(squeue::Flags::IO_HARDLINK)
            .user_data(ud(OP_CANCEL, idx));
        let cl = opcode::Close::new(fixed)
            .build()
            .user_data(ud(OP_CLOSE, idx));
        self.push(&[sh, cl]);
    }

    /// Starts a clean close: DISCONNECT, then shutdown and close once it is sent.
    fn begin_close(&mut self, idx: usize, polite: bool) {
        let v = self.cfg.protocol;
        let c = &mut self.clients[idx];
        match c.state {
            St::Idle => {}
            St::Dead => {}
            St::Connecting => self.submit_close(idx),
            St::AwaitConnAck | St::AwaitSubAck | St::Ready => {
                if polite && !c.closing {
                    let d = Packet::Disconnect(Disconnect {
                        code: ReasonCode::Success,
                        properties: Properties::default(),
                    });
                    encode(&d, v, &mut c.out);
                }
                c.closing = true;
                self.mark_dirty(idx);
            }
        }
    }

    fn flush(&mut self) {
        // Indexed, not drained: a flush may push into a full SQ, which reaps, which can
        // mark more clients dirty; they are appended here and flushed in this same pass.
        let mut i = 0;
        while i < self.dirty.len() {
            let idx = self.dirty[i];
            self.clients[idx].dirty = false;
            self.flush_one(idx);
            i += 1;
        }
        self.dirty.clear();
    }

    fn flush_one(&mut self, idx: usize) {
        let c = &mut self.clients[idx];
        if c.send_busy || c.state == St::Dead {
            return;
        }
        if let Some(tls) = c.tls.as_mut() {
            // Plaintext in (rustls holds it until the handshake is done), records out.
            if !c.out.is_empty() {
                use std::io::Write;
                let _ = tls.writer().write_all(&c.out);
                c.out.clear();
            }
            while tls.wants_write() {
                match tls.write_tls(&mut c.out) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        if c.out.is_empty() {
            if c.closing {
                self.submit_close(idx);
            }
            return;
        }
        match c.ws.as_deref() {
            // One frame per flush, as the broker sends.
            Some(w) if w.open => {
                c.sending.clear();
                ws::frame_into(&c.out, &mut c.sending);
            }
            _ => std::mem::swap(&mut c.out, &mut c.sending),
        }
        c.out.clear();
        c.send_off = 0;
        self.result.sends_measure += u64::from(self.phase == PHASE_MEASURE);
        self.submit_send(idx);
    }

    fn submit_send(&mut self, idx: usize) {
        let c = &mut self.clients[idx];
        c.send_busy = true;
        let rest = &c.sending[c.send_off..];
        let e = opcode::Send::new(types::Fixed(idx as u32), rest.as_ptr(), rest.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud(OP_SEND, idx));
        self.push(&[e]);
    }

    fn arm_recv(&mut self, idx: usize) {
        let e = opcode::RecvMulti::new(types::Fixed(idx as u32), BGID)
            .build()
            .user_data(ud(OP_RECV, idx));
        self.push(&[e]);
    }

    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        let mut gave = false;
        // Every completion reaped here was already posted: this one reading is when
        // their bytes were seen, the receive time of each message in them.
        let now = if cqes.is_empty() { 0 } else { now_ns() };
        for &(data, res, flags) in &cqes {
            let idx = (data & 0xFFFF_FFFF) as usize;
            match data >> 32 {
                op @ (OP_SOCKET | OP_NODELAY | OP_NOPORT | OP_BIND)
                    if res < 0
                        && res != -libc::ECANCELED
                        && self.clients[idx].state == St::Connecting =>
                {
                    let step = match op {
                        OP_SOCKET => "socket (direct descriptor)",
                        OP_NODELAY => "setsockopt(TCP_NODELAY)",
                        OP_NOPORT => "setsockopt(IP_BIND_ADDRESS_NO_PORT)",
                        _ => "bind (source address)",
                    };
                    self.fail(idx, step, -res);
                }
                OP_CONNECT => self.on_connect(idx, res),
                OP_SEND => self.on_send(idx, res),
                OP_RECV => {
                    let take = self.on_recv(idx, res, cqueue::more(flags));
                    let mut slow = false;
                    if let Some(bid) = cqueue::buffer_select(flags) {
                        if take {
                            slow = if self.clients[idx].tls.is_some() {
                                self.feed_tls(idx, bid, res as usize)
                            } else {
                                self.feed(idx, bid, res as usize, now)
                            };
                        }
                        // Only now: `feed` read the buffer in place.
                        self.bufs.give(bid);
                        gave = true;
                    }
                    if slow {
                        self.process_input(idx, now);
                    }
                }
                OP_CANCEL => {}
                OP_CLOSE => {
                    self.open = self.open.saturating_sub(1);
                }
                _ => {}
            }
        }
        if !cqes.is_empty() {
            // Any completion is progress for the close grace period.
            self.last_close_ns = now;
        }
        self.cqes = cqes;
        if gave {
            self.bufs.publish();
        }
        // Indexed for the same reason as `flush`; a nested reap (from a push into a full
        // SQ below) leaves the list to this outer one.
        if self.reaping {
            return;
        }
        self.reaping = true;
        let mut i = 0;
        while i < self.rearm.len() {
            let idx = self.rearm[i];
            if self.clients[idx].state != St::Dead {
                self.arm_recv(idx);
            }
            i += 1;
        }
        self.rearm.clear();
        self.reaping = false;
        self.flush_unique();
    }

    /// Publishes this thread's delivery counts to the shared ones (once per reap: the
    /// closed loop and the drain read them, nothing needs them per message).
    fn flush_unique(&mut self) {
        self.rx.publish_delivered(&self.shared.delivered);
        if self.rx.unique_pending > 0 {
            self.shared
                .unique_received
                .fetch_add(self.rx.unique_pending, Ordering::AcqRel);
            self.rx.unique_pending = 0;
        }
    }

    fn on_connect(&mut self, idx: usize, res: i32) {
        if self.clients[idx].state != St::Connecting {
            return;
        }
        if res < 0 {
            let errno = if res == -libc::ECANCELED {
                libc::ECANCELED
            } else {
                -res
            };
            if errno == libc::ECANCELED {
                // The chain failed earlier and was already counted; just settle state.
                let c = &mut self.clients[idx];
                if c.state == St::Connecting {
                    c.state = St::Dead;
                    self.shared.failed.fetch_add(1, Ordering::AcqRel);
                    self.submit_close(idx);
                }
                return;
            }
            self.fail(idx, "connect", errno);
            return;
        }
        if let Some((config, name)) = &self.cfg.tls {
            match rustls::ClientConnection::new(config.clone(), name.clone()) {
                Ok(t) => self.clients[idx].tls = Some(Box::new(t)),
                Err(e) => {
                    self.err_msg(format!("tls client: {e}"));
                    self.clients[idx].state = St::Dead;
                    self.shared.failed.fetch_add(1, Ordering::AcqRel);
                    self.submit_close(idx);
                    return;
                }
            }
        }
        let c = &mut self.clients[idx];
        c.state = St::AwaitConnAck;
        if let (Some(path), Some(_)) = (&self.cfg.ws_path, &c.ws) {
            // The CONNECT follows the 101.
            // The Host header names the node this client dials (`--hosts`).
            let (host, port) = self.cfg.targets[c.target];
            c.out = ws::request(&host.to_string(), port, path);
            self.arm_recv(idx);
            self.mark_dirty(idx);
            return;
        }
        self.queue_connect(idx);
        self.arm_recv(idx);
    }

    /// Queues the CONNECT (after the TCP connect, or the WebSocket upgrade).
    fn queue_connect(&mut self, idx: usize) {
        let v = self.cfg.protocol;
        let c = &mut self.clients[idx];
        let mut props = Properties::default();
        if v.is_v5() {
            props.receive_maximum = Some(u16::MAX);
            if self.cfg.persistent {
                props.session_expiry_interval_s = Some(3600);
            }
        }
        let conn = Packet::Connect(Box::new(Connect {
            protocol: v,
            clean_start: !self.cfg.persistent,
            keep_alive_s: 0,
            client_id: Bytes::from(client_id(c.spec.index).into_bytes()),
            will: None,
            username: self
                .cfg
                .username
                .as_ref()
                .map(|u| Bytes::from(u.clone().into_bytes())),
            password: self
                .cfg
                .password
                .as_ref()
                .map(|p| Bytes::from(p.clone().into_bytes())),
            properties: props,
        }));
        encode(&conn, v, &mut c.out);
        self.mark_dirty(idx);
    }

    fn on_send(&mut self, idx: usize, res: i32) {
        let c = &mut self.clients[idx];
        c.send_busy = false;
        if c.state == St::Dead {
            return;
        }
        if res < 0 {
            self.fail(idx, "send", -res);
            return;
        }
        c.send_off += res as usize;
        if c.send_off < c.sending.len() {
            self.submit_send(idx);
            return;
        }
        c.sending.clear();
        c.send_off = 0;
        let tls_pending = c.tls.as_ref().is_some_and(|t| t.wants_write());
        if !c.out.is_empty() || c.closing || tls_pending {
            self.flush_one(idx);
        }
    }

    /// Settles a receive completion's effect on the connection; true when its bytes
    /// are to be read.
    fn on_recv(&mut self, idx: usize, res: i32, more: bool) -> bool {
        if self.clients[idx].state == St::Dead {
            return false;
        }
        if res == 0 {
            let closing = self.clients[idx].closing;
            if !closing {
                let msg = format!(
                    "connection closed by broker ({:?})",
                    self.clients[idx].state
                );
                self.err_msg(msg);
                let c = &mut self.clients[idx];
                if matches!(c.state, St::AwaitConnAck | St::AwaitSubAck) {
                    self.shared.failed.fetch_add(1, Ordering::AcqRel);
                }
            }
            self.submit_close(idx);
            return false;
        }
        if res < 0 {
            if res == -libc::ENOBUFS {
                self.rearm.push(idx);
                return false;
            }
            if self.clients[idx].closing {
                self.submit_close(idx);
            } else {
                self.fail(idx, "recv", -res);
            }
            return false;
        }
        if !more {
            self.rearm.push(idx);
        }
        true
    }

    /// Reads one receive buffer in place as far as `rx::scan` can; what it cannot (from
    /// a frame that needs the full decoder on, or a partial frame) is copied into the
    /// client's `inbuf`. True when `inbuf` then holds frames for `process_input`.
    fn feed(&mut self, idx: usize, bid: u16, len: usize, now: u64) -> bool {
        let v5 = self.cfg.protocol.is_v5();
        let ws_mode = self.clients[idx].ws.is_some();
        if ws_mode {
            self.ws_scratch.clear();
            let raw = self.bufs.data(bid, len);
            let Some(w) = self.clients[idx].ws.as_deref_mut() else {
                return false;
            };
            match w.on_bytes(raw, &mut self.ws_scratch) {
                Ok(false) => {}
                Ok(true) => self.queue_connect(idx),
                Err(e) => {
                    self.err_msg(e);
                    self.shared.failed.fetch_add(1, Ordering::AcqRel);
                    self.clients[idx].state = St::Dead;
                    self.submit_close(idx);
                    return false;
                }
            }
        }
        let data: &[u8] = if ws_mode {
            &self.ws_scratch
        } else {
            self.bufs.data(bid, len)
        };
        let c = &mut self.clients[idx];
        let mut off = 0;
        if !c.inbuf.is_empty() {
            // The last buffer ended inside a frame: complete that frame from this one
            // (copying only its own bytes) and read it first.
            match rx::complete_frame(&mut c.inbuf, data, MAX_PACKET_BYTES) {
                Ok(n) => off = n,
                // The full decoder reports it.
                Err(_) => {
                    c.inbuf.extend_from_slice(data);
                    return true;
                }
            }
            let mut conn = Conn {
                v5,
                plain_subscriber: c.spec.role == Role::Plain,
                streams: &mut c.streams,
                out: &mut c.out,
            };
            let s = rx::scan(&c.inbuf, &mut conn, &mut self.rx, MAX_PACKET_BYTES, now);
            c.inbuf.advance(s.consumed);
            Self::settle(c, &mut self.dirty, idx, s.acked, s.wrote, now);
            if let Some(e) = s.foreign {
                *self
                    .result
                    .errors
                    .entry(format!("foreign payload: {e}"))
                    .or_insert(0) += 1;
            }
            match s.stop {
                // The completed frame was read: go on with the rest of this buffer.
                Stop::End => {}
                // Only when this buffer is used up: nothing is left to read.
                Stop::Partial => {
                    c.inbuf.extend_from_slice(&data[off..]);
                    return false;
                }
                // A frame for the full decoder (or what follows a foreign payload, or a
                // malformed frame): `process_input` reads it and the rest.
                Stop::Slow => {
                    c.inbuf.extend_from_slice(&data[off..]);
                    return true;
                }
            }
        }
        let rest = &data[off..];
        let mut conn = Conn {
            v5,
            plain_subscriber: c.spec.role == Role::Plain,
            streams: &mut c.streams,
            out: &mut c.out,
        };
        let s = rx::scan(rest, &mut conn, &mut self.rx, MAX_PACKET_BYTES, now);
        Self::settle(c, &mut self.dirty, idx, s.acked, s.wrote, now);
        if let Some(e) = s.foreign {
            *self
                .result
                .errors
                .entry(format!("foreign payload: {e}"))
                .or_insert(0) += 1;
        }
        c.inbuf.extend_from_slice(&rest[s.consumed..]);
        s.stop == Stop::Slow
    }

    /// With --tls: decrypts one receive buffer into `inbuf` (read by `process_input`,
    /// the same decoder as plaintext); handshake answers are flushed. True when
    /// `inbuf` holds plaintext.
    fn feed_tls(&mut self, idx: usize, bid: u16, len: usize) -> bool {
        use std::io::Read;
        let mut rd = self.bufs.data(bid, len);
        let c = &mut self.clients[idx];
        let Some(tls) = c.tls.as_mut() else {
            return false;
        };
        let mut failed = None;
        // Bounded: each pass consumes bytes of `rd` or stops.
        while !rd.is_empty() {
            match tls.read_tls(&mut rd) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
            match tls.process_new_packets() {
                Ok(st) => {
                    let n = st.plaintext_bytes_to_read();
                    if n > 0 {
                        let start = c.inbuf.len();
                        c.inbuf.resize(start + n, 0);
                        let got = tls.reader().read(&mut c.inbuf[start..]).unwrap_or(0);
                        c.inbuf.truncate(start + got);
                    }
                }
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        let wants_write = tls.wants_write();
        let has_input = !c.inbuf.is_empty();
        if let Some(e) = failed {
            self.err_msg(format!("tls: {e}"));
            let c = &mut self.clients[idx];
            if matches!(c.state, St::AwaitConnAck | St::AwaitSubAck) {
                self.shared.failed.fetch_add(1, Ordering::AcqRel);
            }
            c.state = St::Dead;
            self.submit_close(idx);
            return false;
        }
        if wants_write {
            self.mark_dirty(idx);
        }
        has_input
    }

    /// Applies what a scan read to the client: acknowledged publishes leave its
    /// window; acknowledgements written make it dirty.
    fn settle(
        c: &mut Client,
        dirty: &mut Vec<usize>,
        idx: usize,
        acked: u32,
        wrote: bool,
        now: u64,
    ) {
        if acked > 0 {
            c.inflight = c.inflight.saturating_sub(acked);
            if let Some(pb) = c.publ.as_mut() {
                pb.last_progress_ns = now;
            }
        }
        if wrote && !c.dirty {
            c.dirty = true;
            dirty.push(idx);
        }
    }

    /// Reads the frames buffered in the client's `inbuf`: the fast path first, the
    /// full decoder for the frames it leaves.
    fn process_input(&mut self, idx: usize, now: u64) {
        let v = self.cfg.protocol;
        // `inbuf` holds at most one provided buffer (16 KiB) plus one partial frame,
        // so this loop is bounded by the packets that fit in it.
        loop {
            let c = &mut self.clients[idx];
            if c.inbuf.is_empty() {
                return;
            }
            let mut conn = Conn {
                v5: v.is_v5(),
                plain_subscriber: c.spec.role == Role::Plain,
                streams: &mut c.streams,
                out: &mut c.out,
            };
            let s = rx::scan(&c.inbuf, &mut conn, &mut self.rx, MAX_PACKET_BYTES, now);
            c.inbuf.advance(s.consumed);
            Self::settle(c, &mut self.dirty, idx, s.acked, s.wrote, now);
            if let Some(e) = s.foreign {
                self.err_msg(format!("foreign payload: {e}"));
                continue;
            }
            if s.stop != Stop::Slow {
                return;
            }
            let c = &mut self.clients[idx];
            match decode_packet(&mut c.inbuf, v, MAX_PACKET_BYTES) {
                Ok(None) => return,
                Ok(Some(p)) => self.on_packet(idx, p, now),
                Err(e) => {
                    self.err_msg(format!("malformed packet from broker: {e}"));
                    let c = &mut self.clients[idx];
                    if matches!(c.state, St::AwaitConnAck | St::AwaitSubAck) {
                        self.shared.failed.fetch_add(1, Ordering::AcqRel);
                    }
                    self.submit_close(idx);
                    return;
                }
            }
            if self.clients[idx].state == St::Dead {
                return;
            }
        }
    }

    fn became_ready(&mut self, idx: usize) {
        self.clients[idx].state = St::Ready;
        self.shared.ready.fetch_add(1, Ordering::AcqRel);
        self.shared
            .last_connack_ns
            .fetch_max(now_ns(), Ordering::AcqRel);
        if self.phase >= PHASE_WARMUP && self.phase < PHASE_DRAIN {
            // Late joiner (connect timeout already passed): still publish.
            self.init_publisher(idx, now_ns());
        }
        if self.phase == PHASE_DISCONNECT {
            self.begin_close(idx, true);
        }
    }

    fn on_packet(&mut self, idx: usize, p: Packet, now: u64) {
        let v = self.cfg.protocol;
        let qos = self.cfg.qos;
        match p {
            Packet::ConnAck(ack) => {
                let c = &mut self.clients[idx];
                if c.state != St::AwaitConnAck {
                    self.err_msg("unexpected CONNACK".into());
                    return;
                }
                if ack.code.is_error() {
                    self.err_msg(format!("CONNACK refused: {:?}", ack.code));
                    self.shared.failed.fetch_add(1, Ordering::AcqRel);
                    self.submit_close(idx);
                    return;
                }
                if let Some(rm) = ack.properties.receive_maximum {
                    c.server_receive_max = u32::from(rm);
                }
                let now = now_ns();
                let dt = now.saturating_sub(c.connect_start_ns).max(1);
                let _ = self.result.connect.record(dt);
                self.end_attempt(idx);
                let c = &mut self.clients[idx];
                if let Some(f) = c.spec.subscribe.clone() {
                    c.state = St::AwaitSubAck;
                    let opts = SubscriptionOptions {
                        qos,
                        ..Default::default()
                    };
                    let s = Packet::Subscribe(Subscribe {
                        packet_id: 1,
                        filters: vec![(Bytes::from(f.into_bytes()), opts)].into(),
                        properties: Properties::default(),
                    });
                    encode(&s, v, &mut c.out);
                    self.mark_dirty(idx);
                } else {
                    self.became_ready(idx);
                }
            }
            Packet::SubAck(ack) => {
                if self.clients[idx].state != St::AwaitSubAck {
                    self.err_msg("unexpected SUBACK".into());
                    return;
                }
                if ack.codes.iter().any(|c| c.is_error()) {
                    self.err_msg(format!("SUBACK refused: {:?}", ack.codes));
                    self.shared.failed.fetch_add(1, Ordering::AcqRel);
                    self.submit_close(idx);
                    return;
                }
                self.became_ready(idx);
            }
            Packet::Publish(p) => self.on_publish(idx, p, now),
            Packet::PubAck(_) | Packet::PubComp(_) => {
                let c = &mut self.clients[idx];
                c.inflight = c.inflight.saturating_sub(1);
                if let Some(pb) = c.publ.as_mut() {
                    pb.last_progress_ns = now;
                }
            }
            Packet::PubRec(r) => {
                let c = &mut self.clients[idx];
                encode(&Packet::PubRel(PubResp::new(r.packet_id)), v, &mut c.out);
                self.mark_dirty(idx);
            }
            Packet::PubRel(r) => {
                let c = &mut self.clients[idx];
                encode(&Packet::PubComp(PubResp::new(r.packet_id)), v, &mut c.out);
                self.mark_dirty(idx);
            }
            Packet::Disconnect(d) => {
                self.err_msg(format!("DISCONNECT from broker: {:?}", d.code));
            }
            Packet::PingResp | Packet::UnsubAck(_) => {}
            other => self.err_msg(format!("unexpected {:?} from broker", other.packet_type())),
        }
    }

    fn on_publish(&mut self, idx: usize, p: Publish, now: u64) {
        let v = self.cfg.protocol;
        {
            let c = &mut self.clients[idx];
            match p.qos {
                QoS::AtMostOnce => {}
                // PUBACK, Success, no properties: 4 bytes in every version.
                QoS::AtLeastOnce => {
                    let [hi, lo] = p.packet_id.to_be_bytes();
                    c.out.extend_from_slice(&[0x40, 0x02, hi, lo]);
                }
                QoS::ExactlyOnce => {
                    encode(&Packet::PubRec(PubResp::new(p.packet_id)), v, &mut c.out)
                }
            }
        }
        if p.qos != QoS::AtMostOnce {
            self.mark_dirty(idx);
        }
        let h = match payload::decode(&p.payload) {
            Ok(h) => h,
            Err(e) => {
                self.rx.unexpected += 1;
                self.err_msg(format!("foreign payload: {e}"));
                return;
            }
        };
        let c = &mut self.clients[idx];
        let role = c.spec.role;
        let Delivery::Counted { latency_ns } =
            self.rx.deliver(&mut c.streams, &h, p.payload.len(), now)
        else {
            return;
        };
        match role {
            Role::Controller => {
                let c = &mut self.clients[idx];
                c.cmd_outstanding = c.cmd_outstanding.saturating_sub(1);
                if let Some(pb) = c.publ.as_mut() {
                    pb.last_progress_ns = now;
                }
                if let Some(lat) = latency_ns {
                    let _ = self.result.rtt.record(lat);
                }
            }
            Role::Device(id) if h.kind == KIND_COMMAND => {
                if let Some(lat) = latency_ns {
                    let _ = self.rx.latency.record(lat);
                }
                // Echo unchanged (same stream, seq and timestamp) so the controller
                // measures the whole round trip. Replies are never held back by the window.
                let qos = self.cfg.qos;
                let c = &mut self.clients[idx];
                let pid = if qos == QoS::AtMostOnce {
                    0
                } else {
                    Self::next_pid(c)
                };
                if qos != QoS::AtMostOnce {
                    c.inflight += 1;
                }
                let reply = Publish {
                    dup: false,
                    qos,
                    retain: false,
                    topic: Bytes::from(format!("dev/{id}/reply").into_bytes()),
                    packet_id: pid,
                    properties: PublishProperties::default(),
                    payload: p.payload.clone(),
                };
                encode(&Packet::Publish(reply), v, &mut c.out);
                self.mark_dirty(idx);
            }
            _ => {
                if let Some(lat) = latency_ns {
                    let _ = self.rx.latency.record(lat);
                }
            }
        }
    }

    /// Emits what each publisher may send now: paced by its rate, limited by its window.
    fn generate(&mut self, now: u64) {
        let unpaced = std::mem::take(&mut self.unpaced);
        for &idx in &unpaced {
            self.publish_some(idx, now);
        }
        self.unpaced = unpaced;
        while let Some(&Reverse((due, idx))) = self.paced.peek() {
            if due > now {
                break;
            }
            self.paced.pop();
            self.publish_some(idx, now);
            if let Some(pb) = self.clients[idx].publ.as_ref() {
                // Window-blocked publishers are retried soon; others at their next due time.
                let next = if pb.next_due_ns <= now {
                    now + 50_000
                } else {
                    pb.next_due_ns
                };
                self.paced.push(Reverse((next, idx)));
            }
        }
    }

    /// Messages the window still allows for client `idx` (u32::MAX when open loop).
    fn window_room(&mut self, idx: usize, now: u64) -> u32 {
        if self.cfg.open_loop {
            // Even an open loop must respect MQTT 5 Receive Maximum (the broker would
            // disconnect); falling behind then shows up as latency from the schedule.
            let c = &self.clients[idx];
            if self.cfg.qos != QoS::AtMostOnce && c.server_receive_max != u32::MAX {
                return c.server_receive_max.saturating_sub(c.inflight);
            }
            return u32::MAX;
        }
        let window = self.cfg.window;
        let send_batch = self.cfg.send_batch;
        let qos = self.cfg.qos;
        let c = &mut self.clients[idx];
        if c.spec.role == Role::Controller {
            let out = c.cmd_outstanding;
            let Some(pb) = c.publ.as_mut() else { return 0 };
            if out >= u64::from(window) && now.saturating_sub(pb.last_progress_ns) > STALL_NS {
                // Replies stopped coming back: count them as lost and carry on.
                self.result.qos0_written_off += out;
                c.cmd_outstanding = 0;
                pb.last_progress_ns = now;
            }
            return window.saturating_sub(c.cmd_outstanding.min(u64::from(u32::MAX)) as u32);
        }
        let Some(pb) = c.publ.as_mut() else { return 0 };
        // QoS >= 1: bounded by unacknowledged messages (and the broker's Receive
        // Maximum) *and*, below, by undelivered ones: a PUBACK only says the broker
        // has the message, so without the second bound publishers outrun a slower
        // subscriber and the run measures the broker's queue limits, not its rate.
        let ack_room = if qos != QoS::AtMostOnce {
            window.min(c.server_receive_max).saturating_sub(c.inflight)
        } else {
            u32::MAX
        };
        let stream = pb.stream as usize;
        let mult = u64::from(self.shared.multiplicity[stream].max(1));
        let delivered = self.shared.delivered[stream].load(Ordering::Relaxed);
        if delivered != pb.last_delivered {
            pb.last_delivered = delivered;
            pb.last_progress_ns = now;
        }
        let done = delivered / mult + pb.written_off;
        let mut inflight = pb.seq.saturating_sub(done);
        let room = ack_room.min(window.saturating_sub(inflight.min(u64::from(window)) as u32));
        let refill = crate::batch::refill_at(window, c.server_receive_max, qos, send_batch);
        if inflight > 0 && room < refill && now.saturating_sub(pb.last_progress_ns) > STALL_NS {
            // Deliveries stopped: stop waiting for them. For QoS 0 that is counted
            // here; QoS >= 1 messages that never arrive are counted as lost at the end.
            pb.written_off += inflight;
            if qos == QoS::AtMostOnce {
                self.result.qos0_written_off += inflight;
            }
            pb.last_progress_ns = now;
            inflight = 0;
        }
        let room = ack_room.min(window.saturating_sub(inflight.min(u64::from(window)) as u32));
        crate::batch::gate(room, refill)
    }

    fn publish_some(&mut self, idx: usize, now: u64) {
        if self.clients[idx].state != St::Ready || self.clients[idx].closing {
            return;
        }
        let room = self.window_room(idx, now).min(BURST_MAX);
        let measuring = self.phase == PHASE_MEASURE;
        let qos = self.cfg.qos;
        let size = self.cfg.size;
        let v = self.cfg.protocol;
        let devices = self.devices;
        let c = &mut self.clients[idx];
        let is_controller = c.spec.role == Role::Controller;
        let mut sent = 0u32;
        while sent < room {
            let Some(pb) = c.publ.as_mut() else { return };
            // Paced: the timestamp is the intended send time, so a late loop shows up as
            // latency instead of being hidden (no coordinated omission).
            let ts = if pb.period_ns > 0 {
                if pb.next_due_ns > now {
                    break;
                }
                let t = pb.next_due_ns;
                pb.next_due_ns += pb.period_ns;
                if self.cfg.open_loop {
                    t
                } else {
                    now
                }
            } else {
                now
            };
            if is_controller {
                let dev = c.cmd_next_device;
                c.cmd_next_device = (dev + 1) % devices.max(1);
                let Some(seq_slot) = c.cmd_seq.get_mut(dev as usize) else {
                    return;
                };
                let seq = *seq_slot;
                *seq_slot += 1;
                let stream = devices + dev;
                let body = payload::encode(
                    &Header {
                        kind: KIND_COMMAND,
                        stream,
                        seq,
                        send_ns: ts,
                    },
                    size,
                );
                let pid = if qos == QoS::AtMostOnce {
                    0
                } else {
                    Self::next_pid(c)
                };
                let p = Publish {
                    dup: false,
                    qos,
                    retain: false,
                    topic: Bytes::from(format!("dev/{dev}/cmd").into_bytes()),
                    packet_id: pid,
                    properties: PublishProperties::default(),
                    payload: Bytes::from(body),
                };
                encode(&Packet::Publish(p), v, &mut c.out);
                c.cmd_outstanding += 1;
                if qos != QoS::AtMostOnce {
                    c.inflight += 1;
                }
                self.shared.sent[stream as usize].store(seq + 1, Ordering::Release);
            } else {
                let seq = pb.seq;
                pb.seq += 1;
                let pid = if qos != QoS::AtMostOnce {
                    c.inflight += 1;
                    Some(Self::next_pid(c))
                } else {
                    None
                };
                let Some(pb) = c.publ.as_ref() else { return };
                crate::tx::append(&mut c.out, &pb.template, pid, seq, ts);
            }
            sent += 1;
        }
        if let (Some(pb), false) = (c.publ.as_ref(), is_controller || sent == 0) {
            // Once per burst, not per message: only the drain and the report read it.
            self.shared.sent[pb.stream as usize].store(pb.seq, Ordering::Release);
        }
        if sent > 0 {
            if measuring {
                self.result.sent_measure += u64::from(sent);
            }
            self.mark_dirty(idx);
        }
    }
}
