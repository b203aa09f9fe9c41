"""Smoke run of benchmarks/study_p_informative.py: structure of its output and reproducibility."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "study_p_informative.py"
SCORES = {"P_nominal", "P_clip1", "P_scaled", "train_loss", "sq_norm_sum"}


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("study_p_informative", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_scale_structure_and_same_seed_same_numbers(tmp_path: Path) -> None:
    study = _load()
    first = study.run("smoke", tmp_path / "a", seed0=0)
    second = study.run("smoke", tmp_path / "b", seed0=0)
    on_disk = json.loads((tmp_path / "a" / "results.json").read_text())
    assert (tmp_path / "a" / "summary.md").read_text().startswith("# First measurement")
    first.pop("timing")
    second.pop("timing")
    # same seed, same numbers (timings kept apart; compared as JSON text so NaN equals NaN)
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    assert json.dumps(on_disk, sort_keys=True) == json.dumps(first, sort_keys=True)

    sc = study.SCALES["smoke"]
    assert set(first["summary"]) == {"two_sided", "one_sided"}
    summary = first["summary"]["two_sided"]
    assert set(summary["per_set"]) == SCORES
    assert set(summary["per_example"]) == SCORES
    assert set(summary["top_quartile"]) == SCORES
    for entry in summary["per_example"].values():
        assert set(entry) == {"rho", "low", "high"}
    assert summary["num_sets"] == sc.n_bins * sc.seeds
    assert summary["num_examples"] == sc.n_bins * sc.size * sc.seeds
    assert 0.0 <= summary["example_runs_censored"] <= 1.0
    (seed,) = first["seeds"]
    assert seed["identical_models_across_configs"] is True  # the monitor only observes
    assert -1.0 <= seed["spearman_over_training_set"]["P_nominal"] <= 1.0
    for row in seed["rows"]:
        assert len(row["oracle_set_phi"]) == sc.oracles
        low, high, center = row["band"]
        assert low <= center <= high
        assert len(row["runs"]) == sc.runs
        for run in row["runs"]:
            for side in ("two_sided", "one_sided"):
                out = run[side]
                assert len(out["example_steps"]) == sc.size
                # a censored run is reported at its censoring time (cap - hold), not the cap
                if not out["set_arrived"]:
                    assert out["set_steps"] == sc.cap - sc.hold
                assert 0 <= out["set_steps"] <= sc.cap - sc.hold
            # one-sided arrival can only come earlier: its band contains the two-sided one
            assert run["one_sided"]["set_steps"] <= run["two_sided"]["set_steps"] or (
                not run["two_sided"]["set_arrived"]
            )
