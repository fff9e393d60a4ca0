#!/usr/bin/env bash
# A reconnect storm (`loadgen storm`) against ringmq on 2 loops, unpinned, with what
# tells a storm's stalls apart: loadgen's connect latency (a max of 1 s or more is a
# SYN retried after a listen overflow), the broker's connect timeouts and receive
# starvation from /metrics, and the broker's CPU per reconnect (issue #21). The
# machine's CPU over the storm window, split into broker / loadgen / other processes /
# idle (perf/storm_split.py), says whether the loops waited for work or the two
# processes together had both cores.
#
#   bash perf/storm.sh                          # 100k on io_uring, 3 rounds
#   CLIENTS=18000 IO="uring epoll" bash perf/storm.sh   # both backends (epoll: fd limit)
#   PRIO=1 bash perf/storm.sh                   # own autogroup at nice -20 (needs root)
#
# PRIO=1 runs broker and loadgen in a new session at autogroup nice -20 and nice -20,
# like perf/loadgen_cpu.py: on a machine shared with other builds, the storm's wall
# time is otherwise the scheduler's. nstat's ListenOverflows is machine-wide (other
# processes' listeners count too), so it is printed but the connect max is the figure.
# Every process started here is stopped by PID; 127.0.0.0/8 only.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CLIENTS="${CLIENTS:-100000}"
IO="${IO:-uring}"
ROUNDS="${ROUNDS:-3}"

if [[ "${PRIO:-0}" == 1 && -z "${STORM_PRIO_SET:-}" ]]; then
  # A new session is a new autogroup; give it and this shell the highest weight.
  exec setsid env STORM_PRIO_SET=1 bash -c \
    'echo -20 > /proc/self/autogroup && exec nice -n -20 bash "$0"' "${BASH_SOURCE[0]}"
fi

build_release
run_dir="$OUT/storm-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run_dir"

storm() {
  local io=$1 round=$2 port hport tag lg
  port=$(free_port)
  hport=$(free_port)
  tag="$io-$CLIENTS-$round"
  "$RINGMQ" --shards 2 --io "$io" --listen "127.0.0.1:$port" \
    --http-listen "127.0.0.1:$hport" >"$run_dir/broker-$tag.log" 2>&1 &
  BROKER_PID=$!
  STARTED_PIDS+=("$BROKER_PID")
  wait_listening "$port" "$BROKER_PID"
  nstat -n >/dev/null
  uptime >"$run_dir/uptime-$tag"
  "$LOADGEN" storm --clients "$CLIENTS" --port "$port" --hold 1s --json \
    --broker-pid "$BROKER_PID" >"$run_dir/loadgen-$tag.json" 2>"$run_dir/loadgen-$tag.log" &
  lg=$!
  STARTED_PIDS+=("$lg")
  python3 "$ROOT/perf/storm_split.py" sample "$BROKER_PID" "$lg" "$run_dir/split-$tag.json" &
  local sampler=$!
  wait "$lg" || log "loadgen exited with status $? (see $run_dir/loadgen-$tag.log)"
  forget_pid "$lg"
  wait "$sampler" || true
  python3 "$ROOT/perf/storm_split.py" report "$run_dir/split-$tag.json" "$run_dir/loadgen-$tag.json" \
    >"$run_dir/split-$tag.txt" || true
  uptime >>"$run_dir/uptime-$tag"
  nstat -z TcpExtListenOverflows >"$run_dir/nstat-$tag" 2>/dev/null || true
  curl -s "127.0.0.1:$hport/metrics" | grep -E '^ringmq_(connections_closed_total|io_recv_nobufs)' \
    >"$run_dir/metrics-$tag" || true
  stop_pid "$BROKER_PID"
  forget_pid "$BROKER_PID"
  local t cpu cmax tout ovf
  t=$(awk '/^  storm /{print $2}' "$run_dir/loadgen-$tag.log")
  cpu=$(awk '/broker cpu/{print $8}' "$run_dir/loadgen-$tag.log" | tr -d '(')
  cmax=$(awk '/connect us/{print $8}' "$run_dir/loadgen-$tag.log")
  tout=$(awk -F' ' '/reason="connect_timeout"/{print $2}' "$run_dir/metrics-$tag")
  ovf=$(awk '/ListenOverflows/{print $2}' "$run_dir/nstat-$tag")
  # Over the storm window, in CPU seconds of the whole machine: broker / loadgen /
  # other processes / idle (perf/storm_split.py).
  local machine
  machine=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    if l.startswith("json "):
        s = json.loads(l[5:])
        print("%.2f / %.2f / %.2f / %.2f" % (s["broker_s"], s["loadgen_s"], s["others_s"], s["idle_s"]))' \
    "$run_dir/split-$tag.txt" 2>/dev/null || true)
  echo "| $io | $CLIENTS | $round | ${t:-?} s | ${cmax:-?} µs | ${tout:-0} | ${cpu:-?} µs | ${ovf:-?} | ${machine:-?} | $(awk '{print $(NF-2)}' "$run_dir/uptime-$tag" | head -1 | tr -d ,) |" \
    | tee -a "$run_dir/table.md"
}

echo "| backend | clients | round | to the last CONNACK | connect max | connect timeouts | broker CPU per reconnect | ListenOverflows (machine-wide) | storm window CPU-s: broker / loadgen / others / idle | load |" | tee "$run_dir/table.md"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|" | tee -a "$run_dir/table.md"
for round in $(seq "$ROUNDS"); do
  for io in $IO; do
    storm "$io" "$round"
  done
done
log "raw results in $run_dir"
