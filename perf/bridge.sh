#!/usr/bin/env bash
# Figures of an MQTT bridge ([[bridge]], issue #18) to a local Mosquitto:
# 1. msg/s end to end: mosquitto_pub -l (N messages) -> ringmq -> bridge -> Mosquitto
#    -> mosquitto_sub -C N, at QoS 0 and 1, beside the same tools straight to Mosquitto
#    (the baseline that shows what the tools themselves cost);
# 2. reconnect time: the remote stopped DOWN_S seconds and started again, from its port
#    listening to ringmq_bridge_up 1 in /metrics (polled every 10 ms), ROUNDS times, for
#    the reconnect_min_ms/reconnect_max_ms pairs in BACKOFFS.
#
#   cargo build --release --bin ringmq && bash perf/bridge.sh
#   N=100000 BACKOFFS="100:500" bash perf/bridge.sh
#
# 127.0.0.1 only, ports PORT_BASE..PORT_BASE+2; every process started here is stopped
# by PID. Needs mosquitto, mosquitto-clients, curl and bc (tests/install-deps.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN="${CARGO_TARGET_DIR:-target}/release/ringmq"
N="${N:-50000}"
DOWN_S="${DOWN_S:-3}"
ROUNDS="${ROUNDS:-3}"
BACKOFFS="${BACKOFFS:-1000:60000 100:500}"
PORT_BASE="${PORT_BASE:-21883}"
RP=$PORT_BASE LP=$((PORT_BASE + 1)) HP=$((PORT_BASE + 2))
for t in "$BIN" mosquitto mosquitto_pub mosquitto_sub curl bc; do
  command -v "$t" >/dev/null || [[ -x "$t" ]] || { echo "bridge.sh: $t is missing" >&2; exit 1; }
done
D=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$D"; }
trap cleanup EXIT

start_mosquitto() {
  printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\n' "$RP" > "$D/mq.conf"
  mosquitto -c "$D/mq.conf" >/dev/null 2>&1 &
  MQ=$!; PIDS+=("$MQ")
  while ! (exec 3<>"/dev/tcp/127.0.0.1/$RP") 2>/dev/null; do sleep 0.005; done
}
start_ringmq() { # reconnect_min_ms reconnect_max_ms
  cat > "$D/r.toml" <<EOC
listen = ["127.0.0.1:$LP"]
http_listen = "127.0.0.1:$HP"
shards = 2
[[bridge]]
name = "cloud"
address = "127.0.0.1:$RP"
topics = ["bench/# out 1"]
queue_max_messages = 1000000
inflight_max = 100
reconnect_min_ms = $1
reconnect_max_ms = $2
EOC
  "$BIN" --config "$D/r.toml" > "$D/r.log" 2>&1 &
  RG=$!; PIDS+=("$RG")
  for _ in $(seq 1 500); do up && return; sleep 0.01; done
  echo "bridge.sh: the bridge did not come up" >&2; exit 1
}
up() { curl -s "127.0.0.1:$HP/metrics" | grep -q '^ringmq_bridge_up{bridge="cloud"} 1'; }

seq 1 "$N" | sed 's/^/payload-0123456789-0123456789-0123456789-/' > "$D/lines.txt"
rate() { # port qos label
  timeout 120 mosquitto_sub -p "$RP" -t 'bench/#' -q "$2" -C "$N" > /dev/null &
  local s=$!; PIDS+=("$s")
  sleep 0.5
  local t0 t1
  t0=$(date +%s.%N)
  mosquitto_pub -p "$1" -t bench/x -q "$2" -l < "$D/lines.txt"
  wait "$s"; local rc=$?
  t1=$(date +%s.%N)
  if [[ $rc -ne 0 ]]; then
    echo "$3 qos$2: the subscriber did not get $N messages within 120 s"
  else
    echo "$3 qos$2: $N messages in $(echo "$t1 - $t0" | bc) s = $(echo "$N / ($t1 - $t0)" | bc) msg/s"
  fi
}

start_mosquitto
start_ringmq 1000 60000
for q in 0 1; do
  rate "$RP" "$q" "straight to mosquitto"
  rate "$LP" "$q" "through the bridge   "
done
curl -s "127.0.0.1:$HP/metrics" | grep -E '^ringmq_bridge_(out_sent|out_acked|out_dropped|held)'
kill "$RG" "$MQ"; wait "$RG" "$MQ" 2>/dev/null

for b in $BACKOFFS; do
  start_mosquitto
  start_ringmq "${b%%:*}" "${b##*:}"
  for round in $(seq 1 "$ROUNDS"); do
    kill "$MQ"; wait "$MQ" 2>/dev/null
    for _ in $(seq 1 500); do up || break; sleep 0.01; done
    sleep "$DOWN_S"
    start_mosquitto
    t0=$(date +%s.%N)
    for _ in $(seq 1 12000); do up && break; sleep 0.01; done
    t1=$(date +%s.%N)
    echo "reconnect (min ${b%%:*} ms, max ${b##*:} ms, remote down ${DOWN_S} s) round $round: up $(echo "($t1 - $t0) * 1000 / 1" | bc) ms after the remote listened"
  done
  kill "$RG" "$MQ"; wait "$RG" "$MQ" 2>/dev/null
done
