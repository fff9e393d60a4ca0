#!/bin/bash
# Diagnostic: the guest's cpuidle-haltpoll window (platform ships 0 = off) against the
# kernel's default 200 us, alternating; restores the shipped value on exit.
cd /work/main
P=/sys/module/haltpoll/parameters/guest_halt_poll_ns
orig=$(cat $P)
trap 'echo $orig > $P; echo "restored guest_halt_poll_ns=$(cat $P)"' EXIT
export RINGMQ=/tmp/base-bin14/ringmq LOADGEN=/tmp/base-bin14/loadgen PRIO=1 DURATION=8s
run() { echo "== $(date +%T) [$1 halt_poll_ns=$(cat $P)] load $(cut -d' ' -f1-3 /proc/loadavg)"; BROKERS=$2 RINGMQ_ARGS="$3" bash perf/compare.sh pairs_20k 2>&1 | grep "^| pairs"; }
for r in 1 2 3; do
  echo $orig > $P; run uring ringmq ""
  echo 200000 > $P; run uring ringmq ""
done
echo 200000 > $P; run epoll ringmq "--io epoll"; run mosquitto mosquitto ""
(BROKERS=ringmq bash perf/compare.sh pairs_20k 2>&1 | grep "^| pairs" > /tmp/q14/hp-trace-run.txt) & sleep 7; perf sched record -a -o /tmp/q14/s-hp.data -- sleep 3 >/dev/null 2>&1; wait
echo "traced run (halt poll on):"; cat /tmp/q14/hp-trace-run.txt
