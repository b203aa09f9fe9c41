"""Per-example OUT scores and their null law, against loops and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import torch

from lightning_unlearn.evaluation.functional.out_score import (
    HeldoutMap,
    OutGaussian,
    binomial_mixture_cdf,
    detection_power,
    fit_heldout_map,
    flagged_tolerance,
    leave_one_out_zscores,
    mean_score_tolerance,
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


def _numpy_map(v: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> tuple[float, ...]:
    """Independent: numpy's weighted polyfit (its weights scale residuals) and scipy's MAD."""
    slope, intercept = np.polyfit(mean, v, 1, w=1.0 / scale)
    r = (v - intercept - slope * mean) / scale
    mad = scipy.stats.median_abs_deviation(r, scale="normal")
    return float(intercept), float(slope), float(mad)


def test_heldout_map_equals_weighted_polyfit_and_recovers_a_known_map() -> None:
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(8, 2000, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, 2000)
    ref = ref + torch.linspace(-3, 3, 2000)
    law = out_gaussian(ref, torch.ones_like(ref, dtype=torch.bool))
    scale = law.std * math.sqrt(1 + 1 / 8)
    noise = torch.randn(2000, generator=g, dtype=torch.float64)
    tested = 0.7 + 1.2 * law.mean + 1.5 * scale * noise  # a known map, c = 1.5
    got = fit_heldout_map(tested, law)
    want = _numpy_map(tested.numpy(), law.mean.numpy(), scale.numpy())
    assert list(got) == pytest.approx(list(want), rel=1e-9, abs=1e-12)
    # Recovered within a few standard errors (2000 points: ~0.03 on a and b, ~0.04 on c).
    assert got.intercept == pytest.approx(0.7, abs=0.15)
    assert got.slope == pytest.approx(1.2, abs=0.1)
    assert got.scale == pytest.approx(1.5, abs=0.15)
    z = out_zscores(tested, law, heldout_map=got)
    assert z.std().item() == pytest.approx(1.0, abs=0.1)  # held-out scores are standard
    with pytest.raises(ValueError, match="at least 3"):
        fit_heldout_map(tested[:2], OutGaussian(law.mean[:2], law.std[:2], law.n[:2]))
    flat = OutGaussian(torch.zeros(5, dtype=torch.float64), torch.ones(5), torch.full((5,), 8))
    with pytest.raises(ValueError, match="different OUT means"):
        fit_heldout_map(torch.arange(5.0), flat)
    with pytest.raises(ValueError, match="finite"):
        fit_heldout_map(
            torch.full((5,), math.nan), OutGaussian(law.mean[:5], law.std[:5], law.n[:5])
        )
    assert HeldoutMap(0.5, 1.0, 2.0).as_dict() == {"intercept": 0.5, "slope": 1.0, "scale": 2.0}


def _loo_by_loop(
    values: torch.Tensor, out_mask: torch.Tensor, held: torch.Tensor
) -> dict[tuple[int, int], float | None]:
    """Model j's score on example i against the other OUT models, read through j's held-out
    map against the other models (None: no other OUT model), written out entry by entry."""
    k, n = values.shape
    h = held.shape[1]
    pooled = _pooled(values, out_mask)
    want: dict[tuple[int, int], float | None] = {}
    for j in range(k):
        keep = [m for m in range(k) if m != j]
        h_pooled = _pooled(held[keep], torch.ones(k - 1, h, dtype=torch.bool))
        h_scale = np.array(
            [_shrunk(held[keep, x].tolist(), h_pooled, 2.0)[1] for x in range(h)]
        ) * math.sqrt(1 + 1 / (k - 1))
        a, b, c = _numpy_map(held[j].numpy(), held[keep].mean(0).numpy(), h_scale)
        for i in range(n):
            others = [values[m, i].item() for m in keep if out_mask[m, i]]
            if not others:
                want[j, i] = None
                continue
            mean, std = _shrunk(others, pooled, 2.0)
            scale = c * std * math.sqrt(1 + 1 / len(others))
            want[j, i] = (values[j, i].item() - a - b * mean) / scale
    return want


def test_leave_one_out_with_heldout_maps_matches_a_loop() -> None:
    values, out_mask = _table()
    g = torch.Generator().manual_seed(3)
    held = torch.randn(8, 40, generator=g, dtype=torch.float64) + torch.linspace(-2, 2, 40)
    held[2] = held[2] * 1.3 + 0.5  # one model more confident on unseen data
    z = leave_one_out_zscores(values, out_mask, heldout=held)
    for (j, i), want in _loo_by_loop(values, out_mask, held).items():
        if not out_mask[j, i] or want is None:
            assert math.isnan(z[j, i].item())
        else:
            assert z[j, i].item() == pytest.approx(want, rel=1e-9, abs=1e-9)
    with pytest.raises(ValueError, match="held-out values of 8 models"):
        leave_one_out_zscores(values, out_mask, heldout=held[:3])


def test_mean_score_tolerance_matches_exact_and_normal_laws() -> None:
    # Null scores 0 / 1 with equal weight: the mean of 5 draws is Binomial(5, 1/2) / 5, whose
    # 0.95 quantile is 4/5 (CDF 0.8125 at 3/5, 0.96875 at 4/5: far from 0.95 either side).
    null = torch.tensor([[0.0, 1.0] * 50, [1.0, 0.0] * 50], dtype=torch.float64)
    assert scipy.stats.binom.ppf(0.95, 5, 0.5) / 5 == pytest.approx(0.8)
    assert mean_score_tolerance(null, 5, 0.05) == pytest.approx(0.8)
    # Large sets: the normal law of the mean, N(1/2, 1/(4E)), mixed over two equal models; the
    # Monte Carlo quantile of 40,000 draws is within ~0.02 sd of the exact one.
    sd = 0.5 / math.sqrt(400)
    want = 0.5 + scipy.stats.norm.ppf(0.95) * sd
    got = mean_score_tolerance(null, 400, 0.05, draws=20_000)
    assert got == pytest.approx(want, abs=0.1 * sd)
    # A second model shifted by +1: the mixture's quantile, solved with scipy.
    shifted = torch.stack([null[0], null[1] + 1.0])

    def mixture_cdf(t: float) -> float:
        return float(
            0.5 * scipy.stats.norm.cdf(t, 0.5, sd) + 0.5 * scipy.stats.norm.cdf(t, 1.5, sd)
        )

    mix = scipy.optimize.brentq(lambda t: mixture_cdf(t) - 0.95, 0.0, 3.0)
    got = mean_score_tolerance(shifted, 400, 0.05, draws=20_000)
    assert got == pytest.approx(mix, abs=0.1 * sd)
    assert mean_score_tolerance(null, 5) == mean_score_tolerance(null, 5)  # seeded
    with pytest.raises(ValueError, match="model 1 has none"):
        mean_score_tolerance(torch.tensor([[0.0], [math.nan]]), 3)
    with pytest.raises(ValueError, match="size"):
        mean_score_tolerance(null, 0)


def test_member_draws_are_the_same_scores_on_the_in_entries() -> None:
    values, out_mask = _table()
    g = torch.Generator().manual_seed(4)
    held = torch.randn(8, 40, generator=g, dtype=torch.float64) + torch.linspace(-2, 2, 40)
    assert not out_mask[3, 5]
    values[3, 5] = math.nan  # a member entry with no score: no draw
    null = leave_one_out_zscores(values, out_mask, heldout=held)
    member = leave_one_out_zscores(values, out_mask, heldout=held, members=True)
    assert not bool((~null.isnan() & ~member.isnan()).any()), "an entry is both OUT and IN"
    for (j, i), want in _loo_by_loop(values, out_mask, held).items():
        if out_mask[j, i] or want is None or math.isnan(want):
            assert math.isnan(member[j, i].item())
        else:
            assert member[j, i].item() == pytest.approx(want, rel=1e-9, abs=1e-9)


def _exact_power(columns: list[list[float]], threshold: float, tol: int, mean_tol: float) -> float:
    """Enumerate every choice of one draw per example (each example's draws equally likely)."""
    import itertools

    hits = total = 0
    for combo in itertools.product(*columns):
        total += 1
        flagged = sum(x > threshold for x in combo)
        hits += flagged > tol or sum(combo) / len(combo) > mean_tol
    return hits / total


@pytest.mark.parametrize(("tol", "mean_tol"), [(0, 9.0), (1, 9.0), (5, 0.8)])
def test_detection_power_matches_exact_enumeration(tol: int, mean_tol: float) -> None:
    g = torch.Generator().manual_seed(11)
    table = torch.randn(6, 5, generator=g, dtype=torch.float64) + 1.0
    table[torch.rand(6, 5, generator=g) < 0.3] = math.nan
    table[0] = torch.randn(5, generator=g, dtype=torch.float64)  # every column has a draw
    columns = [[x for x in table[:, e].tolist() if not math.isnan(x)] for e in range(5)]
    exact = _exact_power(columns, 1.5, tol, mean_tol)
    draws = 40_000
    got = detection_power(
        table, threshold=1.5, tolerance=tol, mean_tolerance=mean_tol, draws=draws, seed=3
    )
    # A binomial proportion of `draws` trials: 5 standard errors (plus the exact 0 / 1 cases).
    assert abs(got - exact) <= 5 * math.sqrt(exact * (1 - exact) / draws) + 1e-12
    again = detection_power(
        table, threshold=1.5, tolerance=tol, mean_tolerance=mean_tol, draws=draws, seed=3
    )
    assert again == got  # seeded


def test_detection_power_refuses_what_it_cannot_estimate() -> None:
    table = torch.tensor([[1.0, math.nan], [2.0, math.nan]])
    with pytest.raises(ValueError, match=r"columns \[1\] have none"):
        detection_power(table, threshold=1.0, tolerance=0, mean_tolerance=1.0)
    with pytest.raises(ValueError, match="E >= 1"):
        detection_power(torch.zeros(3, 0), threshold=1.0, tolerance=0, mean_tolerance=1.0)
    with pytest.raises(ValueError, match="draws"):
        detection_power(table[:, :1], threshold=1.0, tolerance=0, mean_tolerance=1.0, draws=0)


def test_detection_power_in_chunks_is_the_same_number(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_unlearn.evaluation.functional.out_score as out_score

    g = torch.Generator().manual_seed(1)
    table = torch.randn(6, 300, generator=g, dtype=torch.float64) + 0.3
    args = {"threshold": 2.0, "tolerance": 5, "mean_tolerance": 0.35, "draws": 3000}
    whole = detection_power(table, **args)  # type: ignore[arg-type]
    monkeypatch.setattr(out_score, "_POWER_CHUNK", 1000)  # 3 draws at a time (1000 // 300)
    assert detection_power(table, **args) == whole  # type: ignore[arg-type]
