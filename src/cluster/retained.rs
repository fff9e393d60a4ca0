//! The retained KV bucket, the cluster thread's side (review10 M5): the writer that
//! keeps this node's retained publishes in `ringmq_retained`, the watch that feeds
//! every loop's replica from it, and how an entry becomes a replica's message.
//!
//! - **Nothing dropped while NATS is away.** The loops' retained updates wait in a
//!   map of the latest value per topic (`RetainedQueue`), not a fixed queue: a cut
//!   node takes any number of updates of the topics it already has waiting, and new
//!   topics up to `PENDING_TOPICS_MAX` / `PENDING_BYTES_MAX` (past that an update is
//!   dropped and counted in `retained_dropped`). The writer retries a failed write
//!   until it lands. While a topic's write waits, the watch's older value for it is
//!   not applied: the replica keeps this node's newer one, which lands after.
//! - **Expiry by the bucket's clock.** An entry's Message Expiry Interval counts from
//!   its `created` time (the server's), so a node that reads it later (a start, a
//!   watch started again) serves it only for what remains, and an expired one is a
//!   delete. The age compares the server's time with this host's clock: skew between
//!   them shifts the expiry by that much (an age below 0 counts as 0).
//! - **Loaded before healthy.** `ClusterStatus::retained_loaded` is set once the
//!   watch's first pass (the bucket's current values, `delta` 0 on the last) reached
//!   the loops, or the bucket was empty; `/healthz` is 503 until then.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use super::bridge::ClusterStatus;
use super::headers;
use super::ClusterError;
use crate::session::{Message, NONE};

/// The retained bucket.
pub const RETAINED_BUCKET: &str = "ringmq_retained";
/// Bounds on the topics waiting for the writer, and their keys' and values' bytes.
const PENDING_TOPICS_MAX: usize = 65_536;
const PENDING_BYTES_MAX: usize = 64 << 20;
/// A stamp for retained entries from the bucket: not a shard of this node, so the
/// replicas' last-writer-wins tie-break never mistakes it for a local publish.
pub(super) const CLUSTER_ORIGIN: usize = u32::MAX as usize;

/// Retained writes waiting for the writer: the latest value per key (`None`: a
/// delete), keys in the order they first changed. See the module doc.
#[derive(Debug, Default)]
pub struct RetainedQueue {
    latest: HashMap<String, Option<Bytes>>,
    order: VecDeque<String>,
    bytes: usize,
}

fn cost(key: &str, value: &Option<Bytes>) -> usize {
    key.len() + value.as_ref().map_or(0, Bytes::len)
}

impl RetainedQueue {
    /// Queues `key`'s latest value; false when it was dropped (a key not waiting
    /// yet, past the bounds). A key already waiting is always replaced.
    pub fn put(&mut self, key: String, value: Option<Bytes>) -> bool {
        let new = cost(&key, &value);
        if let Some(old) = self.latest.get_mut(&key) {
            self.bytes = self.bytes - cost(&key, old) + new;
            *old = value;
            return true;
        }
        if self.latest.len() >= PENDING_TOPICS_MAX || self.bytes + new > PENDING_BYTES_MAX {
            return false;
        }
        self.bytes += new;
        self.order.push_back(key.clone());
        self.latest.insert(key, value);
        true
    }

    pub fn pop(&mut self) -> Option<(String, Option<Bytes>)> {
        let key = self.order.pop_front()?;
        let value = self.latest.remove(&key)?;
        self.bytes -= cost(&key, &value);
        Some((key, value))
    }

    pub fn is_waiting(&self, key: &str) -> bool {
        self.latest.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

/// The main task's handle on the writer's queue (never waits).
#[derive(Clone, Default)]
pub struct RetainedFeed {
    queue: Arc<Mutex<RetainedQueue>>,
    ready: Arc<Notify>,
}

impl RetainedFeed {
    pub fn put(&self, key: String, value: Option<Bytes>) -> bool {
        let queued = self.queue.lock().is_ok_and(|mut q| q.put(key, value));
        self.ready.notify_one();
        queued
    }

    pub fn is_waiting(&self, key: &str) -> bool {
        self.queue.lock().is_ok_and(|q| q.is_waiting(key))
    }

    async fn next(&self) -> (String, Option<Bytes>) {
        loop {
            if let Some(w) = self.queue.lock().ok().and_then(|mut q| q.pop()) {
                return w;
            }
            self.ready.notified().await;
        }
    }
}

/// What remains of `expiry_s` for an entry `age_ns` old by the bucket's clock
/// (`None`: expired). Whole seconds waited, as `Message::remaining_expiry_s`.
pub fn remaining_expiry_s(expiry_s: u32, age_ns: i128) -> Option<u32> {
    let waited_s = u64::try_from(age_ns.max(0) / 1_000_000_000).unwrap_or(u64::MAX);
    let left = u64::from(expiry_s).checked_sub(waited_s)?;
    (left > 0).then_some(left as u32)
}

/// The replica's message for a bucket entry: `put` false is a delete (an empty
/// payload is how a replica deletes), as is a put whose Message Expiry Interval
/// ran out `age_ns` after the entry was made; a live one carries what remains.
pub fn entry_message(
    key: &str,
    put: bool,
    value: &[u8],
    age_ns: i128,
    now: Instant,
) -> Result<Message, ClusterError> {
    let topic = headers::retained_topic(key)?;
    let (mut qos, mut properties, mut payload) = if put {
        headers::decode_retained(value)?
    } else {
        (
            crate::protocol::QoS::AtMostOnce,
            Default::default(),
            Bytes::new(),
        )
    };
    if let Some(expiry_s) = properties.message_expiry_interval_s {
        match remaining_expiry_s(expiry_s, age_ns) {
            Some(left) => properties.message_expiry_interval_s = Some(left),
            None => {
                qos = crate::protocol::QoS::AtMostOnce;
                properties = Default::default();
                payload = Bytes::new();
            }
        }
    }
    Ok(Message {
        topic: Bytes::from(topic),
        payload,
        qos,
        retain: true,
        properties,
        // Arrival here orders entries by the bucket's order (the watch delivers
        // in it), which is what every node's replica converges to.
        arrived_at: now,
        origin_shard: CLUSTER_ORIGIN,
        origin_session: NONE,
        owned: true,
        cluster_key: 0,
    })
}

/// How old `e` is by this host's clock against the server's time of its put.
pub fn age_ns(e: &kv::Entry) -> i128 {
    let now_ns = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    now_ns - e.created.unix_timestamp_nanos()
}

pub(super) async fn retained_bucket(
    js: &jetstream::Context,
    replicas: usize,
    status: &ClusterStatus,
) -> Option<kv::Store> {
    let what = "ringmq retained messages (key: base64url of the topic)";
    super::link::bucket(js, RETAINED_BUCKET, what, replicas, status).await
}

/// Keeps `ringmq_retained` (history 1) up to date with this node's retained
/// publishes, one write at a time in the order the topics changed, each retried
/// until it lands (the latest value of a topic replaces one still waiting).
pub(super) async fn writer(
    js: jetstream::Context,
    replicas: usize,
    feed: RetainedFeed,
    status: Arc<ClusterStatus>,
) {
    let mut store: Option<kv::Store> = None;
    loop {
        let (key, value) = feed.next().await;
        // A write NATS would refuse (and close the connection for) never lands:
        // dropped, not retried (review10 H3). The loops refuse such publishes already.
        let too_long = 20 + key.len() > super::subject::SUBJECT_MAX_BYTES;
        if too_long
            || value
                .as_ref()
                .is_some_and(|v| v.len() > status.max_payload())
        {
            status.refused_large.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("cluster: retained write too large for NATS; not written");
            continue;
        }
        loop {
            if store.is_none() {
                store = retained_bucket(&js, replicas, &status).await;
            }
            let Some(s) = &store else {
                status.retained_errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let r = match &value {
                Some(v) => s
                    .put(&key, v.clone())
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => s.delete(&key).await.map_err(|e| e.to_string()),
            };
            match r {
                Ok(()) => break,
                Err(e) => {
                    status.retained_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("cluster: retained write failed ({e}); retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// Feeds every entry of the bucket (the current values first, then each change) to
/// the main task; starts again from the current values when the watch ends (NATS lost
/// and back), which re-applies them harmlessly. An empty bucket is loaded at once.
/// Making the watch's consumer can go unanswered (`AttemptWait`: after a nats-server
/// was killed), so each attempt waits briefly, then longer, and asks again: until the
/// first pass is in, `/healthz` is 503.
pub(super) async fn watch(
    js: jetstream::Context,
    replicas: usize,
    tx: mpsc::Sender<kv::Entry>,
    status: Arc<ClusterStatus>,
) {
    let mut attempts = super::health::AttemptWait::default();
    loop {
        if let Some(store) = retained_bucket(&js, replicas, &status).await {
            let wait = attempts.wait();
            let watch = tokio::time::timeout(wait, store.watch_with_history(">"))
                .await
                .unwrap_or_else(|_| Err(kv::WatchError::new(kv::WatchErrorKind::TimedOut)));
            if watch.is_ok() {
                attempts.succeeded();
            } else {
                attempts.failed();
            }
            match watch {
                Ok(mut w) => {
                    // The watch yields nothing for an empty bucket, so no entry
                    // would ever say the first pass is done.
                    if let Ok(s) = store.status().await {
                        if s.info.state.messages == 0 {
                            status.retained_loaded.store(true, Ordering::Release);
                        }
                    }
                    if !super::wills::forward_watch(&mut w, &tx, "retained watch").await {
                        return;
                    }
                }
                Err(e) => {
                    status.retained_errors.fetch_add(1, Ordering::Relaxed);
                    if status.retained_loaded.load(Ordering::Acquire) {
                        tracing::debug!("cluster: retained watch failed: {e}");
                    } else {
                        tracing::warn!(
                            "cluster: retained watch not made within {wait:?} ({e}); \
                             asking again: /healthz is 503 until the bucket is read"
                        );
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PublishProperties, QoS};

    #[test]
    fn a_cut_node_keeps_every_topic_s_latest_value_beyond_the_old_4096() {
        let mut q = RetainedQueue::default();
        // The old fixed queue (4,096 slots, `try_send`) dropped everything past it.
        for i in 0..10_000 {
            assert!(q.put(format!("k{i}"), Some(Bytes::from(vec![b'x'; 10]))));
        }
        // A later value of a waiting topic replaces it in place.
        assert!(q.put("k7".into(), None));
        assert_eq!(q.len(), 10_000);
        let mut n = 0;
        while let Some((k, v)) = q.pop() {
            if k == "k7" {
                assert_eq!(v, None);
            }
            n += 1;
        }
        assert_eq!(n, 10_000);
        assert!(q.is_empty());
        assert_eq!(q.bytes, 0);
        // Bounded: a new topic past the bound is dropped, a waiting one still replaced.
        let big = Bytes::from(vec![0u8; 1 << 20]);
        let mut i = 0;
        while q.put(format!("b{i}"), Some(big.clone())) {
            i += 1;
        }
        assert!(q.bytes <= PENDING_BYTES_MAX);
        assert!(q.put("b0".into(), None));
        assert!(q.is_waiting("b0"));
    }

    #[test]
    fn expiry_counts_from_the_bucket_s_time_not_from_each_read() {
        let s = 1_000_000_000i128;
        assert_eq!(remaining_expiry_s(60, 0), Some(60));
        assert_eq!(remaining_expiry_s(60, 20 * s + 5), Some(40));
        assert_eq!(remaining_expiry_s(60, 60 * s), None);
        assert_eq!(remaining_expiry_s(60, 100 * s), None);
        // A server clock ahead of this host's: no age, not a longer life.
        assert_eq!(remaining_expiry_s(60, -5 * s), Some(60));
        let key = headers::retained_key(b"r/t");
        let props = PublishProperties {
            message_expiry_interval_s: Some(60),
            ..Default::default()
        };
        let value = headers::encode_retained(QoS::AtLeastOnce, &props, b"v");
        let now = Instant::now();
        // Read 20 s after the put (a node started then): 40 s left.
        let m = entry_message(&key, true, &value, 20 * s, now).expect("decodes");
        assert_eq!(m.payload, Bytes::from_static(b"v"));
        assert_eq!(m.properties.message_expiry_interval_s, Some(40));
        // Read 100 s after the put: expired there, so a delete here.
        let m = entry_message(&key, true, &value, 100 * s, now).expect("decodes");
        assert!(m.payload.is_empty());
        assert_eq!(m.topic, Bytes::from_static(b"r/t"));
        // No expiry: served as stored however old.
        let plain = headers::encode_retained(QoS::AtMostOnce, &Default::default(), b"p");
        let m = entry_message(&key, true, &plain, 1000 * s, now).expect("decodes");
        assert_eq!(m.payload, Bytes::from_static(b"p"));
        let m = entry_message(&key, false, &[], 0, now).expect("a delete");
        assert!(m.payload.is_empty());
        assert!(entry_message("not base64!", true, &value, 0, now).is_err());
    }
}
