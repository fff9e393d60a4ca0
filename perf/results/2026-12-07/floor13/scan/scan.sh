#!/usr/bin/env bash
# Fan-out size scan: the floor (one io_uring submission per round) and ringmq (io_uring,
# one loop) at 1 -> N, 100 msg/s, N = 100, 250, 500, 1000, alternating.
set -u
cd /work/main/wt/floor13
R=$PWD/perf/results/2026-12-07/floor13/scan
mkdir -p $R
P=(setsid sh -c 'echo -20 >/proc/self/autogroup && exec nice -n -20 "$@"' prio)
ulimit -n "$(ulimit -Hn)"
for round in 1 2; do
  for n in 100 250 500 1000; do
    echo "$(date -u +%T) round $round n=$n floor load $(cut -d' ' -f1-3 /proc/loadavg)" >>$R/run.txt
    "${P[@]}" target/release/kernel-floor fanout --mode uring --clients $n --duration 5 >>$R/floor-n$n.jsonl
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    echo "$(date -u +%T) round $round n=$n ringmq load $(cut -d' ' -f1-3 /proc/loadavg)" >>$R/run.txt
    "${P[@]}" taskset -c 0 base-bin/ringmq --shards 1 --listen 127.0.0.1:$port --http-listen none \
      --max-queued-messages 10000 --max-queued-bytes 67108864 --max-inflight 1024 >$R/ringmq-n$n-r$round.log 2>&1 &
    bpid=$!
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
    sleep 1
    "${P[@]}" taskset -c 1 base-bin/loadgen fanout --clients $n --qos 0 --size 64 --total-rate 100 --open-loop \
      --duration 5s --transport tcp --port $port --json 2>>$R/loadgen-n$n.log | tail -n 1 >>$R/ringmq-n$n.jsonl
    kill -INT $bpid; wait $bpid
  done
done
echo "$(date -u +%T) end load $(cut -d' ' -f1-3 /proc/loadavg)" >>$R/run.txt
