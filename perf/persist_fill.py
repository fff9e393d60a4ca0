#!/usr/bin/env python3
"""Fills a broker with the recovery data set of issue #13 over MQTT 3.1.1, the same
way for any broker (so ringmq's log and Mosquitto's mosquitto.db hold the same
state): `persist_fill.py HOST PORT SESSIONS PER_SESSION`.

SESSIONS persistent sessions (client ids device-000000.., clean session 0) each
subscribe at QoS 1 to their own topic devices/NNNNNN/cmd and disconnect; then one
publisher sends PER_SESSION QoS 1 64 B messages to each of those topics, pipelined
(WINDOW in flight), waiting for every PUBACK, and disconnects. Every message ends
queued for an offline session. Prints what it did and how long it took."""
import socket
import sys
import time

host, port = sys.argv[1], int(sys.argv[2])
sessions, per = int(sys.argv[3]), int(sys.argv[4])
WINDOW = 256


def rl(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s16(b):
    return len(b).to_bytes(2, "big") + b


def connect_packet(cid, clean):
    var = b"\x00\x04MQTT\x04" + (b"\x02" if clean else b"\x00") + b"\x00\x3c"
    body = var + s16(cid)
    return b"\x10" + rl(len(body)) + body


def read_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        buf += chunk
    return buf


def read_packet(s):
    head = read_exact(s, 1)
    mult, n = 1, 0
    while True:
        b = read_exact(s, 1)[0]
        n += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            break
    return head[0], read_exact(s, n)


def open_session(cid, clean):
    s = socket.create_connection((host, port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(connect_packet(cid, clean))
    kind, body = read_packet(s)
    if kind != 0x20 or body[1] != 0:
        raise SystemExit(f"CONNACK for {cid!r}: {kind:#x} {body!r}")
    return s


def topic(i):
    return f"devices/{i:06d}/cmd".encode()


t0 = time.time()
for i in range(sessions):
    s = open_session(f"device-{i:06d}".encode(), False)
    body = (1).to_bytes(2, "big") + s16(topic(i)) + b"\x01"
    s.sendall(b"\x82" + rl(len(body)) + body)
    kind, sub = read_packet(s)
    if kind != 0x90 or sub[-1] != 1:
        raise SystemExit(f"SUBACK for device-{i:06d}: {kind:#x} {sub!r}")
    s.sendall(b"\xe0\x00")
    s.close()
t1 = time.time()

payload = b"x" * 64
pub = open_session(b"filler-publisher", True)
outstanding = 0
sent = 0
acked = 0
next_id = 1
total = sessions * per
pending = bytearray()
while acked < total:
    while sent < total and outstanding < WINDOW:
        i = sent % sessions
        body = s16(topic(i)) + next_id.to_bytes(2, "big") + payload
        pending += b"\x32" + rl(len(body)) + body
        next_id = next_id % 65535 + 1
        sent += 1
        outstanding += 1
    if pending:
        pub.sendall(pending)
        pending.clear()
    kind, _ = read_packet(pub)
    if kind == 0x40:
        acked += 1
        outstanding -= 1
    else:
        raise SystemExit(f"publisher got {kind:#x}")
pub.sendall(b"\xe0\x00")
pub.close()
t2 = time.time()
print(f"{sessions} sessions subscribed in {t1 - t0:.1f} s; {total} QoS 1 messages queued in {t2 - t1:.1f} s")
