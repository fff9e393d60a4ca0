#!/usr/bin/env bash
# Runs the same loadgen scenarios against ringmq and against Debian's mosquitto and
# prints a markdown table (for README) of msg/s, latency p50/p99/p99.9 and RSS per connection.
#
#   bash perf/compare.sh                      # every scenario, both brokers
#   bash perf/compare.sh fanin_qos0 idle_10k  # some scenarios
#   BROKERS=ringmq DURATION=5s bash perf/compare.sh pairs_20k
#   RINGMQ_ARGS="--rt-priority 50" bash perf/compare.sh pairs_20k   # extra ringmq flags
#   TRANSPORT=ws bash perf/compare.sh fanin_qos0   # both brokers over MQTT-over-WebSocket
#   TRANSPORT=tls bash perf/compare.sh fanin_qos0  # both brokers over mqtts (ECDSA P-256)
#   PRIO=1 bash perf/compare.sh fanout_1k_qos0_100k   # both processes at top priority (common.sh)
#
# Scenarios (issue #3 targets): fanin_qos0, fanin_qos1, fanin_qos1_5k (100 publishers
# -> 1 wildcard subscriber, 64 B; see common.sh), pairs_20k (1000 pub/sub pairs, 20k msg/s total, open loop),
# idle_10k (10k idle connections), idle_10k_sub (10k idle devices with one
# subscription each, via loadgen's fleet scenario with a 1 h telemetry interval),
# storm_10k and storm_100k (#21: that many clients with persistent sessions and one
# subscription each disconnect, then all reconnect at once; the row's msg/s is
# reconnects/s to the last CONNACK, p50/p99 the CONNACK latency, broker CPU the
# broker's over the reconnect alone (loadgen --broker-pid), per reconnect). Mosquitto
# needs a descriptor per connection and the hard limit here is 20,000: storm_100k
# runs against ringmq only (BROKER_SHARDS=2 BROKER_CORE=0-1 LOADGEN_CORE=0-1 for the
# issue's two loops). fanout_{1k,10k}_qos{0,1}_{100k,max} (#21): one publisher, 64 B, to
# 1,000 or 10,000 subscribers, paced at 100,000 deliveries/s or closed loop; msg/s is
# deliveries/s, and the p99.9 column is what the fan-out tail target reads.
#
# Each broker runs pinned to core $BROKER_CORE (default 0) with one shard, loadgen to
# core $LOADGEN_CORE (default 1). Every run starts a fresh broker. RSS per connection
# = (VmRSS with N connections established - VmRSS before) / N, from /proc/PID/status.
# Broker CPU per message = the broker's user + system CPU time over the loadgen run
# (connects included) / messages delivered, from /proc/PID/stat.
# Raw JSON lines and logs go to perf/out/compare-<time>/; with SAVE_RESULTS=1 the JSON
# lines, the table and the run's settings are also copied to the committed
# perf/results/<date>/compare-<time>/ (see perf/results/README.md).
set -euo pipefail
source "$(dirname "$0")/common.sh"

read -r -a brokers <<<"${BROKERS:-ringmq mosquitto}"
scenarios=("$@")
[[ ${#scenarios[@]} -gt 0 ]] || scenarios=("${ALL_SCENARIOS[@]}")
for s in "${scenarios[@]}"; do
  scenario_args "$s" >/dev/null || die "unknown scenario '$s' (known: ${ALL_SCENARIOS[*]})"
done

# Both brokers get the same queue limits, so neither drops first because of a
# smaller default. Queue: messages per client beyond the in-flight window (ringmq's
# default is 1000, mosquitto's 1000; raised so the fan-in scenarios measure the
# brokers rather than their drop policy). In-flight: ringmq's default max_inflight.
MAX_QUEUED=${MAX_QUEUED:-10000}
MAX_INFLIGHT=${MAX_INFLIGHT:-1024}
# Mosquitto does not bound queued bytes by default; ringmq does (1 MiB), which would
# cut its queue below MAX_QUEUED messages.
RINGMQ_QUEUED_BYTES=$((64 * 1024 * 1024))

ensure_mosquitto() {
  command -v mosquitto >/dev/null && return 0
  log "installing Debian's mosquitto"
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mosquitto; } >/dev/null \
    || die "apt-get install mosquitto failed"
}

# With TRANSPORT=ws, Mosquitto 2.0.11 also gets an unused plain listener: with only
# websockets listeners it exits with "Unable to start any listening sockets".
start_mosquitto() {
  local port=$1 logfile=$2 conf
  conf="$run_dir/mosquitto-$port.conf"
  cat >"$conf" <<EOF
$([[ "$TRANSPORT" == ws ]] && echo "listener $(free_port) 127.0.0.1")
listener $port 127.0.0.1
$([[ "$TRANSPORT" == ws ]] && echo "protocol websockets")
$([[ "$TRANSPORT" == tls ]] && printf 'certfile %s\nkeyfile %s' "$TLS_CERT" "$TLS_KEY")
allow_anonymous true
set_tcp_nodelay true
max_queued_messages $MAX_QUEUED
max_inflight_messages $MAX_INFLIGHT
max_connections -1
persistence false
log_dest stderr
log_type error
log_type warning
EOF
  # Started as root, mosquitto would switch to user "mosquitto"; stay who we are.
  if [[ $(id -u) -eq 0 ]]; then echo "user root" >>"$conf"; fi
  "${PRIO_CMD[@]}" taskset -c "$BROKER_CORE" mosquitto -c "$conf" >"$logfile" 2>&1 &
  BROKER_PID=$!
  STARTED_PIDS+=("$BROKER_PID")
  wait_listening "$port" "$BROKER_PID"
}

# Runs one scenario against one broker; appends a markdown row to $rows.
run_one() {
  local broker=$1 scenario=$2 port logfile json conns base_kb rss_kb_n per_conn="-" args cpu0
  if [[ $broker == mosquitto && $scenario == storm_100k ]] && (( $(ulimit -Hn) < 100100 )); then
    log "$scenario on mosquitto: skipped, it needs a descriptor per connection (hard limit $(ulimit -Hn))"
    rows+=("| $scenario | $broker | not run: fd limit $(ulimit -Hn) | - | - | - | - | - | - | - | - |")
    return 0
  fi
  port=$(free_port)
  logfile="$run_dir/$scenario-$broker.loadgen.log"
  json="$run_dir/$scenario-$broker.json"
  read -r -a args <<<"$(scenario_args "$scenario")"
  case "$broker" in
    ringmq) start_ringmq "$port" "$run_dir/$scenario-$broker.broker.log" \
              --max-queued-messages "$MAX_QUEUED" --max-queued-bytes "$RINGMQ_QUEUED_BYTES" \
              --max-inflight "$MAX_INFLIGHT" ;;
    mosquitto) start_mosquitto "$port" "$run_dir/$scenario-$broker.broker.log" ;;
  esac
  sleep 1
  base_kb=$(rss_kb "$BROKER_PID")
  cpu0=$(cpu_ms "$BROKER_PID")
  conns=$(scenario_connections "$scenario")
  log "$scenario on $broker (port $port, pid $BROKER_PID, RSS ${base_kb} KiB idle)"
  if ((conns > 0)); then
    # Idle scenarios: read RSS while every connection is established.
    run_loadgen "$port" "$logfile" "${args[@]}" >"$json" &
    local lg=$! established=0
    STARTED_PIDS+=("$lg")
    for _ in $(seq 600); do
      established=$(established_on "$port")
      ((established >= conns)) && break
      kill -0 "$lg" 2>/dev/null || break
      sleep 0.1
    done
    if ((established >= conns)); then
      sleep 1 # let the broker finish handling the last CONNECT/SUBSCRIBEs
      rss_kb_n=$(rss_kb "$BROKER_PID")
      per_conn=$(( (rss_kb_n - base_kb) * 1024 / conns ))
      log "  $established connections: RSS ${rss_kb_n} KiB -> $per_conn B per connection"
    else
      log "  only $established of $conns connections established; no RSS figure"
    fi
    wait "$lg" || log "  loadgen exited with status $? (see $logfile)"
    forget_pid "$lg"
  else
    [[ $scenario == storm_* ]] && args+=(--broker-pid "$BROKER_PID")
    run_loadgen "$port" "$logfile" "${args[@]}" >"$json" \
      || log "  loadgen exited with status $? (see $logfile)"
  fi
  local cpu=$(( $(cpu_ms "$BROKER_PID") - cpu0 )) delivered per_msg="-"
  stop_pid "$BROKER_PID"
  forget_pid "$BROKER_PID"
  local msgs p50 p99 p999 lost sat
  if [[ $scenario == storm_* ]]; then
    local rate secs present cpu_s
    read -r rate p50 p99 secs present cpu_s sat < <(python3 "$ROOT/perf/loadgen_json.py" storm "$json")
    log "  reconnect: $secs s to the last CONNACK, $present sessions present, broker CPU $cpu_s s"
    [[ $cpu_s != - ]] && cpu=$(python3 -c "print(round($cpu_s * 1000))") \
      && per_msg=$(python3 -c "print(round($cpu_s * 1e9 / max(1, ${rate%%/*} * $secs)))")
    rows+=("| $scenario | $broker | $rate reconnects/s, $secs s, $present sessions present | $p50 | $p99 | - | - | - | $sat | $cpu | $per_msg |")
    return 0
  fi
  read -r msgs p50 p99 lost sat < <(python3 "$ROOT/perf/loadgen_json.py" fields "$json")
  delivered=$(python3 "$ROOT/perf/loadgen_json.py" delivered "$json")
  p999=$(python3 "$ROOT/perf/loadgen_json.py" p999 "$json")
  ((delivered > 0)) && per_msg=$(( cpu * 1000000 / delivered ))
  rows+=("| $scenario | $broker | $msgs | $p50 | $p99 | $p999 | $per_conn | $lost | $sat | $cpu | $per_msg |")
}

build_release
[[ " ${brokers[*]} " == *" mosquitto "* ]] && ensure_mosquitto
run_dir="$OUT/compare-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run_dir"
# Thousands of sockets per broker; mosquitto needs one fd each.
ulimit -n "$(ulimit -Hn)"

saved=""
if [[ "${SAVE_RESULTS:-0}" == 1 ]]; then
  saved=$(results_dir compare "BROKERS=${brokers[*]} MAX_QUEUED=$MAX_QUEUED MAX_INFLIGHT=$MAX_INFLIGHT RINGMQ_QUEUED_BYTES=$RINGMQ_QUEUED_BYTES IDLE_CLIENTS=$IDLE_CLIENTS" "$@")
fi

rows=()
for s in "${scenarios[@]}"; do
  for b in "${brokers[@]}"; do run_one "$b" "$s"; done
done

{
  echo "Measured $(date -u +%Y-%m-%d) on $(nproc) cores ($(uname -r)), broker on core $BROKER_CORE, loadgen on core $LOADGEN_CORE, $DURATION per run${RINGMQ_ARGS:+, ringmq $RINGMQ_ARGS}; mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}')."
  echo
  echo "| scenario | broker | msg/s | p50 µs | p99 µs | p99.9 µs | RSS/conn B | lost | loadgen saturated | broker CPU ms | broker CPU ns/msg |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"
  printf '%s\n' "${rows[@]}"
} | tee "$run_dir/table.md"
log "raw results in $run_dir"
if [[ -n "$saved" ]]; then
  cp "$run_dir"/*.json "$run_dir/table.md" "$saved/"
  log "saved to ${saved#"$ROOT"/} (commit it with the figures it backs)"
fi
