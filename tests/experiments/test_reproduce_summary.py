"""The claims' statistics of the paper's experiment, on hand-made rows, against numpy/scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from lightning_unlearn.experiments.reproduce_summary import summarise


def _metrics(loss: float, acc: float) -> dict[str, object]:
    split = {"loss": loss, "accuracy": acc}
    return {"forget": split, "retain": split, "heldout": split, "forget_mia_auroc": 0.5}


def _row(kind: str, group: str, p: float, steps: int, barrier: float, gap: float) -> dict:  # type: ignore[type-arg]
    return {
        "kind": kind,
        "group": group,
        "P_max": p,
        "P_mean": p / 2,
        "barrier": barrier,
        "budget_theory": 10 * p,
        "original": _metrics(0.5, 0.9),
        "oracle": _metrics(0.5 + gap, 0.6),
        "methods": {"finetune": {"steps": steps, "censored": steps >= 300}},
    }


SEEDS = [
    {
        "spearman": {"el2n": 0.2},
        "test_acc": 0.8,
        "rows": [
            _row("P bin", "P bin 1", 1.0, 10, 0.1, 0.2),
            _row("P bin", "P bin 2", 4.0, 40, 0.3, 0.5),
            _row("P bin", "P bin 3", 9.0, 300, 0.2, 1.0),
            _row("heuristic", "top el2n", 5.0, 50, 0.4, 0.7),
        ],
    },
    {
        "spearman": {"el2n": 0.4},
        "test_acc": 0.9,
        "rows": [
            _row("P bin", "P bin 1", 2.0, 20, 0.1, 0.1),
            _row("P bin", "P bin 2", 3.0, 30, 0.5, 0.4),
            _row("P bin", "P bin 3", 8.0, 200, 0.6, 0.9),
            _row("heuristic", "top el2n", 6.0, 60, 0.3, 0.6),
        ],
    },
]


def test_summary_against_numpy_and_scipy() -> None:
    s = summarise({"seeds": SEEDS})
    assert s["bins"] == ["P bin 1", "P bin 2", "P bin 3"]
    assert s["methods"] == ["finetune"]
    top = s["by_bin"]["P bin 3"]
    assert top["steps"]["finetune"] == pytest.approx((250.0, np.std([300, 200], ddof=1)))
    assert top["P_max"] == pytest.approx((8.5, np.std([9.0, 8.0], ddof=1)))
    assert top["censored"] == {"finetune": 1}
    assert top["oracle_forget_acc"] == (pytest.approx(0.6), 0.0)
    pbin = [r for seed in SEEDS for r in seed["rows"] if r["kind"] == "P bin"]
    p = [r["P_max"] for r in pbin]
    rho_steps = spearmanr(p, [r["methods"]["finetune"]["steps"] for r in pbin]).statistic
    rho_barrier = spearmanr(p, [r["barrier"] for r in pbin]).statistic
    # correlation_table ranks in float32: a few float32 ulps of a correlation in [-1, 1]
    assert s["claim1"]["finetune"]["spearman_P_steps"] == pytest.approx(rho_steps, abs=1e-6)
    assert s["claim2"]["spearman_P_barrier"] == pytest.approx(rho_barrier, abs=1e-6)
    # claim 3: the top P bin beside the heuristic; loss gap = oracle - original forget loss
    assert list(s["claim3"]) == ["P bin 3", "top el2n"]
    assert s["claim3"]["top el2n"]["forget_gap"] == pytest.approx(
        (0.65, np.std([0.7, 0.6], ddof=1))
    )
    assert s["hardest_group"] == {"finetune": "P bin 3"}
    assert s["spearman"]["el2n"] == pytest.approx((0.3, np.std([0.2, 0.4], ddof=1)))
    assert s["test_acc"] == pytest.approx((0.85, np.std([0.8, 0.9], ddof=1)))


def test_a_diverged_oracle_shows_as_nan_not_a_number() -> None:
    seeds = [dict(SEEDS[0], rows=[dict(r) for r in SEEDS[0]["rows"]])]
    seeds[0]["rows"][-1]["oracle"] = _metrics(None, 0.1)  # type: ignore[arg-type]
    gap = summarise({"seeds": seeds})["claim3"]["top el2n"]["forget_gap"]
    assert np.isnan(gap[0])
