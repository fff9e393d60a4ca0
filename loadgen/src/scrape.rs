//! `--scrape URL`: reads the broker's Prometheus `/metrics` before and after a run
//! and prints the broker-side deltas (messages, bytes, drops by reason, refusals,
//! busy ratio per loop) next to loadgen's own figures. Plain HTTP/1.1 over a
//! blocking socket: one GET, the server closes.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A scrape: `name{labels}` → value, and when it was taken.
pub struct Scrape {
    samples: BTreeMap<String, f64>,
    at: Instant,
}

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--scrape {url}: only http:// URLs"))?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    })
}

pub fn fetch(url: &str) -> Result<Scrape, String> {
    let (addr, path) = split_url(url)?;
    let mut s = TcpStream::connect(addr).map_err(|e| format!("--scrape {url}: {e}"))?;
    let timeout = Some(Duration::from_secs(10));
    s.set_read_timeout(timeout).map_err(|e| e.to_string())?;
    s.set_write_timeout(timeout).map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .map_err(|e| format!("--scrape {url}: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .map_err(|e| format!("--scrape {url}: {e}"))?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("--scrape {url}: no HTTP response"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        let line = head.lines().next().unwrap_or("");
        return Err(format!("--scrape {url}: {line}"));
    }
    Ok(Scrape {
        samples: parse(body),
        at: Instant::now(),
    })
}

fn parse(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

impl Scrape {
    /// Sum of every sample of family `name` (all label sets).
    fn family(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
            .map(|(_, v)| v)
            .sum()
    }

    /// The samples of family `name` with their label sets.
    fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.samples.iter().filter_map(move |(k, v)| {
            let labels = k.strip_prefix(name)?.strip_prefix('{')?;
            Some((labels.trim_end_matches('}'), *v))
        })
    }
}

/// The broker-side deltas between `before` and `after`, as lines for the report.
pub fn deltas(before: &Scrape, after: &Scrape) -> String {
    let secs = after
        .at
        .saturating_duration_since(before.at)
        .as_secs_f64()
        .max(1e-9);
    let d = |name: &str| after.family(name) - before.family(name);
    let mut out =
        format!("broker side ({secs:.1} s between scrapes, connect, warm-up and drain included)\n");
    let row = |out: &mut String, what: &str, v: f64| {
        out.push_str(&format!("  {what:<34} {v:>14.0}  {:>12.0}/s\n", v / secs));
    };
    row(
        &mut out,
        "messages received",
        d("ringmq_messages_received_total"),
    );
    row(&mut out, "messages sent", d("ringmq_messages_sent_total"));
    row(&mut out, "bytes received", d("ringmq_received_bytes_total"));
    row(&mut out, "bytes sent", d("ringmq_sent_bytes_total"));
    row(
        &mut out,
        "connections accepted",
        d("ringmq_connections_accepted_total"),
    );
    for family in [
        "ringmq_messages_dropped_total",
        "ringmq_connections_refused_total",
        "ringmq_connections_closed_total",
    ] {
        for (labels, v) in after.series(family) {
            let was = before
                .series(family)
                .find(|(l, _)| *l == labels)
                .map_or(0.0, |(_, v)| v);
            if v - was != 0.0 {
                let short = family
                    .trim_start_matches("ringmq_")
                    .trim_end_matches("_total");
                row(&mut out, &format!("{short} {labels}"), v - was);
            }
        }
    }
    for (labels, busy) in after.series("ringmq_loop_busy_seconds_total") {
        let was = before
            .series("ringmq_loop_busy_seconds_total")
            .find(|(l, _)| *l == labels)
            .map_or(0.0, |(_, v)| v);
        out.push_str(&format!(
            "  loop busy ratio {labels:<18} {:>14.3}\n",
            ((busy - was) / secs).clamp(0.0, 1.0)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(body: &str, at: Instant) -> Scrape {
        Scrape {
            samples: parse(body),
            at,
        }
    }

    #[test]
    fn deltas_name_what_moved() {
        let t0 = Instant::now();
        let a = scrape(
            "# TYPE x counter\nringmq_messages_received_total{qos=\"0\"} 10\n\
             ringmq_messages_received_total{qos=\"1\"} 5\n\
             ringmq_messages_dropped_total{reason=\"queue_full\"} 1\n\
             ringmq_loop_busy_seconds_total{shard=\"0\"} 1\n",
            t0,
        );
        let b = scrape(
            "ringmq_messages_received_total{qos=\"0\"} 110\n\
             ringmq_messages_received_total{qos=\"1\"} 5\n\
             ringmq_messages_dropped_total{reason=\"queue_full\"} 4\n\
             ringmq_messages_dropped_total{reason=\"expired\"} 0\n\
             ringmq_loop_busy_seconds_total{shard=\"0\"} 1.5\n",
            t0 + Duration::from_secs(2),
        );
        let text = deltas(&a, &b);
        assert!(text.contains("messages received"), "{text}");
        assert!(
            text.contains(" 100 ") || text.contains(" 100\n") || text.contains("100  "),
            "{text}"
        );
        assert!(
            text.contains("messages_dropped reason=\"queue_full\""),
            "{text}"
        );
        assert!(!text.contains("expired"), "{text}");
        assert!(text.contains("0.250"), "{text}");
    }

    #[test]
    fn urls_are_split() {
        assert_eq!(
            split_url("http://127.0.0.1:9883/metrics"),
            Ok(("127.0.0.1:9883", "/metrics"))
        );
        assert_eq!(split_url("http://h:1"), Ok(("h:1", "/metrics")));
        assert!(split_url("https://h/metrics").is_err());
    }
}
