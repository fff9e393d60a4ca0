#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (default 60 s each), seeded from
# tests/fuzz/seeds/<target>/ (committed regression inputs and conformance vectors).
# A crash fails the run; the crashing input is left in tests/fuzz/artifacts/<target>/
# and belongs in tests/fuzz/seeds/<target>/ once fixed, so it stays a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz is not installed (tests/install-deps.sh installs it)" >&2; exit 1; }
# libFuzzer instrumentation needs nightly flags; use a nightly toolchain when one is
# installed, otherwise let stable accept them.
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then tc=(+nightly); else tc=(); export RUSTC_BOOTSTRAP=1; fi
fuzz_dir=tests/fuzz
# An assignment, not `for t in $(...)`: set -e stops here if the listing fails, and an
# empty list is refused, so a broken fuzz crate cannot pass by fuzzing nothing.
targets=$(cargo "${tc[@]}" fuzz list --fuzz-dir "$fuzz_dir")
[[ -n "$targets" ]] || { echo "fuzz: cargo fuzz list found no targets in $fuzz_dir" >&2; exit 1; }
for target in $targets; do
  corpus="$fuzz_dir/corpus/$target"; seeds="$fuzz_dir/seeds/$target"
  mkdir -p "$corpus" "$seeds"
  echo "fuzz: $target for ${seconds}s"
  # Keep libFuzzer's summary (coverage, executions) and any crash report; the
  # fuzzer's own exit status decides the run.
  set +e
  cargo "${tc[@]}" fuzz run --fuzz-dir "$fuzz_dir" "$target" "$corpus" "$seeds" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=8192 -print_final_stats=1 2>&1 |
    grep -E -A4 '^#[0-9]+[[:space:]]+(INITED|DONE)|^Done |stat::|panicked|ERROR|SUMMARY|Test unit written'
  status=${PIPESTATUS[0]}
  set -e
  if [ "$status" -ne 0 ]; then
    echo "fuzz: $target FAILED (status $status); input in $fuzz_dir/artifacts/$target/"
    exit "$status"
  fi
done
