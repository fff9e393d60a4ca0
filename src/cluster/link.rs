//! The cluster thread: one NATS connection (async-nats on a current-thread tokio
//! runtime) per node, joined to the event loops by bounded queues only, so a loop never
//! waits on the network or on NATS.
//!
//! Its main task never awaits a NATS write either (review10 H1): async-nats stops
//! reading its command queue while it reconnects, so a write awaited there would
//! park the task that delivers the fence, answers claims and sees the stop.
//! Publishes go to the writer task (`nats_writer`) through a bounded queue; the
//! rest (subscriptions, replies, copies sent to another node) are tasks of their
//! own, each bounded in time.
//!
//! The queues to and from the loops are in `bridge.rs`.
//!
//! This thread owns the interest table (NATS subscriptions follow it), the
//! de-duplication window, the retained KV bucket (a writer task keeps one node's puts
//! in order; a watch feeds every loop's replica), session claims and takeover
//! requests (`sessions.rs`) and the connection state that `/healthz` and `/metrics`
//! read.

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future, IntoFuture};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};

use super::bridge::{ClusterStatus, Doorbell, LoopLink, FROM_LOOP_MAX, TO_LOOP_MAX};
use super::headers::{self, MetaRef};
use super::health::JsPart;
use super::interest::{InterestChange, InterestKey, InterestTable};
use super::retained::{RetainedFeed, CLUSTER_ORIGIN};
use super::sessions::{self, Claims};
use super::subject::{filter_subjects, queue_group, subject_topic, topic_subject, QosClass};
use super::wills::{self, Wills};
use crate::config::Config;
use crate::io::Remote;
use crate::ring::{self as spsc, Consumer, Producer};
use crate::session::{Message, NONE};
use crate::shard::{AckToken, ClusterIn, ClusterOut, SessionClaim, ShardMsg, SharedTarget};

/// Messages from NATS subscriptions waiting for the main task.
const INBOUND_MAX: usize = 8192;
/// (origin, id) pairs remembered to drop a second copy of one message (`SeenWindow`).
const DEDUP_WINDOW: usize = 65_536;
/// Taken wills remembered (`State::will_seen`): a dead taker's successor publishes
/// one again `dead_after` or more later, past what `DEDUP_WINDOW` holds under load,
/// so wills have a window of their own, which only wills fill.
const WILL_DEDUP_WINDOW: usize = 4096;
/// Messages handed to loops before they are woken (one wake per burst, not per message).
const WAKE_BURST: usize = 256;
/// The stream that stores QoS 1/2 messages (subjects `mq.1.>`) before their PUBACK.
pub const QOS_STREAM: &str = "RINGMQ_QOS1";
/// How long the QoS stream keeps a message: long enough for a replay after a
/// partition (not in this version), bounded so the stream cannot grow for ever.
const QOS_STREAM_MAX_AGE: Duration = Duration::from_secs(3600);
const QOS_STREAM_MAX_BYTES: i64 = 1 << 30;
/// JetStream acks waiting for the main task (it reads them at every turn).
const ACKS_MAX: usize = 8192;
/// Publishes made but not yet written to NATS (gathered in `State::outgoing`, then
/// in the writer task's hands). Past it a QoS 0 copy is dropped and counted
/// (`forward_dropped`), as the loops drop theirs when the cluster thread is slow; a
/// QoS 1/2 publish is always queued: its publisher waits for the PUBACK, so their
/// number is bounded by the publishers' in-flight windows. The main task itself
/// never waits for the writer, so claims, wills and fences never queue behind a
/// flood (they did when it stopped taking loop turns while the writer was behind).
pub(super) const FORWARD_BACKLOG_MAX: usize = 16_384;
/// Batches handed to the writer task: one it writes and one ready. While both are
/// taken the main task gathers the next in `State::outgoing`, so the slower the
/// writer, the larger (and cheaper per message) its batches.
const WRITE_BATCHES: usize = 2;
/// Bound on one write of the writer task, and on a reply or a session's copies sent
/// to another node: past it the connection is taken as stuck.
const WRITE_MAX: Duration = Duration::from_secs(2);
/// How long a QoS 1/2 publish may wait for JetStream's ack, re-published when the
/// connection was lost meanwhile (a failover to another server: review10 M7) or
/// JetStream refused it (no stream leader yet), before its publisher is refused.
/// Long enough to ride over a stream leader election after a nats-server dies
/// (nats-server's Raft election timeout is 4-9 s); each attempt is bounded by
/// async-nats's own JetStream timeout (5 s).
const QOS_STORE_MAX: Duration = Duration::from_secs(15);
/// Session claims answered and takeover requests waiting for the main task, and
/// takeover requests waiting for their loop's answer; past it a request is answered
/// "busy" at once (`REPLY_BUSY`), and its sender asks again.
const SESSIONS_MAX: usize = 4096;
/// Claimed answers, takeover requests and dead nodes' wills waiting for room in one
/// loop's ring; while any loop has this many, the sources feeding them are not read
/// (their senders wait in their own tasks, NATS holds the rest).
pub(super) const PENDING_IN_MAX: usize = SESSIONS_MAX;
/// Bound on a graceful stop's last forwarding of the loops' output and its withdrawal
/// of this node's wills entries.
const STOP_WILLS_MAX: Duration = Duration::from_secs(3);
/// Bound on the last flush at a graceful stop (what the stop forwarded to NATS).
const STOP_FLUSH_MAX: Duration = Duration::from_secs(1);
/// How long after its own interest is on NATS a new owner waits before it confirms a
/// hand-over (the old node ends the session then). The confirmation's own answer
/// bound (`FETCH_TIMEOUT`, 2 s) starts after this wait.
const CONFIRM_GRACE: Duration = Duration::from_secs(1);
/// Bound on the flush that puts a loaded session's subscriptions on NATS before its
/// hand-over is confirmed.
const CONFIRM_FLUSH_MAX: Duration = Duration::from_secs(2);

/// The running cluster thread, held by `main`.
pub struct ClusterThread {
    handle: Option<JoinHandle<()>>,
    stop: Arc<Notify>,
    /// Closed when the thread ends (its sender is dropped with the thread's state).
    ended: std::sync::mpsc::Receiver<()>,
    pub status: Arc<ClusterStatus>,
}

/// Bound on `ClusterThread::stop`: the thread's own stop bounds and a margin.
const STOP_MAX: Duration = Duration::from_secs(5);

impl ClusterThread {
    /// Asks the thread to stop (after flushing what NATS still has to send) and
    /// waits for it, at most `STOP_MAX`: SIGTERM never hangs on NATS (review10 H1).
    pub fn stop(mut self) {
        self.stop.notify_one();
        match self.ended.recv_timeout(STOP_MAX) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                tracing::warn!("cluster: thread did not stop within {STOP_MAX:?}; left behind");
            }
            _ => {
                if let Some(h) = self.handle.take() {
                    let _ = h.join();
                }
            }
        }
    }
}

/// A random node name, for a config that sets none.
fn random_name() -> String {
    use std::hash::BuildHasher;
    let r = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    format!("ringmq-{r:016x}")
}

/// Starts the cluster thread for `loops` event loops. The NATS connection is made in
/// the background (and retried for ever): a node starts and serves its local clients
/// whether or not NATS is up.
pub fn start(cfg: &Config, loops: usize) -> io::Result<(ClusterThread, Vec<LoopLink>)> {
    let node = if cfg.cluster_node_name.is_empty() {
        random_name()
    } else {
        cfg.cluster_node_name.clone()
    };
    let incarnation = headers::new_incarnation();
    let status = Arc::new(ClusterStatus {
        node: node.clone(),
        origin: headers::origin_of(&node, incarnation),
        kv_replicas: cfg.cluster_kv_replicas,
        ..ClusterStatus::default()
    });
    let bell = Arc::new(Doorbell::default());
    let mut producers = Vec::with_capacity(loops);
    let mut consumers = Vec::with_capacity(loops);
    let mut wakes = Vec::with_capacity(loops);
    let mut links = Vec::with_capacity(loops);
    for _ in 0..loops {
        let (p, c) = spsc::channel(TO_LOOP_MAX);
        let (out_p, out_c) = spsc::channel(FROM_LOOP_MAX);
        let wake = Arc::new(OnceLock::new());
        producers.push(p);
        consumers.push(out_c);
        wakes.push(wake.clone());
        links.push(LoopLink {
            out: out_p,
            rx: c,
            bell: bell.clone(),
            wake,
            status: status.clone(),
            pending: ClusterOut::default(),
        });
    }
    let stop = Arc::new(Notify::new());
    let (ended_tx, ended) = std::sync::mpsc::channel::<()>();
    let settings = Settings::from(cfg, node, incarnation);
    let thread_status = status.clone();
    let thread_stop = stop.clone();
    let handle = std::thread::Builder::new()
        .name("ringmq-cluster".into())
        .spawn(move || {
            // However the thread ends (even by a panic), the loops stop waiting for it.
            struct Stopped(Arc<ClusterStatus>, std::sync::mpsc::Sender<()>);
            impl Drop for Stopped {
                fn drop(&mut self) {
                    self.0.stopped.store(true, Ordering::Release);
                    let _ = self.1.send(());
                }
            }
            let _stopped = Stopped(thread_status.clone(), ended_tx);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("cluster: no tokio runtime: {e}");
                    return;
                }
            };
            let state = State {
                settings,
                status: thread_status,
                producers,
                wakes,
                interest: InterestTable::new(),
                subs: HashMap::new(),
                seen: headers::SeenWindow::new(DEDUP_WINDOW),
                will_seen: headers::SeenWindow::new(WILL_DEDUP_WINDOW),
                outgoing: Outgoing::default(),
                shared_rr: 0,
                to_wake: vec![false; loops],
                woken_burst: 0,
                queue_client: None,
                pending_acks: VecDeque::new(),
                pending_in: PendingIn::new(loops),
                replies: HashMap::new(),
                next_reply: 0,
                claiming: HashMap::new(),
                claim_ids: HashMap::new(),
                deferred: HashMap::new(),
                deferred_count: 0,
            };
            rt.block_on(run(state, consumers, bell, thread_stop));
        })?;
    Ok((
        ClusterThread {
            handle: Some(handle),
            stop,
            ended,
            status,
        },
        links,
    ))
}

/// What the thread needs of the configuration.
struct Settings {
    urls: Vec<String>,
    node: String,
    /// This process's incarnation (wills entries, `Mqtt-Origin`), random per process.
    incarnation: u64,
    /// `Mqtt-Origin` of this node's forwarded messages (`headers::origin_of`).
    origin: String,
    user: String,
    password: String,
    creds_file: Option<String>,
    inbox_prefix: String,
    tls_ca_file: Option<String>,
    tls_cert_file: Option<String>,
    tls_key_file: Option<String>,
    kv_replicas: usize,
    /// Which loop owns a client id's session (as the loops place it).
    placement_seed: u64,
    timings: wills::Timings,
}

impl Settings {
    fn from(cfg: &Config, node: String, incarnation: u64) -> Settings {
        Settings {
            urls: cfg.cluster_nats.clone(),
            origin: headers::origin_of(&node, incarnation),
            node,
            incarnation,
            user: cfg.cluster_nats_user.clone(),
            password: cfg.cluster_nats_password.clone(),
            creds_file: cfg.cluster_nats_creds_file.clone(),
            inbox_prefix: cfg.cluster_nats_inbox_prefix.clone(),
            tls_ca_file: cfg.cluster_nats_tls_ca_file.clone(),
            tls_cert_file: cfg.cluster_nats_tls_cert_file.clone(),
            tls_key_file: cfg.cluster_nats_tls_key_file.clone(),
            kv_replicas: cfg.cluster_kv_replicas,
            placement_seed: cfg.placement_seed.unwrap_or(0),
            timings: wills::Timings::from_ms(
                cfg.cluster_beat_ms,
                cfg.cluster_fence_after_ms,
                cfg.cluster_dead_after_ms,
            ),
        }
    }
}

/// A message from one of the node's NATS subscriptions, with the key it was made for.
type Inbound = (Arc<InterestKey>, async_nats::Message);

struct State {
    settings: Settings,
    status: Arc<ClusterStatus>,
    producers: Vec<Producer<ClusterIn>>,
    /// Acks that found their loop's ring full, retried at every wake (never dropped).
    pending_acks: VecDeque<(usize, AckToken, bool)>,
    /// Session claims answered and takeover requests for loops, never dropped
    /// (a CONNECT, here or on another node, waits for each); retried at every wake.
    pending_in: PendingIn,
    /// Takeover requests handed to a loop, by id: where its answer goes, and for a
    /// takeover (not a confirmation) the client id and the asker's epoch, so a
    /// hand-over never confirmed can be watched (`Claims::watch_handover`).
    replies: HashMap<u64, (async_nats::Subject, Option<(Bytes, u64)>)>,
    next_reply: u64,
    /// Claims in flight per client id, and which id each (loop, conn, generation)
    /// claims: a takeover request for such an id waits in `deferred` (at most
    /// `SESSIONS_MAX` in all) until the claim is answered (`push_claimed`).
    claiming: HashMap<Bytes, usize>,
    claim_ids: HashMap<(usize, crate::shard::ConnId, u32), Bytes>,
    deferred: HashMap<Bytes, Vec<async_nats::Message>>,
    deferred_count: usize,
    wakes: Vec<Arc<OnceLock<Arc<Remote>>>>,
    interest: InterestTable,
    /// The forwarding tasks of each key's subscriptions (aborting one drops its
    /// `Subscriber`, which unsubscribes).
    subs: HashMap<InterestKey, Vec<tokio::task::JoinHandle<()>>>,
    seen: headers::SeenWindow,
    /// Taken wills seen here, from NATS or from this node's sweeper
    /// (`WILL_DEDUP_WINDOW`, `on_taken_will`).
    will_seen: headers::SeenWindow,
    /// Publishes on their way to the writer task.
    outgoing: Outgoing,
    shared_rr: usize,
    to_wake: Vec<bool>,
    woken_burst: usize,
    /// The connection with echo, for queue subscriptions (see `connect`).
    queue_client: Option<async_nats::Client>,
}

/// `echo`: whether this connection gets the node's own publishes back. The main one
/// does not (no-echo) and its state is the node's (`connected`); the one holding
/// queue subscriptions does, because NATS must be able to pick this node as a
/// shared group's member for its own publishes. Both count their slow-consumer
/// drops.
async fn connect(
    s: &Settings,
    status: Arc<ClusterStatus>,
    echo: bool,
) -> Result<async_nats::Client, String> {
    let mut o = async_nats::ConnectOptions::new()
        .name(format!("ringmq {}", s.node))
        .retry_on_initial_connect()
        .max_reconnects(None);
    if !s.user.is_empty() {
        o = o.user_and_password(s.user.clone(), s.password.clone());
    }
    if let Some(f) = &s.creds_file {
        o = o
            .credentials_file(f)
            .await
            .map_err(|e| format!("cluster_nats_creds_file {f}: {e}"))?;
    }
    if !s.inbox_prefix.is_empty() {
        // Replies, JetStream acks and KV watch deliveries all come on inboxes under
        // it, so NATS permissions can give them to this node's user alone.
        o = o.custom_inbox_prefix(&s.inbox_prefix);
    }
    if let Some(ca) = &s.tls_ca_file {
        o = o.add_root_certificates(ca.into()).require_tls(true);
    }
    if let (Some(c), Some(k)) = (&s.tls_cert_file, &s.tls_key_file) {
        o = o.add_client_certificate(c.into(), k.into());
    }
    if !echo {
        o = o.no_echo();
    }
    let main = !echo;
    o = o.event_callback(move |ev| {
        let st = status.clone();
        async move {
            match ev {
                async_nats::Event::SlowConsumer(_) => {
                    st.slow_consumers.fetch_add(1, Ordering::Relaxed);
                }
                _ if !main => tracing::debug!("cluster (queue connection): {ev}"),
                async_nats::Event::Connected => {
                    st.connected.store(true, Ordering::Relaxed);
                    tracing::info!("cluster: connected to NATS");
                }
                async_nats::Event::Disconnected => {
                    st.connected.store(false, Ordering::Relaxed);
                    st.disconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "cluster: lost NATS; serving local clients only until it returns"
                    );
                }
                other => tracing::info!("cluster: {other}"),
            }
        }
    });
    o.connect(s.urls.clone())
        .await
        .map_err(|e| format!("cluster_nats {}: {e}", s.urls.join(",")))
}

async fn run(
    mut st: State,
    mut from_loops: Vec<Consumer<ClusterOut>>,
    bell: Arc<Doorbell>,
    stop: Arc<Notify>,
) {
    let conns = (
        connect(&st.settings, st.status.clone(), false).await,
        connect(&st.settings, st.status.clone(), true).await,
    );
    let (client, queue_client) = match conns {
        (Ok(c), Ok(q)) => (c, q),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cluster: {e}; this node runs alone");
            return;
        }
    };
    st.queue_client = Some(queue_client);
    // The loops size what they forward by the server's `max_payload` (review10 H3).
    tokio::spawn(watch_max_payload(client.clone(), st.status.clone()));
    let (in_tx, mut in_rx) = mpsc::channel::<Inbound>(INBOUND_MAX);
    let retained_feed = RetainedFeed::default();
    let (watch_tx, mut watch_rx) = mpsc::channel::<kv::Entry>(INBOUND_MAX);
    let js = jetstream::new(client.clone());
    let (ack_tx, mut ack_rx) = mpsc::channel::<(usize, AckToken, bool)>(ACKS_MAX);
    let replicas = st.settings.kv_replicas;
    let alive_nodes = wills::AliveNodes::default();
    let claims = Claims {
        client: client.clone(),
        js: js.clone(),
        replicas,
        node: st.settings.node.clone(),
        status: st.status.clone(),
        store: Arc::new(OnceLock::new()),
        local: Default::default(),
        epochs: Default::default(),
        attempts: Default::default(),
        confirmed: Default::default(),
    };
    let (claimed_tx, mut claimed_rx) = mpsc::channel::<(usize, ClusterIn)>(SESSIONS_MAX);
    let (takeover_tx, mut takeover_rx) = mpsc::channel::<async_nats::Message>(SESSIONS_MAX);
    let incarnation = st.settings.incarnation;
    let w = Wills {
        js: js.clone(),
        replicas,
        node: st.settings.node.clone(),
        me: wills::incarnation_of(&st.settings.node, incarnation),
        incarnation,
        status: st.status.clone(),
        timings: st.settings.timings,
        alive_nodes: alive_nodes.clone(),
        claims: claims.clone(),
    };
    let will_feed = wills::WillFeed::default();
    let (orphan_tx, mut orphan_rx) = mpsc::channel::<Message>(SESSIONS_MAX);
    let (taken_will_tx, mut taken_will_rx) = mpsc::channel::<wills::TakenWill>(SESSIONS_MAX);
    let (taken_tx, mut taken_rx) = mpsc::channel::<Bytes>(SESSIONS_MAX);
    let reconcile = Arc::new(Notify::new());
    let (lease_tx, lease_rx) =
        tokio::sync::watch::channel(wills::Lease::new(st.settings.timings.fence_after));
    let (fence_tx, mut fence_rx) = mpsc::channel::<bool>(4);
    let (fencer_tx, mut fencer_rx) = mpsc::channel::<bool>(4);
    tokio::spawn(wills::fencer(
        lease_rx.clone(),
        fencer_tx,
        st.status.clone(),
    ));
    // The fencer has set `ClusterStatus::fenced`; every loop follows it at its next
    // turn (`Shard::follow_cluster_fence`), so the loops are woken from here, not
    // by the main task: the fence never waits behind it (review10 H1). The main
    // task's `ClusterIn::Fence` is the second path (a full queue only drops a
    // nudge the status already carries).
    let fence_wakes = st.wakes.clone();
    tokio::spawn(async move {
        while let Some(on) = fencer_rx.recv().await {
            for w in &fence_wakes {
                if let Some(r) = w.get() {
                    r.wake();
                }
            }
            let _ = fence_tx.try_send(on);
        }
    });
    let writer = tokio::spawn(w.clone().writer(
        will_feed.clone(),
        reconcile.clone(),
        taken_tx,
        orphan_tx.clone(),
        lease_rx,
    ));
    tokio::spawn(w.clone().liveness(taken_will_tx, reconcile, lease_tx));
    let state_feed = wills::WillFeed::default();
    tokio::spawn(claims.clone().state_writer(state_feed.clone()));
    tokio::spawn(takeover_requests(
        client.clone(),
        sessions::takeover_subject(&st.settings.node),
        takeover_tx,
    ));
    tokio::spawn(qos_stream(js.clone(), replicas, st.status.clone()));
    // Made at start, not at the first CONNECT: `/healthz` waits for every bucket.
    tokio::spawn(sessions_bucket(claims.clone()));
    tokio::spawn(reconciler(
        claims.clone(),
        claimed_tx.clone(),
        st.settings.placement_seed,
        st.producers.len(),
    ));
    let status = st.status.clone();
    tokio::spawn(super::retained::writer(
        js.clone(),
        replicas,
        retained_feed.clone(),
        status.clone(),
    ));
    tokio::spawn(super::retained::watch(
        js.clone(),
        replicas,
        watch_tx,
        status,
    ));
    let (write_tx, write_rx) = mpsc::channel::<Vec<Publish>>(WRITE_BATCHES);
    tokio::spawn(nats_writer(
        client.clone(),
        js.clone(),
        write_rx,
        ack_tx.clone(),
        st.status.clone(),
        st.outgoing.handed.clone(),
        st.settings.origin.clone(),
    ));
    let loops_io = LoopsIo {
        client: client.clone(),
        claims: claims.clone(),
        claimed_tx: claimed_tx.clone(),
        in_tx: in_tx.clone(),
        retained: retained_feed.clone(),
        will_feed: will_feed.clone(),
        state_feed: state_feed.clone(),
        alive_nodes,
    };
    loop {
        tokio::select! {
            biased;
            _ = stop.notified() => break,
            _ = poll_fn(|cx| bell.poll(cx)) => {
                st.drain_loops(&mut from_loops, &loops_io);
                st.hand_to_writer(&write_tx);
                set_forward_full(&st.status, st.outgoing.backlog() >= FORWARD_BACKLOG_MAX);
                // Nothing above awaits, and the loops ring the bell every turn: let
                // the writer and async-nats's own tasks run once this task has used
                // its turn's budget (a yield at every round cost the flood path a
                // poll of the IO driver per round).
                tokio::task::coop::consume_budget().await;
            }
            // The writer took a batch: hand it what gathered meanwhile.
            p = write_tx.reserve(), if !st.outgoing.is_empty() => {
                match p {
                    Ok(p) => st.hand_batch(p),
                    Err(_) => st.fail_outgoing(),
                }
            }
            // Not read while a loop's queue is long: QoS 1/2 messages wait there for
            // room in its ring (review10 M2), and NATS holds the rest (past
            // async-nats's own bound, counted as slow-consumer drops).
            m = in_rx.recv(), if st.pending_in.has_room() => {
                let Some((key, m)) = m else { continue };
                st.on_nats(&key, m);
                while st.pending_in.has_room() {
                    let Ok((key, m)) = in_rx.try_recv() else { break };
                    st.on_nats(&key, m);
                    if st.woken_burst >= WAKE_BURST {
                        st.wake();
                    }
                }
                st.wake();
            }
            // Acks that found a ring full: the loop drains it every turn, so retry soon.
            _ = tokio::time::sleep(Duration::from_millis(5)),
                if !st.pending_acks.is_empty() || !st.pending_in.is_empty() => {
                st.wake();
            }
            a = ack_rx.recv() => {
                let Some(a) = a else { continue };
                st.pending_acks.push_back(a);
                while let Ok(a) = ack_rx.try_recv() {
                    st.pending_acks.push_back(a);
                }
                st.wake();
            }
            c = claimed_rx.recv(), if st.pending_in.has_room() => {
                let Some((l, m)) = c else { continue };
                st.push_claimed(&client, &claims, l, m);
                while st.pending_in.has_room() {
                    let Ok((l, m)) = claimed_rx.try_recv() else { break };
                    st.push_claimed(&client, &claims, l, m);
                }
                st.wake();
            }
            // Never held back by `has_room`: the fence must reach every loop before
            // any survivor may take this node for dead.
            f = fence_rx.recv() => {
                let Some(on) = f else { continue };
                for l in 0..st.producers.len() {
                    st.pending_in.push(l, ClusterIn::Fence { on });
                }
                st.wake();
            }
            m = orphan_rx.recv(), if st.pending_in.has_room() => {
                let Some(m) = m else { continue };
                // Any loop can publish it: the one with the least waiting.
                let l = st.pending_in.shortest();
                st.pending_in.push(l, ClusterIn::Will(Arc::new(m)));
                st.wake();
            }
            // Published to NATS by this node's sweeper; here to its own subscribers.
            w = taken_will_rx.recv(), if st.pending_in.has_room() => {
                let Some(w) = w else { continue };
                st.on_taken_will(w, &retained_feed);
                st.wake();
            }
            c = taken_rx.recv(), if st.pending_in.has_room() => {
                let Some(client_id) = c else { continue };
                let l = crate::shard::owner_shard(
                    st.settings.placement_seed,
                    &client_id,
                    st.producers.len(),
                );
                st.pending_in.push(l, ClusterIn::WillTaken { client_id });
                st.wake();
            }
            m = takeover_rx.recv(), if st.pending_in.has_room() => {
                let Some(m) = m else { continue };
                st.on_takeover_request(&client, &claims, m);
                while st.pending_in.has_room() {
                    let Ok(m) = takeover_rx.try_recv() else { break };
                    st.on_takeover_request(&client, &claims, m);
                }
                st.wake();
            }
            e = watch_rx.recv(), if st.pending_in.has_room() => {
                let Some(e) = e else { continue };
                st.on_retained(e, &retained_feed);
                while st.pending_in.has_room() {
                    let Ok(e) = watch_rx.try_recv() else { break };
                    st.on_retained(e, &retained_feed);
                    if st.woken_burst >= WAKE_BURST {
                        st.wake();
                    }
                }
                st.wake();
            }
        }
    }
    // A graceful stop: the loops have ended and their last output (closed
    // connections' wills, published or gone) is in the rings. Forward it, then let no
    // wills entry of this incarnation outlive the process (`Wills::withdraw_all`).
    let wills_left = async {
        // Under the same bound as the withdrawal (review L5): with NATS away the
        // writer's publishes could block, and SIGTERM must not hang on them.
        st.drain_loops(&mut from_loops, &loops_io);
        if !st.outgoing.is_empty() {
            match write_tx.reserve().await {
                Ok(p) => st.hand_batch(p),
                Err(_) => st.fail_outgoing(),
            }
        }
        while st.outgoing.backlog() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        writer.abort();
        // The writer's changes are moot now: every entry of this incarnation goes.
        let _ = client.flush().await;
        w.withdraw_all().await;
    };
    if tokio::time::timeout(STOP_WILLS_MAX, wills_left)
        .await
        .is_err()
    {
        tracing::warn!(
            "cluster: wills entries not all withdrawn at stop; survivors may publish them"
        );
    }
    writer.abort();
    // Bounded too: with NATS away the flush's PONG never comes.
    let _ = tokio::time::timeout(STOP_FLUSH_MAX, client.flush()).await;
}

/// What `drain_loops` hands on to: NATS, the claim tasks, the writers.
struct LoopsIo {
    client: async_nats::Client,
    claims: Claims,
    claimed_tx: mpsc::Sender<(usize, ClusterIn)>,
    in_tx: mpsc::Sender<Inbound>,
    retained: RetainedFeed,
    will_feed: wills::WillFeed,
    state_feed: wills::WillFeed,
    alive_nodes: wills::AliveNodes,
}

/// Keeps `ClusterStatus::max_payload` at what the connected server announced (a
/// reconnect may reach a server configured otherwise).
async fn watch_max_payload(client: async_nats::Client, status: Arc<ClusterStatus>) {
    loop {
        let announced = client.server_info().max_payload;
        if announced > 0 {
            status
                .max_payload
                .store(announced as u64, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// One publish for the writer task (which takes them in batches, `hand_batch`). Its
/// subject and headers are made by the writer just before it writes them (`wire`):
/// made when the main task gathered it, a batch's were cold in the cache by then,
/// which cost the forwarding path about a third of its rate.
pub(super) struct Publish {
    pub(super) msg: Arc<Message>,
    /// `Mqtt-Id`, numbered by the main task in the order the loops made them.
    pub(super) id: u64,
    pub(super) publisher: Option<headers::Publisher>,
    /// QoS 1/2: the loop and the held PUBACK (PUBREC) waiting for JetStream's ack.
    pub(super) ack: Option<(usize, AckToken)>,
}

/// A publish as NATS takes it.
struct Wire {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

/// A taken will as NATS takes it (`Wills::publish_taken`), under its own identity
/// (`wills::will_origin`, its revision) rather than this node's; `None`: its topic has
/// no NATS subject.
pub(super) fn will_wire(
    origin: &str,
    id: u64,
    msg: &Message,
) -> Option<(String, HeaderMap, Bytes)> {
    wire_of(origin, msg, id, None).map(|w| (w.subject, w.headers, w.payload))
}

/// `None`: the topic has no NATS subject (the loops refuse such topics first).
fn wire(origin: &str, p: &Publish) -> Option<Wire> {
    wire_of(origin, &p.msg, p.id, p.publisher.as_ref())
}

/// See `wire`: message `m` numbered `id` (`Mqtt-Id`), from `publisher` if named.
fn wire_of(
    origin: &str,
    m: &Message,
    id: u64,
    publisher: Option<&headers::Publisher>,
) -> Option<Wire> {
    let subject = topic_subject(&m.topic, QosClass::of(m.qos))?;
    // Names from static strings: a `&str` name is copied into a new allocation per
    // header, and the meta borrows the message, so per message only the values and
    // the map itself are allocated.
    let mut h = HeaderMap::new();
    MetaRef {
        qos: m.qos,
        retain: m.retain,
        origin,
        id,
        properties: &m.properties,
    }
    .encode_each(|name, value| h.insert(HeaderName::from_static(name), value));
    if let Some(publisher) = publisher {
        h.insert(
            HeaderName::from_static(headers::PUBLISHER),
            headers::encode_publisher(publisher),
        );
    }
    Some(Wire {
        subject,
        headers: h,
        payload: m.payload.clone(),
    })
}

/// What becomes of a loop's publish on its way to NATS.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admit {
    /// Made into a `Publish` for the writer task.
    Queue,
    /// A QoS 0 copy NATS is away for, or the writer has no room for (counted).
    Drop,
    /// A QoS 1/2 publish while NATS is away: its publisher is refused at once.
    Refuse,
}

/// The publishes between the loops and the writer task: those gathered since the
/// writer last took a batch, and the count it has taken and not yet written. No IO:
/// the main task admits, gathers and hands over; the writer counts down.
#[derive(Default)]
pub(super) struct Outgoing {
    gathered: Vec<Publish>,
    handed: Arc<AtomicUsize>,
}

impl Outgoing {
    /// Publishes made and not yet written to NATS.
    pub(super) fn backlog(&self) -> usize {
        self.gathered.len() + self.handed.load(Ordering::Relaxed)
    }

    /// `held`: a QoS 1/2 publish whose PUBACK waits for it, always queued while
    /// NATS is there (bounded by its publishers' in-flight windows). A QoS 0 copy
    /// is dropped past `FORWARD_BACKLOG_MAX`, before its subject and headers are
    /// made.
    pub(super) fn admit(&self, connected: bool, held: bool) -> Admit {
        match (connected, held) {
            (false, true) => Admit::Refuse,
            (false, false) => Admit::Drop,
            (true, true) => Admit::Queue,
            (true, false) if self.backlog() < FORWARD_BACKLOG_MAX => Admit::Queue,
            (true, false) => Admit::Drop,
        }
    }

    pub(super) fn push(&mut self, p: Publish) {
        self.gathered.push(p);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.gathered.is_empty()
    }

    /// What gathered, for the writer task, which counts it down once written
    /// (`written`).
    pub(super) fn take(&mut self) -> Vec<Publish> {
        // The next batch is likely as large: one allocation, not a chain of them.
        let next = Vec::with_capacity(self.gathered.len());
        let batch = std::mem::replace(&mut self.gathered, next);
        self.handed.fetch_add(batch.len(), Ordering::Relaxed);
        batch
    }

    pub(super) fn written(handed: &AtomicUsize, n: usize) {
        handed.fetch_sub(n, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub(super) fn written_for_test(&self, n: usize) {
        Self::written(&self.handed, n);
    }
}

fn nats_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Writes the loops' publishes to NATS in the order they were made, so the main task
/// never waits on NATS (review10 H1). Each write is bounded by `WRITE_MAX`; once one
/// is not taken in time (async-nats stops reading its queue while it reconnects) or
/// the connection is away, the rest of the batch is not awaited: a QoS 0 copy is
/// dropped, a QoS 1/2 publish left to `store` (which waits for the connection, then
/// refuses its publisher). A QoS 1/2 publish's ack is awaited in a task of its own
/// (`store`), so many are in flight at once.
async fn nats_writer(
    client: async_nats::Client,
    js: jetstream::Context,
    mut rx: mpsc::Receiver<Vec<Publish>>,
    ack_tx: mpsc::Sender<(usize, AckToken, bool)>,
    status: Arc<ClusterStatus>,
    handed: Arc<AtomicUsize>,
    origin: String,
) {
    while let Some(batch) = rx.recv().await {
        let n = batch.len();
        // Read once a batch: the writes themselves notice a connection lost meanwhile.
        let mut up = nats_connected(&client);
        // Counted once a batch, not per message: the loops read `ClusterStatus`
        // at every publish, and a counter bumped here per message kept moving its
        // cache line between their core and this one.
        let (mut forwarded, mut dropped) = (0u64, 0u64);
        for p in batch {
            let Some(ack) = p.ack else {
                // NATS away, or a write not taken in time: the batch's other QoS 0
                // copies are dropped without being made.
                match up.then(|| wire(&origin, &p)).flatten() {
                    Some(w) => {
                        up = write_plain(&client, w).await;
                        if up {
                            forwarded += 1;
                        } else {
                            dropped += 1;
                        }
                    }
                    None => dropped += 1,
                }
                continue;
            };
            match wire(&origin, &p) {
                Some(w) => up = write_held(&client, &js, &ack_tx, &status, w, ack, up).await,
                None => {
                    let _ = ack_tx.send((ack.0, ack.1, false)).await;
                }
            }
        }
        status.forwarded.fetch_add(forwarded, Ordering::Relaxed);
        status.forward_dropped.fetch_add(dropped, Ordering::Relaxed);
        Outgoing::written(&handed, n);
        // Room again: the loops make their QoS 0 copies until the main task, at its
        // next round of the rings, finds the backlog full again.
        set_forward_full(&status, false);
    }
}

/// Sets `ClusterStatus::forward_full` only when it changes: every loop reads it
/// for every plain QoS 0 publish, and a store of the same value each round would
/// still take its cache line from all of them.
fn set_forward_full(status: &ClusterStatus, full: bool) {
    if status.forward_full.load(Ordering::Relaxed) != full {
        status.forward_full.store(full, Ordering::Relaxed);
    }
}

/// Writes a QoS 0 copy; returns whether NATS took it in time.
async fn write_plain(client: &async_nats::Client, w: Wire) -> bool {
    // Polled once before its timer is made: async-nats's queue usually has room,
    // and the timer's clock read per message cost.
    let mut send = std::pin::pin!(client.publish_with_headers(w.subject, w.headers, w.payload));
    let first = poll_fn(|cx| std::task::Poll::Ready(send.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(r) => r.is_ok(),
        std::task::Poll::Pending => tokio::time::timeout(WRITE_MAX, send)
            .await
            .is_ok_and(|r| r.is_ok()),
    }
}

/// Writes QoS 1/2 publish `w` if `up` (NATS took the batch's writes so far) and
/// waits for JetStream's ack in a task of its own (`store`), which releases the held
/// acknowledgement `ack`; returns whether NATS took the publish in time.
async fn write_held(
    client: &async_nats::Client,
    js: &jetstream::Context,
    ack_tx: &mpsc::Sender<(usize, AckToken, bool)>,
    status: &Arc<ClusterStatus>,
    w: Wire,
    ack: (usize, AckToken),
    up: bool,
) -> bool {
    let (from, token) = ack;
    if !up {
        let _ = ack_tx.send((from, token, false)).await;
        return false;
    }
    let deadline = tokio::time::Instant::now() + QOS_STORE_MAX;
    // Read before the publish: a disconnect after it may have lost it.
    let lost = status.disconnects.load(Ordering::Relaxed);
    let first = tokio::time::timeout(
        WRITE_MAX,
        js.publish_with_headers(w.subject.clone(), w.headers.clone(), w.payload.clone()),
    )
    .await
    .ok()
    .and_then(Result::ok);
    let sent = first.is_some();
    if sent {
        status.forwarded.fetch_add(1, Ordering::Relaxed);
    }
    let (client, js, status, tx) = (client.clone(), js.clone(), status.clone(), ack_tx.clone());
    tokio::spawn(async move {
        let stored = store(&client, &js, &status, w, first, lost, deadline).await;
        let _ = tx.send((from, token, stored)).await;
    });
    sent
}

/// Waits for JetStream's ack of `w` (`first`: its publish, `None` if that failed),
/// until `deadline`. A publish that failed, or that the connection was lost after
/// (`ringmq_cluster_disconnects_total` moved past `lost`), is made again once the
/// connection is back: async-nats fails over to another server, and the message
/// must be stored before its PUBACK (review10 M7). A re-publish carries the same
/// `Mqtt-Id`, so a receiver that got the first drops it (`seen_before`).
async fn store(
    client: &async_nats::Client,
    js: &jetstream::Context,
    status: &ClusterStatus,
    w: Wire,
    first: Option<jetstream::context::PublishAckFuture>,
    mut lost: u64,
    deadline: tokio::time::Instant,
) -> bool {
    let mut pending = first;
    loop {
        if let Some(ack) = pending.take() {
            let dropped = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if status.disconnects.load(Ordering::Relaxed) != lost {
                        return;
                    }
                }
            };
            tokio::select! {
                r = ack.into_future() => {
                    if r.is_ok() {
                        return true;
                    }
                    // Refused (no stream yet, no leader): again shortly.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ = dropped => {}
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
        // The connection back, or the deadline.
        while !nats_connected(client) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        lost = status.disconnects.load(Ordering::Relaxed);
        let again =
            js.publish_with_headers(w.subject.clone(), w.headers.clone(), w.payload.clone());
        match tokio::time::timeout_at(deadline, again).await {
            Ok(Ok(ack)) => pending = Some(ack),
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(_) => return false,
        }
    }
}

/// Sends `body` to `subject` (a reply, or a session's copies to another node) in a
/// task of its own, bounded by `WRITE_MAX`: the main task never waits on it. What
/// is not sent is handled as an unanswered request by its asker.
fn send_bounded(client: &async_nats::Client, subject: impl Into<async_nats::Subject>, body: Bytes) {
    let client = client.clone();
    let subject: async_nats::Subject = subject.into();
    tokio::spawn(async move {
        match tokio::time::timeout(WRITE_MAX, client.publish(subject.clone(), body)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("cluster: {subject} not sent: {e}"),
            Err(_) => tracing::warn!("cluster: {subject} not sent within {WRITE_MAX:?}"),
        }
    });
}

/// Makes the QoS stream (retried until NATS answers; another node may make it first).
async fn qos_stream(js: jetstream::Context, replicas: usize, status: Arc<ClusterStatus>) {
    let cfg = jetstream::stream::Config {
        name: QOS_STREAM.to_string(),
        description: Some("ringmq QoS 1/2 messages, stored before their PUBACK".into()),
        subjects: vec![format!("{}.1.>", super::subject::PREFIX)],
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        max_age: QOS_STREAM_MAX_AGE,
        max_bytes: QOS_STREAM_MAX_BYTES,
        discard: jetstream::stream::DiscardPolicy::Old,
        ..Default::default()
    };
    loop {
        let wait = attempt_wait(&status, JsPart::QosStream);
        match answered(wait, js.get_or_create_stream(cfg.clone())).await {
            Ok(_) => {
                jetstream_made(&status, JsPart::QosStream);
                return;
            }
            Err(e) => jetstream_failed(&status, JsPart::QosStream, e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Why an attempt to make a part failed when JetStream did not answer within
/// `attempt_wait` (one text whatever the wait, so it is logged once).
const NO_ANSWER: &str = "no answer from JetStream (a forming NATS cluster answers once \
                         its meta leader is elected)";

/// A JetStream call given `wait` to answer: its error as text, or `NO_ANSWER`.
async fn answered<T, E: ToString>(
    wait: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(wait, call).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(NO_ANSWER.to_string()),
    }
}

/// `JetStreamHealth::attempt_wait`: short while `part` is being made, so a request
/// a forming NATS cluster dropped is sent again soon (review10 M6).
fn attempt_wait(status: &ClusterStatus, part: JsPart) -> Duration {
    status
        .jetstream
        .lock()
        .map_or(super::health::JS_REQUEST_MAX, |j| j.attempt_wait(part))
}

/// The KV bucket `name` (history 1), made when no node made it yet; each call waits
/// `attempt_wait` for JetStream.
pub(super) async fn bucket(
    js: &jetstream::Context,
    name: &str,
    description: &str,
    replicas: usize,
    status: &ClusterStatus,
) -> Option<kv::Store> {
    let part = JsPart::of_bucket(name);
    let wait = part.map_or(super::health::JS_REQUEST_MAX, |p| attempt_wait(status, p));
    match tokio::time::timeout(wait, js.get_key_value(name)).await {
        Ok(Ok(s)) => {
            if let Some(p) = part {
                jetstream_made(status, p);
            }
            return Some(s);
        }
        Ok(Err(_)) => {}
        // No answer at all: a forming cluster; asking to make it would wait too.
        Err(_) => {
            if let Some(p) = part {
                jetstream_failed(status, p, NO_ANSWER.into());
            }
            return None;
        }
    }
    // The stream a KV bucket is, made directly: `create_key_value` first reads the
    // account info, which async-nats 0.46 cannot parse from nats-server 2.9 (Debian
    // bookworm's). Same layout as async-nats's own (history 1, rollups, direct get).
    let cfg = jetstream::stream::Config {
        name: format!("KV_{name}"),
        description: Some(description.into()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    let made = answered(wait, js.get_or_create_stream(cfg))
        .await
        .map(|_| ());
    // Made now, or by another node meanwhile.
    let store = answered(wait, js.get_key_value(name)).await;
    if let Some(p) = part {
        match (&store, made) {
            (Ok(_), _) => jetstream_made(status, p),
            (Err(_), Err(e)) => jetstream_failed(status, p, e),
            (Err(e), Ok(_)) => jetstream_failed(status, p, e.clone()),
        }
    }
    store.ok()
}

fn jetstream_made(status: &ClusterStatus, part: JsPart) {
    if let Ok(mut j) = status.jetstream.lock() {
        let was = j.is_ready();
        j.made(part);
        if !was && j.is_ready() {
            tracing::info!("cluster: JetStream ready (QoS stream and KV buckets)");
        }
    }
}

/// Why a stream or bucket could not be made: logged once per new reason, at warn
/// (JetStream off, more replicas than servers, account limits void the cluster's
/// guarantees; review10 M6), with the setting that most often causes it.
fn jetstream_failed(status: &ClusterStatus, part: JsPart, error: String) {
    // A disconnected client fails every call; that is said on its own. Not recorded
    // either, or the same error once connected would not be news and never logged
    // (the first calls can fail before the connected event is seen).
    if !status.is_connected() {
        return;
    }
    let news = status
        .jetstream
        .lock()
        .is_ok_and(|mut j| j.failed(part, error.clone()));
    if news {
        tracing::warn!(
            "cluster: JetStream stream {} not made (cluster_kv_replicas = {}): {error}; \
             QoS 1/2 durability, session moves and cluster wills wait for it",
            part.stream(),
            status.kv_replicas
        );
    }
}

/// Makes the sessions bucket (retried until it exists).
async fn sessions_bucket(claims: Claims) {
    while claims.bucket().await.is_none() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Takeover requests for this node (`sessions.rs`), handed to the main task; the
/// subscription is made again when it ends (async-nats restores it on reconnect).
async fn takeover_requests(
    client: async_nats::Client,
    subject: String,
    tx: mpsc::Sender<async_nats::Message>,
) {
    loop {
        match client.subscribe(subject.clone()).await {
            Ok(mut sub) => {
                while let Some(m) = sub.next().await {
                    if tx.send(m).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::warn!("cluster: subscribe {subject}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl State {
    /// Every loop's ring, each drained to empty (a ring is read only here). Awaits
    /// nothing: NATS writes go to the writer task or tasks of their own.
    fn drain_loops(&mut self, from_loops: &mut [Consumer<ClusterOut>], io: &LoopsIo) {
        for (from, c) in from_loops.iter_mut().enumerate() {
            // Every turn is taken at once, however far behind the writer is: its
            // claims, wills and fences must not wait behind publishes.
            while let Some(mut out) = c.pop() {
                let asked = std::mem::take(&mut out.claims);
                let handed = std::mem::take(&mut out.handovers);
                let confirms = std::mem::take(&mut out.confirms);
                for (client_id, node, session) in std::mem::take(&mut out.yields) {
                    let body = sessions::encode_merge(&client_id, &session);
                    send_bounded(&io.client, sessions::takeover_subject(&node), body);
                }
                for (client_id, to, session) in std::mem::take(&mut out.hand_backs) {
                    let body = sessions::encode_hand_back(&client_id, to.token, &session);
                    send_bounded(&io.client, sessions::takeover_subject(&to.node), body);
                }
                for client_id in std::mem::take(&mut out.local) {
                    // Served by the loop at once while NATS was away: reconciled
                    // when it returns, as a claim answered "local" would be.
                    io.claims.served_locally(&client_id);
                }
                for (client, save) in std::mem::take(&mut out.states) {
                    // Latest per client, never waited for (as the wills below).
                    io.state_feed
                        .put(client, sessions::stamp_save(save, sessions::unix_ms()));
                }
                // Before the turn's will changes: a fenced connection's pending put
                // is dropped, and the writer settles its will (`WillQueue::fence`).
                for (client, record) in std::mem::take(&mut out.fenced) {
                    let entry = wills::will_entry(&record, io.claims.epoch_of(&client));
                    io.will_feed.fence(client, entry);
                }
                for (client_id, epoch) in std::mem::take(&mut out.reasserts) {
                    reassert(io, from, client_id, epoch);
                }
                for (client, value) in std::mem::take(&mut out.wills) {
                    // Never dropped (a lost "gone" would let a survivor publish a will
                    // that must not fire) and never waited for: the writer may be
                    // stuck on JetStream.
                    // With the epoch its CONNECT claimed (review10 M9).
                    let epoch = io.claims.epoch_of(&client);
                    let value = value.map(|r| wills::will_entry(&r, epoch));
                    io.will_feed.put(client, value);
                }
                self.on_batch(&io.client, from, out, &io.in_tx, &io.retained);
                self.on_sessions(io, from, asked, handed);
                // After `on_batch` spawned the loaded sessions' SUBs: tasks run in
                // spawn order and async-nats's command queue is first come, first
                // served, so each confirmation's flush follows those SUBs.
                on_confirms(&io.client, &io.claims, &io.claimed_tx, from, confirms);
            }
        }
    }

    /// Hands `outgoing` to the writer task if it has room for a batch; if not, the
    /// writer's `reserve` in the main loop hands it over when it has.
    fn hand_to_writer(&mut self, write_tx: &mpsc::Sender<Vec<Publish>>) {
        if self.outgoing.is_empty() {
            return;
        }
        match write_tx.try_reserve() {
            Ok(p) => self.hand_batch(p),
            Err(mpsc::error::TrySendError::Full(())) => {}
            Err(mpsc::error::TrySendError::Closed(())) => self.fail_outgoing(),
        }
    }

    fn hand_batch(&mut self, permit: mpsc::Permit<'_, Vec<Publish>>) {
        permit.send(self.outgoing.take());
    }

    /// The writer task ended (only at the runtime's end): nothing gathered is
    /// written, so a QoS 1/2 publisher is refused, not left waiting.
    fn fail_outgoing(&mut self) {
        let failed = self.outgoing.take();
        Outgoing::written(&self.outgoing.handed, failed.len());
        for p in failed {
            match p.ack {
                Some((from, token)) => self.pending_acks.push_back((from, token, false)),
                None => {
                    self.status.forward_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.wake();
    }

    fn on_batch(
        &mut self,
        client: &async_nats::Client,
        from: usize,
        out: ClusterOut,
        in_tx: &mpsc::Sender<Inbound>,
        retained: &RetainedFeed,
    ) {
        for i in out.interest {
            let key = InterestKey {
                filter: i.filter,
                group: i.group,
            };
            match self.interest.apply(from, &key, i.add) {
                InterestChange::Subscribe => self.subscribe(client, key, in_tx),
                InterestChange::Unsubscribe => {
                    if let Some(tasks) = self.subs.remove(&key) {
                        for t in tasks {
                            t.abort();
                        }
                    }
                }
                InterestChange::None => {}
            }
        }
        self.status
            .subscriptions
            .store(self.subs.len() as u64, Ordering::Relaxed);
        // NATS away: async-nats would only queue the writes until its own queue
        // blocks, so a QoS 0 copy is dropped and a QoS 1/2 publisher refused at once
        // (review10 H1, M7). A QoS 0 copy the writer has no room for is dropped
        // before its subject and headers are made.
        let connected = nats_connected(client);
        // Counted once a turn (the loops read `ClusterStatus` at every publish).
        let mut dropped = 0u64;
        for f in out.publishes {
            self.put_retained(&f.msg, retained);
            if self.outgoing.admit(connected, f.ack.is_some()) == Admit::Queue {
                self.outgoing.push(Publish {
                    msg: f.msg,
                    id: f.id,
                    publisher: f.publisher,
                    ack: f.ack.map(|token| (from, token)),
                });
                continue;
            }
            match f.ack {
                Some(token) => self.pending_acks.push_back((from, token, false)),
                None => dropped += 1,
            }
        }
        if dropped > 0 {
            self.status
                .forward_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
        if !self.pending_acks.is_empty() {
            self.wake();
        }
    }

    /// One task per subject subscribes and then forwards (the SUB waits in the
    /// task, not in the main one, while async-nats reconnects); aborting a task
    /// before its SUB went out leaves nothing subscribed.
    fn subscribe(
        &mut self,
        client: &async_nats::Client,
        key: InterestKey,
        in_tx: &mpsc::Sender<Inbound>,
    ) {
        let shared = Arc::new(key.clone());
        let mut tasks = Vec::new();
        // The loops refuse such a SUBSCRIBE; a session loaded from elsewhere may hold
        // one. NATS would close the connection for it on every reconnect (review10 H3).
        if !super::subject::filter_fits(&key.filter, key.group.as_deref()) {
            self.status.refused_subjects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("cluster: a filter's NATS subject is too long; kept local");
            self.subs.insert(key, tasks);
            return;
        }
        for subject in filter_subjects(&key.filter) {
            let (client, queue) = (client.clone(), self.queue_client.clone());
            let group = key.group.as_ref().map(|g| queue_group(g));
            let tx = in_tx.clone();
            let k = shared.clone();
            tasks.push(tokio::spawn(async move {
                let sub = match (group, queue) {
                    (Some(g), Some(q)) => q.queue_subscribe(subject.clone(), g).await,
                    _ => client.subscribe(subject.clone()).await,
                };
                let mut sub = match sub {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("cluster: subscribe {subject}: {e}");
                        return;
                    }
                };
                while let Some(m) = sub.next().await {
                    if tx.send((k.clone(), m)).await.is_err() {
                        break;
                    }
                }
            }));
        }
        self.subs.insert(key, tasks);
    }

    fn on_nats(&mut self, key: &InterestKey, m: async_nats::Message) {
        let Ok((topic, _)) = subject_topic(m.subject.as_str()) else {
            self.status.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let meta = match &m.headers {
            Some(h) => headers::decode(|n| h.get(n).map(|v| v.as_str())),
            None => Err(super::ClusterError::BadHeader(headers::QOS)),
        };
        let Ok(meta) = meta else {
            self.status.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if key.group.is_none() && self.seen.seen_before(&meta.origin, meta.id) {
            self.status.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // A taken will another survivor published already (its taker died before
        // deleting its mark): per group too, a group's copy is not a plain one's.
        if meta.origin.starts_with(wills::WILL_ORIGIN_PREFIX) {
            let scope = match &key.group {
                None => meta.origin.to_string(),
                Some(g) => format!("{} {}", meta.origin, String::from_utf8_lossy(g)),
            };
            if self.will_seen.seen_before(&scope, meta.id) {
                self.status.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        // A QoS 2 re-send (DUP = 1) on another node after its publisher's node died
        // before the PUBREC: this node delivered the first copy (review10 H5).
        if meta.qos == crate::protocol::QoS::ExactlyOnce {
            let publisher = m
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::PUBLISHER))
                .and_then(|v| headers::decode_publisher(v.as_str()));
            if let Some(p) = publisher {
                if self
                    .status
                    .qos2_resent(&p, &topic, &m.payload, Instant::now())
                {
                    return;
                }
            }
        }
        let msg = Arc::new(Message {
            topic: Bytes::from(topic),
            payload: m.payload,
            qos: meta.qos,
            retain: meta.retain,
            properties: meta.properties,
            arrived_at: Instant::now(),
            // From another node: No Local can never apply here.
            origin_shard: CLUSTER_ORIGIN,
            origin_session: NONE,
            owned: true,
            cluster_key: headers::message_key(&meta.origin, meta.id),
        });
        self.status.received.fetch_add(1, Ordering::Relaxed);
        // A QoS 1/2 message was PUBACKed on its node once stored: it waits here
        // for room rather than being dropped (review10 M2).
        let must_arrive = meta.qos != crate::protocol::QoS::AtMostOnce;
        match &key.group {
            None => {
                // A second matching filter's copy was dropped above, so every loop
                // with interest gets this one and matches its own subscriptions.
                self.push_to_every_loop(&msg, must_arrive);
            }
            Some(g) => {
                // NATS picked this node for the group; pick one of its loops.
                self.shared_rr = self.shared_rr.wrapping_add(1);
                let Some(l) = self.interest.loops(key).nth_wrapping(self.shared_rr) else {
                    // The last local member left while its UNSUB travelled.
                    self.status.shared_dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let target = SharedTarget {
                    filter: key.filter.clone(),
                    group: g.clone(),
                };
                self.push(
                    l,
                    ShardMsg::Publish {
                        msg,
                        plain: false,
                        shared: vec![target],
                        hold: 0,
                    },
                    must_arrive,
                );
            }
        }
    }

    /// A will this node's sweeper took and published to NATS, which does not echo it
    /// here: to this node's own plain subscribers, as a message from another node
    /// (NATS already served the `$share` groups, this node's queue subscriptions
    /// included), unless the same will came from an earlier taker (`will_seen`); and
    /// to the retained bucket if it is retained, as a local retained publish is.
    fn on_taken_will(&mut self, w: wills::TakenWill, retained: &RetainedFeed) {
        if self.will_seen.seen_before(&w.origin, w.id) {
            self.status.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let m = w.msg;
        self.put_retained(&m, retained);
        let must_arrive = m.qos != crate::protocol::QoS::AtMostOnce;
        let msg = Arc::new(Message {
            origin_shard: CLUSTER_ORIGIN,
            origin_session: NONE,
            owned: true,
            cluster_key: headers::message_key(&w.origin, w.id),
            ..m
        });
        self.push_to_every_loop(&msg, must_arrive);
    }

    /// An entry of the retained bucket, for every loop's replica; an older value of
    /// a topic whose write from here still waits is not applied (`retained.rs`).
    fn on_retained(&mut self, e: kv::Entry, waiting: &RetainedFeed) {
        let loaded = e.delta == 0;
        if !waiting.is_waiting(&e.key) {
            let put = e.operation == kv::Operation::Put;
            let age = super::retained::age_ns(&e);
            match super::retained::entry_message(&e.key, put, &e.value, age, Instant::now()) {
                Ok(msg) => {
                    let body = crate::shard::RetainedBody::from_cluster(&msg);
                    self.status.retained_applied.fetch_add(1, Ordering::Relaxed);
                    for l in 0..self.producers.len() {
                        self.push(l, ShardMsg::Retain(body.clone()), true);
                    }
                }
                Err(_) => {
                    self.status.malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // The last entry of the watch's first pass: the replicas hold the bucket.
        if loaded && !self.status.retained_loaded.swap(true, Ordering::AcqRel) {
            tracing::info!("cluster: retained bucket loaded");
        }
    }

    /// A loop's session traffic: claims of its held CONNECTs (each a task, so a slow
    /// bucket never holds up forwarding) and its answers to takeover requests.
    fn on_sessions(
        &mut self,
        io: &LoopsIo,
        from: usize,
        asked: Vec<SessionClaim>,
        handed: Vec<crate::shard::SessionHandover>,
    ) {
        let (client, claims, claimed_tx) = (&io.client, &io.claims, &io.claimed_tx);
        for c in asked {
            *self.claiming.entry(c.client_id.clone()).or_default() += 1;
            self.claim_ids
                .insert((from, c.conn, c.generation), c.client_id.clone());
            let claims = claims.clone();
            let tx = claimed_tx.clone();
            tokio::spawn(async move {
                let answer = claims.claim(&c).await;
                let m = ClusterIn::Claimed {
                    conn: c.conn,
                    generation: c.generation,
                    own: answer.as_ref().is_some_and(|a| a.own),
                    from: answer.as_ref().and_then(|a| a.from.clone()),
                    session: answer.map(|a| a.session),
                };
                let _ = tx.send((from, m)).await;
            });
        }
        for h in handed {
            let Some((to, takeover)) = self.replies.remove(&h.reply) else {
                continue;
            };
            if h.session.is_some() {
                self.status.sessions_handed.fetch_add(1, Ordering::Relaxed);
                if let Some((client_id, epoch)) = takeover {
                    // Kept on this loop until confirmed: watched in case it never is.
                    tokio::spawn(claims.clone().watch_handover(
                        io.alive_nodes.clone(),
                        client_id,
                        h.reply,
                        epoch,
                        claimed_tx.clone(),
                        from,
                    ));
                }
            }
            let body = if h.too_large {
                Bytes::from_static(&[sessions::REPLY_TOO_LARGE])
            } else if h.taken_back {
                Bytes::from_static(&[sessions::REPLY_TAKEN_BACK])
            } else {
                sessions::encode_reply(h.session.as_ref(), h.reply)
            };
            send_bounded(client, to, body);
        }
    }

    /// An answer for loop `l`; a claim's answer also releases the takeover requests
    /// for its id that waited for it (`on_takeover_request`), in that order on the
    /// loop's queue: the loop loads the session first and then gives it up whole.
    fn push_claimed(
        &mut self,
        client: &async_nats::Client,
        claims: &Claims,
        l: usize,
        m: ClusterIn,
    ) {
        let done = match &m {
            ClusterIn::Claimed {
                conn, generation, ..
            } => self.claim_ids.remove(&(l, *conn, *generation)),
            _ => None,
        };
        self.pending_in.push(l, m);
        let Some(id) = done else { return };
        let left = self.claiming.get_mut(&id).map(|n| {
            *n -= 1;
            *n
        });
        if left == Some(0) {
            self.claiming.remove(&id);
            for r in self.deferred.remove(&id).unwrap_or_default() {
                self.deferred_count -= 1;
                self.on_takeover_request(client, claims, r);
            }
        }
    }

    /// Another node's CONNECT takes a session: the loop that owns the client id here
    /// closes it and answers (`on_sessions`). A request for an id this node is itself
    /// claiming right now (two CONNECTs for one id on two nodes at once; this node won
    /// the compare-and-set first) waits until that claim is answered, so the session
    /// this node is fetching is handed on whole instead of "no session".
    fn on_takeover_request(
        &mut self,
        client: &async_nats::Client,
        claims: &Claims,
        m: async_nats::Message,
    ) {
        let Some(request) = sessions::decode_request(&m.payload) else {
            self.status.malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if let sessions::Request::Merge { client_id, session } = request {
            // Copies of a session another node gave up to this one (a reconcile).
            let l = crate::shard::owner_shard(
                self.settings.placement_seed,
                &client_id,
                self.producers.len(),
            );
            self.pending_in
                .push(l, ClusterIn::Delta { client_id, session });
            return;
        }
        if let sessions::Request::HandBack {
            client_id,
            token,
            session,
        } = request
        {
            // The asker of a hand-over this node took back gives its session up.
            let l = crate::shard::owner_shard(
                self.settings.placement_seed,
                &client_id,
                self.producers.len(),
            );
            self.pending_in.push(
                l,
                ClusterIn::HandBack {
                    client_id,
                    token,
                    session,
                },
            );
            return;
        }
        let Some(reply) = m.reply.clone() else { return };
        if let sessions::Request::Takeover { client_id, .. } = &request {
            if self.claiming.contains_key(client_id) && self.deferred_count < SESSIONS_MAX {
                self.deferred_count += 1;
                tracing::debug!(
                    "cluster: takeover request for {:?} waits for this node's own claim",
                    String::from_utf8_lossy(client_id)
                );
                self.deferred.entry(client_id.clone()).or_default().push(m);
                return;
            }
        }
        if let sessions::Request::Takeover {
            client_id, epoch, ..
        } = &request
        {
            if claims.is_stale(client_id, *epoch) {
                // This node claimed the id after the asker did: the session stays.
                tracing::info!(
                    "cluster: stale takeover request for {:?} (epoch {epoch}) refused",
                    String::from_utf8_lossy(client_id)
                );
                send_bounded(client, reply, sessions::encode_reply(None, 0));
                return;
            }
        }
        if self.replies.len() >= SESSIONS_MAX {
            // Nothing done with it: "busy", which its sender asks again (a
            // confirmation answered "no session" would never be, and its delta be
            // lost; review L1). The session stays on its loop meanwhile.
            send_bounded(client, reply, Bytes::from_static(&[sessions::REPLY_BUSY]));
            return;
        }
        let (client_id, clean, epoch) = match request {
            sessions::Request::Takeover {
                client_id,
                clean,
                epoch,
            } => (client_id, clean, epoch),
            sessions::Request::Confirm { client_id, token } => {
                // The asker holds the session: its lapse watch can end.
                claims.note_confirmed(token);
                self.next_reply += 1;
                let id = self.next_reply;
                self.replies.insert(id, (reply, None));
                let l = crate::shard::owner_shard(
                    self.settings.placement_seed,
                    &client_id,
                    self.producers.len(),
                );
                self.pending_in.push(
                    l,
                    ClusterIn::Confirmed {
                        client_id,
                        token,
                        reply: id,
                        // The reply's tag and id: 9 bytes (as for a takeover).
                        max_bytes: client.server_info().max_payload.saturating_sub(9),
                    },
                );
                return;
            }
            sessions::Request::Merge { .. } | sessions::Request::HandBack { .. } => return,
        };
        tracing::debug!(
            "cluster: takeover request for {:?} handed to its loop",
            String::from_utf8_lossy(&client_id)
        );
        self.next_reply += 1;
        let id = self.next_reply;
        self.replies
            .insert(id, (reply, Some((client_id.clone(), epoch))));
        // What one NATS message can carry on this connection (the reply's tag and id: 9 bytes).
        let max_bytes = client.server_info().max_payload.saturating_sub(9);
        let l = crate::shard::owner_shard(
            self.settings.placement_seed,
            &client_id,
            self.producers.len(),
        );
        self.pending_in.push(
            l,
            ClusterIn::Takeover {
                client_id,
                clean,
                reply: id,
                max_bytes,
            },
        );
    }

    /// A retained publish of this node (or a will it took) to the retained bucket:
    /// an empty payload clears the topic; a full feed counts the drop.
    fn put_retained(&self, m: &Message, retained: &RetainedFeed) {
        if !m.retain {
            return;
        }
        let key = headers::retained_key(&m.topic);
        let value = (!m.payload.is_empty())
            .then(|| Bytes::from(headers::encode_retained(m.qos, &m.properties, &m.payload)));
        if !retained.put(key, value) {
            self.status.retained_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `msg` to every loop with interest, each matching its own subscriptions.
    fn push_to_every_loop(&mut self, msg: &Arc<Message>, must_arrive: bool) {
        let loops = self.interest.any_loops();
        for l in loops.iter() {
            self.push(
                l,
                ShardMsg::Publish {
                    msg: msg.clone(),
                    plain: true,
                    shared: Vec::new(),
                    hold: 0,
                },
                must_arrive,
            );
        }
    }

    /// Hands `m` to loop `l` (`PendingIn::deliver`): `must_arrive` (QoS 1/2, a
    /// retained entry) waits for room when the ring is full; a QoS 0 copy is
    /// dropped then (counted either way).
    fn push(&mut self, l: usize, m: ShardMsg, must_arrive: bool) {
        let Some(p) = self.producers.get_mut(l) else {
            return;
        };
        match self.pending_in.deliver(l, p, m, must_arrive) {
            Delivered::Now => {
                self.to_wake[l] = true;
                self.woken_burst += 1;
            }
            Delivered::Held => {}
            Delivered::Dropped => {
                self.status.dropped_in.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// One wake per loop that got messages since the last call; first the acks that
    /// wait for room (in order; one that finds its ring full stays, with those after).
    fn wake(&mut self) {
        while let Some(&(l, token, stored)) = self.pending_acks.front() {
            let Some(p) = self.producers.get_mut(l) else {
                self.pending_acks.pop_front();
                continue;
            };
            if p.push(ClusterIn::Ack { token, stored }).is_err() {
                break;
            }
            self.pending_acks.pop_front();
            let c = if stored {
                &self.status.qos_stored
            } else {
                &self.status.qos_unconfirmed
            };
            c.fetch_add(1, Ordering::Relaxed);
            self.to_wake[l] = true;
        }
        self.pending_in
            .flush(&mut self.producers, &mut self.to_wake);
        for (l, w) in self.to_wake.iter_mut().enumerate() {
            if std::mem::take(w) {
                if let Some(r) = self.wakes[l].get() {
                    r.wake();
                }
            }
        }
        self.woken_burst = 0;
    }
}

/// Settles the ids this node served on its own each time NATS returns, and while
/// connected as long as any is left (`health::ReconcileSchedule`: a claim is served
/// locally also when NATS is up but JetStream does not answer; review10 M3)
/// (`Claims::reconcile`), and hands the outcome to the loop owning each id: the
/// copies another node gave up (then confirmed, so it ends its copy) or the order to
/// give the session up.
async fn reconciler(
    claims: Claims,
    tx: mpsc::Sender<(usize, ClusterIn)>,
    placement_seed: u64,
    loops: usize,
) {
    let mut schedule = super::health::ReconcileSchedule::default();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let connected = claims.status.is_connected();
        let pending = claims.local.lock().is_ok_and(|l| !l.is_empty());
        if !schedule.due(connected, pending, Instant::now()) {
            continue;
        }
        claims.status.reconcile_runs.fetch_add(1, Ordering::Relaxed);
        let (done_tx, mut done_rx) = mpsc::channel::<sessions::Reconciled>(SESSIONS_MAX);
        let c = claims.clone();
        let run = async move {
            c.reconcile(&done_tx).await;
        };
        let apply = async {
            while let Some(r) = done_rx.recv().await {
                reconciled(&claims, &tx, placement_seed, loops, r).await;
            }
        };
        tokio::join!(run, apply);
    }
}

async fn reconciled(
    claims: &Claims,
    tx: &mpsc::Sender<(usize, ClusterIn)>,
    placement_seed: u64,
    loops: usize,
    r: sessions::Reconciled,
) {
    if let sessions::Reconciled::Won { client_id, .. } = &r {
        // Its subscriptions from the partition are saved under this node's claim now.
        let l = crate::shard::owner_shard(placement_seed, client_id, loops);
        let m = ClusterIn::Resave {
            client_id: client_id.clone(),
        };
        let _ = tx.send((l, m)).await;
    }
    match r {
        sessions::Reconciled::Won {
            client_id,
            session: Some((bytes, from)),
        } => {
            let l = crate::shard::owner_shard(placement_seed, &client_id, loops);
            let m = ClusterIn::Delta {
                client_id: client_id.clone(),
                session: bytes,
            };
            let _ = tx.send((l, m)).await;
            // This node's session here is subscribed already: confirm at once.
            let c = crate::shard::HandoverConfirm {
                client_id: client_id.clone(),
                from,
                attempt: 0,
            };
            if let Some(sessions::Confirmed::Delta(Some(delta))) = claims.confirm(&c).await {
                let m = ClusterIn::Delta {
                    client_id,
                    session: delta,
                };
                let _ = tx.send((l, m)).await;
            }
        }
        sessions::Reconciled::Won { session: None, .. } => {}
        sessions::Reconciled::Lost { client_id, node } => {
            let l = crate::shard::owner_shard(placement_seed, &client_id, loops);
            let max_bytes = merge_max_bytes(&claims.client, &client_id);
            let m = ClusterIn::Yield {
                client_id,
                node,
                max_bytes,
            };
            let _ = tx.send((l, m)).await;
        }
    }
}

/// Loop `from` took back a hand-over never confirmed (review M1): this node
/// becomes the owner again by compare-and-set, or, when a newer claim holds the
/// entry and its node is alive, the session's copies go to that node (`Yield`).
fn reassert(io: &LoopsIo, from: usize, client_id: Bytes, epoch: u64) {
    let claims = io.claims.clone();
    let alive = io.alive_nodes.clone();
    let tx = io.claimed_tx.clone();
    tokio::spawn(async move {
        if let sessions::Reassert::SendTo(node) = claims.reassert(&client_id, epoch).await {
            if !wills::node_alive(&alive, &node) {
                // Its claimer is silent too: the session stays here to expire.
                return;
            }
            claims
                .status
                .sessions_sent_on
                .fetch_add(1, Ordering::Relaxed);
            let max_bytes = merge_max_bytes(&claims.client, &client_id);
            let m = ClusterIn::Yield {
                client_id,
                node,
                max_bytes,
            };
            let _ = tx.send((from, m)).await;
        }
    });
}

/// The largest session a Merge of `client_id` (`sessions::encode_merge`) can carry
/// on `client`'s connection (review10 L5).
fn merge_max_bytes(client: &async_nats::Client, client_id: &[u8]) -> usize {
    client
        .server_info()
        .max_payload
        .saturating_sub(sessions::MERGE_HEADER_BYTES + client_id.len())
}

/// Hand-overs loop `from` loaded: each is confirmed to its old node once the loaded
/// sessions' subscriptions are on NATS (a flush after the SUBs `on_batch` queued),
/// and the delta that node answers with goes back to the loop. A task per
/// confirmation, so the main task never waits on another node.
fn on_confirms(
    client: &async_nats::Client,
    claims: &Claims,
    tx: &mpsc::Sender<(usize, ClusterIn)>,
    from: usize,
    confirms: Vec<crate::shard::HandoverConfirm>,
) {
    for c in confirms {
        let client = client.clone();
        let claims = claims.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            // The loop waits for a delta (a confirmation of this session's own
            // hand-over onwards waits with it, review M3): it always gets one, or
            // word that none came, which it answers by asking again or giving up.
            // The server has the SUBs (in order on this connection) once the flush's
            // PONG is back. A flush that cannot finish, or a round of tries the old
            // node does not answer, leaves the session on the old node for now: the
            // loop is told after a backoff and asks again while the session lives
            // there (review10 M8), or ends its wait for the delta.
            let flushed = tokio::time::timeout(CONFIRM_FLUSH_MAX, client.flush())
                .await
                .is_ok_and(|r| r.is_ok());
            let answer = if flushed {
                // The flush proves only this node's server has the SUBs: the
                // publishers' servers learn of them over routes, unordered against
                // the old node's UNSUB, and a message may still wait in the old
                // node's own queues. The old node keeps its interest this much
                // longer, so such a message lands in its delta instead of nowhere
                // (review H2). What is published in the grace reaches both nodes;
                // the loop drops the delta's copy of a message it got directly
                // (`shard/cluster_dedup.rs`).
                tokio::time::sleep(CONFIRM_GRACE).await;
                claims.confirm(&c).await
            } else {
                tracing::warn!("cluster: interest not flushed; hand-over confirmation waits");
                None
            };
            let m = match answer {
                Some(sessions::Confirmed::Delta(delta)) => ClusterIn::Delta {
                    client_id: c.client_id,
                    session: delta.unwrap_or_default(),
                },
                Some(sessions::Confirmed::TakenBack) => {
                    // The old node took the session back while this node was cut
                    // (review M1): it goes there, its client told 0x8E.
                    let max_bytes = merge_max_bytes(&client, &c.client_id).saturating_sub(
                        sessions::HAND_BACK_HEADER_BYTES - sessions::MERGE_HEADER_BYTES,
                    );
                    ClusterIn::HandoverTakenBack {
                        client_id: c.client_id,
                        from: c.from,
                        max_bytes,
                    }
                }
                None => {
                    tokio::time::sleep(sessions::confirm_backoff(c.attempt)).await;
                    ClusterIn::ConfirmUnanswered {
                        client_id: c.client_id,
                        from: c.from,
                        attempt: c.attempt,
                    }
                }
            };
            let _ = tx.send((from, m)).await;
        });
    }
}

/// What `PendingIn::deliver` did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivered {
    /// In the loop's ring.
    Now,
    /// Waiting for room (`PendingIn::flush` at the next wake).
    Held,
    /// Not delivered: a QoS 0 copy for a full ring, or past `HELD_MAX`.
    Dropped,
}

/// Messages that must arrive (QoS 1/2, retained entries) waiting for one loop;
/// past it they are dropped and counted. The main task stops reading NATS at
/// `PENDING_IN_MAX`, so only a burst already read can reach this.
const HELD_MAX: usize = 2 * PENDING_IN_MAX;

/// What waits for room in the loops' rings from the cluster thread, one bounded queue
/// per loop: a loop whose ring is full holds up only its own queue, never another
/// loop's claims or takeovers.
pub(super) struct PendingIn {
    queues: Vec<VecDeque<ClusterIn>>,
}

impl PendingIn {
    pub(super) fn new(loops: usize) -> PendingIn {
        PendingIn {
            queues: (0..loops).map(|_| VecDeque::new()).collect(),
        }
    }

    /// Queues `m` for loop `l` (dropped for a loop that does not exist).
    pub(super) fn push(&mut self, l: usize, m: ClusterIn) {
        if let Some(q) = self.queues.get_mut(l) {
            q.push_back(m);
        }
    }

    /// Whether every loop's queue is below `PENDING_IN_MAX` (else the sources
    /// feeding them wait).
    pub(super) fn has_room(&self) -> bool {
        self.queues.iter().all(|q| q.len() < PENDING_IN_MAX)
    }

    /// The loop with the least waiting.
    pub(super) fn shortest(&self) -> usize {
        (0..self.queues.len())
            .min_by_key(|&l| self.queues[l].len())
            .unwrap_or(0)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }

    #[cfg(test)]
    pub(super) fn len(&self, l: usize) -> usize {
        self.queues.get(l).map_or(0, VecDeque::len)
    }

    /// Hands a message to loop `l`'s ring `p`. One that must arrive goes behind
    /// what already waits for that loop (never overtaking an earlier one) and waits
    /// itself when the ring is full, up to `HELD_MAX` per loop (the main task stops
    /// reading NATS before that: `has_room`); a QoS 0 copy goes straight to the
    /// ring or is dropped.
    pub(super) fn deliver(
        &mut self,
        l: usize,
        p: &mut Producer<ClusterIn>,
        m: ShardMsg,
        must_arrive: bool,
    ) -> Delivered {
        let Some(q) = self.queues.get_mut(l) else {
            return Delivered::Dropped;
        };
        if must_arrive && !q.is_empty() {
            if q.len() >= HELD_MAX {
                return Delivered::Dropped;
            }
            q.push_back(ClusterIn::Msg(m));
            return Delivered::Held;
        }
        match p.push(ClusterIn::Msg(m)) {
            Ok(()) => Delivered::Now,
            Err(ClusterIn::Msg(m)) if must_arrive => {
                q.push_back(ClusterIn::Msg(m));
                Delivered::Held
            }
            Err(_) => Delivered::Dropped,
        }
    }

    /// Moves each loop's queue into its ring, in order, until that ring is full.
    pub(super) fn flush(&mut self, producers: &mut [Producer<ClusterIn>], to_wake: &mut [bool]) {
        for (l, (q, p)) in self.queues.iter_mut().zip(producers.iter_mut()).enumerate() {
            if p.push_from(q) > 0 {
                if let Some(w) = to_wake.get_mut(l) {
                    *w = true;
                }
            }
        }
    }
}
