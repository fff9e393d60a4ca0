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

step "build (debug binaries used by integration tests)"
cargo build --workspace --bins

step "tests"
cargo test --workspace --no-fail-fast

step "integration suites again on the epoll backend"
# The step above runs them on the backend the broker picks (io_uring where the kernel
# allows it); RINGMQ_TEST_IO adds `--io epoll` to every broker that names no backend
# and fails a test whose broker did not report epoll.
RINGMQ_TEST_IO=epoll cargo test --no-fail-fast \
    --test conformance_v311 --test conformance_v5 --test interop --test profile_interop \
    --test retained_stream

step "loom model checks (ring::spsc and ring::mesh loom_tests)"
# Its own target dir: --cfg loom in RUSTFLAGS would otherwise invalidate the main
# build. Debug profile: no LTO, so it builds faster than --release, and these
# models finish in seconds either way.
loom_log=$(mktemp)
RUSTFLAGS="${RUSTFLAGS:-} --cfg loom" \
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom" \
    cargo test --lib -- loom_tests 2>&1 | tee "$loom_log"
# A renamed module must not turn this step into a silent no-op.
grep -Eq '^test result: ok\. [1-9][0-9]* passed' "$loom_log" \
    || { echo "run-all: no loom test ran" >&2; exit 1; }
rm -f "$loom_log"

step "instruction-count budget (callgrind)"
bash perf/budget.sh check

step "fuzz (bounded)"
bash perf/fuzz.sh "${FUZZ_SECONDS:-60}"

step "all passed"
