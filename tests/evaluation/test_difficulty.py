"""Difficulty scores against direct computations: EL2N, GraNd, forgetting, curvature."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.evaluation.functional import (
    el2n_scores,
    forgetting_events,
    grand_scores,
    input_curvature,
    mean_true_class_confidence,
    per_example_logits,
    true_class_confidence,
)

from ._helpers import make_mlp, train


def test_el2n_and_confidence_equal_direct_numpy(digits, digits_loader):
    model = train(make_mlp(), *digits, steps=20)
    logits, targets, _ = per_example_logits(model, digits_loader)
    z = logits.double().numpy()
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(10)[targets.numpy()]
    np.testing.assert_allclose(
        el2n_scores(logits, targets).numpy(),
        np.sqrt(((p - onehot) ** 2).sum(1)),
        rtol=1e-5,
        atol=1e-6,  # float32 softmax near 1
    )
    np.testing.assert_allclose(
        true_class_confidence(logits, targets).numpy(),
        p[np.arange(len(p)), targets.numpy()],
        rtol=1e-5,
    )


def test_grand_equals_batch_size_one_backward_loop(digits):
    x, y = digits
    model = train(make_mlp(), x, y, steps=10)
    model.train()
    model.zero_grad(set_to_none=True)
    loader = DataLoader(IndexedDataset(TensorDataset(x[:50], y[:50])), batch_size=16, shuffle=True)
    scores, ids = grand_scores(model, loader)
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    for pos, i in enumerate(ids.tolist()):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        norm = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
        assert scores[pos].item() == pytest.approx(norm.item(), rel=1e-4)


def test_forgetting_events_count_scripted_sequence():
    # rows: epochs; columns: examples with hand-counted correct -> wrong transitions
    correct = torch.tensor(
        [
            [1, 0, 1, 0, 1],
            [0, 0, 1, 1, 1],
            [1, 0, 0, 1, 1],
            [0, 0, 1, 0, 1],
            [1, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert forgetting_events(correct).tolist() == [2, 0, 2, 1, 0]
    assert (~correct.any(0)).tolist() == [False, True, False, False, False]  # never learned
    with pytest.raises(ValueError, match="bool"):
        forgetting_events(correct.float())


def test_mean_true_class_confidence_ignores_missing():
    conf = torch.tensor([[0.1, float("nan"), 0.5], [0.3, 0.2, float("nan")], [0.8, 0.4, 0.7]])
    np.testing.assert_allclose(
        mean_true_class_confidence(conf).numpy(), np.nanmean(conf.numpy(), axis=0), rtol=1e-6
    )


def exact_hessians(model, x, y):
    return [
        torch.autograd.functional.hessian(
            lambda xi, i=i: F.cross_entropy(model(xi[None]), y[i : i + 1]), x[i]
        )
        for i in range(len(x))
    ]


def test_curvature_trace_within_ten_percent_of_exact(digits):
    x, y = digits
    torch.manual_seed(0)
    model = train(nn.Linear(64, 10), x, y, steps=20)  # convex in x: PSD input Hessian
    loader = DataLoader(IndexedDataset(TensorDataset(x[:6], y[:6])), batch_size=6)
    est, _ = input_curvature(model, loader, num_probes=2000, seed=0)
    exact = torch.stack([h.trace() for h in exact_hessians(model, x[:6], y[:6])]).double()
    assert ((est - exact).abs() / exact).max().item() < 0.10


def test_curvature_of_mlp_trace_squared_and_error_bound(digits):
    x, y = digits
    model = make_mlp(seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # a curved, non-convex network
    loader = DataLoader(IndexedDataset(TensorDataset(x[:6], y[:6])), batch_size=3)
    hessians = exact_hessians(model, x[:6], y[:6])
    probes = 2000
    sq, ids = input_curvature(model, loader, num_probes=probes, kind="trace_squared", seed=1)
    exact_sq = torch.stack([(h @ h).trace() for h in hessians]).double()
    assert ids.tolist() == list(range(6))
    assert ((sq - exact_sq).abs() / exact_sq).max().item() < 0.10
    tr, _ = input_curvature(model, loader, num_probes=probes, seed=1, max_rows=100)
    exact_tr = torch.stack([h.trace() for h in hessians]).double()
    frob = torch.stack([h.norm() for h in hessians]).double()
    # Hutchinson's standard error is at most sqrt(2 / probes) * ||H||_F: allow four of them.
    assert ((tr - exact_tr).abs() <= 4 * (2 / probes) ** 0.5 * frob).all()


def test_curvature_is_seeded_and_validates():
    data = IndexedDataset(TensorDataset(torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1])))
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    a, _ = input_curvature(model, DataLoader(data, batch_size=2), num_probes=5, seed=7)
    b, _ = input_curvature(model, DataLoader(data, batch_size=2), num_probes=5, seed=7)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="num_probes"):
        input_curvature(model, DataLoader(data), num_probes=0)
