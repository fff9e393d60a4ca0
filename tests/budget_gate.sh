#!/usr/bin/env bash
# The callgrind gate's own failures (issue #15): perf/budget.sh must fail, saying why,
# when its driver lists no paths, when a budgeted path is not measured, when a
# measured path has no budget, and when a path costs more than its budget; and pass
# when they agree. A stand-in driver (a shell loop) and budget file replace the
# release build (BUDGET_BIN, BUDGET_FILE), so this needs valgrind and a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null \
    || { echo "budget_gate: valgrind is not installed (tests/install-deps.sh installs it)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# `--list` prints $LISTED; `PATH N` runs N iterations of a loop.
cat > "$tmp/driver" <<'DRIVER'
#!/bin/sh
if [ "$1" = --list ]; then
    for p in $LISTED; do echo "$p"; done
    exit 0
fi
i=0
while [ "$i" -lt "$2" ]; do i=$((i + 1)); done
DRIVER
chmod +x "$tmp/driver"

failures=0
# expect RC MESSAGE LISTED BUDGET-LINES...: runs the gate, checks its status and stderr.
expect() {
    local want_rc=$1 want_msg=$2 listed=$3
    shift 3
    printf '%s\n' "# stand-in budget" "$@" > "$tmp/budget.txt"
    local rc=0
    LISTED=$listed BUDGET_BIN="$tmp/driver" BUDGET_FILE="$tmp/budget.txt" \
        bash perf/budget.sh check > "$tmp/out" 2> "$tmp/err" || rc=$?
    if [[ $rc -ne $want_rc ]] || ! grep -qF -- "$want_msg" "$tmp/err" "$tmp/out"; then
        echo "budget_gate: listed '$listed', budget '$*': want exit $want_rc and '$want_msg'," \
            "got exit $rc:" >&2
        cat "$tmp/out" "$tmp/err" >&2
        failures=$((failures + 1))
    else
        echo "budget_gate: ok: listed '$listed', budget '$*' -> exit $rc ($want_msg)"
    fi
}

expect 1 "named no paths" "" "a 1000000"
expect 1 "b has a budget in" "a" "a 1000000" "b 1000000"
expect 1 "no budget for path b" "a b" "a 1000000"
expect 1 "a regressed" "a" "a 1"
expect 0 "1000000" "a" "a 1000000"
(( failures == 0 )) || { echo "budget_gate: $failures case(s) failed" >&2; exit 1; }
