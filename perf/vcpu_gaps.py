#!/usr/bin/env python3
"""Spins on one core and reports the gaps in which this thread did not run.

Run one per core at the same time to see what a busy two-core VM takes away from
a busy thread (hypervisor, kernel threads, other processes):

    taskset -c 0 python3 perf/vcpu_gaps.py & taskset -c 1 python3 perf/vcpu_gaps.py; wait

A message in flight during such a gap waits it out, whatever the broker: these gaps
set the floor under loadgen's p99/p99.9 on this machine.
"""
import sys
import time

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
end = time.perf_counter() + seconds
last = time.perf_counter()
gaps = []
while True:
    t = time.perf_counter()
    if t - last > 100e-6:
        gaps.append(t - last)
    last = t
    if t > end:
        break
gaps.sort()
print(
    f"{len(gaps)} gaps > 100 us in {seconds:.0f} s; > 1 ms: {sum(g > 1e-3 for g in gaps)};"
    f" longest (ms): {', '.join(f'{g * 1e3:.2f}' for g in gaps[-8:]) or '-'}"
)
