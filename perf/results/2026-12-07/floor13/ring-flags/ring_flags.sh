#!/usr/bin/env bash
# #21's ring-flag lever on the floor: the broker's COOP_TASKRUN + TASKRUN_FLAG against
# SINGLE_ISSUER + DEFER_TASKRUN, fan-out (one io_uring submission) and pairs (io_uring
# relay), alternating, three rounds, PRIO=1.
set -u
cd "$(dirname "$0")/../../../../.."
R=perf/results/2026-12-07/floor13/ring-flags
P=(setsid sh -c 'echo -20 >/proc/self/autogroup && exec nice -n -20 "$@"' prio)
ulimit -n "$(ulimit -Hn)"
for round in 1 2 3; do
  for ring in coop defer; do
    echo "$(date -u +%T) round $round fanout --ring $ring load $(cut -d' ' -f1-3 /proc/loadavg)" >>$R/run.txt
    "${P[@]}" target/release/kernel-floor fanout --mode uring --ring $ring --duration 5 >>$R/fanout-$ring.jsonl
    echo "$(date -u +%T) round $round pairs --relay uring --ring $ring load $(cut -d' ' -f1-3 /proc/loadavg)" >>$R/run.txt
    "${P[@]}" target/release/kernel-floor pairs --relay uring --ring $ring --duration 5 >>$R/pairs-$ring.jsonl
  done
done
