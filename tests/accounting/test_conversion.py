"""RDP -> (epsilon, delta) against Opacus' get_privacy_spent, and the worst case of a run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from lightning_unlearn.accounting import (
    DEFAULT_ALPHAS,
    per_step_rdp,
    rdp_to_epsilon,
    worst_case_epsilon,
    worst_case_rdp,
)

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the:UserWarning")

ORDERS = tuple(range(2, 65))


@pytest.mark.parametrize("q", [0.001, 0.01, 0.1, 1.0])
@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 5.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-3])
def test_matches_get_privacy_spent(q: float, sigma: float, delta: float) -> None:
    steps = 250
    rdp = per_step_rdp(torch.tensor([1.0 / sigma], dtype=torch.float64), q, ORDERS) * steps
    eps, best = rdp_to_epsilon(rdp, ORDERS, delta)
    ref_rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(ORDERS))
    ref_eps, ref_alpha = get_privacy_spent(orders=list(ORDERS), rdp=ref_rdp, delta=delta)
    assert eps.shape == (1,)
    assert eps.item() == pytest.approx(float(ref_eps), rel=1e-9)
    assert best.item() == int(ref_alpha)


def test_vectorised_rows_each_match_get_privacy_spent() -> None:
    gen = torch.Generator().manual_seed(3)
    rdp = torch.rand(5, 4, len(DEFAULT_ALPHAS), dtype=torch.float64, generator=gen) * 3
    eps, best = rdp_to_epsilon(rdp, DEFAULT_ALPHAS, 1e-5)
    assert eps.shape == best.shape == (5, 4)
    assert best.dtype == torch.int64
    for i in range(5):
        for j in range(4):
            ref_eps, ref_alpha = get_privacy_spent(
                orders=list(DEFAULT_ALPHAS), rdp=rdp[i, j].numpy(), delta=1e-5
            )
            assert eps[i, j].item() == pytest.approx(float(ref_eps), rel=1e-12)
            assert best[i, j].item() == int(ref_alpha)


def test_nan_orders_are_ignored_and_negative_epsilon_is_clamped() -> None:
    rdp = torch.tensor([[math.nan, 0.5, 1.0], [math.nan, math.nan, math.nan]], dtype=torch.float64)
    eps, _ = rdp_to_epsilon(rdp, (2, 4, 8), 1e-5)
    ref, _ = get_privacy_spent(orders=[2, 4, 8], rdp=rdp[0].numpy(), delta=1e-5)
    assert eps[0].item() == pytest.approx(float(ref))
    assert math.isinf(eps[1].item())
    # zero loss with a huge delta: the formula goes below zero; epsilon is reported as 0
    raw, _ = get_privacy_spent(orders=[2, 4, 8], rdp=np.zeros(3), delta=0.9)
    assert raw < 0
    eps0, _ = rdp_to_epsilon(torch.zeros(3, dtype=torch.float64), (2, 4, 8), 0.9)
    assert eps0.item() == 0.0


def test_worst_case_matches_opacus_rdp_accountant() -> None:
    sigma, q, steps, delta = 1.1, 0.02, 700, 1e-5
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=sigma, sample_rate=q)
    ref_eps, ref_alpha = accountant.get_privacy_spent(delta=delta, alphas=list(DEFAULT_ALPHAS))
    eps, alpha = worst_case_epsilon(sigma, q, steps, DEFAULT_ALPHAS, delta)
    assert eps == pytest.approx(float(ref_eps), rel=1e-9)
    assert alpha == int(ref_alpha)
    np.testing.assert_allclose(
        worst_case_rdp(sigma, q, steps, DEFAULT_ALPHAS).numpy(),
        compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(DEFAULT_ALPHAS)),
        rtol=1e-9,
    )


def test_bad_arguments() -> None:
    rdp = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="`delta`"):
        rdp_to_epsilon(rdp, (2, 4, 8), 0.0)
    with pytest.raises(ValueError, match="last dimension"):
        rdp_to_epsilon(rdp, (2, 4), 1e-5)
    with pytest.raises(ValueError, match="sorted ascending"):
        rdp_to_epsilon(rdp, (8, 4, 2), 1e-5)
    with pytest.raises(ValueError, match="`steps`"):
        worst_case_rdp(1.0, 0.1, -1)
    with pytest.raises(ValueError, match="`noise_multiplier`"):
        worst_case_rdp(0.0, 0.1, 10)
