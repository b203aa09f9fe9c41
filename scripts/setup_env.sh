#!/usr/bin/env bash
# Create (or reuse) .venv with the pinned CPU torch and the package in editable mode.
# Usage: scripts/setup_env.sh [EXTRAS]   (default extras: dev,docs)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev,docs}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
# torch is pinned here (not in pyproject.toml) so pip takes the CPU wheel on disk and no CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0 -e ".[${extras}]"
