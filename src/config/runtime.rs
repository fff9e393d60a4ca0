//! Runtime keys: how many event loops run, which IO backend they use, how they
//! wait and at what scheduling priority, and what they log.

use clap::Args;

use super::cli::{d, with_default};
use super::value::{int, one_of, push_text, text, usize_of, Expect, Raw};
use super::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoBackend {
    /// io_uring when `io_uring_setup` works, epoll otherwise.
    Auto,
    Uring,
    Epoll,
}

#[derive(Args, Debug, Default, Clone)]
pub struct RuntimeArgs {
    /// Event loops, one per core. Default: available cores.
    #[arg(long, value_name = "N")]
    pub shards: Option<String>,
    #[arg(long, value_name = "auto|uring|epoll", help = with_default("IO backend; auto = io_uring when the kernel allows it, else epoll", "auto"))]
    pub io: Option<String>,
    #[arg(long, value_name = "LEVEL", help = with_default("tracing filter, e.g. info or ringmq=debug,warn; refused at start-up if it does not parse. RUST_LOG overrides it (an unparsable RUST_LOG is ignored with a warning)", &d().log_level))]
    pub log_level: Option<String>,
    #[arg(long, value_name = "text|json", help = with_default("Log line format: text for people, json (one object per line) for log collectors", "text"))]
    pub log_format: Option<String>,
    #[arg(long, value_name = "US", help = with_default("Most microseconds a loop spins for the next event after a busy turn before blocking (adaptive: shrinks to 0 when events are further apart); 0 = never spin", d().busy_poll_us))]
    pub busy_poll_us: Option<String>,
    #[arg(long, value_name = "N", help = with_default("SCHED_FIFO priority 1..99 for the event-loop threads (needs CAP_SYS_NICE or RLIMIT_RTPRIO); cuts the latency tail that kernel threads on a loop's core cause; 0 = normal scheduling", d().rt_priority))]
    pub rt_priority: Option<String>,
    #[arg(long, value_name = "US", help = with_default("Time slice in microseconds (100..100000) the event-loop threads ask the normal scheduler for (Linux 6.12+, no privilege needed): a woken loop with a shorter slice than the task on its core preempts it at once instead of waiting for that task's slice to end; 0 = the kernel's default. Ignored with --rt-priority", d().sched_slice_us))]
    pub sched_slice_us: Option<String>,
    #[arg(long, value_name = "N", help = with_default("Key of the hash that places client sessions on event loops, for tests and debugging only: anyone who knows it can choose client ids that all land on one loop; none = random at each start", "none"))]
    pub placement_seed: Option<String>,
}

pub(super) const KEYS: &[&str] = &[
    "shards",
    "io",
    "log_level",
    "log_format",
    "busy_poll_us",
    "rt_priority",
    "sched_slice_us",
    "placement_seed",
];

/// A spin longer than a millisecond no longer saves a wake-up worth its CPU.
const MAX_BUSY_POLL_US: u64 = 1000;
const MAX_SHARDS: u64 = crate::ring::MAX_SHARDS as u64;
/// The kernel clamps a SCHED_OTHER thread's requested slice to this range
/// (`sched_setattr`, Linux 6.12+).
const SCHED_SLICE_US_MIN: u64 = 100;
const SCHED_SLICE_US_MAX: u64 = 100_000;

/// A `tracing` filter, parsed here so a typo is refused at start-up instead of
/// being replaced by a default when logging is set up. (A bare word is a target
/// name to `tracing`, so a misspelt level such as `debgu` parses: it logs only
/// that target.)
fn log_filter(raw: &Raw) -> Result<String, Expect> {
    let s = text(raw)?;
    match tracing_subscriber::EnvFilter::try_new(&s) {
        Ok(_) => Ok(s),
        Err(e) => Err(format!(
            "a tracing filter such as info or ringmq=debug,warn ({e})"
        )),
    }
}

/// 0 (the kernel's default) or a slice the kernel takes as given: outside
/// 100..=100000 µs it would clamp the value silently.
fn sched_slice_us(raw: &Raw) -> Result<u32, Expect> {
    let (min, max) = (SCHED_SLICE_US_MIN, SCHED_SLICE_US_MAX);
    let expected = || format!("0 (the kernel's default) or an integer {min}..={max}");
    match int(raw, 0, max) {
        Ok(0) => Ok(0),
        Ok(v) if v >= min => Ok(v as u32),
        _ => Err(expected()),
    }
}

/// Applies one key of this part. `Ok(false)`: not one of its keys.
pub(super) fn set(cfg: &mut Config, key: &str, raw: &Raw) -> Result<bool, Expect> {
    match key {
        "shards" => cfg.shards = Some(usize_of(int(raw, 1, MAX_SHARDS)?)),
        "io" => {
            cfg.io = match one_of(raw, &["auto", "uring", "epoll"])? {
                "uring" => IoBackend::Uring,
                "epoll" => IoBackend::Epoll,
                _ => IoBackend::Auto,
            }
        }
        "log_level" => cfg.log_level = log_filter(raw)?,
        "log_format" => cfg.log_json = one_of(raw, &["text", "json"])? == "json",
        "busy_poll_us" => cfg.busy_poll_us = int(raw, 0, MAX_BUSY_POLL_US)? as u32,
        "rt_priority" => cfg.rt_priority = int(raw, 0, 99)? as u8,
        "sched_slice_us" => cfg.sched_slice_us = sched_slice_us(raw)?,
        "placement_seed" => {
            cfg.placement_seed = match raw {
                Raw::Text(s) if s.trim().eq_ignore_ascii_case("none") => None,
                _ => Some(int(raw, 0, u64::MAX).map_err(|e| format!("{e} or \"none\""))?),
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

impl RuntimeArgs {
    pub(super) fn values(&self, v: &mut Vec<(&'static str, Raw)>) {
        push_text(v, "shards", &self.shards);
        push_text(v, "io", &self.io);
        push_text(v, "log_level", &self.log_level);
        push_text(v, "log_format", &self.log_format);
        push_text(v, "busy_poll_us", &self.busy_poll_us);
        push_text(v, "rt_priority", &self.rt_priority);
        push_text(v, "sched_slice_us", &self.sched_slice_us);
        push_text(v, "placement_seed", &self.placement_seed);
    }
}
