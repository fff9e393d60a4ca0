#!/usr/bin/env python3
"""Who kept the broker's loop (and loadgen) off its core: reads `perf sched timehist`
text and prints, per thread family, the wake-up-to-run delays (p50/p99/max), the
share of the traced time spent in delays over a threshold, and who ran on that core
during those delays. `<idle>` there means the guest had nothing else to run: the
vCPU itself was not running (halted in the host and not yet woken, or preempted by
the host).

    PRIO=1 DURATION=8s BROKERS=ringmq bash perf/compare.sh pairs_20k &
    sleep 7; perf sched record -a -o /tmp/s.data -- sleep 3; wait
    perf sched timehist -i /tmp/s.data > /tmp/s.txt
    python3 perf/sched_stalls.py /tmp/s.txt [threshold_us, default 100]

A message in flight while its relay or its receiver waits for a core waits as long:
if such waits cover more than 1% of the time, no broker's p99 can be below the
threshold on that machine.
"""
import collections
import re
import sys

WHO = ["ringmq-shard", "loadgen"]


def parse(path):
    """(switch-out time s, cpu, task, sched delay ms, run time ms) per row."""
    rows = []
    for line in open(path):
        p = line.split()
        if len(p) < 6 or not p[1].startswith("["):
            continue
        try:
            rows.append((float(p[0]), int(p[1][1:-1]), " ".join(p[2:-3]), float(p[-2]), float(p[-1])))
        except ValueError:
            continue
    return rows


def family(task):
    return re.sub(r"\[.*", "", task).strip()


def main():
    rows = parse(sys.argv[1])
    threshold_ms = (float(sys.argv[2]) if len(sys.argv) > 2 else 100.0) / 1000
    if not rows:
        sys.exit(f"{sys.argv[1]}: no `perf sched timehist` rows")
    span = rows[-1][0] - rows[0][0]
    print(f"traced {span:.2f} s, {len(rows)} context switches; threshold {threshold_ms * 1000:.0f} us")
    on_cpu = collections.defaultdict(list)
    for r in rows:
        on_cpu[r[1]].append(r)
    for who in WHO:
        mine = [r for r in rows if who in r[2]]
        if not mine:
            print(f"{who}: never switched in during the trace (it never slept, or did not run)")
            continue
        delays = sorted(r[3] for r in mine)
        n = len(delays)
        late = [r for r in mine if r[3] > threshold_ms]
        late_ms = sum(r[3] for r in late)
        print(
            f"{who}: {n} wake-ups; delay to run p50 {delays[n // 2] * 1000:.0f} us, "
            f"p99 {delays[int(n * 0.99)] * 1000:.0f} us, max {delays[-1]:.2f} ms; "
            f"{len(late)} over the threshold, {late_ms:.1f} ms in all = "
            f"{100 * late_ms / 1000 / span:.2f}% of the time"
        )
        held = collections.Counter()
        for r in late:
            # A row is a switch-out: this thread ran `run` ms before it, after
            # waiting `delay` ms from its wake-up.
            ran_from = r[0] - r[4] / 1000
            woken = ran_from - r[3] / 1000
            for o in on_cpu[r[1]]:
                start, end = o[0] - o[4] / 1000, o[0]
                if o is r or end <= woken or start >= ran_from:
                    continue
                held[family(o[2])] += (min(end, ran_from) - max(start, woken)) * 1000
        if held:
            print("   on its core meanwhile (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in held.most_common(8)))


if __name__ == "__main__":
    main()
