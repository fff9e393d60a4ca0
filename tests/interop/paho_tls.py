"""Paho Python over TLS (tls_set with the test CA): a subscriber and a publisher on
an mqtts listener; prints `ok paho-tls <payload>` when the message arrives.
Run by tests/tls.rs as: paho_tls.py HOST PORT CAFILE TOPIC."""
import sys
import threading

import paho.mqtt.client as mqtt

host, port, cafile, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
subscribed = threading.Event()
received = threading.Event()
payloads = []


def on_subscribe(client, userdata, mid, granted_qos, *rest):
    subscribed.set()


def on_message(client, userdata, msg):
    payloads.append(msg.payload.decode())
    received.set()


sub = mqtt.Client(client_id=topic.replace("/", "-") + "-sub")
sub.tls_set(ca_certs=cafile)
sub.on_subscribe = on_subscribe
sub.on_message = on_message
sub.connect(host, port)
sub.loop_start()
sub.subscribe(topic, qos=1)
if not subscribed.wait(15):
    sys.exit("no SUBACK over TLS")

pub = mqtt.Client(client_id=topic.replace("/", "-") + "-pub")
pub.tls_set(ca_certs=cafile)
pub.connect(host, port)
pub.loop_start()
info = pub.publish(topic, "from-paho", qos=1)
info.wait_for_publish(15)
if not received.wait(15):
    sys.exit("message not received over TLS")
print("ok paho-tls " + payloads[0])
pub.disconnect()
sub.disconnect()
pub.loop_stop()
sub.loop_stop()
