//! Results: the human table, the JSON line, the .hgrm percentile file and the SVG plot.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency summary in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// `h` holds nanoseconds.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let us = |ns: u64| ns as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// Everything one run measured; serialized as the `--json` line.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub protocol: String,
    pub qos: u8,
    pub size_bytes: usize,
    pub threads: usize,
    pub open_loop: bool,
    pub window: u32,
    /// Seconds of the measured phase (connect: first attempt to last CONNACK; others:
    /// --duration as run).
    pub measured_s: f64,
    /// connect: seconds the established connections were held.
    pub hold_s: f64,
    pub connections_attempted: u64,
    pub connections_established: u64,
    pub connections_failed: u64,
    /// Established connections per second from the first attempt to the last CONNACK.
    pub connect_rate_per_s: f64,
    /// TCP connect + CONNACK (+ SUBACK not included), microseconds.
    pub connect_latency_us: Percentiles,
    /// Messages published during the measured phase, per second (all publishers).
    pub sent_per_s: f64,
    /// Messages received by subscribers during the measured phase, per second.
    pub received_per_s: f64,
    /// Payload megabytes (10^6) received per second during the measured phase.
    pub received_mb_per_s: f64,
    /// One-way publish -> subscriber latency, microseconds.
    pub latency_us: Percentiles,
    /// fleet: command round trip controller -> device -> controller, microseconds.
    pub rtt_us: Option<Percentiles>,
    /// Copies that should have arrived (every message sent x its subscribers), whole run.
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Messages on a subscriber that should not have received them (or foreign payloads).
    pub unexpected: u64,
    /// QoS 0 closed loop: messages given up on after the window stalled for 1 s.
    pub qos0_written_off: u64,
    pub errors_total: u64,
    pub errors: std::collections::BTreeMap<String, u64>,
    /// Connections not closed within 5 s of the end.
    pub unclean_closes: u64,
    /// Plain TCP clients loadgen closed itself after DISCONNECT because the broker had
    /// not closed them when its thread's teardown made no progress for 1 s (MQTT has
    /// the server close; loadgen waits for that, then resets).
    pub closed_before_broker: u64,
    /// Sends loadgen submitted per second during the measured phase (publishes and
    /// acknowledgements), and messages published per send: what the kernel's part of
    /// loadgen's CPU scales with.
    pub sends_per_s: f64,
    pub msgs_per_send: f64,
    /// loadgen CPU over the measured phase, % of one core (whole process).
    pub cpu_process_pct: f64,
    /// loadgen's process CPU seconds over the measured phase, busy-poll spins excluded:
    /// for connect and storm the counterpart of `broker_cpu_s` (same window).
    pub cpu_s: f64,
    /// `--spin` in effect, µs (connect and storm default to 0: see cli.rs).
    pub spin_us: f64,
    /// loadgen's process CPU over the measured phase (busy-poll spins excluded) per
    /// message received, microseconds; `null` when nothing was received.
    pub cpu_us_per_msg: Option<f64>,
    /// Busiest worker thread, % of one core.
    pub cpu_max_thread_pct: f64,
    /// True when a worker thread was above 90% of a core: the numbers are then a floor.
    pub loadgen_saturated: bool,
    /// The longest a worker thread waited for a CPU (runnable, but other processes
    /// held its core) during the measured phase, % of the phase; `null` when the
    /// kernel does not say. Above `RUNQ_WAIT_WARN_PCT` the run measured the machine's
    /// load: loadgen and the broker can both be below a core and still be the limit of
    /// nothing.
    pub runq_wait_pct: Option<f64>,
    /// The run was cut short by SIGINT (Ctrl-C).
    pub interrupted: bool,
    /// connect, storm with --broker-pid: the broker's CPU seconds (user + system) from
    /// the first connect attempt until every client was connected or failed.
    pub broker_cpu_s: Option<f64>,
    /// Seconds from DISCONNECT to the last close, and loadgen's process CPU seconds
    /// over them (busy-poll spins included; connect and storm spin none). Not in
    /// `cpu_s`: a connect storm's whole cost is `cpu_s` + `teardown_cpu_s`.
    pub teardown_s: f64,
    pub teardown_cpu_s: f64,
    /// With --broker-pid: the broker's CPU seconds over the same teardown.
    pub broker_teardown_cpu_s: Option<f64>,
    /// storm: the first round; the fields above describe the reconnect.
    pub storm: Option<StormReport>,
    pub exit_code: i32,
}

/// Run-queue wait above which the table warns that the machine, not loadgen or the
/// broker, bounded the run.
pub const RUNQ_WAIT_WARN_PCT: f64 = 10.0;

/// storm: how the first round went, and how many reconnects resumed their session.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    /// Clients connected and subscribed in the first round.
    pub first_round_established: u64,
    /// Seconds of the first round (connect + SUBSCRIBE, to the last SUBACK).
    pub first_round_s: f64,
    /// Reconnects whose CONNACK had Session Present set.
    pub sessions_present: u64,
}

fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}

/// connect and storm measure connects, not messages.
fn is_storm(r: &Report) -> bool {
    r.scenario == "connect" || r.scenario == "storm"
}

pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "loadgen {}  protocol {}  qos {}  size {} B  threads {}  {}",
        r.scenario,
        r.protocol,
        r.qos,
        r.size_bytes,
        r.threads,
        if r.open_loop {
            "open loop".to_string()
        } else {
            format!("closed loop, window {}", r.window)
        }
    );
    let _ = writeln!(
        s,
        "  connections   {} established / {} attempted, {} failed, {}/s",
        r.connections_established,
        r.connections_attempted,
        r.connections_failed,
        fmt_rate(r.connect_rate_per_s)
    );
    let c = &r.connect_latency_us;
    let _ = writeln!(
        s,
        "  connect us    p50 {:.0}  p99 {:.0}  max {:.0}",
        c.p50, c.p99, c.max
    );
    if let Some(st) = &r.storm {
        let _ = writeln!(
            s,
            "  first round   {} connected and subscribed in {:.2} s, then disconnected",
            st.first_round_established, st.first_round_s
        );
        let _ = writeln!(
            s,
            "  reconnect     {} of {} CONNACKs with session present",
            st.sessions_present, r.connections_attempted
        );
    }
    if !is_storm(r) {
        let _ = writeln!(
            s,
            "  throughput    sent {} msg/s  received {} msg/s  {:.2} MB/s  over {:.2} s",
            fmt_rate(r.sent_per_s),
            fmt_rate(r.received_per_s),
            r.received_mb_per_s,
            r.measured_s
        );
        let l = &r.latency_us;
        let _ = writeln!(
            s,
            "  latency us    p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (n={})",
            l.p50, l.p90, l.p99, l.p999, l.max, l.count
        );
        if let Some(t) = &r.rtt_us {
            let _ = writeln!(
                s,
                "  cmd rtt us    p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (n={})",
                t.p50, t.p90, t.p99, t.p999, t.max, t.count
            );
        }
        let _ = writeln!(s, "  delivery      expected {}  delivered {}  lost {}  duplicates {}  out-of-order {}  unexpected {}",
            r.expected, r.delivered, r.lost, r.duplicates, r.out_of_order, r.unexpected);
        if r.qos0_written_off > 0 {
            let _ = writeln!(
                s,
                "  window        {} QoS 0 messages written off after 1 s stalls",
                r.qos0_written_off
            );
        }
    } else {
        let _ = writeln!(
            s,
            "  storm         {:.2} s to the last CONNACK, then held {:.1} s",
            r.measured_s, r.hold_s
        );
    }
    let per_msg = r.cpu_us_per_msg.map_or(String::new(), |us| {
        format!(", {us:.3} us per message received")
    });
    let waited = r.runq_wait_pct.map_or(String::new(), |w| {
        format!(", waited {w:.0}% of the run for a CPU")
    });
    let _ = writeln!(
        s,
        "  loadgen cpu   {:.0}% of a core (busiest thread {:.0}%){per_msg}{waited}",
        r.cpu_process_pct, r.cpu_max_thread_pct
    );
    if is_storm(r) {
        let _ = writeln!(
            s,
            "  loadgen cpu   {:.2} s over the storm ({:.1} us per connection)",
            r.cpu_s,
            r.cpu_s * 1e6 / r.connections_established.max(1) as f64
        );
    }
    if let Some(b) = r.broker_cpu_s {
        let _ = writeln!(
            s,
            "  broker cpu    {b:.2} s over the storm ({:.1} us per connection)",
            b * 1e6 / r.connections_established.max(1) as f64
        );
    }
    if is_storm(r) {
        let broker = r
            .broker_teardown_cpu_s
            .map_or(String::new(), |b| format!(", the broker's {b:.2} s"));
        // Worded unlike the "broker cpu" line, which perf/storm.sh reads.
        let _ = writeln!(
            s,
            "  teardown      {:.2} s from DISCONNECT to the last close: CPU loadgen's {:.2} s{broker}",
            r.teardown_s, r.teardown_cpu_s
        );
    }
    if !is_storm(r) {
        let _ = writeln!(
            s,
            "  sends         {}/s, {:.1} messages published per send",
            fmt_rate(r.sends_per_s),
            r.msgs_per_send
        );
    }
    let _ = writeln!(s, "  errors        {}", r.errors_total);
    for (k, v) in &r.errors {
        let _ = writeln!(s, "    {v:>8}  {k}");
    }
    if r.unclean_closes > 0 {
        let _ = writeln!(s, "  unclean close {}", r.unclean_closes);
    }
    if r.closed_before_broker > 0 {
        let _ = writeln!(
            s,
            "  closed first  {} (the broker had not closed them 1 s after the last close)",
            r.closed_before_broker
        );
    }
    if r.interrupted {
        let _ = writeln!(s, "  INTERRUPTED: the run was cut short by SIGINT");
    }
    if r.loadgen_saturated {
        let _ = writeln!(s, "  WARNING: a loadgen thread used >90% of a core; these numbers are a floor, not the broker's limit (add --threads)");
    }
    if let Some(w) = r.runq_wait_pct.filter(|w| *w > RUNQ_WAIT_WARN_PCT) {
        let _ = writeln!(s, "  WARNING: a loadgen thread waited {w:.0}% of the run for a CPU other processes held; the figures here measure the machine's load, not the broker's limit (use an idle machine or raise loadgen's and the broker's priority)");
    }
    s
}

/// HdrHistogram percentile distribution (the format `HistogramLogProcessor` and
/// hdrhistogram.github.io/HdrHistogram/plotFiles.html read), values in microseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if h.is_empty() {
        let _ = writeln!(s, "{:12.3} {:1.12} {:10}", 0.0, 1.0, 0);
    } else {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / 1000.0;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    s,
                    "{value:12.3} {q:1.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(s, "{value:12.3} {q:1.12} {total:10}");
            }
        }
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        s,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        h.distinct_values()
    );
    s
}

#[cfg(test)]
/// One parsed data line of an .hgrm file: (value, percentile, total count).
pub fn parse_hgrm(text: &str) -> Vec<(f64, f64, u64)> {
    text.lines()
        .filter(|l| {
            !l.trim().is_empty() && !l.starts_with('#') && !l.trim_start().starts_with("Value")
        })
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let v = it.next()?.parse().ok()?;
            let q = it.next()?.parse().ok()?;
            let c = it.next()?.parse().ok()?;
            Some((v, q, c))
        })
        .collect()
}

/// SVG percentile curve: x is 1/(1-percentile) on a log scale (50%, 90%, 99%, ...),
/// y is latency in microseconds. `series` pairs a label with a nanosecond histogram.
pub fn svg(title: &str, series: &[(&str, &Histogram<u64>)]) -> String {
    const W: f64 = 800.0;
    const H: f64 = 480.0;
    const L: f64 = 70.0;
    const R: f64 = 20.0;
    const T: f64 = 40.0;
    const B: f64 = 50.0;
    let max_x = 6.0; // 99.9999%
    let max_us = series
        .iter()
        .map(|(_, h)| h.max() as f64 / 1000.0)
        .fold(1.0f64, f64::max)
        * 1.05;
    let px = |q: f64| L + ((1.0 / (1.0 - q.min(0.999_999))).log10() / max_x) * (W - L - R);
    let py = |us: f64| H - B - (us / max_us) * (H - T - B);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        xml_escape(title)
    );
    let _ = writeln!(
        s,
        r#"<line x1="{L}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        H - B,
        W - R,
        H - B
    );
    let _ = writeln!(
        s,
        r#"<line x1="{L}" y1="{T}" x2="{L}" y2="{}" stroke="black"/>"#,
        H - B
    );
    for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"]
        .iter()
        .enumerate()
    {
        let x = L + (i as f64 / max_x) * (W - L - R);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{T}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            H - B,
            H - B + 18.0
        );
    }
    for i in 0..=5 {
        let us = max_us * f64::from(i) / 5.0;
        let y = py(us);
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{us:.0}</text>"##,
            W - R,
            L - 6.0,
            y + 4.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        (L + W - R) / 2.0,
        H - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">latency (µs)</text>"#,
        H / 2.0,
        H / 2.0
    );
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"];
    for (i, (label, h)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        let mut pts = String::new();
        if !h.is_empty() {
            for v in h.iter_quantiles(5) {
                let _ = write!(
                    pts,
                    "{:.1},{:.1} ",
                    px(v.quantile_iterated_to()),
                    py(v.value_iterated_to() as f64 / 1000.0)
                );
            }
        }
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.trim_end()
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" fill="{color}">{}</text>"#,
            L + 10.0,
            T + 16.0 * (i as f64 + 1.0),
            xml_escape(label)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::new_histogram;

    fn hist() -> Histogram<u64> {
        let mut h = new_histogram();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        h
    }

    #[test]
    fn hgrm_parses_back() {
        let h = hist();
        let text = hgrm(&h);
        let rows = parse_hgrm(&text);
        assert!(rows.len() > 20);
        let last = rows.last().unwrap();
        assert_eq!(last.1, 1.0);
        assert_eq!(last.2, 1000);
        assert!((last.0 - 1000.0).abs() < 1.0, "{}", last.0);
        // Percentiles and counts never decrease.
        assert!(rows
            .windows(2)
            .all(|w| w[0].1 <= w[1].1 && w[0].2 <= w[1].2 && w[0].0 <= w[1].0));
        let median = rows.iter().find(|r| r.1 >= 0.5).unwrap();
        assert!((median.0 - 500.0).abs() <= 1.0, "{}", median.0);
        assert!(
            text.contains("#[Max     =     1000.447, Total count    =         1000]"),
            "{text}"
        );
    }

    #[test]
    fn empty_hgrm() {
        let h = new_histogram();
        let rows = parse_hgrm(&hgrm(&h));
        assert_eq!(rows, vec![(0.0, 1.0, 0)]);
    }

    fn report() -> Report {
        let h = hist();
        Report {
            scenario: "fanin".into(),
            protocol: "3.1.1".into(),
            qos: 1,
            size_bytes: 64,
            threads: 2,
            open_loop: false,
            window: 16,
            measured_s: 2.0,
            hold_s: 0.0,
            connections_attempted: 5,
            connections_established: 5,
            connections_failed: 0,
            connect_rate_per_s: 1000.0,
            connect_latency_us: Percentiles::of(&h),
            sent_per_s: 10.0,
            received_per_s: 10.0,
            received_mb_per_s: 0.00064,
            latency_us: Percentiles::of(&h),
            rtt_us: None,
            expected: 20,
            delivered: 19,
            lost: 1,
            duplicates: 2,
            out_of_order: 3,
            unexpected: 0,
            qos0_written_off: 0,
            errors_total: 1,
            errors: [("connect: refused".to_string(), 1)].into_iter().collect(),
            unclean_closes: 0,
            closed_before_broker: 0,
            cpu_process_pct: 12.5,
            cpu_s: 0.25,
            spin_us: 100.0,
            cpu_max_thread_pct: 10.0,
            sends_per_s: 1000.0,
            msgs_per_send: 10.0,
            cpu_us_per_msg: Some(0.5),
            loadgen_saturated: false,
            runq_wait_pct: Some(25.0),
            interrupted: false,
            broker_cpu_s: None,
            teardown_s: 0.5,
            teardown_cpu_s: 0.125,
            broker_teardown_cpu_s: None,
            storm: None,
            exit_code: 2,
        }
    }

    #[test]
    fn storm_table_and_json() {
        let mut r = report();
        r.scenario = "storm".into();
        r.broker_cpu_s = Some(0.5);
        r.broker_teardown_cpu_s = Some(0.25);
        r.storm = Some(StormReport {
            first_round_established: 5,
            first_round_s: 1.25,
            sessions_present: 4,
        });
        let t = table(&r);
        for needle in [
            "5 connected and subscribed in 1.25 s",
            "4 of 5 CONNACKs with session present",
            "broker cpu    0.50 s",
            "100000.0 us per connection",
            "loadgen cpu   0.25 s over the storm (50000.0 us per connection)",
            "to the last CONNACK",
            "teardown      0.50 s from DISCONNECT to the last close: CPU loadgen's 0.12 s, the broker's 0.25 s",
        ] {
            assert!(t.contains(needle), "missing {needle} in {t}");
        }
        assert!(!t.contains("throughput"), "a storm has no messages: {t}");
        assert_eq!(
            t.matches("broker cpu").count(),
            1,
            "perf/storm.sh reads the one \"broker cpu\" line: {t}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(v["storm"]["sessions_present"], 4);
        assert_eq!(v["broker_cpu_s"], 0.5);
        assert_eq!(v["cpu_s"], 0.25);
        assert_eq!(v["spin_us"], 100.0);
        assert_eq!(v["teardown_cpu_s"], 0.125);
        assert_eq!(v["broker_teardown_cpu_s"], 0.25);
        assert_eq!(v["closed_before_broker"], 0);
    }

    #[test]
    fn json_round_trip_fields() {
        let r = report();
        let line = serde_json::to_string(&r).unwrap();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["scenario"], "fanin");
        assert_eq!(v["lost"], 1);
        assert_eq!(v["duplicates"], 2);
        assert_eq!(v["out_of_order"], 3);
        assert_eq!(v["latency_us"]["count"], 1000);
        assert_eq!(v["latency_us"]["p50"], 500.223);
        assert_eq!(v["rtt_us"], serde_json::Value::Null);
        assert_eq!(v["errors"]["connect: refused"], 1);
        assert_eq!(v["exit_code"], 2);
        assert_eq!(v["runq_wait_pct"], 25.0);
    }

    #[test]
    fn table_mentions_everything() {
        let t = table(&report());
        for needle in [
            "lost 1",
            "duplicates 2",
            "out-of-order 3",
            "p99.9",
            "MB/s",
            "5 established",
            "loadgen cpu",
            "waited 25% of the run for a CPU",
            "WARNING: a loadgen thread waited 25%",
        ] {
            assert!(t.contains(needle), "missing {needle} in {t}");
        }
    }

    #[test]
    fn svg_has_curve() {
        let h = hist();
        let s = svg("t <x>", &[("latency", &h)]);
        assert!(s.starts_with("<svg"));
        assert!(s.trim_end().ends_with("</svg>"));
        assert!(s.contains("t &lt;x&gt;"));
        let poly = s.lines().find(|l| l.starts_with("<polyline")).unwrap();
        let n = poly
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .count();
        assert_eq!(n, h.iter_quantiles(5).count());
    }
}
