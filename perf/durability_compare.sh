#!/usr/bin/env bash
# Durability side by side with Mosquitto's persistence, in the same minutes (issue
# #13), printed, never asserted:
#  1. fan-in, 100 persistent publishers -> 1 persistent subscriber, QoS 1, 64 B, one
#     loop (loadgen fanin --persistent): ringmq in memory / --durability process /
#     --durability fsync against Mosquitto `persistence false` / `persistence true`
#     (autosave_interval AUTOSAVE_S, default 1800 = Mosquitto's default); msg/s and
#     broker CPU per delivered message; ROUNDS rounds, alternating.
#  2. disk bytes per queued 64 B message: QUEUED QoS 1 messages (topic
#     `devices/000001/cmd`, 18 B) for an offline persistent subscriber, then the
#     broker stopped; ringmq: log bytes written (each segment up to its zero fill),
#     Mosquitto: the size of mosquitto.db it saves at exit.
# Loss windows (what a kill -9 / power loss can lose of what was acknowledged) are
# printed beside each. The load average is printed with every figure.
#
#   bash perf/durability_compare.sh
#   ROUNDS=3 DURATION=8s bash perf/durability_compare.sh
#   PARTS=bytes bash perf/durability_compare.sh     # only part 2
#   CONFIGS="ringmq-process ringmq-fsync" PARTS=fanin RINGMQ=/tmp/old/ringmq \
#     LOADGEN=target/release/loadgen bash perf/durability_compare.sh   # one build
set -euo pipefail
source "$(dirname "$0")/common.sh"

ROUNDS="${ROUNDS:-2}"
DURATION="${DURATION:-8s}"
AUTOSAVE_S="${AUTOSAVE_S:-1800}"
QUEUED="${QUEUED:-100000}"
PARTS="${PARTS:-fanin bytes}"
command -v mosquitto >/dev/null || die "mosquitto missing (tests/install-deps.sh installs it)"
command -v mosquitto_pub >/dev/null || die "mosquitto_pub missing (mosquitto-clients)"
build_release
run_dir="$OUT/durability-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run_dir"

start_mosq() {
  local port=$1 persist=$2 dir=$3 conf="$run_dir/mosquitto-$1.conf"
  mkdir -p "$dir"
  cat >"$conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
max_queued_messages 1000000
max_inflight_messages 1024
persistence $persist
persistence_location $dir/
autosave_interval $AUTOSAVE_S
log_dest stderr
log_type error
log_type warning
CONF
  if [[ $(id -u) -eq 0 ]]; then echo "user root" >>"$conf"; fi
  taskset -c "$BROKER_CORE" mosquitto -c "$conf" >"$run_dir/mosquitto-$port.log" 2>&1 &
  BROKER_PID=$!
  STARTED_PIDS+=("$BROKER_PID")
  wait_listening "$port" "$BROKER_PID"
}

# start NAME PORT: one of the five configurations.
start() {
  local name=$1 port=$2 dir="$run_dir/data-$1-$2"
  case "$name" in
    ringmq-memory) start_ringmq "$port" "$run_dir/$name-$port.log" --http-listen none --max-queued-messages 1000000 --max-queued-bytes 1073741824 ;;
    ringmq-process) start_ringmq "$port" "$run_dir/$name-$port.log" --http-listen none --max-queued-messages 1000000 --max-queued-bytes 1073741824 --data-dir "$dir" --durability process ;;
    ringmq-fsync) start_ringmq "$port" "$run_dir/$name-$port.log" --http-listen none --max-queued-messages 1000000 --max-queued-bytes 1073741824 --data-dir "$dir" --durability fsync ;;
    mosquitto-memory) start_mosq "$port" false "$dir" ;;
    mosquitto-persist) start_mosq "$port" true "$dir" ;;
  esac
  DATA="$dir"
}

loss() {
  case "$1" in
    ringmq-memory|mosquitto-memory) echo "everything (nothing on disk)" ;;
    ringmq-process) echo "kill -9: nothing acknowledged; power loss: the OS's unwritten pages" ;;
    ringmq-fsync) echo "nothing acknowledged (fdatasync before PUBACK)" ;;
    mosquitto-persist) echo "kill -9 or power loss: up to ${AUTOSAVE_S} s (autosave_interval)" ;;
  esac
}

# CONFIGS="ringmq-process ringmq-fsync" runs a subset (e.g. two ringmq builds
# alternated through RINGMQ=).
read -r -a CONFIGS <<<"${CONFIGS:-ringmq-memory ringmq-process ringmq-fsync mosquitto-memory mosquitto-persist}"
if [[ " $PARTS " == *" fanin "* ]]; then
echo "## fan-in, 100 persistent publishers -> 1 persistent subscriber, QoS 1, 64 B, window ${FANIN_WINDOW:-loadgen default}, $DURATION, broker on core $BROKER_CORE"
echo "| round | broker | msg/s | broker CPU us/msg | lost | loss window | load |"
echo "|---|---|---|---|---|---|---|"
for round in $(seq 1 "$ROUNDS"); do
  for name in "${CONFIGS[@]}"; do
    port=$(free_port)
    start "$name" "$port"
    sleep 1
    cpu0=$(cpu_ms "$BROKER_PID")
    load="$(cut -d' ' -f1 /proc/loadavg)"
    json="$run_dir/fanin-$name-$round.json"
    run_loadgen "$port" "$run_dir/fanin-$name-$round.loadgen.log" fanin --publishers 100 \
      --subscribers 1 --qos 1 --size 64 ${FANIN_WINDOW:+--window "$FANIN_WINDOW"} --duration "$DURATION" \
      --threads 1 --persistent >"$json" || log "loadgen failed ($name), see $run_dir"
    cpu=$(( $(cpu_ms "$BROKER_PID") - cpu0 ))
    stop_pid "$BROKER_PID"; forget_pid "$BROKER_PID"
    read -r msgs _ _ lost _ < <(python3 "$ROOT/perf/loadgen_json.py" fields "$json")
    delivered=$(python3 "$ROOT/perf/loadgen_json.py" delivered "$json")
    per=-
    ((delivered > 0)) && per=$(python3 -c "print(f'{$cpu*1000/$delivered:.2f}')")
    echo "| $round | $name | $msgs | $per | $lost | $(loss "$name") | $load |"
  done
done
fi

# Log bytes a ringmq data directory holds: each segment up to its last non-zero byte
# (segments are created at full size and zero-filled).
ringmq_log_bytes() {
  python3 - "$1" <<'PY'
import os, sys
total = 0
for root, _, files in os.walk(sys.argv[1]):
    for f in files:
        if f.startswith("wal-") and f.endswith(".log") or f.startswith("snap-") and f.endswith(".snap"):
            b = open(os.path.join(root, f), "rb").read()
            total += len(b.rstrip(b"\0"))
print(total)
PY
}

[[ " $PARTS " == *" bytes "* ]] || exit 0
echo
echo "## disk bytes per queued 64 B message ($QUEUED QoS 1 messages, topic devices/000001/cmd = 18 B, for one offline persistent subscriber)"
echo "| broker | bytes on disk | per message | x (payload + topic) | load |"
echo "|---|---|---|---|---|"
payload=$(printf 'x%.0s' $(seq 64))
for name in ringmq-process mosquitto-persist; do
  port=$(free_port)
  start "$name" "$port"
  mosquitto_sub -h 127.0.0.1 -p "$port" -i offline-sub -c -q 1 -t devices/000001/cmd -E
  before=0
  [[ $name == ringmq-* ]] && before=$(ringmq_log_bytes "$DATA")
  python3 -c "import sys; sys.stdout.write(('$payload' + '\\n') * $QUEUED)" | mosquitto_pub -h 127.0.0.1 -p "$port" -i pub -q 1 \
    -t devices/000001/cmd -l
  sleep 1
  load="$(cut -d' ' -f1 /proc/loadavg)"
  stop_pid "$BROKER_PID"; forget_pid "$BROKER_PID"
  if [[ $name == ringmq-* ]]; then
    bytes=$(( $(ringmq_log_bytes "$DATA") - before ))
  else
    bytes=$(stat -c %s "$DATA/mosquitto.db")
  fi
  python3 -c "b=$bytes; n=$QUEUED; print(f'| $name | {b} | {b/n:.1f} | {b/n/82:.2f} | $load |')"
done
echo
echo "raw output: $run_dir"
