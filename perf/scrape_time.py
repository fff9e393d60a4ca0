#!/usr/bin/env python3
# How long a /metrics scrape takes on a broker holding N idle MQTT connections
# (issue #14: <= 50 ms at 100k). Opens N connections from this process (its
# RLIMIT_NOFILE bounds N), CONNECTs each, then times 20 scrapes from the client side.
#   ringmq --shards 2 --listen 127.0.0.1:18931 --http-listen 127.0.0.1:18932 --sys-interval-s 0 &
#   python3 perf/scrape_time.py 127.0.0.1 18931 http://127.0.0.1:18932 19500
import resource
import socket
import struct
import sys
import time
import urllib.request

resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
host, port, http, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])


def connect_pkt(cid):
    cid = cid.encode()
    vh = b"\x00\x04MQTT\x04\x02\x00\x3c"  # 3.1.1, clean session, keepalive 60
    pl = struct.pack(">H", len(cid)) + cid
    return b"\x10" + bytes([len(vh) + len(pl)]) + vh + pl


socks = []
for i in range(n):
    s = socket.create_connection((host, port))
    s.sendall(connect_pkt("m%d" % i))
    socks.append(s)
for s in socks:
    s.recv(4)  # CONNACK


def scrape():
    t = time.perf_counter()
    body = urllib.request.urlopen(http + "/metrics").read()
    return (time.perf_counter() - t) * 1000, body


scrape()
ms = sorted(scrape()[0] for _ in range(20))
_, body = scrape()
conn = [l for l in body.decode().splitlines() if l.startswith("ringmq_connections ")]
print(conn[0], "| scrape ms min/median/max:", round(ms[0], 2), round(ms[10], 2), round(ms[-1], 2))
