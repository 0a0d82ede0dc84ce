#!/usr/bin/env bash
# Quick start: set up .venv if needed, then run the demo into demo-output/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh" ""
echo "[demo] cardiac-diffusion demo --out demo-output $*"
cd "$ROOT"
exec "$ROOT/.venv/bin/cardiac-diffusion" demo --out demo-output "$@"
