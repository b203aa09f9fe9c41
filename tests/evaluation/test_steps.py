"""Oracle bands, every-step hold-window steps and binned KL against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_unlearn.errors import LightningUnlearnError
from lightning_unlearn.evaluation.functional import (
    MeasurementError,
    binned_kl,
    first_hold_step,
    tolerance_band,
)


def _brute_force(values: list[float], lo: float, hi: float, hold: int) -> tuple[int, bool]:
    """Scan every start k and check the whole window by hand."""
    k_last = len(values) - 1
    for k in range(len(values)):
        window = values[k : k + hold + 1]
        if len(window) == hold + 1 and all(lo <= v <= hi for v in window):
            return k, True
    return k_last - hold, False


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-2, 2, allow_nan=False), min_size=1, max_size=30),
    st.floats(-1, 0.5),
    st.floats(0.0, 1.5),
    st.integers(0, 6),
)
def test_first_hold_step_equals_brute_force(
    values: list[float], lo: float, width: float, hold: int
) -> None:
    hi = lo + width
    out = first_hold_step(torch.tensor(values, dtype=torch.float64), lo, hi, hold=hold)
    assert (int(out.steps), bool(out.arrived)) == _brute_force(values, lo, hi, hold)


def test_first_hold_step_batched_per_example_bands() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.randn(7, 40, generator=g, dtype=torch.float64).cumsum(dim=1) * 0.2
    lo, hi = torch.full((7,), -0.3), torch.linspace(0.0, 1.0, 7)
    out = first_hold_step(values, lo, hi, hold=3, steps=torch.arange(5, 45))
    for i in range(7):
        k, arrived = _brute_force(values[i].tolist(), float(lo[i]), float(hi[i]), 3)
        assert int(out.steps[i]) == k + 5
        assert bool(out.arrived[i]) == arrived


def test_first_hold_step_refuses_a_check_interval() -> None:
    values = torch.tensor([0.9, 0.7, 0.5, 0.5])
    with pytest.raises(MeasurementError, match="every step") as info:
        first_hold_step(values, 0.4, 0.6, steps=torch.tensor([0, 10, 20, 30]))
    assert isinstance(info.value, LightningUnlearnError)
    with pytest.raises(MeasurementError, match="hold"):
        first_hold_step(values, 0.4, 0.6, hold=-1)


def test_nan_is_outside_the_band() -> None:
    out = first_hold_step(torch.tensor([float("nan"), 0.5]), 0.0, 1.0)
    assert int(out.steps) == 1
    assert bool(out.arrived)


def test_tolerance_band_against_numpy() -> None:
    rng = np.random.default_rng(0)
    oracles = rng.normal(size=(4, 6))
    band = tolerance_band(torch.tensor(oracles), z=1.5)
    mean, sd = oracles.mean(axis=0), oracles.std(axis=0, ddof=1)
    np.testing.assert_allclose(band.lower.numpy(), mean - 1.5 * sd, rtol=1e-12)
    np.testing.assert_allclose(band.upper.numpy(), mean + 1.5 * sd, rtol=1e-12)
    rng_band = tolerance_band(torch.tensor(oracles), rule="range")
    np.testing.assert_array_equal(rng_band.lower.numpy(), oracles.min(axis=0))
    np.testing.assert_array_equal(rng_band.upper.numpy(), oracles.max(axis=0))


def test_tolerance_band_with_out_mask_and_too_few_oracles() -> None:
    values = torch.tensor([[1.0, 5.0], [2.0, 6.0], [3.0, 7.0], [9.0, 8.0]])
    out_mask = torch.tensor([[True, False], [True, True], [True, True], [False, True]])
    band = tolerance_band(values, rule="range", mask=out_mask)
    assert band.lower.tolist() == [1.0, 6.0]
    assert band.upper.tolist() == [3.0, 8.0]
    with pytest.raises(MeasurementError, match="at least 3 oracles"):
        tolerance_band(torch.tensor([0.1, 0.2]))
    with pytest.raises(MeasurementError, match="at least 4 oracles"):
        tolerance_band(values, mask=out_mask, min_oracles=4)


def test_binned_kl_matches_scipy_entropy_of_the_same_histograms() -> None:
    rng = np.random.default_rng(0)
    p = rng.normal(size=(60, 5))
    q = rng.normal(loc=0.7, size=(80, 5))
    ours = binned_kl(torch.tensor(p), torch.tensor(q), num_bins=8, smoothing=0.5).numpy()
    for i in range(5):
        both = np.concatenate([p[:, i], q[:, i]])
        edges = np.linspace(both.min(), both.max(), 9)
        cp = np.histogram(p[:, i], edges)[0] + 0.5
        cq = np.histogram(q[:, i], edges)[0] + 0.5
        assert ours[i] == pytest.approx(scipy.stats.entropy(cp, cq), rel=1e-9)
    same = binned_kl(torch.tensor(p), torch.tensor(p), num_bins=8)
    assert torch.equal(same, torch.zeros(5, dtype=torch.float64))
