"""Smoke run of benchmarks/study_p_informative.py: structure of its output and reproducibility."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from lightning_unlearn.accounting.rdp import per_step_rdp

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
BASELINES = {
    "P_default",
    "P_sweep",
    "train_loss",
    "sq_norm_sum",
    "el2n",
    "grand",
    "forgetting",
    "low_confidence",
    "curvature",
}
FINETUNE_OUTCOMES = {"set", "set_static", "example_ref", "example_ref_static", "example_oracle"}


def _load(name: str) -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the script's helper modules sit beside it
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_option_p_additive_and_holder_against_a_loop() -> None:
    train = _load("_study_train")
    norms = torch.tensor([[0.5, 2.0, 3.0], [1.0, 0.1, 4.0]], dtype=torch.float64)  # [E, N]
    q = 0.25
    got = train.option_p(norms, q, sigma=2.0, clip=2.5, order=4)
    holder = train.option_p(norms, q, sigma=2.0, clip=2.5, order=4, holder_p=2.0)
    for i in range(3):
        add = hol = 0.0
        for e in range(2):
            r = min(float(norms[e, i]), 2.5) / (2.0 * 2.5)
            add += float(per_step_rdp(torch.tensor([r], dtype=torch.float64), q, (4,))[0, 0]) / q
            hol += (
                float(per_step_rdp(torch.tensor([r], dtype=torch.float64), q, (8,))[0, 0])
                * (7 / (2 * 3))
                / q
            )
        assert got[i].item() == pytest.approx(add, rel=1e-12)
        assert holder[i].item() == pytest.approx(hol, rel=1e-12)


@pytest.mark.slow
def test_smoke_scale_structure_and_same_seed_same_numbers(tmp_path: Path) -> None:
    study = _load("study_p_informative")
    first = study.run("smoke", tmp_path / "a", seed0=0)
    second = study.run("smoke", tmp_path / "b", seed0=0, plot=False)
    on_disk = json.loads((tmp_path / "a" / "results.json").read_text())
    assert (tmp_path / "a" / "summary.md").read_text().startswith("# P-informativeness study")
    for png in ("spearman_scores", "option_study", "km_top_quartile", "barrier_vs_p"):
        assert (tmp_path / "a" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first.pop("timing")
    second.pop("timing")
    # same seed, same numbers (timings kept apart; compared as JSON text so NaN equals NaN)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert json.dumps(on_disk, sort_keys=True) == json.dumps(first, sort_keys=True)
    # an interrupted study resumes from the seeds' raw results: same numbers again
    resumed = study.run("smoke", tmp_path / "a", seed0=0, plot=False)
    resumed.pop("timing")
    assert json.dumps(resumed, sort_keys=True) == json.dumps(first, sort_keys=True)

    sc = study.SCALES["smoke"]
    summary = first["summary"]
    assert set(summary["outcomes"]) == set(sc.methods)
    assert set(summary["outcomes"]["finetune"]) == FINETUNE_OUTCOMES
    assert set(summary["outcomes"]["sgld"]) == {"set", "set_static", "example_oracle"}
    for outcome in summary["outcomes"]["finetune"].values():
        assert set(outcome["spearman"]) == BASELINES
        assert set(outcome["top_group"]) == BASELINES
        assert sorted(outcome["hardest_first"]) == sorted(BASELINES)
        for entry in outcome["spearman"].values():
            assert set(entry) == {"rho", "low", "high"}
    assert summary["outcomes"]["finetune"]["example_ref"]["n"] == sc.n_bins * sc.size * sc.seeds
    assert summary["outcomes"]["finetune"]["set"]["n"] == sc.n_bins * sc.seeds
    assert set(summary["option_study"]) == {"set", "example_ref", "example_oracle"}
    assert {"P_default", "P_sweep", "opt:sigma=med,C=none,a=8,holder2"} <= set(
        summary["option_study"]["example_ref"]
    )
    assert set(summary["barriers"]) == {"oracle_same_init", "oracle_other_init", *sc.methods}
    # the offline option grid uses the monitor's own formula: equal to its ledger
    assert summary["estimator_check"]["offline_vs_monitor_max_rel_diff"] < 1e-12
    assert summary["estimator_check"]["sweep_run_same_model"] is True  # the monitor observes
    (seed,) = first["seeds"]
    assert -1.0 <= seed["spearman_with_sq_norm_sum"]["P_default"] <= 1.0
    for row in seed["rows"]:
        assert set(row["methods"]) == set(sc.methods)
        assert row["barrier_oracle_same_init"] >= -1e-6
        for method, res in row["methods"].items():
            assert len(res["runs"]) == (sc.runs if method == "finetune" else sc.other_runs)
            for run in res["runs"]:
                out = run["set"]
                # a censored run is reported at its censoring time (cap - hold), not the cap
                if not out["arrived"]:
                    assert out["steps"] == sc.cap - sc.hold
                assert 0 <= out["steps"] <= sc.cap - sc.hold
                assert len(run["example_oracle"]["steps"]) == sc.size
                assert not math.isnan(run["barrier_unlearned"]) or run is not res["runs"][0]
