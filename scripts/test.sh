#!/usr/bin/env bash
# Every test: installs what is missing, makes sure PostgreSQL is up, runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k fingerprint).
# Tests run in TEST_WORKERS processes (pytest-xdist, default 2: the cores of the
# machines this runs on), one test file per process at a time; -n 0 runs them in
# this process.

set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"

# PostgreSQL tests need the local server (127.0.0.1:5432, trust auth); start it if it is down.
if command -v pg_isready >/dev/null 2>&1 && ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        echo "==> Starting PostgreSQL"
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start || true
    fi
fi

# The stages import one way (pyproject.toml's import-linter contracts, docs/ARCHITECTURE.md).
echo "==> Checking imports between the stages (lint-imports)"
lint-imports --no-logo --no-cache

workers="${TEST_WORKERS:-2}"
if [ "$workers" != "0" ] && [ "$workers" != "1" ]; then
    # One OpenMP thread per worker: the workers already fill the cores, and torch's
    # threads of two workers spinning against each other encode several times slower.
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi
exec python -m pytest -n "$workers" --dist loadfile "$@"
