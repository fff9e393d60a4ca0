//! Per-core event loop: reap IO completions, drive the shard, submit output, drain rings.
//!
//! One thread per shard. Each turn: read the clock once; dispatch the completions the
//! last `turn` copied out; drain a bounded batch of mesh messages; run due timers; drain
//! the shard's actions (one send in flight per connection, gathering everything the
//! shard encoded); flush the mesh and ring doorbells; then hand everything to the IO
//! backend in one `turn`, which blocks only when the mesh agreed to park.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::io::{Completion, EventLoop, IoStats, LoopOptions, Remote, SockId, Transfer};
use crate::ring::{Endpoint, SendError, SendOutcome, WakeSet};
use crate::shard::{Action, ConnId, Handoff, Shard, ShardMsg};

/// What travels over the mesh between workers.
#[derive(Debug)]
pub enum WorkerMsg {
    Shard(ShardMsg),
    /// A connection handed over after CONNECT; `transfer` names its socket, which the
    /// IO layer moves separately (MSG_RING fd passing, or the raw fd for epoll).
    Adopt {
        /// Boxed so a mesh ring slot is no larger than `ShardMsg` (see `Action::Migrate`).
        handoff: Box<Handoff>,
        transfer: Transfer,
    },
}

/// Mesh messages handled per turn, so inbound traffic cannot starve local IO.
const MESH_BATCH: usize = 1024;
/// Shard actions handled per turn before IO gets its turn again.
const ACTION_BATCH: usize = 65_536;
/// How long a connection the shard closed may take to take its last bytes before it
/// is closed anyway (a peer that stopped reading must not hold a socket forever).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Most per-connection entries reserved up front per worker.
const PRESIZE_MAX: usize = 1 << 20;
/// `by_sock` entry of a socket with no connection.
const NO_CONN: u32 = u32::MAX;
/// Capacity the hand-off tables may keep while empty (see `shrink_handoff_tables`).
const HANDOFF_TABLE_KEPT: usize = 64;
/// After shutdown starts: how long clients get to receive their DISCONNECT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Then: how long the forced closes may take before the loop gives up.
const SHUTDOWN_HARD: Duration = Duration::from_secs(2);

/// Adaptive busy-poll window: how long a loop that just went idle spins on its
/// completion queues and mesh before it blocks. KVM's halt-polling policy: an idle gap
/// the cap would have covered grows the window (doubling from `BUSY_POLL_START_NS`),
/// a longer one halves it, down to zero. A steady stream of events keeps the loop
/// spinning between them (no wake-up latency); an idle fleet, whose rare events are
/// far apart, costs a few halving spins and then none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BusyPoll {
    max_ns: u64,
    window_ns: u64,
}

/// First window after an idle gap the cap covers (or the cap, if smaller).
const BUSY_POLL_START_NS: u64 = 10_000;

impl BusyPoll {
    fn new(max_us: u32) -> BusyPoll {
        BusyPoll {
            max_ns: u64::from(max_us) * 1000,
            window_ns: 0,
        }
    }

    fn window(&self) -> Duration {
        Duration::from_nanos(self.window_ns)
    }

    /// Learns from one idle gap: from going idle to the next turn with work (found by
    /// the spin or after blocking).
    fn observe(&mut self, idle: Duration) {
        let idle_ns = u64::try_from(idle.as_nanos()).unwrap_or(u64::MAX);
        if idle_ns <= self.max_ns {
            self.window_ns = self
                .window_ns
                .saturating_mul(2)
                .max(BUSY_POLL_START_NS)
                .min(self.max_ns);
        } else {
            self.window_ns /= 2;
            if self.window_ns < BUSY_POLL_START_NS.min(self.max_ns) {
                self.window_ns = 0;
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The shard asked to close: flush what is pending, then close.
    Draining,
    /// `close` was issued; waiting for `Released`.
    Closing,
    /// `migrate` was issued; waiting for `Migrated` and `Released`.
    Migrating,
}

#[derive(Debug)]
struct ConnIo {
    sock: SockId,
    state: State,
    sending: bool,
}

/// Counters of one worker, logged at exit.
#[derive(Debug, Default, Clone)]
pub struct WorkerReport {
    pub shard: usize,
    pub io: IoStats,
    pub mesh_rejected: u64,
    pub migrations_out: u64,
    pub migrations_failed: u64,
    pub handoffs_in: u64,
    /// Hand-offs whose socket never came within `adopt_pair_timeout_ms` (it was closed
    /// unpaired before its hand-off arrived, or adopting it failed): dropped.
    pub handoffs_expired: u64,
    /// Connections still open when the shutdown deadline passed.
    pub forced_closes: u64,
    /// Connections closed because their last bytes were not taken within `DRAIN_TIMEOUT`.
    pub drain_timeouts: u64,
    /// The shard core's counters (every drop and refusal) at exit.
    pub core: crate::shard::ShardStats,
}

/// Everything a worker thread needs; built by `main`.
pub struct WorkerSetup {
    pub id: usize,
    pub config: Arc<Config>,
    pub endpoint: Endpoint<WorkerMsg>,
    pub listeners: Vec<TcpListener>,
    pub loop_options: LoopOptions,
    /// CPU to pin this thread to, when there are at least as many CPUs as shards.
    pub pin_cpu: Option<usize>,
    pub shutdown: Arc<AtomicBool>,
    /// Rendezvous: every worker sends its loop's `Remote` and receives all of them.
    pub remote_tx: mpsc::Sender<(usize, Arc<Remote>)>,
    pub peers_rx: mpsc::Receiver<Vec<Arc<Remote>>>,
    /// Reached by every worker after its loop ends and before its rings close, so no
    /// loop sends a doorbell or descriptor to a ring that is gone.
    pub exit_barrier: Arc<Barrier>,
    /// Connection counters shared by all shards, so `max_connections` and
    /// `max_connections_per_ip` hold per node.
    pub node: Arc<crate::shard::NodeCounters>,
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays in bounds for
    // cpu < CPU_SETSIZE (checked); sched_setaffinity(0) applies to this thread.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Puts the calling thread under SCHED_FIFO at `priority` (1..=99).
pub fn set_realtime(priority: u8) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is the
    // calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills the zeroed set we pass; CPU_ISSET reads in bounds.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

struct Worker<L: EventLoop> {
    id: usize,
    io: L,
    shard: Shard,
    mesh: Endpoint<WorkerMsg>,
    /// Indexed by `ConnId`.
    conns: Vec<Option<ConnIo>>,
    /// Indexed by `SockId`: the connection using it, `NO_CONN` for none (4 bytes a
    /// socket rather than 16 for an `Option<usize>`: this exists per connection).
    by_sock: Vec<u32>,
    live: usize,
    /// Handoffs whose socket has not arrived yet (io_uring: the MSG_RING completion
    /// and the mesh message race).
    waiting_handoffs: WaitingHandoffs,
    /// Handoffs of connections being migrated out, until `Migrated`.
    outgoing: HashMap<SockId, (usize, Box<Handoff>)>,
    wake: WakeSet,
    /// Connections draining before close, by deadline (FIFO: one fixed timeout). At
    /// most one entry per connection.
    draining: VecDeque<(Instant, ConnId, SockId)>,
    report: WorkerReport,
    shutting_down: bool,
    busy_poll: BusyPoll,
}

/// Runs one shard's loop until shutdown has closed every connection.
pub fn run<L: EventLoop>(
    setup: WorkerSetup,
    make_loop: impl FnOnce(usize, &LoopOptions) -> io::Result<L>,
) -> io::Result<WorkerReport> {
    let WorkerSetup {
        id,
        config,
        endpoint,
        listeners,
        loop_options,
        pin_cpu,
        shutdown,
        remote_tx,
        peers_rx,
        exit_barrier,
        node,
    } = setup;
    if let Some(cpu) = pin_cpu {
        if let Err(e) = pin_to_cpu(cpu) {
            tracing::warn!(shard = id, cpu, "pinning failed: {e}");
        }
    }
    if config.rt_priority > 0 {
        if let Err(e) = set_realtime(config.rt_priority) {
            // Asked for and not granted: running on silently would hide why the
            // latency tail is back.
            drop(remote_tx);
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "rt_priority {}: SCHED_FIFO refused ({e}); it needs CAP_SYS_NICE or \
                     an RLIMIT_RTPRIO of at least {0}",
                    config.rt_priority
                ),
            ));
        }
        tracing::info!(
            shard = id,
            priority = config.rt_priority,
            "loop runs under SCHED_FIFO"
        );
    }
    let io = match make_loop(id, &loop_options) {
        Ok(io) => io,
        Err(e) => {
            // Others wait for our remote; dropping the sender lets them see the failure.
            drop(remote_tx);
            return Err(e);
        }
    };
    let _ = remote_tx.send((id, io.remote()));
    drop(remote_tx);
    let peers = peers_rx
        .recv()
        .map_err(|_| io::Error::other("another worker failed to start"))?;
    let busy_poll = BusyPoll::new(config.busy_poll_us);
    let shard = Shard::in_node(id, peers.len(), config, node);
    let presize = loop_options.max_connections.min(PRESIZE_MAX);
    let mut w = Worker {
        id,
        io,
        shard,
        mesh: endpoint,
        conns: Vec::with_capacity(presize),
        // Sized up front (address space only until used): growing by doubling would
        // copy, and leave the old block with the allocator, at every power of two.
        by_sock: Vec::with_capacity(presize),
        live: 0,
        waiting_handoffs: WaitingHandoffs::new(Duration::from_millis(
            loop_options.adopt_pair_timeout_ms,
        )),
        outgoing: HashMap::new(),
        wake: WakeSet::default(),
        draining: VecDeque::new(),
        report: WorkerReport {
            shard: id,
            ..Default::default()
        },
        shutting_down: false,
        busy_poll,
    };
    w.io.set_peers(peers.clone());
    let mut result = Ok(());
    for l in listeners {
        if let Err(e) = w.io.add_listener(l) {
            result = Err(e);
        }
    }
    if result.is_ok() {
        result = w.run_loop(&shutdown);
    }
    if result.is_err() {
        // One loop failing stops them all; they meet at the barrier below.
        shutdown.store(true, Ordering::SeqCst);
        for p in &peers {
            p.wake();
        }
    }
    w.report.io = w.io.stats();
    w.report.core = w.shard.stats().clone();
    // Keep this loop's rings alive until every loop stopped sending to them.
    exit_barrier.wait();
    result.map(|()| w.report)
}

impl<L: EventLoop> Worker<L> {
    fn run_loop(&mut self, shutdown: &AtomicBool) -> io::Result<()> {
        let mut completions: Vec<Completion> = Vec::with_capacity(1024);
        let mut hard_deadline: Option<Instant> = None;
        let mut grace_deadline: Option<Instant> = None;
        // When the loop last went idle (about to spin or block), until work arrives.
        let mut idle_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if let Some(t) = idle_since {
                // Only events from outside end an idle gap: the completion of our own
                // send follows it within microseconds and says nothing about traffic.
                let outside = completions.iter().any(|c| {
                    !matches!(c, Completion::SendDone { .. } | Completion::Released { .. })
                });
                if outside || self.mesh.has_inbound() {
                    self.busy_poll.observe(now.saturating_duration_since(t));
                    idle_since = None;
                }
            }
            for c in completions.drain(..) {
                Self::dispatch(
                    &mut self.io,
                    &mut self.shard,
                    &mut self.conns,
                    &mut self.by_sock,
                    &mut self.live,
                    &mut self.waiting_handoffs,
                    &mut self.outgoing,
                    &mut self.mesh,
                    &mut self.wake,
                    &mut self.report,
                    self.shutting_down,
                    c,
                    now,
                );
            }
            self.drain_mesh(now);
            self.expire_handoffs(now);
            if self.shard.next_deadline().is_some_and(|d| d <= now) {
                self.shard.on_timer(now);
            }
            if shutdown.load(Ordering::Relaxed) && !self.shutting_down {
                tracing::debug!(shard = self.id, connections = self.live, "shutting down");
                self.shutting_down = true;
                self.io.stop_accepting();
                self.shard.shutdown(now);
                grace_deadline = Some(now + SHUTDOWN_GRACE);
            }
            let more_actions = self.drain_actions(now);
            Self::send_control(self.id, &mut self.shard, &mut self.mesh, &mut self.wake);
            self.expire_drains(now);
            for to in self.mesh.flush().iter() {
                self.wake.insert(to);
            }
            for to in self.wake.iter() {
                self.io.doorbell(to);
            }
            self.wake = WakeSet::default();

            if self.shutting_down {
                if grace_deadline.is_some_and(|d| now >= d) {
                    grace_deadline = None;
                    hard_deadline = Some(now + SHUTDOWN_HARD);
                    self.force_close_all();
                }
                let idle = self.live == 0 && self.outgoing.is_empty() && !self.mesh.has_overflow();
                if idle || hard_deadline.is_some_and(|d| now >= d) {
                    // One last submit so closes and final sends reach the kernel.
                    self.io.turn(Some(Duration::ZERO), &mut completions)?;
                    return Ok(());
                }
            }

            let next = [
                self.shard.next_deadline(),
                self.draining.front().map(|&(d, _, _)| d),
                self.waiting_handoffs.next_deadline(),
            ]
            .into_iter()
            .flatten()
            .min();
            let mut timeout = next.map(|d| d.saturating_duration_since(now));
            if self.shutting_down {
                // Wake at least every 50 ms to check the shutdown deadlines.
                timeout = Some(timeout.map_or(Duration::from_millis(50), |t| {
                    t.min(Duration::from_millis(50))
                }));
            } else if shutdown.load(Ordering::Relaxed) {
                timeout = Some(Duration::ZERO);
            }
            let would_block = !more_actions && timeout != Some(Duration::ZERO);
            if would_block {
                self.shrink_handoff_tables();
                let idle_start = *idle_since.get_or_insert(now);
                let spin = self.busy_poll.window();
                if !spin.is_zero() {
                    let spin_end = idle_start + timeout.map_or(spin, |t| t.min(spin));
                    if self.spin(spin_end, &mut completions)? {
                        continue;
                    }
                    // Nothing came: block for what is left of the timeout.
                    let spent = Instant::now().saturating_duration_since(now);
                    timeout = timeout.map(|t| t.saturating_sub(spent));
                }
            }
            // Own messages waiting for room in a peer's ring: nobody would wake us to
            // retry, so we may not park, but a peer that is merely slow must not cost
            // a core spinning either.
            let backed_up = self.mesh.has_overflow() || self.shard.control_waiting();
            let parked = !more_actions && !backed_up && self.mesh.prepare_park();
            if !parked {
                let work = more_actions || self.mesh.has_inbound();
                timeout = Some(unparked_timeout(work, backed_up, timeout));
            }
            let r = self.io.turn(timeout, &mut completions);
            if parked {
                self.mesh.unpark();
            }
            r?;
        }
    }

    /// Busy-polls until `until`: submits this turn's output, then watches the
    /// completion queues (a turn only when the backend says one may find something)
    /// and the mesh. `true`: something arrived (completions are in `completions`, or
    /// the mesh has messages), so the loop must not block.
    fn spin(&mut self, until: Instant, completions: &mut Vec<Completion>) -> io::Result<bool> {
        self.io.turn(Some(Duration::ZERO), completions)?;
        loop {
            if !completions.is_empty() || self.mesh.has_inbound() {
                return Ok(true);
            }
            if Instant::now() >= until {
                return Ok(false);
            }
            std::hint::spin_loop();
            if self.io.poll_ready() {
                self.io.turn(Some(Duration::ZERO), completions)?;
            }
        }
    }

    fn drain_mesh(&mut self, now: Instant) {
        let Worker {
            io,
            shard,
            conns,
            by_sock,
            live,
            waiting_handoffs,
            mesh,
            report,
            shutting_down,
            ..
        } = self;
        mesh.recv_batch(MESH_BATCH, |from, msg| match msg {
            WorkerMsg::Shard(m) => shard.on_message(from, m, now),
            WorkerMsg::Adopt { handoff, transfer } => {
                report.handoffs_in += 1;
                tracing::debug!(shard = shard.id(), from, ?transfer, "handoff received");
                match io.adopt(transfer) {
                    Some(sock) if *shutting_down => io.close(sock),
                    Some(sock) => {
                        Self::adopt_conn(io, shard, conns, by_sock, live, sock, *handoff, now)
                    }
                    None => waiting_handoffs.insert(transfer, handoff, now),
                }
            }
        });
    }

    /// A connect storm grows the hand-off tables to the number of hand-offs in flight;
    /// once they are empty again, a loop about to block gives that memory back.
    fn shrink_handoff_tables(&mut self) {
        shrink_emptied(&mut self.outgoing);
        self.waiting_handoffs.shrink();
    }

    #[allow(clippy::too_many_arguments)]
    fn adopt_conn(
        io: &mut L,
        shard: &mut Shard,
        conns: &mut Vec<Option<ConnIo>>,
        by_sock: &mut Vec<u32>,
        live: &mut usize,
        sock: SockId,
        handoff: Handoff,
        now: Instant,
    ) {
        let conn = shard.adopt(handoff, now);
        Self::map(conns, by_sock, live, conn, sock);
        io.start_recv(sock);
    }

    fn map(
        conns: &mut Vec<Option<ConnIo>>,
        by_sock: &mut Vec<u32>,
        live: &mut usize,
        conn: ConnId,
        sock: SockId,
    ) {
        if conns.len() <= conn {
            conns.resize_with(conn + 1, || None);
        }
        let s = sock as usize;
        if by_sock.len() <= s {
            by_sock.resize(s + 1, NO_CONN);
        }
        debug_assert!(conns[conn].is_none(), "conn id reused before release");
        debug_assert!(
            by_sock[s] == NO_CONN,
            "socket id reported again before its release"
        );
        conns[conn] = Some(ConnIo {
            sock,
            state: State::Open,
            sending: false,
        });
        // A shard never holds 2^32 connections; `NO_CONN` would only lose the mapping.
        by_sock[s] = u32::try_from(conn).unwrap_or(NO_CONN);
        *live += 1;
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        io: &mut L,
        shard: &mut Shard,
        conns: &mut Vec<Option<ConnIo>>,
        by_sock: &mut Vec<u32>,
        live: &mut usize,
        waiting_handoffs: &mut WaitingHandoffs,
        outgoing: &mut HashMap<SockId, (usize, Box<Handoff>)>,
        mesh: &mut Endpoint<WorkerMsg>,
        wake: &mut WakeSet,
        report: &mut WorkerReport,
        shutting_down: bool,
        c: Completion,
        now: Instant,
    ) {
        let conn_of = |by_sock: &Vec<u32>, sock: SockId| {
            by_sock
                .get(sock as usize)
                .copied()
                .filter(|&c| c != NO_CONN)
                .map(|c| c as ConnId)
        };
        match c {
            Completion::Accepted { sock, peer } => {
                if shutting_down {
                    io.close(sock);
                    return;
                }
                let conn = shard.accept(peer, now);
                Self::map(conns, by_sock, live, conn, sock);
                io.start_recv(sock);
            }
            Completion::Adopted { transfer, sock } => match waiting_handoffs.take(transfer) {
                Some(_) if shutting_down => io.close(sock),
                Some(handoff) => {
                    Self::adopt_conn(io, shard, conns, by_sock, live, sock, *handoff, now)
                }
                None => {
                    tracing::warn!(shard = shard.id(), "socket arrived without its handoff");
                    io.close(sock);
                }
            },
            Completion::Recv { sock, buf } => {
                if let Some(conn) = conn_of(by_sock, sock) {
                    let state = conns.get(conn).and_then(|c| c.as_ref()).map(|c| c.state);
                    match state {
                        Some(State::Open) => shard.on_read(conn, io.buf(buf), now),
                        Some(State::Migrating) => {
                            // Bytes that arrived after the shard decided to migrate
                            // travel with the connection.
                            if let Some((_, handoff)) = outgoing.get_mut(&sock) {
                                handoff.rx.extend_from_slice(io.buf(buf));
                            }
                        }
                        _ => {}
                    }
                }
                io.recycle(buf);
            }
            Completion::RecvEnd { sock, errno } => {
                let Some(conn) = conn_of(by_sock, sock) else {
                    return;
                };
                let Some(Some(c)) = conns.get_mut(conn) else {
                    return;
                };
                if matches!(c.state, State::Open | State::Draining) {
                    if errno != 0 {
                        tracing::debug!(shard = shard.id(), conn, errno, "receive failed");
                    }
                    if c.state == State::Open {
                        shard.on_closed(conn, now);
                    }
                    c.state = State::Closing;
                    io.close(sock);
                }
            }
            Completion::SendDone { sock, errno } => {
                let Some(conn) = conn_of(by_sock, sock) else {
                    return;
                };
                let Some(Some(c)) = conns.get_mut(conn) else {
                    return;
                };
                c.sending = false;
                match (c.state, errno) {
                    (State::Open, 0) | (State::Draining, 0) => {
                        if let Some(data) = shard.take_tx(conn) {
                            c.sending = true;
                            io.send(sock, data);
                        } else if c.state == State::Draining {
                            c.state = State::Closing;
                            io.close(sock);
                        }
                    }
                    (State::Open, e) | (State::Draining, e) => {
                        tracing::debug!(shard = shard.id(), conn, errno = e, "send failed");
                        if c.state == State::Open {
                            shard.on_closed(conn, now);
                        }
                        c.state = State::Closing;
                        io.close(sock);
                    }
                    _ => {}
                }
            }
            Completion::Migrated { sock, result } => {
                let Some((to, handoff)) = outgoing.remove(&sock) else {
                    return;
                };
                tracing::debug!(shard = shard.id(), sock, to, ?result, "migrated");
                match result {
                    Ok(transfer) => {
                        report.migrations_out += 1;
                        // `Action::Migrate` reserved this place: a mesh that filled up
                        // since cannot refuse the hand-off of a socket already sent.
                        match mesh.send_reserved(to, WorkerMsg::Adopt { handoff, transfer }) {
                            Ok(SendOutcome::QueuedWake) => wake.insert(to),
                            Ok(_) => {}
                            Err(e) => {
                                // Only a shard that is not in the mesh gets here. The
                                // socket already left us with no handoff to pair it
                                // with: io_uring's target closes it after a bound, epoll's
                                // fd is closed here.
                                report.mesh_rejected += 1;
                                report.migrations_failed += 1;
                                tracing::error!(
                                    shard = shard.id(),
                                    to,
                                    "handoff to a shard outside the mesh dropped"
                                );
                                if let WorkerMsg::Adopt { transfer, .. } = e.into_inner() {
                                    io.discard(transfer);
                                }
                            }
                        }
                    }
                    Err(errno) => {
                        mesh.unreserve(to);
                        // The socket is still ours (ENFILE: every table of the target
                        // loop is full): the shard refuses the CONNECT (Server busy)
                        // and closes; the client reconnects.
                        report.migrations_failed += 1;
                        if report.migrations_failed.is_power_of_two() {
                            tracing::warn!(
                                shard = shard.id(),
                                to,
                                errno,
                                failed = report.migrations_failed,
                                "socket handoff refused: connection refused as busy"
                            );
                        }
                        if let Some(conn) = conn_of(by_sock, sock) {
                            if let Some(Some(c)) = conns.get_mut(conn) {
                                c.state = State::Open;
                            }
                            shard.on_migrate_refused(conn, now);
                        }
                    }
                }
            }
            Completion::Released { sock } => {
                let Some(conn) = conn_of(by_sock, sock) else {
                    return;
                };
                by_sock[sock as usize] = NO_CONN;
                if let Some(slot) = conns.get_mut(conn) {
                    *slot = None;
                }
                *live = live.saturating_sub(1);
                shard.release(conn);
            }
        }
    }

    /// Drains the shard's actions. Returns true when the batch bound stopped it.
    fn drain_actions(&mut self, now: Instant) -> bool {
        for _ in 0..ACTION_BATCH {
            let Some(action) = self.shard.poll_action() else {
                return false;
            };
            match action {
                Action::Flush(conn) => {
                    let Some(Some(c)) = self.conns.get_mut(conn) else {
                        continue;
                    };
                    if c.sending || !matches!(c.state, State::Open | State::Draining) {
                        continue;
                    }
                    if let Some(data) = self.shard.take_tx(conn) {
                        c.sending = true;
                        self.io.send(c.sock, data);
                    }
                }
                Action::Close(conn) => {
                    let Some(Some(c)) = self.conns.get_mut(conn) else {
                        continue;
                    };
                    if c.state != State::Open {
                        continue;
                    }
                    c.state = State::Draining;
                    if !c.sending {
                        if let Some(data) = self.shard.take_tx(conn) {
                            c.sending = true;
                            self.io.send(c.sock, data);
                        } else {
                            c.state = State::Closing;
                            self.io.close(c.sock);
                        }
                    }
                    if c.state == State::Draining {
                        self.draining.push_back((now + DRAIN_TIMEOUT, conn, c.sock));
                    }
                }
                Action::Migrate { conn, to, handoff } => {
                    let Some(Some(c)) = self.conns.get_mut(conn) else {
                        continue;
                    };
                    if c.state != State::Open || self.shutting_down {
                        if c.state == State::Open {
                            c.state = State::Closing;
                            self.io.close(c.sock);
                        }
                        continue;
                    }
                    if !self.mesh.reserve(to) {
                        // The hand-off could not follow the socket: refuse now, while
                        // the socket is still ours (the shard answers and closes).
                        // The reservation holds a place for it until `Migrated`.
                        self.report.migrations_failed += 1;
                        self.shard.on_migrate_refused(conn, now);
                        continue;
                    }
                    c.state = State::Migrating;
                    tracing::debug!(shard = self.id, conn, sock = c.sock, to, "migrating");
                    self.outgoing.insert(c.sock, (to, handoff));
                    self.io.migrate(c.sock, to);
                }
                Action::Send { to, msg } => match self.mesh.send(to, WorkerMsg::Shard(msg)) {
                    Ok(SendOutcome::QueuedWake) => self.wake.insert(to),
                    Ok(SendOutcome::Queued) | Ok(SendOutcome::Overflowed) => {}
                    Err(SendError::Rejected(_)) => {
                        self.report.mesh_rejected += 1;
                        if self.report.mesh_rejected.is_power_of_two() {
                            tracing::warn!(
                                shard = self.id,
                                to,
                                rejected = self.report.mesh_rejected,
                                "mesh full: message dropped"
                            );
                        }
                    }
                    Err(SendError::NoSuchShard(_)) => {
                        tracing::error!(shard = self.id, to, "message to unknown shard dropped");
                    }
                },
            }
        }
        true
    }

    /// Hands the shard's control messages (route updates, route acks) to the mesh
    /// while it has room for them; the rest wait in the shard for a later turn, never
    /// dropped (see `shard::route::ControlOutbox`).
    fn send_control(
        id: usize,
        shard: &mut Shard,
        mesh: &mut Endpoint<WorkerMsg>,
        wake: &mut WakeSet,
    ) {
        if !shard.control_waiting() {
            return;
        }
        for to in (0..mesh.shard_count()).filter(|&to| to != id) {
            // `is_full` stays false until our next send: the send below cannot fail.
            while !mesh.is_full(to) {
                let Some(msg) = shard.poll_control(to) else {
                    break;
                };
                match mesh.send(to, WorkerMsg::Shard(msg)) {
                    Ok(SendOutcome::QueuedWake) => wake.insert(to),
                    Ok(_) => {}
                    Err(_) => {
                        tracing::error!(shard = id, to, "control message refused with room");
                        break;
                    }
                }
            }
        }
    }

    /// Drops hand-offs whose socket did not come in time, and the loop's claims on
    /// them. The usual cause: the hand-off arrived after the loop had already closed
    /// the socket as unpaired (`adopt_pair_timeout_ms`), so it never will; without
    /// this the hand-off (with its buffered bytes) and the claim stayed forever.
    /// There is nothing to close: the socket is gone, its client saw the close, and
    /// the shard never saw the connection.
    fn expire_handoffs(&mut self, now: Instant) {
        let Worker {
            id,
            io,
            waiting_handoffs,
            report,
            ..
        } = self;
        waiting_handoffs.expire(now, |transfer, handoff| {
            io.forget(transfer);
            report.handoffs_expired += 1;
            tracing::warn!(
                shard = *id,
                ?transfer,
                peer = %handoff.peer,
                expired = report.handoffs_expired,
                "hand-off whose socket never came: dropped"
            );
        });
    }

    /// Closes draining connections whose peer did not take the last bytes in time.
    fn expire_drains(&mut self, now: Instant) {
        while let Some(&(deadline, conn, sock)) = self.draining.front() {
            if deadline > now {
                return;
            }
            self.draining.pop_front();
            let Some(Some(c)) = self.conns.get_mut(conn) else {
                continue;
            };
            // The entry may be stale: the connection closed and the id was reused.
            if c.sock == sock && c.state == State::Draining {
                self.report.drain_timeouts += 1;
                c.state = State::Closing;
                self.io.close(sock);
            }
        }
    }

    /// Shutdown deadline passed: close what is still open, pending bytes or not.
    fn force_close_all(&mut self) {
        for c in self.conns.iter_mut().flatten() {
            if matches!(c.state, State::Open | State::Draining) {
                self.report.forced_closes += 1;
                c.state = State::Closing;
                self.io.close(c.sock);
            }
        }
    }
}

/// Longest wait of a loop whose own mesh messages wait for room in a peer's ring (it
/// may not park: see `Endpoint::prepare_park`). Short, because inbound messages ring
/// no doorbell meanwhile; long enough that a slow peer does not cost a spinning core.
const BACKED_UP_WAIT: Duration = Duration::from_micros(100);

/// Timeout of a turn that did not park: none when there is work (actions left,
/// inbound messages), a short bounded wait when only our own backlog keeps us from
/// parking, and at most `timeout` (the next deadline) either way.
fn unparked_timeout(work: bool, backed_up: bool, timeout: Option<Duration>) -> Duration {
    if work || !backed_up {
        return Duration::ZERO;
    }
    timeout.map_or(BACKED_UP_WAIT, |t| t.min(BACKED_UP_WAIT))
}

/// Hand-offs waiting for their socket, each for at most `wait`.
struct WaitingHandoffs {
    /// With the time each is given up on.
    by_transfer: HashMap<Transfer, (Instant, Box<Handoff>)>,
    /// Deadlines in order (one fixed wait); an entry whose hand-off was taken, or
    /// replaced under a reused transfer id (epoll: an fd number), is skipped.
    due: VecDeque<(Instant, Transfer)>,
    wait: Duration,
}

impl WaitingHandoffs {
    fn new(wait: Duration) -> WaitingHandoffs {
        WaitingHandoffs {
            by_transfer: HashMap::new(),
            due: VecDeque::new(),
            wait,
        }
    }

    fn insert(&mut self, transfer: Transfer, handoff: Box<Handoff>, now: Instant) {
        let deadline = now + self.wait;
        self.by_transfer.insert(transfer, (deadline, handoff));
        self.due.push_back((deadline, transfer));
    }

    fn take(&mut self, transfer: Transfer) -> Option<Box<Handoff>> {
        self.by_transfer.remove(&transfer).map(|(_, h)| h)
    }

    /// Removes the hand-offs due by `now`, passing each to `gone`.
    fn expire(&mut self, now: Instant, mut gone: impl FnMut(Transfer, Box<Handoff>)) {
        while let Some(&(deadline, transfer)) = self.due.front() {
            if deadline > now {
                return;
            }
            self.due.pop_front();
            let current = self
                .by_transfer
                .get(&transfer)
                .is_some_and(|(d, _)| *d <= now);
            if current {
                if let Some((_, handoff)) = self.by_transfer.remove(&transfer) {
                    gone(transfer, handoff);
                }
            }
        }
    }

    /// When `expire` next has something to do (possibly nothing: a stale entry).
    fn next_deadline(&self) -> Option<Instant> {
        self.due.front().map(|&(d, _)| d)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_transfer.len()
    }

    /// Gives a connect storm's memory back once empty.
    fn shrink(&mut self) {
        shrink_emptied(&mut self.by_transfer);
        if self.due.is_empty() && self.due.capacity() > HANDOFF_TABLE_KEPT {
            self.due.shrink_to(0);
        }
    }
}

/// Frees an empty table's storage unless it is small (see `HANDOFF_TABLE_KEPT`).
fn shrink_emptied<K: Eq + std::hash::Hash, V>(table: &mut HashMap<K, V>) {
    if table.is_empty() && table.capacity() > HANDOFF_TABLE_KEPT {
        table.shrink_to(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emptied_handoff_tables_are_freed_small_ones_kept() {
        let mut big: HashMap<u64, u64> = (0..1000).map(|i| (i, i)).collect();
        shrink_emptied(&mut big);
        assert_eq!(big.len(), 1000, "a table in use is kept");
        big.clear();
        shrink_emptied(&mut big);
        assert_eq!(big.capacity(), 0);
        let mut small: HashMap<u64, u64> = (0..10).map(|i| (i, i)).collect();
        small.clear();
        let kept = small.capacity();
        shrink_emptied(&mut small);
        assert_eq!(small.capacity(), kept);
    }

    #[test]
    fn a_mesh_message_is_no_larger_than_a_shard_message() {
        // Mesh ring slots are `WorkerMsg`s (see `WorkerMsg::Adopt`).
        assert_eq!(
            std::mem::size_of::<WorkerMsg>(),
            std::mem::size_of::<ShardMsg>()
        );
    }

    #[test]
    fn a_backed_up_loop_waits_briefly_instead_of_spinning() {
        let ms = Duration::from_millis;
        assert_eq!(unparked_timeout(false, true, None), BACKED_UP_WAIT);
        assert_eq!(unparked_timeout(false, true, Some(ms(5))), BACKED_UP_WAIT);
        // A deadline sooner than the bound wins.
        assert_eq!(unparked_timeout(false, true, Some(us(20))), us(20));
        // Work waiting: no wait at all.
        assert_eq!(unparked_timeout(true, true, Some(ms(5))), Duration::ZERO);
        assert_eq!(unparked_timeout(false, false, None), Duration::ZERO);
    }

    /// A shard on shard 1 of 2 with one subscriber of `filter`, its route update to
    /// shard 0 waiting in its control outbox.
    fn shard_with_a_new_route(filter: &str) -> Shard {
        use crate::protocol::{encode_packet, Packet, Subscribe, SubscriptionOptions};
        use crate::shard::harness::{connect_packet, id_on, peer, ConnectOpts, V311};
        let now = Instant::now();
        let mut shard = Shard::new(1, 2, Arc::new(Config::default()));
        let conn = shard.accept(peer(), now);
        let mut bytes = bytes::BytesMut::new();
        let id = id_on(1, 2, "c");
        encode_packet(
            &connect_packet(V311, &id, &ConnectOpts::default()),
            V311,
            &mut bytes,
        );
        let mut filters = smallvec::SmallVec::new();
        filters.push((
            bytes::Bytes::copy_from_slice(filter.as_bytes()),
            SubscriptionOptions::default(),
        ));
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters,
            properties: Default::default(),
        });
        encode_packet(&subscribe, V311, &mut bytes);
        shard.on_read(conn, &bytes, now);
        while shard.poll_action().is_some() {}
        assert!(shard.control_waiting());
        shard
    }

    #[test]
    fn control_messages_wait_for_room_in_a_full_mesh() {
        let mut eps = crate::ring::mesh::<WorkerMsg>(2, 2, 1).expect("valid mesh");
        let mut shard = shard_with_a_new_route("y");
        let mut wake = WakeSet::default();
        // Fill 1 -> 0 (ring 2 + overflow 1) with data.
        let data = |n: u8| {
            WorkerMsg::Shard(ShardMsg::RouteAck {
                seq: u64::from(n) + 100,
            })
        };
        for n in 0..3 {
            assert!(eps[1].send(0, data(n)).is_ok());
        }
        assert!(eps[1].is_full(0));
        Worker::<crate::io::epoll::EpollLoop>::send_control(1, &mut shard, &mut eps[1], &mut wake);
        assert!(shard.control_waiting(), "kept, not dropped");
        assert_eq!(eps[1].stats().rejected, 0);
        // Room frees: the route update follows the data, in order.
        let mut got = Vec::new();
        let mut take = |ep: &mut Endpoint<WorkerMsg>| {
            ep.recv_batch(16, |_, m| match m {
                WorkerMsg::Shard(ShardMsg::RouteAck { seq }) => got.push(format!("ack {seq}")),
                WorkerMsg::Shard(ShardMsg::Route(r)) => got.push(format!(
                    "route {} add={} seq={}",
                    String::from_utf8_lossy(&r.filter),
                    r.add,
                    r.seq
                )),
                other => got.push(format!("{other:?}")),
            })
        };
        take(&mut eps[0]);
        eps[1].flush();
        Worker::<crate::io::epoll::EpollLoop>::send_control(1, &mut shard, &mut eps[1], &mut wake);
        assert!(!shard.control_waiting());
        eps[1].flush();
        take(&mut eps[0]);
        assert_eq!(
            got,
            ["ack 100", "ack 101", "ack 102", "route y add=true seq=1"]
        );
    }

    fn handoff() -> Box<Handoff> {
        let now = Instant::now();
        Box::new(Handoff {
            peer: crate::shard::harness::peer(),
            rx: bytes::BytesMut::new(),
            accepted_at: now,
            connect_at: now,
        })
    }

    #[test]
    fn waiting_handoffs_expire_once_after_the_wait_unless_taken() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = WaitingHandoffs::new(s(5));
        w.insert(Transfer(1), handoff(), t0);
        w.insert(Transfer(2), handoff(), t0 + s(1));
        assert!(w.take(Transfer(1)).is_some(), "paired in time");
        // Transfer ids may be reused (epoll: fd numbers): the newer claim keeps its
        // own deadline.
        w.insert(Transfer(3), handoff(), t0);
        w.insert(Transfer(3), handoff(), t0 + s(3));
        assert_eq!(w.next_deadline(), Some(t0 + s(5)));
        let mut gone = Vec::new();
        w.expire(t0 + s(5), |t, _| gone.push(t.0));
        assert_eq!(gone, Vec::<u64>::new(), "1 was taken, 3 was renewed");
        w.expire(t0 + s(6), |t, _| gone.push(t.0));
        assert_eq!(gone, [2]);
        w.expire(t0 + s(8), |t, _| gone.push(t.0));
        assert_eq!(gone, [2, 3]);
        assert_eq!((w.len(), w.next_deadline()), (0, None));
        w.expire(t0 + s(60), |t, _| gone.push(t.0));
        assert_eq!(gone, [2, 3], "each expires once");
    }

    /// An event loop whose sockets sent by other loops never arrive (the io_uring
    /// loop closed them as unpaired before their hand-off came); everything else is
    /// an epoll loop's.
    struct NeverArrives {
        inner: crate::io::epoll::EpollLoop,
        claimed: Vec<Transfer>,
        forgotten: Vec<Transfer>,
        closed: Vec<SockId>,
    }

    impl EventLoop for NeverArrives {
        fn remote(&self) -> Arc<Remote> {
            self.inner.remote()
        }
        fn set_peers(&mut self, peers: Vec<Arc<Remote>>) {
            self.inner.set_peers(peers)
        }
        fn add_listener(&mut self, listener: TcpListener) -> io::Result<()> {
            self.inner.add_listener(listener)
        }
        fn stop_accepting(&mut self) {
            self.inner.stop_accepting()
        }
        fn start_recv(&mut self, sock: SockId) {
            self.inner.start_recv(sock)
        }
        fn send(&mut self, sock: SockId, data: bytes::Bytes) {
            self.inner.send(sock, data)
        }
        fn close(&mut self, sock: SockId) {
            self.closed.push(sock);
        }
        fn migrate(&mut self, sock: SockId, to: usize) {
            self.inner.migrate(sock, to)
        }
        fn adopt(&mut self, transfer: Transfer) -> Option<SockId> {
            self.claimed.push(transfer);
            None
        }
        fn discard(&mut self, transfer: Transfer) {
            self.inner.discard(transfer)
        }
        fn forget(&mut self, transfer: Transfer) {
            self.forgotten.push(transfer);
        }
        fn doorbell(&mut self, to: usize) {
            self.inner.doorbell(to)
        }
        fn buf(&self, buf: crate::io::BufRef) -> &[u8] {
            self.inner.buf(buf)
        }
        fn recycle(&mut self, buf: crate::io::BufRef) {
            self.inner.recycle(buf)
        }
        fn turn(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
            self.inner.turn(timeout, out)
        }
        fn stats(&self) -> IoStats {
            self.inner.stats()
        }
        fn name(&self) -> &'static str {
            "never-arrives"
        }
    }

    #[test]
    fn a_handoff_whose_socket_never_comes_is_dropped_counted_and_forgotten() {
        let opts = LoopOptions::default();
        let io = NeverArrives {
            inner: crate::io::epoll::EpollLoop::new(1, &opts).expect("epoll loop"),
            claimed: Vec::new(),
            forgotten: Vec::new(),
            closed: Vec::new(),
        };
        let mut eps = crate::ring::mesh::<WorkerMsg>(2, 4, 1).expect("valid mesh");
        let mesh = eps.pop().expect("endpoint 1");
        let mut w = Worker {
            id: 1,
            io,
            shard: Shard::new(1, 2, Arc::new(Config::default())),
            mesh,
            conns: Vec::new(),
            by_sock: Vec::new(),
            live: 0,
            waiting_handoffs: WaitingHandoffs::new(Duration::from_millis(
                opts.adopt_pair_timeout_ms,
            )),
            outgoing: HashMap::new(),
            wake: WakeSet::default(),
            draining: VecDeque::new(),
            report: WorkerReport::default(),
            shutting_down: false,
            busy_poll: BusyPoll::new(0),
        };
        let late = Transfer(7);
        let msg = WorkerMsg::Adopt {
            handoff: handoff(),
            transfer: late,
        };
        assert!(eps[0].send(1, msg).is_ok());
        eps[0].flush();
        let t0 = Instant::now();
        w.drain_mesh(t0);
        assert_eq!(w.io.claimed, [late]);
        assert_eq!(w.waiting_handoffs.len(), 1);
        let wait = Duration::from_millis(opts.adopt_pair_timeout_ms);
        w.expire_handoffs(t0 + wait - Duration::from_millis(1));
        assert_eq!(w.waiting_handoffs.len(), 1, "still within the wait");
        w.expire_handoffs(t0 + wait);
        assert_eq!(w.waiting_handoffs.len(), 0);
        assert_eq!(w.report.handoffs_expired, 1);
        assert_eq!(w.io.forgotten, [late]);
        // Should the socket still come, it has no hand-off any more: closed.
        Worker::dispatch(
            &mut w.io,
            &mut w.shard,
            &mut w.conns,
            &mut w.by_sock,
            &mut w.live,
            &mut w.waiting_handoffs,
            &mut w.outgoing,
            &mut w.mesh,
            &mut w.wake,
            &mut w.report,
            false,
            Completion::Adopted {
                transfer: late,
                sock: 3,
            },
            t0 + wait,
        );
        assert_eq!(w.io.closed, [3]);
        assert_eq!((w.live, w.shard.stats().connections), (0, 0));
    }

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn busy_poll_grows_on_short_gaps_up_to_the_cap() {
        let mut b = BusyPoll::new(50);
        assert_eq!(b.window(), Duration::ZERO);
        b.observe(us(3));
        assert_eq!(b.window(), us(10));
        b.observe(us(30));
        assert_eq!(b.window(), us(20));
        b.observe(us(50));
        assert_eq!(b.window(), us(40));
        b.observe(us(1));
        assert_eq!(b.window(), us(50));
        b.observe(us(1));
        assert_eq!(b.window(), us(50));
    }

    #[test]
    fn busy_poll_halves_on_long_gaps_down_to_zero() {
        let mut b = BusyPoll::new(50);
        for _ in 0..4 {
            b.observe(us(1));
        }
        assert_eq!(b.window(), us(50));
        let mut seen = Vec::new();
        for _ in 0..4 {
            b.observe(Duration::from_secs(60));
            seen.push(b.window());
        }
        assert_eq!(
            seen,
            vec![
                us(25),
                us(12) + Duration::from_nanos(500),
                Duration::ZERO,
                Duration::ZERO
            ]
        );
    }

    #[test]
    fn busy_poll_off_never_spins_and_a_small_cap_is_its_own_start() {
        let mut off = BusyPoll::new(0);
        off.observe(Duration::ZERO);
        assert_eq!(off.window(), Duration::ZERO);
        let mut small = BusyPoll::new(4);
        small.observe(us(2));
        assert_eq!(small.window(), us(4));
        // Half of a 4 µs cap is below the smallest window worth spinning (the cap).
        small.observe(us(5));
        assert_eq!(small.window(), Duration::ZERO);
    }
}
