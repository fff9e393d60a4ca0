#!/usr/bin/env bash
# Where sharing a payload (a segment of its own, tx::TxBuf::push_shared) starts to
# cost fewer instructions per delivery than copying it into each connection's buffer:
# callgrind counts for one PUBLISH to 16 subscribers, taken as chains as the worker
# takes them, at each payload size, shared and copied, QoS 0 and 1. Counts are per
# delivery (per subscriber). User-space instructions only: the kernel copies the
# payload into the socket either way (no SEND_ZC), so it is the same on both sides.
#
#   bash perf/share_threshold.sh                 # sizes 256 .. 16384
#   SIZES="1024 2048" QOS="q1" bash perf/share_threshold.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N=500
SUBSCRIBERS=16
SIZES="${SIZES:-256 512 1024 1536 2048 3072 4096 8192 16384}"
QOS="${QOS:-q0 q1}"

command -v valgrind >/dev/null || { echo "share_threshold: valgrind is not installed (tests/install-deps.sh installs it)" >&2; exit 1; }
cargo build --release -q -p ringmq-perf --bin callgrind-paths
bin="${CARGO_TARGET_DIR:-target}/release/callgrind-paths"

ir() { # path iterations -> total instructions
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
per_delivery() { # path -> instructions per delivery
  local one many
  one=$(ir "$1" 1); many=$(ir "$1" $((N + 1)))
  [[ -n "$one" && -n "$many" ]] || { echo "share_threshold: callgrind gave no count for $1" >&2; exit 1; }
  echo $(( (many - one) / N / SUBSCRIBERS ))
}

printf '%-4s %8s %10s %10s %8s\n' qos bytes copied shared winner
for q in $QOS; do
  for n in $SIZES; do
    c=$(per_delivery "share_${q}_${n}_copied")
    s=$(per_delivery "share_${q}_${n}_shared")
    w=copied; (( s < c )) && w=shared
    printf '%-4s %8s %10s %10s %8s\n' "$q" "$n" "$c" "$s" "$w"
  done
done
