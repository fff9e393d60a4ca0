#!/usr/bin/env bash
# Fan-out 1 -> 1,000 with 16 KiB payloads (issue #24): deliveries/s and the broker's
# CPU time over the run (utime+stime from /proc/PID/stat), ringmq --shards 1 beside
# Mosquitto in the same run, the same loadgen.
#
#   bash perf/fanout_rate.sh                 # 1000 subscribers, 16 KiB, QoS 0, 10 s
#   CLIENTS=200 SIZE=65536 QOS=1 DURATION=5s bash perf/fanout_rate.sh
#
# 127.0.0.1 only; every process started here is stopped by PID. One line per broker:
# loadgen's JSON with "broker" and "broker_cpu_s" added.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CLIENTS="${CLIENTS:-1000}"
SIZE="${SIZE:-16384}"
QOS="${QOS:-0}"
BROKERS="${BROKERS:-ringmq mosquitto}"

build_release
run_dir="$OUT/fanout-rate-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run_dir"
ulimit -n "$(ulimit -Hn)"
ticks_per_s=$(getconf CLK_TCK)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

for broker in $BROKERS; do
  port=$(free_port)
  logfile="$run_dir/$broker.log"
  case $broker in
    ringmq) start_ringmq "$port" "$logfile" --http-listen none ;;
    mosquitto)
      command -v mosquitto >/dev/null || die "mosquitto is not installed (tests/install-deps.sh installs it)"
      printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n' "$port" >"$run_dir/mosquitto.conf"
      taskset -c "$BROKER_CORE" mosquitto -c "$run_dir/mosquitto.conf" >"$logfile" 2>&1 &
      BROKER_PID=$!
      STARTED_PIDS+=("$BROKER_PID")
      wait_listening "$port" "$BROKER_PID"
      ;;
    *) die "BROKERS: unknown broker '$broker' (ringmq, mosquitto)" ;;
  esac
  before=$(cpu_ticks "$BROKER_PID")
  line=$(run_loadgen "$port" "$logfile" fanout --clients "$CLIENTS" --size "$SIZE" \
    --qos "$QOS" --duration "$DURATION")
  after=$(cpu_ticks "$BROKER_PID")
  cpu=$(awk -v t=$((after - before)) -v hz="$ticks_per_s" 'BEGIN { printf "%.2f", t / hz }')
  echo "{\"broker\":\"$broker\",\"broker_cpu_s\":$cpu,${line#\{}"
  stop_pid "$BROKER_PID"
  forget_pid "$BROKER_PID"
done
