#!/usr/bin/env python3
"""Which side's sockets a connect storm's TCP receive work served, and on which core
(issue #22). Used by perf/loadgen_cpu.py with SIDES=1; also runs on its own over a
`perf record -a -g` file:

    python3 perf/storm_sides.py PERF_DATA STORM_S BROKER_CORE LOADGEN_CORE rfs|norfs

On loopback the receive half of a segment runs in softirq on whatever core sent it (or,
with RFS=1, on the core Receive Flow Steering picks) and is billed to whichever task
is current there (no CONFIG_IRQ_TIME_ACCOUNTING on this kernel). So process CPU alone cannot say whose work a core
did. This reads the kernel call chains of every sample on the two pinned cores over
the storm window (from the first sample of a loadgen worker thread, `loadgen-N`, for
STORM_S seconds) and sorts the TCP receive samples by the socket they served:

- broker: the SYN on the listener (`tcp_conn_request`), the ACK that makes the child
  socket (`tcp_check_req`, `tcp_v4_syn_recv_sock`, `tcp_child_process`);
- loadgen: the SYN-ACK on a connecting socket (`tcp_rcv_state_process` outside the
  above: in a storm window the only other states are teardown's, which come later);
- either: segments on established sockets (`tcp_rcv_established`: the CONNECT on the
  broker's, the CONNACK on loadgen's) and the rest of `tcp_v4_rcv`, which the stack
  cannot tell apart.

It prints per core: samples of each process and of others, and the receive samples per
side with the task that was current. Then two estimates of each side's work: the
processes' CPU (loadgen's `cpu_s`, the broker's `/proc` CPU over the storm) split by
the share of each process's samples that served the other side (`split_by_shares`),
and the same counted in samples alone, every receive sample moved to the side it
served ("either" by where it ran, see `per_side`) including those billed to idle,
ksoftirqd or other programs. Samples are at
999 Hz per core; /proc's CPU figures and perf's sample counts of the same process
differed by up to ~40% on this VM (the broker without RFS: 2,059 samples in a
window where /proc gave 3.43 s), so compare within one kind.
"""
import collections
import re
import subprocess
import sys

HZ = 999

BROKER_SIDE = {"tcp_conn_request", "tcp_check_req", "tcp_child_process", "tcp_v4_syn_recv_sock"}


def side(stack):
    """'broker', 'loadgen', 'either' or None (not TCP receive work) for one call chain."""
    frames = set(stack)
    in_rx = frames & {"net_rx_action", "process_backlog", "__release_sock"}
    if not in_rx or not frames & {"tcp_v4_rcv", "tcp_v4_do_rcv"}:
        return None
    if frames & BROKER_SIDE:
        return "broker"
    if "tcp_rcv_state_process" in frames:
        return "loadgen"
    return "either"


def task_of(comm):
    if comm.startswith("ringmq"):
        return "broker"
    if comm.startswith("loadgen"):
        return "loadgen"
    if comm.startswith("ksoftirqd"):
        return "ksoftirqd"
    if comm == "swapper":
        return "idle"
    return "other"


HEADER = re.compile(r"\s*(.+?)\s+\d+\s+\[(\d+)\]\s+([\d.]+):")


def samples(perf_data):
    """(task, cpu, time, [function per frame, innermost first]) for every sample."""
    try:
        run = subprocess.run(
            ["perf", "script", "-i", perf_data, "-F", "comm,tid,cpu,time,ip,sym"],
            capture_output=True, text=True)
    except FileNotFoundError:
        sys.exit("storm_sides: perf not found (apt-get install linux-perf)")
    if run.returncode != 0:
        sys.exit(f"storm_sides: perf script -i {perf_data} failed: {run.stderr.strip()[-300:]}")
    out = run.stdout
    for block in out.split("\n\n"):
        lines = block.strip().split("\n")
        m = HEADER.match(lines[0]) if lines and lines[0].strip() else None
        if not m:
            continue
        stack = [parts[1].split("+")[0] for parts in (line.split() for line in lines[1:])
                 if len(parts) > 1]
        yield m.group(1), int(m.group(2)), float(m.group(3)), stack


def tally(perf_data, storm_s, broker_core, loadgen_core):
    """Counts over the storm window: tasks[(core, task)] and rx[(core, side, task)]."""
    all_samples = list(samples(perf_data))
    starts = [t for comm, _, t, _ in all_samples if re.fullmatch(r"loadgen-\d+", comm)]
    if not starts:
        sys.exit(f"{perf_data}: no sample of a loadgen worker thread (loadgen-N)")
    t0 = min(starts)
    cores = {int(broker_core), int(loadgen_core)}
    tasks = collections.Counter()
    rx = collections.Counter()
    for comm, cpu, t, stack in all_samples:
        if cpu not in cores or not t0 <= t <= t0 + storm_s:
            continue
        task = task_of(comm)
        tasks[(cpu, task)] += 1
        s = side(stack)
        if s:
            rx[(cpu, s, task)] += 1
    return tasks, rx


def per_side(tasks, rx, broker_core, loadgen_core, rfs):
    """Samples of work each side's sockets and process did, wherever it was billed.

    Starts from each process's own samples, then moves every receive sample that
    served one side but ran while another task was current (the other process,
    ksoftirqd, idle, another program) to the side it served. 'either' samples go by
    where they ran: without RFS a loopback segment is received on its sender's core,
    so on a pinned pair they served the other core's side; with RFS=1 the established
    sockets' segments are steered to their reader's core, so they served that core's side.
    """
    core_side = {broker_core: "broker", loadgen_core: "loadgen"}
    other = {"broker": "loadgen", "loadgen": "broker"}
    own = {"broker": tasks[(broker_core, "broker")], "loadgen": tasks[(loadgen_core, "loadgen")]}
    for (core, served, task), n in rx.items():
        if served == "either":
            served = core_side[core] if rfs else other[core_side[core]]
        if task == served:
            continue
        own[served] += n
        if task in own:
            own[task] -= n
    return own


def split_by_shares(tasks, rx, broker_core, loadgen_core, rfs, loadgen_cpu_s, broker_cpu_s):
    """Each side's CPU in /proc units: each process's CPU split by the share of its own
    samples that served the other side's sockets ("either" as in `per_side`).

    Uses perf only for shares within one process, so a sampling bias between the two
    processes (perf saw 77-82% of the broker's /proc CPU without RFS, 90-96% of
    loadgen's) does not enter. Work billed to idle, ksoftirqd or other programs is
    left out.
    """
    broker_samples = max(tasks[(broker_core, "broker")], 1)
    loadgen_samples = max(tasks[(loadgen_core, "loadgen")], 1)
    broker_work_in_loadgen = rx[(loadgen_core, "broker", "loadgen")]
    loadgen_work_in_broker = rx[(broker_core, "loadgen", "broker")]
    if not rfs:
        # Without RFS a segment is received on its sender's core.
        broker_work_in_loadgen += rx[(loadgen_core, "either", "loadgen")]
        loadgen_work_in_broker += rx[(broker_core, "either", "broker")]
    to_broker = loadgen_cpu_s * broker_work_in_loadgen / loadgen_samples
    to_loadgen = broker_cpu_s * loadgen_work_in_broker / broker_samples
    return (loadgen_cpu_s - to_broker + to_loadgen, broker_cpu_s - to_loadgen + to_broker)


def report(perf_data, storm_s, broker_core, loadgen_core, rfs, loadgen_cpu_s=None,
           broker_cpu_s=None):
    broker_core, loadgen_core = int(broker_core), int(loadgen_core)
    tasks, rx = tally(perf_data, storm_s, broker_core, loadgen_core)
    lines = [f"sides over the storm window ({storm_s:.2f} s, perf -a at {HZ} Hz per core, "
             f"RFS {'on' if rfs else 'off'}):"]
    for core, who in ((broker_core, "broker"), (loadgen_core, "loadgen")):
        t = ", ".join(f"{task} {n}" for (c, task), n in sorted(tasks.items()) if c == core)
        r = ", ".join(f"{s} sockets {n} ({task} current)"
                      for (c, s, task), n in sorted(rx.items()) if c == core)
        lines.append(f"  core {core} ({who}'s) samples: {t}; TCP receive: {r or 'none'}")
    lg_on_broker = rx[(broker_core, "loadgen", "broker")] / HZ
    br_on_loadgen = rx[(loadgen_core, "broker", "loadgen")] / HZ
    lines.append(f"  certain cross-billing: loadgen sockets' work in the broker's process "
                 f"{lg_on_broker:.2f} s, broker sockets' work in loadgen's {br_on_loadgen:.2f} s")
    if loadgen_cpu_s is not None and broker_cpu_s:
        lg, br = split_by_shares(tasks, rx, broker_core, loadgen_core, rfs, loadgen_cpu_s,
                                 broker_cpu_s)
        lines.append(f"  process CPU split by each process's sample shares: loadgen "
                     f"{lg:.2f} s, broker {br:.2f} s ({lg / max(br, 1e-9):.2f}x)")
    own = per_side(tasks, rx, broker_core, loadgen_core, rfs)
    lines.append(f"  each side's work in samples (all receive work moved to the side it "
                 f"served): loadgen {own['loadgen'] / HZ:.2f} s, broker {own['broker'] / HZ:.2f} s "
                 f"({own['loadgen'] / max(own['broker'], 1):.2f}x)")
    return "\n".join(lines)


def main():
    if len(sys.argv) != 6 or sys.argv[5] not in ("rfs", "norfs"):
        sys.exit(__doc__)
    print(report(sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4],
                 sys.argv[5] == "rfs"))


if __name__ == "__main__":
    main()
