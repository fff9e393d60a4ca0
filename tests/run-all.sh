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
# commands above do not reach it.
cargo fmt --all --check --manifest-path tests/fuzz/Cargo.toml
cargo clippy --manifest-path tests/fuzz/Cargo.toml --all-targets -- -D warnings

step "build (debug binaries used by integration tests)"
cargo build --workspace --bins

step "tests"
cargo test --workspace --no-fail-fast

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
# Its own target dir: --cfg loom in RUSTFLAGS would otherwise invalidate the main
# build. Debug profile: no LTO, so it builds faster than --release, and these
# models finish in seconds either way.
loom_log=$(mktemp)
RUSTFLAGS="${RUSTFLAGS:-} --cfg loom" \
    CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/loom" \
    cargo test --lib -- loom_tests 2>&1 | tee "$loom_log"
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
bash perf/fuzz.sh "${FUZZ_SECONDS:-45}"

step "all passed"
