#!/usr/bin/env bash
# Restart-to-first-CONNACK with the recovery data set of issue #13, printed, never
# asserted: builds DATA_DIR with `store-dataset` (SESSIONS persistent sessions with
# one subscription each + MESSAGES queued QoS 1 64 B messages over LOOPS loops, as
# FORM snapshot|log) unless it already holds one, then starts ringmq on it RUNS times
# and times each start to the first CONNACK of a persistent session that is told
# its session is present (perf/first_connack.py). Prints the broker's CPU time up to
# that CONNACK (steadier than wall time on a loaded machine), its RSS, its own
# recovery line (records replayed, ms) and the load average beside each figure, and
# (perf/sched_wait.py) how much of the broker threads' time up to that CONNACK was
# spent on a CPU and how much runnable, waiting for one: on the shared machine the
# second is where the wall time goes.
#
#   perf/recovery.sh                       # 2 loops, 100k sessions, 1M messages, snapshot
#   FORM=log RUNS=3 perf/recovery.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

LOOPS="${LOOPS:-2}"
SESSIONS="${SESSIONS:-100000}"
MESSAGES="${MESSAGES:-1000000}"
FORM="${FORM:-snapshot}"
RUNS="${RUNS:-3}"
PORT="${PORT:-18830}"
IO="${IO:-uring}"
DATA_DIR="${DATA_DIR:-$OUT/recovery-$FORM-$LOOPS-$SESSIONS-$MESSAGES}"
DATASET="$CARGO_TARGET_DIR/release/store-dataset"

if [[ $PREBUILT == 0 ]]; then
  (cd "$ROOT" && cargo build --release -q --bin ringmq -p ringmq -p ringmq-perf --bin store-dataset)
fi
[[ -x "$RINGMQ" ]] || die "$RINGMQ missing"
command -v python3 >/dev/null || die "python3 missing"

if [[ ! -e "$DATA_DIR/VERSION" ]]; then
  log "building the data set in $DATA_DIR"
  [[ -x "$DATASET" ]] || die "$DATASET missing (cargo build --release -p ringmq-perf --bin store-dataset)"
  "$DATASET" "$DATA_DIR" "$LOOPS" "$SESSIONS" "$MESSAGES" "$FORM"
fi
# Each start replays the same state: a start writes to the log (new segment,
# the probe's session), so every run starts from a copy of the pristine set.
WORK="$DATA_DIR.run"

for run in $(seq 1 "$RUNS"); do
  rm -rf "$WORK"
  cp -a "$DATA_DIR" "$WORK"
  sync
  logf="$OUT/recovery-run-$run.log"
  load="$(cut -d' ' -f1-3 /proc/loadavg)"
  t0="$(date +%s.%N)"
  "$RINGMQ" --shards "$LOOPS" --io "$IO" --listen "127.0.0.1:$PORT" --http-listen none --data-dir "$WORK" \
    --durability process >"$logf" 2>&1 &
  pid=$!
  STARTED_PIDS+=("$pid")
  python3 "$ROOT/perf/sched_wait.py" "$pid" >"$OUT/recovery-sched-$run.txt" &
  sampler=$!
  out="$(python3 "$ROOT/perf/first_connack.py" 127.0.0.1 "$PORT" device-000001 120 "$t0")" \
    || { stop_pid "$pid"; tail -5 "$logf" >&2; die "no CONNACK (run $run)"; }
  kill -TERM "$sampler"
  wait "$sampler" || true
  sched="$(cat "$OUT/recovery-sched-$run.txt")"
  cpu="$(cpu_ms "$pid")"
  rss_kb="$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")"
  stop_pid "$pid"
  rec="$(grep -o 'recovered .*durability [a-z]*' "$logf" | head -1 || true)"
  echo "run $run: $out; broker CPU ${cpu} ms (user+sys, all threads); $sched; RSS ${rss_kb} kB; broker: $rec; load $load"
done
rm -rf "$WORK"
