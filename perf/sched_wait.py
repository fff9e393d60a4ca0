#!/usr/bin/env python3
"""Where a process's wall time goes on a shared machine: `sched_wait.py PID`
samples /proc/PID/task/*/schedstat (time on a CPU, time runnable but waiting for
one, per thread) every 20 ms until the process exits or this script gets SIGTERM,
then prints the totals over every thread it saw (a thread that lived under 20 ms
may be missed). Used by perf/recovery.sh beside the restart-to-first-CONNACK time."""
import glob
import signal
import sys
import time

pid = sys.argv[1]
seen = {}  # tid -> (on_cpu_ns, waiting_ns)
stop = False


def on_term(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
while not stop:
    paths = glob.glob(f"/proc/{pid}/task/*/schedstat")
    if not paths and not glob.glob(f"/proc/{pid}"):
        break
    for p in paths:
        try:
            with open(p) as f:
                on_cpu, waiting, _ = f.read().split()
        except (OSError, ValueError):
            continue
        seen[p.split("/")[4]] = (int(on_cpu), int(waiting))
    time.sleep(0.02)
cpu = sum(v[0] for v in seen.values()) / 1e6
wait = sum(v[1] for v in seen.values()) / 1e6
print(f"{len(seen)} threads: {cpu:.0f} ms on a CPU, {wait:.0f} ms runnable waiting for one")
