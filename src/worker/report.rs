//! What a worker reports when its loop ends, and the one log line operators read:
//! `shard=N` then every non-zero counter as `name=value`.

use std::fmt;

use crate::io::IoStats;

/// Counters of one worker, logged at exit (its `Display` is the exit log line).
#[derive(Debug, Default, Clone)]
pub struct WorkerReport {
    pub shard: usize,
    pub io: IoStats,
    pub mesh_rejected: u64,
    pub migrations_out: u64,
    pub migrations_failed: u64,
    pub handoffs_in: u64,
    /// TLS connections closed for a TLS error (bad handshake, refused certificate,
    /// not TLS at all, a bad record).
    pub tls_failed: u64,
    /// WebSocket connections closed for a protocol error or a refused upgrade (each
    /// told why first: an HTTP status or a close code), by that answer.
    pub ws_refused: crate::transport::ws::WsRefused,
    /// Hand-offs whose socket never came within `adopt_pair_timeout_ms` (it was closed
    /// unpaired before its hand-off arrived, or adopting it failed): dropped.
    pub handoffs_expired: u64,
    /// Connections still open when the shutdown deadline passed.
    pub forced_closes: u64,
    /// Connections closed because their last bytes were not taken within `DRAIN_TIMEOUT`.
    pub drain_timeouts: u64,
    /// Connections the shard ended that lingered before their close (`linger`).
    pub lingered: u64,
    /// Connections closed at once because `max_lingering_per_shard` were lingering.
    pub linger_refused_full: u64,
    /// PUBLISH read → send completion, per send holding a live delivery.
    pub latency: crate::metrics::latency::LatencyHistogram,
    /// The shard core's counters (every drop and refusal) at exit.
    pub core: crate::shard::ShardStats,
}

/// One line: `shard=N`, then each non-zero counter as `name=value`, those of the io
/// backend and the shard core prefixed `io.` and `core.`. A zero says nothing at exit
/// and a dump of ~60 fields hides the one that moved.
///
/// The names come from the derived `Debug` of the report, walked field by field, so a
/// counter added to `IoStats` or `ShardStats` shows up here without a second list to
/// keep in step (the metrics work may replace this with named metrics).
impl fmt::Display for WorkerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard={}", self.shard)?;
        let dump = format!("{self:?}");
        let mut pairs = Vec::new();
        DebugWalk {
            s: dump.as_bytes(),
            at: 0,
        }
        .structure("", &mut pairs);
        for (name, value) in pairs {
            if name != "shard" {
                write!(f, " {name}={value}")?;
            }
        }
        Ok(())
    }
}

/// A cursor over a derived `Debug` dump (`Name { field: value, .. }`): collects the
/// fields whose value is a non-zero integer, nested structs named by their path.
/// Anything else (strings, lists, options) is skipped whole.
struct DebugWalk<'a> {
    s: &'a [u8],
    at: usize,
}

impl DebugWalk<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        self.skip_spaces();
        let hit = self.peek() == Some(b);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn ident(&mut self) -> &str {
        self.skip_spaces();
        let start = self.at;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || c == b'_') {
            self.at += 1;
        }
        std::str::from_utf8(&self.s[start..self.at]).unwrap_or("")
    }

    /// `Name { a: v, b: v }` at the cursor; pairs named `prefix` + field.
    fn structure(&mut self, prefix: &str, out: &mut Vec<(String, u64)>) {
        self.ident();
        if !self.eat(b'{') {
            return;
        }
        loop {
            if self.eat(b'}') {
                return;
            }
            let name = format!("{prefix}{}", self.ident());
            if !self.eat(b':') {
                return;
            }
            self.value(&name, out);
            self.eat(b',');
            if self.peek().is_none() {
                return;
            }
        }
    }

    fn value(&mut self, name: &str, out: &mut Vec<(String, u64)>) {
        self.skip_spaces();
        let start = self.at;
        match self.peek() {
            Some(c) if c.is_ascii_digit() => {
                while matches!(self.peek(), Some(c) if c.is_ascii_digit()) {
                    self.at += 1;
                }
                let end = self.at;
                self.skip_spaces();
                if matches!(self.peek(), Some(b',') | Some(b'}') | None) {
                    let n = std::str::from_utf8(&self.s[start..end])
                        .ok()
                        .and_then(|t| t.parse::<u64>().ok());
                    if let Some(n) = n.filter(|&n| n != 0) {
                        out.push((name.to_string(), n));
                    }
                } else {
                    self.skip_value();
                }
            }
            Some(c) if c.is_ascii_uppercase() => {
                // A nested struct (`IoStats { .. }`), or another value (`Some(..)`).
                self.ident();
                self.skip_spaces();
                if self.peek() == Some(b'{') {
                    self.at = start;
                    self.structure(&format!("{name}."), out);
                } else {
                    self.skip_value();
                }
            }
            _ => self.skip_value(),
        }
    }

    /// Skips to the `,` or `}` that ends the current value, over nested brackets and
    /// strings.
    fn skip_value(&mut self) {
        let mut depth = 0usize;
        let mut in_str = false;
        while let Some(c) = self.peek() {
            if in_str {
                match c {
                    b'\\' => self.at += 1,
                    b'"' => in_str = false,
                    _ => {}
                }
            } else {
                match c {
                    b'"' => in_str = true,
                    b'{' | b'(' | b'[' => depth += 1,
                    b'}' | b')' | b']' if depth == 0 => return,
                    b'}' | b')' | b']' => depth -= 1,
                    b',' if depth == 0 => return,
                    _ => {}
                }
            }
            self.at += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_line_names_only_the_counters_that_moved() {
        let mut r = WorkerReport {
            shard: 3,
            mesh_rejected: 2,
            drain_timeouts: 1,
            ..Default::default()
        };
        r.io.accepted = 10;
        r.io.doorbell_failed = 4;
        r.core.messages_in = 12_345;
        r.core.closed_slow_consumer = 7;
        assert_eq!(
            r.to_string(),
            "shard=3 io.accepted=10 io.doorbell_failed=4 mesh_rejected=2 drain_timeouts=1 \
             core.messages_in=12345 core.closed_slow_consumer=7"
        );
    }

    #[test]
    fn a_quiet_worker_reports_only_its_shard() {
        let r = WorkerReport::default();
        assert_eq!(r.to_string(), "shard=0");
    }

    #[test]
    fn the_first_and_last_counter_of_each_part_are_named() {
        // The walk's edges: the first and last field of each nested struct, and the
        // largest value.
        let mut r = WorkerReport {
            shard: 1,
            ..Default::default()
        };
        r.io.accepted = 1;
        r.io.send_refused_busy = u64::MAX;
        r.core.connections = 5;
        r.core.closed_not_reading = 9;
        let line = r.to_string();
        assert_eq!(
            line,
            format!(
                "shard=1 io.accepted=1 io.send_refused_busy={} core.connections=5 \
                 core.closed_not_reading=9",
                u64::MAX
            )
        );
    }

    #[test]
    fn values_that_are_not_integers_are_skipped_whole() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Odd {
            a: u64,
            name: &'static str,
            list: Vec<u32>,
            maybe: Option<u8>,
            ratio: f64,
            inner: Inner,
            b: u64,
        }
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Inner {
            c: u64,
            s: &'static str,
        }
        let dump = format!(
            "{:?}",
            Odd {
                a: 1,
                name: "x, } { y",
                list: vec![1, 2],
                maybe: Some(3),
                ratio: 1.5,
                inner: Inner { c: 4, s: "\"}" },
                b: 2,
            }
        );
        let mut pairs = Vec::new();
        DebugWalk {
            s: dump.as_bytes(),
            at: 0,
        }
        .structure("", &mut pairs);
        assert_eq!(
            pairs,
            [("a".into(), 1), ("inner.c".into(), 4), ("b".into(), 2)]
        );
    }
}
