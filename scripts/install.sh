#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the project with the extras named as
# arguments (default: train dev). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${*:-train dev}"
extras="${extras// /,}"
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "Python 3.11 or later is needed; $python_bin is" \
    "$("$python_bin" --version 2>&1 || echo missing). Set PYTHON=/path/to/python3.11." >&2
  exit 1
fi

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $("$python_bin" --version)"
  "$python_bin" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
echo "== installing bookverse-recommendations[$extras]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
