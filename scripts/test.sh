#!/usr/bin/env bash
# Run the whole test suite: set up .venv with the test and slicer extras if needed, then pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh" "test,slicer"
cd "$ROOT"
echo "[test] python -m pytest $*"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
