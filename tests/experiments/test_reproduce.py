"""The paper's experiment end to end at a tiny scale on real Fashion-MNIST, called from Python.

It checks that the report and plots are written and hold real numbers (not that the claims
hold: too small a scale for that; see docs/results_fashion_mnist.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lightning_unlearn.data import FASHION_MNIST_DIR
from lightning_unlearn.experiments import run_reproduce
from tests.experiments.test_demo import check_png, numbers


@pytest.mark.slow
@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST IDX files absent from {FASHION_MNIST_DIR}; "
    "run scripts/ensure_fashion_mnist.sh (apt-get install dataset-fashion-mnist)",
)
def test_reproduce_tiny_scale_writes_report_with_numbers(tmp_path: Path) -> None:
    out = tmp_path / "rep"
    returned = run_reproduce(
        out, scale=0.05, epochs=1, max_steps=6, check_every=3, seeds=1, n_bins=5, progress=False
    )
    results = json.loads((out / "results.json").read_text())
    assert results["summary"] == json.loads(json.dumps(returned["summary"]))
    assert results["command"].startswith("run_reproduce(output_dir=")
    s = results["summary"]
    assert s["bins"] == [f"P bin {i}" for i in range(1, 6)]
    assert set(s["methods"]) == {"finetune", "sgld"}
    assert len(results["seeds"]) == 1
    rows = results["seeds"][0]["rows"]
    assert len(rows) == 5 + 5  # five P bins and the top group of five difficulty scores
    for row in rows:
        assert 0 <= row["methods"]["finetune"]["steps"] <= 6
        assert math.isfinite(row["barrier"])
        assert math.isfinite(row["oracle"]["forget"]["loss"])
    p_max = [r["P_max"] for r in rows if r["kind"] == "P bin"]
    assert p_max == sorted(p_max)  # bins are ordered by privacy loss
    assert set(s["spearman"]) == {"el2n", "grand", "forgetting_events", "low_confidence",
                                  "curvature"}  # fmt: skip
    assert all(-1.0 <= v[0] <= 1.0 for v in s["spearman"].values())
    md = (out / "report.md").read_text()
    assert "Claim 1" in md
    assert "Claim 3" in md
    assert len(numbers(md)) > 30
    for name in ("privacy_histogram", "steps_vs_p_bin", "barrier_vs_p_bin", "p_vs_scores",
                 "hardest_group"):  # fmt: skip
        check_png(out / "plots" / f"{name}.png")
