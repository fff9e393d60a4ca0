#!/usr/bin/env python3
"""Splits a fan-out's latency into its parts, from `perf script -F comm,tid,cpu,time,event,trace`
of the tracepoints perf/fanout_trace.sh records (#21).

    fanout_bursts.py TRACE.txt BROKER_TID LOADGEN_TID [BROKER_CPU LOADGEN_CPU]

A burst is one io_uring_enter of the broker's loop thread that submits at least
MIN_SENDS (500) entries: one PUBLISH's copies. Per burst it prints how long the
broker, once woken, waited for its core before it, how long the submit took (the last copy leaves at its end), how long the broker was preempted
inside it, when loadgen's thread ran the receive work of the first and the last copy
(io_uring task work, relative to the burst's start and end), how often loadgen was
woken and how long it sat runnable without its core, and the idle time before the
burst (a burst that starts right after the previous one queued behind it). Then, per
core, which other threads ran while ours were runnable: the load other processes put
on the measurement."""
import collections
import re
import statistics
import sys

MIN_SENDS = 500
LINE = re.compile(r"^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
SWITCH = re.compile(
    r"prev_comm=(.+?) prev_pid=(\d+) .*prev_state=(\S+) ==> next_comm=(.+?) next_pid=(\d+) next_prio=(\d+)"
)


def events(path):
    out = []
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if m:
                comm, tid, cpu, t, name, rest = m.groups()
                out.append((float(t), tid, int(cpu), name, rest))
    out.sort(key=lambda e: e[0])
    return out


def bursts(ev, btid, ltid):
    found, cur = [], None
    b_out = None  # broker preempted (switched out runnable) at
    l_wait = None  # loadgen runnable without its core since
    b_wait = None  # broker woken (by the PUBLISH) and not yet running since
    b_waited = 0.0  # broker's wait for its core since the previous burst
    for t, tid, cpu, name, rest in ev:
        if name == "syscalls:sys_enter_io_uring_enter" and tid == btid:
            n = int(re.search(r"to_submit: (0x[0-9a-f]+)", rest).group(1), 16)
            if n >= MIN_SENDS:
                cur = dict(start=t, n=n, end=None, preempt=0.0, first=None, last=None,
                           copies=0, runs=0, wakes=0, runq=0.0, bwait=b_waited)
                b_waited = 0.0
                found.append(cur)
        elif name == "syscalls:sys_exit_io_uring_enter" and tid == btid:
            if cur and cur["end"] is None:
                cur["end"] = t
        elif name == "sched:sched_switch":
            m = SWITCH.search(rest)
            if not m:
                continue
            prev, state, nxt = m.group(2), m.group(3), m.group(5)
            if prev == btid and state.startswith("R"):
                b_out = t
            if nxt == btid and b_out is not None:
                if cur and cur["end"] is None:
                    cur["preempt"] += t - b_out
                else:
                    b_waited += t - b_out
                b_out = None
            if nxt == btid and b_wait is not None:
                b_waited += t - b_wait
                b_wait = None
            if prev == ltid and state.startswith("R"):
                l_wait = t
            if nxt == ltid and l_wait is not None:
                if cur:
                    cur["runq"] += t - l_wait
                l_wait = None
        elif name == "sched:sched_wakeup" and re.search(r"\bpid=%s\b" % btid, rest):
            b_wait = t
        elif name == "sched:sched_wakeup" and re.search(r"\bpid=%s\b" % ltid, rest):
            l_wait = t
            if cur:
                cur["wakes"] += 1
        elif name in ("io_uring:io_uring_task_work_run", "io_uring:io_uring_local_work_run"):
            if tid != ltid or not cur or cur["copies"] >= cur["n"]:
                continue
            m = re.search(r"count (\d+)", rest)
            if not m:
                continue
            if cur["first"] is None:
                cur["first"] = t
            cur["last"] = t
            cur["copies"] += int(m.group(1))
            cur["runs"] += 1
    return [b for b in found if b["end"] is not None and b["first"] is not None]


def share(ev, me, mycpu):
    """ms each other thread held MYCPU while thread ME was runnable but not running."""
    held = collections.Counter()
    last = last_name = None
    runnable = False
    for t, tid, cpu, name, rest in ev:
        if name == "sched:sched_wakeup" and re.search(r"\bpid=%s\b" % me, rest):
            runnable = True
            continue
        if name != "sched:sched_switch" or cpu != mycpu:
            continue
        m = SWITCH.search(rest)
        if not m:
            continue
        if last is not None and runnable and last_name is not None:
            held[last_name] += t - last
        if m.group(2) == me:
            runnable = m.group(3).startswith("R")
        if m.group(5) == me:
            runnable = False
        last = t
        last_name = None if m.group(5) == me else f"{m.group(4)} (prio {m.group(6)})"
    return held


def main():
    path, btid, ltid = sys.argv[1:4]
    bcpu = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    lcpu = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    ev = events(path)
    bs = bursts(ev, btid, ltid)
    if not bs:
        sys.exit(f"no burst of >= {MIN_SENDS} sends by thread {btid} in {path}")
    rows = []
    for i, b in enumerate(bs):
        idle = (b["start"] - bs[i - 1]["end"]) * 1e3 if i else float("nan")
        rows.append(dict(
            sends=b["n"], bwait=b["bwait"] * 1e3, burst=(b["end"] - b["start"]) * 1e3, preempt=b["preempt"] * 1e3,
            first=(b["first"] - b["start"]) * 1e3, last=(b["last"] - b["end"]) * 1e3,
            runs=b["runs"], wakes=b["wakes"], runq=b["runq"] * 1e3, idle=idle))
    print(f"{len(rows)} bursts of >= {MIN_SENDS} sends (ms; 'last' is after the burst's end)")
    print("sends  broker_wait  burst  preempted  lg_first  lg_last  lg_runs  lg_wakeups  lg_runq  idle_before")
    for r in rows:
        print("%5d %12.2f %6.2f %9.2f %9.2f %8.2f %8d %11d %8.2f %12.2f" % (
            r["sends"], r["bwait"], r["burst"], r["preempt"], r["first"], r["last"], r["runs"], r["wakes"],
            r["runq"], r["idle"]))

    def q(key, p):
        xs = sorted(r[key] for r in rows)
        return xs[min(len(xs) - 1, int(p * len(xs)))]

    print("summary over %d bursts: mean / p50 / p90 / max" % len(rows))
    for key, label in [("bwait", "broker woken, waiting for its core before the burst (ms)"),
                       ("burst", "broker submit of one fan-out (ms)"),
                       ("preempt", "broker preempted inside it (ms)"),
                       ("first", "loadgen's first receive after the burst start (ms)"),
                       ("last", "loadgen's last receive after the burst end (ms)"),
                       ("runq", "loadgen runnable without its core (ms)"),
                       ("wakes", "loadgen wake-ups per burst"),
                       ("runs", "loadgen task-work runs per burst")]:
        xs = [r[key] for r in rows]
        print(f"  {label}: {statistics.mean(xs):.2f} / {q(key, .5):.2f} / {q(key, .9):.2f} / {max(xs):.2f}")
    per_copy = statistics.mean(r["burst"] * 1e3 / r["sends"] for r in rows)
    print(f"  broker submit per copy: {per_copy:.2f} us (traced)")
    back_to_back = sum(1 for r in rows[1:] if r["idle"] < 1.0)
    print(f"  bursts starting < 1 ms after the previous one ended: {back_to_back} of {len(rows) - 1}")
    for who, tid, cpu in [("loadgen", ltid, lcpu), ("broker", btid, bcpu)]:
        held = share(ev, tid, cpu)
        total = sum(held.values()) * 1e3
        top = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in held.most_common(5)) or "-"
        print(f"cpu{cpu} while {who} ({tid}) was runnable: others ran {total:.1f} ms: {top}")


if __name__ == "__main__":
    main()
