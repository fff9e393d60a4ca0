#!/usr/bin/env python3
"""loadgen's CPU per message beside the broker's, for issue #22 ("loadgen must never
be the bottleneck"). CPU time, not throughput: a loaded machine moves it far less.

    python3 perf/loadgen_cpu.py RINGMQ LOADGEN [SCENARIO ...]
    SCENARIO: fanin_qos0 | fanin_qos1 | connect_100k   (default: all three)
    DURATION=8s BROKER_CORE=0 LOADGEN_CORE=1 LOADGEN_ARGS="--window 64" BROKER_ARGS=...
    PRIO=1: run both in their own autogroup at nice -20 (see below)
    RFS=1: steer loopback receive processing to the receiving socket's core (below)
    SIDES=1: connect storms only: perf record -a over loadgen's run, then
             perf/storm_sides.py's account of whose sockets each core's receive work served

Starts `RINGMQ --shards 1` pinned to BROKER_CORE on a free 127.0.0.1 port, runs
LOADGEN pinned to LOADGEN_CORE with --json, and prints one line per scenario:
loadgen's own figures (received msg/s, its measured-phase CPU per message with
busy-poll spins excluded, messages per send, loadgen_saturated) and, over the whole
loadgen run, loadgen's CPU (rusage of the child, spins included) and the broker's
(/proc/PID/stat utime+stime delta, same wall interval). Every process it starts is
stopped by PID. The load average is printed with each line: figures from a busy
machine are not comparable with a quiet one.

Each line also gives, over the measured phase, how long each process waited for a CPU
(runnable, not running: /proc/PID/schedstat; loadgen prints its own) and the broker's
share of its core and peak RSS (VmHWM). Other builds on the cores make both wait: on the shared development
machine (load ~14) fan-in reached 0.6-1.0M msg/s with loadgen at ~10% and the broker at
~20% of their cores, each waiting 20-60% of the time. `nice` alone does not help: with
kernel.sched_autogroup_enabled each session's processes share one weight. PRIO=1
starts both in a new session (a new autogroup) at autogroup nice -20 and nice -20, so
for the run's seconds they take their cores from the other sessions' builds.

RFS=1 (opt-in, root only; connect storms are what it is for): on loopback the receive
side of every segment runs in the sender's softirq, so in a connect storm the SYN, the
child socket and the CONNECT's receipt on the broker's sockets are billed to loadgen.
On a real network that work runs on the broker's host. RFS=1 sets Receive Flow
Steering on `lo` for the run and restores the previous values afterwards, printing
both: net.core.rps_sock_flow_entries and lo's rx-0 rps_flow_cnt to RFS_FLOWS (default
262144, above the storm's 100k flows each way), and rx-0 rps_cpus to BROKER_CORE.
A segment to a socket whose process has read or written it (`sock_rps_record_flow`)
goes to the core that process last ran on; every other segment (no record yet) goes
to rps_cpus. That puts the SYN, the ACK that makes the child, the CONNECT and the
DISCONNECT on the broker's core, the CONNACK and the FIN on loadgen's, and one
mis-billed segment on the broker's core: the SYN-ACK to loadgen's connecting socket,
which has no record yet (its hash is the broker's random txhash). perf/README.md
("Connect storm CPU with RFS") measures that share. The settings are machine-wide: other
processes' loopback traffic is steered too while the run lasts. This kernel has no
CONFIG_IRQ_TIME_ACCOUNTING, so softirq time is billed by the tick to whichever task
is current on the core: the broker's when its thread ran, otherwise idle, ksoftirqd or
another process. Each line therefore also prints, per core, the softirq time of the
whole core (/proc/stat) and of its ksoftirqd thread over the run.
"""
import json
import os
import tempfile
import signal
import socket
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")
BROKER_CORE = os.environ.get("BROKER_CORE", "0")
LOADGEN_CORE = os.environ.get("LOADGEN_CORE", "1")
DURATION = os.environ.get("DURATION", "8s")
EXTRA = os.environ.get("LOADGEN_ARGS", "").split()
# E.g. "--max-queued-messages 20000 --max-outbound-bytes 8388608" for windows whose
# messages in flight exceed the broker's default queue limits.
BROKER_ARGS = os.environ.get("BROKER_ARGS", "").split()

SCENARIOS = {
    "fanin_qos0": ["fanin", "--publishers", "100", "--subscribers", "1", "--qos", "0",
                   "--size", "64", "--duration", DURATION],
    "fanin_qos1": ["fanin", "--publishers", "100", "--subscribers", "1", "--qos", "1",
                   "--size", "64", "--duration", DURATION],
    "connect_100k": ["connect", "--clients", "100000", "--hold", "1s"],
}


PRIO = os.environ.get("PRIO", "") == "1"
RFS = os.environ.get("RFS", "") == "1"
SIDES = os.environ.get("SIDES", "") == "1"
RFS_FLOWS = int(os.environ.get("RFS_FLOWS", "262144"))
SOCK_FLOW_ENTRIES = "/proc/sys/net/core/rps_sock_flow_entries"
LO_RX = "/sys/class/net/lo/queues/rx-0"


class LoopbackRfs:
    """RFS=1: Receive Flow Steering on lo for the run, the old values put back on exit
    (also on an exception or Ctrl-C, since it is a context manager)."""

    def __init__(self, broker_core):
        if os.geteuid() != 0:
            sys.exit("RFS=1 writes /proc/sys/net/core and /sys/class/net/lo: run as root")
        if not broker_core.isdigit():
            sys.exit(f"RFS=1 needs BROKER_CORE to be one core number, got {broker_core!r}")
        self.values = {
            SOCK_FLOW_ENTRIES: str(RFS_FLOWS),
            f"{LO_RX}/rps_flow_cnt": str(RFS_FLOWS),
            f"{LO_RX}/rps_cpus": format(1 << int(broker_core), "x"),
        }
        self.saved = {}

    def __enter__(self):
        for path, value in self.values.items():
            with open(path) as f:
                self.saved[path] = f.read().strip()
            with open(path, "w") as f:
                f.write(value)
        print("RFS=1 set " + ", ".join(
            f"{path}={_read(path)} (was {self.saved[path]})" for path in self.values),
            flush=True)
        return self

    def __exit__(self, *exc):
        # Reverse order: rps_cpus first, so nothing is steered by a half-restored table.
        for path in reversed(list(self.saved)):
            with open(path, "w") as f:
                f.write(self.saved[path])
        print("RFS=1 restored " + ", ".join(f"{path}={_read(path)}" for path in self.saved),
              flush=True)
        return False


def _read(path):
    with open(path) as f:
        return f.read().strip()


def core_softirq_s(core):
    """Softirq time of one core (/proc/stat, in USER_HZ ticks), whoever was current."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{core} "):
                return int(line.split()[7]) / TICK
    return 0.0


def ksoftirqd_s(core):
    """CPU time of the core's ksoftirqd thread: softirq work it took over."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == f"ksoftirqd/{core}":
                    return cpu_s(int(pid))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return 0.0


def softirq_snapshot():
    cores = [c for c in (BROKER_CORE, LOADGEN_CORE) if c.isdigit()]
    return {c: (core_softirq_s(c), ksoftirqd_s(c)) for c in cores}


def softirq_line(before, after):
    """Where the softirq time went over the run, per pinned core."""
    parts = []
    for core, (s0, k0) in before.items():
        s1, k1 = after[core]
        who = "broker" if core == BROKER_CORE else "loadgen"
        parts.append(f"core {core} ({who}) softirq {s1 - s0:.2f} s, ksoftirqd {k1 - k0:.2f} s")
    return "; ".join(parts)


def raise_priority():
    """In the child before exec (PRIO=1): a new session is a new autogroup; give it
    and the process the highest weight. Needs root (CAP_SYS_NICE)."""
    os.setsid()
    with open("/proc/self/autogroup", "w") as f:
        f.write("-20")
    os.nice(-20)


def runq_wait_s(pid):
    """Seconds the process's threads waited on a run queue (schedstat's 2nd field)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[1])
        except FileNotFoundError:
            pass
    return total / 1e9


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def peak_rss_mib(pid):
    """The broker's peak resident set (VmHWM): what a window or queue setting costs
    in memory while the run fills it."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wait_listening(port, broker):
    for _ in range(100):
        if broker.poll() is not None:
            sys.exit(f"broker exited during start-up (status {broker.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listening on 127.0.0.1:{port} after 10 s")


def run(ringmq, loadgen, name):
    port = free_port()
    recorder = None
    lg = None
    broker = subprocess.Popen(
        ["taskset", "-c", BROKER_CORE, ringmq, "--shards", "1", "--listen",
         f"127.0.0.1:{port}", "--http-listen", "none"] + BROKER_ARGS,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=raise_priority if PRIO else None)
    try:
        wait_listening(port, broker)
        time.sleep(0.3)
        b0 = cpu_s(broker.pid)
        w0 = runq_wait_s(broker.pid)
        sirq0 = softirq_snapshot()
        t0 = time.monotonic()
        # Connect storms: loadgen also reads the broker's CPU over the storm window
        # (first attempt to last CONNACK), beside its own over the same window.
        window = ["--broker-pid", str(broker.pid)] if name.startswith("connect") else []
        if SIDES and name.startswith("connect"):
            perf_data = tempfile.NamedTemporaryFile(prefix="storm-sides-", suffix=".data",
                                                    delete=False).name
            try:
                recorder = subprocess.Popen(
                    ["perf", "record", "-a", "-g", "-F", "999", "-C",
                     f"{BROKER_CORE},{LOADGEN_CORE}", "-o", perf_data],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            except FileNotFoundError:
                sys.exit("SIDES=1 needs perf (apt-get install linux-perf)")
            time.sleep(0.5)
            if recorder.poll() is not None:
                sys.exit(f"SIDES=1: perf record exited at once (status {recorder.returncode})")
        lg = subprocess.Popen(
            ["taskset", "-c", LOADGEN_CORE, loadgen] + SCENARIOS[name] + EXTRA
            + ["--port", str(port), "--json"] + window,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            preexec_fn=raise_priority if PRIO else None)
        out = lg.stdout.read()
        _, status, ru = os.wait4(lg.pid, 0)
        wall = time.monotonic() - t0
        if recorder:
            recorder.send_signal(signal.SIGINT)
            recorder.wait(60)
        b1 = cpu_s(broker.pid)
        w1 = runq_wait_s(broker.pid)
        sirq1 = softirq_snapshot()
        rss = peak_rss_mib(broker.pid)
    finally:
        # Reached early only on an error or SIGTERM (RFS=1): loadgen is stopped too.
        if lg and lg.poll() is None:
            lg.kill()
            lg.wait()
        if recorder and recorder.poll() is None:
            recorder.send_signal(signal.SIGINT)
            recorder.wait(60)
        broker.send_signal(signal.SIGINT)
        try:
            broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()
    lines = out.decode().strip().splitlines()
    if not lines:
        sys.exit(f"{name}: loadgen printed no JSON (status {status})")
    r = json.loads(lines[-1])
    lg_cpu = ru.ru_utime + ru.ru_stime
    broker_cpu = b1 - b0
    broker_wait_pct = (w1 - w0) * 100 / wall
    lg_wait = r.get("runq_wait_pct")
    lg_wait = "n/a" if lg_wait is None else f"{lg_wait:.0f}%"
    waits = (f"waited for a CPU: loadgen {lg_wait}, broker {broker_wait_pct:.0f}%; "
             f"broker {broker_cpu * 100 / wall:.0f}% of its core, peak RSS {rss:.1f} MiB; ")
    load = os.getloadavg()[0]
    if name.startswith("connect"):
        storm_cpu = ""
        if r.get("broker_cpu_s") is not None:
            storm_cpu = (f"storm window: loadgen CPU {r['cpu_s']:.2f} s, broker CPU "
                         f"{r['broker_cpu_s']:.2f} s ({r['cpu_s'] / max(r['broker_cpu_s'], 1e-9):.2f}x); ")
        if r.get("broker_teardown_cpu_s") is not None:
            storm_cpu += (f"teardown {r['teardown_s']:.2f} s: loadgen CPU "
                          f"{r['teardown_cpu_s']:.2f} s, broker CPU "
                          f"{r['broker_teardown_cpu_s']:.2f} s; ")
        print(f"{name}: established {r['connections_established']}/"
              f"{r['connections_attempted']} storm {r['measured_s']:.2f} s "
              f"({r['connect_rate_per_s']:.0f}/s); {storm_cpu}whole run {wall:.1f} s: loadgen CPU "
              f"{lg_cpu:.2f} s, broker CPU {broker_cpu:.2f} s "
              f"({lg_cpu / max(broker_cpu, 1e-9):.2f}x), loadgen closed first "
              f"{r.get('closed_before_broker', 'n/a')}, unclean {r['unclean_closes']}; "
              f"{waits}{softirq_line(sirq0, sirq1)}; load {load:.1f}"
              f"{' (PRIO=1)' if PRIO else ''}{' (RFS=1)' if RFS else ''}")
        if recorder:
            sys.dont_write_bytecode = True  # no __pycache__ left in perf/
            import storm_sides
            print(storm_sides.report(perf_data, r["measured_s"], BROKER_CORE, LOADGEN_CORE,
                                     RFS, r["cpu_s"], r.get("broker_cpu_s")), flush=True)
            os.unlink(perf_data)
        return
    n = max(r["delivered"], 1)
    per_msg = r.get("cpu_us_per_msg")
    if per_msg is None and r["received_per_s"] > 0:
        # A loadgen from before the field: the same figure from its parts.
        per_msg = r["cpu_process_pct"] / 100 / r["received_per_s"] * 1e6
    print(f"{name}: {r['received_per_s'] / 1e6:.2f}M msg/s, lost {r['lost']}, "
          f"loadgen {per_msg or 0:.3f} us/msg measured "
          f"({r['cpu_process_pct']:.0f}% of a core, saturated {r['loadgen_saturated']}, "
          f"{r.get('msgs_per_send', 0):.1f} msgs/send); whole run: loadgen "
          f"{lg_cpu * 1e6 / n:.3f} us/msg, broker {broker_cpu * 1e6 / n:.3f} us/msg "
          f"({n} delivered, {wall:.1f} s); {waits}load {load:.1f}"
          f"{' (PRIO=1)' if PRIO else ''}{' (RFS=1)' if RFS else ''}")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    ringmq, loadgen = sys.argv[1], sys.argv[2]
    names = sys.argv[3:] or list(SCENARIOS)
    for name in names:
        if name not in SCENARIOS:
            sys.exit(f"unknown scenario {name!r}: one of {', '.join(SCENARIOS)}")
    if RFS:
        # A plain SIGTERM would end Python without unwinding: make it unwind, so the
        # context manager puts lo's settings back.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        with LoopbackRfs(BROKER_CORE):
            for name in names:
                run(ringmq, loadgen, name)
    else:
        for name in names:
            run(ringmq, loadgen, name)


if __name__ == "__main__":
    main()
