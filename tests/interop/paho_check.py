#!/usr/bin/env python3
"""Interop check of an MQTT broker with Eclipse Paho (Python).

Written for the paho-mqtt 1.6.x API (Debian bookworm's python3-paho-mqtt 1.6.1; the
2.x API differs: callback API versions, Client() arguments). Runs, for one protocol
version, pub/sub at QoS 0/1/2, a retained message, a will on an abrupt socket close
and a persistent-session resume. Prints one "ok <scenario>" line per scenario and
exits non-zero with a message on the first failure. Every wait is bounded.

usage: paho_check.py --host 127.0.0.1 --port 1883 --version 311|5 --prefix UNIQUE
                     [--ids s=ID,p=ID,rp=ID,rs=ID,ww=ID,wd=ID,ps=ID,pp=ID]
                     [--ws-path /mqtt [--cafile CA.pem]]

--ws-path runs every client over WebSocket (transport="websockets") at that path;
--cafile then adds TLS verified against that CA (wss).

--ids names the client id of each role (the test harness picks ids that land on chosen
broker shards); a role not named gets PREFIX-ROLE.
"""
import argparse
import sys
import threading
import time

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TIMEOUT_S = 10.0
# How long to keep listening after the expected messages arrived, to catch duplicates.
SETTLE_S = 0.7


class Fail(Exception):
    pass


def cid(args, role):
    return args.ids.get(role, "%s-%s" % (args.prefix, role))


def parse_ids(text):
    ids = {}
    for item in filter(None, text.split(",")):
        role, sep, client_id = item.partition("=")
        if not sep or not role or not client_id:
            raise argparse.ArgumentTypeError("bad --ids item %r (want role=client_id)" % item)
        ids[role] = client_id
    return ids


class Peer:
    """One paho client plus what its callbacks observed."""

    def __init__(self, args, client_id, clean=True, expiry=None, will=None, start_loop=True):
        self.cv = threading.Condition()
        self.messages = []
        self.subacks = {}
        self.connack = None  # (rc, session_present)
        v5 = args.version == "5"
        transport = "websockets" if args.ws_path else "tcp"
        if v5:
            self.c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5, transport=transport)
        else:
            self.c = mqtt.Client(client_id=client_id, clean_session=clean,
                                 protocol=mqtt.MQTTv311, transport=transport)
        if args.ws_path:
            self.c.ws_set_options(path=args.ws_path)
        if args.cafile:
            self.c.tls_set(ca_certs=args.cafile)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        if will is not None:
            topic, payload, qos = will
            self.c.will_set(topic, payload, qos=qos, retain=False)
        if v5:
            props = None
            if expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = expiry
            self.c.connect(args.host, args.port, 60, clean_start=clean, properties=props)
        else:
            self.c.connect(args.host, args.port, 60)
        if start_loop:
            self.c.loop_start()
            self.wait(lambda: self.connack is not None, "CONNACK")
            self.check_connected()

    def check_connected(self):
        rc, _ = self.connack
        if rc != 0:
            raise Fail("connection refused: rc=%s" % rc)

    # paho 1.6 passes (client, userdata, flags, rc[, properties]).
    def _on_connect(self, client, userdata, flags, rc, *rest):
        with self.cv:
            rc_value = rc.value if hasattr(rc, "value") else rc
            self.connack = (rc_value, bool(flags.get("session present", 0)))
            self.cv.notify_all()

    def _on_message(self, client, userdata, msg):
        with self.cv:
            self.messages.append((msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))
            self.cv.notify_all()

    # v3: (client, userdata, mid, granted_qos); v5: (client, userdata, mid, reason_codes, properties)
    def _on_subscribe(self, client, userdata, mid, granted, *rest):
        with self.cv:
            self.subacks[mid] = [g.value if hasattr(g, "value") else g for g in granted]
            self.cv.notify_all()

    def wait(self, pred, what):
        deadline = time.monotonic() + TIMEOUT_S
        with self.cv:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Fail("timed out waiting for %s (messages so far: %r)" % (what, self.messages))
                self.cv.wait(left)

    def subscribe(self, topic, qos):
        rc, mid = self.c.subscribe(topic, qos)
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise Fail("subscribe %s failed locally: %s" % (topic, rc))
        self.wait(lambda: mid in self.subacks, "SUBACK for " + topic)
        if self.subacks[mid] != [qos]:
            raise Fail("SUBACK for %s: %r, wanted [%d]" % (topic, self.subacks[mid], qos))

    def publish(self, topic, payload, qos, retain=False):
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        deadline = time.monotonic() + TIMEOUT_S
        while not info.is_published():
            if time.monotonic() > deadline:
                raise Fail("publish to %s (QoS %d) not completed" % (topic, qos))
            time.sleep(0.01)

    def wait_messages(self, n, what):
        self.wait(lambda: len(self.messages) >= n, what)
        return list(self.messages)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def scenario_pubsub(args):
    t = "%s/pubsub" % args.prefix
    sub = Peer(args, cid(args, "s"))
    pub = Peer(args, cid(args, "p"))
    sub.subscribe(t + "/#", 2)
    for q in (0, 1, 2):
        pub.publish("%s/%d" % (t, q), b"m%d" % q, q)
    sub.wait_messages(3, "3 messages")
    # Anything beyond the three (a duplicate, a stray) must show up now.
    time.sleep(SETTLE_S)
    with sub.cv:
        got = sorted(sub.messages)
    want = [("%s/%d" % (t, q), b"m%d" % q, q, False) for q in (0, 1, 2)]
    if got != want:
        raise Fail("pubsub: got %r want exactly %r" % (got, want))
    sub.close()
    pub.close()


def scenario_retained(args):
    t = "%s/retained" % args.prefix
    pub = Peer(args, cid(args, "rp"))
    pub.publish(t, b"kept", 1, retain=True)
    sub = Peer(args, cid(args, "rs"))
    sub.subscribe(t, 1)
    got = sub.wait_messages(1, "retained message")
    if got[0] != (t, b"kept", 1, True):
        raise Fail("retained: got %r" % (got,))
    pub.publish(t, b"", 1, retain=True)  # clear it
    sub.close()
    pub.close()


def scenario_will(args):
    wt = "%s/will" % args.prefix
    watcher = Peer(args, cid(args, "ww"))
    watcher.subscribe(wt, 1)
    # Driven by hand (no loop thread) so nothing reconnects after the abrupt close.
    dying = Peer(args, cid(args, "wd"), will=(wt, b"gone", 1), start_loop=False)
    deadline = time.monotonic() + TIMEOUT_S
    while dying.connack is None:
        if time.monotonic() > deadline:
            raise Fail("will client: no CONNACK")
        dying.c.loop(0.05)
    dying.check_connected()
    dying.c.socket().close()  # no DISCONNECT: the will must fire
    got = watcher.wait_messages(1, "will message")
    if got[0][:3] != (wt, b"gone", 1):
        raise Fail("will: got %r" % (got,))
    watcher.close()


def scenario_session(args):
    t = "%s/session" % args.prefix
    sid = cid(args, "ps")
    sub = Peer(args, sid, clean=False, expiry=60)
    sub.subscribe(t, 1)
    sub.close()
    pub = Peer(args, cid(args, "pp"))
    pub.publish(t, b"offline", 1)
    sub = Peer(args, sid, clean=False, expiry=60)
    if not sub.connack[1]:
        raise Fail("session: session present was 0 on resume")
    got = sub.wait_messages(1, "message queued while offline")
    if got[0][:3] != (t, b"offline", 1):
        raise Fail("session: got %r" % (got,))
    sub.close()
    pub.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--version", choices=["311", "5"], required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--ids", default="", type=parse_ids)
    ap.add_argument("--ws-path", default=None)
    ap.add_argument("--cafile", default=None)
    args = ap.parse_args()
    print("paho-mqtt %s, MQTT %s" % (getattr(paho.mqtt, "__version__", "?"), args.version))
    for name, fn in [("pubsub", scenario_pubsub), ("retained", scenario_retained),
                     ("will", scenario_will), ("session", scenario_session)]:
        try:
            fn(args)
        except Fail as e:
            print("FAIL %s: %s" % (name, e))
            sys.stdout.flush()
            return 1
        print("ok %s" % name)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
