#!/usr/bin/env bash
# Broker RSS per connection at N connections, idle or with one subscription each,
# read once every connection is up and the broker has settled (idle buffer pages
# released), for any --shards. compare.sh reads RSS as soon as the last connection is
# up and covers one shard only.
#
#   bash perf/rss.sh                  # 10k and 100k, idle and subscribed, 1 and 2 shards
#   COUNTS="10000" SHARDS="1" MODES="idle" bash perf/rss.sh
#   TRANSPORT=ws COUNTS="20000" bash perf/rss.sh   # over MQTT-over-WebSocket
#   TRANSPORT=tls COUNTS="20000" SHARDS=1 MODES=idle bash perf/rss.sh   # over mqtts
#   SETTLE=15 COUNTS="10000" SHARDS=1 MODES=idle bash perf/rss.sh  # after the first
#       connect-timeout checks (10 s after accept), which move every timer entry,
#       and after the broker's second $SYS publish (10 s after start)
#
# Broker pinned to BROKER_CORE, loadgen to LOADGEN_CORE, 127.0.0.1 only; every process
# started here is stopped by PID. The last column counts anonymous pages only (RssAnon:
# the heap and mappings, without code and library pages). The table and one JSON line
# per measurement (the raw VmRSS and RssAnon readings) go to perf/out/rss-<time>/;
# with SAVE_RESULTS=1 also to the committed perf/results/<date>/rss-<time>/ (see
# perf/results/README.md).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

COUNTS="${COUNTS:-10000 100000}"
SHARDS="${SHARDS:-1 2}"
MODES="${MODES:-idle sub}"
SETTLE="${SETTLE:-3}"

build_release
run_dir="$OUT/rss-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run_dir"
saved=""
if [[ "${SAVE_RESULTS:-0}" == 1 ]]; then
  saved=$(results_dir rss "COUNTS=$COUNTS SHARDS=$SHARDS MODES=$MODES SETTLE=$SETTLE" "$@")
fi

measure() {
  local n=$1 mode=$2 shards=$3 port logfile lg base_kb kb base_anon anon est hold tr
  read -r -a tr <<<"$(loadgen_transport)"
  port=$(free_port)
  logfile="$run_dir/$mode-$n-$shards.log"
  BROKER_SHARDS=$shards start_ringmq "$port" "$logfile"
  sleep 0.5
  base_kb=$(rss_kb "$BROKER_PID")
  base_anon=$(rss_anon_kb "$BROKER_PID")
  # Long enough to connect everything (~25k/s) and settle: a SETTLE of 15 s reads
  # after the first connect-timeout checks, which move every wheel entry.
  hold="$(( n / 10000 + 10 + SETTLE ))s"
  if [[ $mode == idle ]]; then
    taskset -c "$LOADGEN_CORE" "$LOADGEN" connect --clients "$n" --hold "$hold" --port "$port" \
      "${tr[@]}" >>"$logfile" 2>&1 &
  else
    taskset -c "$LOADGEN_CORE" "$LOADGEN" fleet --clients "$n" --interval 1h --cmd-rate 0 \
      --duration "$hold" --warmup 0s --port "$port" "${tr[@]}" >>"$logfile" 2>&1 &
  fi
  lg=$!
  STARTED_PIDS+=("$lg")
  est=0
  for _ in $(seq 600); do
    est=$(established_on "$port")
    ((est >= n)) && break
    sleep 0.2
  done
  sleep "$SETTLE"
  kb=$(rss_kb "$BROKER_PID")
  anon=$(rss_anon_kb "$BROKER_PID")
  est=$(established_on "$port")
  wait "$lg" || log "loadgen exited with status $? (see $logfile)"
  forget_pid "$lg"
  stop_pid "$BROKER_PID"
  forget_pid "$BROKER_PID"
  printf '{"connections":%d,"shards":%d,"mode":"%s","established":%d,"rss_before_kib":%d,"rss_after_kib":%d,"rss_anon_before_kib":%d,"rss_anon_after_kib":%d}\n' \
    "$n" "$shards" "$mode" "$est" "$base_kb" "$kb" "$base_anon" "$anon" >>"$run_dir/rss.jsonl"
  if ((est < n)); then
    row "| $n | $shards | $mode | only $est established | - | - |"
  else
    row "| $n | $shards | $mode | $(( (kb - base_kb) )) KiB | $(( (kb - base_kb) * 1024 / est )) B | $(( (anon - base_anon) * 1024 / est )) B |"
  fi
}

# Not `{ ...; } | tee`: measure must run in this shell, where the EXIT trap stops
# the processes it started.
row() { echo "$1" | tee -a "$run_dir/table.md"; }
row "| connections | shards | mode | RSS growth | per connection | anonymous only |"
row "|---:|---:|---|---:|---:|---:|"
for n in $COUNTS; do
  for shards in $SHARDS; do
    for mode in $MODES; do
      measure "$n" "$mode" "$shards"
    done
  done
done
log "raw results in $run_dir"
if [[ -n "$saved" ]]; then
  cp "$run_dir/rss.jsonl" "$run_dir/table.md" "$saved/"
  log "saved to ${saved#"$ROOT"/} (commit it with the figures it backs)"
fi
