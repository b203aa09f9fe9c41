#!/usr/bin/env bash
# The README's demo command: set up .venv the same way scripts/test.sh does, then run the demo
# (scikit-learn's bundled digits, reference models and calibrated requests: one to two minutes
# on 2 CPU cores). Extra arguments go to the demo,
# e.g. scripts/demo.sh --methods [sgld] --output_dir outputs/demo_sgld
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh dev
.venv/bin/lightning-unlearn demo --output_dir outputs/demo "$@"
