#!/usr/bin/env bash
# What a password file and a 100-rule ACL cost plaintext QoS 0 fan-in (issue #12's
# "Cost of security on plaintext": <= 5%). ringmq alone, the same fan-in (100
# publishers -> 1 wildcard subscriber, 64 B) without authentication and with
# `--password-file` (one `ringmq passwd` user every client logs in as) plus
# `--acl-file` (100 rules: a deny, 98 rules for other topics, then the rule that
# grants the fan-in's topics, so every check walks the whole rule index), runs
# alternating so both see the same load. Reported per run: msg/s and broker CPU per
# delivered message (user + system, /proc/PID/stat), which a loaded machine disturbs
# less than throughput.
#
#   bash perf/auth_cost.sh
#   RUNS=3 DURATION=10s bash perf/auth_cost.sh
#
# Broker pinned to BROKER_CORE, loadgen to LOADGEN_CORE, 127.0.0.1 only; every
# process started here is stopped by PID. With SAVE_RESULTS=1 the table and JSON
# lines also go to the committed perf/results/<date>/auth_cost-<time>/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

RUNS="${RUNS:-3}"
build_release
run_dir="$OUT/auth_cost-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run_dir"
saved=""
if [[ "${SAVE_RESULTS:-0}" == 1 ]]; then
  saved=$(results_dir auth_cost "RUNS=$RUNS FANIN_WINDOW=$FANIN_WINDOW" "$@")
fi

passwd_file="$run_dir/passwd"
acl_file="$run_dir/acl"
"$RINGMQ" passwd add --create "$passwd_file" fleet --password fleet-secret \
  || die "ringmq passwd could not write $passwd_file"
{
  echo "user fleet"
  echo "topic deny fleet/+/+/secret"
  for i in $(seq 0 97); do echo "topic readwrite site-$i/+/telemetry"; done
  echo "topic readwrite lg/#"
} >"$acl_file"
[[ $(grep -c '^topic' "$acl_file") -eq 100 ]] || die "$acl_file does not hold 100 rules"

read -r -a fanin <<<"$(scenario_args fanin_qos0)"

# One run: prints "msg/s cpu_ns_per_msg" and appends a table row.
measure() {
  local mode=$1 port logfile json cpu0 cpu delivered msgs per_msg extra=() auth=()
  port=$(free_port)
  logfile="$run_dir/$mode-$2.log"
  json="$run_dir/$mode-$2.json"
  if [[ $mode == auth ]]; then
    extra=(--password-file "$passwd_file" --acl-file "$acl_file")
    auth=(--username fleet --password fleet-secret)
  else
    extra=(--allow-anonymous true)
  fi
  start_ringmq "$port" "$logfile" "${extra[@]}"
  sleep 1
  cpu0=$(cpu_ms "$BROKER_PID")
  run_loadgen "$port" "$logfile" "${fanin[@]}" "${auth[@]}" >"$json" \
    || log "loadgen exited with status $? (see $logfile)"
  cpu=$(( $(cpu_ms "$BROKER_PID") - cpu0 ))
  stop_pid "$BROKER_PID"
  forget_pid "$BROKER_PID"
  msgs=$(python3 "$ROOT/perf/loadgen_json.py" fields "$json" | awk '{ print $1 }')
  delivered=$(python3 "$ROOT/perf/loadgen_json.py" delivered "$json")
  ((delivered > 0)) || die "$mode run $2 delivered nothing (see $logfile)"
  per_msg=$(( cpu * 1000000 / delivered ))
  echo "| $mode | $2 | $msgs | $delivered | $cpu | $per_msg | $(cut -d' ' -f1 /proc/loadavg) |" | tee -a "$run_dir/table.md"
}

{
  echo "| mode | run | msg/s | delivered | broker CPU ms | broker CPU ns/msg | load |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
} | tee "$run_dir/table.md"
for r in $(seq "$RUNS"); do
  measure plain "$r"
  measure auth "$r"
done
log "raw results in $run_dir"
if [[ -n "$saved" ]]; then
  cp "$run_dir"/*.json "$run_dir/table.md" "$run_dir/acl" "$saved/"
  log "saved to ${saved#"$ROOT"/} (commit it with the figures it backs)"
fi
