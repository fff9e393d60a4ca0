#!/usr/bin/env bash
# Pairs floor with and without wake-ups: relay and client sleeping (--spin 0) against
# both polling without sleeping (--spin 1), epoll and io_uring relays, alternating,
# two rounds, PRIO=1, 5 s each.
set -u
cd "$(dirname "$0")/../../../../.."
R=perf/results/2026-12-07/floor13/spin
P=(setsid sh -c 'echo -20 >/proc/self/autogroup && exec nice -n -20 "$@"' prio)
ulimit -n "$(ulimit -Hn)"
for round in 1 2; do
  for relay in epoll uring; do
    for spin in 0 1; do
      echo "$(date -u +%T) round $round pairs --relay $relay --spin $spin load $(cut -d' ' -f1-3 /proc/loadavg)" >>$R/run.txt
      "${P[@]}" target/release/kernel-floor pairs --relay $relay --spin $spin --duration 5 >>$R/pairs-$relay-spin$spin.jsonl
    done
  done
done
