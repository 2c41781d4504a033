#!/usr/bin/env bash
# Every property test (Hypothesis), with many more examples than a test run draws and a
# random seed that is printed first and last, so a failure can be replayed:
#
#   scripts/fuzz.sh                         # seed from /dev/urandom, 20x the examples
#   FUZZ_SEED=1234 scripts/fuzz.sh          # replay that run
#   FUZZ_SCALE=100 scripts/fuzz.sh tests/test_fingerprint.py   # further, on one file
#
# CI does not run this: under CI the "ci" profile replays fixed examples
# (tests/hypothesis_profiles.py). Extra arguments go to pytest, through scripts/test.sh
# (TEST_WORKERS too). A failing example is also kept in .hypothesis/ and replayed first
# by the next run of that test.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seed="${FUZZ_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
scale="${FUZZ_SCALE:-20}"
case "$seed$scale" in *[!0-9]*) echo "error: FUZZ_SEED and FUZZ_SCALE must be whole numbers" >&2; exit 2 ;; esac
replay="FUZZ_SEED=$seed FUZZ_SCALE=$scale scripts/fuzz.sh${*:+ $*}"
echo "==> Fuzzing every property test: seed $seed, ${scale}x the examples (replay: $replay)"

status=0
HYPOTHESIS_EXAMPLES_SCALE="$scale" scripts/test.sh -m hypothesis \
    --hypothesis-profile=fuzz --hypothesis-seed="$seed" "$@" || status=$?
echo "==> Fuzz seed $seed, ${scale}x the examples: $([ "$status" = 0 ] && echo passed || echo "FAILED (exit $status); replay: $replay")"
exit "$status"
