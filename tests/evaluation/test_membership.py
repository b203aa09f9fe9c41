"""Membership inference, KS forget quality and prediction divergence vs sklearn / scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr, softmax
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from lightning_unlearn.evaluation.functional import (
    binary_auroc,
    forget_quality_ks,
    learned_mia,
    loss_mia_auroc,
    mia_features,
    per_example_logits,
    prediction_divergence,
)

from ._helpers import make_mlp, train


@pytest.mark.parametrize(("n_m", "n_n", "ties"), [(50, 70, False), (40, 40, True), (1, 3, True)])
def test_loss_mia_auroc_equals_sklearn(n_m, n_n, ties):
    g = torch.Generator().manual_seed(n_m)
    members = torch.rand(n_m, generator=g)
    nonmembers = torch.rand(n_n, generator=g) + 0.2
    if ties:  # rounding creates many ties across and within groups
        members, nonmembers = (members * 5).round(), (nonmembers * 5).round()
    labels = np.r_[np.ones(n_m), np.zeros(n_n)]
    expected = roc_auc_score(labels, -np.r_[members.numpy(), nonmembers.numpy()])
    assert loss_mia_auroc(members, nonmembers).item() == pytest.approx(expected, abs=1e-12)
    assert binary_auroc(-members, -nonmembers).item() == pytest.approx(expected, abs=1e-12)


def test_loss_mia_auroc_on_trained_digits(digits):
    x, y = digits
    model = train(make_mlp(hidden=64), x[:100], y[:100], steps=60)
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    auroc = loss_mia_auroc(losses[:100], losses[100:])
    labels = np.r_[np.ones(100), np.zeros(200)]
    assert auroc.item() == pytest.approx(roc_auc_score(labels, -losses.numpy()), abs=1e-12)
    assert auroc.item() > 0.6  # an overfit model leaks membership through its losses


@pytest.mark.parametrize(
    "bad", [torch.tensor([]), torch.zeros(2, 2), torch.tensor([0.0, float("nan")])]
)
def test_loss_mia_auroc_rejects_bad_input(bad):
    with pytest.raises(ValueError, match="Expected `member_losses`"):
        loss_mia_auroc(bad, torch.ones(3))


def test_learned_mia_separates_and_matches_chance():
    g = torch.Generator().manual_seed(0)
    separable = learned_mia(torch.randn(100, 2, generator=g) + 3, torch.randn(120, 2, generator=g))
    assert separable.auroc > 0.97
    assert separable.accuracy > 0.9
    same = learned_mia(torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g))
    assert 0.35 < same.auroc < 0.65
    svc = learned_mia(
        torch.randn(60, 1, generator=g) + 3, torch.randn(60, generator=g), classifier="svc"
    )
    assert svc.auroc > 0.95
    assert len(svc.fold_aurocs) == 5


def test_learned_mia_on_digits_features(digits):
    x, y = digits
    model = train(make_mlp(hidden=64), x[:150], y[:150], steps=60)
    with torch.no_grad():
        feats = mia_features(model(x), y)
    expected_loss = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    torch.testing.assert_close(feats[:, 0], expected_loss.detach())
    result = learned_mia(feats[:150], feats[150:], n_splits=3)
    assert 0.5 < result.auroc <= 1.0


def test_learned_mia_rejects_bad_input():
    with pytest.raises(ValueError, match="n_splits"):
        learned_mia(torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="classifier"):
        learned_mia(torch.zeros(10, 2), torch.zeros(10, 2), classifier="tree")  # type: ignore[arg-type]


@pytest.mark.parametrize(("n", "m", "shift"), [(100, 100, 0.2), (200, 150, 0.1), (400, 300, 0.0)])
def test_forget_quality_ks_equals_scipy(n, m, shift):
    g = torch.Generator().manual_seed(n + m)
    a, b = torch.randn(n, generator=g), torch.randn(m, generator=g) + shift
    result = forget_quality_ks(a, b)
    reference = ks_2samp(a.numpy(), b.numpy())
    assert result.statistic.item() == pytest.approx(reference.statistic, abs=1e-12)
    assert result.pvalue.item() == pytest.approx(reference.pvalue, abs=0.015)


def test_forget_quality_ks_with_ties():
    a = torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0])
    b = torch.tensor([1.0, 1.0, 2.0, 2.0])
    assert forget_quality_ks(a, b).statistic.item() == pytest.approx(
        ks_2samp(a.numpy(), b.numpy()).statistic
    )


def test_prediction_divergence_equals_scipy(digits, digits_loader):
    model, oracle = make_mlp(seed=0), make_mlp(seed=1)
    logits, _, _ = per_example_logits(model, digits_loader)
    oracle_logits, _, _ = per_example_logits(oracle, digits_loader)
    p, q = softmax(logits.double().numpy(), -1), softmax(oracle_logits.double().numpy(), -1)
    kl = rel_entr(p, q).sum(-1)
    js = jensenshannon(p, q, axis=-1) ** 2
    got_kl = prediction_divergence(logits, oracle_logits, reduction="none")
    got_js = prediction_divergence(logits, oracle_logits, kind="js", reduction="none")
    np.testing.assert_allclose(got_kl.numpy(), kl, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got_js.numpy(), js, rtol=1e-4, atol=1e-6)
    assert prediction_divergence(logits, oracle_logits).item() == pytest.approx(kl.mean(), rel=1e-4)
    assert prediction_divergence(logits, logits, kind="js").item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="kind"):
        prediction_divergence(logits, logits, kind="tv")  # type: ignore[arg-type]
