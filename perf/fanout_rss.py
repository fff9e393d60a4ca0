#!/usr/bin/env python3
"""The slow-subscriber fan-out case of issue #24, against one broker on 127.0.0.1.

SUBS subscribers (MQTT 3.1.1, SO_RCVBUF set before connecting, as constrained
devices have) subscribe TOPIC at QoS 1 and then stop reading; one publisher sends
one PAYLOAD-byte QoS 1 message and waits for its PUBACK. The broker's VmRSS is
read before the publish and again once it has settled; the result is one JSON
line on stdout. Bounded: every socket has a timeout, the script a deadline.

    fanout_rss.py --port P --pid BROKER_PID [--subs 1000] [--payload 307200]
"""
import argparse
import json
import socket
import struct
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


def remaining_length(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first, body):
    return bytes([first]) + remaining_length(len(body)) + body


def utf8(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def connect_packet(client_id):
    body = utf8("MQTT") + bytes([4, 0x02]) + struct.pack(">H", 600) + utf8(client_id)
    return packet(0x10, body)


def read_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise SystemExit("broker closed a connection during set-up")
        buf += chunk
    return bytes(buf)


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


def open_client(port, client_id, rcvbuf):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(connect_packet(client_id))
    first, body = read_packet(s)
    if first != 0x20 or body[1] != 0:
        raise SystemExit(f"{client_id}: CONNACK {first:#x} {body.hex()}")
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--subs", type=int, default=1000)
    ap.add_argument("--payload", type=int, default=300 * 1024)
    ap.add_argument("--rcvbuf", type=int, default=4096)
    ap.add_argument("--topic", default="fw/chunk")
    ap.add_argument("--settle", type=float, default=3.0)
    a = ap.parse_args()
    if not (1 <= a.subs <= 20000 and 0 < a.payload <= 64 << 20):
        raise SystemExit(f"--subs {a.subs} / --payload {a.payload}: out of range")
    deadline = time.monotonic() + 300
    subs = []
    for i in range(a.subs):
        s = open_client(a.port, f"fw-dev-{i}", a.rcvbuf)
        sub = struct.pack(">H", 1) + utf8(a.topic) + bytes([1])
        s.sendall(packet(0x82, sub))
        first, body = read_packet(s)
        if first != 0x90 or body[-1] != 1:
            raise SystemExit(f"subscriber {i}: SUBACK {first:#x} {body.hex()}")
        subs.append(s)
        if time.monotonic() > deadline:
            raise SystemExit("set-up took longer than 300 s")
    time.sleep(a.settle)
    before = rss_kib(a.pid)
    pub = open_client(a.port, "fw-publisher", 0)
    payload = bytes((i * 31 + 7) % 251 for i in range(a.payload))
    body = utf8(a.topic) + struct.pack(">H", 1) + payload
    pub.sendall(packet(0x32, body))
    first, ack = read_packet(pub)
    if first != 0x40:
        raise SystemExit(f"publisher: expected PUBACK, got {first:#x} {ack.hex()}")
    time.sleep(a.settle)
    after = rss_kib(a.pid)
    # Each subscriber got the packet's first bytes in its small window: the copy
    # was delivered (and is pending in the broker and the kernel), not dropped.
    delivered = 0
    for s in subs:
        s.settimeout(2)
        try:
            first = s.recv(1)
            delivered += first == b"\x32"
        except OSError:
            pass
    print(json.dumps({
        "subscribers": a.subs, "payload_bytes": a.payload, "rcvbuf": a.rcvbuf,
        "rss_before_kib": before, "rss_after_kib": after,
        "rss_growth_kib": after - before, "delivering": delivered,
    }))
    for s in subs:
        s.close()
    pub.close()


if __name__ == "__main__":
    sys.exit(main())
