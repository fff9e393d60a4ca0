#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 60 s each), seeded from
# tests/fuzz/seeds/<target>/ (committed regression inputs and conformance vectors).
# A crash fails the run; the crashing input is left in tests/fuzz/artifacts/<target>/
# and belongs in tests/fuzz/seeds/<target>/ once fixed, so it stays a regression test.
# `perf/fuzz.sh build` only builds the targets (tests/run-all.sh does that early, in
# the background, and fuzzes later).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
build_only=false
if [[ "$seconds" == build ]]; then build_only=true; fi
[[ "$build_only" == true || "$seconds" =~ ^[1-9][0-9]*$ ]] \
  || { echo "fuzz: '$seconds' is neither a number of seconds per target nor 'build'" >&2; exit 2; }
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz is not installed (tests/install-deps.sh installs it)" >&2; exit 1; }
# libFuzzer instrumentation needs nightly flags; use a nightly toolchain when one is
# installed, otherwise let stable accept them.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then tc=(+nightly); else tc=(); export RUSTC_BOOTSTRAP=1; fi
fuzz_dir=tests/fuzz
# An assignment, not `for t in $(...)`: set -e stops here if the listing fails, and an
# empty list is refused, so a broken fuzz crate cannot pass by fuzzing nothing.
targets=$(cargo "${tc[@]}" fuzz list --fuzz-dir "$fuzz_dir")
[[ -n "$targets" ]] || { echo "fuzz: cargo fuzz list found no targets in $fuzz_dir" >&2; exit 1; }
# Build every target once, then fuzz FUZZ_JOBS targets at a time (default: one per
# core). Each libFuzzer process is single-threaded, so on CI's 2 cores two run side by
# side in the time of one; the build is shared.
cargo "${tc[@]}" fuzz build --fuzz-dir "$fuzz_dir"
if [[ "$build_only" == true ]]; then echo "fuzz: built $(echo $targets)"; exit 0; fi
jobs="${FUZZ_JOBS:-$(nproc)}"
logs=$(mktemp -d)
run_target() {
  local target=$1 corpus="$fuzz_dir/corpus/$1" seeds="$fuzz_dir/seeds/$1"
  mkdir -p "$corpus" "$seeds"
  cargo "${tc[@]}" fuzz run --fuzz-dir "$fuzz_dir" "$target" "$corpus" "$seeds" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 \
    > "$logs/$target.log" 2>&1
  echo $? > "$logs/$target.rc"
}
running=0
for target in $targets; do
  echo "fuzz: $target for ${seconds}s"
  run_target "$target" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then wait -n || true; running=$((running - 1)); fi
done
wait || true
failed=0
for target in $targets; do
  # Keep libFuzzer's summary (coverage, executions) and any crash report; the
  # fuzzer's own exit status decides the run.
  echo "fuzz: $target"
  grep -E -A4 '^#[0-9]+[[:space:]]+(INITED|DONE)|^Done |stat::|panicked|ERROR|SUMMARY|Test unit written' \
    "$logs/$target.log" || true
  status=$(cat "$logs/$target.rc" 2>/dev/null || echo missing)
  if [ "$status" != 0 ]; then
    echo "fuzz: $target FAILED (status $status); input in $fuzz_dir/artifacts/$target/"
    tail -n 40 "$logs/$target.log"
    failed=1
  fi
done
rm -rf "$logs"
exit "$failed"
