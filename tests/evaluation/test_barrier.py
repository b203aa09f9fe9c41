"""Loss barrier (THEORY §6) against hand-written interpolation loops, on real digits."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torch.utils.data import DataLoader, TensorDataset

from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.evaluation.functional import loss_barrier, per_example_loss_barrier
from lightning_unlearn.evaluation.functional.barrier import interpolation_states

from ._helpers import make_mlp, train


@pytest.fixture(scope="module")
def two_mlps(digits):
    x, y = digits
    return train(make_mlp(seed=0), x, y), train(make_mlp(seed=1), x, y)


def reference_curve(model_a, model_b, x, y, num_points):
    """Interpolate flat parameter vectors by hand and evaluate the full-batch mean loss."""
    va, vb = parameters_to_vector(model_a.parameters()), parameters_to_vector(model_b.parameters())
    work = copy.deepcopy(model_a)
    curve = []
    for i in range(num_points):
        lam = i / (num_points - 1)
        vector_to_parameters((1 - lam) * va + lam * vb, work.parameters())
        with torch.no_grad():
            curve.append(F.cross_entropy(work(x), y).double())
    curve = torch.stack(curve)
    lambdas = torch.linspace(0, 1, num_points, dtype=torch.float64)
    return (curve - ((1 - lambdas) * curve[0] + lambdas * curve[-1])).max(), curve


def test_barrier_with_itself_is_zero(two_mlps, digits_loader):
    model, _ = two_mlps
    barrier, curve = loss_barrier(model, model, digits_loader, num_points=7)
    assert barrier.item() == pytest.approx(0.0, abs=1e-7)
    assert torch.allclose(curve, curve[0].expand_as(curve), atol=1e-7)


def test_barrier_equals_hand_written_loop(two_mlps, digits, digits_loader):
    model_a, model_b = two_mlps
    before = parameters_to_vector(model_a.parameters()).clone()
    barrier, curve = loss_barrier(model_a, model_b, digits_loader, num_points=11)
    ref_barrier, ref_curve = reference_curve(model_a, model_b, *digits, 11)
    torch.testing.assert_close(curve, ref_curve, rtol=1e-5, atol=1e-6)
    assert barrier.item() == pytest.approx(ref_barrier.item(), rel=1e-4, abs=1e-6)
    assert barrier.item() > 0.01  # two independently trained MLPs are not linearly connected
    assert torch.equal(parameters_to_vector(model_a.parameters()), before)


def test_barrier_of_linear_models_with_convex_loss_is_not_positive(digits, digits_loader):
    x, y = digits
    torch.manual_seed(0)
    model_a = train(nn.Linear(64, 10), x, y, steps=20)
    torch.manual_seed(1)
    model_b = train(nn.Linear(64, 10), x[:100], y[:100], steps=20, lr=0.2)
    barrier, curve = loss_barrier(model_a, model_b, digits_loader, num_points=11)
    lambdas = torch.linspace(0, 1, 11, dtype=torch.float64)
    chord = (1 - lambdas) * curve[0] + lambdas * curve[-1]
    assert barrier.item() <= 1e-6  # max over the grid is attained at an endpoint (gap 0)
    assert (curve[1:-1] < chord[1:-1]).all()  # strictly below the chord inside
    assert curve[0] != curve[-1]


class BNNet(nn.Module):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.bn, self.fc2 = nn.Linear(64, 12), nn.BatchNorm1d(12), nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.bn(self.fc1(x))))


def test_barrier_recomputes_batchnorm_statistics(digits):
    x, y = digits
    model_a, model_b = train(BNNet(0), x, y, steps=10), train(BNNet(1), x, y, steps=10)
    model_a.train()
    model_b.eval()
    loader = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=len(x))  # one BN batch
    _, curve = loss_barrier(model_a, model_b, loader, num_points=5)
    # Independent reference: interpolate, then set BN statistics to the batch moments of the
    # interpolated first layer's output computed directly (unbiased variance, as BatchNorm).
    sa, sb = model_a.state_dict(), model_b.state_dict()
    for i, lam in enumerate(torch.linspace(0, 1, 5).tolist()):
        work = BNNet(0)
        work.load_state_dict(
            {
                k: torch.lerp(sa[k].float(), sb[k].float(), lam)
                for k in sa
                if k != "bn.num_batches_tracked"
            },
            strict=False,
        )
        with torch.no_grad():
            h = work.fc1(x)
            work.bn.running_mean.copy_(h.mean(0))
            work.bn.running_var.copy_(h.var(0, unbiased=True))
            work.eval()
            expected = F.cross_entropy(work(x), y)
        assert curve[i].item() == pytest.approx(expected.item(), rel=1e-4)
    assert model_a.training  # modes untouched
    assert not model_b.training
    assert torch.equal(model_a.state_dict()["bn.running_mean"], sa["bn.running_mean"])


def test_per_example_barrier_matches_loop_and_sorts_ids(two_mlps, digits):
    model_a, model_b = two_mlps
    x, y = digits
    loader = DataLoader(IndexedDataset(TensorDataset(x[:40], y[:40])), batch_size=16, shuffle=True)
    barriers, ids = per_example_loss_barrier(model_a, model_b, loader, num_points=6)
    assert ids.tolist() == list(range(40))
    va, vb = parameters_to_vector(model_a.parameters()), parameters_to_vector(model_b.parameters())
    work = copy.deepcopy(model_a)
    rows = []
    for lam in torch.linspace(0, 1, 6).tolist():
        vector_to_parameters((1 - lam) * va + lam * vb, work.parameters())
        with torch.no_grad():
            rows.append(F.cross_entropy(work(x[:40]), y[:40], reduction="none").double())
    curve = torch.stack(rows)
    lambdas = torch.linspace(0, 1, 6, dtype=torch.float64)[:, None]
    expected = (curve - ((1 - lambdas) * curve[:1] + lambdas * curve[-1:])).max(0).values
    torch.testing.assert_close(barriers, expected, rtol=1e-4, atol=1e-5)


def test_barrier_rejects_bad_input(two_mlps, digits_loader):
    model_a, _ = two_mlps
    with pytest.raises(ValueError, match="num_points"):
        loss_barrier(model_a, model_a, digits_loader, num_points=1)
    with pytest.raises(ValueError, match="architecture"):
        loss_barrier(model_a, make_mlp(hidden=8), digits_loader)
    with pytest.raises(ValueError, match="bn_dataloader"):
        next(interpolation_states(BNNet(0), BNNet(1)))
