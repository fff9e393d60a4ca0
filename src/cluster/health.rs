//! Whether this node is a sound member of the cluster beyond its NATS connection
//! (review10 M6, M3), as sans-IO parts the cluster thread feeds and `/healthz`
//! reads through `ClusterStatus::unhealthy`:
//!
//! - `JetStreamHealth`: which of the QoS stream and the four KV buckets exist, and
//!   the last error that kept one from being made (JetStream off on the server,
//!   `cluster_kv_replicas` above the servers there are, account limits). Until all
//!   exist no PUBACK is backed by JetStream, no claim moves a session and no will is
//!   in the cluster, so the node is not healthy. A fresh NATS cluster drops the
//!   requests it gets before its JetStream meta leader is elected (no answer, not an
//!   error), so the first attempts to make a part wait briefly for an answer and
//!   later ones back off to async-nats's own request timeout
//!   (`JetStreamHealth::attempt_wait`): the node is ready soon after JetStream is,
//!   not one timed-out request later.
//! - `NameGuard`: a heartbeat put under this node's name by another incarnation
//!   after this one's first beat means two processes share `cluster_node_name`
//!   (each then takes the other's wills for a dead node's, and drops its messages as
//!   duplicates). A heartbeat of a previous incarnation (a restart) is older than
//!   this one's first beat and is not a conflict.
//! - `ReconcileSchedule`: when the ids this node served on its own are settled
//!   again. Not only when NATS comes back: also while connected, every few seconds
//!   with backoff while any is left, since a claim is served locally whenever
//!   JetStream does not answer (a stream leader lost), NATS connected or not.
//! - `TimingsGuard` (review10 L2, M6): the liveness timings each node announces in
//!   the heartbeats bucket (`LivenessTimings`), compared with this node's at every
//!   beat. One node with another `cluster_dead_after_ms` takes live peers for dead
//!   (and publishes their clients' wills) or is taken for dead itself; one with
//!   another fence time keeps clients past the moment the others act.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

/// The JetStream parts a node needs (bits of `JetStreamHealth::made`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsPart {
    QosStream,
    Retained,
    Sessions,
    Nodes,
    Wills,
}

impl JsPart {
    const ALL: [JsPart; 5] = [
        JsPart::QosStream,
        JsPart::Retained,
        JsPart::Sessions,
        JsPart::Nodes,
        JsPart::Wills,
    ];

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The stream's name on the server (a KV bucket `b` is the stream `KV_b`).
    pub fn stream(self) -> &'static str {
        match self {
            JsPart::QosStream => "RINGMQ_QOS1",
            JsPart::Retained => "KV_ringmq_retained",
            JsPart::Sessions => "KV_ringmq_sessions",
            JsPart::Nodes => "KV_ringmq_nodes",
            JsPart::Wills => "KV_ringmq_wills",
        }
    }

    /// The part a KV bucket's name is (`None`: not one ringmq makes).
    pub fn of_bucket(name: &str) -> Option<JsPart> {
        JsPart::ALL
            .into_iter()
            .find(|p| p.stream().strip_prefix("KV_") == Some(name))
    }
}

/// async-nats's timeout of a JetStream API request: the longest an attempt to make a
/// part waits, and the wait of every call once the part is made.
pub const JS_REQUEST_MAX: Duration = Duration::from_secs(5);
/// The wait of a first attempt; each failed one doubles it up to `JS_REQUEST_MAX`
/// (an answer slower than this on a loaded host is then waited for).
const JS_ATTEMPT_FIRST: Duration = Duration::from_secs(1);

/// How long the next attempt at a JetStream call that may go unanswered waits:
/// `JS_ATTEMPT_FIRST`, doubled by each failure since the last success, at most
/// `JS_REQUEST_MAX`. Unanswered, not refused: a forming NATS cluster drops requests
/// until its meta leader is elected, and making a KV watch's consumer went unanswered
/// for 10 s at a time after a nats-server was killed (likely placed on the dead one).
#[derive(Debug, Default, Clone, Copy)]
pub struct AttemptWait {
    failures: u8,
}

impl AttemptWait {
    /// After `failures` failures in a row.
    pub fn after(failures: u32) -> Self {
        Self {
            failures: failures.min(u32::from(u8::MAX)) as u8,
        }
    }

    pub fn wait(&self) -> Duration {
        let doublings = u32::from(self.failures).min(8);
        (JS_ATTEMPT_FIRST * (1 << doublings)).min(JS_REQUEST_MAX)
    }

    pub fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

/// See the module doc. A part once made stays made: a stream that loses its leader
/// later shows as failing calls (counted where they fail), not here.
#[derive(Debug, Default)]
pub struct JetStreamHealth {
    made: u8,
    /// The last failure to make a part: which, and the server's answer.
    error: Option<(JsPart, String)>,
    /// The attempts to make each part (`JsPart as usize`).
    attempts: [AttemptWait; JsPart::ALL.len()],
}

impl JetStreamHealth {
    pub fn made(&mut self, part: JsPart) {
        self.made |= part.bit();
        self.attempts[part as usize].succeeded();
        if self.error.as_ref().is_some_and(|(p, _)| *p == part) {
            self.error = None;
        }
    }

    /// How long the next JetStream call that makes (or looks up) `part` may wait
    /// for an answer (`AttemptWait`); `JS_REQUEST_MAX` once the part is made.
    pub fn attempt_wait(&self, part: JsPart) -> Duration {
        if self.made & part.bit() != 0 {
            return JS_REQUEST_MAX;
        }
        self.attempts[part as usize].wait()
    }

    /// Records why `part` could not be made; true when this is news (a different
    /// part or text than the last), so the caller logs it once, not every retry.
    pub fn failed(&mut self, part: JsPart, error: String) -> bool {
        self.attempts[part as usize].failed();
        let news = self
            .error
            .as_ref()
            .map_or(true, |(p, e)| *p != part || *e != error);
        self.error = Some((part, error));
        news
    }

    pub fn is_ready(&self) -> bool {
        JsPart::ALL.iter().all(|p| self.made & p.bit() != 0)
    }

    /// What is missing and why, for `/healthz` (`None`: all made).
    pub fn missing(&self) -> Option<String> {
        if self.is_ready() {
            return None;
        }
        let missing: Vec<&str> = JsPart::ALL
            .iter()
            .filter(|p| self.made & p.bit() == 0)
            .map(|p| p.stream())
            .collect();
        let mut s = format!("missing {}", missing.join(", "));
        if let Some((p, e)) = &self.error {
            s.push_str(&format!("; {}: {e}", p.stream()));
        }
        Some(s)
    }
}

/// See the module doc. Times are the server's (`kv::Entry::created`), so two hosts'
/// clocks are never compared.
#[derive(Debug)]
pub struct NameGuard {
    /// This process's heartbeat value (its incarnation, hex).
    mine: String,
    /// Server time of this incarnation's first and latest heartbeat seen.
    first_own_ns: Option<i128>,
    own_ns: i128,
    /// The latest heartbeat of another incarnation put after this one's first.
    foreign: Option<(String, i128)>,
}

impl NameGuard {
    pub fn new(mine: String) -> NameGuard {
        NameGuard {
            mine,
            first_own_ns: None,
            own_ns: 0,
            foreign: None,
        }
    }

    /// A heartbeat put on this node's key (`value`, at server time `created_ns`).
    pub fn on_beat(&mut self, value: &str, created_ns: i128) {
        if value == self.mine {
            self.first_own_ns.get_or_insert(created_ns);
            self.own_ns = self.own_ns.max(created_ns);
            return;
        }
        if self.first_own_ns.is_some_and(|first| created_ns > first) {
            self.foreign = Some((value.to_string(), created_ns));
        }
    }

    /// The other incarnation beating under this node's name, while its last beat is
    /// younger than `dead_after_ns` against this one's latest.
    pub fn conflict(&self, dead_after_ns: i128) -> Option<&str> {
        let (other, at) = self.foreign.as_ref()?;
        (self.own_ns - at < dead_after_ns).then_some(other.as_str())
    }
}

/// The first wait before settling ids served locally while connected, and the
/// longest: each run that leaves some unsettled doubles the wait up to the cap.
const RECONCILE_FIRST: Duration = Duration::from_secs(1);
const RECONCILE_MAX: Duration = Duration::from_secs(8);

/// See the module doc.
#[derive(Debug)]
pub struct ReconcileSchedule {
    was_connected: bool,
    next_at: Option<Instant>,
    wait: Duration,
}

impl Default for ReconcileSchedule {
    fn default() -> ReconcileSchedule {
        ReconcileSchedule {
            was_connected: false,
            next_at: None,
            wait: RECONCILE_FIRST,
        }
    }
}

impl ReconcileSchedule {
    /// Whether to reconcile now: at once when NATS came back, and while connected
    /// with ids still `pending`, `RECONCILE_FIRST` after they appeared and then with
    /// a doubling wait up to `RECONCILE_MAX`.
    pub fn due(&mut self, connected: bool, pending: bool, now: Instant) -> bool {
        let returned = connected && !self.was_connected;
        self.was_connected = connected;
        if !connected {
            return false;
        }
        if !pending {
            self.next_at = None;
            self.wait = RECONCILE_FIRST;
            return returned;
        }
        if returned {
            self.wait = RECONCILE_FIRST;
            self.next_at = Some(now + self.wait);
            return true;
        }
        let at = *self.next_at.get_or_insert(now + self.wait);
        if now < at {
            return false;
        }
        self.wait = (self.wait * 2).min(RECONCILE_MAX);
        self.next_at = Some(now + self.wait);
        true
    }
}

/// A node's liveness settings, as its config keys name them. Announced under
/// `timings_key` of the heartbeats bucket, not in the heartbeat's value: a node of
/// an older version takes the whole value for the incarnation, so a longer value
/// would make it take this node's wills for a dead incarnation's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessTimings {
    pub beat_ms: u64,
    pub fence_after_ms: u64,
    pub dead_after_ms: u64,
}

impl LivenessTimings {
    /// The keys in the announcement, in the order `/healthz` reports a difference.
    const KEYS: [&'static str; 3] = [
        "cluster_dead_after_ms",
        "cluster_fence_after_ms",
        "cluster_beat_ms",
    ];

    fn values(&self) -> [u64; 3] {
        [self.dead_after_ms, self.fence_after_ms, self.beat_ms]
    }

    /// `cluster_dead_after_ms=5000,cluster_fence_after_ms=3000,cluster_beat_ms=1000`.
    pub fn encode(&self) -> String {
        Self::KEYS
            .iter()
            .zip(self.values())
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The values of an announcement by key (`None`: absent or not a number). A key
    /// this version does not know is skipped, so a later version may add some.
    pub fn decode(value: &[u8]) -> [Option<u64>; 3] {
        let mut out = [None; 3];
        let text = String::from_utf8_lossy(value);
        for (k, v) in text.split(',').filter_map(|kv| kv.split_once('=')) {
            if let Some(i) = Self::KEYS.iter().position(|key| *key == k.trim()) {
                out[i] = v.trim().parse().ok();
            }
        }
        out
    }
}

/// The heartbeats-bucket key where node `node_key` (its heartbeat's key) announces
/// its timings. A node key (base64url) holds no `.`, so this is never one.
pub fn timings_key(node_key: &str) -> String {
    format!("{node_key}{TIMINGS_SUFFIX}")
}

/// The node key an announcement's key belongs to (`None`: not an announcement).
pub fn node_of_timings_key(key: &str) -> Option<&str> {
    key.strip_suffix(TIMINGS_SUFFIX)
}

const TIMINGS_SUFFIX: &str = ".timings";

/// A live peer's timing that differs from this node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimingsMismatch {
    /// The peer's heartbeat key (base64url of its name) and its name.
    pub node_key: String,
    pub node: String,
    pub key: &'static str,
    pub mine: u64,
    pub theirs: u64,
}

impl fmt::Display for TimingsMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} differs: this node {}, node {:?} {}",
            self.key, self.mine, self.node, self.theirs
        )
    }
}

/// What changed at a check (`TimingsGuard::check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimingsNews {
    Same,
    /// A mismatch that was not the one reported before: log and count it.
    Found(TimingsMismatch),
    /// No live peer differs any more.
    Cleared,
}

/// See the module doc. Peers that announce nothing (an older version) are not
/// compared; nor are keys an announcement lacks.
#[derive(Debug)]
pub struct TimingsGuard {
    mine: LivenessTimings,
    /// Heartbeat key -> its node's announced values (`LivenessTimings::decode`).
    peers: BTreeMap<String, [Option<u64>; 3]>,
    reported: Option<TimingsMismatch>,
}

impl TimingsGuard {
    pub fn new(mine: LivenessTimings) -> TimingsGuard {
        TimingsGuard {
            mine,
            peers: BTreeMap::new(),
            reported: None,
        }
    }

    /// An announcement under `node_key` (`None`: it was deleted).
    pub fn on_announcement(&mut self, node_key: &str, value: Option<&[u8]>) {
        match value {
            Some(v) => {
                self.peers
                    .insert(node_key.to_string(), LivenessTimings::decode(v));
            }
            None => {
                self.peers.remove(node_key);
            }
        }
    }

    /// Compares this node's timings with those of the peers `alive` says beat lately
    /// (this node's own key is among them: it announces its own values, which match
    /// unless a twin overwrote them, and that is a difference too). The first
    /// difference by node key, then by `LivenessTimings::KEYS`, is the one reported.
    pub fn check(&mut self, alive: impl Fn(&str) -> bool) -> TimingsNews {
        let mine = self.mine.values();
        let found = self
            .peers
            .iter()
            .filter(|(k, _)| alive(k))
            .find_map(|(k, theirs)| {
                (0..3).find_map(|i| {
                    let t = theirs[i]?;
                    (t != mine[i]).then(|| TimingsMismatch {
                        node_key: k.clone(),
                        node: decode_node_key(k),
                        key: LivenessTimings::KEYS[i],
                        mine: mine[i],
                        theirs: t,
                    })
                })
            });
        match found {
            Some(m) if self.reported.as_ref() != Some(&m) => {
                self.reported = Some(m.clone());
                TimingsNews::Found(m)
            }
            Some(_) => TimingsNews::Same,
            None if self.reported.take().is_some() => TimingsNews::Cleared,
            None => TimingsNews::Same,
        }
    }
}

/// A heartbeat key's node name (the key itself when it is not base64url of text).
fn decode_node_key(key: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jetstream_is_ready_only_once_every_part_is_made_and_says_what_is_missing() {
        let mut h = JetStreamHealth::default();
        assert!(!h.is_ready());
        assert!(h.failed(JsPart::Retained, "insufficient resources".to_string()));
        // The same failure again is not news (logged once).
        assert!(!h.failed(JsPart::Retained, "insufficient resources".to_string()));
        for p in [
            JsPart::QosStream,
            JsPart::Sessions,
            JsPart::Nodes,
            JsPart::Wills,
        ] {
            h.made(p);
        }
        let why = h.missing().expect("retained missing");
        assert_eq!(
            why,
            "missing KV_ringmq_retained; KV_ringmq_retained: insufficient resources"
        );
        h.made(JsPart::Retained);
        assert!(h.is_ready());
        assert_eq!(h.missing(), None);
        assert_eq!(JsPart::of_bucket("ringmq_wills"), Some(JsPart::Wills));
        assert_eq!(JsPart::of_bucket("other"), None);
    }

    #[test]
    fn the_first_attempts_to_make_a_part_wait_briefly_then_back_off_to_the_request_timeout() {
        let mut h = JetStreamHealth::default();
        // A request a forming NATS cluster drops is given up on after a second, not
        // after async-nats's 5 s, and each failure doubles the wait up to those 5 s.
        let mut waits = vec![h.attempt_wait(JsPart::Sessions)];
        for _ in 0..5 {
            h.failed(JsPart::Sessions, "no answer".to_string());
            waits.push(h.attempt_wait(JsPart::Sessions));
        }
        let s = Duration::from_secs;
        assert_eq!(waits, [s(1), s(2), s(4), s(5), s(5), s(5)]);
        // Per part: another part's attempts are still short.
        assert_eq!(h.attempt_wait(JsPart::Wills), s(1));
        // Once made, every call gets the full request timeout.
        h.made(JsPart::Sessions);
        assert_eq!(h.attempt_wait(JsPart::Sessions), JS_REQUEST_MAX);
        // A watch that came up starts from the short wait again.
        let mut w = AttemptWait::default();
        w.failed();
        w.failed();
        assert_eq!(w.wait(), s(4));
        w.succeeded();
        assert_eq!(w.wait(), s(1));
    }

    #[test]
    fn a_twin_beating_under_this_name_is_a_conflict_a_previous_incarnation_is_not() {
        let dead = 5_000;
        let mut g = NameGuard::new("aaaa".into());
        // A restart: the previous incarnation's last beat comes first.
        g.on_beat("bbbb", 100);
        g.on_beat("aaaa", 1_000);
        g.on_beat("aaaa", 2_000);
        assert_eq!(g.conflict(dead), None);
        // Another process puts under the same key after this one began.
        g.on_beat("cccc", 2_500);
        g.on_beat("aaaa", 3_000);
        assert_eq!(g.conflict(dead), Some("cccc"));
        // It stopped: once its beat is `dead_after` old the conflict is over.
        g.on_beat("aaaa", 7_500);
        assert_eq!(g.conflict(dead), None);
    }

    #[test]
    fn ids_served_locally_while_connected_are_reconciled_without_a_reconnect() {
        let t0 = Instant::now();
        let mut s = ReconcileSchedule::default();
        // NATS comes up: a run at once (nothing pending yet is fine).
        assert!(s.due(true, false, t0));
        // A claim is served locally while connected (JetStream without a leader):
        // no disconnect follows, yet the ids are settled again and again, backing off.
        let mut runs = Vec::new();
        let mut t = t0;
        for _ in 0..400 {
            t += Duration::from_millis(250);
            if s.due(true, true, t) {
                runs.push(t - t0);
            }
        }
        assert!(runs.len() >= 5, "{runs:?}");
        let gaps: Vec<_> = runs.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
        assert!(gaps.iter().all(|g| *g <= RECONCILE_MAX), "{gaps:?}");
        // Nothing pending: no run; cut off: no run; back: a run at once.
        assert!(!s.due(true, false, t + Duration::from_secs(60)));
        assert!(!s.due(false, true, t + Duration::from_secs(61)));
        assert!(s.due(true, true, t + Duration::from_secs(62)));
    }

    fn timings(beat_ms: u64, fence_after_ms: u64, dead_after_ms: u64) -> LivenessTimings {
        LivenessTimings {
            beat_ms,
            fence_after_ms,
            dead_after_ms,
        }
    }

    #[test]
    fn timings_announcements_round_trip_and_tolerate_other_versions() {
        let t = timings(1000, 3000, 5000);
        assert_eq!(
            t.encode(),
            "cluster_dead_after_ms=5000,cluster_fence_after_ms=3000,cluster_beat_ms=1000"
        );
        assert_eq!(
            LivenessTimings::decode(t.encode().as_bytes()),
            [Some(5000), Some(3000), Some(1000)]
        );
        // A later version's extra key is skipped; a missing or broken one is unknown.
        assert_eq!(
            LivenessTimings::decode(
                b"cluster_claim_ms=4000,cluster_dead_after_ms=8000,cluster_beat_ms=x"
            ),
            [Some(8000), None, None]
        );
        // An old node's heartbeat value (its incarnation) says nothing.
        assert_eq!(LivenessTimings::decode(b"00000000deadbeef"), [None; 3]);
        let key = timings_key("bjE");
        assert_eq!(node_of_timings_key(&key), Some("bjE"));
        assert_eq!(node_of_timings_key("bjE"), None);
    }

    #[test]
    fn a_live_peer_with_other_timings_is_reported_once_and_cleared_when_it_goes() {
        let mine = timings(1000, 3000, 5000);
        let mut g = TimingsGuard::new(mine);
        // "bjE" is n1 (this node), "bjI" n2, "bjM" n3 (an older version: no announcement).
        g.on_announcement("bjE", Some(mine.encode().as_bytes()));
        g.on_announcement("bjI", Some(mine.encode().as_bytes()));
        let all = |_: &str| true;
        assert_eq!(g.check(all), TimingsNews::Same);
        g.on_announcement("bjI", Some(timings(1000, 3000, 8000).encode().as_bytes()));
        let m = match g.check(all) {
            TimingsNews::Found(m) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            m.to_string(),
            "cluster_dead_after_ms differs: this node 5000, node \"n2\" 8000"
        );
        // Logged and counted once, however many beats it lasts.
        assert_eq!(g.check(all), TimingsNews::Same);
        assert_eq!(g.check(all), TimingsNews::Same);
        // Another difference of the same peer is news.
        g.on_announcement("bjI", Some(timings(2000, 3000, 5000).encode().as_bytes()));
        match g.check(all) {
            TimingsNews::Found(m) => assert_eq!(
                m.to_string(),
                "cluster_beat_ms differs: this node 1000, node \"n2\" 2000"
            ),
            other => panic!("{other:?}"),
        }
        // The peer stops beating: its stale announcement no longer counts.
        assert_eq!(g.check(|k: &str| k != "bjI"), TimingsNews::Cleared);
        assert_eq!(g.check(|k: &str| k != "bjI"), TimingsNews::Same);
        // It restarts with this node's timings (its announcement is replaced).
        g.on_announcement("bjI", Some(mine.encode().as_bytes()));
        assert_eq!(g.check(all), TimingsNews::Same);
        // A deleted announcement is forgotten.
        g.on_announcement("bjI", Some(timings(1000, 2500, 5000).encode().as_bytes()));
        assert!(matches!(g.check(all), TimingsNews::Found(_)));
        g.on_announcement("bjI", None);
        assert_eq!(g.check(all), TimingsNews::Cleared);
    }
}
