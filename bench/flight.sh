#!/usr/bin/env bash
# Benchmark of the Flight gateway: a 1 GiB remote get over loopback next to a plain TCP copy,
# and small-object remote get latency next to a local get (bench/flight.py). Builds the
# release binaries, uses pyarrow 11 from scripts/setup-venv.sh's venv. Extra arguments go to
# bench/flight.py (--rounds N, --small N).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(scripts/setup-venv.sh)
cargo build --release --quiet
exec "$venv/bin/python" -W ignore::DeprecationWarning bench/flight.py \
  --store target/release/plasma_store --flight target/release/plasma_flight "$@"
