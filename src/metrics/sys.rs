//! The `$SYS/broker/...` status topics, with Mosquitto's names and payload formats,
//! computed from a scrape's [`NodeSnapshot`], plus ringmq's own counter families
//! (`families.rs`) under `$SYS/broker/ringmq/<family>/<label>`; sans-IO: the caller says how much
//! time passed and publishes what comes back (retained, as Mosquitto does).
//!
//! The `load/.../1min|5min|15min` figures are Mosquitto's: a per-minute rate
//! smoothed by an exponential moving average over the window,
//! `load = rate + exp(-interval/window) * (load - rate)`.

use super::families::{self, families, DROPPED};
use super::prometheus::Context;
use super::NodeSnapshot;

/// The totals whose rates the load figures smooth, in [`LOAD_NAMES`] order.
const LOAD_NAMES: [&str; 7] = [
    "messages/received",
    "messages/sent",
    "bytes/received",
    "bytes/sent",
    "publish/received",
    "publish/sent",
    "publish/dropped",
];
/// `connections` (new connections per minute) follows the others.
const LOADS: usize = LOAD_NAMES.len() + 1;
const WINDOWS: [(&str, f64); 3] = [("1min", 60.0), ("5min", 300.0), ("15min", 900.0)];
/// `exp(-0.001 / window)` for each of [`WINDOWS`]: one millisecond's decay, raised to
/// the interval in ms (`powi`, multiplications only) instead of calling `f64::exp`.
/// `exp` is the one libm function the broker calls, and its first call, at the
/// second publish 10 s after start, faulted ~190 kB of libm's pages into the
/// process's RSS: a fixed step that `perf/rss.sh` read as ~19 B per connection at
/// 10k (issue #21). Checked against `f64::exp` by the tests.
const DECAY_PER_MS: [f64; 3] = [0.9999833334722215, 0.9999966666722222, 0.9999988888895062];

/// What carries over between two publishes.
#[derive(Debug, Clone, Default)]
pub struct SysState {
    /// Most clients connected at once seen at a publish.
    max_clients: u64,
    prev: Option<[u64; LOADS]>,
    loads: [[f64; 3]; LOADS],
}

impl SysState {
    /// The topics and payloads of one publish, `interval_s` after the last one.
    pub fn update(
        &mut self,
        node: &NodeSnapshot,
        ctx: &Context,
        interval_s: f64,
    ) -> Vec<(String, String)> {
        let total = node.total();
        let c = &total.core;
        let families = families(&total);
        let dropped = families::total(&families, DROPPED);
        let connected = c.sessions_online as u64;
        self.max_clients = self.max_clients.max(connected);
        let totals: [u64; LOADS] = [
            c.messages_in,
            c.messages_out,
            c.bytes_in,
            c.bytes_out,
            c.messages_in,
            c.messages_out,
            dropped,
            c.accepted,
        ];
        if let Some(prev) = self.prev.filter(|_| interval_s > 0.0) {
            let decays = decays(interval_s);
            for (i, load) in self.loads.iter_mut().enumerate() {
                let rate = totals[i].saturating_sub(prev[i]) as f64 / interval_s * 60.0;
                for (w, decay) in decays.iter().enumerate() {
                    load[w] = rate + decay * (load[w] - rate);
                }
            }
        }
        self.prev = Some(totals);

        let b = "$SYS/broker";
        let mut out = vec![
            (
                format!("{b}/version"),
                format!("ringmq version {}", ctx.version),
            ),
            (
                format!("{b}/uptime"),
                format!("{} seconds", ctx.uptime_seconds as u64),
            ),
            (format!("{b}/clients/connected"), connected.to_string()),
            (
                format!("{b}/clients/disconnected"),
                c.sessions.saturating_sub(c.sessions_online).to_string(),
            ),
            (format!("{b}/clients/total"), c.sessions.to_string()),
            (format!("{b}/clients/maximum"), self.max_clients.to_string()),
            (
                format!("{b}/clients/expired"),
                c.sessions_expired.to_string(),
            ),
            (format!("{b}/messages/received"), c.messages_in.to_string()),
            (format!("{b}/messages/sent"), c.messages_out.to_string()),
            (
                format!("{b}/messages/stored"),
                (c.retained + c.messages_queued).to_string(),
            ),
            (
                format!("{b}/subscriptions/count"),
                c.subscriptions.to_string(),
            ),
            (
                format!("{b}/retained messages/count"),
                c.retained.to_string(),
            ),
            (format!("{b}/bytes/received"), c.bytes_in.to_string()),
            (format!("{b}/bytes/sent"), c.bytes_out.to_string()),
            (format!("{b}/publish/messages/dropped"), dropped.to_string()),
            (
                format!("{b}/publish/messages/received"),
                c.messages_in.to_string(),
            ),
            (
                format!("{b}/publish/messages/sent"),
                c.messages_out.to_string(),
            ),
            (
                format!("{b}/heap/current"),
                ctx.process.map_or(0, |p| p.resident_bytes).to_string(),
            ),
        ];
        // ringmq's own figures: every labelled counter family, one topic a label.
        for f in &families {
            for (label, v) in &f.samples {
                out.push((format!("{b}/ringmq/{}/{label}", f.short), v.to_string()));
            }
        }
        let names = LOAD_NAMES.iter().chain(std::iter::once(&"connections"));
        for (name, load) in names.zip(&self.loads) {
            for (w, (window, _)) in WINDOWS.iter().enumerate() {
                out.push((
                    format!("{b}/load/{name}/{window}"),
                    format!("{:.2}", load[w]),
                ));
            }
        }
        out
    }
}

/// `exp(-interval_s / window)` for each window, without libm (see [`DECAY_PER_MS`]).
/// The interval is rounded to whole ms: the figures are printed to two decimals.
fn decays(interval_s: f64) -> [f64; 3] {
    // `as` saturates: an interval past i32::MAX ms (24 days) decays to 0 either way.
    let interval_ms = (interval_s * 1000.0).round() as i32;
    DECAY_PER_MS.map(|per_ms| per_ms.powi(interval_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::LoopSnapshot;

    fn node(messages_in: u64, online: usize) -> NodeSnapshot {
        let mut l = LoopSnapshot::default();
        l.core.messages_in = messages_in;
        l.core.messages_out = 2 * messages_in;
        l.core.sessions = 5;
        l.core.sessions_online = online;
        l.core.retained = 2;
        l.core.dropped_queue_full = 1;
        NodeSnapshot {
            loops: vec![l],
            missing_loops: vec![],
        }
    }

    /// The per-ms constants are `exp(-0.001 / window)`, and raised to an interval
    /// they match `exp(-interval / window)` well past the two printed decimals.
    #[test]
    fn decays_match_exp_without_calling_it() {
        for (w, (_, window)) in WINDOWS.iter().enumerate() {
            let want = (-0.001 / window).exp();
            assert!((DECAY_PER_MS[w] - want).abs() <= f64::EPSILON, "{window}");
        }
        for interval_s in [0.001, 1.0, 10.0, 10.25, 60.0, 3_600.0, 86_400.0] {
            let got = decays(interval_s);
            for (w, (_, window)) in WINDOWS.iter().enumerate() {
                let want = (-interval_s / window).exp();
                assert!(
                    (got[w] - want).abs() <= 1e-12 + want * 1e-9,
                    "{interval_s} s over {window} s: {} against {want}",
                    got[w]
                );
            }
        }
        assert_eq!(decays(1e9), [0.0; 3], "far past i32::MAX ms");
    }

    fn get<'a>(v: &'a [(String, String)], topic: &str) -> &'a str {
        &v.iter()
            .find(|(t, _)| t == topic)
            .unwrap_or_else(|| panic!("{topic} missing"))
            .1
    }

    #[test]
    fn mosquittos_topics_carry_the_node_figures() {
        let ctx = Context {
            version: "0.1.0",
            uptime_seconds: 42.7,
            ..Default::default()
        };
        let mut s = SysState::default();
        let v = s.update(&node(100, 3), &ctx, 10.0);
        assert_eq!(get(&v, "$SYS/broker/version"), "ringmq version 0.1.0");
        assert_eq!(get(&v, "$SYS/broker/uptime"), "42 seconds");
        assert_eq!(get(&v, "$SYS/broker/clients/connected"), "3");
        assert_eq!(get(&v, "$SYS/broker/clients/disconnected"), "2");
        assert_eq!(get(&v, "$SYS/broker/clients/total"), "5");
        assert_eq!(get(&v, "$SYS/broker/messages/received"), "100");
        assert_eq!(get(&v, "$SYS/broker/publish/messages/sent"), "200");
        assert_eq!(get(&v, "$SYS/broker/publish/messages/dropped"), "1");
        assert_eq!(get(&v, "$SYS/broker/retained messages/count"), "2");
        // No rate before a second sample.
        assert_eq!(get(&v, "$SYS/broker/load/messages/received/1min"), "0.00");
        // The maximum holds after clients leave.
        let v = s.update(&node(160, 1), &ctx, 60.0);
        assert_eq!(get(&v, "$SYS/broker/clients/maximum"), "3");
        assert_eq!(get(&v, "$SYS/broker/clients/connected"), "1");
        // 60 more messages in 60 s: 60/min, smoothed: 60 * (1 - e^-1) over 1 min.
        let want = 60.0 * (1.0 - (-1.0f64).exp());
        assert_eq!(
            get(&v, "$SYS/broker/load/messages/received/1min"),
            format!("{want:.2}")
        );
        let want5 = 60.0 * (1.0 - (-0.2f64).exp());
        assert_eq!(
            get(&v, "$SYS/broker/load/messages/received/5min"),
            format!("{want5:.2}")
        );
    }
}
