//! The loops' side of the cluster link, compiled in every build (the cluster thread
//! itself, `link.rs`, needs tokio's network half, which `--cfg loom` builds leave out):
//! the bounded rings both ways, the doorbell that wakes the cluster thread, and the
//! node's cluster figures that `/healthz` and `/metrics` read.
//!
//! - Loop → cluster: once per turn a loop pushes its `ClusterOut` (the turn's
//!   publishes and interest changes) into its own SPSC ring (`ring::spsc`, the mesh's
//!   ring type) and rings the doorbell. A full ring drops the plain publishes
//!   (counted) and keeps for the next turn the interest changes (they decide which NATS
//!   subscriptions the node holds), the publishes whose PUBACK is held for them,
//!   session claims and hand-overs (a CONNECT, or another node's, waits for them),
//!   fenced wills and reasserted hand-overs (a lost one would fire a will twice or
//!   strand a session; review10 M1) and the ids served without the cluster (their
//!   reconcile). All of these are bounded by the loop's connections and sessions.
//! - Cluster → loop: one SPSC ring per loop carrying ready `ClusterIn`s (messages, and
//!   the JetStream acks held PUBACKs wait for), and the loop's `Remote::wake` once per
//!   burst. A full ring drops a QoS 0 message (counted); an ack, a QoS 1/2 message
//!   and a retained entry wait in the cluster thread for room instead (a dropped ack
//!   would leave its PUBACK held; a dropped QoS 1/2 message was PUBACKed on its
//!   node), bounded (`link.rs` `PendingIn`). The fence does not travel on the ring
//!   alone: each loop reads `ClusterStatus::fenced` every turn.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use crate::io::Remote;
use crate::ring::{Consumer, Producer};
use crate::shard::{ClusterIn, ClusterOut};

/// Turns of output waiting in each loop's ring to the cluster thread.
pub const FROM_LOOP_MAX: usize = 256;
/// Messages waiting in each loop's ring from the cluster thread.
pub const TO_LOOP_MAX: usize = 8192;

/// Why a message cannot be forwarded to NATS (`ClusterStatus::refuses`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its subject (or retained key) would be over `subject::SUBJECT_MAX_BYTES`.
    Subject,
    /// With its headers it is over the server's `max_payload`.
    TooLarge,
}

/// The node's cluster state, shared with `/healthz` and `/metrics`. Plain atomics,
/// written by the cluster thread (and a drop counter by loops, once per turn at most).
#[derive(Debug, Default)]
pub struct ClusterStatus {
    pub node: String,
    /// This process's `Mqtt-Origin` (`headers::origin_of`): the loops key their own
    /// forwarded messages with it (`Shard::cluster_stamp`).
    pub origin: String,
    pub connected: AtomicBool,
    /// The cluster thread ended (bad NATS settings, no runtime): nothing answers
    /// session claims, so the loops serve every CONNECT from their own state.
    pub stopped: AtomicBool,
    pub disconnects: AtomicU64,
    pub forwarded: AtomicU64,
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    pub malformed: AtomicU64,
    /// Publishes a loop could not hand over (batch channel full).
    pub dropped_out: AtomicU64,
    /// Messages for a loop whose ring was full (QoS 0 at once; QoS 1/2 and retained
    /// entries only past the bounded wait, `link.rs` `PendingIn`).
    pub dropped_in: AtomicU64,
    /// The NATS server's `max_payload` (0 until known: NATS's default is assumed).
    pub max_payload: AtomicU64,
    /// Publishes, subscriptions and retained writes not taken to NATS because their
    /// subject would be over `subject::SUBJECT_MAX_BYTES` (review10 H3): refused to
    /// the client, or (a will, a subscription loaded from elsewhere) kept local.
    pub refused_subjects: AtomicU64,
    /// Publishes and retained writes larger than NATS's `max_payload` with their
    /// headers: refused to the client, or (a will, QoS 0) kept local.
    pub refused_large: AtomicU64,
    /// Shared-group messages from NATS for a group with no member left on this node.
    pub shared_dropped: AtomicU64,
    /// The QoS 2 publishers' packet ids this node saw lately (review10 H5), read by
    /// the cluster thread for messages from NATS and by a loop for a DUP = 1 QoS 2
    /// PUBLISH its session has no state for; held for one lookup at a time.
    pub qos2_window: Mutex<super::headers::Qos2Window>,
    /// QoS 2 re-sends (DUP = 1) of a message this node had already received through
    /// another node: acknowledged, not delivered again.
    pub qos2_resends: AtomicU64,
    /// QoS 0 publishes not written to NATS: it was away, or the write queue full.
    pub forward_dropped: AtomicU64,
    /// The cluster thread's writer holds `link.rs` `FORWARD_BACKLOG_MAX` publishes
    /// not yet written: a loop drops a plain QoS 0 copy before making it (counted in
    /// `forward_dropped`), which the cluster thread would only drop after taking it
    /// off the ring. Set by the main task after each round of the rings, cleared by
    /// the writer after each batch; `Outgoing::admit` still holds the exact bound.
    pub forward_full: AtomicBool,
    /// Messages async-nats dropped because a subscription's channel was full (its
    /// slow-consumer events; at least this many).
    pub slow_consumers: AtomicU64,
    pub subscriptions: AtomicU64,
    pub retained_applied: AtomicU64,
    pub retained_dropped: AtomicU64,
    pub retained_errors: AtomicU64,
    /// Held acknowledgements released after JetStream stored the message.
    pub qos_stored: AtomicU64,
    /// Held acknowledgements JetStream did not confirm (NATS away, no stream, write
    /// queue full, no ack in time): the publish was refused (MQTT 5 0x80; 3.1.1
    /// closed so the client re-sends); local subscribers had it already.
    pub qos_unconfirmed: AtomicU64,
    /// CONNECTs that made this node their session's owner in the sessions bucket.
    pub sessions_claimed: AtomicU64,
    /// Sessions another node handed over to this one (and the reverse).
    pub sessions_received: AtomicU64,
    pub sessions_handed: AtomicU64,
    /// Claims whose previous owner never answered: its session state was lost.
    pub sessions_lost: AtomicU64,
    /// Takeovers whose hand-over was larger than NATS `max_payload`: the session
    /// stayed (offline) on this node instead of being ended unsent.
    pub sessions_kept: AtomicU64,
    /// Copies in hand-over deltas dropped because the same cluster message had
    /// reached the session here directly (the old node's interest grace).
    pub delta_duplicates: AtomicU64,
    /// Hand-over confirmations the old node did not answer, asked again after a
    /// backoff (review10 M8), and those given up (their session left, their watch
    /// ended, or `RETRYING_MAX` were being asked again: the old node keeps its copy).
    pub confirms_retried: AtomicU64,
    pub confirms_given_up: AtomicU64,
    /// CONNECTs served from this node's own state: NATS or the bucket did not answer.
    pub sessions_local: AtomicU64,
    /// Persistent sessions' subscriptions saved to their bucket entry, and sessions
    /// rebuilt from it because their owner did not answer (their queue was lost).
    pub sessions_saved: AtomicU64,
    pub sessions_recovered: AtomicU64,
    /// Session saves NATS did not take, kept and tried again (review10 M4), and
    /// saved sessions a claim did not resume because they had expired.
    pub sessions_save_retries: AtomicU64,
    pub sessions_expired: AtomicU64,
    /// Delayed wills (of a dead node, or fenced here) not published because their
    /// client connected again within the delay (review10 M9).
    pub wills_resumed: AtomicU64,
    /// Ids served on their own by this node and another during a partition, settled
    /// to one owner when NATS returned (`sessions.rs` `reconcile`).
    pub sessions_reconciled: AtomicU64,
    /// Wills written to the wills bucket, writes that failed, and dead nodes' wills
    /// this node claimed and published.
    pub wills_stored: AtomicU64,
    pub wills_errors: AtomicU64,
    pub wills_published: AtomicU64,
    /// Sweeps of the wills bucket this node finished (tests wait for one more sweep
    /// to show a will was published once, not twice).
    pub wills_sweeps: AtomicU64,
    /// Wills of this node's connected clients that another node published while this
    /// one was cut from NATS (found on its return; those clients are disconnected).
    pub wills_taken: AtomicU64,
    /// This node's wills entries deleted at a graceful stop (so no survivor fires them).
    pub wills_withdrawn: AtomicU64,
    /// The self-fencing lease (`wills.rs`): true while no heartbeat of this node was
    /// acknowledged for `cluster_fence_after_ms`; how often it ran out; the
    /// connections it closed (their wills left to the cluster); and the wills of
    /// fenced connections this node published itself once its heartbeat was back.
    pub fenced: AtomicBool,
    pub fences: AtomicU64,
    pub wills_fenced: AtomicU64,
    pub wills_fenced_published: AtomicU64,
    /// Hand-overs the asker never confirmed (it looks dead) whose session this node
    /// took back by compare-and-set (review M1), and those whose entry a newer claim
    /// held by then, the session sent on to that claimer.
    pub sessions_reasserted: AtomicU64,
    pub sessions_sent_on: AtomicU64,
    /// `cluster_kv_replicas`, named in `/healthz` when JetStream is not ready.
    pub kv_replicas: usize,
    /// Which JetStream streams and buckets exist, and why one could not be made
    /// (review10 M6); `/healthz` is 503 until all exist.
    pub jetstream: Mutex<super::health::JetStreamHealth>,
    /// Another process beating under this node's name (its incarnation), while it
    /// still beats (`health::NameGuard`); and how often one was found.
    pub name_conflict: Mutex<Option<String>>,
    pub name_conflicts: AtomicU64,
    /// A live peer whose liveness timings differ from this node's
    /// (`health::TimingsGuard`, its text), while it lasts; and how many such
    /// differences were found (review10 L2, M6).
    pub timings_mismatch: Mutex<Option<String>>,
    pub timings_mismatches: AtomicU64,
    /// The retained bucket's first full read reached the loops (review10 M5): until
    /// then a new subscriber could miss a retained message, so `/healthz` is 503.
    pub retained_loaded: AtomicBool,
    /// Runs of the reconcile of ids served locally, including those while connected
    /// (review10 M3).
    pub reconcile_runs: AtomicU64,
}

impl ClusterStatus {
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    pub fn jetstream_ready(&self) -> bool {
        self.jetstream.lock().is_ok_and(|j| j.is_ready())
    }

    /// Why `/healthz` answers 503 for the cluster (`None`: it does not), the most
    /// basic cause first: a node cut from NATS, one sharing its name with another
    /// process, one whose liveness timings differ from a peer's, one whose JetStream parts are missing (no durable QoS 1, no session
    /// moves, no cluster wills), one whose retained replica is not loaded yet.
    pub fn unhealthy(&self) -> Option<String> {
        if !self.is_connected() {
            return Some("cluster: NATS disconnected".into());
        }
        let twin = self.name_conflict.lock().ok().and_then(|c| c.clone());
        if let Some(other) = twin {
            return Some(format!(
                "cluster: cluster_node_name {:?} is also used by another running process \
                 (incarnation {other}); every node needs its own name",
                self.node
            ));
        }
        let differs = self.timings_mismatch.lock().ok().and_then(|c| c.clone());
        if let Some(what) = differs {
            return Some(format!(
                "cluster: {what} (the liveness timings must be the same on every node)"
            ));
        }
        let missing = self.jetstream.lock().ok().and_then(|j| j.missing());
        if let Some(why) = missing {
            return Some(format!(
                "cluster: JetStream not ready (cluster_kv_replicas = {}): {why}",
                self.kv_replicas
            ));
        }
        if !self.retained_loaded.load(Ordering::Acquire) {
            return Some(
                "cluster: retained not loaded (the bucket's first read is not done)".into(),
            );
        }
        None
    }

    /// Whether `publisher`'s QoS 2 message is a re-send of one this node received
    /// already (`Qos2Window::resent`; counted when it is).
    pub fn qos2_resent(
        &self,
        publisher: &super::headers::Publisher,
        topic: &[u8],
        payload: &[u8],
        now: std::time::Instant,
    ) -> bool {
        let resent = match self.qos2_window.lock() {
            Ok(mut w) => w.resent(publisher, topic, payload, now),
            Err(poisoned) => poisoned.into_inner().resent(publisher, topic, payload, now),
        };
        if resent {
            self.qos2_resends.fetch_add(1, Ordering::Relaxed);
        }
        resent
    }

    /// The largest message (headers and payload) NATS takes from this node.
    pub fn max_payload(&self) -> usize {
        match self.max_payload.load(Ordering::Relaxed) {
            0 => super::headers::NATS_MAX_PAYLOAD_DEFAULT,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        }
    }

    /// Why a message published here cannot travel on NATS (review10 H3), if it cannot:
    /// its subject is too long, or it is larger than `max_payload`. Counted.
    pub fn refuses(
        &self,
        topic: &[u8],
        retain: bool,
        properties: &crate::protocol::PublishProperties,
        payload_len: usize,
    ) -> Option<Refusal> {
        if !super::subject::topic_fits(topic, retain) {
            self.refused_subjects.fetch_add(1, Ordering::Relaxed);
            return Some(Refusal::Subject);
        }
        // Encodes the properties only when there are any.
        let bytes = super::headers::forward_bytes(
            super::headers::origin_len(&self.node),
            properties,
            payload_len,
            retain,
        );
        if bytes > self.max_payload() {
            self.refused_large.fetch_add(1, Ordering::Relaxed);
            return Some(Refusal::TooLarge);
        }
        None
    }

    /// The Prometheus lines of the cluster figures (appended to `/metrics`).
    pub fn prometheus_text(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::with_capacity(1024);
        let mut line = |name: &str, kind: &str, help: &str, v: u64| {
            s.push_str(&format!(
                "# HELP ringmq_cluster_{name} {help}\n# TYPE ringmq_cluster_{name} {kind}\nringmq_cluster_{name} {v}\n"
            ));
        };
        line(
            "connected",
            "gauge",
            "1 while the node is connected to NATS",
            u64::from(self.is_connected()),
        );
        line(
            "stopped",
            "gauge",
            "1 once the cluster thread has ended (bad NATS settings): the node runs alone",
            u64::from(self.is_stopped()),
        );
        line(
            "disconnects_total",
            "counter",
            "Times the NATS connection was lost",
            g(&self.disconnects),
        );
        line(
            "forwarded_total",
            "counter",
            "Messages published to NATS",
            g(&self.forwarded),
        );
        line(
            "received_total",
            "counter",
            "Messages received from NATS and handed to loops",
            g(&self.received),
        );
        line(
            "duplicates_total",
            "counter",
            "Second copies dropped: from NATS (one per extra matching filter), and taken wills another survivor published already",
            g(&self.duplicates),
        );
        line(
            "malformed_total",
            "counter",
            "Messages from NATS with a subject or headers ringmq did not make",
            g(&self.malformed),
        );
        line(
            "dropped_out_total",
            "counter",
            "Publishes not forwarded: the cluster thread's queue was full",
            g(&self.dropped_out),
        );
        line(
            "dropped_in_total",
            "counter",
            "Messages from NATS not delivered: a loop's queue was full (QoS 1/2 after a bounded wait)",
            g(&self.dropped_in),
        );
        line(
            "max_payload_bytes",
            "gauge",
            "The NATS server's max_payload, which bounds what this node forwards (0: not yet known)",
            g(&self.max_payload),
        );
        line(
            "refused_subjects_total",
            "counter",
            "Publishes, subscriptions and retained writes whose NATS subject would be too long",
            g(&self.refused_subjects),
        );
        line(
            "refused_large_total",
            "counter",
            "Publishes and retained writes over NATS max_payload with their headers",
            g(&self.refused_large),
        );
        line(
            "qos2_resends_total",
            "counter",
            "QoS 2 re-sends of a message already received through another node, not delivered again",
            g(&self.qos2_resends),
        );
        line(
            "shared_dropped_total",
            "counter",
            "Shared-group messages from NATS whose group had no member left here",
            g(&self.shared_dropped),
        );
        line(
            "forward_dropped_total",
            "counter",
            "QoS 0 publishes not written to NATS: it was away or the write queue was full",
            g(&self.forward_dropped),
        );
        line(
            "slow_consumer_total",
            "counter",
            "Messages from NATS that async-nats dropped: a subscription's channel was full",
            g(&self.slow_consumers),
        );
        line(
            "subscriptions",
            "gauge",
            "NATS subscriptions held for local interest (filter, group)",
            g(&self.subscriptions),
        );
        line(
            "retained_applied_total",
            "counter",
            "Retained entries applied from the KV bucket",
            g(&self.retained_applied),
        );
        line(
            "retained_dropped_total",
            "counter",
            "Retained updates not written to the KV bucket: too many topics were waiting",
            g(&self.retained_dropped),
        );
        line(
            "qos_stored_total",
            "counter",
            "QoS 1/2 publishes acknowledged after JetStream stored them",
            g(&self.qos_stored),
        );
        line(
            "qos_unconfirmed_total",
            "counter",
            "QoS 1/2 publishes JetStream did not store, refused (MQTT 5 0x80, 3.1.1 closed)",
            g(&self.qos_unconfirmed),
        );
        line(
            "sessions_claimed_total",
            "counter",
            "CONNECTs that made this node the session's owner in the sessions bucket",
            g(&self.sessions_claimed),
        );
        line(
            "sessions_received_total",
            "counter",
            "Sessions handed over to this node by their previous owner",
            g(&self.sessions_received),
        );
        line(
            "sessions_handed_total",
            "counter",
            "Sessions this node handed over to another node's CONNECT",
            g(&self.sessions_handed),
        );
        line(
            "sessions_lost_total",
            "counter",
            "Claims whose previous owner did not answer: its session state was lost",
            g(&self.sessions_lost),
        );
        line(
            "sessions_kept_total",
            "counter",
            "Takeovers whose session was too large for one NATS message: kept here, offline",
            g(&self.sessions_kept),
        );
        line(
            "sessions_delta_duplicates_total",
            "counter",
            "Hand-over delta copies dropped: the message had reached the session here directly",
            g(&self.delta_duplicates),
        );
        line(
            "sessions_confirms_retried_total",
            "counter",
            "Hand-over confirmations the old node did not answer, asked again after a backoff",
            g(&self.confirms_retried),
        );
        line(
            "sessions_confirms_given_up_total",
            "counter",
            "Hand-over confirmations given up unanswered: the old node keeps its copy",
            g(&self.confirms_given_up),
        );
        line(
            "sessions_local_total",
            "counter",
            "CONNECTs served from this node's own state: NATS or the sessions bucket did not answer",
            g(&self.sessions_local),
        );
        line(
            "sessions_saved_total",
            "counter",
            "Persistent sessions' subscriptions saved to the sessions bucket",
            g(&self.sessions_saved),
        );
        line(
            "sessions_save_retries_total",
            "counter",
            "Session saves the sessions bucket did not take, kept and tried again",
            g(&self.sessions_save_retries),
        );
        line(
            "sessions_expired_total",
            "counter",
            "Saved sessions of a dead owner not resumed because they had expired",
            g(&self.sessions_expired),
        );
        line(
            "wills_resumed_total",
            "counter",
            "Delayed wills not published because their client connected again within the delay",
            g(&self.wills_resumed),
        );
        line(
            "sessions_recovered_total",
            "counter",
            "Sessions rebuilt from the bucket (subscriptions only) because their owner was gone",
            g(&self.sessions_recovered),
        );
        line(
            "sessions_reconciled_total",
            "counter",
            "Sessions served during a partition settled to one owner when NATS returned",
            g(&self.sessions_reconciled),
        );
        line(
            "wills_stored_total",
            "counter",
            "Wills of connected clients written to the wills bucket",
            g(&self.wills_stored),
        );
        line(
            "wills_errors_total",
            "counter",
            "Wills bucket writes that failed",
            g(&self.wills_errors),
        );
        line(
            "wills_published_total",
            "counter",
            "Wills of dead nodes' clients this node claimed and published",
            g(&self.wills_published),
        );
        line(
            "wills_sweeps_total",
            "counter",
            "Sweeps of the wills bucket for dead nodes' wills this node finished",
            g(&self.wills_sweeps),
        );
        line(
            "wills_taken_total",
            "counter",
            "Wills of connected clients another node published while this node was cut from NATS",
            g(&self.wills_taken),
        );
        line(
            "wills_withdrawn_total",
            "counter",
            "Wills entries this node deleted at a graceful stop",
            g(&self.wills_withdrawn),
        );
        line(
            "fenced",
            "gauge",
            "1 while no heartbeat of this node was acknowledged for cluster_fence_after_ms",
            u64::from(self.fenced.load(Ordering::Relaxed)),
        );
        line(
            "fences_total",
            "counter",
            "Times the heartbeat lease ran out",
            g(&self.fences),
        );
        line(
            "wills_fenced_total",
            "counter",
            "Connections with a will closed by the fence (0x9C), their wills left to the cluster",
            g(&self.wills_fenced),
        );
        line(
            "wills_fenced_published_total",
            "counter",
            "Wills of fenced connections this node published once its heartbeat was back",
            g(&self.wills_fenced_published),
        );
        line(
            "sessions_reasserted_total",
            "counter",
            "Unconfirmed hand-overs whose session this node took back (the asker looked dead)",
            g(&self.sessions_reasserted),
        );
        line(
            "sessions_sent_on_total",
            "counter",
            "Unconfirmed hand-overs whose session went on to a newer claimer",
            g(&self.sessions_sent_on),
        );
        line(
            "retained_errors_total",
            "counter",
            "Retained KV writes or watches that failed",
            g(&self.retained_errors),
        );
        line(
            "retained_loaded",
            "gauge",
            "1 once the retained bucket's first full read reached the loops",
            u64::from(self.retained_loaded.load(Ordering::Relaxed)),
        );
        line(
            "jetstream_ready",
            "gauge",
            "1 once the QoS stream and the retained, sessions, nodes and wills buckets exist",
            u64::from(self.jetstream_ready()),
        );
        line(
            "name_conflict",
            "gauge",
            "1 while another process beats under this node's cluster_node_name",
            u64::from(self.name_conflict.lock().is_ok_and(|c| c.is_some())),
        );
        line(
            "name_conflicts_total",
            "counter",
            "Times another process was found beating under this node's cluster_node_name",
            g(&self.name_conflicts),
        );
        line(
            "timings_mismatch",
            "gauge",
            "1 while a live peer's liveness timings differ from this node's",
            u64::from(self.timings_mismatch.lock().is_ok_and(|c| c.is_some())),
        );
        line(
            "timings_mismatches_total",
            "counter",
            "Differences found between a peer's liveness timings and this node's",
            g(&self.timings_mismatches),
        );
        line(
            "reconcile_runs_total",
            "counter",
            "Runs of the reconcile of ids this node served on its own",
            g(&self.reconcile_runs),
        );
        s
    }
}

/// Wakes the cluster thread's task from the loops (std only: no runtime here).
#[derive(Debug, Default)]
pub struct Doorbell {
    rung: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Doorbell {
    pub fn ring(&self) {
        if !self.rung.swap(true, Ordering::AcqRel) {
            let w = self.waker.lock().ok().and_then(|mut g| g.take());
            if let Some(w) = w {
                w.wake();
            }
        }
    }

    /// Ready once rung since the last ready. The waker is stored before the flag is
    /// read, so a ring between the two is seen by the read, and one before the store
    /// left the flag set.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
        if let Ok(mut g) = self.waker.lock() {
            *g = Some(cx.waker().clone());
        }
        if self.rung.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// A loop's end of the cluster link.
pub struct LoopLink {
    pub(crate) out: Producer<ClusterOut>,
    pub(crate) rx: Consumer<ClusterIn>,
    pub(crate) bell: Arc<Doorbell>,
    pub(crate) wake: Arc<OnceLock<Arc<Remote>>>,
    pub(crate) status: Arc<ClusterStatus>,
    /// What a full ring sent back and must not be lost: everything but the plain
    /// publishes. It goes first next turn; bounded by the distinct filters, the
    /// clients' in-flight windows and the loop's connections and sessions.
    pub(crate) pending: ClusterOut,
}

impl LoopLink {
    /// Binds the loop's wake-up handle (once the loop exists).
    pub fn bind(&self, wake: Arc<Remote>) {
        let _ = self.wake.set(wake);
    }

    /// Hands this turn's outbox to the cluster thread without waiting.
    pub fn send(&mut self, mut out: ClusterOut) {
        if self.backed_up() {
            let mut first = std::mem::take(&mut self.pending);
            first.interest.append(&mut out.interest);
            first.publishes.append(&mut out.publishes);
            first.claims.append(&mut out.claims);
            first.handovers.append(&mut out.handovers);
            first.confirms.append(&mut out.confirms);
            first.yields.append(&mut out.yields);
            first.wills.append(&mut out.wills);
            first.states.append(&mut out.states);
            first.fenced.append(&mut out.fenced);
            first.reasserts.append(&mut out.reasserts);
            first.local.append(&mut out.local);
            first.dropped += out.dropped;
            first.writer_full_dropped += out.writer_full_dropped;
            out = first;
        }
        if out.dropped > 0 {
            self.status
                .dropped_out
                .fetch_add(out.dropped, Ordering::Relaxed);
            out.dropped = 0;
        }
        if out.writer_full_dropped > 0 {
            self.status
                .forward_dropped
                .fetch_add(out.writer_full_dropped, Ordering::Relaxed);
            out.writer_full_dropped = 0;
        }
        if let Err(mut back) = self.out.push(out) {
            // Plain copies are dropped (counted); a held acknowledgement's message,
            // interest changes, session claims/hand-overs and wills wait for room.
            let before = back.publishes.len();
            back.publishes.retain(|f| f.ack.is_some());
            self.status
                .dropped_out
                .fetch_add((before - back.publishes.len()) as u64, Ordering::Relaxed);
            self.pending = back;
        }
        self.bell.ring();
    }

    /// Whether something waits for room in the ring (the loop must come back soon).
    pub fn backed_up(&self) -> bool {
        !self.pending.interest.is_empty()
            || !self.pending.publishes.is_empty()
            || !self.pending.claims.is_empty()
            || !self.pending.handovers.is_empty()
            || !self.pending.confirms.is_empty()
            || !self.pending.yields.is_empty()
            || !self.pending.wills.is_empty()
            || !self.pending.states.is_empty()
            || !self.pending.fenced.is_empty()
            || !self.pending.reasserts.is_empty()
            || !self.pending.local.is_empty()
    }

    /// Up to `max` messages from NATS (and JetStream acks) for this loop.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(ClusterIn)) -> usize {
        let mut n = 0;
        while n < max {
            let Some(m) = self.rx.pop() else { break };
            f(m);
            n += 1;
        }
        n
    }

    pub fn has_inbound(&self) -> bool {
        !self.rx.is_empty()
    }
}
