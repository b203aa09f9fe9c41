"""per_example_losses against a direct loop, with real digits."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.errors import MissingSampleIdError
from lightning_unlearn.evaluation.functional import per_example_losses

from ._helpers import make_mlp


def test_per_example_losses_match_loop(digits):
    x, y = digits
    model = make_mlp()
    loader = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=37, shuffle=True)
    losses, ids, correct = per_example_losses(model, loader)
    assert ids.sort().values.tolist() == list(range(len(x)))
    for i in (0, 5, 299):
        pos = int((ids == i).nonzero())
        with torch.no_grad():
            logit = model(x[i : i + 1])
        expected = -torch.log_softmax(logit, -1)[0, y[i]]
        assert losses[pos].item() == pytest.approx(expected.item(), rel=1e-5)
        assert bool(correct[pos]) == bool(logit.argmax() == y[i])


def test_per_example_losses_restores_train_mode_and_no_grad(digits):
    x, y = digits
    model = nn.Sequential(nn.Linear(64, 8), nn.Dropout(0.5), nn.Linear(8, 10))
    model.train()
    model[1].eval()  # a submodule's own mode must come back too
    loader = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=64)
    losses_a, _, _ = per_example_losses(model, loader)
    losses_b, _, _ = per_example_losses(model, loader)
    assert torch.equal(losses_a, losses_b)  # dropout off: deterministic
    assert not losses_a.requires_grad
    assert model.training
    assert model[0].training
    assert not model[1].training


def test_per_example_losses_dict_batches(digits):
    x, y = digits

    class DictData(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 20

        def __getitem__(self, i: int) -> dict:
            return {"x": x[i], "y": y[i]}

    loader = DataLoader(IndexedDataset(DictData()), batch_size=8)
    losses, ids, _ = per_example_losses(make_mlp(), loader)
    assert ids.tolist() == list(range(20))
    assert losses.shape == (20,)


def test_per_example_losses_reads_ids_from_the_sampler(digits):
    """A plain TensorDataset, shuffled: the ids are the sampler's indices, in batch order."""
    x, y = digits
    model = make_mlp()
    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    losses, ids, _ = per_example_losses(model, loader)
    assert sorted(ids.tolist()) == list(range(len(x)))
    with torch.no_grad():  # independent reference: each example alone, by its id
        ref = torch.nn.functional.cross_entropy(model(x[ids]), y[ids], reduction="none")
    torch.testing.assert_close(losses, ref, rtol=1e-6, atol=1e-7)


def test_per_example_losses_without_ids_names_both_fixes(digits):
    x, y = digits
    batches = [(x[:8], y[:8])]  # not a DataLoader: no sampler to read
    with pytest.raises(MissingSampleIdError, match="IndexedDataset"):
        per_example_losses(make_mlp(), batches)
