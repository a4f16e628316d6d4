#!/usr/bin/env bash
# Benchmarks our plasma_store against the reference plasma-store-server (pyarrow 11):
#
#   bench/run.sh [--ours PATH] [--ref PATH] [--rounds N] [--quick] [--sections a,b]
#                [--json FILE] [--markdown FILE]
#
# Builds the daemon and the Rust driver (examples/bench_client.rs) in release mode, finds the
# Python venv with pyarrow 11 (or makes it with scripts/setup-venv.sh), then runs
# bench/bench.py with it. --ours defaults to target/release/plasma_store, --ref to the
# plasma-store-server.reference that setup-venv.sh keeps beside pyarrow. See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

# The venv: $PLASMA_VENV, else this checkout's .venv, else the main worktree's .venv when
# this is a linked git worktree, else a new one made here by setup-venv.sh.
if [ -z "${PLASMA_VENV:-}" ]; then
  PLASMA_VENV=$repo/.venv
  if [ ! -x "$PLASMA_VENV/bin/python" ]; then
    common=$(git rev-parse --path-format=absolute --git-common-dir 2>/dev/null || true)
    main=${common%/.git}
    if [ -n "$common" ] && [ "$main" != "$common" ] && [ -x "$main/.venv/bin/python" ]; then
      PLASMA_VENV=$main/.venv
    fi
  fi
fi
export PLASMA_VENV
venv=$(scripts/setup-venv.sh)
py=$venv/bin/python

ours=""
ref=""
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --ours) ours=$2; shift 2 ;;
    --ref) ref=$2; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done

cargo build --release --quiet --bin plasma_store --example bench_client
ours=${ours:-$repo/target/release/plasma_store}
if [ -z "$ref" ]; then
  ref=$("$py" -c 'import os, pyarrow; print(os.path.dirname(pyarrow.__file__))')/plasma-store-server.reference
fi
for exe in "$ours" "$ref"; do
  [ -x "$exe" ] || { echo "run.sh: $exe is not an executable" >&2; exit 1; }
done

exec "$py" -W ignore::DeprecationWarning bench/bench.py --ours "$ours" --ref "$ref" \
  --bench-client "$repo/target/release/examples/bench_client" "${args[@]}"
