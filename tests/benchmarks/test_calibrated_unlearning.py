"""Smoke run of benchmarks/calibrated_unlearning.py: the structure of its output only."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import statistics
import sys
from pathlib import Path
from types import ModuleType

import pytest

from lightning_unlearn.unlearning.calibration import BudgetCalibration

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "calibrated_unlearning.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("calibrated_unlearning", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_scale_structure(tmp_path: Path) -> None:
    bench = _load()
    results = bench.run("smoke", tmp_path)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["summary"] == json.loads(json.dumps(results["summary"]))
    assert (tmp_path / "summary.md").read_text().startswith("# Calibrated unlearning")
    assert (tmp_path / "seed0" / "calibration.json").is_file()
    for plot in ("forget_loss_vs_oracles.png", "steps_vs_budget.png"):
        assert (tmp_path / "plots" / plot).stat().st_size > 1000
    sc = bench.SCALES["smoke"]
    rows = results["rows"]
    assert [r["kind"] for r in rows] == list(bench.KINDS) * sc.seeds
    for row in rows:
        assert len(row["ids"]) == sc.size
        assert len(row["oracles"]) == sc.oracles
        assert [f["epochs"] for f in row["fixed"]] == list(bench.FIXED_EPOCHS)
        report = row["report"]
        assert report["budget"]["source"] == "calibration"
        assert report["recommendation"] in ("unlearn", "retrain")
        assert ("judge" in row) == report["ran"]
        assert ("retrain_needed" in row) == (report["recommendation"] == "retrain")
        assert row["escalated"] == (report["ran"] and report["recommendation"] == "retrain")
        assert isinstance(row["covered"], bool)
        assert len(row["oracle_loo_within"]) == sc.oracles
        assert set(row["original_judge"]) >= {"forget_loss", "all_within", "under_unlearned"}
        lo, hi = row["original_judge"]["forget_loss"]["band"]
        assert lo <= sum(o["forget"]["loss"] for o in row["oracles"]) / sc.oracles <= hi
    summary = results["summary"]
    assert summary["num_sets"] == len(rows)
    assert summary["num_ran"] + summary["num_sent_to_retrain"] == len(rows)
    assert summary["num_escalated_after_budget"] <= summary["num_ran"]
    assert 0.0 <= summary["interval_coverage"] <= 1.0
    assert set(summary["fixed_unlearns_all_high_p"]) == set(bench.FIXED_EPOCHS)
    # Every set's power is known and split the "looks OUT" verdicts exactly once.
    powers = [r["report"]["verification_before"]["power"] for r in rows]
    assert all(0.0 <= p <= 1.0 for p in powers)
    looks_out = [
        r for r in rows if "judge" in r and r["report"]["verification_after"].get("satisfied")
    ]
    assert summary["looks_out_high_power"] + summary["looks_out_low_power"] == len(looks_out)
    assert summary["looks_out_low_power_under_unlearned"] <= summary["looks_out_low_power"]
    assert summary["median_power"] == statistics.median(powers)


@pytest.mark.slow
def test_smoke_scale_with_sgld_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scale's method reaches the calibration and every request; `--sgld-sigma` its sigma."""
    bench = _load()
    sgld = dataclasses.replace(bench.SCALES["smoke"], method="sgld", seeds=1)
    monkeypatch.setitem(bench.SCALES, "smoke", sgld)
    results = bench.run("smoke", tmp_path, sgld_sigma=0.02)
    assert (results["settings"]["method"], results["settings"]["sgld_sigma"]) == ("sgld", 0.02)
    assert results["command"].endswith("--sgld-sigma 0.02")
    cal = BudgetCalibration.load(tmp_path / "seed0" / "calibration.json")
    assert cal.metadata["method"] == "sgld"
    assert cal.metadata["unlearning_kwargs"]["sgld_sigma"] == 0.02
    assert {row["report"]["method"] for row in results["rows"]} == {"sgld"}
