#!/usr/bin/env bash
# Instruction-count budget for the broker's hot paths, measured with callgrind.
#
#   bash perf/budget.sh check    # fail if any path costs >5% more than perf/budget.txt
#   bash perf/budget.sh update   # rewrite perf/budget.txt from this build (commit it
#                                # together with the change that moved it, saying why)
#   bash perf/budget.sh explain PATH [TOP]   # where PATH's instructions per op go,
#                                # by function (inlined code counts in its caller)
#
# Each path runs twice under callgrind, with 1 and 1+N iterations; the difference
# divided by N is instructions per operation. Counts, not seconds: deterministic for
# a given binary and input whatever else the machine is doing.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-check}"
N=2000
TOLERANCE_PCT=5
# BUDGET_BIN and BUDGET_FILE stand in for the driver and the budget in
# tests/budget_gate.sh, which checks that this script fails when it should.
budget_file=${BUDGET_FILE:-perf/budget.txt}

command -v valgrind >/dev/null || { echo "budget: valgrind is not installed (tests/install-deps.sh installs it)" >&2; exit 1; }
if [[ -n "${BUDGET_BIN:-}" ]]; then
  bin=$BUDGET_BIN
else
  cargo build --release -q -p ringmq-perf --bin callgrind-paths
  bin="${CARGO_TARGET_DIR:-target}/release/callgrind-paths"
fi

ir() { # path iterations -> total instructions
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

if [[ "$mode" == explain ]]; then
  path="${2:?usage: budget.sh explain PATH [TOP]}"
  tmp=$(mktemp -d)
  valgrind --tool=callgrind --callgrind-out-file="$tmp/one" "$bin" "$path" 1 >/dev/null 2>&1
  valgrind --tool=callgrind --callgrind-out-file="$tmp/many" "$bin" "$path" $((N + 1)) >/dev/null 2>&1
  echo "$path: instructions per operation by function (N=$N)"
  python3 perf/attribute.py "$tmp/one" "$tmp/many" "$N" "${3:-25}"
  rm -rf "$tmp"
  exit 0
fi

# An assignment, not `for p in $(...)`: set -e stops here if --list fails, and an
# empty list is refused below, so a broken driver cannot pass by measuring nothing.
paths=$("$bin" --list)
[[ -n "$paths" ]] || { echo "budget: $bin --list named no paths" >&2; exit 1; }

declare -A measured
for path in $paths; do
  one=$(ir "$path" 1); many=$(ir "$path" $((N + 1)))
  [[ -n "$one" && -n "$many" ]] || { echo "budget: callgrind gave no count for $path" >&2; exit 1; }
  measured[$path]=$(( (many - one) / N ))
done

if [[ "$mode" == update ]]; then
  {
    echo "# instructions per operation (callgrind Ir), checked by perf/budget.sh with ${TOLERANCE_PCT}% tolerance"
    for path in $paths; do echo "$path ${measured[$path]}"; done
  } > "$budget_file"
  cat "$budget_file"
  exit 0
fi

[[ -f "$budget_file" ]] || { echo "budget: $budget_file is missing; run 'bash perf/budget.sh update'" >&2; exit 1; }
fail=0
# A budgeted path the driver no longer measures (renamed or dropped) would otherwise
# stop being checked without anyone noticing.
budgeted=$(awk '!/^#/ && NF { print $1 }' "$budget_file")
[[ -n "$budgeted" ]] || { echo "budget: $budget_file holds no budgets" >&2; exit 1; }
for path in $budgeted; do
  [[ -n "${measured[$path]:-}" ]] || {
    echo "budget: $path has a budget in $budget_file but $bin --list does not measure it" >&2; fail=1; }
done
printf '%-28s %10s %10s %8s\n' path budget measured change
for path in $paths; do
  budget=$(awk -v p="$path" '$1 == p { print $2 }' "$budget_file")
  got=${measured[$path]}
  if [[ -z "$budget" ]]; then
    echo "budget: no budget for path $path in $budget_file" >&2; fail=1; continue
  fi
  change=$(awk -v g="$got" -v b="$budget" 'BEGIN { printf "%+.1f%%", (g - b) * 100 / b }')
  printf '%-28s %10s %10s %8s\n' "$path" "$budget" "$got" "$change"
  if (( got * 100 > budget * (100 + TOLERANCE_PCT) )); then
    echo "budget: $path regressed: $got instructions/op > $budget + ${TOLERANCE_PCT}%" >&2; fail=1
  fi
done
exit $fail
