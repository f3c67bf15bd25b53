#!/usr/bin/env bash
# Install what the tests need, fetch the real data (the end-to-end suite
# trains on a slice of it), then lint, type-check and run every test.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh train neural dev
export PATH="$PWD/.venv/bin:$PATH"

bookverse-train fetch --data-dir data

echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy models server training
echo "== pytest"
pytest -q -p no:cacheprovider "$@"
