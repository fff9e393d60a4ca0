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

step "instruction-count budget (callgrind)"
bash perf/budget.sh check

step "fuzz (bounded)"
bash perf/fuzz.sh "${FUZZ_SECONDS:-60}"

step "all passed"
