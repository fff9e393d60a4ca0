//! The taking of a dead incarnation's wills (issue #17, review10 L5): the sweep a
//! beat asks for (`Wills::sweeper`), what it does with each entry (`orphan_step`:
//! wait, mark the will taken, or finish a mark), the mark itself (`Taken`), and the
//! publish of a taken will under its own identity (`Wills::finish`). The liveness,
//! the lease and the writer of this node's own wills are `wills.rs`, whose module
//! doc tells the whole ("Exactly once").

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::wills::{
    client_of_key, decode_will_entry, owner_of_key, resumed_since, will_delay_s, Wills,
    SWEEP_LIST_MAX,
};
use crate::session::Message;

/// A sweep stops starting new marks this long after it began (its listing is
/// bounded by `SWEEP_LIST_MAX`), and the next beat starts another with fresh
/// heartbeats: a long sweep acts on liveness this old at most (review H3a).
const SWEEP_MAX: Duration = Duration::from_secs(2);

/// A survivor's mark on a dead incarnation's will entry (see the module doc,
/// "Exactly once"): who took it and the will it keeps, so that the will outlives
/// its taker. `will_revision` is the revision of the will's own put: with the
/// entry's key it names the will (`will_origin`) on every node that publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The taker's incarnation (`incarnation_of`).
    pub taker: String,
    pub will_revision: u64,
    /// The will entry as its node wrote it (`will_entry`).
    pub entry: Bytes,
}

/// A mark's first four bytes, where a will entry has its record's length: no will
/// record is 4 GiB long, so an older node reads a mark as a malformed entry and
/// leaves it alone.
const TAKEN_MAGIC: [u8; 4] = u32::MAX.to_le_bytes();

/// See `Taken`: the magic, the taker's length (2 bytes LE) and name, the will's
/// revision (8 bytes LE), then the will entry.
pub fn taken_entry(taker: &str, will_revision: u64, entry: &[u8]) -> Bytes {
    let name = &taker.as_bytes()[..taker.len().min(usize::from(u16::MAX))];
    let mut b = Vec::with_capacity(14 + name.len() + entry.len());
    b.extend_from_slice(&TAKEN_MAGIC);
    b.extend_from_slice(&(name.len() as u16).to_le_bytes());
    b.extend_from_slice(name);
    b.extend_from_slice(&will_revision.to_le_bytes());
    b.extend_from_slice(entry);
    Bytes::from(b)
}

/// See `taken_entry`; `None`: not a mark.
pub fn decode_taken(b: &Bytes) -> Option<Taken> {
    if b.get(..4)? != TAKEN_MAGIC {
        return None;
    }
    let n = usize::from(u16::from_le_bytes(b.get(4..6)?.try_into().ok()?));
    let taker = std::str::from_utf8(b.get(6..6 + n)?).ok()?.to_string();
    let will_revision = u64::from_le_bytes(b.get(6 + n..14 + n)?.try_into().ok()?);
    Some(Taken {
        taker,
        will_revision,
        entry: b.slice(14 + n..),
    })
}

/// The `Mqtt-Origin` a taken will is published under (with `Mqtt-Id` = the will's
/// revision): the same whichever survivor publishes it, so a node that got it from
/// one taker drops the copy of the next (`link.rs`, `will_seen`). A node name has
/// no ':', so no node's own origin looks like one.
pub fn will_origin(key: &str) -> String {
    format!("{WILL_ORIGIN_PREFIX}{key}")
}

/// See `will_origin`.
pub const WILL_ORIGIN_PREFIX: &str = "will:";

/// What a survivor's sweep does with one entry of a dead incarnation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrphanStep {
    /// Nothing yet: its Will Delay is not over, or it is marked by a live taker.
    Wait,
    /// A will (its record and the epoch it was written at, `decode_will_entry`):
    /// mark it taken (compare-and-set on its revision), then publish it.
    Take { record: Bytes, epoch: u64 },
    /// Marked by this node, or by a taker that died since: publish the will it
    /// keeps (under the same identity: anyone who got it from the taker drops this
    /// copy) and delete the mark.
    Finish(Taken),
}

/// See `OrphanStep`: the entry `value` of incarnation `owner`, stored at `entry_ns`
/// (server time); `None`: not a will entry or a mark.
pub fn orphan_step(
    value: &Bytes,
    entry_ns: i128,
    owner: &str,
    me: &str,
    beats: &HashMap<String, (String, i128)>,
    now_ns: i128,
    dead_after_ns: i128,
) -> Option<OrphanStep> {
    if let Some(t) = decode_taken(value) {
        // A taker is dead as an owner is: its heartbeat stale, or a newer
        // incarnation of its node beating since the mark was written.
        let finish = t.taker == me || is_dead(beats, now_ns, &t.taker, entry_ns, dead_after_ns);
        return Some(if finish {
            OrphanStep::Finish(t)
        } else {
            OrphanStep::Wait
        });
    }
    let (record, epoch) = decode_will_entry(value)?;
    let due = orphan_due(
        beats,
        now_ns,
        owner,
        entry_ns,
        dead_after_ns,
        will_delay_s(&record),
    );
    Some(if due {
        OrphanStep::Take { record, epoch }
    } else {
        OrphanStep::Wait
    })
}

/// A will a survivor took and published to NATS, for the main task to deliver to
/// this node's own subscribers (NATS does not echo it back) and to the retained
/// bucket if it is retained.
pub struct TakenWill {
    /// `will_origin` of its entry's key.
    pub origin: String,
    /// The will's revision.
    pub id: u64,
    pub msg: Message,
}

impl Wills {
    /// Runs each sweep the heartbeat asks for, the latest ask winning; one cut at
    /// `SWEEP_MAX` sets `more` so the next beat asks again.
    pub(super) async fn sweeper(
        self,
        wills: kv::Store,
        mut asks: tokio::sync::watch::Receiver<Option<SweepAsk>>,
        more: Arc<AtomicBool>,
        tx: mpsc::Sender<TakenWill>,
    ) {
        while asks.changed().await.is_ok() {
            let Some(a) = asks.borrow_and_update().clone() else {
                continue;
            };
            let deadline = Instant::now() + SWEEP_MAX;
            match self
                .sweep(&wills, &a.beats, a.now_ns, &a.alive, &tx, deadline)
                .await
            {
                Some(cut) => more.store(cut, Ordering::Release),
                None => return,
            }
        }
    }

    /// Returns whether the sweep was cut at `deadline` (`None`: the main task is gone).
    /// The deadline is checked between orphans, never between an orphan's delete and
    /// its publication, so a will whose delete landed is always published.
    async fn sweep(
        &self,
        wills: &kv::Store,
        beats: &HashMap<String, (String, i128)>,
        now_ns: i128,
        alive: &HashSet<String>,
        tx: &mpsc::Sender<TakenWill>,
        deadline: Instant,
    ) -> Option<bool> {
        let mut orphans = Vec::new();
        // Bounded: the listing's stream can wait for ever once the bucket holds only
        // delete markers (seen after the first dead node's wills were taken), and
        // this task also beats: a beat late by `dead_after` makes this node look dead.
        let listed = tokio::time::timeout(SWEEP_LIST_MAX, async {
            let mut keys = match wills.keys().await {
                Ok(k) => k,
                Err(e) => {
                    tracing::debug!("cluster: wills not listed: {e}");
                    return;
                }
            };
            while let Some(Ok(k)) = keys.next().await {
                if owner_of_key(&k).is_some_and(|o| !alive.contains(o)) {
                    orphans.push(k);
                }
            }
        })
        .await;
        // A cut listing is not resumed early: a bucket that lists slowly (M7) would
        // then be listed every beat.
        let mut cut = false;
        if listed.is_err() {
            tracing::debug!("cluster: wills listing cut at {SWEEP_LIST_MAX:?}");
        }
        for k in orphans {
            if Instant::now() >= deadline {
                tracing::debug!(
                    "cluster: wills sweep cut at {SWEEP_MAX:?}; the next beat resumes it"
                );
                cut = true;
                break;
            }
            let Ok(Some(e)) = wills.entry(&k).await else {
                continue;
            };
            if e.operation != kv::Operation::Put {
                continue;
            }
            let Some(owner) = owner_of_key(&k) else {
                continue;
            };
            let step = orphan_step(
                &e.value,
                e.created.unix_timestamp_nanos(),
                owner,
                &self.me,
                beats,
                now_ns,
                self.timings.dead_after_ns(),
            );
            let (mark_revision, taken) = match step {
                None => {
                    self.status.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Some(OrphanStep::Wait) => continue,
                Some(OrphanStep::Finish(t)) => {
                    if t.taker != self.me {
                        tracing::info!(
                            "cluster: finishing the will of {k}: its taker {} is gone",
                            t.taker
                        );
                    }
                    (e.revision, t)
                }
                Some(OrphanStep::Take { record, epoch }) => {
                    // Read before the mark: a will whose session was resumed within
                    // its delay is deleted and not published; one whose owner cannot
                    // be read now waits for the next sweep.
                    if will_delay_s(&record) > 0 {
                        let resumed = match self.claims.owner(&client_of_key(&k)).await {
                            Some(o) => resumed_since(o.as_ref(), epoch),
                            None => continue,
                        };
                        if resumed {
                            if wills
                                .delete_expect_revision(&k, Some(e.revision))
                                .await
                                .is_ok()
                            {
                                tracing::info!(
                                    "cluster: the will of {k} not published: its session was resumed"
                                );
                                self.status.wills_resumed.fetch_add(1, Ordering::Relaxed);
                            }
                            continue;
                        }
                    }
                    // Compare-and-set: of all survivors, the one whose mark lands
                    // publishes; the will stays in the entry until it is published.
                    let mark = taken_entry(&self.me, e.revision, &e.value);
                    match wills.update(&k, mark, e.revision).await {
                        Ok(r) => (
                            r,
                            Taken {
                                taker: self.me.clone(),
                                will_revision: e.revision,
                                entry: e.value.clone(),
                            },
                        ),
                        Err(_) => continue,
                    }
                }
            };
            self.finish(wills, &k, mark_revision, taken, tx).await?;
        }
        self.status.wills_sweeps.fetch_add(1, Ordering::Relaxed);
        Some(cut)
    }
}

impl Wills {
    /// Publishes a will this node marked taken (or found marked by a dead taker),
    /// then deletes the mark (compare-and-set on `mark_revision`). To NATS first,
    /// acknowledged (a QoS 1/2 will by JetStream), under its own identity
    /// (`will_origin`, the will's revision), then to this node's subscribers through
    /// the main task: if this node dies anywhere in between, the mark outlives it
    /// and another survivor publishes the will again under the same identity, which
    /// a node that got the first copy drops. A publish NATS does not take, or a mark
    /// not deleted, is left for the next sweep (`OrphanStep::Finish`). `None`: the
    /// main task is gone.
    async fn finish(
        &self,
        wills: &kv::Store,
        key: &str,
        mark_revision: u64,
        taken: Taken,
        tx: &mpsc::Sender<TakenWill>,
    ) -> Option<()> {
        let Some(msg) = decode_will_entry(&taken.entry)
            .and_then(|(record, _)| crate::shard::will_message(&record, Instant::now()))
        else {
            self.status.malformed.fetch_add(1, Ordering::Relaxed);
            return Some(());
        };
        let origin = will_origin(key);
        tracing::info!("cluster: publishing the will of {key} (its node is gone)");
        if let Err(e) = self.publish_taken(&origin, taken.will_revision, &msg).await {
            tracing::warn!(
                "cluster: the will of {key} not published ({e}); the next sweep tries again"
            );
            return Some(());
        }
        self.status.wills_published.fetch_add(1, Ordering::Relaxed);
        let will = TakenWill {
            origin,
            id: taken.will_revision,
            msg,
        };
        if tx.send(will).await.is_err() {
            return None;
        }
        if let Err(e) = wills.delete_expect_revision(key, Some(mark_revision)).await {
            tracing::debug!(
                "cluster: the mark on {key} not deleted ({e}); the next sweep finishes it"
            );
        }
        Some(())
    }

    /// Publishes a taken will to NATS and waits for it to be taken: a QoS 1/2 will by
    /// the QoS stream's acknowledgement (with a `Nats-Msg-Id` of its identity, so the
    /// stream keeps one copy of it within its duplicate window), a QoS 0 will by a
    /// flush. A will whose topic has no NATS subject stays on this node.
    async fn publish_taken(&self, origin: &str, id: u64, msg: &Message) -> Result<(), String> {
        use super::health::JS_REQUEST_MAX;
        let Some((subject, mut headers, payload)) = super::link::will_wire(origin, id, msg) else {
            return Ok(());
        };
        let timed_out = |what: &str| format!("{what} not answered within {JS_REQUEST_MAX:?}");
        if msg.qos == crate::protocol::QoS::AtMostOnce {
            let client = self.js.client();
            client
                .publish_with_headers(subject, headers, payload)
                .await
                .map_err(|e| e.to_string())?;
            return match tokio::time::timeout(JS_REQUEST_MAX, client.flush()).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(timed_out("the flush")),
            };
        }
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{origin}/{id}").as_str(),
        );
        let ack = match tokio::time::timeout(
            JS_REQUEST_MAX,
            self.js.publish_with_headers(subject, headers, payload),
        )
        .await
        {
            Ok(r) => r.map_err(|e| e.to_string())?,
            Err(_) => return Err(timed_out("the publish")),
        };
        match tokio::time::timeout(JS_REQUEST_MAX, std::future::IntoFuture::into_future(ack)).await
        {
            Ok(r) => r.map(|_| ()).map_err(|e| e.to_string()),
            Err(_) => Err(timed_out("the acknowledgement")),
        }
    }
}

/// What one sweep works from: the heartbeats as the beat that asked for it saw them.
#[derive(Clone)]
pub(super) struct SweepAsk {
    pub(super) beats: HashMap<String, (String, i128)>,
    /// Server time of this node's own last put.
    pub(super) now_ns: i128,
    pub(super) alive: HashSet<String>,
}

/// Whether incarnation `owner` (`b64(node).inc`) is dead, for a will it wrote at
/// `will_ns`. Its node's heartbeat must be known: a node that started within the
/// last beat may have written wills before the watch brought its heartbeat here.
/// Same incarnation: dead when its heartbeat is stale. Another one: dead only when
/// that heartbeat is newer than the will (else the heartbeat known here is the
/// older incarnation's and the will the new one's).
pub fn is_dead(
    beats: &HashMap<String, (String, i128)>,
    now_ns: i128,
    owner: &str,
    will_ns: i128,
    dead_after_ns: i128,
) -> bool {
    let Some((node, inc)) = owner.split_once('.') else {
        return false;
    };
    let Some((beat_inc, at)) = beats.get(node) else {
        return false;
    };
    if beat_inc == inc {
        now_ns - at >= dead_after_ns
    } else {
        will_ns < *at
    }
}

/// Whether a dead incarnation's will with a Will Delay of `delay_s` is due (see
/// `is_dead`): its delay counts from `dead_after` past the node's last heartbeat, by
/// when its connection had gone (review10 M9: it used to be published at once, so
/// a client that connected again elsewhere within the delay still got it). Checked
/// at each sweep, so it fires up to `SWEEP_EVERY` beats late.
pub fn orphan_due(
    beats: &HashMap<String, (String, i128)>,
    now_ns: i128,
    owner: &str,
    will_ns: i128,
    dead_after_ns: i128,
    delay_s: u32,
) -> bool {
    let delay_ns = i128::from(delay_s) * 1_000_000_000;
    is_dead(beats, now_ns, owner, will_ns, dead_after_ns + delay_ns)
}
