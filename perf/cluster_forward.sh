#!/usr/bin/env bash
# CPU per message a cluster node forwards to NATS (issue #17): what the write path
# (loops -> cluster thread -> async-nats) costs per QoS 0 message, in instructions
# (steady under load; "-" on a machine without a hardware PMU, as this VM) and in CPU
# time, for the whole node process and for its cluster thread alone.
#
#   RINGMQ=base-bin/ringmq PRIO=1 bash perf/cluster_forward.sh
#
# One nats-server with JetStream and two ringmq nodes of one loop (R1), on loopback.
# Runs, DURATION each:
#   fixed  fanin --host n0 --publishers 8 --qos 0 --total-rate RATE: node 0 only forwards
#          (its publishers and subscriber are local; nothing crosses), at a rate both
#          builds sustain, so the per-message cost is not a saturated queue's;
#   max    the same as fast as the node takes it;
#   cross  fanin --hosts n0,n1 --publishers 8 --qos 0: half the publishers on node 0,
#          the subscriber on node 1; what node 1 received from NATS is the cross-node
#          traffic.
# For fixed and max: `perf stat -e task-clock,instructions` on node 0's process and on
# its cluster thread from loadgen's start to 1 s after its end (a backlog the writer
# still holds is written by then), divided by node 0's forwarded_total over the same
# span, with what it dropped: forward_dropped_total (the writer was full, or NATS away)
# and dropped_out_total (the loop's ring to the cluster thread was full). Prints one
# line per run with the load average.
# A profile: DURATION=14s RUNS=max, and from another shell while it runs
# `perf record -g -p <node 0's pid, printed first> -- sleep 5`, then
# `perf report --comms ringmq-cluster --percentage relative --no-children --sort sym`.
# (Started from this script, perf record got next to no samples on this VM.)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RINGMQ=${RINGMQ:-$ROOT/target/release/ringmq}
LOADGEN=${LOADGEN:-$ROOT/target/release/loadgen}
NATS_SERVER=${NATS_SERVER:-$ROOT/tests/interop/nats/nats-server}
DURATION=${DURATION:-5s}
RATE=${RATE:-200000}
RUNS=${RUNS:-fixed max cross}
LABEL=${LABEL:-$(basename "$(dirname "$RINGMQ")")}
for bin in "$RINGMQ" "$LOADGEN" "$NATS_SERVER"; do
  [[ -x "$bin" ]] || { echo "missing $bin" >&2; exit 1; }
done
command -v perf >/dev/null || { echo "perf is needed (linux-perf)" >&2; exit 1; }
PRIO_CMD=()
if [[ "${PRIO:-0}" == 1 ]]; then
  # shellcheck disable=SC2016 # $@ is the inner shell's
  PRIO_CMD=(setsid sh -c 'echo -20 >/proc/self/autogroup && exec nice -n -20 "$@"' prio)
fi
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # CALLGRIND_OUT=DIR keeps the dumps (callgrind_annotate --inclusive=yes FILE).
  if [[ -n ${CALLGRIND_OUT:-} ]]; then mkdir -p "$CALLGRIND_OUT" && cp "$work"/cg.* "$CALLGRIND_OUT"/ 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
nc=$(port); a=$(port); b=$(port); ha=$(port); hb=$(port)
"${PRIO_CMD[@]}" "$NATS_SERVER" -a 127.0.0.1 -p "$nc" -js -sd "$work/js" >"$work/nats.log" 2>&1 &
pids+=($!); nats=$!
sleep 0.5
# CALLGRIND=1: node 0 runs under callgrind (epoll: valgrind does not follow io_uring),
# its counters zeroed before each run and dumped after it, so the fixed run prints
# instructions per forwarded message per thread: deterministic for a given build and
# message count whatever the machine's load. Use a rate valgrind keeps up with.
cg_prefix=()
if [[ "${CALLGRIND:-0}" == 1 ]]; then
  command -v valgrind >/dev/null || { echo "CALLGRIND=1 needs valgrind" >&2; exit 1; }
  cg_prefix=(valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$work/cg.%p" --)
fi
node() {
  local run=("$RINGMQ")
  if [[ $3 == n0 && ${#cg_prefix[@]} -gt 0 ]]; then run=("${cg_prefix[@]}" "$RINGMQ" --io epoll); fi
  "${PRIO_CMD[@]}" "${run[@]}" --listen "127.0.0.1:$1" --shards 1 --http-listen "127.0.0.1:$2" \
    --cluster-nats "nats://127.0.0.1:$nc" --cluster-node-name "$3" --cluster-kv-replicas 1 \
    >"$work/$3.log" 2>&1 &
  pids+=($!)
}
node "$a" "$ha" n0; n0=${pids[-1]}
node "$b" "$hb" n1
ready=0
for _ in $(seq 1 40); do
  if "$LOADGEN" pairs --hosts "127.0.0.1:$a,127.0.0.1:$b" --clients 1 --qos 1 --duration 1s --json 2>/dev/null \
      | python3 "$ROOT/perf/loadgen_json.py" delivered | grep -qv '^0$'; then
    ready=1; break
  fi
  sleep 0.5
done
[[ $ready == 1 ]] || { echo "the cluster never carried a QoS 1 message" >&2; tail "$work"/*.log >&2; exit 1; }
metric() { curl -s "127.0.0.1:$1/metrics" | awk -v k="ringmq_cluster_$2" '$1==k{print $2}'; }
cluster_tid=$(grep -l '^ringmq-cluster' /proc/"$n0"/task/*/comm | head -n 1 | cut -d/ -f5)
echo "node 0: pid $n0, cluster thread $cluster_tid" >&2
# perf stat's CSV: value,unit,event,... -> the value of one event.
counted() { awk -F, -v e="$2" 'index($3, e) == 1 {print $1}' "$1"; }
# CPU ticks (utime + stime) of node 0's loop, its cluster thread and nats-server: which
# of them a run kept busy.
ticks() {
  local shard cluster server
  shard=$(awk '{print $14 + $15}' "$(grep -l '^ringmq-shard' /proc/"$n0"/task/*/comm | head -n 1 | sed 's/comm$/stat/')")
  cluster=$(awk '{print $14 + $15}' "/proc/$n0/task/$cluster_tid/stat")
  server=$(awk '{print $14 + $15}' "/proc/$nats/stat")
  echo "$shard $cluster $server"
}
lg() { "${PRIO_CMD[@]}" "$LOADGEN" "$@" --duration "$DURATION" --json 2>>"$work/loadgen.log" | tail -n 1; }

forward_run() {
  local name=$1; shift
  local f0 d0 o0 f1 d1 o1 pp pt r t0 t1
  f0=$(metric "$ha" forwarded_total); d0=$(metric "$ha" forward_dropped_total); o0=$(metric "$ha" dropped_out_total)
  read -r -a t0 <<<"$(ticks)"
  perf stat -x, -e task-clock,instructions -p "$n0" -o "$work/proc.csv" 2>/dev/null & pp=$!
  perf stat -x, -e task-clock,instructions -t "$cluster_tid" -o "$work/thread.csv" 2>/dev/null & pt=$!
  sleep 0.2
  [[ ${#cg_prefix[@]} -gt 0 ]] && callgrind_control -z "$n0" >/dev/null 2>&1
  r=$(lg fanin --host 127.0.0.1 --port "$a" --publishers 8 --qos 0 "$@")
  sleep 1
  f1=$(metric "$ha" forwarded_total); d1=$(metric "$ha" forward_dropped_total); o1=$(metric "$ha" dropped_out_total)
  read -r -a t1 <<<"$(ticks)"
  kill -INT "$pp" "$pt"; wait "$pp" "$pt" || true
  if [[ ${#cg_prefix[@]} -gt 0 ]]; then
    cg_dumps=$((${cg_dumps:-0} + 1))
    callgrind_control -d "$n0" >/dev/null 2>&1
    sleep 1
    # Messages written in the dump's window, as callgrind counted them: calls of
    # topic_subject (one per forwarded message, old and new builds). forwarded_total
    # lags when valgrind leaves the node behind the publishers.
    local f ir who written
    written=$(python3 - "$work/cg.$n0.$cg_dumps"-* <<'PY'
import re, sys
n = 0
for path in sys.argv[1:]:
    names, target = {}, None
    for line in open(path, errors="replace"):
        m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line)
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2)
            target = line.startswith("cfn=") and "subject::topic_subject" in names.get(m.group(1), "")
        elif target and line.startswith("calls="):
            n += int(line.split("=")[1].split()[0])
            target = False
print(n)
PY
)
    # One file per thread for this dump; the thread is told by what it ran.
    for f in "$work/cg.$n0.$cg_dumps"-*; do
      ir=$(sed -n 's/^summary: //p' "$f")
      who=other
      grep -q 'cluster::link::State::drain_loops' "$f" && who=cluster-thread
      grep -q 'ringmq::worker' "$f" && [[ $who == other ]] && who=loop
      [[ $ir -gt 0 ]] && printf '%-10s %-5s callgrind %-14s %12d instr, %6d per message written\n' \
        "$LABEL" "$name" "$who" "$ir" "$((ir / (written > 0 ? written : 1)))"
    done
  fi
  python3 - "$LABEL" "$name" "$((f1 - f0))" "$((d1 - d0))/$((o1 - o0))" "$(cut -d' ' -f1-3 /proc/loadavg)" \
    "$(counted "$work/proc.csv" instructions)" "$(counted "$work/proc.csv" task-clock)" \
    "$(counted "$work/thread.csv" instructions)" "$(counted "$work/thread.csv" task-clock)" \
    "$(python3 "$ROOT/perf/loadgen_json.py" fields <<<"$r" | cut -d' ' -f1)" \
    "$((t1[0] - t0[0])) $((t1[1] - t0[1])) $((t1[2] - t0[2]))" <<'EOF'
import sys
label, name, fwd, dropped, load, pi, pc, ti, tc, recv, ticks = sys.argv[1:]
fwd = int(fwd)
# No hardware PMU (a VM): instructions are "<not supported>", printed as "-".
per = lambda v, scale: "-" if not fwd or not v[:1].isdigit() else f"{float(v) * scale / fwd:.0f}"
print(f"{label:10} {name:5} load {load}  forwarded {fwd:>9} dropped writer/ring {dropped:>15} recv {recv:>9} msg/s | "
      f"per message: process {per(pi, 1)} instr {per(pc, 1e6)} ns, "
      f"cluster thread {per(ti, 1)} instr {per(tc, 1e6)} ns | ticks loop/cluster/nats-server {ticks}")
EOF
}

cross_run() {
  local g0 g1 r
  g0=$(metric "$hb" received_total)
  r=$(lg fanin --hosts "127.0.0.1:$a,127.0.0.1:$b" --publishers 8 --qos 0)
  sleep 1
  g1=$(metric "$hb" received_total)
  printf '%-10s cross load %s  node 1 received %9d from NATS in %s, loadgen %s msg/s\n' "$LABEL" \
    "$(cut -d' ' -f1-3 /proc/loadavg)" "$((g1 - g0))" "$DURATION" \
    "$(python3 "$ROOT/perf/loadgen_json.py" fields <<<"$r" | cut -d' ' -f1)"
}

for run in $RUNS; do
  case $run in
    fixed) forward_run fixed --total-rate "$RATE" ;;
    max) forward_run max ;;
    cross) cross_run ;;
    *) echo "unknown run $run (fixed, max, cross)" >&2; exit 1 ;;
  esac
done
