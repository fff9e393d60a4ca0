#!/bin/bash
# quiet pairs batch, session 14
cd /work/main
export RINGMQ=/tmp/base-bin14/ringmq LOADGEN=/tmp/base-bin14/loadgen PRIO=1 DURATION=8s
run() { local label=$1 brokers=$2 args=$3; echo "== $(date +%T) [$label] load $(cut -d' ' -f1-3 /proc/loadavg)"; BROKERS=$brokers RINGMQ_ARGS="$args" bash perf/compare.sh pairs_20k 2>&1 | grep "^| pairs"; }
for r in 1 2 3; do
  run uring ringmq ""
  run epoll ringmq "--io epoll"
  run uring-slice100 ringmq "--sched-slice-us 100"
done
run mosquitto mosquitto ""
