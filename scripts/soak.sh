#!/usr/bin/env bash
# Soak test: the chaos run of tests/chaos.rs, long and wide. By default eight client
# processes for ten minutes do random create/write/seal/abort/get/release/delete/
# create_and_seal/batch/subscribe/evict work with the Rust client, and are SIGKILLed at
# random moments and replaced. Then, with every client gone, the same checks as the short
# run in `cargo test`: the store still runs; no reference and no unsealed object is left
# (a dead creator's objects are aborted); every object left is intact; allocated bytes are
# exactly the listed objects' data + metadata, and 0 after deleting them all; no file
# descriptor leaked. A worker that reads a corrupt object, loses its connection or is stuck
# in one call for 5 s fails the run. Not part of scripts/test.sh.
#
#   scripts/soak.sh                                  # 8 clients, 600 s, a fresh seed
#   SOAK_CLIENTS=16 SOAK_SECS=3600 scripts/soak.sh
#   SOAK_SEED=1234 scripts/soak.sh                   # replay a seed's kill schedule
#   SOAK_PROFILE=release scripts/soak.sh             # default: debug (overflow checks on)
#   PLASMA_STORE_BIN=/path/to/plasma-store-server scripts/soak.sh   # another daemon
#
# The seed fixes the kill schedule and each worker's choices; the interleaving of the
# processes is up to the scheduler, so a failure may need several runs to reproduce.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${SOAK_SECS:-600}
clients=${SOAK_CLIENTS:-8}
seed=${SOAK_SEED:-$(date +%s)}
profile=${SOAK_PROFILE:-debug}

case "$profile" in
  debug) build=() ;;
  release) build=(--release) ;;
  *) echo "soak.sh: SOAK_PROFILE must be debug or release, not '$profile'" >&2; exit 2 ;;
esac

echo "soak: $clients clients, $secs s, seed $seed, $profile build"
PLASMA_CHAOS_SECS=$secs PLASMA_CHAOS_CLIENTS=$clients PLASMA_CHAOS_SEED=$seed \
  cargo test ${build[@]+"${build[@]}"} --test chaos -- --nocapture --exact \
  clients_killed_at_random_leave_a_consistent_store
