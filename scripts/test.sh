#!/usr/bin/env bash
# The whole test suite: the README's test command, and what .ci/run runs.
#
#   1. the committed FlatBuffers code is what flatc generates from schema/ (stale = failure);
#   2. cargo test: unit tests, protocol/golden tests, client and daemon integration tests
#      (against our plasma_store), systemd readiness, and plasmactl (a workspace member);
#   3. tests/client.rs again against the C++ reference daemon from pyarrow 11, which proves
#      that our encoding is the real one;
#   4. pyarrow 11's own test_plasma.py, unmodified, against our daemon;
#   5. the documentation walkthrough (tests/python) with the pyarrow 11 client;
#   6. the Python package's tests (python/run-tests.sh), newest pyarrow and numpy: the asyncio
#      client, the wheel in a fresh venv, the metrics page;
#   6b. the Flight gateway's tests (scripts/flight-tests.sh): two stores and two gateways on
#      loopback, pyarrow.flight and pyarrow 11 clients, the faults;
#   7. each fuzz target briefly, when a nightly toolchain and cargo-fuzz are present
#      (PLASMA_FUZZ_SECONDS per target, default 60; 0 skips).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n== %s\n' "$*"; }

VENV=$(scripts/setup-venv.sh)
SP=$("$VENV/bin/python" -c 'import os, pyarrow; print(os.path.dirname(pyarrow.__file__))')
REFERENCE="$SP/plasma-store-server.reference"
# Tests that compare with the reference daemon fail, rather than skip, if it is missing.
export PLASMA_REQUIRE_REFERENCE=1

step "generated FlatBuffers code is current"
FLATC="$VENV/bin/flatc" scripts/regen-flatbuffers.sh --check

step "cargo test (the daemon and plasmactl; the gateway's unit tests run in release with its own tests)"
cargo test -p plasma-store -p plasmactl --all-targets

step "tests/client.rs against the reference daemon ($REFERENCE)"
PLASMA_STORE_BIN="$REFERENCE" cargo test --test client

step "pyarrow 11 test_plasma.py against our daemon"
scripts/pyarrow-suite.sh target/debug/plasma_store -W ignore::DeprecationWarning

step "documentation walkthrough with the pyarrow 11 client"
PLASMA_STORE_BIN=target/debug/plasma_store "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
  -W ignore::DeprecationWarning tests/python

step "Python package (python/): newest pyarrow and numpy, and objects shared with pyarrow 11"
PLASMA_PYARROW11_PYTHON="$VENV/bin/python" python/run-tests.sh -q

step "Flight gateway (flight/): unit tests, then stores and gateways on loopback"
scripts/flight-tests.sh

secs=${PLASMA_FUZZ_SECONDS:-60}
if [ "$secs" != 0 ] && cargo +nightly --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then
  step "fuzz targets, ${secs}s each"
  scripts/fuzz.sh "$secs"
else
  step "fuzzing skipped (needs a nightly toolchain and cargo-fuzz)"
fi
printf '\nall tests passed\n'
