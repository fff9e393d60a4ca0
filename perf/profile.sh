#!/usr/bin/env bash
# Profiles the broker under a loadgen scenario: perf record call graph -> flamegraph
# SVG, and perf stat counters.
#
#   bash perf/profile.sh fanin_qos0 [pairs_20k ...]
#   CALLGRAPH=fp FREQ=999 DURATION=20s bash perf/profile.sh fanin_qos1
#
# Scenarios: the ones perf/compare.sh knows (fanin_qos0, fanin_qos1, fanin_qos1_5k, pairs_20k,
# idle_10k, idle_10k_sub). For each: a fresh `ringmq --shards 1` pinned to core
# $BROKER_CORE (default 0), loadgen pinned to $LOADGEN_CORE (default 1),
# `perf record` and `perf stat` attached to the broker for the whole loadgen run.
#
# Output in perf/out/: <scenario>.perf.data, <scenario>.svg (flamegraph),
# <scenario>.folded (collapsed stacks), <scenario>.stat.txt, <scenario>.json (loadgen),
# <scenario>.broker.log, <scenario>.loadgen.log (loadgen's table and perf messages).
#
# CALLGRAPH: dwarf (default; works with the release profile's line tables, no frame
# pointers needed) or fp (needs RUSTFLAGS="-C force-frame-pointers=yes" builds).
set -euo pipefail
source "$(dirname "$0")/common.sh"

CALLGRAPH="${CALLGRAPH:-dwarf}"
FREQ="${FREQ:-499}"
[[ $# -gt 0 ]] || die "usage: perf/profile.sh SCENARIO... (known: ${ALL_SCENARIOS[*]})"
for s in "$@"; do
  scenario_args "$s" >/dev/null || die "unknown scenario '$s' (known: ${ALL_SCENARIOS[*]})"
done

ensure_perf() {
  if ! command -v perf >/dev/null; then
    log "perf missing: installing linux-perf"
    apt-get install -y linux-perf >/dev/null || die "apt-get install linux-perf failed"
  fi
  perf --version >&2
  perf stat -e task-clock true >/dev/null 2>&1 \
    || die "perf stat does not work here (perf_event_paranoid=$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null))"
}

# Hardware counters (cycles, instructions) are often missing in VMs and containers;
# then only software counters are reported and sampling uses cpu-clock.
HW=0
check_hw_counters() {
  if perf stat -x, -e instructions true 2>&1 | grep -q '^[0-9]'; then
    HW=1
    log "hardware counters: supported"
  else
    HW=0
    log "hardware counters: NOT SUPPORTED here (perf stat -e instructions reports <not supported>);"
    log "  perf stat reports software counters only, perf record samples cpu-clock"
  fi
}

ensure_inferno() {
  if command -v inferno-flamegraph >/dev/null && command -v inferno-collapse-perf >/dev/null; then
    return 0
  fi
  local root="$OUT/tools"
  if [[ ! -x "$root/bin/inferno-flamegraph" ]]; then
    log "installing inferno into $root"
    cargo install inferno --locked --root "$root" -q || die "cargo install inferno failed"
  fi
  export PATH="$root/bin:$PATH"
}

profile_one() {
  local s=$1 port logfile args stat_events rec_event rec_pid stat_pid
  port=$(free_port)
  # Separate files: the broker and loadgen would overwrite each other's lines.
  logfile="$OUT/$s.loadgen.log"
  : >"$logfile"
  read -r -a args <<<"$(scenario_args "$s")"
  start_ringmq "$port" "$OUT/$s.broker.log"
  log "$s: ringmq pid $BROKER_PID on core $BROKER_CORE, port $port"
  if ((HW)); then
    stat_events=cycles,instructions,task-clock,context-switches,cpu-migrations,page-faults
    rec_event=cycles
  else
    stat_events=task-clock,context-switches,cpu-migrations,page-faults
    rec_event=cpu-clock
  fi
  perf record -q -e "$rec_event" -F "$FREQ" --call-graph "$CALLGRAPH" -p "$BROKER_PID" \
    -o "$OUT/$s.perf.data" 2>>"$logfile" &
  rec_pid=$!
  STARTED_PIDS+=("$rec_pid")
  perf stat -e "$stat_events" -p "$BROKER_PID" -o "$OUT/$s.stat.txt" 2>>"$logfile" &
  stat_pid=$!
  STARTED_PIDS+=("$stat_pid")
  sleep 0.5 # perf attached before the first connection
  run_loadgen "$port" "$logfile" "${args[@]}" >"$OUT/$s.json" \
    || log "$s: loadgen exited with status $? (see $logfile)"
  stop_pid "$stat_pid"; forget_pid "$stat_pid"
  stop_pid "$rec_pid"; forget_pid "$rec_pid"
  stop_pid "$BROKER_PID"; forget_pid "$BROKER_PID"

  perf script -i "$OUT/$s.perf.data" 2>>"$logfile" | inferno-collapse-perf >"$OUT/$s.folded"
  inferno-flamegraph --title "ringmq $s ($rec_event, $CALLGRAPH)" <"$OUT/$s.folded" >"$OUT/$s.svg"
  echo "== $s"
  if ((HW == 0)); then echo "(hardware counters not supported on this machine: software counters only)"; fi
  sed -n '/Performance counter stats/,$p' "$OUT/$s.stat.txt"
  python3 "$ROOT/perf/loadgen_json.py" summary "$OUT/$s.json"
  echo "flamegraph: $OUT/$s.svg  (top of the profile: perf report -i $OUT/$s.perf.data --no-children)"
}

ensure_perf
check_hw_counters
ensure_inferno
build_release
for s in "$@"; do profile_one "$s"; done
