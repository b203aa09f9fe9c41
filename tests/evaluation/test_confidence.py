"""Logit-scaled confidence, masked moments and LiRA ratios against float64 / scipy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from lightning_unlearn.evaluation.functional import (
    gaussian_likelihood_ratio,
    logit_scaled_confidence,
    masked_moments,
)


def _phi_reference(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """phi = log p_y - log(1 - p_y) from float64 softmax probabilities (independent formula)."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    py = p[np.arange(len(targets)), targets]
    return np.log(py) - np.log1p(-py)


def test_phi_matches_float64_softmax_formula() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(500, 10, generator=g, dtype=torch.float64) * 3
    targets = torch.randint(0, 10, (500,), generator=g)
    ours = logit_scaled_confidence(logits, targets).numpy()
    ref = _phi_reference(logits.numpy(), targets.numpy())
    # Both float64 with |phi| < ~20 here: rounding of the softmax route is ~1e-15 * e^|phi|.
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)


def test_phi_float32_within_rounding_of_float64() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 5, generator=g) * 4
    targets = torch.randint(0, 5, (300,), generator=g)
    ours = logit_scaled_confidence(logits, targets).double()
    ref = logit_scaled_confidence(logits.double(), targets)
    # One subtraction and one logsumexp in float32: a few ulps of the largest logit (~16).
    assert (ours - ref).abs().max() < 1e-5
    assert ours.dtype == torch.float64
    assert logit_scaled_confidence(logits, targets).dtype == (torch.float32)


def test_phi_is_stable_where_the_probability_rounds_to_one() -> None:
    # Two classes: phi is exactly the logit difference, also at margins where p_y == 1.0.
    logits = torch.tensor([[60.0, 0.0], [0.0, 60.0], [1.5, -2.5]])
    targets = torch.tensor([0, 0, 1])
    out = logit_scaled_confidence(logits, targets)
    assert out.tolist() == [60.0, -60.0, -4.0]
    p = torch.softmax(logits, dim=1)[0, 0]
    assert p == 1.0  # the naive formula would give +inf here


def test_phi_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="C >= 2"):
        logit_scaled_confidence(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        logit_scaled_confidence(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="shapes"):
        logit_scaled_confidence(torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))


def test_masked_moments_match_numpy_per_column() -> None:
    g = torch.Generator().manual_seed(2)
    values = torch.randn(8, 40, generator=g) * 5 + 100
    mask = torch.rand(8, 40, generator=g) > 0.4
    mom = masked_moments(values, mask)
    for i in range(40):
        column = values[:, i][mask[:, i]].double().numpy()
        assert int(mom.n[i]) == column.size
        if column.size == 0:
            assert math.isnan(float(mom.mean[i]))
            continue
        assert float(mom.mean[i]) == pytest.approx(column.mean(), rel=1e-12)
        if column.size > 1:
            assert float(mom.std[i]) == pytest.approx(column.std(ddof=1), rel=1e-9)
        else:
            assert math.isnan(float(mom.std[i]))


def test_gaussian_likelihood_ratio_matches_scipy() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, generator=g, dtype=torch.float64)
    mi, mo = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g)
    si, so = torch.rand(50, generator=g) + 0.1, torch.rand(50, generator=g) + 0.1
    ours = gaussian_likelihood_ratio(x, mi, si, mo, so).numpy()
    ref = scipy.stats.norm.logpdf(x, mi, si.double()) - scipy.stats.norm.logpdf(
        x, mo.double(), so.double()
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-10)
    # the floor applies to degenerate spreads
    floor = gaussian_likelihood_ratio(x[:1], mi[:1], torch.zeros(1), mo[:1], so[:1], min_std=0.5)
    ref0 = scipy.stats.norm.logpdf(x[0], mi[0], 0.5) - scipy.stats.norm.logpdf(
        x[0],
        float(mo[0]),
        max(float(so[0]), 0.5),  # both spreads floored
    )
    assert float(floor) == pytest.approx(float(ref0), rel=1e-10)
