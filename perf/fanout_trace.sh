#!/usr/bin/env bash
# Where a fan-out's latency goes (#21): runs `loadgen fanout` (1 -> CLIENTS, 64 B, QoS 0,
# 100 msg/s open loop: 100k deliveries/s at 1,000) against ringmq with common.sh's
# pinning (PRIO=1 honoured), records TRACE_S seconds of scheduler, io_uring_enter and
# io_uring task-work tracepoints on every CPU from the middle of the run, and prints
# per burst (one PUBLISH's sends, submitted in one io_uring_enter) how long the
# broker's submit took, how long the broker was preempted inside it, when loadgen's
# subscriber side ran the first and the last copy's receive, how often it was woken
# and how long it waited for its core; then who held loadgen's and the broker's
# cores while they were runnable (perf/fanout_bursts.py).
#
#   PRIO=1 bash perf/fanout_trace.sh
#   PRIO=1 RINGMQ=base-bin/ringmq LOADGEN=base-bin/loadgen bash perf/fanout_trace.sh
#
# LOADGEN_ARGS are added to loadgen's. With loadgen and ringmq both at --rt-priority on
# a 2-core machine this script's own steps (finding loadgen's thread, switching perf
# on) waited 10+ s for a CPU at load average 28 and the trace missed the run.
#
# The tracepoints cost the traced threads ~4 us per copy (a burst of 1,000 takes
# ~10 ms traced against ~6 ms untraced): read the shares and the waits, not the
# absolute burst. 127.0.0.1 only; every process started here is stopped by PID.
set -euo pipefail
# Long enough for perf's start-up and this script's steps on a loaded machine.
DURATION="${DURATION:-20s}"
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CLIENTS="${CLIENTS:-1000}"
RATE="${RATE:-100}"
TRACE_S="${TRACE_S:-1}"
command -v perf >/dev/null || die "perf is not installed (linux-perf)"
build_release
run_dir="$OUT/fanout-trace-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run_dir"
ulimit -n "$(ulimit -Hn)"

# The thread of PID whose name is COMM (ringmq-shard-0, loadgen-0).
thread_of() {
  local pid=$1 comm=$2 t
  for t in /proc/"$pid"/task/*; do
    [[ "$(cat "$t/comm" 2>/dev/null)" == "$comm" ]] && { basename "$t"; return 0; }
  done
  return 1
}

# perf starts first, its events off, and is switched on and off through its control
# fifo: under load its start-up (a pass over every thread of the machine) takes
# seconds, and a `perf record -- sleep` started mid-run would trace after the run.
# With PRIO=1 it runs at the same priority as the two processes, or it answers late.
mkfifo "$run_dir/perf.ctl" "$run_dir/perf.ack"
exec {ctl_fd}<>"$run_dir/perf.ctl" {ack_fd}<>"$run_dir/perf.ack"
"${PRIO_CMD[@]}" perf record -a -D -1 --control "fifo:$run_dir/perf.ctl,$run_dir/perf.ack" -o "$run_dir/trace.data" \
  -e sched:sched_switch -e sched:sched_wakeup \
  -e syscalls:sys_enter_io_uring_enter -e syscalls:sys_exit_io_uring_enter \
  -e io_uring:io_uring_task_work_run -e io_uring:io_uring_local_work_run \
  -e irq_vectors:reschedule_entry >"$run_dir/perf.log" 2>&1 &
perf_pid=$!
STARTED_PIDS+=("$perf_pid")
# Tells perf CMD (enable, disable) and waits for its answer.
perf_ctl() {
  local answer
  echo "$1" >&"$ctl_fd"
  read -r -t 60 -u "$ack_fd" answer || die "perf did not answer '$1' within 60 s (see $run_dir/perf.log)"
}

# perf answers only once its start-up is done: wait for that before the run starts.
perf_ctl disable

port=$(free_port)
start_ringmq "$port" "$run_dir/broker.log" --http-listen none
read -r -a lg_extra <<<"${LOADGEN_ARGS:-}"
run_loadgen "$port" "$run_dir/loadgen.log" fanout --clients "$CLIENTS" --qos 0 --size 64 \
  --total-rate "$RATE" --open-loop --duration "$DURATION" "${lg_extra[@]}" >"$run_dir/loadgen.json" &
lg_job=$!
STARTED_PIDS+=("$lg_job")
broker_tid=$(thread_of "$BROKER_PID" ringmq-shard-0) || die "no ringmq-shard-0 thread in $BROKER_PID"
lg_tid=""
for _ in $(seq 100); do
  for p in $(pgrep -f -- "--port $port --json"); do
    lg_tid=$(thread_of "$p" loadgen-0) && break 2
  done
  sleep 0.1
done
[[ -n "$lg_tid" ]] || die "loadgen's worker thread did not appear"
# Connects and the warm-up take a few seconds; trace inside the measured phase.
sleep "${TRACE_AT_S:-5}"
grep -q . "/proc/$BROKER_PID/task/$broker_tid/comm" || die "broker thread $broker_tid is gone"
log "tracing $TRACE_S s: broker thread $broker_tid, loadgen thread $lg_tid (load $(cut -d' ' -f1-3 /proc/loadavg))"
perf_ctl enable
sleep "$TRACE_S"
perf_ctl disable
kill -0 "$lg_job" 2>/dev/null || log "warning: loadgen ended inside the trace window: raise DURATION"
wait "$lg_job" || log "loadgen exited with status $? (see $run_dir/loadgen.log)"
forget_pid "$lg_job"
stop_pid "$BROKER_PID"
forget_pid "$BROKER_PID"
stop_pid "$perf_pid"
forget_pid "$perf_pid"
perf script -i "$run_dir/trace.data" -F comm,tid,cpu,time,event,trace >"$run_dir/trace.txt" 2>/dev/null
python3 "$ROOT/perf/loadgen_json.py" fields "$run_dir/loadgen.json" \
  | awk '{ printf "loadgen (whole run): %s msg/s, p50 %s us, p99 %s us, lost %s\n", $1, $2, $3, $4 }'
python3 "$ROOT/perf/fanout_bursts.py" "$run_dir/trace.txt" "$broker_tid" "$lg_tid" \
  "${BROKER_CORE%%[-,]*}" "${LOADGEN_CORE%%[-,]*}" | tee "$run_dir/bursts.txt"
log "raw trace in $run_dir"
