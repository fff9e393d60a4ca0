#!/usr/bin/env bash
# Figures of an MQTT bridge ([[bridge]], issue #18) to a local Mosquitto:
# 1. msg/s end to end: mosquitto_pub -l (N messages) -> ringmq -> bridge -> Mosquitto
#    -> mosquitto_sub -C N, at QoS 0 and 1, beside the same tools straight to Mosquitto
#    (the baseline that shows what the tools themselves cost);
# 2. reconnect time: the remote stopped DOWN_S seconds and started again, from its port
#    listening to ringmq_bridge_up 1 in /metrics (polled every 10 ms), ROUNDS times, for
#    the reconnect_min_ms/reconnect_max_ms pairs in BACKOFFS;
# 3. the same two figures for Mosquitto's own bridge (a second Mosquitto as the edge,
#    `connection` with `topic bench/# out 1`, `restart_timeout 1 60`), in the same
#    minutes: its "up" is the retained $SYS/broker/connection/+/state 1 it publishes.
#
#   cargo build --release --bin ringmq && bash perf/bridge.sh
#   N=100000 BACKOFFS="100:500" bash perf/bridge.sh
#
# 127.0.0.1 only, ports PORT_BASE..PORT_BASE+2; every process started here is stopped
# by PID. Needs mosquitto, mosquitto-clients, curl and bc (tests/install-deps.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-${CARGO_TARGET_DIR:-target}/release/ringmq}"
N="${N:-50000}"
DOWN_S="${DOWN_S:-3}"
ROUNDS="${ROUNDS:-3}"
BACKOFFS="${BACKOFFS:-1000:60000 100:500}"
PORT_BASE="${PORT_BASE:-21883}"
RP=$PORT_BASE LP=$((PORT_BASE + 1)) HP=$((PORT_BASE + 2)) MP=$((PORT_BASE + 3))
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

# utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15; the
# command name in field 2 has no spaces here).
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)
seq 1 "$N" | sed 's/^/payload-0123456789-0123456789-0123456789-/' > "$D/lines.txt"
rate() { # port qos label [edge broker PID: its CPU time per message is reported]
  timeout 120 mosquitto_sub -p "$RP" -t 'bench/#' -q "$2" -C "$N" > /dev/null &
  local s=$!; PIDS+=("$s")
  sleep 0.5
  local t0 t1 c0=0 c1=0 cpu=""
  [[ -n "${4:-}" ]] && c0=$(cpu_ticks "$4")
  t0=$(date +%s.%N)
  mosquitto_pub -p "$1" -t bench/x -q "$2" -l < "$D/lines.txt"
  wait "$s"; local rc=$?
  t1=$(date +%s.%N)
  if [[ -n "${4:-}" ]]; then
    c1=$(cpu_ticks "$4")
    cpu=", edge broker CPU $(echo "scale=2; ($c1 - $c0) * 1000000 / $TCK / $N" | bc) us/msg"
  fi
  if [[ $rc -ne 0 ]]; then
    echo "$3 qos$2: the subscriber did not get $N messages within 120 s"
  else
    echo "$3 qos$2: $N messages in $(echo "$t1 - $t0" | bc) s = $(echo "$N / ($t1 - $t0)" | bc) msg/s$cpu"
  fi
}

start_mosquitto
start_ringmq 1000 60000
for q in 0 1; do
  rate "$RP" "$q" "straight to mosquitto"
  rate "$LP" "$q" "through the bridge   " "$RG"
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

# Mosquitto's bridge, same tools, same remote.
start_edge_mosquitto() {
  cat > "$D/edge.conf" <<EOC
listener $MP 127.0.0.1
allow_anonymous true
max_queued_messages 1000000
connection cloud
address 127.0.0.1:$RP
topic bench/# out 1
cleansession false
max_inflight_messages 100
restart_timeout 1 60
EOC
  mosquitto -c "$D/edge.conf" >/dev/null 2>&1 &
  EM=$!; PIDS+=("$EM")
  while ! (exec 3<>"/dev/tcp/127.0.0.1/$MP") 2>/dev/null; do sleep 0.005; done
  # Its bridge state, timestamped, as it changes.
  : > "$D/state.log"
  # %U: the receive time, seconds.nanoseconds; one process, stopped by PID.
  mosquitto_sub -p "$MP" -F '%U %p' -t '$SYS/broker/connection/+/state' \
    > "$D/state.log" 2>/dev/null &
  PIDS+=("$!")
  for _ in $(seq 1 500); do [[ -n "$(edge_up_since 0)" ]] && return; sleep 0.01; done
  echo "bridge.sh: Mosquitto's bridge did not come up" >&2; exit 1
}
# The time of the first "connected" state after $1 (empty: none yet).
edge_up_since() { awk -v t="$1" '$1 > t && $2 == 1 { print $1; exit }' "$D/state.log"; }

start_mosquitto
start_edge_mosquitto
for q in 0 1; do
  rate "$MP" "$q" "mosquitto's bridge   " "$EM"
done
for round in $(seq 1 "$ROUNDS"); do
  kill "$MQ"; wait "$MQ" 2>/dev/null
  sleep "$DOWN_S"
  start_mosquitto
  t0=$(date +%s.%N)
  t1=""
  for _ in $(seq 1 12000); do t1=$(edge_up_since "$t0"); [[ -n "$t1" ]] && break; sleep 0.01; done
  [[ -n "$t1" ]] || { echo "mosquitto's bridge did not reconnect within 120 s"; continue; }
  echo "mosquitto's bridge reconnect (restart_timeout 1 60, remote down ${DOWN_S} s) round $round: up $(echo "($t1 - $t0) * 1000 / 1" | bc) ms after the remote listened"
done
