//! Per-core event loop: reap IO completions, drive the shard, submit output, drain rings.
//!
//! One thread per shard. Each turn: read the clock once; dispatch the completions the
//! last `turn` copied out; drain a bounded batch of mesh messages; run due timers; drain
//! the shard's actions (one send in flight per connection, gathering everything the
//! shard encoded); flush the mesh and ring doorbells; then hand everything to the IO
//! backend in one `turn`, which blocks only when the mesh agreed to park.
//!
//! This file owns that loop and the per-connection IO state it keeps beside the shard.
//! Beside it: `dispatch` (applying IO completions), `actions` (the shard's actions
//! into IO and mesh sends), `expiry` (hand-off, drain and linger deadlines), `cpu` (thread placement), `busy_poll` (the spin window before blocking),
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

mod actions;
pub mod bridges;
mod busy_poll;
mod cpu;
mod dispatch;
mod expiry;
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
pub use cpu::{allowed_cpus, pin_to_cpu, set_fair_slice, set_realtime};
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

/// Mesh messages handled per drain (two per turn: before and after the completions),
/// so inbound traffic cannot starve local IO.
const MESH_BATCH: usize = 1024;
/// A `WorkerMsg::Adopt` taken from the mesh: sending loop, hand-off, socket, transforms.
type Adopt = (usize, Box<Handoff>, Transfer, Option<Box<Transport>>);
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
    /// The connection has transforms (TLS, WebSocket, both) in `TlsIo::by_conn`;
    /// plain TCP pays one test of this flag per receive and per send for them.
    transformed: bool,
}

/// The transforms of the connections that have any, by connection. A side table
/// rather than an `Option<Box<Transport>>` in `ConnIo`, whose 8-byte pointer made
/// every plain TCP connection's entry 24 bytes instead of 12 (issue #21: ≤ 300 B per
/// idle connection); a TLS connection pays a lookup beside its record crypto.
type Transforms = HashMap<ConnId, Box<Transport>>;

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
    /// The transforms of this loop's connections (`ConnIo::transformed`).
    by_conn: Transforms,
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
    /// Hands the allocator's freed pages of this thread back to the OS (`main`
    /// passes mimalloc's `mi_collect`); called at most once per
    /// `ALLOCATOR_COLLECT_INTERVAL`, only when the loop is about to block. `None`:
    /// the allocator's own policy (the library does not know which allocator the
    /// binary installed).
    pub allocator_collect: Option<fn()>,
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
    allocator: AllocatorCollect,
}

/// Between two allocator collects of one loop. mimalloc purges a freed page only
/// after its purge delay (1 s) and only from inside an allocator call, so a loop
/// that went idle after a burst would keep the burst's freed pages resident until
/// traffic came back; two collects a delay apart hand them back.
const ALLOCATOR_COLLECT_INTERVAL: Duration = Duration::from_secs(1);
/// The idle-time allocator collect (`WorkerSetup::allocator_collect`).
struct AllocatorCollect {
    collect: Option<fn()>,
    last: Instant,
}

impl AllocatorCollect {
    fn new(collect: Option<fn()>, now: Instant) -> AllocatorCollect {
        AllocatorCollect { collect, last: now }
    }

    /// Called when the loop is about to block: collects at most once per interval,
    /// so a loop that blocks between every message pays one comparison per block.
    fn on_idle(&mut self, now: Instant) -> bool {
        let Some(collect) = self.collect else {
            return false;
        };
        if now.saturating_duration_since(self.last) < ALLOCATOR_COLLECT_INTERVAL {
            return false;
        }
        self.last = now;
        collect();
        true
    }
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
        allocator_collect,
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
    } else if config.sched_slice_us > 0 {
        // A hint, not a guarantee: a kernel without per-task slices runs the loop as
        // before, so say so and go on.
        match set_fair_slice(config.sched_slice_us) {
            Ok(true) => tracing::debug!(
                shard = id,
                slice_us = config.sched_slice_us,
                "loop asks the normal scheduler for a short time slice"
            ),
            Ok(false) => tracing::warn!(
                shard = id,
                slice_us = config.sched_slice_us,
                "sched_slice_us: this kernel keeps its default time slice (per-task slices need Linux 6.12+)"
            ),
            Err(e) => tracing::warn!(
                shard = id,
                slice_us = config.sched_slice_us,
                "sched_slice_us: sched_setattr refused ({e}); the loop keeps the kernel's default time slice"
            ),
        }
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
        shard.set_cluster_status(link.status.clone());
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
            by_conn: HashMap::new(),
        },
        sn: None,
        bridges,
        cluster,
        store,
        allocator: AllocatorCollect::new(allocator_collect, Instant::now()),
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
        let mut early_adopts: Vec<Adopt> = Vec::new();
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
            // The mesh before the sockets: a route update another loop sent before this
            // turn is live before a PUBLISH read in it is routed (a loop woken late finds
            // the doorbell and the publisher's bytes waiting together). Hand-offs wait
            // for the completions: a `Released` among them may name the socket id the
            // adoption would be given.
            self.drain_mesh_into(now, &mut early_adopts);
            // A reloaded policy before the packets: nothing wakes an idle loop for a
            // reload, so the packet that does must already meet the new policy.
            self.apply_reloaded_auth();
            for c in completions.drain(..) {
                if let Completion::SendToFailed { errno } = c {
                    tracing::debug!(shard = self.id, errno, "mqttsn send failed");
                    self.shard.sn_stats_mut().send_dropped += 1;
                    continue;
                }
                if let Completion::FileWritten { errno, sync_errno } = c {
                    if let Some(st) = self.store.as_mut() {
                        st.on_file_written(errno, sync_errno);
                    }
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
            for a in early_adopts.drain(..) {
                self.on_adopt(a, now);
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
                st.submit(&mut self.shard, &mut self.io);
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
                self.allocator.on_idle(now);
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

    /// Installs a reloaded policy (one atomic load when there is none).
    fn apply_reloaded_auth(&mut self) {
        let Some(a) = &mut self.auth else {
            return;
        };
        let g = a.shared.generation();
        if g != a.generation {
            a.generation = g;
            self.shard.set_auth(a.shared.current());
        }
    }

    /// The verifier's answers.
    fn drain_auth(&mut self, now: Instant) {
        let Some(a) = &mut self.auth else {
            return;
        };
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
        // The fence first, read from the shared status: it must reach the loop
        // within the lease's margin whatever the cluster thread's queues hold.
        shard.follow_cluster_fence(now);
        link.drain(MESH_BATCH, |m| shard.on_cluster_in(m, now));
    }

    fn drain_mesh(&mut self, now: Instant) {
        let mut adopts = Vec::new();
        self.drain_mesh_into(now, &mut adopts);
        for a in adopts {
            self.on_adopt(a, now);
        }
    }

    /// One batch from the mesh; hand-offs are left in `adopts` for `on_adopt`.
    fn drain_mesh_into(&mut self, now: Instant, adopts: &mut Vec<Adopt>) {
        let Worker {
            shard,
            mesh,
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
            } => adopts.push((from, handoff, transfer, tls)),
        });
        for (from, scrape, snapshot) in replies {
            self.on_stats_reply(from, scrape, *snapshot);
        }
    }

    /// A connection handed over by loop `from`: adopted now if its socket is here, else
    /// it waits for the socket.
    fn on_adopt(&mut self, (from, handoff, transfer, tls): Adopt, now: Instant) {
        let Worker {
            io,
            shard,
            conns,
            by_sock,
            live,
            waiting_handoffs,
            report,
            shutting_down,
            draining,
            tls: tls_io,
            ..
        } = self;
        report.handoffs_in += 1;
        tracing::debug!(shard = shard.id(), from, ?transfer, "handoff received");
        match io.adopt(transfer) {
            Some(sock) if *shutting_down => io.close(sock),
            Some(sock) => Self::adopt_conn(
                io,
                shard,
                conns,
                by_sock,
                live,
                sock,
                *handoff,
                tls,
                &mut tls_io.by_conn,
                draining,
                now,
            ),
            None => waiting_handoffs.insert(transfer, (handoff, tls), now),
        }
    }

    /// A connect storm grows the hand-off tables to the number of hand-offs in flight;
    /// once they are empty again, a loop about to block gives that memory back.
    fn shrink_handoff_tables(&mut self) {
        shrink_emptied(&mut self.outgoing);
        self.waiting_handoffs.shrink();
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
