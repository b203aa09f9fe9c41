"""Reference models continued like the unlearned model: OUT trajectories and per-step bands."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader

from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.evaluation.functional import MeasurementError, tolerance_band
from lightning_unlearn.models import MLPClassifier
from lightning_unlearn.unlearning import train_reference_models
from lightning_unlearn.unlearning.reference_trajectory import continue_reference_models
from tests.unlearning._reference_support import small_digits

TRAINER = {"accelerator": "cpu", "devices": 1, "deterministic": True}
STEPS = 3


def make_mlp() -> MLPClassifier:
    return MLPClassifier(input_dim=64, hidden=(16,), lr=0.2)


def test_continued_reference_models(tmp_path) -> None:
    data = IndexedDataset(small_digits(60))
    refs = train_reference_models(
        make_mlp,
        data,
        out_dir=tmp_path,
        k=6,
        seed=0,
        batch_size=16,
        trainer_kwargs={"max_epochs": 2, **TRAINER},
        progress=False,
    )
    before = [copy.deepcopy(m.state_dict()) for m in refs.modules]
    traj = continue_reference_models(
        refs, data, max_steps=STEPS, batch_size=16, trainer_kwargs=TRAINER, lr=0.2
    )
    assert traj.phi.shape == (6, STEPS + 1, 60)
    # NaN exactly where the model trained on the example (IN), at every step
    assert torch.equal(traj.phi.isnan(), refs.in_mask[:, None, :].expand(6, STEPS + 1, 60))
    assert torch.equal(traj.loss.isnan(), traj.phi.isnan())
    # step 0 is each model as trained: its OUT entries equal the reference statistics
    stats = refs.statistics(DataLoader(data, batch_size=64))
    out = ~refs.in_mask
    assert torch.allclose(traj.phi[:, 0][out], stats.phi[out], rtol=1e-6, atol=1e-6)
    assert torch.allclose(traj.loss[:, 0][out], stats.loss[out], rtol=1e-6, atol=1e-6)
    # the reference models themselves are not modified; the continued copies did move
    for module, state in zip(refs.modules, before, strict=True):
        assert all(torch.equal(v, module.state_dict()[k]) for k, v in state.items())
    assert not torch.allclose(traj.phi[:, -1][out], traj.phi[:, 0][out])
    # per-step band of a forget set = tolerance_band over the example's OUT models at that step
    ids = [3, 17, 42]
    band = traj.targets(ids, z=2.0)
    assert band.lower.shape == (3, STEPS + 1)
    for e, i in enumerate(ids):
        for t in range(STEPS + 1):
            ref = tolerance_band(traj.phi[out[:, i], t, i], z=2.0)
            assert band.center[e, t].item() == pytest.approx(ref.center.item(), abs=1e-12)
            assert band.upper[e, t].item() == pytest.approx(ref.upper.item(), abs=1e-12)
    with pytest.raises(MeasurementError, match="at least 4 oracles"):
        traj.targets(ids, min_models=4)  # every example is OUT of exactly k/2 = 3 models
    with pytest.raises(ValueError, match="metric"):
        traj.targets(ids, metric="margin")
