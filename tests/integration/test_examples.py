"""The example scripts run as a user would run them and print real numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow
def test_unlearn_digits_example_runs_end_to_end() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "unlearn_digits.py")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    budget = re.search(r"budget (\d+) steps, used (\d+) \((\w+)\)", out)
    assert budget is not None, out
    assert 0 <= int(budget.group(2)) <= int(budget.group(1))
    aurocs = [float(v) for v in re.findall(r"MIA AUROC ([0-9.]+)", out)]
    assert len(aurocs) == 2
    assert all(0.0 <= a <= 1.0 for a in aurocs)
