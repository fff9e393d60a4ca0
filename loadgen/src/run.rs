//! Orchestration: split clients over threads (each with its own ring and file table),
//! drive the phases, merge results.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{Config, Scenario};
use crate::engine::{self, SetupError, Shared, ThreadResult, Worker};
use crate::plan::{self, ClientSpec};
use crate::report::{Percentiles, Report};

/// Set by the first SIGINT: the run ends early but still disconnects and reports.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Release);
    // SAFETY: signal() is async-signal-safe; a second Ctrl-C then kills the process.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Acquire)
}

/// Slots kept free in every registered table below RLIMIT_NOFILE.
const SLOT_HEADROOM: u64 = 2000;

/// Raises the soft fd limit to the hard one: a registered table may hold at most
/// RLIMIT_NOFILE (soft) slots. Returns the soft limit now in force.
fn raise_nofile() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read/write the rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
    }
    rl.rlim_cur
}

fn cpu_process_ns() -> u64 {
    // SAFETY: getrusage fills the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Clients per thread so every thread's table fits RLIMIT_NOFILE.
pub fn slots_per_ring(nofile: u64) -> u64 {
    nofile.saturating_sub(SLOT_HEADROOM).clamp(64, 18_000)
}

pub fn threads_needed(clients: u64, requested: usize, nofile: u64) -> usize {
    requested.max(clients.div_ceil(slots_per_ring(nofile)) as usize)
}

fn bar(total: u64, msg: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:12} [{elapsed_precise}] {wide_bar} {pos}/{len}")
    {
        pb.set_style(style);
    }
    pb.set_message(msg.to_string());
    Some(pb)
}

fn sleep_with_bar(d: Duration, msg: &str, shared: &Shared) {
    let steps = d.as_millis() as u64 / 100;
    let pb = bar(steps.max(1), msg);
    let end = std::time::Instant::now() + d;
    while std::time::Instant::now() < end && !interrupted() {
        std::thread::sleep((end - std::time::Instant::now()).min(Duration::from_millis(100)));
        if let Some(pb) = &pb {
            pb.inc(1);
            pb.set_message(format!(
                "{msg} sent {}",
                shared
                    .sent
                    .iter()
                    .map(|s| s.load(Ordering::Relaxed))
                    .sum::<u64>()
            ));
        }
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
}

/// 4: QoS >= 1 messages lost (checked first: the worse failure); 3: more connections
/// failed than allowed; 0 otherwise.
pub fn exit_code(
    qos: ringmq::protocol::QoS,
    lost: u64,
    failed_pct: f64,
    max_failed_pct: f64,
) -> i32 {
    if qos != ringmq::protocol::QoS::AtMostOnce && lost > 0 {
        4
    } else if failed_pct > max_failed_pct {
        3
    } else {
        0
    }
}

/// Merged histograms (nanoseconds) for the .hgrm file and the plot.
pub struct Hists {
    pub latency: hdrhistogram::Histogram<u64>,
    pub rtt: hdrhistogram::Histogram<u64>,
    pub connect: hdrhistogram::Histogram<u64>,
}

/// Pause between a storm's disconnect and its reconnect.
const STORM_PAUSE: Duration = Duration::from_secs(2);

/// The shared state, the threads and the start time of one round.
type Started = (Arc<Shared>, Vec<JoinHandle<ThreadResult>>, u64);

/// Builds one ring per thread for `plan`, every ring before any thread starts so a
/// refusal is reported up front, and starts them. Returns the shared state, the
/// threads and the start time.
fn start(cfg: &Arc<Config>, plan: &plan::Plan, threads: usize) -> Result<Started, SetupError> {
    let shared = Arc::new(Shared::new(plan));
    let mut per: Vec<Vec<ClientSpec>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, c) in plan.clients.iter().enumerate() {
        per[i % threads].push(c.clone());
    }
    let mut workers = Vec::with_capacity(threads);
    for specs in per {
        workers.push(Worker::new(
            cfg.clone(),
            shared.clone(),
            specs,
            plan.devices,
        )?);
    }
    // Threads inherit their creator's policy: the workers start under SCHED_FIFO and
    // this thread, which only waits and prints, goes back to normal scheduling.
    if cfg.rt_priority > 0 {
        engine::set_fifo(cfg.rt_priority).map_err(|e| {
            SetupError(format!(
                "--rt-priority {}: sched_setscheduler(SCHED_FIFO) failed: {e} (needs CAP_SYS_NICE or RLIMIT_RTPRIO)",
                cfg.rt_priority
            ))
        })?;
    }
    let t0 = engine::now_ns();
    let handles = workers
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            std::thread::Builder::new()
                .name(format!("loadgen-{i}"))
                .spawn(move || w.run())
        })
        .collect::<Result<_, _>>()
        .map_err(|e| SetupError(format!("spawning a worker thread failed: {e}")));
    if cfg.rt_priority > 0 {
        engine::set_normal()
            .map_err(|e| SetupError(format!("sched_setscheduler(SCHED_OTHER) failed: {e}")))?;
    }
    Ok((shared, handles?, t0))
}

/// Waits until every client is connected (and subscribed) or failed, or
/// --connect-timeout from `t0`.
fn wait_connected(cfg: &Config, shared: &Shared, total: u64, t0: u64, msg: &str) {
    let pb = bar(total, msg);
    let deadline = t0 + cfg.connect_timeout.as_nanos() as u64;
    loop {
        let done = shared.ready.load(Ordering::Acquire) + shared.failed.load(Ordering::Acquire);
        if let Some(pb) = &pb {
            pb.set_position(done);
        }
        if done >= total || engine::now_ns() > deadline || interrupted() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
}

/// CPU time (user + system) of process `pid` in ns, from /proc/PID/stat; `None` once
/// it is gone.
fn proc_cpu_ns(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces: utime and stime are the
    // 12th and 13th of them (fields 14 and 15 of the line).
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut f = rest.split_whitespace().skip(11);
    let ticks: u64 = f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ticks * 1_000_000_000 / hz)
}

/// A storm's first round, as it went.
pub struct StormPrime {
    pub established: u64,
    pub secs: f64,
    pub errors: std::collections::BTreeMap<String, u64>,
}

/// A storm's first round: every client connects with a persistent session,
/// subscribes, and disconnects cleanly once all are in.
fn storm_prime(cfg: &Arc<Config>, threads: usize) -> Result<StormPrime, SetupError> {
    let plan = plan::storm_prime(cfg);
    let total = plan.clients.len() as u64;
    let (shared, handles, t0) = start(cfg, &plan, threads)?;
    wait_connected(cfg, &shared, total, t0, "subscribing");
    let established = shared.ready.load(Ordering::Acquire);
    let secs = (engine::now_ns() - t0) as f64 / 1e9;
    shared
        .phase
        .store(engine::PHASE_DISCONNECT, Ordering::Release);
    let mut errors = std::collections::BTreeMap::new();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| SetupError("a worker thread panicked".into()))?;
        for (k, v) in r.errors {
            *errors.entry(format!("first round: {k}")).or_insert(0) += v;
        }
    }
    Ok(StormPrime {
        established,
        secs,
        errors,
    })
}

pub fn run(mut cfg: Config) -> Result<(Report, Hists), SetupError> {
    let nofile = raise_nofile();
    // SAFETY: the handler only stores to an atomic and calls signal(), both
    // async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
    let plan = plan::build(&cfg);
    let total = plan.clients.len() as u64;
    let threads = threads_needed(total, cfg.threads, nofile);
    if threads > cfg.threads {
        eprintln!(
            "loadgen: {total} clients need {threads} rings of <= {} direct-descriptor slots (RLIMIT_NOFILE {nofile}); using {threads} threads",
            slots_per_ring(nofile)
        );
    }
    cfg.threads = threads;
    let cfg = Arc::new(cfg);
    let prime = if cfg.scenario == Scenario::Storm {
        let p = storm_prime(&cfg, threads)?;
        // Let the broker finish the DISCONNECTs before the storm, so it reconnects to
        // stored sessions rather than taking over live connections.
        std::thread::sleep(STORM_PAUSE);
        Some(p)
    } else {
        None
    };
    let broker_cpu0 = cfg.broker_pid.and_then(proc_cpu_ns);
    let cpu0 = cpu_process_ns();
    let (shared, handles, t0) = start(&cfg, &plan, threads)?;
    wait_connected(&cfg, &shared, total, t0, "connecting");
    let broker_cpu_ns = match (broker_cpu0, cfg.broker_pid.and_then(proc_cpu_ns)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let ready_after_connect = shared.ready.load(Ordering::Acquire);
    let last_connack = shared.last_connack_ns.load(Ordering::Acquire);
    let cpu_connect = cpu_process_ns() - cpu0;
    let connect_end = engine::now_ns();
    // Rate over first attempt -> last CONNACK; without any CONNACK, the whole phase.
    let connect_wall_ns = if last_connack > t0 {
        last_connack - t0
    } else {
        connect_end - t0
    }
    .max(1);

    let (measured_ns, cpu_measured_ns, cpu_window_ns);
    if cfg.scenario.is_connect_storm() {
        shared
            .measure_start_ns
            .store(engine::now_ns(), Ordering::Release);
        shared.phase.store(engine::PHASE_MEASURE, Ordering::Release);
        sleep_with_bar(cfg.hold, "holding", &shared);
        measured_ns = connect_wall_ns;
        cpu_measured_ns = cpu_connect;
        cpu_window_ns = (connect_end - t0).max(1);
    } else {
        shared.phase.store(engine::PHASE_WARMUP, Ordering::Release);
        sleep_with_bar(cfg.warmup, "warmup", &shared);
        let m0 = engine::now_ns();
        let c0 = cpu_process_ns();
        shared.measure_start_ns.store(m0, Ordering::Release);
        shared.phase.store(engine::PHASE_MEASURE, Ordering::Release);
        sleep_with_bar(cfg.duration, "running", &shared);
        shared.phase.store(engine::PHASE_DRAIN, Ordering::Release);
        measured_ns = engine::now_ns() - m0;
        cpu_measured_ns = cpu_process_ns() - c0;
        cpu_window_ns = measured_ns;
        let drain_end = engine::now_ns() + cfg.drain.as_nanos() as u64;
        while engine::now_ns() < drain_end
            && shared.unique_received.load(Ordering::Acquire) < shared.expected()
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let teardown_t0 = engine::now_ns();
    let teardown_cpu0 = cpu_process_ns();
    let teardown_broker0 = cfg.broker_pid.and_then(proc_cpu_ns);
    shared
        .phase
        .store(engine::PHASE_DISCONNECT, Ordering::Release);
    let mut results: Vec<ThreadResult> = Vec::with_capacity(threads);
    for h in handles {
        results.push(
            h.join()
                .map_err(|_| SetupError("a worker thread panicked".into()))?,
        );
    }
    let teardown = Teardown {
        secs: (engine::now_ns() - teardown_t0) as f64 / 1e9,
        cpu_ns: cpu_process_ns().saturating_sub(teardown_cpu0),
        broker_cpu_ns: match (teardown_broker0, cfg.broker_pid.and_then(proc_cpu_ns)) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
    };
    Ok(merge(
        &cfg,
        &shared,
        results,
        total,
        ready_after_connect,
        connect_wall_ns,
        measured_ns,
        (cpu_measured_ns, cpu_window_ns),
        (prime, broker_cpu_ns, teardown),
    ))
}

/// DISCONNECT to the last close (every worker thread ended): what a run's teardown
/// cost loadgen and, with --broker-pid, the broker.
struct Teardown {
    secs: f64,
    cpu_ns: u64,
    broker_cpu_ns: Option<u64>,
}

#[allow(clippy::too_many_arguments)]
fn merge(
    cfg: &Config,
    shared: &Shared,
    results: Vec<ThreadResult>,
    total: u64,
    established: u64,
    connect_wall_ns: u64,
    measured_ns: u64,
    (cpu_measured_ns, cpu_window_ns): (u64, u64),
    (prime, broker_cpu_ns, teardown): (Option<StormPrime>, Option<u64>, Teardown),
) -> (Report, Hists) {
    let mut latency = engine::new_histogram();
    let mut rtt = engine::new_histogram();
    let mut connect = engine::new_histogram();
    let mut errors = std::collections::BTreeMap::new();
    let (
        mut sent,
        mut recv,
        mut recv_bytes,
        mut dups,
        mut ooo,
        mut unique,
        mut unexpected,
        mut written_off,
        mut unclean,
        mut sends,
    ) = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    let mut closed_before_broker = 0u64;
    let mut max_thread_pct: f64 = 0.0;
    let mut spun_measured_ns = 0u64;
    let mut runq_wait_pct: Option<f64> = None;
    let measured_phase = if cfg.scenario.is_connect_storm() {
        0
    } else {
        engine::PHASE_MEASURE as usize
    };
    for r in &results {
        let _ = latency.add(&r.latency);
        let _ = rtt.add(&r.rtt);
        let _ = connect.add(&r.connect);
        for (k, v) in &r.errors {
            *errors.entry(k.clone()).or_insert(0) += v;
        }
        sent += r.sent_measure;
        sends += r.sends_measure;
        recv += r.received_measure;
        recv_bytes += r.received_bytes_measure;
        dups += r.delivery.duplicates;
        ooo += r.delivery.out_of_order;
        unique += r.delivery.unique;
        unexpected += r.unexpected;
        written_off += r.qos0_written_off;
        unclean += r.unclean_close;
        closed_before_broker += r.closed_before_broker;
        let spin_start = r.spin_at_phase_ns[measured_phase];
        spun_measured_ns += r.spin_at_phase_ns[measured_phase + 1].saturating_sub(spin_start);
        let start = r.cpu_at_phase_ns[measured_phase];
        let end = r.cpu_at_phase_ns[measured_phase + 1].max(start);
        max_thread_pct =
            max_thread_pct.max((end - start) as f64 * 100.0 / measured_ns.max(1) as f64);
        let wait = &r.runq_wait_at_phase_ns;
        if let (Some(a), Some(b)) = (wait[measured_phase], wait[measured_phase + 1]) {
            let pct = b.saturating_sub(a) as f64 * 100.0 / measured_ns.max(1) as f64;
            runq_wait_pct = Some(runq_wait_pct.map_or(pct, |m: f64| m.max(pct)));
        }
    }
    let expected = shared.expected();
    let secs = measured_ns as f64 / 1e9;
    let failed = total - established.min(total);
    let lost = crate::stats::DeliveryTotals {
        expected,
        unique,
        duplicates: dups,
        out_of_order: ooo,
    }
    .lost();
    let storm = prime.map(|p| {
        for (k, v) in p.errors {
            *errors.entry(k).or_insert(0) += v;
        }
        crate::report::StormReport {
            first_round_established: p.established,
            first_round_s: p.secs,
            sessions_present: shared.session_present.load(Ordering::Acquire),
        }
    });
    let errors_total = errors.values().sum();
    // A storm's reconnect that found no session failed its purpose.
    let not_resumed = storm
        .as_ref()
        .map_or(failed, |st| total - st.sessions_present.min(total));
    let failed_pct = not_resumed.max(failed) as f64 * 100.0 / total.max(1) as f64;
    let exit_code = exit_code(cfg.qos, lost, failed_pct, cfg.max_failed_pct);
    let saturated = max_thread_pct > 90.0;
    let cpu_busy_ns = cpu_measured_ns.saturating_sub(spun_measured_ns);
    let report = Report {
        scenario: cfg.scenario.name().to_string(),
        protocol: if cfg.protocol.is_v5() {
            "5".into()
        } else {
            "3.1.1".into()
        },
        qos: cfg.qos as u8,
        size_bytes: cfg.size,
        threads: cfg.threads,
        open_loop: cfg.open_loop,
        window: cfg.window,
        measured_s: secs,
        hold_s: if cfg.scenario.is_connect_storm() {
            cfg.hold.as_secs_f64()
        } else {
            0.0
        },
        connections_attempted: total,
        connections_established: established,
        connections_failed: failed,
        connect_rate_per_s: established as f64 / (connect_wall_ns as f64 / 1e9),
        connect_latency_us: Percentiles::of(&connect),
        sent_per_s: sent as f64 / secs,
        received_per_s: recv as f64 / secs,
        received_mb_per_s: recv_bytes as f64 / secs / 1e6,
        latency_us: Percentiles::of(&latency),
        rtt_us: (cfg.scenario == Scenario::Fleet).then(|| Percentiles::of(&rtt)),
        expected,
        delivered: unique,
        lost,
        duplicates: dups,
        out_of_order: ooo,
        unexpected,
        qos0_written_off: written_off,
        errors_total,
        errors,
        unclean_closes: unclean,
        closed_before_broker,
        sends_per_s: sends as f64 / secs,
        msgs_per_send: sent as f64 / sends.max(1) as f64,
        cpu_process_pct: cpu_busy_ns as f64 * 100.0 / cpu_window_ns as f64,
        cpu_s: cpu_busy_ns as f64 / 1e9,
        spin_us: cfg.spin.as_secs_f64() * 1e6,
        cpu_us_per_msg: (recv > 0).then(|| cpu_busy_ns as f64 / 1000.0 / recv as f64),
        cpu_max_thread_pct: max_thread_pct,
        loadgen_saturated: saturated,
        runq_wait_pct,
        interrupted: interrupted(),
        broker_cpu_s: broker_cpu_ns.map(|ns| ns as f64 / 1e9),
        teardown_s: teardown.secs,
        teardown_cpu_s: teardown.cpu_ns as f64 / 1e9,
        broker_teardown_cpu_s: teardown.broker_cpu_ns.map(|ns| ns as f64 / 1e9),
        storm,
        exit_code,
    };
    (
        report,
        Hists {
            latency,
            rtt,
            connect,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        use ringmq::protocol::QoS;
        assert_eq!(exit_code(QoS::AtLeastOnce, 1, 0.0, 0.0), 4);
        assert_eq!(exit_code(QoS::ExactlyOnce, 1, 50.0, 0.0), 4);
        assert_eq!(exit_code(QoS::AtMostOnce, 1000, 0.0, 0.0), 0);
        assert_eq!(exit_code(QoS::AtMostOnce, 0, 0.5, 0.0), 3);
        assert_eq!(exit_code(QoS::AtMostOnce, 0, 0.5, 1.0), 0);
        assert_eq!(exit_code(QoS::AtLeastOnce, 0, 0.0, 0.0), 0);
    }

    #[test]
    fn rings_cover_clients() {
        assert_eq!(slots_per_ring(20_000), 18_000);
        assert_eq!(threads_needed(100_000, 1, 20_000), 6);
        assert_eq!(threads_needed(100, 2, 20_000), 2);
        assert_eq!(threads_needed(18_000, 1, 20_000), 1);
        assert_eq!(threads_needed(18_001, 1, 20_000), 2);
        assert_eq!(slots_per_ring(1024), 64);
    }
}
