"""Kaplan-Meier and Spearman / bootstrap against hand-computed values and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from lightning_unlearn.evaluation.functional import (
    MeasurementError,
    average_ranks,
    bootstrap_spearman,
    kaplan_meier,
    km_median,
    spearman,
    summarise_censored,
)
from lightning_unlearn.evaluation.functional.ranking import bootstrap_indices


def test_kaplan_meier_hand_computed() -> None:
    # times 0(e) 3(e) 3(c) 4(e) 4(e) 7(c) 9(e): at 0: 7 at risk, 1 event -> 6/7
    # at 3: 6 at risk (censored-at-3 still at risk), 1 event -> 6/7 * 5/6 = 5/7
    # at 4: 4 at risk, 2 events -> 5/7 * 2/4 = 5/14;  at 9: 1 at risk, 1 event -> 0
    times = torch.tensor([0, 3, 3, 4, 4, 7, 9])
    arrived = torch.tensor([True, True, False, True, True, False, True])
    km = kaplan_meier(times, arrived)
    assert km.times.tolist() == [0.0, 3.0, 4.0, 9.0]
    assert km.at_risk.tolist() == [7, 6, 4, 1]
    assert km.events.tolist() == [1, 1, 2, 1]
    expected = [6 / 7, 5 / 7, 5 / 14, 0.0]
    assert km.survival.tolist() == pytest.approx(expected, abs=1e-15)
    assert km_median(times, arrived) == 4.0  # first time with S <= 1/2


@pytest.mark.parametrize("seed", range(5))
def test_kaplan_meier_matches_scipy_ecdf(seed: int) -> None:
    rng = np.random.default_rng(seed)
    times = rng.integers(0, 30, size=40)
    arrived = rng.random(40) < 0.6
    km = kaplan_meier(torch.tensor(times), torch.tensor(arrived))
    ref = scipy.stats.ecdf(
        scipy.stats.CensoredData(uncensored=times[arrived], right=times[~arrived])
    ).sf
    ref_s = ref.evaluate(km.times.numpy())
    np.testing.assert_allclose(km.survival.numpy(), ref_s, rtol=0, atol=1e-12)
    below = ref.quantiles[ref.probabilities <= 0.5]
    expected = float(below[0]) if below.size else math.inf
    assert km_median(torch.tensor(times), torch.tensor(arrived)) == expected


def test_km_median_not_reached_is_inf_and_summary() -> None:
    times = torch.tensor([0, 50, 50, 50])
    arrived = torch.tensor([True, False, False, False])
    assert km_median(times, arrived) == math.inf
    out = summarise_censored(times, arrived)
    assert out["fraction_censored"] == 0.75
    assert out["max_censor_time"] == 50.0
    with pytest.raises(MeasurementError, match="boolean"):
        kaplan_meier(times, torch.tensor([1, 0, 0, 0]))


def test_average_ranks_and_spearman_match_scipy() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 6, size=25).astype(float)  # many ties
        y = x + rng.normal(size=25) * 2
        np.testing.assert_array_equal(
            average_ranks(torch.tensor(x)).numpy(), scipy.stats.rankdata(x)
        )
        ref = scipy.stats.spearmanr(x, y).statistic
        assert spearman(torch.tensor(x), torch.tensor(y)) == pytest.approx(ref, abs=1e-12)
    assert math.isnan(spearman(torch.ones(5), torch.arange(5.0)))


def test_bootstrap_equals_a_scipy_loop_over_the_same_resamples() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    ci = bootstrap_spearman(torch.tensor(x), torch.tensor(y), num_resamples=200, seed=7)
    idx = bootstrap_indices(30, 200, seed=7).numpy()
    rhos = [scipy.stats.spearmanr(x[i], y[i]).statistic for i in idx]
    low, high = np.quantile(rhos, [0.025, 0.975])
    assert ci.low == pytest.approx(low, abs=1e-12)
    assert ci.high == pytest.approx(high, abs=1e-12)
    assert ci.estimate == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    again = bootstrap_spearman(torch.tensor(x), torch.tensor(y), num_resamples=200, seed=7)
    assert again == ci
