"""Smoke tests: the demo and the paper's experiment end to end at a tiny scale, on real data.

They check that the reports and plots are written and hold real numbers, not that the
experiment's conclusions hold (too small a scale for that; see docs/results_fashion_mnist.md).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from lightning_unlearn.cli import main
from lightning_unlearn.data import FASHION_MNIST_DIR

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"(?<![\w.])-?\d+\.\d+(?:e[+-]\d+)?", text)]


def _check_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 5000  # a real figure, not an empty canvas


def test_demo_tiny_scale_writes_report_with_numbers(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code = main([
        "demo", "--epochs", "2", "--forget-size", "8", "--n-bins", "4",
        "--methods", "finetune,sgld", "--budget-steps", "10", "--check-every", "5",
        "--output-dir", str(out), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_train"] == 1258
    assert len(summary["rows"]) == 4  # 2 forget sets x 2 methods
    for row in summary["rows"]:
        assert row["budget"] == 10
        assert row["steps"] == 10  # "observe" spends the budget
        for model in ("original", "unlearned", "oracle"):
            assert all(math.isfinite(v) for v in row[model].values())
        assert len(summary["trajectories"][f"{row['group']}, {row['method']}"]["steps"]) == 3
    low = next(r for r in summary["rows"] if r["group"] == "low P")
    high = next(r for r in summary["rows"] if r["group"] == "high P")
    assert high["P_forget"] > low["P_forget"]
    md = (out / "report.md").read_text()
    assert "| high P | sgld |" in md
    assert len(_numbers(md)) > 40
    assert "<table>" in (out / "report.html").read_text()
    for name in ("privacy_histogram", "forget_loss_trajectory", "mia_auroc_trajectory",
                 "budget_vs_steps"):  # fmt: skip
        _check_png(out / "plots" / f"{name}.png")
    assert (out / "model.ckpt").is_file()
    assert (out / "privacy_ledger.pt").is_file()
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(events) >= 5  # the fit run and the four unlearning runs


@pytest.mark.slow
@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST IDX files absent from {FASHION_MNIST_DIR}; "
    "run scripts/ensure_fashion_mnist.sh (apt-get install dataset-fashion-mnist)",
)
def test_reproduce_tiny_scale_writes_report_with_numbers(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    code = main([
        "reproduce", "--scale", "0.05", "--epochs", "1", "--max-steps", "6",
        "--check-every", "3", "--seeds", "1", "--n-bins", "5",
        "--output-dir", str(out), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    s = results["summary"]
    assert s["bins"] == [f"P bin {i}" for i in range(1, 6)]
    assert set(s["methods"]) == {"finetune", "sgld"}
    assert len(results["seeds"]) == 1
    rows = results["seeds"][0]["rows"]
    assert len(rows) == 5 + 5  # five P bins and the top group of five difficulty scores
    for row in rows:
        assert 0 <= row["methods"]["finetune"]["steps"] <= 6
        assert math.isfinite(row["barrier"])
    p_max = [r["P_max"] for r in rows if r["kind"] == "P bin"]
    assert p_max == sorted(p_max)  # bins are ordered by privacy loss
    assert set(s["spearman"]) == {"el2n", "grand", "forgetting_events", "low_confidence",
                                  "curvature"}  # fmt: skip
    assert all(-1.0 <= v[0] <= 1.0 for v in s["spearman"].values())
    md = (out / "report.md").read_text()
    assert "Claim 1" in md
    assert "Claim 3" in md
    assert len(_numbers(md)) > 30
    for name in ("privacy_histogram", "steps_vs_p_bin", "barrier_vs_p_bin", "p_vs_scores",
                 "hardest_group"):  # fmt: skip
        _check_png(out / "plots" / f"{name}.png")
