#!/usr/bin/env bash
# One alternating round: the kernel floor, then ringmq (io_uring, epoll, 2 shards) and Mosquitto.
set -u
cd /work/main/wt/floor13
R=perf/results/2026-12-07/floor13
round=$1
export PRIO=1 RINGMQ=$PWD/base-bin/ringmq LOADGEN=$PWD/base-bin/loadgen OUT=$PWD/$R
note() { echo "$(date -u +%H:%M:%S) round $round: $* load $(cut -d' ' -f1-3 /proc/loadavg)" >>$R/run.txt; }
note "kernel_floor.sh (all cells, 5 s)"
DURATION=5 KERNEL_FLOOR=$PWD/target/release/kernel-floor OUT_DIR=$PWD/$R/floor-round$round bash perf/kernel_floor.sh
note "compare.sh fanout_1k_qos0_100k pairs_20k, ringmq io_uring + mosquitto"
RINGMQ_ARGS="--http-listen none" BROKERS="ringmq mosquitto" DURATION=5s bash perf/compare.sh fanout_1k_qos0_100k pairs_20k
note "compare.sh fanout_1k_qos0_100k pairs_20k, ringmq --io epoll"
RINGMQ_ARGS="--http-listen none --io epoll" BROKERS=ringmq DURATION=5s bash perf/compare.sh fanout_1k_qos0_100k pairs_20k
note "compare.sh fanout_1k_qos0_100k, ringmq BROKER_SHARDS=2 BROKER_CORE=0-1 LOADGEN_CORE=0-1"
RINGMQ_ARGS="--http-listen none" BROKER_SHARDS=2 BROKER_CORE=0-1 LOADGEN_CORE=0-1 BROKERS=ringmq DURATION=5s bash perf/compare.sh fanout_1k_qos0_100k
note "end"
