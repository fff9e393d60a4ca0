#!/bin/bash
# Quiet measurements of the final code after the rehearsal.
cd /work/main
NEW=/tmp/q12/final-bin
LG=$NEW/loadgen
echo "== fanin_qos1 alternated (5 s)"
for b in base new base new; do
  bin=/tmp/base-bin12/ringmq; [ $b = new ] && bin=$NEW/ringmq
  echo "$b load $(cut -d' ' -f1 /proc/loadavg) $(RINGMQ=$bin LOADGEN=$LG PRIO=1 DURATION=5s BROKERS=ringmq bash perf/compare.sh fanin_qos1 fanin_qos0 2>&1 | grep '^| f' | tr '\n' ' ')"
done
echo "== matrix io_uring + mosquitto, load $(cut -d' ' -f1 /proc/loadavg)"
RINGMQ=$NEW/ringmq LOADGEN=$LG PRIO=1 DURATION=8s bash perf/compare.sh storm_10k fanout_1k_qos0_100k pairs_20k 2>&1 | grep "^|\|^Measured\|raw results"
echo "== matrix epoll, load $(cut -d' ' -f1 /proc/loadavg)"
RINGMQ=$NEW/ringmq LOADGEN=$LG PRIO=1 DURATION=8s BROKERS=ringmq RINGMQ_ARGS="--io epoll" bash perf/compare.sh storm_10k fanout_1k_qos0_100k pairs_20k 2>&1 | grep "^| [sfp]\|raw results"
echo "== storm_100k 2 loops, load $(cut -d' ' -f1 /proc/loadavg)"
for b in new; do
  bin=/tmp/base-bin12/ringmq; [ $b = new ] && bin=$NEW/ringmq
  echo "$b $(RINGMQ=$bin LOADGEN=$LG PRIO=1 BROKER_SHARDS=2 BROKER_CORE=0-1 LOADGEN_CORE=0-1 BROKERS=ringmq bash perf/compare.sh storm_100k 2>&1 | grep '^| s')"
done
echo "== done $(date)"
