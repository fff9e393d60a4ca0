#!/usr/bin/env bash
# Wildcard-heavy routing (#21): 1M subscriptions (100k clients x 10 filters mixing
# exact, `+` and `#`, see perf/src/wildcard.rs) built in-process on 1 and 2 loops.
# Prints, per loop count, RSS per subscription and callgrind instructions per publish
# (five probe topics a round: exact, `+`-first, `+/+`, fleet-wide, region-wide).
#
#   bash perf/wildcard.sh                 # 100k clients, 1 and 2 loops, N=200 rounds
#   CLIENTS=20000 LOOPS="1" N=100 bash perf/wildcard.sh
#
# Counts, not seconds: callgrind counts only inside `measured_rounds` (the N rounds'
# publishes, --toggle-collect), divided by N x 5 publishes. Not 1 and 1+N runs as
# budget.sh does: every trie hashes its levels with a random key, so the set-up's count
# differs between two runs by more than the publishes cost. Each callgrind run builds
# the whole set under valgrind (minutes at 100k clients): not part of CI.
# SAVE_RESULTS=1 also writes what it prints to perf/results/<date>/wildcard-<time>/.
set -euo pipefail
source "$(dirname "$0")/common.sh"
cd "$ROOT"
CLIENTS="${CLIENTS:-100000}"
LOOPS="${LOOPS:-1 2}"
N="${N:-200}"
if [[ "${SAVE_RESULTS:-0}" == 1 ]]; then
  saved=$(results_dir wildcard "CLIENTS=$CLIENTS LOOPS=$LOOPS N=$N" "$@")
  exec > >(tee "$saved/output.txt")
fi
command -v valgrind >/dev/null || { echo "wildcard: valgrind is not installed (tests/install-deps.sh installs it)" >&2; exit 1; }
cargo build --release -q -p ringmq-perf --bin wildcard-routing
bin="${CARGO_TARGET_DIR:-target}/release/wildcard-routing"

ir() { # loops rounds -> instructions inside measured_rounds
  valgrind --tool=callgrind --callgrind-out-file=/dev/null --collect-atstart=no \
    --toggle-collect='wildcard_routing::measured_rounds' \
    "$bin" --loops "$1" --clients "$CLIENTS" publish "$2" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
for loops in $LOOPS; do
  "$bin" --loops "$loops" --clients "$CLIENTS" memory
  deliveries=$("$bin" --loops "$loops" --clients "$CLIENTS" publish "$N" | sed -n 's/.*deliveries=\([0-9]*\).*/\1/p')
  got=$(ir "$loops" "$N")
  [[ -n "$got" && -n "$deliveries" ]] && ((got > 0)) || { echo "wildcard: no count for $loops loops" >&2; exit 1; }
  per_round=$(( got / N ))
  echo "loops=$loops clients=$CLIENTS instructions_per_publish=$(( per_round / 5 )) deliveries_per_round=$(( deliveries / N )) instructions_per_delivery=$(( per_round * N / deliveries ))"
done
