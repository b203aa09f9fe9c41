"""Per-example OUT scores and their null law, against loops and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from lightning_unlearn.evaluation.functional.out_score import (
    OutGaussian,
    binomial_mixture_cdf,
    flagged_tolerance,
    heldout_shift,
    leave_one_out_zscores,
    member_rates,
    out_gaussian,
    out_zscores,
)


def _table(k: int = 8, n: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(k, n, generator=g, dtype=torch.float64) * 2 + torch.arange(n) * 0.1
    out_mask = torch.rand(k, n, generator=g) < 0.5
    out_mask[:3, 0] = True  # every column keeps a few OUT models
    return values, out_mask


def _shrunk(vals: list[float], pooled: float, nu0: float) -> tuple[float, float]:
    """Mean and shrunk std of one example, from the formula, in numpy float64."""
    v = np.asarray(vals, dtype=np.float64)
    n = v.size
    own = float(np.var(v, ddof=1)) if n >= 2 else 0.0
    dof = max(n - 1, 0)
    var = (nu0 * pooled + dof * own) / (nu0 + dof) if nu0 + dof > 0 else pooled
    return float(v.mean()) if n else math.nan, math.sqrt(var)


def _pooled(values: torch.Tensor, mask: torch.Tensor) -> float:
    variances = [
        float(np.var(values[mask[:, i], i].numpy(), ddof=1))
        for i in range(values.shape[1])
        if int(mask[:, i].sum()) >= 2
    ]
    return float(np.mean(variances))


@pytest.mark.parametrize("nu0", [0.0, 2.0, 10.0])
def test_out_gaussian_matches_a_loop(nu0: float) -> None:
    values, mask = _table()
    law = out_gaussian(values, mask, prior_weight=nu0)
    pooled = _pooled(values, mask)
    for i in range(values.shape[1]):
        vals = values[mask[:, i], i].tolist()
        mean, std = _shrunk(vals, pooled, nu0)
        assert law.n[i] == len(vals)
        if vals:
            assert law.mean[i].item() == pytest.approx(mean, rel=1e-12, abs=1e-12)
        assert law.std[i].item() == pytest.approx(std, rel=1e-12)


def test_out_zscores_formula_and_direction() -> None:
    law = OutGaussian(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0]), torch.tensor([4, 1]))
    v = torch.tensor([2.0, 0.0])
    expected = [(2.0 - 1.0) / (0.5 * math.sqrt(1.25)), (0.0 + 2.0) / (2.0 * math.sqrt(2.0))]
    assert out_zscores(v, law).tolist() == pytest.approx(expected, rel=1e-12)
    assert out_zscores(v, law, direction=-1.0).tolist() == pytest.approx([-e for e in expected])
    with pytest.raises(ValueError, match="direction"):
        out_zscores(v, law, direction=2.0)


def test_leave_one_out_matches_explicit_loop() -> None:
    values, mask = _table(k=6, n=12, seed=3)
    pooled = _pooled(values, mask)
    got = leave_one_out_zscores(values, mask, prior_weight=2.0)
    for j in range(values.shape[0]):
        for i in range(values.shape[1]):
            if not mask[j, i]:
                assert math.isnan(got[j, i].item())
                continue
            others = [values[m, i].item() for m in range(values.shape[0]) if m != j and mask[m, i]]
            if not others:
                assert math.isnan(got[j, i].item())
                continue
            mean, std = _shrunk(others, pooled, 2.0)
            z = (values[j, i].item() - mean) / (std * math.sqrt(1 + 1 / len(others)))
            assert got[j, i].item() == pytest.approx(z, rel=1e-10, abs=1e-12)


def test_member_rates_and_errors() -> None:
    z = torch.tensor([[0.0, 3.0, float("nan")], [2.5, 2.5, 2.5]])
    assert member_rates(z, 2.0).tolist() == [0.5, 1.0]
    with pytest.raises(ValueError, match="models \\[0\\]"):
        member_rates(torch.full((1, 2), float("nan")), 2.0)


@pytest.mark.parametrize("size", [1, 7, 30])
def test_binomial_mixture_cdf_matches_scipy(size: int) -> None:
    rates = torch.tensor([0.0, 0.03, 0.2, 1.0], dtype=torch.float64)
    got = binomial_mixture_cdf(rates, size)
    c = np.arange(size + 1)
    expected = np.mean([scipy.stats.binom.cdf(c, size, r) for r in rates.tolist()], axis=0)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("size", "level"), [(5, 0.05), (20, 0.05), (20, 0.2), (100, 0.01)])
def test_flagged_tolerance_is_the_smallest_quantile_and_holds_in_simulation(
    size: int, level: float
) -> None:
    rates = torch.tensor([0.01, 0.04, 0.08, 0.02], dtype=torch.float64)
    c = flagged_tolerance(rates, size, level)
    cdf = binomial_mixture_cdf(rates, size)
    assert cdf[c] >= 1 - level - 1e-12
    assert c == 0 or cdf[c - 1] < 1 - level
    # Monte Carlo of the null itself: pick a model, flag each example with its rate.
    g = torch.Generator().manual_seed(0)
    draws = 20_000
    models = torch.randint(0, rates.numel(), (draws,), generator=g)
    counts = (torch.rand(draws, size, generator=g, dtype=torch.float64) < rates[models, None]).sum(
        1
    )
    # The simulated coverage is within 4 binomial standard errors of the exact one.
    exact = float(cdf[c])
    se = math.sqrt(exact * (1 - exact) / draws) + 1e-4
    assert abs(float((counts <= c).double().mean()) - exact) < 4 * se


def test_heldout_shift_recovers_a_known_offset() -> None:
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(8, 500, generator=g, dtype=torch.float64) + torch.linspace(-3, 3, 500)
    law = out_gaussian(ref, torch.ones_like(ref, dtype=torch.bool))
    tested = law.mean + 1.5 * law.std * math.sqrt(1 + 1 / 8)
    assert heldout_shift(tested, ref).item() == pytest.approx(1.5, rel=1e-9)
    assert heldout_shift(tested, ref, direction=-1.0).item() == pytest.approx(-1.5, rel=1e-9)
