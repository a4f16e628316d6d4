#!/usr/bin/env bash
# Tests of the Arrow Flight gateway (flight/, issue 10):
#   1. its unit tests (cargo test -p plasma-flight);
#   2. tests/flight: real stores and gateways (release builds) on loopback, driven by today's
#      pyarrow.flight from python/.venv (created here if missing, as python/run-tests.sh
#      makes it), with pyarrow 11's pyarrow.plasma (the repository's .venv) for the gets
#      that must come from an unchanged client. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

VENV11=$(scripts/setup-venv.sh)
PYVENV=${PLASMA_PY_VENV:-$REPO/python/.venv}
if ! "$PYVENV/bin/python" -c 'import pyarrow.flight, plasma_store, pytest' 2>/dev/null; then
  [ -x "$PYVENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$PYVENV"
  "$PYVENV/bin/python" -m pip --disable-pip-version-check -q install --upgrade pip
  "$PYVENV/bin/python" -m pip --disable-pip-version-check -q install --upgrade \
    "$REPO/python" pytest pandas pyarrow numpy
fi

cargo test --release -p plasma-flight
cargo build --release

export PLASMA_STORE_BIN="$REPO/target/release/plasma_store"
export PLASMA_FLIGHT_BIN="$REPO/target/release/plasma_flight"
export PLASMA_PYARROW11_PYTHON="$VENV11/bin/python"
cd tests/flight
exec "$PYVENV/bin/python" -m pytest -q -p no:cacheprovider -rs "$@" .
