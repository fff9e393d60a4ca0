#!/usr/bin/env bash
# The kernel's floor under #21's fan-out and pairs targets, no broker (kernel-floor,
# perf/src/kernel_floor.rs): one round of every cell, one JSON line each, with the
# load average and the vCPU steal over the cell beside it, and the kernel facts that
# set the floor (HZ, preemption model, EEVDF slice). Cores as compare.sh's: the
# sending/relay side on BROKER_CORE, the receiving/client side on LOADGEN_CORE.
#
#   PRIO=1 bash perf/kernel_floor.sh                 # every cell, 5 s each
#   PRIO=1 DURATION=5 bash perf/kernel_floor.sh fanout_uring pairs
#   KERNEL_FLOOR=/path/to/kernel-floor OUT_DIR=perf/results/... bash perf/kernel_floor.sh
#
# Cells: fanout_send, fanout_uring (1,000 sockets, 100 rounds/s, one sender thread,
# as N send syscalls or one io_uring submission of N SENDs), fanout_send_2,
# fanout_uring_2 (the same 1,000 over two sender threads, one per core: what two
# loops could buy), pairs and pairs_uring (1,000 pairs through one relay thread on
# epoll or on io_uring, 20k msg/s, one client thread pacing and reading).
set -euo pipefail
source "$(dirname "$0")/common.sh"

DURATION=${DURATION%s}
[[ $DURATION =~ ^[0-9]+$ ]] || die "DURATION=$DURATION: whole seconds"
BIN=${KERNEL_FLOOR:-$CARGO_TARGET_DIR/release/kernel-floor}
if [[ -z ${KERNEL_FLOOR:-} ]]; then
  cargo build --release -q -p ringmq-perf --bin kernel-floor || die "build failed"
fi
[[ -x $BIN ]] || die "no kernel-floor binary at $BIN"
OUT_DIR=${OUT_DIR:-$OUT/kernel-floor-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT_DIR"
ulimit -n "$(ulimit -Hn)"

cells=("$@")
[[ ${#cells[@]} -gt 0 ]] || cells=(fanout_send fanout_uring fanout_send_2 fanout_uring_2 pairs pairs_uring)

cell_args() {
  local both="$BROKER_CORE,$LOADGEN_CORE"
  case "$1" in
    fanout_send) echo "fanout --mode send --sender-cores $BROKER_CORE --receiver-cores $LOADGEN_CORE" ;;
    fanout_uring) echo "fanout --mode uring --sender-cores $BROKER_CORE --receiver-cores $LOADGEN_CORE" ;;
    fanout_send_2) echo "fanout --mode send --sender-cores $both --receiver-cores $LOADGEN_CORE" ;;
    fanout_uring_2) echo "fanout --mode uring --sender-cores $both --receiver-cores $LOADGEN_CORE" ;;
    pairs) echo "pairs --relay epoll --pairs 1000 --rate 20000 --relay-core $BROKER_CORE --client-core $LOADGEN_CORE" ;;
    pairs_uring) echo "pairs --relay uring --pairs 1000 --rate 20000 --relay-core $BROKER_CORE --client-core $LOADGEN_CORE" ;;
    *) return 1 ;;
  esac
}
for c in "${cells[@]}"; do cell_args "$c" >/dev/null || die "unknown cell '$c'"; done

# Steal: the 8th field of /proc/stat's cpu line, in USER_HZ ticks (1/100 s).
steal_ticks() { awk '/^cpu / { print $9 }' /proc/stat; }

{
  echo "date: $(date -u +%FT%TZ)"
  echo "kernel: $(uname -rv)"
  zcat /proc/config.gz 2>/dev/null | grep -E '^CONFIG_HZ=|^CONFIG_PREEMPT_(NONE|VOLUNTARY|DYNAMIC|LAZY)=|^CONFIG_PREEMPT=|IRQ_TIME_ACCOUNTING' || echo "no /proc/config.gz"
  dmesg 2>/dev/null | grep -m1 'Dynamic Preempt' || echo "Dynamic Preempt: (dmesg not readable)"
  sleep 0.5 & sleep 0.1
  echo "EEVDF slice of a new task: $(awk '/se.slice/ { print $3 / 1e6 " ms" }' "/proc/$!/sched")"
  wait
  echo "lo rps_cpus: $(cat /sys/class/net/lo/queues/rx-0/rps_cpus 2>/dev/null || echo '?')"
  echo "cores: $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
} >"$OUT_DIR/kernel.txt"
cat "$OUT_DIR/kernel.txt" >&2

for c in "${cells[@]}"; do
  read -r -a args <<<"$(cell_args "$c")"
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  s0=$(steal_ticks)
  line=$("${PRIO_CMD[@]}" "$BIN" "${args[@]}" --duration "$DURATION")
  s1=$(steal_ticks)
  steal_ms=$(( (s1 - s0) * 10 ))
  echo "{\"cell\":\"$c\",\"loadavg\":\"$load\",\"steal_ms\":$steal_ms,\"run\":$line}" | tee -a "$OUT_DIR/floor.jsonl"
done
log "raw results in $OUT_DIR"
