#!/usr/bin/env bash
# TLS 1.3 handshakes per second of broker CPU, ringmq against Mosquitto, with the
# same ECDSA P-256 certificate (issue #12's "Handshakes" figure). The client is
# pinned to LOADGEN_CORE: `openssl s_time -new` (a new session per connection: full
# handshakes, no application data), and perf/tls_connects.py (Python's ssl: one
# MQTT CONNECT/CONNACK per connection, `full` or `resume`: each connection offers the
# ticket the one before got, as a reconnecting device does; it counts how many the
# server resumed). (`s_time -reuse` does not resume TLS 1.3: it never reads the
# ticket.) Each broker runs alone on BROKER_CORE. Broker CPU (user + system,
# /proc/PID/stat) is read around the run, so the figure holds on a loaded machine.
# Per round: ringmq with tls_session_tickets false and true (one ticket per full
# handshake), Mosquitto (OpenSSL's default, two tickets per full handshake).
#
#   bash perf/tls_handshakes.sh
#   SECONDS_PER_RUN=8 RUNS=2 bash perf/tls_handshakes.sh
#
# Processes started here are stopped by PID; 127.0.0.1 only.
set -euo pipefail
export TRANSPORT=tls
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SECONDS_PER_RUN="${SECONDS_PER_RUN:-8}"
RUNS="${RUNS:-2}"
command -v mosquitto >/dev/null || die "mosquitto is not installed (tests/install-deps.sh installs it)"
build_release
run_dir="$OUT/tls-handshakes-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run_dir"

# One run against the broker BROKER_PID listens for on PORT: prints a table row.
# CLIENT: s_time (full handshakes), full or resume (tls_connects.py).
measure() {
  local name=$1 port=$2 client=$3 c0 c1 line n resumed=-
  sleep 1
  c0=$(cpu_ms "$BROKER_PID")
  if [[ "$client" == s_time ]]; then
    line=$(taskset -c "$LOADGEN_CORE" timeout $((SECONDS_PER_RUN + 20)) openssl s_time \
      -connect "127.0.0.1:$port" -new -tls1_3 -time "$SECONDS_PER_RUN" 2>&1 | grep 'connections in' | head -n 1)
    n=$(awk '{ print $1 }' <<<"$line")
  else
    line=$(taskset -c "$LOADGEN_CORE" timeout $((SECONDS_PER_RUN + 20)) python3 "$ROOT/perf/tls_connects.py" \
      127.0.0.1 "$port" "$TLS_CERT" "$client" "$SECONDS_PER_RUN" 2>&1 | tail -n 1)
    n=$(sed -n 's/^connections=\([0-9]*\) .*/\1/p' <<<"$line")
    resumed=$(sed -n 's/.* resumed=\([0-9]*\)$/\1/p' <<<"$line")
  fi
  c1=$(cpu_ms "$BROKER_PID")
  [[ "$n" =~ ^[0-9]+$ ]] || die "$name: $client gave no count ($line)"
  echo "| $name | $client | $n | $resumed | $((c1 - c0)) | $((n * 1000 / (c1 - c0 + 1))) | $(cut -d' ' -f1 /proc/loadavg) |" | tee -a "$run_dir/table.md"
}

# Every client against the broker BROKER_PID serves on PORT, then stops it.
measure_all() {
  local name=$1 port=$2
  measure "$name" "$port" s_time
  measure "$name" "$port" full
  measure "$name" "$port" resume
  stop_broker
}

stop_broker() {
  stop_pid "$BROKER_PID"
  forget_pid "$BROKER_PID"
}

echo "| broker | client | connections | resumed | broker CPU ms | connections per broker CPU second | load |" | tee "$run_dir/table.md"
echo "|---|---|---:|---:|---:|---:|---:|" | tee -a "$run_dir/table.md"
for _ in $(seq "$RUNS"); do
  port=$(free_port)
  start_ringmq "$port" "$run_dir/ringmq.log" --tls-session-tickets false
  measure_all "ringmq, no tickets" "$port"
  port=$(free_port)
  start_ringmq "$port" "$run_dir/ringmq.log" --tls-session-tickets true
  measure_all "ringmq, tickets" "$port"
  port=$(free_port)
  conf="$run_dir/mosquitto.conf"
  printf 'listener %s 127.0.0.1\ncertfile %s\nkeyfile %s\nallow_anonymous true\npersistence false\nlog_dest stderr\nlog_type error\n' \
    "$port" "$TLS_CERT" "$TLS_KEY" >"$conf"
  if [[ $(id -u) -eq 0 ]]; then echo "user root" >>"$conf"; fi
  taskset -c "$BROKER_CORE" mosquitto -c "$conf" >"$run_dir/mosquitto.log" 2>&1 &
  BROKER_PID=$!
  STARTED_PIDS+=("$BROKER_PID")
  wait_listening "$port" "$BROKER_PID"
  measure_all mosquitto "$port"
done
log "raw results in $run_dir"
