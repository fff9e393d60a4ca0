#!/usr/bin/env python3
"""Broker RSS per subscription over real sockets, ringmq beside Mosquitto (#21), with
the filter mix of perf/src/wildcard.rs (10 per client: exact, `+`, `#`, shared).

    python3 perf/wildcard_rss.py RINGMQ [CLIENTS]        # default 8,000 clients
    SHARDS=2 python3 perf/wildcard_rss.py RINGMQ 8000    # ringmq with 2 loops

Mosquitto needs a descriptor per connection and this script one per socket, and the
hard limit here is 20,000, so the set is 8,000 clients x 10 = 80,000 subscriptions
(the in-process tool measures ringmq at 100k clients / 1M). For each broker: RSS
(/proc/PID/status) idle, after CLIENTS plain connections, then after CLIENTS more that
each subscribe the 10 filters (SUBACK awaited); per subscription = (the second growth -
the first) / subscriptions. 127.0.0.1 only; brokers are stopped by PID.
"""
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

FLEETS, REGIONS = 1000, 10_000


def filters(i):
    return [f"dev/{i}/cmd", f"dev/{i}/ota", f"dev/{i}/config/+", f"dev/{i}/#",
            f"+/{i}/telemetry", f"+/+/{i}/state", f"fleet/{i % FLEETS}/+/status",
            f"fleet/{i % FLEETS}/#", f"region/{i % REGIONS}/+/+/alarm",
            f"alerts/{i % REGIONS}/critical"]


def s16(b):
    return struct.pack(">H", len(b)) + b


def remaining(n):
    out = b""
    while True:
        d, n = n % 128, n // 128
        out += bytes([d | (0x80 if n else 0)])
        if not n:
            return out


def packet(first, body):
    return bytes([first]) + remaining(len(body)) + body


def connect(cid):
    body = s16(b"MQTT") + bytes([4, 0x02]) + struct.pack(">H", 0) + s16(cid.encode())
    return packet(0x10, body)


def subscribe(i):
    body = struct.pack(">H", 1) + b"".join(s16(f.encode()) + b"\x00" for f in filters(i))
    return packet(0x82, body)


def read_exact(s, n):
    got = b""
    while len(got) < n:
        chunk = s.recv(n - len(got))
        if not chunk:
            raise RuntimeError("broker closed the connection")
        got += chunk
    return got


def read_packet(s):
    first = read_exact(s, 1)[0]
    mult, n = 1, 0
    while True:
        b = read_exact(s, 1)[0]
        n += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    return first, read_exact(s, n)


def open_clients(port, prefix, count, subscribe_them):
    socks = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.sendall(connect(f"{prefix}-{i}"))
        first, body = read_packet(s)
        if first != 0x20 or body[1] != 0:
            raise RuntimeError(f"client {i}: CONNACK {first:#x} {body.hex()}")
        if subscribe_them:
            s.sendall(subscribe(i))
            first, body = read_packet(s)
            if first != 0x90 or any(c & 0x80 for c in body[2:]):
                raise RuntimeError(f"client {i}: SUBACK {first:#x} {body.hex()}")
        socks.append(s)
    return socks


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(port, proc):
    for _ in range(100):
        if proc.poll() is not None:
            raise RuntimeError("broker exited during start-up")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def measure(name, argv, port, clients):
    proc = subprocess.Popen(["taskset", "-c", "0"] + argv, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, proc)
        time.sleep(1)
        r0 = rss_kb(proc.pid)
        plain = open_clients(port, "plain", clients, False)
        time.sleep(1)
        r1 = rss_kb(proc.pid)
        subbed = open_clients(port, "wild", clients, True)
        time.sleep(1)
        r2 = rss_kb(proc.pid)
        subs = clients * 10
        per_conn = (r1 - r0) * 1024 / clients
        per_sub = ((r2 - r1) - (r1 - r0)) * 1024 / subs
        print(f"{name}: clients={clients} subscriptions={subs} rss_idle_kb={r0} "
              f"rss_plain_kb={r1} rss_subscribed_kb={r2} per_connection_b={per_conn:.0f} "
              f"per_subscription_b={per_sub:.1f}", flush=True)
        for s in plain + subbed:
            s.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    ringmq = sys.argv[1]
    clients = int(sys.argv[2]) if len(sys.argv) == 3 else 8000
    shards = os.environ.get("SHARDS", "1")
    print(f"load average: {open('/proc/loadavg').read().split()[:3]}", flush=True)
    port = free_port()
    measure(f"ringmq --shards {shards}",
            [ringmq, "--shards", shards, "--listen", f"127.0.0.1:{port}",
             "--http-listen", "none"], port, clients)
    if not shutil.which("mosquitto"):
        sys.exit("mosquitto is not installed (tests/install-deps.sh installs it)")
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as conf:
        conf.write(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n"
                   "persistence false\n" + ("user root\n" if os.getuid() == 0 else ""))
    try:
        measure("mosquitto", ["mosquitto", "-c", conf.name], port, clients)
    finally:
        os.unlink(conf.name)


main()
