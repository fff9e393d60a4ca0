//! The calling thread's CPU time, for the perf tools that report a thread's cost
//! (`send-zc`, `kernel-floor`): one definition, declared as a module by each.

/// User + system CPU of the calling thread (`getrusage(RUSAGE_THREAD)`), in ns.
pub fn thread_cpu_ns() -> u64 {
    // SAFETY: getrusage writes one rusage into the zeroed value we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_THREAD is the calling thread.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    assert_eq!(rc, 0, "getrusage");
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    ns(ru.ru_utime) + ns(ru.ru_stime)
}
