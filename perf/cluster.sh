#!/usr/bin/env bash
# What crossing nodes costs (issue #17): the same loadgen scenarios against one
# ringmq node without a cluster and against two cluster nodes (loadgen --hosts),
# side by side, in the same minutes. The cluster is 3 nats-servers routed into one
# JetStream cluster (R3 buckets and stream) under 2 ringmq nodes, all on loopback.
#
#   bash perf/cluster.sh            # release binaries from target/release
#
# nats-server: tests/interop/nats/nats-server (tests/install-deps.sh puts 2.10.27 there),
# or NATS_SERVER=/path; older than 2.9.21 is refused.
#
# Scenarios: fanin QoS 0 and 1 (PUBLISHERS publishers -> 1 subscriber; with --hosts
# the publishers alternate between the nodes and the subscriber sits on node 2, so
# half of the publishers cross), pairs QoS 0 and 1 (PAIRS pairs; with --hosts every
# subscriber is on the other node than its publisher; PAIRS_RATE msg/s each, so the
# latency is not a saturated queue's), and a CONNECT storm of CLIENTS clients.
# Each message run is DURATION long.
# Prints one line per run: msg/s received, p50/p99 latency in us, lost, whether
# loadgen itself was saturated. Wall-clock figures: note the load (uptime) printed
# first; the machine's other work moves them.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RINGMQ=${RINGMQ:-$ROOT/target/release/ringmq}
LOADGEN=${LOADGEN:-$ROOT/target/release/loadgen}
DURATION=${DURATION:-10s}
PUBLISHERS=${PUBLISHERS:-8}
PAIRS=${PAIRS:-100}
CLIENTS=${CLIENTS:-2000}
# Messages/s per pairs publisher: latency at a modest load, not at saturation.
PAIRS_RATE=${PAIRS_RATE:-50}
# The nats-server tests/install-deps.sh unpacks (2.10.27; the tests use the same one).
# Session ownership needs 2.9.21 or later (nats-server#4320), so an older one is refused.
NATS_SERVER=${NATS_SERVER:-$ROOT/tests/interop/nats/nats-server}
for bin in "$RINGMQ" "$LOADGEN"; do
  [[ -x "$bin" ]] || { echo "missing $bin (cargo build --release)" >&2; exit 1; }
done
[[ -x "$NATS_SERVER" ]] \
  || { echo "missing $NATS_SERVER (bash tests/install-deps.sh, or NATS_SERVER=/path/to/nats-server)" >&2; exit 1; }
nats_version=$("$NATS_SERVER" --version 2>&1 || true)
if ! [[ $nats_version =~ ^nats-server:\ v([0-9]+)\.([0-9]+)\.([0-9]+) ]] \
  || (( BASH_REMATCH[1] * 1000000 + BASH_REMATCH[2] * 1000 + BASH_REMATCH[3] < 2009021 )); then
  echo "$NATS_SERVER is '$nats_version': nats-server 2.9.21 or later is needed (bash tests/install-deps.sh)" >&2
  exit 1
fi
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap 'tail -n 5 "$work"/*.log >&2 2>/dev/null; cleanup' ERR
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Listening on 127.0.0.1:$1 (bounded: 10 s).
listening() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

# One NATS set (3 servers) and the two nodes on it, on fresh ports. The servers start
# one after another, each routed to itself and to those already listening, so no
# route dial is refused (tests/support/nats.rs does the same). A fresh 2.10.27 set
# still fails to form now and then (the meta group keeps two peers and every
# 3-replica create is refused): the caller then starts another set.
set_pids=()
start_set() {
  local set=$1 i j routes
  set_pids=()
  for i in 0 1 2; do NC[$i]=$(port); NR[$i]=$(port); done
  for i in 0 1 2; do
    routes="nats://127.0.0.1:${NR[$i]}"
    for ((j = 0; j < i; j++)); do routes+=",nats://127.0.0.1:${NR[$j]}"; done
    mkdir -p "$work/set$set/nats$i"
    "$NATS_SERVER" -a 127.0.0.1 -p "${NC[$i]}" -n "perf-$i" -js -sd "$work/set$set/nats$i" \
      --cluster_name ringmq-perf --cluster "nats://127.0.0.1:${NR[$i]}" --routes "$routes" \
      >"$work/nats$i.log" 2>&1 &
    set_pids+=($!); pids+=($!)
    listening "${NC[$i]}" && listening "${NR[$i]}" \
      || { echo "nats-server $i of set $set did not listen" >&2; return 1; }
  done
  a=$(port); b=$(port)
  for n in 0 1; do
    p=$a; [[ $n == 1 ]] && p=$b
    "$RINGMQ" --listen "127.0.0.1:$p" --shards 1 --http-listen 127.0.0.1:0 \
      --cluster-nats "nats://127.0.0.1:${NC[$n]}" --cluster-node-name "perf-n$n" \
      --cluster-kv-replicas 3 >"$work/node$n.log" 2>&1 &
    set_pids+=($!); pids+=($!)
  done
  # JetStream forms its cluster and the nodes make their buckets and stream: wait
  # until a QoS 1 message crosses (bounded).
  for _ in $(seq 1 60); do
    if "$LOADGEN" pairs --hosts "127.0.0.1:$a,127.0.0.1:$b" --clients 1 --qos 1 \
        --duration 1s --json 2>/dev/null | python3 "$ROOT/perf/loadgen_json.py" delivered \
        | grep -qv '^0$'; then
      return 0
    fi
    sleep 1
  done
  echo "set $set: the cluster never carried a QoS 1 message; the nodes said:" >&2
  tail -n 3 "$work"/node*.log >&2
  return 1
}

declare -a NC NR
single=$(port)
"$RINGMQ" --listen "127.0.0.1:$single" --shards 1 --http-listen 127.0.0.1:0 >"$work/single.log" 2>&1 &
pids+=($!)
ready=0
for set in 1 2 3; do
  if start_set "$set"; then ready=1; echo "cluster formed (NATS set $set)"; break; fi
  for p in "${set_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${set_pids[@]}"; do wait "$p" 2>/dev/null || true; done
done
[[ $ready == 1 ]] || { echo "no NATS set of 3 formed a cluster that carried a message" >&2; exit 1; }

echo "load: $(uptime)"
run() {
  local label=$1; shift
  local r
  r=$("$LOADGEN" "$@" --duration "$DURATION" --json 2>>"$work/loadgen.log" | tail -n 1) \
    || echo "  ($label: loadgen exited with status $?; see below)" >&2
  read -r msgs p50 p99 lost sat <<<"$(python3 "$ROOT/perf/loadgen_json.py" fields <<<"$r")"
  printf '%-34s %10s msg/s  p50 %7s us  p99 %7s us  lost %s  loadgen-saturated %s\n' \
    "$label" "$msgs" "$p50" "$p99" "$lost" "$sat"
}
two="127.0.0.1:$a,127.0.0.1:$b"
# CONNECT storm: on a cluster node every CONNECT with a client id waits for its claim
# in the sessions bucket (a KV read and a replicated compare-and-set).
connect_run() {
  local label=$1; shift
  "$LOADGEN" connect "$@" --clients "$CLIENTS" --hold 1s --json 2>>"$work/loadgen.log" | tail -n 1 \
    | python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); l=r["connect_latency_us"]
print("%-34s %10.0f conn/s p50 %7.0f us  p99 %7.0f us  established %d" % (sys.argv[1],
  r["connect_rate_per_s"], l["p50"], l["p99"], r["connections_established"]))' "$label" \
    || echo "  ($label: loadgen failed)" >&2
}
connect_run "connect single node" --host 127.0.0.1 --port "$single"
connect_run "connect two nodes (claims)" --hosts "$two"
for q in 0 1; do
  run "fanin qos$q single node" fanin --host 127.0.0.1 --port "$single" --publishers "$PUBLISHERS" --qos "$q"
  run "fanin qos$q two nodes" fanin --hosts "$two" --publishers "$PUBLISHERS" --qos "$q"
done
for q in 0 1; do
  run "pairs qos$q single node" pairs --host 127.0.0.1 --port "$single" --clients "$PAIRS" --qos "$q" --rate "$PAIRS_RATE"
  run "pairs qos$q cross-node" pairs --hosts "$two" --clients "$PAIRS" --qos "$q" --rate "$PAIRS_RATE"
done
