"""The per-example OUT rule and its callback, with real reference models and Trainers."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import scipy.stats
import torch

from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.errors import IntegrityError
from lightning_unlearn.evaluation.functional.out_score import (
    HeldoutMap,
    flagged_tolerance,
    leave_one_out_zscores,
    out_gaussian,
)
from lightning_unlearn.integrity import CHECKSUM_KEY, save_verified
from lightning_unlearn.unlearning import (
    ForgetTrajectoryRecorder,
    UnlearningModule,
)
from lightning_unlearn.unlearning.calibrated_stopping import (
    CalibratedStopping,
    OutRule,
    ReferenceCoverageError,
)
from lightning_unlearn.unlearning.reference import ReferenceModelsError
from lightning_unlearn.unlearning.reference_stats import ReferenceStatistics
from tests.unlearning._calibration_support import QUIET, ReportingUnlearner, build_setup
from tests.unlearning._reference_support import small_digits


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    return build_setup()


def test_rule_rates_match_an_independent_computation(setup: dict[str, Any]) -> None:
    stats: ReferenceStatistics = setup["stats"]
    rule = OutRule.from_reference(stats, threshold=1.5)
    out_mask = ~stats.in_mask
    null = leave_one_out_zscores(stats.phi, out_mask)
    for j in range(stats.phi.shape[0]):
        z = null[j][out_mask[j]]
        assert rule.rates[j].item() == pytest.approx(float((z > 1.5).double().mean()), rel=1e-12)
    assert rule.tolerance(6) == flagged_tolerance(rule.rates, 6, 0.05)
    law = out_gaussian(stats.phi, out_mask)
    assert torch.equal(rule.law.mean, law.mean)


def test_rule_names_what_it_cannot_judge(setup: dict[str, Any]) -> None:
    stats: ReferenceStatistics = setup["stats"]
    rule = OutRule.from_reference(stats)
    with pytest.raises(ReferenceCoverageError, match=r"\[0, 120\)"):
        rule.check_ids([5, 120])
    mask = stats.in_mask.clone()
    mask[:, 7] = True  # example 7: IN for every model, no OUT law
    mask[0, 7] = False
    covered = OutRule.from_reference(ReferenceStatistics(stats.phi, stats.loss, mask))
    with pytest.raises(ReferenceCoverageError, match=r"\[7\].*fewer than 2"):
        covered.check_ids([1, 7])
    with pytest.raises(ReferenceModelsError, match="level"):
        OutRule.from_reference(stats, level=1.5)


class _HeldoutRecorder(ForgetTrajectoryRecorder):
    """A second recorder (of the held-out set) needs its own state key."""

    @property
    def state_key(self) -> str:
        return "heldout_recorder"


def _fit(setup: dict[str, Any], callbacks: list[Any], steps: int) -> UnlearningModule:
    pl.seed_everything(1, verbose=False)
    student = copy.deepcopy(setup["model"]).train()
    unlearner = UnlearningModule(student, method="finetune", lr=0.2, seed=1)
    pl.Trainer(max_steps=steps, callbacks=callbacks, **QUIET).fit(unlearner, datamodule=setup["dm"])
    return unlearner


def test_scores_every_step_match_an_independent_recording(setup: dict[str, Any]) -> None:
    rule = OutRule.from_reference(setup["stats"], heldout=setup["held"])
    observer = CalibratedStopping(rule, stop=False, keep_scores=True)
    recorder = ForgetTrajectoryRecorder()
    held_recorder = _HeldoutRecorder(forget_dataloader=setup["dm"].heldout_dataloader())
    _fit(setup, [observer, recorder, held_recorder], steps=12)
    traj, held = recorder.trajectory(), held_recorder.trajectory()
    assert [r["step"] for r in observer.trajectory] == traj.steps.tolist() == list(range(13))
    ref_values, _ = setup["held"]
    law = rule.law
    for t in range(13):
        # Independent: the formulas written out, the held-out map fitted by numpy / scipy.
        h_mean, h_std = ref_values.mean(0), rule.heldout_law.std  # type: ignore[union-attr]
        order = held.sample_ids.argsort()
        h_scale = (h_std * math.sqrt(1 + 1 / 6)).numpy()
        h_phi = held.phi[t][order].double().numpy()
        slope, intercept = np.polyfit(h_mean.numpy(), h_phi, 1, w=1.0 / h_scale)
        resid = (h_phi - intercept - slope * h_mean.numpy()) / h_scale
        c = float(scipy.stats.median_abs_deviation(resid, scale="normal"))
        ids = traj.sample_ids
        scale = c * law.std[ids] * (1 + 1 / law.n[ids].double()).sqrt()
        z = (traj.phi[t] - intercept - slope * law.mean[ids]) / scale
        assert observer.scores[t].tolist() == pytest.approx(z.tolist(), rel=1e-6, abs=1e-6)
        record = observer.trajectory[t]
        assert record["map"]["slope"] == pytest.approx(float(slope), rel=1e-6)
        assert record["flagged"] == int((z > rule.threshold).sum())
        assert record["mean_tolerance"] == rule.mean_tolerance(ids.numel())
        assert record["satisfied"] == (
            record["flagged"] <= rule.tolerance(ids.numel())
            and float(z.mean()) <= record["mean_tolerance"]
        )


def test_stops_at_the_first_complete_hold_window(setup: dict[str, Any]) -> None:
    # A threshold between the run's scores makes the rule flip during the run.
    rule = OutRule.from_reference(setup["stats"])
    observer = CalibratedStopping(rule, stop=False, keep_scores=True)
    _fit(setup, [observer], steps=30)
    scores = torch.stack(observer.scores)  # [31, E]
    hold = 2
    threshold = float(scores.max(dim=1).values.median())
    rule = OutRule(rule.law, rule.rates * 0, threshold=threshold)  # tolerance 0: all must pass
    satisfied = [bool((s <= threshold).all()) for s in scores]
    expected = next(
        (t for t in range(hold, 31) if all(satisfied[t - hold : t + 1])), None
    )  # brute force
    assert expected is not None, "the chosen threshold should be crossed within the run"
    stopper = CalibratedStopping(rule, hold=hold)
    unlearner = _fit(setup, [stopper], steps=30)
    assert stopper.stopped_step == expected
    assert stopper.arrival_step == expected - hold
    assert unlearner.result is not None
    assert unlearner.result.steps == expected
    assert unlearner.result.stop_reason == "calibrated"
    # state round trip; wrong version refused
    again = CalibratedStopping(rule, hold=hold)
    again.load_state_dict(stopper.state_dict())
    assert again.trajectory == stopper.trajectory
    assert again.stopped_step == stopper.stopped_step
    with pytest.raises(ValueError, match="version"):
        again.load_state_dict({"version": 99})


def test_refuses_a_data_module_of_another_size(setup: dict[str, Any], tmp_path: Path) -> None:
    rule = OutRule.from_reference(setup["stats"])
    small = ForgetRetainDataModule(IndexedDataset(small_digits(100)), [1, 2], batch_size=16)
    pl.seed_everything(0, verbose=False)
    unlearner = UnlearningModule(copy.deepcopy(setup["model"]), lr=0.1)
    with pytest.raises(ReferenceCoverageError, match=r"120 examples.*100"):
        pl.Trainer(max_steps=2, callbacks=[CalibratedStopping(rule)], **QUIET).fit(
            unlearner, datamodule=small
        )


def test_rule_file_round_trip_and_integrity(setup: dict[str, Any], tmp_path: Path) -> None:
    rule = OutRule.from_reference(setup["stats"], heldout=setup["held"], threshold=1.5)
    path = rule.save(tmp_path / "rule.pt")
    back = OutRule.load(path)
    assert back.threshold == 1.5
    assert back.metric == rule.metric
    for a, b in zip((*rule.law, rule.rates), (*back.law, back.rates), strict=True):
        assert torch.equal(a, b)
    assert back.heldout_ids is not None
    assert torch.equal(back.heldout_ids, setup["held"][1])
    assert rule.member is not None
    assert back.member is not None
    assert torch.equal(back.member.nan_to_num(7.0), rule.member.nan_to_num(7.0))
    ids = torch.tensor([1, 4, 9, 20])
    assert back.power(ids) == rule.power(ids)
    older = {
        key: v
        for key, v in torch.load(path, weights_only=True).items()
        if key not in ("member", CHECKSUM_KEY)
    }
    legacy = OutRule.load(save_verified(older, tmp_path / "legacy.pt"))  # before member draws
    assert legacy.member is None
    assert legacy.power(ids) is None
    payload = torch.load(path, weights_only=True)
    payload["rates"] = payload["rates"] * 0
    torch.save(payload, path)
    with pytest.raises(IntegrityError, match="checksum"):
        OutRule.load(path)


def _synthetic_stats(shift: float, k: int = 8, n: int = 80) -> ReferenceStatistics:
    """Members' values are the OUT law's plus ``shift`` (0: membership leaves no trace)."""
    g = torch.Generator().manual_seed(21)
    level = torch.linspace(-1.0, 3.0, n, dtype=torch.float64)
    in_mask = torch.zeros(k, n, dtype=torch.bool)
    for i in range(n):  # every example IN for exactly half of the models
        in_mask[torch.randperm(k, generator=g)[: k // 2], i] = True
    phi = level + torch.randn(k, n, generator=g, dtype=torch.float64) + shift * in_mask
    return ReferenceStatistics(phi, -phi, in_mask)


def test_power_tells_a_visible_membership_from_an_invisible_one() -> None:
    ids = torch.arange(0, 80, 8)  # 10 examples
    visible = OutRule.from_reference(_synthetic_stats(shift=6.0))
    invisible = OutRule.from_reference(_synthetic_stats(shift=0.0))
    p_visible, p_invisible = visible.power(ids), invisible.power(ids)
    assert p_visible is not None
    assert p_invisible is not None
    assert p_visible > 0.99
    # Members drawn like non-members: the rule rejects them about as often as it rejects a
    # never-trained-on set (each tolerance at level 0.05, so at most ~0.1; Monte Carlo slack).
    assert p_invisible < 0.2
    assert visible.verify(visible.law.mean[ids], ids)["power"] == p_visible
    assert dataclasses.replace(visible, member=None).power(ids) is None
    assert visible.member is not None
    blind = visible.member.clone()
    blind[:, 8] = math.nan  # example 8: no model trained on it, its members' scores unknown
    assert dataclasses.replace(visible, member=blind).power(ids) is None


@pytest.mark.ddp
def test_ddp_spawn_ranks_stop_together(setup: dict[str, Any], tmp_path: Path) -> None:
    # No example past the threshold, no mean criterion: satisfied at every step.
    rule = dataclasses.replace(OutRule.from_reference(setup["stats"]), threshold=50.0, null=None)
    stopper = CalibratedStopping(rule, hold=2, min_steps=4)
    unlearner = ReportingUnlearner(copy.deepcopy(setup["model"]), lr=0.1, seed=3)
    unlearner.report_dir = str(tmp_path)
    settings = {**QUIET, "accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"}
    settings["deterministic"] = False
    pl.Trainer(max_steps=20, callbacks=[stopper], **settings).fit(unlearner, datamodule=setup["dm"])
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        assert report["step"] == 4  # min_steps, the hold window already complete
        assert report["reason"] == "calibrated"
        assert report["checked_steps"] == [0, 1, 2, 3, 4]
    assert reports[0]["weights"] == reports[1]["weights"]  # identical replicas


def test_verify_names_examples_outside_the_heldout_range(setup: dict[str, Any]) -> None:
    rule = OutRule.from_reference(setup["stats"], heldout=setup["held"])
    ref_values, _ = setup["held"]
    lo, hi = float(ref_values.mean(0).min()), float(ref_values.mean(0).max())
    mu = rule.law.mean
    ids = torch.arange(rule.num_samples)[rule.law.n >= 2][:60]
    outside = [int(i) for i in ids if not lo <= float(mu[i]) <= hi]
    inside = [int(i) for i in ids if lo <= float(mu[i]) <= hi]
    assert outside, "the digits reference models should have examples beyond the test set's range"
    assert inside
    hmap = HeldoutMap(0.1, 1.1, 1.2)
    got = rule.verify(mu[ids], ids, hmap)
    assert got["extrapolated_ids"] == outside
    assert got["map"] == {"intercept": 0.1, "slope": 1.1, "scale": 1.2}
    assert rule.verify(mu[ids], ids)["extrapolated_ids"] == []  # no map, nothing extrapolated
