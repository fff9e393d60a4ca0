#!/usr/bin/env bash
# Retained messages to a new subscriber (issue #23), ringmq against Debian's
# mosquitto in the same run: store COUNT retained messages (64-byte payloads on
# fleet/devNNNNNN/state), read the broker's RSS growth per message, then time a fresh
# `#` subscriber from SUBSCRIBE to the last retained message at each QoS in QOS.
#
#   bash perf/retained.sh
#   COUNT=200000 QOS=0,1 BROKERS="ringmq:1 ringmq:2 mosquitto" bash perf/retained.sh
#
#   LATENCY=1 bash perf/retained.sh   # also: pairs latency of other clients on the
#                                     # loop while 1M retained stream (ringmq:1 only)
#
# ringmq:N runs `--shards N` (every loop keeps a replica, so N=2 shows the cost of
# an extra loop). Broker pinned to BROKER_CORE, the client to LOADGEN_CORE, 127.0.0.1
# only; each broker run is bounded by RUN_TIMEOUT and every process started here is
# stopped by PID.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

COUNT="${COUNT:-200000}"
QOS="${QOS:-0,1}"
read -r -a brokers <<<"${BROKERS:-ringmq:1 ringmq:2 mosquitto}"
RUN_TIMEOUT="${RUN_TIMEOUT:-120}"
BENCH="${BENCH:-$CARGO_TARGET_DIR/release/retained-bench}"

build_release
if ((!PREBUILT)); then
  (cd "$ROOT" && cargo build --release -q -p ringmq-perf --bin retained-bench) || die "retained-bench build failed"
fi
[[ -x "$BENCH" ]] || die "missing $BENCH"
if [[ " ${brokers[*]} " == *" mosquitto "* ]] && ! command -v mosquitto >/dev/null; then
  log "installing Debian's mosquitto"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto; } >/dev/null \
    || die "apt-get install mosquitto failed"
fi
run_dir="$OUT/retained-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$run_dir"

start_mosquitto() {
  local port=$1 logfile=$2 conf="$run_dir/mosquitto-$1.conf"
  cat >"$conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
persistence false
log_dest stderr
log_type error
log_type warning
CONF
  if [[ $(id -u) -eq 0 ]]; then echo "user root" >>"$conf"; fi
  taskset -c "$BROKER_CORE" mosquitto -c "$conf" >"$logfile" 2>&1 &
  BROKER_PID=$!
  STARTED_PIDS+=("$BROKER_PID")
  wait_listening "$port" "$BROKER_PID"
}

echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores ($(uname -r)), broker on core $BROKER_CORE, client on core $LOADGEN_CORE; mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}')."
echo
echo "| broker | retained | message | RSS per retained message | store time | QoS | received | SUBSCRIBE → last |"
echo "|---|---:|---|---:|---:|---|---:|---:|"
for b in "${brokers[@]}"; do
  port=$(free_port)
  logfile="$run_dir/$b.broker.log"
  case "$b" in
    # No HTTP listener: the default port may be taken by another broker.
    ringmq:*) BROKER_SHARDS="${b#ringmq:}" start_ringmq "$port" "$logfile" --http-listen none ;;
    mosquitto) start_mosquitto "$port" "$logfile" ;;
    *) die "unknown broker $b (ringmq:N or mosquitto)" ;;
  esac
  sleep 0.5
  rows=$(timeout "$RUN_TIMEOUT" taskset -c "$LOADGEN_CORE" "$BENCH" --port "$port" --pid "$BROKER_PID" \
    --count "$COUNT" --qos "$QOS" 2>>"$run_dir/$b.bench.log") || log "$b: retained-bench failed or timed out (see $run_dir/$b.bench.log)"
  while IFS= read -r row; do [[ -n "$row" ]] && echo "| $b $row"; done <<<"$rows"
  stop_pid "$BROKER_PID"
  forget_pid "$BROKER_PID"
done

# Other clients of the same loop during a large retained stream: loadgen pairs
# (PAIRS_ARGS) alone, then again while a fresh `#` subscriber streams LATENCY_COUNT
# retained messages at QoS 0 and then QoS 1 (stored beforehand, not during the run).
# The loop's own view of the same: `ringmq_publish_to_kernel_seconds` (PUBLISH read ->
# delivery in the subscriber's socket buffer; streamed retained copies are not
# sampled) scraped before and after each pairs run, the difference's p50/p99 as
# bucket upper bounds. It leaves out the clients' scheduling, which the bench
# client streaming on loadgen's core disturbs.
scrape_latency() {
  curl -sf "127.0.0.1:$1/metrics" | grep '^ringmq_publish_to_kernel_seconds_bucket' || true
}
latency_delta() {
  python3 - "$1" "$2" <<'PY'
import re, sys
def read(p):
    out = {}
    for line in open(p):
        m = re.search(r'le="([^"]+)"\} (\d+)', line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out
a, b = read(sys.argv[1]), read(sys.argv[2])
les = sorted((k for k in b if k != "+Inf"), key=float) + ["+Inf"]
d = [(le, b.get(le, 0) - a.get(le, 0)) for le in les]
n = d[-1][1] if d else 0
def q(f):
    for le, c in d:
        if c >= f * n:
            return "<= %s ms" % ("inf" if le == "+Inf" else "%g" % (float(le) * 1e3))
    return "-"
print("broker-side PUBLISH -> kernel, %d samples: p50 %s, p99 %s, p99.9 %s" % (n, q(0.5), q(0.99), q(0.999)))
PY
}

if [[ "${LATENCY:-0}" == 1 ]]; then
  LATENCY_COUNT="${LATENCY_COUNT:-1000000}"
  PAIRS_ARGS="${PAIRS_ARGS:-pairs --clients 100 --total-rate 20000 --open-loop --qos 0 --size 64 --duration 10s}"
  read -r -a pairs_args <<<"$PAIRS_ARGS"
  port=$(free_port)
  hport=$(free_port)
  BROKER_SHARDS=1 start_ringmq "$port" "$run_dir/latency.broker.log" --http-listen "127.0.0.1:$hport"
  timeout "$RUN_TIMEOUT" taskset -c "$LOADGEN_CORE" "$BENCH" --port "$port" --pid "$BROKER_PID" \
    --count "$LATENCY_COUNT" --phase store >"$run_dir/latency.store.txt" 2>>"$run_dir/latency.bench.log" \
    || die "storing $LATENCY_COUNT retained failed (see $run_dir/latency.bench.log)"
  echo
  echo "pairs (\`$PAIRS_ARGS\`) on ringmq --shards 1 holding $LATENCY_COUNT retained messages:"
  echo
  echo '```'
  echo "alone:"
  scrape_latency "$hport" >"$run_dir/latency.h0"
  run_loadgen "$port" "$run_dir/latency.pairs.log" "${pairs_args[@]}"
  scrape_latency "$hport" >"$run_dir/latency.h1"
  latency_delta "$run_dir/latency.h0" "$run_dir/latency.h1"
  # The stream starts 3 s into the measured run (1 s warm-up + 2 s).
  ( sleep 3; timeout "$RUN_TIMEOUT" taskset -c "$LOADGEN_CORE" "$BENCH" --port "$port" \
      --count "$LATENCY_COUNT" --qos 0,1 --phase subscribe >"$run_dir/latency.stream.txt" 2>>"$run_dir/latency.bench.log" ) &
  streamer=$!
  STARTED_PIDS+=("$streamer")
  echo "during the retained streams:"
  run_loadgen "$port" "$run_dir/latency.pairs.log" "${pairs_args[@]}"
  scrape_latency "$hport" >"$run_dir/latency.h2"
  latency_delta "$run_dir/latency.h1" "$run_dir/latency.h2"
  wait "$streamer" || log "retained stream run failed (see $run_dir/latency.bench.log)"
  forget_pid "$streamer"
  echo '```'
  echo
  cat "$run_dir/latency.stream.txt"
  stop_pid "$BROKER_PID"
  forget_pid "$BROKER_PID"
fi
