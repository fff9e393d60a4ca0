#!/usr/bin/env bash
# Issue #24's case: one 300 KB QoS 1 message to 1,000 subscribers that do not read
# (small SO_RCVBUF), broker RSS growth while it is undelivered, ringmq --shards 1
# beside Mosquitto in the same run (perf/fanout_rss.py does the MQTT side).
#
#   bash perf/fanout_rss.sh                      # 1000 subscribers, 300 KiB
#   SUBS=200 PAYLOAD=65536 bash perf/fanout_rss.sh
#
# 127.0.0.1 only; every broker started here is stopped by PID. One JSON line per
# broker on stdout, logs in perf/out/fanout-rss-<time>/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

SUBS="${SUBS:-1000}"
PAYLOAD="${PAYLOAD:-307200}"
BROKERS="${BROKERS:-ringmq mosquitto}"

run_dir="$OUT/fanout-rss-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run_dir"
[[ " $BROKERS " == *" ringmq "* ]] && build_release
ulimit -n "$(ulimit -Hn)"

for broker in $BROKERS; do
  port=$(free_port)
  logfile="$run_dir/$broker.log"
  case $broker in
    ringmq) start_ringmq "$port" "$logfile" --http-listen none ;;
    mosquitto)
      command -v mosquitto >/dev/null || die "mosquitto is not installed (tests/install-deps.sh installs it)"
      printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000\n' "$port" >"$run_dir/mosquitto.conf"
      taskset -c "$BROKER_CORE" mosquitto -c "$run_dir/mosquitto.conf" >"$logfile" 2>&1 &
      BROKER_PID=$!
      STARTED_PIDS+=("$BROKER_PID")
      wait_listening "$port" "$BROKER_PID"
      ;;
    *) die "BROKERS: unknown broker '$broker' (ringmq, mosquitto)" ;;
  esac
  line=$(timeout 400 python3 "$ROOT/perf/fanout_rss.py" --port "$port" --pid "$BROKER_PID" \
    --subs "$SUBS" --payload "$PAYLOAD")
  echo "{\"broker\":\"$broker\",${line#\{}"
  stop_pid "$BROKER_PID"
  forget_pid "$BROKER_PID"
done
