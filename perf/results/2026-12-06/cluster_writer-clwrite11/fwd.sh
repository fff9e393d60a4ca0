#!/usr/bin/env bash
# usage: fwd.sh RINGMQ LOADGEN LABEL. Kept as run for perf/results (session 11, clwrite11); not a maintained perf script.
# usage: fwd.sh RINGMQ LOADGEN LABEL  -> one QoS0 flood (5s) then one QoS1 fanin (5s), 1 nats-server JS, 2 nodes R1
set -uo pipefail
RINGMQ=$1; LOADGEN=$2; LABEL=$3
NATS=/work/main/tests/interop/nats/nats-server
work=$(mktemp -d /tmp/clw11/run.XXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nc=$(port); a=$(port); b=$(port); ha=$(port); hb=$(port)
"$NATS" -a 127.0.0.1 -p $nc -js -sd $work/js >$work/nats.log 2>&1 & pids+=($!)
sleep 0.5
"$RINGMQ" --listen 127.0.0.1:$a --shards 1 --http-listen 127.0.0.1:$ha --cluster-nats nats://127.0.0.1:$nc --cluster-node-name n0 --cluster-kv-replicas 1 >$work/n0.log 2>&1 & pids+=($!); n0=$!
"$RINGMQ" --listen 127.0.0.1:$b --shards 1 --http-listen 127.0.0.1:$hb --cluster-nats nats://127.0.0.1:$nc --cluster-node-name n1 --cluster-kv-replicas 1 >$work/n1.log 2>&1 & pids+=($!); n1=$!
ok=0
for _ in $(seq 1 40); do
  if "$LOADGEN" pairs --hosts 127.0.0.1:$a,127.0.0.1:$b --clients 1 --qos 1 --duration 1s --json 2>/dev/null | python3 /work/main/wt/clwrite11/perf/loadgen_json.py delivered | grep -qv '^0$'; then ok=1; break; fi
  sleep 0.5
done
[[ $ok == 1 ]] || { echo "$LABEL: cluster never ready"; tail $work/*.log; exit 1; }
m() { curl -s 127.0.0.1:$1/metrics | awk -v k="ringmq_cluster_$2" '$1==k{print $2}'; }
cpu() { for t in /proc/$1/task/*; do n=$(cat $t/comm); if [[ $n == ringmq-cluster* ]]; then awk '{print $14+$15}' $t/stat; fi; done | head -1; }
f0=$(m $ha forwarded_total); g0=$(m $hb forwarded_total); c0=$(cpu $n0); e0=$(cpu $n1)
if [[ -n ${PERF:-} ]]; then tid=$(for t in /proc/$n1/task/*; do [[ $(cat $t/comm) == ringmq-cluster* ]] && basename $t; done | head -1); (sleep 1; timeout 3 perf record -F 2000 ${PERFG:-} -t $tid -o $PERF 2>/dev/null >/dev/null) & fi
r0=$("$LOADGEN" fanin --hosts 127.0.0.1:$a,127.0.0.1:$b --publishers 8 --qos 0 --duration 5s --json 2>$work/lg0.err | tail -n1)
f1=$(m $ha forwarded_total); g1=$(m $hb forwarded_total); c1=$(cpu $n0); e1=$(cpu $n1); rv=$(m $ha received_total); rv1=$(m $hb received_total)
d0=$(m $ha dropped_out_total)/$(m $hb dropped_out_total); fd=$(m $ha forward_dropped_total)/$(m $hb forward_dropped_total)
fa=$(m $ha forwarded_total); ca=$(cpu $n0)
if [[ -n ${PERF1:-} ]]; then tid0=$(for t in /proc/$n0/task/*; do [[ $(cat $t/comm) == ringmq-cluster* ]] && basename $t; done | head -1); (sleep 1; timeout 3 perf record -F 2000 ${PERFG:-} -t $tid0 -o $PERF1 2>/dev/null >/dev/null) & fi
"$LOADGEN" fanin --host 127.0.0.1 --port $a --publishers 8 --qos 0 --duration 5s --json >/dev/null 2>&1
fb=$(m $ha forwarded_total); cb=$(cpu $n0)
r1=$("$LOADGEN" fanin --hosts 127.0.0.1:$a,127.0.0.1:$b --publishers 8 --qos 1 --duration 5s --json 2>$work/lg1.err | tail -n1)
q1=$(python3 /work/main/wt/clwrite11/perf/loadgen_json.py fields <<<"$r1")
fails=$(grep -o "[0-9]* failed" $work/lg1.err | head -1)
echo "$LABEL load=[$(cut -d' ' -f1-3 /proc/loadavg)] qos0: forwarded n0 $((f1-f0)) n1 $((g1-g0)) in 5s, received n0 $rv n1 $rv1, dropped_out ${d0:-?} forward_dropped ${fd:--} cluster-thread cpu n0 $((c1-c0)) n1 $((e1-e0)) ticks; recv $(python3 /work/main/wt/clwrite11/perf/loadgen_json.py fields <<<"$r0" | cut -d' ' -f1) msg/s | one-node flood: n0 forwarded $((fb-fa)) cpu $((cb-ca)) ticks | qos1 after: $q1 (conns $fails)"
[[ $fails != "0 failed" ]] && { head -5 $work/lg1.err; tail -5 $work/n*.log; }; true
