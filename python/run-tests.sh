#!/usr/bin/env bash
# Builds and tests the Python client from a clean checkout:
#   1. creates the venv python/.venv (override: PLASMA_PY_VENV; interpreter: PYTHON, default
#      python3), builds this package's wheel once (pip, with maturin) and installs it with the
#      newest pytest, pandas, pyarrow, numpy and prometheus_client; the same wheel goes into
#      a fresh venv in tests/test_install.py (PLASMA_WHEEL);
#   2. builds the daemon (cargo build at the repository root);
#   3. runs python/tests with PLASMA_STORE_BIN pointing at it. Extra arguments go to pytest.
# The cross-client tests use pyarrow 11 from the repository's .venv (scripts/setup-venv.sh)
# or $PLASMA_PYARROW11_PYTHON, and are skipped without it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
VENV=${PLASMA_PY_VENV:-$HERE/.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT
"${PIP[@]}" wheel --no-deps -w "$WHEELS" "$HERE"
WHEEL=$(ls "$WHEELS"/plasma_store-*.whl)
"${PIP[@]}" install --force-reinstall --no-deps "$WHEEL"
"${PIP[@]}" install --upgrade "$WHEEL" pytest pandas pyarrow numpy prometheus_client
export PLASMA_WHEEL="$WHEEL"
# Run Python from tests/: from python/ the source tree (without the compiled extension) would
# shadow the installed package.
cd "$HERE/tests"
"$VENV/bin/python" -c 'import sys, numpy, pyarrow, plasma_store
print("python", sys.version.split()[0], "pyarrow", pyarrow.__version__, "numpy",
      numpy.__version__, "plasma_store", plasma_store.__version__)'

(cd "$REPO" && cargo build --quiet --bin plasma_store)

export PLASMA_STORE_BIN="$REPO/target/debug/plasma_store"
export RUST_LOG=${RUST_LOG:-warn}

cd "$HERE/tests"
"$VENV/bin/python" -m pytest -rs "$@"
