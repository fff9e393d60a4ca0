//! Wills across nodes, the cluster thread's side (issue #17): a will fires exactly
//! once cluster-wide, also when the node holding its connection dies.
//!
//! - **Liveness.** Each node process has an incarnation (random at start) and puts
//!   its heartbeat `b64(node) = incarnation` in the KV bucket `ringmq_nodes` every
//!   `beat` (`Timings`). An incarnation is alive while its heartbeat is the current
//!   value of its key and is younger than `dead_after` by the server's clock (the stored entry's
//!   time against this node's own latest heartbeat, so no two hosts' clocks are
//!   compared). A node restarted under the same name is a new incarnation: the old
//!   one's wills count as a dead node's. Its timings go under `b64(node).timings`
//!   (`health::TimingsGuard` compares them), never in the heartbeat's value, which
//!   older nodes take whole for the incarnation.
//! - **Wills.** While a client with a will is connected, its node keeps the will
//!   (the log's `SessionPut` record) in the bucket `ringmq_wills` under
//!   `b64(client).b64(node).incarnation`; the loop says when the connection is gone
//!   (the will is then published, dropped or delayed by that node, as on a single
//!   node) and the entry is deleted. Entries are written only while the lease holds
//!   (below), so never before the node's first heartbeat: a live node's will never
//!   looks orphaned.
//! - **Exactly once.** Every node watches the heartbeats and sweeps the wills bucket
//!   when an incarnation stops being alive (and at start, and every `SWEEP_EVERY`
//!   beats): for each entry of a dead incarnation (`is_dead`) it writes a mark on the
//!   entry with the revision it read (compare-and-set; `taken_entry`: the taker's
//!   incarnation, the will's revision, the will), so only the node whose mark lands
//!   takes the will. It publishes the will itself (`Wills::finish`), to NATS first
//!   and acknowledged (a QoS 1/2 will by the QoS stream), then to its own
//!   subscribers through the main task, and deletes the mark only after that (review10
//!   L5: it used to delete first, and a taker that died before its loop published
//!   lost the will). The will goes out under an identity of its own, the same from
//!   any taker: `Mqtt-Origin` `will:<key>` and `Mqtt-Id` the will's revision (and a
//!   `Nats-Msg-Id` of both, so the QoS stream keeps one copy within its 2-minute
//!   duplicate window). A mark whose taker is dead (`orphan_step`, as for an owner)
//!   is another survivor's to finish; one whose taker lives is left to it. Every node
//!   remembers the last `WILL_DEDUP_WINDOW` taken wills it delivered (`link.rs`,
//!   `will_seen`) and drops a second copy: a taker that died after its publish but
//!   before its delete costs no duplicate. JetStream's duplicate window alone would
//!   not do: nodes get messages by core NATS subscriptions, which receive every
//!   publish, duplicate or not.
//!
//! - **The invariant: the cluster publishes a will only after its client's
//!   connection is gone.** A node cut from NATS looks dead to the others after
//!   `dead_after` (the cluster cannot tell a dead node from an unreachable one), and
//!   a survivor then publishes its clients' wills. So the node fences itself first
//!   (review H3): its heartbeat is a lease (`Lease`) that holds for `fence_after`
//!   from the *send* of its last heartbeat a server acknowledged, by its own
//!   monotonic clock. That heartbeat's server time is at or after its send, and a
//!   survivor calls the node dead only when its own latest heartbeat (server time,
//!   never ahead of real time) is `dead_after` past the node's latest; so the lease
//!   runs out at least `dead_after - fence_after` (more than a beat, checked at
//!   start) before any survivor can act, and a delayed heartbeat only pushes that
//!   later. When it runs out (`fencer`, a timer on the deadline) every loop closes
//!   the connections whose wills it registered (MQTT 5: DISCONNECT 0x9C, use
//!   another server; 3.1.1: closed) without publishing those wills, and hands them
//!   to the writer (`WillQueue::fence`): the entries stay in the bucket. While the
//!   lease is out no will is put (a put is sent only while it holds; one sent
//!   before it ran out belongs to a client the fence closed) and a new client's
//!   will stays the node's own (published by it, as on a single node, if the client
//!   goes). When a heartbeat is acknowledged again the writer settles each fenced
//!   will before anything else (`settle`): an entry still there is deleted by
//!   compare-and-set and published by this node if that delete lands; one gone was
//!   taken by a survivor, which published it (`wills_taken`); one never written is
//!   published here. Then the loops register their clients' wills again. So every
//!   will fires once, and only once its connection is gone. Clients without a will
//!   stay connected through the fence: nothing of theirs can fire elsewhere, and
//!   closing them would only make a short NATS outage an outage of the node.
//!   The check on return (`reconcile`, after a gap of `fence_after`, again
//!   `dead_after` later) is kept as a second line: a will entry it holds that is
//!   gone (as the stream leader says, `leader_entry`; a replica answering a direct
//!   get may lag, review10 L6, and so for `settle`) was taken, so that client (if a loop was too late to fence it) is
//!   disconnected with 0x9C and its will not published again. Cost: none while the
//!   heartbeat is acknowledged; a cut longer than `fence_after` closes the node's
//!   will-carrying clients even if it ends before `dead_after`. It rests on every
//!   node using the same `dead_after`, on the bucket's timestamps coming from one
//!   clock (the stream leader's; a leader change between servers whose clocks
//!   disagree shifts them by that skew), and on a loop reading its ring within
//!   `dead_after - fence_after` (2 s by default).
//! - **A graceful stop** closes every connection with 0x8B, which publishes no will
//!   (as on a single node), forwards the loops' last output and deletes what is
//!   left of this incarnation's entries (`withdraw_all`), so no survivor fires them.
//!
//! - **A Will Delay** (review10 M9) is waited for by whoever publishes a will the
//!   cluster holds: a survivor takes a dead node's will only `dead_after` plus the
//!   delay past that node's last heartbeat (`orphan_due`, checked at each sweep, so
//!   up to `SWEEP_EVERY` beats late), and a node settling a fenced will as its own
//!   keeps it until the fence time plus the delay. Then it reads the client's
//!   ownership entry: the entry carries the epoch each CONNECT's claim wrote, and a
//!   will entry the epoch it was registered under (`will_entry`), so a newer epoch
//!   means the client connected again (here or on another node) and the will is
//!   dropped (`resumed_since`, `wills_resumed_total`), as MQTT 5 3.1.3.2.2 asks.
//!   A CONNECT this node served on its own while NATS was away counts too.
//!
//! What this does not cover, and why: a taken will reaches each node once only
//! while that node remembers it (a node restarted between the two copies, or
//! `WILL_DEDUP_WINDOW` other taken wills in between, gets it twice), and a `$share`
//! group whose member NATS picks on another node the second time gets it twice. A
//! will whose taker dies before publishing it while its owner is back (the owner's
//! settle treats the mark as taken, and no sweep lists a live owner's entries) is
//! lost. A will with a delay whose connection had
//! already gone when its node died lives on that node only (the entry is deleted
//! when the connection goes) and is lost with it; so is a fenced will this node
//! settled and keeps for its delay, if it dies before the delay ends. A clean-start
//! CONNECT within the delay also claims, so that will is dropped rather than
//! published at the old session's end. A stop while NATS is away cannot withdraw
//! its entries.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify};

use super::bridge::ClusterStatus;
use super::sweep::SweepAsk;
pub use super::sweep::{
    decode_taken, is_dead, orphan_due, orphan_step, taken_entry, will_origin, OrphanStep, Taken,
    TakenWill, WILL_ORIGIN_PREFIX,
};
use crate::session::Message;

pub const NODES_BUCKET: &str = "ringmq_nodes";
pub const WILLS_BUCKET: &str = "ringmq_wills";
/// Beats between full sweeps of the wills bucket when no node died (catches an
/// incarnation that came and went between two beats).
const SWEEP_EVERY: u32 = 10;
/// Bound on listing the wills bucket in one sweep (well below the default `dead_after`).
pub(super) const SWEEP_LIST_MAX: Duration = Duration::from_millis(1500);
/// The longest wait between two attempts of one wills write.
const WRITE_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Heartbeat entries between the watch task and the beat (each is a map insert).
const BEATS_WATCH_MAX: usize = 1024;
/// The pause after a watch attempt failed or a watch ended, before the next one.
const WATCH_RETRY: Duration = Duration::from_millis(500);

/// The liveness timings (`cluster_beat_ms`, `cluster_fence_after_ms`,
/// `cluster_dead_after_ms`; `config/cluster.rs` checks 2 beats <= fence < dead -
/// beat). A heartbeat landing `fence_after` or more after the previous one means
/// this node may have looked dead (it fenced, and `dead_after` may have passed):
/// it checks which of its wills were taken, and again `dead_after` later (by then
/// no survivor's sweep that began before it saw this node's heartbeat again is
/// still deleting: a sweep lists for at most `SWEEP_LIST_MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub beat: Duration,
    pub fence_after: Duration,
    pub dead_after: Duration,
}

impl Timings {
    pub fn from_ms(beat_ms: u64, fence_after_ms: u64, dead_after_ms: u64) -> Timings {
        Timings {
            beat: Duration::from_millis(beat_ms),
            fence_after: Duration::from_millis(fence_after_ms),
            dead_after: Duration::from_millis(dead_after_ms),
        }
    }

    /// The values this node announces to its peers (`health::TimingsGuard`).
    pub fn announced(&self) -> super::health::LivenessTimings {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        super::health::LivenessTimings {
            beat_ms: ms(self.beat),
            fence_after_ms: ms(self.fence_after),
            dead_after_ms: ms(self.dead_after),
        }
    }

    pub(super) fn dead_after_ns(&self) -> i128 {
        self.dead_after.as_nanos() as i128
    }
}

/// The self-fencing lease (review H3), by this node's own monotonic clock: it holds
/// for `fence_after` from the *send* of the last heartbeat a NATS server
/// acknowledged. That heartbeat's server time is at or after its send, and a
/// survivor takes this node for dead only when its own latest heartbeat (server
/// time, at most real time) is `dead_after` past this node's latest: so the lease
/// ends at least `dead_after - fence_after` (more than a beat) before any survivor
/// acts. A heartbeat delayed in flight only moves its server time later, never the
/// lease; one whose acknowledgement is lost does not renew it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    fence_after: Duration,
    /// Send time of the latest acknowledged heartbeat (`None`: none yet).
    from: Option<Instant>,
}

impl Lease {
    pub fn new(fence_after: Duration) -> Lease {
        Lease {
            fence_after,
            from: None,
        }
    }

    /// The heartbeat sent at `sent` was acknowledged (an older one acknowledged
    /// late does not shorten the lease).
    pub fn renewed(&mut self, sent: Instant) {
        self.from = Some(self.from.map_or(sent, |f| f.max(sent)));
    }

    /// When the lease runs out (`None`: it never began).
    pub fn deadline(&self) -> Option<Instant> {
        self.from.map(|f| f + self.fence_after)
    }

    /// Whether wills may be registered at `now`.
    pub fn holds(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now < d)
    }

    /// The fence's change at `now`, for a node that is `fenced` or not: `Some(true)`
    /// to fence (the lease ran out; a lease that never began fences nothing, since no
    /// will was registered under it), `Some(false)` to lift it.
    pub fn step(&self, fenced: bool, now: Instant) -> Option<bool> {
        match (fenced, self.holds(now)) {
            (true, true) => Some(false),
            (false, false) if self.from.is_some() => Some(true),
            _ => None,
        }
    }
}

/// Tells the main task (`fence`) each time the lease runs out (`true`) and comes
/// back (`false`), at the moment it does: a timer on the deadline, not a beat.
pub async fn fencer(
    mut lease: tokio::sync::watch::Receiver<Lease>,
    fence: mpsc::Sender<bool>,
    status: Arc<ClusterStatus>,
) {
    let mut fenced = false;
    loop {
        let l = *lease.borrow_and_update();
        let now = Instant::now();
        if let Some(on) = l.step(fenced, now) {
            fenced = on;
            status.fenced.store(on, Ordering::Relaxed);
            if on {
                status.fences.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "cluster: no heartbeat acknowledged for {:?}; closing the clients whose \
                     wills are in the cluster before the others may take this node for dead",
                    l.deadline().map(|d| now.saturating_duration_since(d)),
                );
            } else {
                tracing::info!("cluster: heartbeat acknowledged again; wills registered again");
            }
            if fence.send(on).await.is_err() {
                return;
            }
        }
        let ended = match l.deadline().filter(|_| l.holds(now)) {
            Some(d) => tokio::select! {
                _ = tokio::time::sleep_until(d.into()) => false,
                r = lease.changed() => r.is_err(),
            },
            None => lease.changed().await.is_err(),
        };
        if ended {
            return;
        }
    }
}

/// Sends a watch's entries to `tx` in order until the watch ends or fails (logged
/// at debug as `what`); false once `tx`'s receiver is gone.
pub(super) async fn forward_watch<T, E>(
    w: &mut (impl futures_util::Stream<Item = Result<T, E>> + Unpin),
    tx: &mpsc::Sender<T>,
    what: &str,
) -> bool
where
    E: std::fmt::Display,
{
    while let Some(e) = w.next().await {
        match e {
            Ok(e) => {
                if tx.send(e).await.is_err() {
                    return false;
                }
            }
            Err(e) => {
                tracing::debug!("cluster: {what}: {e}");
                break;
            }
        }
    }
    true
}

/// Feeds every entry of a KV watch (`make` makes one) to `tx`, and makes it again
/// when it ends (NATS lost and back), until `tx` is closed. Making a watch's consumer
/// can go unanswered for seconds (after a nats-server was killed, or while a forming
/// cluster elects its meta leader), so each attempt waits `AttemptWait` (1 s, doubled
/// by each failure, at most the JetStream request timeout), is logged when it fails,
/// and is followed by `WATCH_RETRY`: the caller never waits on NATS, and the attempts
/// are spaced rather than a tight loop.
pub async fn keep_watching<T, W, E1, E2, F, Fut>(
    mut make: F,
    tx: mpsc::Sender<T>,
    what: &'static str,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<W, E1>>,
    W: futures_util::Stream<Item = Result<T, E2>> + Unpin,
    E1: std::fmt::Display,
    E2: std::fmt::Display,
{
    let mut attempts = super::health::AttemptWait::default();
    while !tx.is_closed() {
        let wait = attempts.wait();
        match tokio::time::timeout(wait, make()).await {
            Ok(Ok(mut w)) => {
                attempts.succeeded();
                if !forward_watch(&mut w, &tx, what).await {
                    return;
                }
                tracing::debug!("cluster: {what} ended; making it again");
            }
            Ok(Err(e)) => {
                attempts.failed();
                tracing::warn!("cluster: {what} not made ({e}); asking again");
            }
            Err(_) => {
                attempts.failed();
                tracing::warn!("cluster: {what} not made within {wait:?}; asking again");
            }
        }
        tokio::time::sleep(WATCH_RETRY).await;
    }
}

/// Waits until the lease holds (`false`: the heartbeat task is gone).
async fn lease_holds(lease: &mut tokio::sync::watch::Receiver<Lease>) -> bool {
    loop {
        let l = *lease.borrow_and_update();
        if l.holds(Instant::now()) {
            return true;
        }
        if lease.changed().await.is_err() {
            return false;
        }
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Node `node`'s key in the heartbeats bucket.
pub fn node_key(node: &str) -> String {
    b64(node.as_bytes())
}

/// An incarnation's name: `b64(node).incarnation` (hex).
pub fn incarnation_of(node: &str, incarnation: u64) -> String {
    format!("{}.{incarnation:016x}", b64(node.as_bytes()))
}

/// The wills-bucket key of `client_id`'s will on incarnation `owner`.
pub fn will_key(client_id: &[u8], owner: &str) -> String {
    format!("{}.{owner}", b64(client_id))
}

/// The client id a will key names (empty: not a key ringmq makes).
pub fn client_of_key(key: &str) -> Bytes {
    key.split_once('.')
        .and_then(|(c, _)| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
        })
        .map(Bytes::from)
        .unwrap_or_default()
}

/// The incarnation a will key names (`None`: not a key ringmq makes).
pub fn owner_of_key(key: &str) -> Option<&str> {
    let (_client, owner) = key.split_once('.')?;
    owner.split_once('.').map(|_| owner)
}

/// A wills-bucket value (review10 M9): the will record (`will_record`) behind its
/// 4-byte length, then the epoch of its client's ownership entry when the will was
/// registered (8 bytes LE; 0: not known). Whoever publishes a delayed will reads
/// the ownership entry first: a newer epoch means the client connected again.
pub fn will_entry(record: &[u8], epoch: u64) -> Bytes {
    let mut b = Vec::with_capacity(record.len() + 12);
    b.extend_from_slice(&(record.len() as u32).to_le_bytes());
    b.extend_from_slice(record);
    b.extend_from_slice(&epoch.to_le_bytes());
    Bytes::from(b)
}

/// See `will_entry`: (the will record, the epoch); `None`: not one.
pub fn decode_will_entry(b: &Bytes) -> Option<(Bytes, u64)> {
    let len = u32::from_le_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let end = 4usize.checked_add(len)?;
    let epoch = b.get(end..)?;
    let epoch = u64::from_le_bytes(epoch.try_into().ok()?);
    Some((b.slice(4..end), epoch))
}

/// A will record's Will Delay Interval (0: none, or not a will record).
pub fn will_delay_s(record: &[u8]) -> u32 {
    match crate::store::record::Record::decode(record) {
        Ok(crate::store::record::Record::SessionPut { will: Some(w), .. }) => w.delay_s,
        _ => 0,
    }
}

/// Whether a delayed will must not fire because its session was resumed (MQTT 5
/// 3.1.3.2.2: a new connection to the session within the delay cancels the will):
/// a CONNECT claimed the client id again, on any node, after the will was
/// registered at `will_epoch` (`entry`: the ownership entry now). An unknown epoch
/// (0) shows nothing. A clean-start CONNECT claims too, so its will is dropped
/// rather than published at that session's end.
pub fn resumed_since(entry: Option<&super::sessions::Owner>, will_epoch: u64) -> bool {
    will_epoch != 0 && entry.is_some_and(|o| o.epoch > will_epoch)
}

/// Will changes waiting for the writer: only the latest state per client id (a will
/// record, or `None` for gone), in the order the ids first changed. The cluster
/// thread's main task adds to it without waiting, so a writer stuck on JetStream
/// (NATS down, bucket not there yet) never holds up forwarding, acks or claims;
/// bounded by the distinct client ids that changed since the writer last caught up.
#[derive(Default)]
pub struct WillQueue {
    latest: HashMap<Bytes, Option<Bytes>>,
    order: VecDeque<Bytes>,
    /// Connections the fence closed (client id, will entry, when), in order: kept
    /// apart from `latest`, never replaced by a later change of the same id.
    fenced: Vec<(Bytes, Bytes, Instant)>,
}

impl WillQueue {
    /// Records `client`'s latest will state (a later one replaces an unwritten one:
    /// set then gone needs only the delete, gone then set only the put).
    pub fn put(&mut self, client: Bytes, value: Option<Bytes>) {
        if self.latest.insert(client.clone(), value).is_none() {
            self.order.push_back(client);
        }
    }

    /// The fence closed `client`'s connection, whose will is `record`: a change of
    /// it not yet written is dropped (its put never lands, so no entry of it can
    /// outlive the connection unnoticed), and the writer settles the will.
    pub fn fence(&mut self, client: Bytes, record: Bytes) {
        self.latest.remove(&client);
        self.fenced.push((client, record, Instant::now()));
    }

    pub fn take_fenced(&mut self) -> Vec<(Bytes, Bytes, Instant)> {
        std::mem::take(&mut self.fenced)
    }

    /// A change the writer could not write goes back to the end of the queue,
    /// unless a later change of the same client came meanwhile (that one wins).
    pub fn put_back(&mut self, client: Bytes, value: Option<Bytes>) {
        if !self.latest.contains_key(&client) {
            self.latest.insert(client.clone(), value);
            self.order.push_back(client);
        }
    }

    pub fn pop(&mut self) -> Option<(Bytes, Option<Bytes>)> {
        while let Some(client) = self.order.pop_front() {
            // An id whose change a fence dropped has no value left.
            if let Some(value) = self.latest.remove(&client) {
                return Some((client, value));
            }
        }
        None
    }

    pub fn len(&self) -> usize {
        self.latest.len() + self.fenced.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The main task's handle on a writer's queue (the wills writer's, and the
/// session-state writer's in `sessions.rs`: both keep only a client's latest value).
#[derive(Clone, Default)]
pub struct WillFeed {
    queue: Arc<Mutex<WillQueue>>,
    ready: Arc<Notify>,
}

impl WillFeed {
    /// Never waits (see `WillQueue`).
    pub fn put(&self, client: Bytes, value: Option<Bytes>) {
        if let Ok(mut q) = self.queue.lock() {
            q.put(client, value);
        }
        self.ready.notify_one();
    }

    pub fn pop(&self) -> Option<(Bytes, Option<Bytes>)> {
        self.queue.lock().ok()?.pop()
    }

    /// See `WillQueue::put_back`.
    pub fn put_back(&self, client: Bytes, value: Option<Bytes>) {
        if let Ok(mut q) = self.queue.lock() {
            q.put_back(client, value);
        }
    }

    /// Never waits (see `WillQueue::fence`).
    pub fn fence(&self, client: Bytes, record: Bytes) {
        if let Ok(mut q) = self.queue.lock() {
            q.fence(client, record);
        }
        self.ready.notify_one();
    }

    pub fn take_fenced(&self) -> Vec<(Bytes, Bytes, Instant)> {
        self.queue
            .lock()
            .map(|mut q| q.take_fenced())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.queue.lock().map_or(0, |q| q.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next change, waiting for one (a `put` before the wait leaves a permit).
    pub async fn next(&self) -> (Bytes, Option<Bytes>) {
        loop {
            if let Some(c) = self.pop() {
                return c;
            }
            self.ready.notified().await;
        }
    }

    /// The next change, waiting for one, unless a fenced connection waits (`None`):
    /// that comes first, so no change queued after a fence is written before the
    /// caller took the fenced will (`take_fenced`).
    pub async fn next_or_fenced(&self) -> Option<(Bytes, Option<Bytes>)> {
        loop {
            if self.queue.lock().is_ok_and(|q| !q.fenced.is_empty()) {
                return None;
            }
            if let Some(c) = self.pop() {
                return Some(c);
            }
            self.ready.notified().await;
        }
    }
}

/// What the wills tasks share with the main task.
#[derive(Clone)]
pub struct Wills {
    pub js: jetstream::Context,
    pub replicas: usize,
    pub node: String,
    /// This process's incarnation name (`incarnation_of`).
    pub me: String,
    pub incarnation: u64,
    pub status: Arc<ClusterStatus>,
    pub timings: Timings,
    /// The names (`b64(node)`) of the nodes whose heartbeat is alive, as of this
    /// node's latest beat (`None`: no beat yet); read by the hand-over watch
    /// (`sessions.rs`, review M1).
    pub alive_nodes: AliveNodes,
    /// The session owners: a delayed will is published only if its client did not
    /// connect again within the delay (`resumed_since`, review10 M9).
    pub claims: super::sessions::Claims,
}

/// See `Wills::alive_nodes`.
pub type AliveNodes = Arc<Mutex<Option<HashSet<String>>>>;

/// Whether node `node` (its name, not encoded) looked alive at this node's latest
/// beat; unknown (no beat yet) counts as alive, so nothing is taken from it.
pub fn node_alive(alive: &AliveNodes, node: &str) -> bool {
    alive
        .lock()
        .ok()
        .and_then(|a| a.as_ref().map(|a| a.contains(&b64(node.as_bytes()))))
        .unwrap_or(true)
}

/// A will whose connection the fence closed, to settle once the lease holds again.
struct Fenced {
    /// The will entry (`will_entry`).
    record: Bytes,
    /// Its entry was written (and this node has not deleted it): a survivor may take it.
    in_bucket: bool,
    /// When the fence closed its connection: its delay counts from then.
    at: Instant,
}

/// A fenced will with a Will Delay that this node settled as its own: published at
/// `due` unless its client connected again meanwhile (review10 M9). Lives on this
/// node only, as a delayed will on a single node does.
struct Delayed {
    due: Instant,
    client: Bytes,
    record: Bytes,
    epoch: u64,
    /// When its connection went (wall clock, Unix ms): a CONNECT this node served
    /// on its own after it (NATS away, so no claim) resumed the session.
    gone_ms: u64,
}

impl Wills {
    async fn buckets(&self) -> (kv::Store, kv::Store) {
        loop {
            let nodes = super::link::bucket(
                &self.js,
                NODES_BUCKET,
                "ringmq node heartbeats (key: base64url of the node; value: incarnation)",
                self.replicas,
                &self.status,
            )
            .await;
            let wills = super::link::bucket(
                &self.js,
                WILLS_BUCKET,
                "ringmq wills of connected clients (key: client.node.incarnation)",
                self.replicas,
                &self.status,
            )
            .await;
            if let (Some(n), Some(w)) = (nodes, wills) {
                return (n, w);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Keeps this node's wills in the bucket, one change at a time in the loops'
    /// order (a set then a gone for one client must land in that order). A write is
    /// retried until it lands, however long NATS is away: a lost "gone" would let a
    /// survivor publish a will that must not fire. A put is sent only while the lease
    /// holds (`Lease`): one sent later could land while this node looks dead, for a
    /// client the fence did not close. The fence's closed connections (`fenced`)
    /// are settled first once the lease holds again (`settle`). On `reconcile` (this
    /// node is back from a cut long enough to have looked dead) it checks every will
    /// it holds and sends the client ids whose entry another node took (and
    /// published) on `taken`.
    pub async fn writer(
        self,
        feed: WillFeed,
        reconcile: Arc<Notify>,
        taken: mpsc::Sender<Bytes>,
        publish: mpsc::Sender<Message>,
        mut lease: tokio::sync::watch::Receiver<Lease>,
    ) {
        let (_, wills) = self.buckets().await;
        // The clients whose will entry this node last wrote (and has not deleted).
        let mut held: HashSet<Bytes> = HashSet::new();
        let mut fenced: HashMap<Bytes, Fenced> = HashMap::new();
        let mut delayed: Vec<Delayed> = Vec::new();
        loop {
            for (client, record, at) in feed.take_fenced() {
                let in_bucket = held.remove(&client);
                fenced.insert(
                    client,
                    Fenced {
                        record,
                        in_bucket,
                        at,
                    },
                );
            }
            if !fenced.is_empty() && lease.borrow().holds(Instant::now()) {
                self.settle(&wills, &mut fenced, &mut delayed, &publish)
                    .await;
            }
            if !self.publish_due(&mut delayed, &publish).await {
                return;
            }
            let settling = !fenced.is_empty();
            let next_due = delayed.iter().map(|d| d.due).min();
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now).into()),
                    if next_due.is_some() => {}
                _ = reconcile.notified(), if !settling => {
                    // What the loops changed first, so a will set since is not
                    // mistaken for one taken.
                    while let Some(c) = feed.pop() {
                        if !self.write(&wills, c, &mut held, &fenced, &mut lease).await {
                            return;
                        }
                    }
                    self.reconcile(&wills, &mut held, &taken).await;
                }
                // Until every fenced will is settled no change is written: a put
                // of the same client's new will would overwrite the entry.
                c = feed.next_or_fenced(), if !settling => {
                    if let Some(c) = c {
                        if !self.write(&wills, c, &mut held, &fenced, &mut lease).await {
                            return;
                        }
                    }
                }
                r = lease.changed(), if settling => {
                    if r.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep(WRITE_BACKOFF_MAX), if settling => {}
            }
        }
    }

    /// `false`: the heartbeat task is gone (the thread is stopping).
    async fn write(
        &self,
        wills: &kv::Store,
        (client, value): (Bytes, Option<Bytes>),
        held: &mut HashSet<Bytes>,
        fenced: &HashMap<Bytes, Fenced>,
        lease: &mut tokio::sync::watch::Receiver<Lease>,
    ) -> bool {
        if value.is_none() && fenced.contains_key(&client) {
            // A later connection's will kept local while fenced: the entry is the
            // fenced connection's, which `settle` owns.
            return true;
        }
        let key = will_key(&client, &self.me);
        let mut backoff = Duration::from_millis(100);
        loop {
            if value.is_some() && !lease_holds(lease).await {
                return false;
            }
            let r = match &value {
                Some(v) => wills.put(&key, v.clone()).await.map(|_| ()).is_ok(),
                None => wills.delete(&key).await.is_ok(),
            };
            if r {
                if value.is_some() {
                    self.status.wills_stored.fetch_add(1, Ordering::Relaxed);
                    held.insert(client);
                } else {
                    held.remove(&client);
                }
                return true;
            }
            self.status.wills_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(WRITE_BACKOFF_MAX);
        }
    }

    /// The wills of connections the fence closed, once the lease holds again: each
    /// is published exactly once cluster-wide, and only now that its connection is
    /// gone. One whose entry was never written is this node's alone: published here.
    /// One whose entry is still there is deleted by compare-and-set, and published
    /// here only if that delete lands (a survivor's sweep races on the same
    /// revision). One whose entry is gone was taken by a survivor, which published
    /// it. An entry that cannot be read or deleted now stays for the next call (a
    /// delete that landed but was not acknowledged then reads as taken: not
    /// published twice).
    async fn settle(
        &self,
        wills: &kv::Store,
        fenced: &mut HashMap<Bytes, Fenced>,
        delayed: &mut Vec<Delayed>,
        publish: &mpsc::Sender<Message>,
    ) {
        let clients: Vec<Bytes> = fenced.keys().cloned().collect();
        for client in clients {
            let Some(f) = fenced.get(&client) else {
                continue;
            };
            let mine = if f.in_bucket {
                let key = will_key(&client, &self.me);
                // "Gone" means a survivor published it: read from the stream leader,
                // never a replica that may not have applied this node's put (L6).
                match leader_entry(wills, &key).await {
                    LeaderRead::Held(revision) => {
                        match wills.delete_expect_revision(&key, Some(revision)).await {
                            Ok(_) => true,
                            // Lost to a survivor, or not answered: read again next time.
                            Err(_) => continue,
                        }
                    }
                    // Published by a survivor, or marked by one that publishes it
                    // (`Wills::finish`).
                    LeaderRead::Gone => false,
                    LeaderRead::Unknown(e) => {
                        tracing::debug!("cluster: fenced will entry not read: {e}");
                        continue;
                    }
                }
            } else {
                true
            };
            let Some(f) = fenced.remove(&client) else {
                continue;
            };
            if !mine {
                self.status.wills_taken.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Some((record, epoch)) = decode_will_entry(&f.record) else {
                self.status.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let delay_s = will_delay_s(&record);
            if delay_s > 0 {
                // Its client may connect again within the delay, here or elsewhere
                // (review10 M9): it waits, as on a single node.
                let gone_ms =
                    super::sessions::unix_ms().saturating_sub(f.at.elapsed().as_millis() as u64);
                delayed.push(Delayed {
                    due: f.at + Duration::from_secs(u64::from(delay_s)),
                    client,
                    record,
                    epoch,
                    gone_ms,
                });
                continue;
            }
            if self.publish_fenced(&record, publish).await.is_err() {
                return;
            }
        }
    }

    /// Publishes a settled will now (`wills_fenced_published`); a record that does
    /// not decode is counted as malformed and skipped. `Err`: the main task is gone.
    async fn publish_fenced(
        &self,
        record: &[u8],
        publish: &mpsc::Sender<Message>,
    ) -> Result<(), ()> {
        let Some(m) = crate::shard::will_message(record, Instant::now()) else {
            self.status.malformed.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        self.status
            .wills_fenced_published
            .fetch_add(1, Ordering::Relaxed);
        publish.send(m).await.map_err(|_| ())
    }

    /// The delayed wills whose delay is over: each is published unless its client
    /// connected again (`resumed`); one whose owner cannot be read now is looked at
    /// again shortly. `false`: the main task is gone.
    async fn publish_due(
        &self,
        delayed: &mut Vec<Delayed>,
        publish: &mpsc::Sender<Message>,
    ) -> bool {
        let now = Instant::now();
        let (due, wait): (Vec<Delayed>, Vec<Delayed>) = std::mem::take(delayed)
            .into_iter()
            .partition(|d| d.due <= now);
        *delayed = wait;
        for mut d in due {
            match self.resumed(&d.client, d.epoch, d.gone_ms).await {
                Some(true) => {
                    tracing::info!(
                        "cluster: the delayed will of {:?} not published: its session was resumed",
                        String::from_utf8_lossy(&d.client)
                    );
                    self.status.wills_resumed.fetch_add(1, Ordering::Relaxed);
                }
                Some(false) => {
                    if self.publish_fenced(&d.record, publish).await.is_err() {
                        return false;
                    }
                }
                None => {
                    d.due = Instant::now() + WRITE_BACKOFF_MAX;
                    delayed.push(d);
                }
            }
        }
        true
    }

    /// Whether `client` connected again since its will was registered at `epoch`
    /// and its connection went at `gone_ms` (`None`: the ownership entry cannot be
    /// read now): a newer claim anywhere, or a CONNECT this node served on its own.
    async fn resumed(&self, client: &Bytes, epoch: u64, gone_ms: u64) -> Option<bool> {
        if self.claims.served_locally_since(client, gone_ms) {
            return Some(true);
        }
        self.claims
            .owner(client)
            .await
            .map(|o| resumed_since(o.as_ref(), epoch))
    }

    /// Which of the wills this node holds another node took while this one looked
    /// dead (the entry is gone, and this node did not delete it): those wills were
    /// published, so their clients are told to go (`taken`) and their wills are not
    /// published again. An entry that cannot be read now is checked at the next call.
    async fn reconcile(
        &self,
        wills: &kv::Store,
        held: &mut HashSet<Bytes>,
        taken: &mpsc::Sender<Bytes>,
    ) {
        let clients: Vec<Bytes> = held.iter().cloned().collect();
        for client in clients {
            // From the stream leader (review10 L6): a lagging replica's "no entry"
            // would close a client whose will is still in the bucket, to fire
            // wrongly when this node dies.
            let gone = match leader_entry(wills, &will_key(&client, &self.me)).await {
                LeaderRead::Gone => true,
                LeaderRead::Held(_) => false,
                LeaderRead::Unknown(e) => {
                    tracing::debug!("cluster: will entry not read: {e}");
                    false
                }
            };
            if gone {
                held.remove(&client);
                self.status.wills_taken.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "cluster: the will of {:?} was published by another node while this one \
                     was cut from NATS; disconnecting that client",
                    String::from_utf8_lossy(&client)
                );
                if taken.send(client).await.is_err() {
                    return;
                }
            }
        }
    }

    /// At a graceful stop, after the loops' last changes were written: deletes every
    /// wills entry of this incarnation (a client still connected had its will
    /// published or dropped by this node as it closed), so no survivor fires one.
    /// Bounded by the caller; what it cannot delete (NATS away) a survivor publishes.
    pub async fn withdraw_all(&self) {
        let Some(wills) = super::link::bucket(
            &self.js,
            WILLS_BUCKET,
            "ringmq wills of connected clients (key: client.node.incarnation)",
            self.replicas,
            &self.status,
        )
        .await
        else {
            return;
        };
        let mut mine = Vec::new();
        if let Ok(mut keys) = wills.keys().await {
            while let Ok(Some(Ok(k))) = tokio::time::timeout(SWEEP_LIST_MAX, keys.next()).await {
                if owner_of_key(&k) == Some(self.me.as_str()) {
                    mine.push(k);
                }
            }
        }
        for k in mine {
            if wills.delete(&k).await.is_ok() {
                self.status.wills_withdrawn.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Heartbeats, and the sweep that publishes dead incarnations' wills (handed to
    /// the main task on `tx`). Every node's heartbeat comes in on a watch of the
    /// bucket (current values first), so a beat reads nothing but its own put.
    pub async fn liveness(
        self,
        tx: mpsc::Sender<TakenWill>,
        reconcile: Arc<Notify>,
        lease: tokio::sync::watch::Sender<Lease>,
    ) {
        let (nodes, wills) = self.buckets().await;
        // The sweep runs in its own task (review M6): its per-orphan round trips, and
        // its wait for room in the main task, never delay a beat, which would make
        // this node look dead to the others. It takes the latest beat's view.
        let (sweep_tx, sweep_rx) = tokio::sync::watch::channel(None);
        let sweep_more = Arc::new(AtomicBool::new(false));
        let sweeper = tokio::spawn(
            self.clone()
                .sweeper(wills, sweep_rx, sweep_more.clone(), tx),
        );
        // The sweeper ends with this task (it is aborted when the thread stops).
        struct AbortOnDrop(tokio::task::JoinHandle<()>);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let _sweeper = AbortOnDrop(sweeper);
        let my_key = b64(self.node.as_bytes());
        let my_value = Bytes::from(format!("{:016x}", self.incarnation));
        let mut name_guard = super::health::NameGuard::new(format!("{:016x}", self.incarnation));
        // This node's liveness timings, announced once under a key of their own (and
        // again if that entry is deleted), compared with every live peer's at each
        // beat (review10 L2, M6).
        let my_timings_key = super::health::timings_key(&my_key);
        let mine = self.timings.announced();
        let my_timings = Bytes::from(mine.encode());
        let mut timings_guard = super::health::TimingsGuard::new(mine);
        let mut announced = false;
        // Heartbeat key -> (incarnation, server time of the put).
        let mut beats: HashMap<String, (String, i128)> = HashMap::new();
        let mut alive: HashSet<String> = HashSet::new();
        let mut n = 0u32;
        let mut watching = true;
        // When the last heartbeat landed, and when to check the wills once more after
        // a return (a survivor's sweep may have started before it saw this node back).
        let mut last_beat = Instant::now();
        let mut recheck_at: Option<Instant> = None;
        let mut tick = tokio::time::interval(self.timings.beat);
        let dead_after_ns = self.timings.dead_after_ns();
        // Made and made again in a task of its own (`keep_watching`): making the watch
        // can go unanswered, and a beat waiting on it would make this node fence
        // itself and look dead to the others.
        let (beats_tx, mut beats_rx) = mpsc::channel::<kv::Entry>(BEATS_WATCH_MAX);
        let watcher = {
            let nodes = nodes.clone();
            tokio::spawn(keep_watching(
                move || {
                    let nodes = nodes.clone();
                    async move { nodes.watch_with_history(">").await }
                },
                beats_tx,
                "the heartbeat watch",
            ))
        };
        let _watcher = AbortOnDrop(watcher);
        loop {
            tokio::select! {
                e = beats_rx.recv(), if watching => {
                    match e {
                        Some(e) if super::health::node_of_timings_key(&e.key).is_some() => {
                            let put = e.operation == kv::Operation::Put;
                            if e.key == my_timings_key && !put {
                                announced = false;
                            }
                            if let Some(node) = super::health::node_of_timings_key(&e.key) {
                                timings_guard.on_announcement(node, put.then_some(&e.value[..]));
                            }
                        }
                        Some(e) if e.operation == kv::Operation::Put => {
                            let inc = String::from_utf8_lossy(&e.value).into_owned();
                            let at = e.created.unix_timestamp_nanos();
                            if e.key == my_key {
                                name_guard.on_beat(&inc, at);
                            }
                            beats.insert(e.key, (inc, at));
                        }
                        Some(e) => {
                            beats.remove(&e.key);
                        }
                        None => {
                            // `keep_watching` ends only with this task's receiver.
                            tracing::error!("cluster: the heartbeat watch task ended");
                            watching = false;
                        }
                    }
                }
                _ = tick.tick() => {
                    // The lease counts from the send: the server's time for this
                    // heartbeat is at or after it (`Lease`).
                    let sent = Instant::now();
                    if nodes.put(&my_key, my_value.clone()).await.is_err() {
                        continue;
                    }
                    lease.send_modify(|l| l.renewed(sent));
                    if !announced {
                        announced = nodes.put(&my_timings_key, my_timings.clone()).await.is_ok();
                    }
                    let twin = name_guard.conflict(dead_after_ns).map(str::to_string);
                    self.note_name_conflict(twin.as_deref());
                    if last_beat.elapsed() >= self.timings.fence_after {
                        // Back from a cut that others may have taken for death.
                        tracing::info!("cluster: heartbeat back after {:?}; checking this node's wills", last_beat.elapsed());
                        reconcile.notify_one();
                        recheck_at = Some(Instant::now() + self.timings.dead_after);
                    } else if recheck_at.is_some_and(|t| Instant::now() >= t) {
                        recheck_at = None;
                        reconcile.notify_one();
                    }
                    last_beat = Instant::now();
                    // Our own last put, as the watch delivered it, is "now".
                    let Some(now) = beats.get(&my_key).map(|b| b.1) else {
                        continue;
                    };
                    let now_alive = alive_at(&beats, now, dead_after_ns);
                    let news = timings_guard.check(|k| {
                        beats.get(k).is_some_and(|(_, at)| now - at < dead_after_ns)
                    });
                    self.note_timings(news);
                    if let Ok(mut a) = self.alive_nodes.lock() {
                        *a = Some(
                            now_alive
                                .iter()
                                .filter_map(|i| i.split_once('.').map(|(n, _)| n.to_string()))
                                .collect(),
                        );
                    }
                    let gone: Vec<_> = alive.difference(&now_alive).cloned().collect();
                    if !gone.is_empty() {
                        tracing::info!("cluster: node incarnations gone: {gone:?}");
                    }
                    // A sweep cut at `SWEEP_MAX` resumes at the next beat.
                    let more = sweep_more.swap(false, Ordering::AcqRel);
                    if n % SWEEP_EVERY == 0 || !gone.is_empty() || more {
                        let mut beats = beats.clone();
                        if twin.is_some() {
                            // Two processes beat under this name, so neither's
                            // heartbeat says whether the other is dead: none of this
                            // name's wills is taken for a dead node's meanwhile.
                            beats.remove(&my_key);
                        }
                        sweep_tx.send_replace(Some(SweepAsk {
                            beats,
                            now_ns: now,
                            alive: now_alive.clone(),
                        }));
                    }
                    alive = now_alive;
                    n = n.wrapping_add(1);
                }
            }
        }
    }

    /// Says (once per difference, and when none is left) that a live peer's liveness
    /// timings differ from this node's: `/healthz` is 503 meanwhile.
    fn note_timings(&self, news: super::health::TimingsNews) {
        use super::health::TimingsNews;
        let Ok(mut c) = self.status.timings_mismatch.lock() else {
            return;
        };
        match news {
            TimingsNews::Same => {}
            TimingsNews::Found(m) => {
                self.status
                    .timings_mismatches
                    .fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "cluster: {m}; with different liveness timings nodes take live peers \
                     for dead (and publish their clients' wills) or fence too late: set \
                     the same cluster_beat_ms, cluster_fence_after_ms and \
                     cluster_dead_after_ms on every node"
                );
                *c = Some(m.to_string());
            }
            TimingsNews::Cleared => {
                tracing::info!("cluster: no live peer's liveness timings differ any more");
                *c = None;
            }
        }
    }

    /// Says (once, and again when it ends) that another process beats under this
    /// node's name (review10 M6): `/healthz` is 503 meanwhile.
    fn note_name_conflict(&self, twin: Option<&str>) {
        let Ok(mut c) = self.status.name_conflict.lock() else {
            return;
        };
        match (c.is_some(), twin) {
            (false, Some(other)) => {
                self.status.name_conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "cluster: another process (incarnation {other}) beats under \
                     cluster_node_name {:?}, this one is {:016x}; give every node its own \
                     name: until then wills and cross-node messages of both are unreliable",
                    self.node,
                    self.incarnation
                );
                *c = Some(other.to_string());
            }
            (true, None) => {
                tracing::info!(
                    "cluster: no other process beats under cluster_node_name {:?} any more",
                    self.node
                );
                *c = None;
            }
            _ => {}
        }
    }
}

/// What the stream leader says of a will entry this node wrote (review10 L6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderRead {
    /// Still there, at this revision.
    Held(u64),
    /// Not this node's any more: deleted or purged (a delete marker), never there,
    /// or marked by a survivor that took it (`Taken`), which publishes it (or
    /// another does if it dies first).
    Gone,
    /// Not answered (why): nothing may be concluded.
    Unknown(String),
}

/// The KV operation header JetStream puts on a delete or purge marker.
const KV_OPERATION: &str = "KV-Operation";

/// See `LeaderRead`: one "last message for this subject" answer (its sequence, its
/// `KV-Operation` header and whether its value is a mark, `decode_taken`). A bucket with `allow_direct` (`link::bucket`) answers
/// `kv::Store::entry` from any replica, and one that lags may not hold the entry
/// yet; this read is the stream leader's.
pub fn leader_read(
    r: Result<(u64, Option<&str>, bool), &jetstream::stream::LastRawMessageError>,
) -> LeaderRead {
    use jetstream::stream::LastRawMessageErrorKind as K;
    match r {
        Ok((sequence, None | Some("PUT"), false)) => LeaderRead::Held(sequence),
        Ok(_) => LeaderRead::Gone,
        Err(e) if e.kind() == K::NoMessageFound => LeaderRead::Gone,
        Err(e) => LeaderRead::Unknown(e.to_string()),
    }
}

/// `key`'s entry in `wills` as the stream leader holds it (no direct get).
async fn leader_entry(wills: &kv::Store, key: &str) -> LeaderRead {
    let subject = format!("{}{key}", wills.prefix);
    let r = wills.stream.get_last_raw_message_by_subject(&subject).await;
    leader_read(r.as_ref().map(|m| {
        let op = m.headers.get(KV_OPERATION).map(|v| v.as_str());
        (m.sequence, op, decode_taken(&m.payload).is_some())
    }))
}

/// The incarnations whose heartbeat is younger than `dead_after_ns` at server time
/// `now_ns`.
fn alive_at(
    beats: &HashMap<String, (String, i128)>,
    now_ns: i128,
    dead_after_ns: i128,
) -> HashSet<String> {
    beats
        .iter()
        .filter(|(_, (_, at))| now_ns - at < dead_after_ns)
        .map(|(k, (inc, _))| format!("{k}.{inc}"))
        .collect()
}
