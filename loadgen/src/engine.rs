//! One worker thread: one io_uring with a sparse registered file table holding its
//! clients' sockets as direct descriptors (no process fds), one provided-buffer ring
//! for multishot receives, and a bounded completion loop.
//!
//! This file owns the thread's state, its phases, waiting and reaping completions, and
//! closes. Beside it: `connect` (the connect chain), `send` (output), `input`
//! (receives and packets), `publish` (pacing and windows), `bufring` (provided buffers).

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

mod bufring;
mod connect;
mod input;
mod publish;
mod send;
mod teardown;

use bufring::BufRing;
use teardown::EofWaits;

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
    /// CONNACKs with Session Present set (a storm's reconnect resumed the session).
    pub session_present: AtomicU64,
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
            session_present: AtomicU64::new(0),
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
    /// ns the thread had waited on a run queue (runnable, not running) when it saw each
    /// phase begin; `None` where the kernel does not say (no /proc schedstat).
    pub runq_wait_at_phase_ns: [Option<u64>; PHASES],
    pub unclean_close: u64,
    /// Clients loadgen closed itself after DISCONNECT because the broker had not
    /// closed them when the teardown stalled (see `engine/teardown.rs`).
    pub closed_before_broker: u64,
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

/// ns this thread has spent runnable but not running (waiting for a CPU other
/// processes held): the second field of /proc/thread-self/schedstat. Read at phase
/// changes only. A run whose threads waited long was bounded by the machine's load,
/// which neither loadgen's CPU nor the broker's shows.
pub fn thread_runq_wait_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().nth(1)?.parse().ok()
}

/// Puts the calling thread under SCHED_FIFO at `priority` (1..99).
pub fn set_fifo(priority: u8) -> std::io::Result<()> {
    set_policy(libc::SCHED_FIFO, i32::from(priority))
}

/// Puts the calling thread back under normal scheduling.
pub fn set_normal() -> std::io::Result<()> {
    set_policy(libc::SCHED_OTHER, 0)
}

fn set_policy(policy: libc::c_int, priority: i32) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is the
    // calling thread.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
const OP_LINGER: u64 = 11;

/// The close phase gives up when nothing completed for `CLOSE_GRACE_NS`, counted from
/// the later of the DISCONNECT phase's start and the last completion reaped.
fn close_grace_over(now: u64, disconnect_ns: u64, last_completion_ns: u64) -> bool {
    now.saturating_sub(disconnect_ns.max(last_completion_ns)) > CLOSE_GRACE_NS
}

fn ud(op: u64, idx: usize) -> u64 {
    (op << 32) | idx as u64
}

static ONE: libc::c_int = 1;
const BGID: u16 = 0;

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
    /// A DISCONNECT was encoded: once it is sent the broker is expected to close.
    disconnect_queued: bool,
    /// DISCONNECT sent, waiting for the broker's end of stream (`engine/teardown.rs`).
    awaiting_eof: bool,
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
    eof_waits: EofWaits,
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
    /// The ring was built disabled (single issuer, deferred task running): the thread
    /// that runs it enables it first and so becomes its only submitter.
    disabled: bool,
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
        // Deferred task running (6.1+): a receive's completion work waits on the ring
        // until this thread asks for it (an enter with GETEVENTS), so it never runs on
        // some other kernel exit in the middle of a paced send, and an arrival wakes a
        // sleeping thread only once the wait's count is met. It needs a single issuer,
        // which is whatever thread enables the ring: built disabled here, enabled by
        // the worker thread in `run`. Before 6.1, cooperative task running (5.19+):
        // completions wait for this thread's next kernel entry instead of interrupting
        // it (an IPI per burst). Both leave IORING_SQ_TASKRUN for the spin below to
        // watch. Older kernels reject the flags: plain ring then.
        let deferred = IoUring::builder()
            .setup_cqsize(entries * 8)
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_r_disabled()
            .build(entries);
        let (ring, disabled) = match deferred {
            Ok(r) => (Ok(r), true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let r = match IoUring::builder()
                    .setup_cqsize(entries * 8)
                    .setup_coop_taskrun()
                    .setup_taskrun_flag()
                    .build(entries)
                {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        IoUring::builder().setup_cqsize(entries * 8).build(entries)
                    }
                    r => r,
                };
                (r, false)
            }
            Err(e) => (Err(e), false),
        };
        let ring = ring.map_err(|e| setup_err("io_uring_setup", e))?;
        ring.submitter()
            .register_files_sparse(n.max(1) as u32)
            .map_err(|e| setup_err(&format!("io_uring_register(FILES_SPARSE, {n} files)"), e))?;
        let (count, size) = if cfg.scenario.is_connect_storm() {
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
                    disconnect_queued: false,
                    awaiting_eof: false,
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
            eof_waits: EofWaits::default(),
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
            disabled,
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
                runq_wait_at_phase_ns: [None; PHASES],
                unclean_close: 0,
                closed_before_broker: 0,
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
        if self.disabled {
            if let Err(e) = self.ring.submitter().register_enable_rings() {
                // Nothing can be submitted: every client of this thread fails to connect.
                self.err(
                    "io_uring_register(ENABLE_RINGS)",
                    e.raw_os_error().unwrap_or(0),
                );
                return self.result;
            }
            self.disabled = false;
        }
        self.result.cpu_at_phase_ns[0] = thread_cpu_ns();
        self.result.runq_wait_at_phase_ns[0] = thread_runq_wait_ns();
        self.connect_t0_ns = now_ns();
        loop {
            let phase = self.shared.phase.load(Ordering::Acquire);
            let now = now_ns();
            while self.phase < phase {
                self.phase += 1;
                let p = usize::from(self.phase);
                self.result.cpu_at_phase_ns[p] = thread_cpu_ns().saturating_sub(self.spun_ns);
                self.result.spin_at_phase_ns[p] = self.spun_ns;
                self.result.runq_wait_at_phase_ns[p] = thread_runq_wait_ns();
                self.enter_phase(now);
            }
            if self.phase == PHASE_CONNECT || self.phase < PHASE_DISCONNECT {
                self.start_connects(now);
            }
            if self.phase == PHASE_WARMUP || self.phase == PHASE_MEASURE {
                self.generate(now);
            }
            self.flush();
            if self.phase == PHASE_DISCONNECT && self.open == 0 {
                break;
            }
            let wait_ns = self.wait_ns(now);
            self.wait(now, wait_ns);
            self.reap();
            if !self.eof_waits.is_empty() {
                self.expire_eof_waits(now_ns());
            }
            // Checked after reaping, never right after a flush: a flush of 16k
            // DISCONNECTs on a loaded machine can itself outlast the grace period.
            if self.phase == PHASE_DISCONNECT
                && close_grace_over(now_ns(), self.disconnect_ns, self.last_close_ns)
            {
                self.result.unclean_close = self.open as u64;
                break;
            }
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
                    c.disconnect_queued = true;
                }
                c.closing = true;
                self.mark_dirty(idx);
            }
        }
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
                OP_CANCEL | OP_LINGER => {}
                OP_CLOSE => {
                    self.open = self.open.saturating_sub(1);
                }
                _ => {}
            }
        }
        if !cqes.is_empty() {
            // Any completion is progress for the close grace period, stamped when they
            // were handled: handling 16k sends' completions submits 16k closes, each
            // running the broker socket's FIN in this thread, which on a loaded machine
            // outlasted the grace period and wrote the thread's connections off.
            self.last_close_ns = now_ns();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_grace_counts_from_the_last_completion() {
        let start = 1_000;
        assert!(!close_grace_over(start + CLOSE_GRACE_NS, start, 0));
        assert!(close_grace_over(start + CLOSE_GRACE_NS + 1, start, 0));
        // A completion after the start moves the deadline.
        let last = start + 4 * CLOSE_GRACE_NS;
        assert!(!close_grace_over(last + CLOSE_GRACE_NS, start, last));
        assert!(close_grace_over(last + CLOSE_GRACE_NS + 1, start, last));
        // A completion stamped before the phase (or none: 0) does not extend it.
        assert!(close_grace_over(
            start + CLOSE_GRACE_NS + 1,
            start,
            start - 1
        ));
    }

    #[test]
    fn run_queue_wait_is_read_and_never_goes_back() {
        // Linux has said this since 2.6 (CONFIG_SCHED_INFO): a kernel without it makes
        // `runq_wait_pct` null, which this machine must not.
        let a = thread_runq_wait_ns().expect("/proc/thread-self/schedstat is readable");
        std::thread::yield_now();
        let b = thread_runq_wait_ns().expect("still readable");
        assert!(b >= a, "{a} then {b}");
    }
}
