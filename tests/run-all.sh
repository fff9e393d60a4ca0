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

step "tests"
cargo test --workspace --no-fail-fast

step "fuzz targets: instrumented build, in the background"
# The sanitizer build of every fuzz target (minutes, all dependencies again) runs
# niced beside the steps up to the fuzz step, which leave most of a core idle: the
# integration suites mostly wait on sockets, valgrind and lintian use one core. It
# changes what those steps measure in no way (bounded waits, instruction counts).
# Its own process group, so a failing step that ends this script ends it too.
fuzz_build_log=$(mktemp)
setsid nice -n 10 bash perf/fuzz.sh build > "$fuzz_build_log" 2>&1 &
fuzz_build_pid=$!
trap 'kill -TERM -- -"$fuzz_build_pid" 2>/dev/null || true' EXIT

step "integration suites again on the epoll backend"
# The step above runs them on the backend the broker picks (io_uring where the kernel
# allows it); RINGMQ_TEST_IO adds `--io epoll` to every broker that names no backend
# and fails a test whose broker did not report epoll.
# Tests that name their backend (uring_*/epoll_* in broker_smoke and rust_client) keep it.
RINGMQ_TEST_IO=epoll cargo test --no-fail-fast \
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
bash perf/budget.sh check

step "Debian package: build, contents, lintian, unit, extracted broker (tests/package.sh)"
# After the budget step: its release build of the library and dependencies is reused.
bash tests/package.sh

step "fuzz (bounded)"
fuzz_build_status=0
wait "$fuzz_build_pid" || fuzz_build_status=$?
trap - EXIT
if (( fuzz_build_status != 0 )); then
    cat "$fuzz_build_log"
    echo "run-all: the fuzz build failed (status $fuzz_build_status)" >&2
    exit 1
fi
tail -n 2 "$fuzz_build_log"
rm -f "$fuzz_build_log"
bash perf/fuzz.sh "${FUZZ_SECONDS:-45}"

step "all passed"
