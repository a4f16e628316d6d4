#!/usr/bin/env bash
# Runs pyarrow 11's own Plasma test suite, unmodified, against the daemon given as $1 (default:
# our debug build). pyarrow starts `<pyarrow>/plasma-store-server`, so that name is pointed at
# the daemon under test for the run. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(scripts/setup-venv.sh)
SP=$("$VENV/bin/python" -c 'import os, pyarrow; print(os.path.dirname(pyarrow.__file__))')
BIN=$(realpath "${1:-target/debug/plasma_store}")
shift || true
ln -sfn "$BIN" "$SP/plasma-store-server"
trap 'ln -sfn plasma-store-server.reference "$SP/plasma-store-server"' EXIT
echo "pyarrow test_plasma.py against $BIN"
# Run from a scratch directory so that no conftest or cache of ours is picked up, with the
# suite's own directory as pytest's rootdir: otherwise, when the scratch directory and the venv
# share an ancestor (both under /tmp, say), pytest 9 also loads pyarrow 11's top-level
# conftest.py, whose hook signature it no longer accepts.
cd "$(mktemp -d)"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$SP/tests" \
  "$SP/tests/test_plasma.py" "$@"
