#!/usr/bin/env bash
# Restart to the first CONNACK, ringmq beside Mosquitto, on the same persistent
# state built the same way (issue #13), printed, never asserted. For each broker:
# start it with persistence on a fresh directory, fill it over MQTT with
# perf/persist_fill.py (SESSIONS persistent sessions with one QoS 1 subscription
# each, then PER_SESSION queued QoS 1 64 B messages for each of them), stop it
# cleanly (Mosquitto writes mosquitto.db at exit; ringmq's log is already on disk),
# then RUNS times: start it on a fresh copy of that directory and time the first
# CONNACK of one of those sessions with session present (perf/first_connack.py),
# with the broker's CPU time up to it, RSS and the load average.
#
# Both brokers run on every core (ringmq --shards LOOPS; Mosquitto is one thread).
# The default set is 15,000 sessions x 10 messages: the 100k/1M set of
# perf/recovery.sh scaled down, since Mosquitto here is run with the same fd limit
# of 20,000 as in the storm comparison; SESSIONS=100000 builds the full set (the
# fill connects sessions one at a time, so the fd limit does not bind).
#
#   bash perf/restart_compare.sh
#   SESSIONS=100000 PER_SESSION=10 RUNS=2 bash perf/restart_compare.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SESSIONS="${SESSIONS:-15000}"
PER_SESSION="${PER_SESSION:-10}"
RUNS="${RUNS:-3}"
LOOPS="${LOOPS:-2}"
command -v mosquitto >/dev/null || die "mosquitto missing (tests/install-deps.sh installs it)"
command -v python3 >/dev/null || die "python3 missing"
if [[ $PREBUILT == 0 ]]; then
  (cd "$ROOT" && cargo build --release -q -p ringmq --bin ringmq) || die "release build failed"
fi
[[ -x "$RINGMQ" ]] || die "$RINGMQ missing"
run_dir="$OUT/restart-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run_dir"

mosq_conf() {
  local port=$1 dir=$2 conf="$run_dir/mosquitto-$1.conf"
  cat >"$conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
max_queued_messages 1000000
persistence true
persistence_location $dir/
autosave_interval 1800
log_dest stderr
log_type error
log_type warning
CONF
  if [[ $(id -u) -eq 0 ]]; then echo "user root" >>"$conf"; fi
  echo "$conf"
}

# start NAME PORT DIR LOG: sets PID.
start() {
  local name=$1 port=$2 dir=$3 logf=$4
  case "$name" in
    ringmq) "$RINGMQ" --shards "$LOOPS" --listen "127.0.0.1:$port" --http-listen none \
      --data-dir "$dir" --durability process --max-queued-messages 1000000 \
      --max-queued-bytes 1073741824 >"$logf" 2>&1 & ;;
    mosquitto) mkdir -p "$dir"; mosquitto -c "$(mosq_conf "$port" "$dir")" >"$logf" 2>&1 & ;;
  esac
  PID=$!
  STARTED_PIDS+=("$PID")
}

echo "## restart to first CONNACK: $SESSIONS persistent sessions x $PER_SESSION queued QoS 1 64 B messages ($((SESSIONS * PER_SESSION)) queued)"
echo "| broker | run | first CONNACK | broker CPU to it | RSS | on disk | load |"
echo "|---|---|---|---|---|---|---|"
for name in ringmq mosquitto; do
  port=$(free_port)
  base="$run_dir/$name-data"
  start "$name" "$port" "$base" "$run_dir/$name-fill.log"
  wait_listening "$port" "$PID"
  log "$name: filling ($(python3 "$ROOT/perf/persist_fill.py" 127.0.0.1 "$port" "$SESSIONS" "$PER_SESSION"))"
  stop_pid "$PID"; forget_pid "$PID"
  disk="$(du -sh "$base" | cut -f1)"
  for run in $(seq 1 "$RUNS"); do
    work="$run_dir/$name-run"
    rm -rf "$work"
    cp -a "$base" "$work"
    sync
    port=$(free_port)
    load="$(cut -d' ' -f1 /proc/loadavg)"
    t0="$(date +%s.%N)"
    if [[ $name == mosquitto ]]; then
      mosquitto -c "$(mosq_conf "$port" "$work")" >"$run_dir/$name-run-$run.log" 2>&1 &
      PID=$!; STARTED_PIDS+=("$PID")
    else
      start "$name" "$port" "$work" "$run_dir/$name-run-$run.log"
    fi
    out="$(python3 "$ROOT/perf/first_connack.py" 127.0.0.1 "$port" device-000001 300 "$t0")" \
      || { stop_pid "$PID"; die "$name: no CONNACK (run $run), see $run_dir"; }
    cpu="$(cpu_ms "$PID")"
    rss="$(rss_kb "$PID")"
    # SIGKILL: a clean stop would make Mosquitto save its database again.
    kill -KILL "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    forget_pid "$PID"
    echo "| $name | $run | ${out#first CONNACK after } | ${cpu} ms | $((rss / 1024)) MiB | $disk | $load |"
  done
  rm -rf "$run_dir/$name-run"
done
echo
echo "raw output: $run_dir"
