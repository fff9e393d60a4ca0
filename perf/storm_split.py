#!/usr/bin/env python3
"""Who had the two cores during a reconnect storm: the machine's CPU over the storm
window split into the broker, loadgen, everything else and idle (issue #21).

A storm's wall time is bounded below by (broker CPU + loadgen CPU) / cores when the
two share the machine, as they do on loopback here. If the window shows no idle time
and little for other processes, the storm is as fast as the sum of the two processes'
work allows, and a broker loop that sleeps meanwhile is waiting for loadgen, not the
other way round.

    python3 perf/storm_split.py sample BROKER_PID LOADGEN_PID SAMPLES.json &
    ... loadgen storm --json >LOADGEN.json ...
    python3 perf/storm_split.py report SAMPLES.json LOADGEN.json

`sample` reads /proc every 100 ms until LOADGEN_PID exits: /proc/stat (the machine's
user, system, softirq, idle and steal), each process's user + system time from
/proc/PID/stat (dead threads included) and the run-queue wait its live threads have
had (/proc/PID/task/*/schedstat). `report` places the storm window by loadgen's JSON
(`measured_s`, then `hold_s` and `teardown_s`, ending at loadgen's exit) and prints the split
over it, then per half second. On loopback, softirq work is billed to whichever task
was current (perf/README.md, "Why loopback bills the broker's work to loadgen"), so
the two processes' figures include part of each other's TCP work; their sum does not.
"""
import json
import os
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def machine():
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def process(pid):
    """(user + system seconds, run-queue wait seconds of live threads) or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        cpu_s = (int(fields[11]) + int(fields[12])) / HZ
        wait_ns = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    wait_ns += int(f.read().split()[1])
            except OSError:
                pass  # the thread ended between listdir and open
        return cpu_s, wait_ns / 1e9
    except OSError:
        return None


def sample(broker_pid, loadgen_pid, out):
    rows = []
    while True:
        lg = process(loadgen_pid)
        if lg is None:
            break
        rows.append((time.time(), machine(), process(broker_pid), lg))
        time.sleep(0.1)
    with open(out, "w") as f:
        json.dump({"cores": os.cpu_count(), "rows": rows}, f)


def split(rows, start, end):
    """The machine's and both processes' CPU seconds between the samples nearest
    `start` and `end`; None when fewer than two samples fall inside."""
    sel = [r for r in rows if start <= r[0] <= end and r[2] is not None]
    if len(sel) < 2:
        return None
    a, b = sel[0], sel[-1]
    d = [(y - x) / HZ for x, y in zip(a[1], b[1])]
    # /proc/stat: user nice system idle iowait irq softirq steal
    busy = d[0] + d[1] + d[2] + d[5] + d[6]
    broker = b[2][0] - a[2][0]
    loadgen = b[3][0] - a[3][0]
    return {
        "wall_s": b[0] - a[0],
        "busy_s": busy,
        "idle_s": d[3] + d[4],
        "steal_s": d[7],
        "broker_s": broker,
        "loadgen_s": loadgen,
        "others_s": busy - broker - loadgen,
        "broker_runq_wait_s": b[2][1] - a[2][1],
        "loadgen_runq_wait_s": b[3][1] - a[3][1],
    }


def line(s, cores):
    return (
        f"{s['wall_s']:.2f} s x {cores} cores = {s['wall_s'] * cores:.2f} cpu-s: broker {s['broker_s']:.2f}, "
        f"loadgen {s['loadgen_s']:.2f}, others {s['others_s']:.2f}, idle {s['idle_s']:.2f}, "
        f"steal {s['steal_s']:.2f} (run-queue wait: broker {s['broker_runq_wait_s']:.2f}, "
        f"loadgen {s['loadgen_runq_wait_s']:.2f})"
    )


def report(samples_path, loadgen_json):
    with open(samples_path) as f:
        data = json.load(f)
    with open(loadgen_json) as f:
        lg = json.loads(f.read().strip().splitlines()[-1])
    rows, cores = data["rows"], data["cores"]
    end = rows[-1][0] - lg.get("teardown_s", 0.0) - lg.get("hold_s", 0.0)
    start = end - lg["measured_s"]
    whole = split(rows, start, end)
    if whole is None:
        sys.exit("storm_split: fewer than two samples inside the storm window")
    print(f"storm window ({lg['measured_s']:.2f} s): {line(whole, cores)}")
    t = start
    while t < end - 0.05:
        part = split(rows, t, min(t + 0.5, end))
        if part:
            print(f"  +{t - start:.1f} s: {line(part, cores)}")
        t += 0.5
    print("json " + json.dumps({k: round(v, 3) for k, v in whole.items()}))


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "sample":
        sample(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    elif len(sys.argv) == 4 and sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
