//! Per-core event loop: reap IO completions, drive the shard, submit output, drain rings.
//!
//! One thread per shard. Each turn: read the clock once; dispatch the completions the
//! last `turn` copied out; drain a bounded batch of mesh messages; run due timers; drain
//! the shard's actions (one send in flight per connection, gathering everything the
//! shard encoded); flush the mesh and ring doorbells; then hand everything to the IO
//! backend in one `turn`, which blocks only when the mesh agreed to park.
//!
//! This file owns that loop and the per-connection IO state it keeps beside the shard.
//! Beside it: `cpu` (thread placement), `busy_poll` (the spin window before blocking),
//! `handoffs` (hand-offs waiting for their socket), `linger` (lingering close), `observe`
//! (the busy clock and the snapshot a scrape gets), `http` (the HTTP listener's
//! connections and scrapes, on the loop that owns it), `sn` (the MQTT-SN gateway's
//! UDP socket and routing), `bridges` (the `[[bridge]]`s this loop owns: their
//! sockets and virtual sessions), `tests`.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::io::{Completion, EventLoop, LoopOptions, Remote, SockId, Transfer};
use crate::ring::{Endpoint, SendError, SendOutcome, WakeSet};
use crate::shard::{Action, ConnId, Handoff, Shard, ShardMsg};
use crate::transport::{ListenerTls, TlsSession, Transport, WsConfig, WsSession};
use crate::tx::TxChain;
use bytes::Bytes;

pub mod bridges;
mod busy_poll;
mod cpu;
mod handoffs;
mod http;
mod linger;
mod observe;
mod report;
mod sn;
pub mod store;
pub mod verify;

use bridges::Bridges;
use busy_poll::BusyPoll;
pub use cpu::{allowed_cpus, pin_to_cpu, set_realtime};
use handoffs::{shrink_emptied, WaitingHandoffs};
use http::HttpServer;
use linger::Linger;
use observe::{LoopClock, Summary};
pub use report::WorkerReport;
pub use sn::SnSetup;

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
        /// The connection's TLS and/or WebSocket state (`None`: plain TCP). Beside the
        /// hand-off, not in it: a transport field in `Handoff` gave `Action` drop glue
        /// that the compiler stopped inlining on the per-message path (+7% on
        /// route_publish_100_subs).
        tls: Option<Box<Transport>>,
    },
    /// The HTTP loop asks for this loop's counters (scrape number `scrape`).
    StatsRequest {
        scrape: u64,
    },
    /// The answer to `StatsRequest`. Boxed: mesh ring slots are sized by the largest
    /// variant.
    StatsReply {
        scrape: u64,
        snapshot: Box<crate::metrics::LoopSnapshot>,
    },
    /// An MQTT-SN datagram (sender, bytes) received on another loop for a client
    /// this loop owns. Data like a `Publish`: dropped, counted, when the ring is full.
    SnDatagram(Box<(std::net::SocketAddr, Bytes)>),
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
/// After shutdown starts: how long clients get to receive their DISCONNECT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// Then: how long the forced closes may take before the loop gives up.
const SHUTDOWN_HARD: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// The shard asked to close: flush what is pending, then close.
    Draining,
    /// Everything was written and the write side shut down; reads are discarded
    /// until the peer closes or the linger ends (see `linger`).
    Lingering,
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
    /// Latency stamp of the oldest live delivery in the send in flight; 0: none
    /// (`metrics::latency`).
    read_at: u32,
    /// The connection's transforms (TLS, WebSocket, both); `None` for plain TCP,
    /// which then pays one test per receive and per send for them.
    tls: Option<Box<Transport>>,
}

/// What the worker keeps for TLS and WebSocket listeners.
struct TlsIo {
    /// Indexed like the listeners: the TLS material of each TLS one.
    listeners: Vec<Option<Arc<ListenerTls>>>,
    /// Indexed like the listeners: the settings of each WebSocket one.
    ws_listeners: Vec<Option<Arc<WsConfig>>>,
    /// Connections whose WebSocket ended during this turn's receives and that now
    /// drain its answer (refusal, close frame): they get a drain deadline after the
    /// completions are dispatched. At most one entry per connection.
    closing: Vec<(ConnId, SockId)>,
    /// Indexed like the listeners too: each one's own `allow_anonymous` (not TLS, but
    /// read at the same accept, by the same listener index).
    anonymous: Vec<Option<bool>>,
    /// Plaintext of one receive on its way to the shard, reused across receives.
    plain: Vec<u8>,
    /// The TLS state of connections being handed off (keyed like `outgoing`), until
    /// the hand-off is sent (it travels in `WorkerMsg::Adopt`) or refused (it stays).
    migrating: HashMap<SockId, Box<Transport>>,
}

/// Above this a TLS receive's plaintext buffer is given back rather than kept.
const TLS_PLAIN_KEEP_BYTES: usize = 64 * 1024;

/// Everything a worker thread needs; built by `main`.
pub struct WorkerSetup {
    pub id: usize,
    pub config: Arc<Config>,
    pub endpoint: Endpoint<WorkerMsg>,
    pub listeners: Vec<TcpListener>,
    /// Same length as `listeners`: the TLS material of each TLS listener (`None`: plain).
    pub listener_tls: Vec<Option<Arc<ListenerTls>>>,
    /// Same length as `listeners`: the settings of each WebSocket listener.
    pub listener_ws: Vec<Option<Arc<WsConfig>>>,
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
    /// The HTTP listener (metrics, health, status page), given to one loop only.
    pub http_listener: Option<TcpListener>,
    /// When the broker started (uptime in the metrics).
    pub started: Instant,
    /// The auth policy (reloaded on SIGHUP) and this loop's end of the verifier
    /// pool; `None` without password or ACL files.
    pub auth: Option<(Arc<verify::AuthShared>, verify::Verifier)>,
    /// This loop's MQTT-SN socket and the gateway's bounds; `None`: gateway off.
    pub mqttsn: Option<SnSetup>,
    /// This loop's end of the cluster link; `None` on a single node.
    pub cluster: Option<crate::cluster::LoopLink>,
    /// This loop's recovered log (`None`: durability off).
    pub store: Option<store::LoopStore>,
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
    linger: Linger,
    report: WorkerReport,
    shutting_down: bool,
    busy_poll: BusyPoll,
    clock: LoopClock,
    /// The once-per-interval info line.
    summary: Summary,
    /// The HTTP side, on the loop that owns the HTTP listener.
    http: Option<HttpServer>,
    /// Scrapes other loops asked for during the mesh drain: (asking loop, scrape).
    /// At most one entry per peer and scrape; answered right after the drain.
    stats_requests: Vec<(usize, u64)>,
    auth: Option<AuthLink>,
    tls: TlsIo,
    sn: Option<sn::SnIo>,
    /// The `[[bridge]]`s this loop owns; `None` for none.
    bridges: Option<Bridges>,
    cluster: Option<crate::cluster::LoopLink>,
    store: Option<store::StoreIo>,
}

/// A loop's link to authentication: the shared policy it last installed, and its
/// end of the verifier pool.
struct AuthLink {
    shared: Arc<verify::AuthShared>,
    generation: u64,
    verifier: verify::Verifier,
}

/// Verifier replies taken per turn (bounded work per turn; the rest wait).
const VERIFY_REPLIES_PER_TURN: usize = 256;

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
        listener_tls,
        listener_ws,
        loop_options,
        pin_cpu,
        shutdown,
        remote_tx,
        peers_rx,
        exit_barrier,
        node,
        http_listener,
        started,
        auth,
        mqttsn,
        cluster,
        store,
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
    let bridges = match Bridges::new(&config, id, endpoint.shard_count(), Instant::now()) {
        Ok(b) => b,
        Err(e) => {
            drop(remote_tx);
            return Err(e);
        }
    };
    let io = match make_loop(id, &loop_options) {
        Ok(io) => io,
        Err(e) => {
            // Others wait for our remote; dropping the sender lets them see the failure.
            drop(remote_tx);
            return Err(e);
        }
    };
    let remote = io.remote();
    // The shard and its recovered sessions are loaded before this loop reports in:
    // `main` says "listening" (and loop 0 answers /readyz) only once every loop has.
    let mut shard = Shard::in_node(id, endpoint.shard_count(), config.clone(), node);
    // Before recovery, so recovered subscriptions announce their interest to NATS.
    if let Some(link) = &cluster {
        link.bind(remote.clone());
        shard.enable_cluster();
    }
    let store = match store {
        Some(st) => match store::StoreIo::start(id, &mut shard, st, remote.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                drop(remote_tx);
                return Err(e);
            }
        },
        None => None,
    };
    let _ = remote_tx.send((id, remote.clone()));
    drop(remote_tx);
    let peers = peers_rx
        .recv()
        .map_err(|_| io::Error::other("another worker failed to start"))?;
    let busy_poll = BusyPoll::new(config.busy_poll_us);
    let linger = Linger::new(
        Duration::from_millis(config.close_linger_ms),
        config.max_lingering_per_shard,
    );
    // Only loop 0 publishes $SYS (it owns the node-wide scrape).
    let sys_interval = Duration::from_secs(if id == 0 { config.sys_interval_s } else { 0 });
    let listener_anonymous = config
        .listeners()
        .iter()
        .map(|l| l.allow_anonymous)
        .collect();
    let auth = auth.map(|(shared, mut verifier)| {
        verifier.bind(remote);
        shard.set_auth(shared.current());
        AuthLink {
            generation: shared.generation(),
            shared,
            verifier,
        }
    });
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
        linger,
        report: WorkerReport {
            shard: id,
            ..Default::default()
        },
        shutting_down: false,
        busy_poll,
        clock: LoopClock::new(Instant::now()),
        summary: Summary::new(Instant::now()),
        http: None,
        stats_requests: Vec::new(),
        auth,
        tls: TlsIo {
            listeners: listener_tls,
            ws_listeners: listener_ws,
            closing: Vec::new(),
            anonymous: listener_anonymous,
            plain: Vec::new(),
            migrating: HashMap::new(),
        },
        sn: None,
        bridges,
        cluster,
        store,
    };
    w.io.set_peers(peers.clone());
    let mut result = Ok(());
    let mqtt_listeners = listeners.len();
    for l in listeners {
        if let Err(e) = w.io.add_listener(l) {
            result = Err(e);
        }
    }
    let mut http_index = None;
    if let Some(l) = http_listener {
        match (u8::try_from(mqtt_listeners), w.io.add_listener(l)) {
            (Ok(index), Ok(())) => http_index = Some(index),
            (Err(_), _) => result = Err(io::Error::other("too many listeners for the HTTP one")),
            (_, Err(e)) => result = Err(e),
        }
    }
    if http_index.is_some() || !sys_interval.is_zero() {
        let mut h = HttpServer::new(http_index, sys_interval, started, w.io.name());
        h.cluster = w.cluster.as_ref().map(|c| c.status.clone());
        w.http = Some(h);
    }
    if let Some(setup) = mqttsn {
        match sn::SnIo::new(setup, &w.shard, &mut w.io, Instant::now()) {
            Ok(s) => w.sn = Some(s),
            Err(e) => result = Err(e),
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
    w.report.lingered = w.linger.started;
    w.report.linger_refused_full = w.linger.refused_full;
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
            self.clock.turn();
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
                if let Completion::SendToFailed { errno } = c {
                    tracing::debug!(shard = self.id, errno, "mqttsn send failed");
                    self.shard.sn_stats_mut().send_dropped += 1;
                    continue;
                }
                if let Completion::Datagram { from, buf } = c {
                    let data = Bytes::copy_from_slice(self.io.buf(buf));
                    self.io.recycle(buf);
                    if let Some(sn) = &mut self.sn {
                        sn.on_datagram(
                            &mut self.shard,
                            &mut self.mesh,
                            &mut self.wake,
                            from,
                            data,
                            now,
                        );
                    }
                    continue;
                }
                if let Some(b) = self.bridges.as_mut() {
                    if b.on_completion(&mut self.io, &c, now) {
                        continue;
                    }
                }
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
                    &mut self.linger,
                    &mut self.draining,
                    &mut self.report,
                    &mut self.http,
                    self.shutting_down,
                    &mut self.tls,
                    c,
                    now,
                );
            }
            for (conn, sock) in self.tls.closing.drain(..) {
                self.draining.push_back((now + DRAIN_TIMEOUT, conn, sock));
            }
            if let Some(st) = self.store.as_mut() {
                st.collect(&mut self.shard, now);
            }
            self.drain_mesh(now);
            if let Some(sn) = &mut self.sn {
                sn.node.on_timer(&mut self.shard, now);
            }
            if !self.stats_requests.is_empty() {
                self.answer_stats_requests(now);
            }
            self.http_turn(now);
            if now >= self.summary.next {
                self.log_summary(now);
            }
            self.drain_auth(now);
            self.drain_cluster(now);
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
            if let Some(b) = self.bridges.as_mut() {
                b.turn(&mut self.io, &mut self.shard, now, self.shutting_down);
            }
            // Retained streams write their slice before the actions are taken, so it
            // is flushed in this turn; a stream with more to send keeps the loop from
            // blocking (nothing else would wake it).
            self.shard.run_streams(now);
            let more_actions = self.drain_actions(now) || self.shard.streams_pending();
            if let Some(sn) = &mut self.sn {
                sn.flush(&mut self.io, &mut self.shard);
            }
            if let Some(link) = &mut self.cluster {
                if let Some(out) = self.shard.take_cluster_out() {
                    link.send(out);
                }
            }
            // Everything this turn appended leaves as one write (group commit).
            if let Some(st) = self.store.as_mut() {
                st.submit(&mut self.shard);
            }
            Self::send_control(self.id, &mut self.shard, &mut self.mesh, &mut self.wake);
            self.expire_drains(now);
            self.expire_lingers(now);
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
                self.linger.next_deadline(),
                self.waiting_handoffs.next_deadline(),
                self.http.as_ref().and_then(|h| h.next_deadline()),
                self.sn.as_ref().and_then(|s| s.node.next_deadline()),
                self.bridges.as_ref().and_then(|b| b.next_deadline()),
                self.store.as_ref().and_then(|s| s.next_deadline()),
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
            let backed_up = self.mesh.has_overflow()
                || self.shard.control_waiting()
                || self
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.backed_up() || c.has_inbound());
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

    /// A reloaded policy (one atomic load when there is none), then the verifier's
    /// answers.
    fn drain_auth(&mut self, now: Instant) {
        let Some(a) = &mut self.auth else {
            return;
        };
        let g = a.shared.generation();
        if g != a.generation {
            a.generation = g;
            self.shard.set_auth(a.shared.current());
        }
        let shard = &mut self.shard;
        a.verifier
            .drain(VERIFY_REPLIES_PER_TURN, |(conn, generation, ok)| {
                shard.on_verified(conn, generation, Some(ok), now)
            });
    }

    /// Messages from other nodes (publishes, retained entries), a bounded batch.
    fn drain_cluster(&mut self, now: Instant) {
        let Some(link) = &mut self.cluster else {
            return;
        };
        let shard = &mut self.shard;
        link.drain(MESH_BATCH, |m| shard.on_cluster_in(m, now));
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
            stats_requests,
            sn,
            ..
        } = self;
        let mut replies = Vec::new();
        mesh.recv_batch(MESH_BATCH, |from, msg| match msg {
            WorkerMsg::Shard(m) => shard.on_message(from, m, now),
            WorkerMsg::StatsRequest { scrape } => {
                // One per peer: a peer asks again only after its scrape ended.
                if !stats_requests.contains(&(from, scrape)) {
                    stats_requests.push((from, scrape));
                }
            }
            WorkerMsg::StatsReply { scrape, snapshot } => replies.push((from, scrape, snapshot)),
            WorkerMsg::SnDatagram(d) => {
                if let Some(sn) = sn.as_mut() {
                    let (peer, data) = *d;
                    sn.node.on_datagram(shard, peer, &data, now);
                }
            }
            WorkerMsg::Adopt {
                handoff,
                transfer,
                tls,
            } => {
                report.handoffs_in += 1;
                tracing::debug!(shard = shard.id(), from, ?transfer, "handoff received");
                match io.adopt(transfer) {
                    Some(sock) if *shutting_down => io.close(sock),
                    Some(sock) => {
                        Self::adopt_conn(io, shard, conns, by_sock, live, sock, *handoff, tls, now)
                    }
                    None => waiting_handoffs.insert(transfer, (handoff, tls), now),
                }
            }
        });
        for (from, scrape, snapshot) in replies {
            self.on_stats_reply(from, scrape, *snapshot);
        }
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
        session: Option<Box<Transport>>,
        now: Instant,
    ) {
        // The certificate's username, read again from the TLS state that travelled.
        let cert_username = session.as_ref().and_then(|s| s.username());
        let conn = shard.adopt_as(handoff, cert_username, now);
        Self::map(conns, by_sock, live, conn, sock, session);
        io.start_recv(sock);
        // TLS records the old loop had not sent yet (session tickets) go out first.
        if let Some(Some(c)) = conns.get_mut(conn) {
            if let Some(data) = c.tls.as_mut().and_then(|s| s.take_wire()) {
                c.sending = true;
                io.send(sock, data.into());
            }
        }
    }

    /// The next bytes to send on `c`: the shard's output as segments (shared
    /// payloads by reference), or through the connection's transforms when it has
    /// any (with any handshake, alert or control bytes they queued; a WebSocket frames
    /// the whole flush as one frame).
    fn next_tx(shard: &mut Shard, c: &mut ConnIo, conn: ConnId) -> Option<TxChain> {
        let chain = shard.take_tx_chain(conn);
        c.read_at = if chain.is_some() {
            shard.taken_read_stamp()
        } else {
            0
        };
        let Some(session) = c.tls.as_mut() else {
            return chain;
        };
        if let Some(plain) = chain {
            session.encode_chain(plain);
        }
        session.take_wire().map(TxChain::from)
    }

    fn map(
        conns: &mut Vec<Option<ConnIo>>,
        by_sock: &mut Vec<u32>,
        live: &mut usize,
        conn: ConnId,
        sock: SockId,
        tls: Option<Box<Transport>>,
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
            read_at: 0,
            tls,
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
        linger: &mut Linger,
        draining: &mut VecDeque<(Instant, ConnId, SockId)>,
        report: &mut WorkerReport,
        http: &mut Option<HttpServer>,
        shutting_down: bool,
        tls: &mut TlsIo,
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
            Completion::Accepted {
                sock,
                peer,
                listener,
            } => {
                if shutting_down {
                    io.close(sock);
                    return;
                }
                if let Some(h) = http.as_mut().filter(|h| h.listener == Some(listener)) {
                    h.accept(io, sock, now);
                    return;
                }
                let index = usize::from(listener);
                let tls_session = match tls.listeners.get(index) {
                    Some(Some(lt)) => match TlsSession::from_material(&lt.current()) {
                        Ok(s) => Some(Box::new(s)),
                        Err(e) => {
                            tracing::warn!(shard = shard.id(), "tls session: {e}");
                            io.close(sock);
                            return;
                        }
                    },
                    _ => None,
                };
                let ws = match tls.ws_listeners.get(index) {
                    Some(Some(cfg)) => Some(WsSession::new(cfg.clone())),
                    _ => None,
                };
                let session = match (tls_session, ws) {
                    (None, None) => None,
                    (Some(t), None) => Some(Box::new(Transport::Tls(t))),
                    (None, Some(w)) => Some(Box::new(Transport::Ws(w))),
                    (Some(t), Some(w)) => Some(Box::new(Transport::Wss(t, w))),
                };
                let conn = shard.accept(peer, now);
                if let Some(&Some(allow)) = tls.anonymous.get(usize::from(listener)) {
                    shard.set_listener_anonymous(conn, Some(allow));
                }
                Self::map(conns, by_sock, live, conn, sock, session);
                io.start_recv(sock);
            }
            Completion::Adopted { transfer, sock } => match waiting_handoffs.take(transfer) {
                Some(_) if shutting_down => io.close(sock),
                Some((handoff, tls)) => {
                    Self::adopt_conn(io, shard, conns, by_sock, live, sock, *handoff, tls, now)
                }
                None => {
                    tracing::warn!(shard = shard.id(), "socket arrived without its handoff");
                    io.close(sock);
                }
            },
            Completion::Recv { sock, buf } => {
                if let Some(conn) = conn_of(by_sock, sock) {
                    let Some(Some(c)) = conns.get_mut(conn) else {
                        io.recycle(buf);
                        return;
                    };
                    match (c.state, c.tls.as_mut()) {
                        (State::Open, None) => shard.on_read(conn, io.buf(buf), now),
                        (State::Open, Some(session)) => {
                            tls.plain.clear();
                            let handshaking = session.is_handshaking();
                            let result = session.on_recv(io.buf(buf), &mut tls.plain);
                            // The handshake just ended: the certificate's username is
                            // set before the CONNECT that may follow in these bytes.
                            if handshaking && result.is_ok() && !session.is_handshaking() {
                                if let Some(name) = session.username() {
                                    shard.set_cert_username(conn, name);
                                }
                            }
                            match result {
                                Ok(()) => {
                                    if !tls.plain.is_empty() {
                                        shard.on_read(conn, &tls.plain, now);
                                    }
                                    if session.ended() {
                                        // The WebSocket is over (the peer's close, a
                                        // protocol error, a refused upgrade): its
                                        // answer goes out, then the socket closes.
                                        if let Some(e) = session.ws_error() {
                                            report.ws_refused.count(e);
                                            tracing::debug!(
                                                shard = shard.id(),
                                                conn,
                                                "closing: {e}"
                                            );
                                        }
                                        shard.on_closed(conn, now);
                                        c.state = State::Draining;
                                        tls.closing.push((conn, sock));
                                    }
                                    // Handshake answers, pongs, close frames: sent now
                                    // (the shard's Flush takes them along otherwise).
                                    if !c.sending {
                                        if let Some(data) = session.take_wire() {
                                            c.sending = true;
                                            io.send(sock, data.into());
                                        } else if c.state == State::Draining {
                                            c.state = State::Closing;
                                            io.close(sock);
                                        }
                                    }
                                }
                                Err(e) => {
                                    report.tls_failed += 1;
                                    tracing::debug!(shard = shard.id(), conn, "closed: {e}");
                                    shard.on_closed(conn, now);
                                    // rustls queued the alert naming the failure: it is
                                    // written before the close (then the linger), so
                                    // the client reports why instead of a reset. The
                                    // drain deadline bounds a peer that never reads.
                                    c.state = State::Draining;
                                    if !c.sending {
                                        match session.take_wire() {
                                            Some(alert) => {
                                                c.sending = true;
                                                io.send(sock, alert.into());
                                            }
                                            None => {
                                                c.state = State::Closing;
                                                io.close(sock);
                                            }
                                        }
                                    }
                                    if c.state == State::Draining {
                                        draining.push_back((now + DRAIN_TIMEOUT, conn, sock));
                                    }
                                }
                            }
                            if tls.plain.capacity() > TLS_PLAIN_KEEP_BYTES {
                                tls.plain = Vec::new();
                            }
                        }
                        (State::Migrating, _) => {
                            // Bytes that arrived after the shard decided to migrate
                            // travel with the connection (through its transforms,
                            // which travel too).
                            if let Some((_, handoff)) = outgoing.get_mut(&sock) {
                                match tls.migrating.get_mut(&sock) {
                                    None => handoff.rx.extend_from_slice(io.buf(buf)),
                                    Some(session) => {
                                        let mut plain = Vec::new();
                                        if session.on_recv(io.buf(buf), &mut plain).is_err() {
                                            report.tls_failed += 1;
                                        }
                                        handoff.rx.extend_from_slice(&plain);
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                } else if let Some(h) = http.as_mut().filter(|h| h.owns(sock)) {
                    let data = io.buf(buf).to_vec();
                    h.on_recv(io, sock, &data);
                }
                io.recycle(buf);
            }
            Completion::RecvEnd { sock, errno } => {
                let Some(conn) = conn_of(by_sock, sock) else {
                    if let Some(h) = http.as_mut() {
                        h.on_recv_end(io, sock);
                    }
                    return;
                };
                let Some(Some(c)) = conns.get_mut(conn) else {
                    return;
                };
                if matches!(c.state, State::Open | State::Draining | State::Lingering) {
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
                    if let Some(h) = http.as_mut() {
                        h.on_send_done(io, sock);
                    }
                    return;
                };
                let Some(Some(c)) = conns.get_mut(conn) else {
                    return;
                };
                c.sending = false;
                if c.read_at != 0 && errno == 0 {
                    let done = shard.latency_stamp(now);
                    report
                        .latency
                        .record_since(std::mem::take(&mut c.read_at), done);
                }
                match (c.state, errno) {
                    (State::Open, 0) | (State::Draining, 0) => {
                        if let Some(data) = Self::next_tx(shard, c, conn) {
                            c.sending = true;
                            io.send(sock, data);
                        } else if c.state == State::Draining {
                            // All written: linger rather than close over bytes the
                            // client may still be sending (see `linger`).
                            if linger.start(now, conn, sock) {
                                c.state = State::Lingering;
                                io.shutdown_write(sock);
                            } else {
                                c.state = State::Closing;
                                io.close(sock);
                            }
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
                let session = tls.migrating.remove(&sock);
                tracing::debug!(shard = shard.id(), sock, to, ?result, "migrated");
                match result {
                    Ok(transfer) => {
                        report.migrations_out += 1;
                        // `Action::Migrate` reserved this place: a mesh that filled up
                        // since cannot refuse the hand-off of a socket already sent.
                        let msg = WorkerMsg::Adopt {
                            handoff,
                            transfer,
                            tls: session,
                        };
                        match mesh.send_reserved(to, msg) {
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
                                c.tls = session;
                            }
                            shard.on_migrate_refused(conn, now);
                        }
                    }
                }
            }
            // Taken by `run_loop` before dispatch.
            Completion::Datagram { buf, .. } => io.recycle(buf),
            Completion::SendToFailed { .. } => {}
            // Outbound connects are the bridges' (taken before dispatch).
            Completion::Connected { .. } => {}
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
                        // No socket: an MQTT-SN client's virtual connection, or gone.
                        if let Some(sn) = self.sn.as_mut().filter(|s| s.node.owns(conn)) {
                            sn.node.on_flush(&mut self.shard, conn, now);
                        }
                        continue;
                    };
                    if c.sending || !matches!(c.state, State::Open | State::Draining) {
                        continue;
                    }
                    if let Some(data) = Self::next_tx(&mut self.shard, c, conn) {
                        c.sending = true;
                        self.io.send(c.sock, data);
                    }
                }
                Action::Close(conn) => {
                    let Some(Some(c)) = self.conns.get_mut(conn) else {
                        if let Some(sn) = self.sn.as_mut().filter(|s| s.node.owns(conn)) {
                            sn.node.on_close(&mut self.shard, conn, now);
                        }
                        // No socket: perhaps a bridge's virtual connection.
                        if let Some(b) = self.bridges.as_mut() {
                            b.on_shard_close(&mut self.shard, conn, now);
                        }
                        continue;
                    };
                    if c.state != State::Open {
                        continue;
                    }
                    c.state = State::Draining;
                    if let Some(t) = c.tls.as_mut().filter(|t| t.is_websocket()) {
                        // The shard writes nothing after its Close: frame what it has
                        // left, then the close frame (a browser sees 1000, not 1006).
                        if let Some(plain) = self.shard.take_tx(conn) {
                            t.encode(&plain);
                        }
                        t.close_websocket();
                    }
                    if !c.sending {
                        if let Some(data) = Self::next_tx(&mut self.shard, c, conn) {
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
                        // A virtual connection is opened on its owner; should one be
                        // asked to move all the same, it is refused (CONNACK rc 3).
                        if self.sn.as_ref().is_some_and(|s| s.node.owns(conn)) {
                            self.shard.on_migrate_refused(conn, now);
                        }
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
                    if let Some(session) = c.tls.take() {
                        self.tls.migrating.insert(c.sock, session);
                    }
                    self.outgoing.insert(c.sock, (to, handoff));
                    self.io.migrate(c.sock, to);
                }
                Action::Verify { conn, generation } => {
                    let Some(job) = self.shard.take_verify_job(conn, generation) else {
                        continue;
                    };
                    let sent = self
                        .auth
                        .as_ref()
                        .is_some_and(|a| a.verifier.submit(conn, generation, job));
                    if !sent {
                        self.shard.on_verified(conn, generation, None, now);
                    }
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
    /// dropped (see `shard::control::ControlOutbox`).
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
        waiting_handoffs.expire(now, |transfer, (handoff, _)| {
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

    /// Closes lingering connections whose linger is over.
    fn expire_lingers(&mut self, now: Instant) {
        let Worker {
            io, conns, linger, ..
        } = self;
        linger.expire(now, |conn, sock| {
            let Some(Some(c)) = conns.get_mut(conn) else {
                return;
            };
            // The entry may be stale: the peer closed first and the id was reused.
            if c.sock == sock && c.state == State::Lingering {
                c.state = State::Closing;
                io.close(sock);
            }
        });
    }

    /// Shutdown deadline passed: close what is still open, pending bytes or not.
    fn force_close_all(&mut self) {
        for c in self.conns.iter_mut().flatten() {
            if matches!(c.state, State::Open | State::Draining | State::Lingering) {
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

#[cfg(test)]
mod tests;
