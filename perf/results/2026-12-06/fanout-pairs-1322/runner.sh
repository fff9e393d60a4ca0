#!/usr/bin/env bash
# usage: run1.sh RINGMQ LOADGEN OUTDIR [perf-mode] ; env EXTRA_LG, EXTRA_BR, DUR
set -u
R=$1; L=$2; O=$3; MODE=${4:-none}
mkdir -p $O
ulimit -n 20000
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
PRIO=(setsid sh -c 'echo -20 >/proc/self/autogroup && exec nice -n -20 "$@"' prio)
"${PRIO[@]}" taskset -c ${BCORE:-0} $R --shards ${SHARDS:-1} --listen 127.0.0.1:$PORT --http-listen none --max-queued-messages 10000 --max-queued-bytes 67108864 --max-inflight 1024 ${EXTRA_BR:-} > $O/broker.log 2>&1 &
BP=$!; echo $BP > $O/broker.pid
for i in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
sleep 1
echo "load $(cut -d' ' -f1-3 /proc/loadavg)" > $O/load.txt
"${PRIO[@]}" taskset -c ${LCORE:-1} $L fanout --clients ${CLIENTS:-1000} --qos ${QOS:-0} --size 64 ${RATE_ARGS:---total-rate 100 --open-loop} --duration ${DUR:-10s} --port $PORT --json ${EXTRA_LG:-} > $O/lg.json 2> $O/lg.log &
LP=$!; echo $LP > $O/lg.pid
if [[ $MODE == sched ]]; then
  sleep 5
  perf sched record -a -o $O/sched.data -- sleep ${PDUR:-1} > /dev/null 2>&1
elif [[ $MODE == trace ]]; then
  sleep 5
  perf record -a -o $O/trace.data -e sched:sched_switch -e sched:sched_wakeup -e syscalls:sys_enter_io_uring_enter -e syscalls:sys_exit_io_uring_enter -e irq_vectors:reschedule_entry -e irq_vectors:call_function_single_entry -e io_uring:io_uring_task_add -e io_uring:io_uring_task_work_run -e io_uring:io_uring_local_work_run -- sleep ${PDUR:-1} > /dev/null 2>&1
elif [[ $MODE == rec ]]; then
  sleep 5
  perf record -g -p $BP -o $O/perf.data -- sleep ${PDUR:-3} > $O/perf.log 2>&1
elif [[ $MODE == reclg ]]; then
  sleep 5
  perf record -g -p $LP -o $O/perf.data -- sleep ${PDUR:-3} > /dev/null 2>&1
fi
wait $LP
BCPU=$(awk -v hz=$(getconf CLK_TCK) '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' /proc/$BP/stat)
kill -INT $BP; wait $BP
tail -1 $O/lg.json | BCPU=$BCPU python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); l=d["latency_us"]; print("rx/s %.0f p50 %.0f p99 %.0f p999 %.0f max %.0f lgcpu %.2fus lost %d brokercpu/deliv %.2fus" % (d["received_per_s"], l["p50"], l["p99"], l["p999"], l["max"], d["cpu_us_per_msg"], d["lost"], float(__import__("os").environ["BCPU"])*1e6/max(1,d["delivered"])))'
grep -o 'latency.sum_us=[0-9]* latency.count=[0-9]*' $O/broker.log | awk -F'[= ]' '{printf "broker mean pub->sendcomp %.0f us\n", $2/$4}'
cat $O/load.txt
