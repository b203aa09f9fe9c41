"""Metric classes accumulate batches to exactly the functional results (and sklearn / scipy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from lightning_unlearn.evaluation import (
    ForgetQualityKS,
    LossBarrier,
    LossMembershipAUROC,
    PerExampleDifficulty,
    PredictionDivergence,
    el2n_scores,
    loss_barrier,
    per_example_logits,
    prediction_divergence,
    true_class_confidence,
)

from ._helpers import make_mlp, train


def test_loss_barrier_metric_equals_functional(digits, digits_loader):
    x, y = digits
    model_a, model_b = train(make_mlp(seed=0), x, y, steps=15), train(make_mlp(seed=1), x, y, 15)
    metric = LossBarrier(model_a, model_b, num_points=6)
    for xb, yb, _ in digits_loader:
        metric.update(xb, yb)
    barrier, curve = loss_barrier(model_a, model_b, digits_loader, num_points=6)
    torch.testing.assert_close(metric.curve(), curve)
    assert metric.compute().item() == pytest.approx(barrier.item(), abs=1e-9)


def test_loss_membership_auroc_metric_equals_sklearn():
    g = torch.Generator().manual_seed(0)
    losses, member = torch.rand(90, generator=g), torch.rand(90, generator=g) < 0.4
    losses[member] *= 0.7
    metric = LossMembershipAUROC()
    for chunk in range(3):
        metric.update(losses[chunk * 30 : (chunk + 1) * 30], member[chunk * 30 : (chunk + 1) * 30])
    expected = roc_auc_score(member.numpy(), -losses.numpy())
    assert metric.compute().item() == pytest.approx(expected, abs=1e-12)
    only_members = LossMembershipAUROC()
    only_members.update(losses[:3], torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="both members"):
        only_members.compute()


def test_forget_quality_metric_equals_scipy():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(120, generator=g), torch.randn(150, generator=g) + 0.3
    metric = ForgetQualityKS()
    metric.update(a[:60], b[:100])
    metric.update(a[60:], b[100:])
    out = metric.compute()
    assert out["statistic"].item() == pytest.approx(ks_2samp(a.numpy(), b.numpy()).statistic)


def test_prediction_divergence_metric_equals_functional(digits_loader):
    logits, _, _ = per_example_logits(make_mlp(seed=0), digits_loader)
    oracle, _, _ = per_example_logits(make_mlp(seed=1), digits_loader)
    for kind in ("kl", "js"):
        metric = PredictionDivergence(kind=kind)
        metric.update(logits[:100], oracle[:100])
        metric.update(logits[100:], oracle[100:])
        expected = prediction_divergence(logits, oracle, kind=kind)
        assert metric.compute().item() == pytest.approx(expected.item(), rel=1e-5)


def test_per_example_difficulty_averages_duplicates_and_marks_unseen(digits_loader):
    logits, targets, ids = per_example_logits(make_mlp(), digits_loader)
    metric = PerExampleDifficulty(num_samples=310)  # ids 300..309 never seen
    metric.update(logits, targets, ids)
    metric.update(logits[:5], targets[:5], ids[:5])  # DistributedSampler-style duplicates
    out = metric.compute()
    torch.testing.assert_close(out["el2n"][:300], el2n_scores(logits, targets).double())
    torch.testing.assert_close(
        out["confidence"][:300], true_class_confidence(logits, targets).double()
    )
    correct = (logits.argmax(1) == targets).double()
    assert torch.equal(out["correct"][:300], correct)
    assert out["el2n"][300:].isnan().all()
    with pytest.raises(ValueError, match="num_samples"):
        metric.update(logits[:2], targets[:2], torch.tensor([0, 400]))
    assert np.isfinite(out["confidence"][:300].numpy()).all()
