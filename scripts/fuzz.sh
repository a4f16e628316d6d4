#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), one after another, or only the targets
# named after SECONDS. Needs a nightly toolchain and cargo-fuzz. The committed seeds in
# fuzz/corpus/ stay read-only: what libFuzzer finds goes to $FUZZ_WORK (default a scratch dir),
# and a crash leaves its input in fuzz/artifacts/<target>/ and fails the run. Turn every crash
# into a regression test (tests/protocol.rs) before fixing it.
#
#   scripts/fuzz.sh 60                      # about a minute each (what the test command does)
#   scripts/fuzz.sh 14400 decode_request    # four hours on one target
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
work=${FUZZ_WORK:-$(mktemp -d)}
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  echo "fuzzing $t for ${secs}s (new inputs in $work/$t)"
  cargo +nightly fuzz run "$t" "$work/$t" "fuzz/corpus/$t" -- -max_total_time="$secs" 2>&1 \
    | grep -E "^(#[0-9]+ *DONE|Done|==|SUMMARY|.*(crash|panicked|ERROR))" || true
  # grep hides libFuzzer's progress lines; the pipeline's status is cargo's.
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "fuzz target $t failed"; exit 1; }
done
