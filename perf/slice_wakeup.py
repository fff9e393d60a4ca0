#!/usr/bin/env python3
"""How late a woken thread runs when a CPU hog holds its core, with the kernel's
default time slice and with a short one (`sched_slice_us`, loadgen `--sched-slice`).

    taskset -c 0 python3 perf/slice_wakeup.py [rounds] [slice_us]
    # on a machine others load: both processes at autogroup nice -20 (root)
    setsid sh -c 'echo -20 >/proc/self/autogroup && exec taskset -c 0 python3 perf/slice_wakeup.py'

Forks a spinning child in a session of its own (its own autogroup, as another
user's build would be) on the same CPU, then alternates, `rounds` times (default 3):
2,000 sleeps of 1 ms with the normal scheduler's default slice, then 2,000 with
`slice_us` (default 100) set through sched_setattr (Linux 6.12+, no privilege
needed). Prints how much later than asked each sleep ended (p50/p99/max, ms).
Python adds tens of µs to every figure; the difference between the rows is the
scheduler's: with the default slice a woken thread waits for the hog's slice to
end at a scheduler tick (4 ms at HZ=250), with a shorter one it preempts the hog.
"""
import ctypes
import os
import signal
import struct
import sys
import time

SYS_SCHED_SETATTR = 314  # x86_64
SYS_SCHED_GETATTR = 315

libc = ctypes.CDLL(None, use_errno=True)


def getattr_runtime_nice():
    buf = ctypes.create_string_buffer(48)
    if libc.syscall(SYS_SCHED_GETATTR, 0, buf, 48, 0) != 0:
        sys.exit(f"sched_getattr: {os.strerror(ctypes.get_errno())}")
    nice = struct.unpack_from("i", buf.raw, 16)[0]
    runtime_ns = struct.unpack_from("Q", buf.raw, 24)[0]
    return runtime_ns, nice


def set_slice(slice_us):
    """slice_us 0: back to the kernel's default. Keeps the thread's nice value."""
    _, nice = getattr_runtime_nice()
    attr = struct.pack("IIQiIQQQ", 48, 0, 0, nice, 0, slice_us * 1000, 0, 0)
    buf = ctypes.create_string_buffer(attr, 48)
    if libc.syscall(SYS_SCHED_SETATTR, 0, buf, 0) != 0:
        sys.exit(f"sched_setattr: {os.strerror(ctypes.get_errno())}")
    # 6.12+ reports the slice in sched_runtime; older kernels keep 0 there.
    if slice_us and getattr_runtime_nice()[0] != slice_us * 1000:
        sys.exit("the kernel ignored the slice: per-task slices need Linux 6.12+")


def late_ms(n):
    lates = []
    for _ in range(n):
        t = time.perf_counter()
        time.sleep(0.001)
        lates.append((time.perf_counter() - t - 0.001) * 1e3)
    lates.sort()
    return lates[n // 2], lates[n * 99 // 100], lates[-1]


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    slice_us = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    if len(os.sched_getaffinity(0)) != 1:
        sys.exit("run it on one CPU: taskset -c N python3 perf/slice_wakeup.py")
    # "/autogroup-N nice K": the hog's new autogroup gets the same nice, so under
    # PRIO-style runs (autogroup nice -20, root) it competes as an equal.
    group_nice = open("/proc/self/autogroup").read().split()[-1]
    hog = os.fork()
    if hog == 0:
        os.setsid()
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write(group_nice)
        except OSError:
            pass
        signal.alarm(600)  # never outlives a killed parent by long
        while True:
            pass
    try:
        time.sleep(0.2)
        for r in range(rounds):
            for s in (0, slice_us):
                set_slice(s)
                p50, p99, worst = late_ms(2000)
                label = f"slice {s} us" if s else "default slice"
                print(
                    f"round {r + 1} {label:>15}: late p50 {p50:.3f}  p99 {p99:.3f}"
                    f"  max {worst:.3f} ms",
                    flush=True,
                )
    finally:
        os.kill(hog, signal.SIGKILL)
        os.waitpid(hog, 0)


main()
