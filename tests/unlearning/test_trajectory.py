"""Every-step recording of the forget set: equal to a brute-force re-run for each step count."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightning_unlearn.evaluation.functional import (
    MeasurementError,
    first_hold_step,
    tolerance_band,
)
from lightning_unlearn.unlearning import record_unlearning
from lightning_unlearn.unlearning.reference_stats import score_model

STEPS = 8
KW: dict[str, Any] = {"lr": 0.5, "trainer_kwargs": {"accelerator": "cpu", "devices": 1}}


def test_every_step_trajectory_equals_brute_force_reruns(trained: dict[str, Any]) -> None:
    model, dm = trained["model"], trained["dm"]
    traj, _ = record_unlearning(model, dm, max_steps=STEPS, seed=3, **KW)
    assert traj.steps.tolist() == list(range(STEPS + 1))
    assert traj.phi.shape == (STEPS + 1, len(trained["forget_ids"]))
    assert torch.equal(traj.sample_ids, trained["forget_ids"])
    # Brute force: a fresh run of exactly k steps for every k, scored afterwards.
    brute_phi = []
    for k in range(STEPS + 1):
        _, unlearned = record_unlearning(model, dm, max_steps=k, seed=3, **KW)
        phi, _, ids = score_model(unlearned, dm.forget_dataloader())
        assert torch.equal(ids, trained["forget_ids"])
        brute_phi.append(phi.double())
    brute = torch.stack(brute_phi)
    # Same operations in the same order on the CPU: identical to the last bit.
    assert torch.equal(traj.phi, brute)
    assert not torch.equal(traj.phi[0], traj.phi[-1])  # the run did move the forget set

    # Steps from the recorded trajectory equal a brute-force scan of the re-runs, for a band
    # placed so that the set arrives part-way.
    metric, brute_metric = traj.set_metric("phi"), brute.mean(dim=1)
    target = metric[STEPS // 2]
    band = tolerance_band(torch.stack([target - 0.05, target, target + 0.05]), rule="range")
    for hold in (0, 2):
        got = first_hold_step(metric, band.lower, band.upper, hold=hold)
        scan = next(
            (
                k
                for k in range(STEPS + 1 - hold)
                if all(band.lower <= brute_metric[j] <= band.upper for j in range(k, k + hold + 1))
            ),
            None,
        )
        assert bool(got.arrived) == (scan is not None)
        if scan is not None:
            assert int(got.steps) == scan
    assert bool(first_hold_step(metric, band.lower, band.upper).arrived)  # step STEPS // 2 is in
    # A trajectory read every other step is refused rather than measured to the interval.
    with pytest.raises(MeasurementError, match="every step"):
        first_hold_step(metric[::2], band.lower, band.upper, steps=traj.steps[::2])
