"""per_step_rdp against Opacus' RDP analysis, a high-precision direct sum, and its invariants."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants.analysis.rdp import compute_rdp

from lightning_unlearn.accounting import (
    DEFAULT_ALPHAS,
    dpsgd_ratios,
    per_step_rdp,
    validate_alphas,
)
from lightning_unlearn.errors import UnsupportedOrderError

ORDERS = tuple(range(2, 65))


@pytest.mark.parametrize("q", [0.001, 0.01, 0.1, 1.0])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 5.0])
def test_worst_case_ratio_matches_opacus_compute_rdp(q: float, sigma: float) -> None:
    ratios = torch.full((3,), 1.0 / sigma, dtype=torch.float64)
    ours = per_step_rdp(ratios, sample_rate=q, alphas=ORDERS)
    reference = torch.as_tensor(
        compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(ORDERS)), dtype=torch.float64
    )
    assert ours.shape == (3, len(ORDERS))
    assert ours.dtype == torch.float64
    for row in ours:
        torch.testing.assert_close(row, reference, rtol=1e-9, atol=0.0)


def _mp_rdp(q: float, r: float, alpha: int) -> float:
    """Direct 120-digit evaluation of the binomial sum of THEORY §2 (no log-space tricks)."""
    with mpmath.workdps(120):
        q_, r_ = mpmath.mpf(q), mpmath.mpf(r)
        total = mpmath.fsum(
            mpmath.binomial(alpha, k)
            * (1 - q_) ** (alpha - k)
            * q_**k
            * mpmath.exp(mpmath.mpf(k * (k - 1)) / 2 * r_**2)
            for k in range(alpha + 1)
        )
        return float(mpmath.log(total) / (alpha - 1))


@pytest.mark.parametrize(
    ("q", "r"),
    [
        (1e-4, 0.05),
        (0.003, 0.7),
        (0.02, 1.3),
        (0.25, 0.2),
        (0.5, 3.0),
        (0.9, 0.01),
        (0.01, 1e-6),  # tiny losses: the direct double-precision sum would cancel
        (0.2, 1e-25),
        (1e-6, 2.0),  # tiny rate, large ratio: terms spanning thousands of orders of magnitude
        (1e-3, 20.0),
        (0.05, 0.5455),  # either side of the CPU's switch from linear to log space (alpha 64)
        (0.05, 0.5456),
    ],
)
def test_arbitrary_ratios_match_high_precision_sum(q: float, r: float) -> None:
    alphas = (2, 3, 5, 8, 13, 32, 64)
    ours = per_step_rdp(torch.tensor([r], dtype=torch.float64), q, alphas)[0]
    reference = torch.tensor([_mp_rdp(q, r, a) for a in alphas], dtype=torch.float64)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=0.0)


def test_mixed_ratios_each_match_their_own_opacus_value() -> None:
    sigmas = np.array([0.7, 1.0, 3.0, 10.0, 40.0])
    ours = per_step_rdp(torch.as_tensor(1.0 / sigmas), 0.05, DEFAULT_ALPHAS)
    for row, sigma in zip(ours, sigmas, strict=True):
        ref = compute_rdp(q=0.05, noise_multiplier=float(sigma), steps=1, orders=DEFAULT_ALPHAS)
        np.testing.assert_allclose(row.numpy(), ref, rtol=1e-9)


def test_shapes_chunking_and_special_cases() -> None:
    r = torch.rand(7, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = per_step_rdp(r, 0.1, (2, 4))
    assert out.shape == (7, 5, 2)
    torch.testing.assert_close(out.reshape(-1, 2), per_step_rdp(r.reshape(-1), 0.1, (2, 4)))
    # float32 input is promoted, the result is float64
    assert per_step_rdp(r.float(), 0.1, (2,)).dtype == torch.float64
    assert per_step_rdp(r, 0.0, (2, 3)).abs().sum() == 0
    assert per_step_rdp(torch.empty(0), 0.5, (2, 3)).shape == (0, 2)
    special = per_step_rdp(torch.tensor([math.inf, math.nan, 0.0]), 0.5, DEFAULT_ALPHAS)
    assert torch.isinf(special[0]).all()
    assert torch.isnan(special[1]).all()
    assert bool((special[2] == 0).all())
    # unsorted and duplicated orders are normalised; columns follow sorted order
    torch.testing.assert_close(per_step_rdp(r[0], 0.1, (4, 2, 4)), per_step_rdp(r[0], 0.1, (2, 4)))


def test_large_batch_is_chunked_without_changing_values(monkeypatch: pytest.MonkeyPatch) -> None:
    import lightning_unlearn.accounting.rdp as rdp_module

    r = torch.linspace(0, 3, 1000, dtype=torch.float64)
    whole = per_step_rdp(r, 0.01, DEFAULT_ALPHAS)
    monkeypatch.setattr(rdp_module, "_CHUNK_ELEMENTS", 143 * 7)  # chunks of 7 rows
    torch.testing.assert_close(per_step_rdp(r, 0.01, DEFAULT_ALPHAS), whole, rtol=1e-15, atol=0)


@settings(max_examples=60, deadline=None)
@given(
    rs=st.lists(st.floats(0.0, 20.0), min_size=2, max_size=30),
    q=st.floats(1e-5, 1.0),
)
def test_non_decreasing_in_ratio(rs: list[float], q: float) -> None:
    r = torch.tensor(sorted(rs), dtype=torch.float64)
    out = per_step_rdp(r, q, DEFAULT_ALPHAS)
    diffs = out[1:] - out[:-1]
    assert bool((diffs >= -1e-12 * out[1:].abs()).all())


@settings(max_examples=40, deadline=None)
@given(q=st.floats(0.0, 1.0))
def test_zero_at_zero_ratio(q: float) -> None:
    out = per_step_rdp(torch.zeros(4, dtype=torch.float64), q, DEFAULT_ALPHAS)
    assert bool((out == 0).all())


@settings(max_examples=40, deadline=None)
# r = 0 or r >= 1e-100: below that r * r is subnormal and the reference `alpha * r * r / 2`,
# evaluated in another order in Python, rounds differently (5e-324 against 0 at r = 4.7e-163).
@given(r=st.one_of(st.just(0.0), st.floats(1e-100, 10.0)), alpha=st.integers(2, 128))
def test_full_batch_closed_form(r: float, alpha: int) -> None:
    out = per_step_rdp(torch.tensor([r], dtype=torch.float64), 1.0, (alpha,))
    assert out.item() == pytest.approx(alpha * r * r / 2, rel=1e-12, abs=0)
    # and the general formula is continuous at q -> 1 (a different code path)
    near = per_step_rdp(torch.tensor([r], dtype=torch.float64), 1 - 1e-9, (alpha,))
    assert near.item() == pytest.approx(alpha * r * r / 2, rel=1e-5, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    norms=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20),
    clip=st.floats(0.01, 100.0),
    sigma=st.floats(0.3, 20.0),
    q=st.floats(1e-4, 1.0),
)
def test_per_instance_below_worst_case_with_clipping(
    norms: list[float], clip: float, sigma: float, q: float
) -> None:
    grad_norms = torch.tensor(norms, dtype=torch.float64) * clip  # all <= clip norm
    per_instance = per_step_rdp(dpsgd_ratios(grad_norms, sigma, clip), q, DEFAULT_ALPHAS)
    worst = per_step_rdp(torch.tensor([1.0 / sigma], dtype=torch.float64), q, DEFAULT_ALPHAS)
    assert bool((per_instance <= worst * (1 + 1e-12)).all())


def test_validate_alphas() -> None:
    assert validate_alphas([64, 2, 8.0, 2]) == (2, 8, 64)
    assert validate_alphas(3) == (3,)
    assert validate_alphas(torch.tensor([4, 2])) == (2, 4)
    for bad in ([1.5], [1], [0], [], [True], ["2"], [2, 2.5], [10_000]):
        with pytest.raises(UnsupportedOrderError, match="Expected"):
            validate_alphas(bad)
    with pytest.raises(UnsupportedOrderError):
        per_step_rdp(torch.ones(2), 0.1, (2, 3.5))


def test_bad_sample_rate() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        per_step_rdp(torch.ones(2), 1.5, (2,))
    with pytest.raises(TypeError, match="sample_rate"):
        per_step_rdp(torch.ones(2), "0.1", (2,))  # type: ignore[arg-type]


@pytest.mark.parametrize("q", [1e-6, 0.004, 0.3, 0.999])
@pytest.mark.parametrize("alphas", [DEFAULT_ALPHAS, (2, 17, 300)])
def test_linear_and_log_space_paths_agree_on_a_mixed_batch(
    q: float, alphas: tuple[int, ...]
) -> None:
    """On the CPU small ratios are summed in linear space, the others in log space: a batch
    mixing both (and 0, NaN, inf) gives each example what the log-space path alone gives."""
    from lightning_unlearn.accounting.rdp import _LINEAR_LIMIT, _log_space_rdp

    limit = math.sqrt(_LINEAR_LIMIT / (max(alphas) * (max(alphas) - 1) / 2))  # the switch
    r = torch.cat(
        [
            torch.tensor([0.0, limit * (1 - 1e-12), limit * (1 + 1e-12), math.nan, math.inf]),
            torch.logspace(-12, 1.5, 400, dtype=torch.float64),
        ]
    ).to(torch.float64)
    ours = per_step_rdp(r, q, alphas)
    reference = _log_space_rdp(r * r, validate_alphas(alphas), q)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=0.0, equal_nan=True)
    assert bool((ours[0] == 0).all())
    assert bool(ours[3].isnan().all())
    assert bool(ours[4].isinf().all())
    # both sides of the switch were exercised
    assert bool((r * r * max(alphas) * (max(alphas) - 1) / 2 <= _LINEAR_LIMIT).sum() > 40)
    assert bool((r * r * max(alphas) * (max(alphas) - 1) / 2 > _LINEAR_LIMIT).sum() > 40)
    # a batch of one example takes the same path as inside the mixed batch
    single = torch.stack([per_step_rdp(r[i : i + 1], q, alphas)[0] for i in range(0, 405, 37)])
    torch.testing.assert_close(single, ours[0:405:37], rtol=1e-12, atol=0.0, equal_nan=True)
