#!/usr/bin/env bash
# scripts/fuzz.sh - run every fuzz target in fuzz/ for a bounded time each.
#
#   scripts/fuzz.sh                  # each target for FUZZ_SECONDS (60) seconds
#   FUZZ_SECONDS=600 scripts/fuzz.sh canonical_json
#
# cargo-fuzz builds with nightly-only flags; only the stable toolchain is installed, so
# RUSTC_BOOTSTRAP=1 lets stable accept them. The sanitizer is off (`-s none`): the
# code is safe Rust (`unsafe_code = "forbid"`), so what we look for is panics, wrong
# answers (each target asserts its invariants) and hangs, and ASan would only slow the
# build and the runs. Installs cargo-fuzz if it is missing. Prints, per target, the
# executions and whether it crashed; exits 1 if any target crashed (the input is kept
# under fuzz/artifacts/<target>/). The corpus grows in fuzz/corpus/<target>/ (not
# committed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${FUZZ_SECONDS:-60}
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-/var/cache/nebengjek/target}/fuzz}"
mkdir -p "$CARGO_TARGET_DIR"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

targets=("$@")
if (( ${#targets[@]} == 0 )); then
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

cargo fuzz build --fuzz-dir fuzz -s none

failed=0
for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  log=$(mktemp)
  rc=0
  cargo fuzz run --fuzz-dir fuzz -s none "$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  execs=$(sed -nE 's/^stat::number_of_executed_units:[[:space:]]*([0-9]+).*/\1/p' "$log" | tail -1)
  if (( rc )); then
    failed=1
    echo "$target: CRASHED after ${execs:-?} executions (exit $rc); last lines:"
    tail -30 "$log"
  else
    echo "$target: ${execs:-?} executions in ${seconds}s, no crash"
  fi
  rm -f "$log"
done
exit "$failed"
