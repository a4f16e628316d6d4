#!/usr/bin/env bash
# The `--persist` benchmark (bench/persist.py): hot path with and without --persist, and
# recovery of a million objects. Builds the release daemon and the Rust driver first.
#
#   bench/persist.sh [--rounds N] [--reps N] [--n OPS] [--objects N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin plasma_store --example bench_client
exec python3 bench/persist.py --ours target/release/plasma_store \
  --bench-client target/release/examples/bench_client "$@"
