#!/usr/bin/env python3
"""TLS 1.3 connections with an MQTT CONNECT/CONNACK each, one after another for
SECONDS, to measure a broker's CPU per connection (perf/tls_handshakes.sh reads the
broker's CPU around it). `full`: a new session every time. `resume`: every
connection offers the ticket the previous one got (a device that reconnects), and
the count of connections the server actually resumed is printed, so a broker that
sends no tickets shows 0 resumed rather than a wrong figure.

    tls_connects.py HOST PORT CAFILE full|resume SECONDS
prints: connections=N resumed=M
"""
import socket
import ssl
import sys
import time

CONNECT = b"\x10\x12\x00\x04MQTT\x04\x02\x00\x3c\x00\x06resume"


def main():
    host, port, cafile, mode, seconds = sys.argv[1:6]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cafile)
    ctx.check_hostname = False
    end = time.monotonic() + float(seconds)
    session = None
    n = resumed = 0
    while time.monotonic() < end:
        raw = socket.create_connection((host, int(port)), timeout=10)
        # Without it the CONNECT waits behind the unacknowledged Finished (Nagle)
        # until the server's delayed ACK when the server sends nothing after the
        # handshake (no tickets): ~40 ms per connection, which is not what this
        # measures.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = ctx.wrap_socket(raw, server_hostname="localhost",
                            session=session if mode == "resume" else None)
        s.sendall(CONNECT)
        got = b""
        while len(got) < 4:
            chunk = s.recv(4 - len(got))
            if not chunk:
                sys.exit(f"closed before CONNACK after {n} connections")
            got += chunk
        if got != b"\x20\x02\x00\x00":
            sys.exit(f"unexpected CONNACK {got!r}")
        n += 1
        resumed += s.session_reused
        # The ticket came before the CONNACK, so the session holds it now.
        session = s.session
        s.sendall(b"\xe0\x00")  # DISCONNECT: no will, no takeover next time
        s.close()
    print(f"connections={n} resumed={resumed}")


if __name__ == "__main__":
    main()
