//! Where a worker thread runs: pinning it to a CPU, SCHED_FIFO or the normal
//! scheduler's time slice, the CPUs allowed.

use std::io;

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays in bounds for
    // cpu < CPU_SETSIZE (checked); sched_setaffinity(0) applies to this thread.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Puts the calling thread under SCHED_FIFO at `priority` (1..=99).
pub fn set_realtime(priority: u8) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is the
    // calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's `struct sched_attr` up to `sched_period` (SCHED_ATTR_SIZE_VER0): the
/// `libc` crate does not declare it.
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime_ns: u64,
    deadline_ns: u64,
    period_ns: u64,
}

fn sched_getattr() -> io::Result<SchedAttr> {
    let mut attr = SchedAttr::default();
    // SAFETY: `attr` is a writable SCHED_ATTR_SIZE_VER0 struct and its size is passed;
    // pid 0 is the calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as u32,
            0u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(attr)
}

/// Asks the normal scheduler (EEVDF) for a `slice_us` time slice for the calling
/// thread: Linux 6.12+ reads a SCHED_OTHER thread's `sched_runtime` as its slice, no
/// privilege needed. A thread with a shorter slice than the one running gets an
/// earlier deadline, so when it wakes it preempts a task (or kernel thread) that
/// would otherwise keep the core until its own slice, tick-rounded, runs out. The
/// thread's share of the CPU does not change. `Ok(false)`: the kernel ignored the
/// request (before 6.12 the field means nothing outside SCHED_DEADLINE). The thread's
/// nice value is kept.
pub fn set_fair_slice(slice_us: u32) -> io::Result<bool> {
    let mut attr = sched_getattr()?;
    if attr.policy != libc::SCHED_OTHER as u32 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the thread is not under the normal scheduler (SCHED_OTHER)",
        ));
    }
    attr.size = std::mem::size_of::<SchedAttr>() as u32;
    attr.flags = 0;
    attr.runtime_ns = u64::from(slice_us) * 1000;
    attr.deadline_ns = 0;
    attr.period_ns = 0;
    // SAFETY: `attr` is a valid SCHED_ATTR_SIZE_VER0 struct whose size field is set;
    // pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0u32) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sched_getattr()?.runtime_ns == u64::from(slice_us) * 1000)
}

/// CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills the zeroed set we pass; CPU_ISSET reads in bounds.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}
