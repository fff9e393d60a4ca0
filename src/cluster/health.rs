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
}
