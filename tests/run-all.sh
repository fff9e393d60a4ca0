#!/usr/bin/env bash
# The whole test suite, from a clean checkout on a fresh Debian machine:
# installs what the tests need, then format/lint, builds, runs every test tier,
# checks the instruction-count budget and runs the fuzzers for a bounded time.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "install test dependencies"
bash tests/install-deps.sh

step "format and lint"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The fuzz crate is its own workspace (cargo fuzz builds it alone), so the two
# commands above do not reach it. Checked in the main target dir: its lock file pins
# the same versions, so the dependencies checked above are reused, not checked
# again in tests/fuzz/target (its own lint build is not cargo fuzz's, which is
# instrumented and in a directory of its own anyway).
cargo fmt --all --check --manifest-path tests/fuzz/Cargo.toml
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}" \
    cargo clippy --manifest-path tests/fuzz/Cargo.toml --all-targets -- -D warnings

step "build (debug binaries used by integration tests)"
cargo build --workspace --bins

step "release and fuzz builds, in the background"
# Two builds run niced beside the test steps, which leave most of a core idle (the
# integration suites mostly wait on sockets): first the release build that the budget
# and package steps use (one selection for both, so the second finds it done), then
# the sanitizer build of every fuzz target (all dependencies again). They change what
# the tests check in no way (bounded waits, instruction counts). A release build that
# fails here fails again, with its errors, in the budget step's own cargo build; the
# fuzz build's status is checked before the fuzz step. Their own process group, so a
# failing step that ends this script ends them too.
release_selection=(-p ringmq --bin ringmq -p loadgen --bin loadgen -p ringmq-perf --bin callgrind-paths)
background_log=$(mktemp)
setsid nice -n 10 bash -c '
    cargo build --release -q "$@" || echo "run-all: background release build failed; the budget step builds again"
    exec bash perf/fuzz.sh build' _ "${release_selection[@]}" > "$background_log" 2>&1 &
background_pid=$!
trap 'kill -TERM -- -"$background_pid" 2>/dev/null || true' EXIT

step "tests"
cargo test --workspace --no-fail-fast

step "integration suites again on the epoll backend"
# The step above runs them on the backend the broker picks (io_uring where the kernel
# allows it); RINGMQ_TEST_IO adds `--io epoll` to every broker that names no backend
# and fails a test whose broker did not report epoll.
# Tests that name their backend (uring_*/epoll_* in broker_smoke and rust_client) keep it.
# `--workspace`, as the step above: without it cargo unifies dependency features for
# the ringmq package alone and compiles ringmq and part of its dependencies again.
RINGMQ_TEST_IO=epoll cargo test --workspace --no-fail-fast \
    --test conformance_v311 --test conformance_v5 --test interop --test profile_interop \
    --test broker_smoke --test hostile_socket --test rust_client --test metrics_http \
    --test retained_stream --test memory_limits --test tls --test websocket --test mqttsn --test bridge --test durability

step "loom model checks (ring::spsc and ring::mesh loom_tests)"
# `--cfg loom` reaches the ringmq lib test only (`cargo rustc`, not RUSTFLAGS): every
# dependency is the one the test step built, so this builds one crate instead of all
# of them again in a target dir of their own. The binary takes the lib test's file
# name; the next `cargo test --lib` builds that again (after this step in CI: nothing).
loom_log=$(mktemp)
loom_bin=$(cargo rustc --lib --profile test --message-format=json-render-diagnostics -- --cfg loom \
    | python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"): print(m["executable"])')
[[ -x "$loom_bin" ]] || { echo "run-all: cargo rustc built no loom test binary (got '$loom_bin')" >&2; exit 1; }
"$loom_bin" loom_tests 2>&1 | tee "$loom_log"
# A renamed module or a test lost behind a cfg must not pass unnoticed: each module
# must run at least the loom tests it holds today (raise a count when adding one).
for want in ring::spsc::loom_tests=3 ring::mesh::loom_tests=3; do
    module=${want%=*} expected=${want#*=}
    ran=$(grep -Ec "^test ${module}::[A-Za-z0-9_]+ \.\.\. ok\$" "$loom_log" || true)
    (( ran >= expected )) \
        || { echo "run-all: $module ran $ran loom tests, expected $expected" >&2; exit 1; }
    echo "run-all: $module ran $ran loom tests (expected $expected)"
done
rm -f "$loom_log"

step "instruction-count budget (callgrind)"
# The gate's own failure cases first (a stand-in driver; seconds).
bash tests/budget_gate.sh
# The background build above is this selection: cargo waits for it if it still runs.
cargo build --release -q "${release_selection[@]}"
bash perf/budget.sh check

step "Debian package: build, contents, lintian, unit, extracted broker (tests/package.sh)"
# After the budget step: the release build above is reused.
bash tests/package.sh

step "fuzz (bounded)"
fuzz_build_status=0
wait "$background_pid" || fuzz_build_status=$?
trap - EXIT
if (( fuzz_build_status != 0 )); then
    cat "$background_log"
    echo "run-all: the fuzz build failed (status $fuzz_build_status)" >&2
    exit 1
fi
tail -n 2 "$background_log"
rm -f "$background_log"
bash perf/fuzz.sh "${FUZZ_SECONDS:-45}"

step "all passed"
