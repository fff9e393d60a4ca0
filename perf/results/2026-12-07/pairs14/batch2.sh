#!/bin/bash
cd /work/main
export RINGMQ=/tmp/base-bin14/ringmq LOADGEN=/tmp/base-bin14/loadgen DURATION=8s
run() { echo "== $(date +%T) [$1 PRIO=$2] load $(cut -d' ' -f1-3 /proc/loadavg)"; PRIO=$2 BROKERS=$3 RINGMQ_ARGS="$4" bash perf/compare.sh pairs_20k 2>&1 | grep "^| pairs"; }
for r in 1 2 3; do
  run uring 0 ringmq ""
  run uring-busy100-slice100 0 ringmq "--busy-poll-us 100 --sched-slice-us 100"
  run uring-busy100 0 ringmq "--busy-poll-us 100"
done
