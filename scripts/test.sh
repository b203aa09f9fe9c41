#!/usr/bin/env bash
# The README's test command: set up .venv, then lint, type-check, test and build the docs (strict).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh dev,docs
scripts/ensure_fashion_mnist.sh || echo "warning: Fashion-MNIST not installed; its tests will say how to get it" >&2
export PYTHONHASHSEED=0 NO_MKDOCS_2_WARNING=1
echo "== ruff"; .venv/bin/ruff check .
echo "== ruff format --check"; .venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
echo "== mkdocs build --strict"; .venv/bin/mkdocs build --strict --quiet --site-dir site
echo "== pytest"; .venv/bin/python -m pytest "$@"
