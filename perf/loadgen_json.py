#!/usr/bin/env python3
"""Reads loadgen's --json line (stdin or a file) and prints what the perf scripts need.

  loadgen_json.py fields [FILE]   -> "msg_per_s p50_us p99_us lost saturated" ("-" if absent)
  loadgen_json.py summary [FILE]  -> one human line
  loadgen_json.py delivered [FILE] -> messages delivered over the whole run (0 if absent)
  loadgen_json.py p999 [FILE]     -> latency p99.9 in µs ("-" if absent)
  loadgen_json.py storm [FILE]    -> "reconnects_per_s connack_p50_us connack_p99_us
                                      seconds sessions_present broker_cpu_s saturated"
"""
import json
import sys


def load(path):
    text = open(path).read() if path else sys.stdin.read()
    lines = [l for l in text.splitlines() if l.strip()]
    return json.loads(lines[-1]) if lines else None


def main():
    if len(sys.argv) not in (2, 3) or sys.argv[1] not in ("fields", "summary", "delivered", "storm", "p999"):
        sys.exit(__doc__)
    r = load(sys.argv[2] if len(sys.argv) == 3 else None)
    if r is None:
        print({"fields": "- - - - -", "delivered": "0", "storm": "- - - - - - -", "p999": "-"}
              .get(sys.argv[1], "loadgen: no JSON result"))
        return
    if sys.argv[1] == "storm":
        c = r.get("connect_latency_us") or {}
        st = r.get("storm") or {}
        cpu = r.get("broker_cpu_s")
        print(f"{r.get('connect_rate_per_s', 0):.0f}", f"{c.get('p50', 0):.0f}",
              f"{c.get('p99', 0):.0f}", f"{r.get('measured_s', 0):.2f}",
              st.get("sessions_present", "-"), "-" if cpu is None else f"{cpu:.3f}",
              "yes" if r.get("loadgen_saturated") else "no")
        return
    if sys.argv[1] == "delivered":
        print(r.get("delivered", 0))
        return
    lat = r.get("latency_us") or {}
    measured = lat.get("count", 0) > 0
    rate = r.get("received_per_s", 0)
    msgs = f"{rate:.0f}" if rate else "-"
    p50 = f"{lat['p50']:.0f}" if measured else "-"
    p99 = f"{lat['p99']:.0f}" if measured else "-"
    lost = r.get("lost", 0)
    sat = "yes" if r.get("loadgen_saturated") else "no"
    if sys.argv[1] == "p999":
        print(f"{lat['p999']:.0f}" if measured else "-")
    elif sys.argv[1] == "fields":
        print(msgs, p50, p99, lost, sat)
    else:
        est = r.get("connections_established", 0)
        print(f"loadgen {r.get('scenario')}: {msgs} msg/s received, p50 {p50} us, "
              f"p99 {p99} us, lost {lost}, {est} connections, loadgen saturated: {sat}, "
              f"exit {r.get('exit_code')}")


main()
