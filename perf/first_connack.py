#!/usr/bin/env python3
"""Time from T0 (a unix time, when the broker was started) to the first CONNACK a
broker sends a 3.1.1 client with clean session 0: `first_connack.py HOST PORT
CLIENT_ID TIMEOUT_S T0`. Retries the connection until the broker listens. Prints the
seconds and whether the session was present; exits 1 on timeout or a refusal."""
import socket
import sys
import time

host, port, cid, timeout, t0 = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), float(sys.argv[4]), float(sys.argv[5])
var = b"\x00\x04MQTT\x04\x00\x00\x3c"  # 3.1.1, clean session 0, keepalive 60
body = var + len(cid).to_bytes(2, "big") + cid
connect = bytes([0x10, len(body)]) + body
deadline = time.time() + timeout
while time.time() < deadline:
    try:
        s = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        time.sleep(0.01)
        continue
    s.sendall(connect)
    head = b""
    while len(head) < 4:
        chunk = s.recv(4 - len(head))
        if not chunk:
            break
        head += chunk
    t = time.time() - t0
    if len(head) == 4 and head[0] == 0x20:
        s.sendall(b"\xe0\x00")  # DISCONNECT: the session stays
        s.close()
        if head[3] != 0:
            print(f"CONNACK refused with return code {head[3]}", file=sys.stderr)
            sys.exit(1)
        print(f"first CONNACK after {t:.2f} s (session present {head[2] & 1})")
        sys.exit(0)
    s.close()
    time.sleep(0.01)
print("no CONNACK before the timeout", file=sys.stderr)
sys.exit(1)
