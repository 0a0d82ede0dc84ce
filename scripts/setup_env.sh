#!/usr/bin/env bash
# Create .venv (if missing) and install CardiacDiffusionLib into it, torch==2.13.0 first so pip
# takes the local CPU wheel instead of pulling a CUDA build (elsewhere: set
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu). Idempotent: re-installs only when
# pyproject.toml, setup.py or the requested extras changed. Usage: scripts/setup_env.sh [EXTRAS]
# (PYTHON=python3.X picks the interpreter for a new .venv; 3.10 or newer)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
EXTRAS="${1:-}"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  if ! command -v "$PYTHON" >/dev/null; then
    echo "[setup] error: '$PYTHON' not found; install Python 3.10 or newer, or name it: PYTHON=python3.11" >&2
    exit 2
  fi
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "[setup] error: CardiacDiffusionLib needs Python 3.10 or newer; '$PYTHON' is" \
      "$("$PYTHON" --version 2>&1): run with PYTHON=python3.11 (or another 3.10+)" >&2
    exit 2
  fi
  echo "[setup] creating virtual environment $VENV with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
want="$(cat "$ROOT/pyproject.toml" "$ROOT/setup.py" | sha256sum | cut -c1-16)-${EXTRAS}"
stamp="$VENV/.cardiac-diffusion-installed"
if [ -f "$stamp" ] && grep -qx -- "$want" "$stamp"; then
  echo "[setup] $VENV is up to date (extras: ${EXTRAS:-none})"
  exit 0
fi
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[setup] installing torch==2.13.0 (CPU build) first${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL}"
  "${PIP[@]}" install -q torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
spec="$ROOT"
[ -n "$EXTRAS" ] && spec="$ROOT[$EXTRAS]"
echo "[setup] installing CardiacDiffusionLib${EXTRAS:+[$EXTRAS]} and its dependencies"
"${PIP[@]}" install -q -e "$spec"
# one line per extras set installed against these packaging files (a change starts afresh)
if [ -f "$stamp" ] && grep -q -- "^${want%%-*}-" "$stamp"; then echo "$want" >>"$stamp"; else echo "$want" >"$stamp"; fi
echo "[setup] done"
