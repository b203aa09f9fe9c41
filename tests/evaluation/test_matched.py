"""Matched-compute bands, arrival in a moving band and the seed-level bootstrap, against
brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_unlearn.evaluation.functional import (
    MeasurementError,
    first_hold_step,
    first_hold_step_in_band,
    grouped_bootstrap_spearman,
    spearman,
    tolerance_band,
    trajectory_band,
)


def _brute_force(values: list[float], lo: list[float], hi: list[float], hold: int):
    """Scan every start k and check the whole window against each step's own band."""
    for k in range(len(values)):
        window = range(k, k + hold + 1)
        if k + hold < len(values) and all(lo[j] <= values[j] <= hi[j] for j in window):
            return k, True
    return len(values) - 1 - hold, False


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(-2, 2), st.floats(-1, 0.5), st.floats(0, 1.5)),
        min_size=1,
        max_size=30,
    ),
    st.integers(0, 5),
)
def test_first_hold_step_in_band_equals_brute_force(rows: list, hold: int) -> None:
    values = [v for v, _, _ in rows]
    lo = [a for _, a, _ in rows]
    hi = [a + w for _, a, w in rows]
    f64 = torch.float64
    out = first_hold_step_in_band(
        torch.tensor(values, dtype=f64),
        torch.tensor(lo, dtype=f64),
        torch.tensor(hi, dtype=f64),
        hold=hold,
    )
    assert (int(out.steps), bool(out.arrived)) == _brute_force(values, lo, hi, hold)


def test_a_constant_band_gives_first_hold_step() -> None:
    g = torch.Generator().manual_seed(1)
    values = torch.randn(5, 50, generator=g, dtype=torch.float64).cumsum(dim=1) * 0.2
    lo, hi = torch.linspace(-0.5, 0.0, 5), torch.full((5,), 0.4, dtype=torch.float64)
    moving = first_hold_step_in_band(values, lo[:, None].expand(5, 50), hi[:, None], hold=3)
    fixed = first_hold_step(values, lo, hi, hold=3)
    assert torch.equal(moving.steps, fixed.steps)
    assert torch.equal(moving.arrived, fixed.arrived)


def test_moving_band_refuses_gaps_and_bad_shapes() -> None:
    v = torch.zeros(4)
    with pytest.raises(MeasurementError, match="every step"):
        first_hold_step_in_band(v, v - 1, v + 1, steps=torch.tensor([0, 10, 20, 30]))
    with pytest.raises(MeasurementError, match="broadcast"):
        first_hold_step_in_band(v, torch.zeros(3), torch.ones(3))
    with pytest.raises(MeasurementError, match="broadcast to `values`"):
        first_hold_step_in_band(v, torch.zeros(2, 4), torch.ones(2, 4))


def test_trajectory_band_is_the_band_of_each_step() -> None:
    g = torch.Generator().manual_seed(0)
    traj = torch.randn(6, 4, 9, generator=g, dtype=torch.float64)  # [K, E, T]
    mask = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 1], [1, 1, 1, 1], [0, 1, 1, 1],
                         [1, 0, 1, 1]], dtype=torch.bool)  # fmt: skip
    traj_nan = torch.where(mask[..., None], traj, float("nan"))  # masked-out entries unused
    band = trajectory_band(traj_nan, mask=mask, z=1.5)
    assert band.lower.shape == (4, 9)
    for e in range(4):
        sel = mask[:, e]
        for t in range(9):
            vals = traj[sel, e, t].numpy()
            mean, sd = vals.mean(), vals.std(ddof=1)
            assert band.center[e, t].item() == pytest.approx(mean, rel=1e-12, abs=1e-12)
            assert band.upper[e, t].item() == pytest.approx(mean + 1.5 * sd, rel=1e-12)
    set_band = trajectory_band(traj[:, 0, :])  # [M, T]: one band per step
    for t in range(9):
        ref = tolerance_band(traj[:, 0, t])
        assert torch.allclose(set_band.lower[t], ref.lower, rtol=1e-13, atol=1e-13)
    with pytest.raises(MeasurementError, match="at least 3 oracles"):
        trajectory_band(traj[:2, 0, :])
    with pytest.raises(MeasurementError, match="shape"):
        trajectory_band(traj, mask=mask[:, :3])


def test_grouped_spearman_ranks_within_groups() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, generator=g, dtype=torch.float64)
    y = x + 0.8 * torch.randn(60, generator=g, dtype=torch.float64)
    groups = torch.arange(60) // 20
    # One group: the estimate is Spearman's rho (scipy as the reference).
    one = grouped_bootstrap_spearman(x[:20], y[:20], groups[:20], num_resamples=50)
    assert one.estimate == pytest.approx(scipy.stats.spearmanr(x[:20], y[:20])[0], abs=1e-12)
    # Per-group monotone rescaling (each seed's P on its own scale) changes nothing.
    scale = torch.tensor([1.0, 1e3, 1e-3], dtype=torch.float64)[groups]
    a = grouped_bootstrap_spearman(x, y, groups, num_resamples=200, seed=3)
    b = grouped_bootstrap_spearman(torch.exp(x) * scale, y, groups, num_resamples=200, seed=3)
    assert a == b
    assert a.low <= a.estimate <= a.high
    # The estimate is rho of the pooled within-group scaled ranks, by hand.
    ranks = []
    for v in (x, y):
        r = np.empty(60)
        for k in range(3):
            sel = (groups == k).numpy()
            r[sel] = scipy.stats.rankdata(v.numpy()[sel]) / (sel.sum() + 1)
        ranks.append(r)
    assert a.estimate == pytest.approx(scipy.stats.spearmanr(*ranks)[0], abs=1e-12)
    # Pooling raw values across groups on different scales would not give the same answer.
    assert spearman(torch.exp(x) * scale, y) != pytest.approx(a.estimate, abs=1e-3)


def test_grouped_bootstrap_interval_widens_with_seed_to_seed_variation() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(90, generator=g, dtype=torch.float64)
    groups = torch.arange(90) // 30
    noise = torch.randn(90, generator=g, dtype=torch.float64)
    alike = x + 0.5 * noise
    # one seed carries the signal, two do not: the interval must be wider
    differ = torch.where(groups == 0, x, noise)
    ci_alike = grouped_bootstrap_spearman(x, alike, groups, num_resamples=300)
    ci_differ = grouped_bootstrap_spearman(x, differ, groups, num_resamples=300)
    assert ci_differ.high - ci_differ.low > ci_alike.high - ci_alike.low


def test_grouped_bootstrap_refuses_bad_inputs() -> None:
    x = torch.arange(5.0)
    with pytest.raises(MeasurementError, match="one length"):
        grouped_bootstrap_spearman(x, x, torch.zeros(4))
    with pytest.raises(MeasurementError, match="at least 3"):
        grouped_bootstrap_spearman(x[:2], x[:2], torch.zeros(2))
    with pytest.raises(MeasurementError, match="num_resamples"):
        grouped_bootstrap_spearman(x, x, torch.zeros(5), num_resamples=5)
