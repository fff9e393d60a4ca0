#!/usr/bin/env bash
# ad-hoc: VmRSS and per-mapping Rss over time, 10k idle, one loop
set -u
BIN=$1; TAG=$2; shift 2
OUTD=/work/main/wt/idle13/perf/out/probe/$TAG-$(date +%H%M%S)
mkdir -p $OUTD
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
setsid sh -c 'echo -20 >/proc/self/autogroup && exec nice -n -20 "$@"' prio taskset -c 0 $BIN --shards 1 --listen 127.0.0.1:$PORT --http-listen none "$@" >$OUTD/broker.log 2>&1 &
BP=$!
sleep 0.5
base=$(awk '/^VmRSS:/{print $2}' /proc/$BP/status)
cp /proc/$BP/smaps $OUTD/smaps-0
taskset -c 1 /work/main/wt/idle13/base-bin/loadgen connect --clients ${N:-10000} --hold 40s --port $PORT >$OUTD/lg.log 2>&1 &
LG=$!
for i in $(seq 300); do
  est=$(ss -Htn state established "( sport = :$PORT )" | wc -l)
  ((est >= ${N:-10000})) && break; sleep 0.2
done
t0=$(date +%s.%N)
for s in ${TIMES:-1 3 6 8 9 10 11 12 13 15 20 25 30}; do
  while (( $(echo "$(date +%s.%N) - $t0 < $s" | bc) )); do sleep 0.05; done
  kb=$(awk '/^VmRSS:/{print $2}' /proc/$BP/status); anon=$(awk "/^RssAnon:/{print \$2}" /proc/$BP/status); file=$(awk "/^RssFile:/{print \$2}" /proc/$BP/status)
  cp /proc/$BP/smaps $OUTD/smaps-$s
  echo "t=$s rss=$kb growth_kb=$((kb-base)) per_conn=$(( (kb-base)*1024/${N:-10000} )) anon=$anon file=$file" | tee -a $OUTD/series.txt
done
kill -INT $LG; wait $LG
kill -INT $BP; wait $BP
echo "load $(cat /proc/loadavg)" >> $OUTD/series.txt
echo $OUTD
