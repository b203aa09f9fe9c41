"""The step-by-step worst-case accountant against Opacus' RDP accountant (THEORY §4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp

from lightning_unlearn.accounting import (
    DEFAULT_ALPHAS,
    NoiseConfig,
    WorstCaseAccountant,
    per_step_rdp,
    step_rdp_in_pieces,
)


@pytest.mark.parametrize("convention", ["dpsgd", "nominal"])
def test_matches_opacus_over_a_run_whose_rate_changes(convention: str) -> None:
    """Two phases of (q, steps): Opacus composes the same mechanisms; lr is irrelevant here."""
    sigma, clip, delta = 1.3, 0.7, 1e-5
    phases = [(0.01, 300, 0.1), (0.05, 120, 0.02)]  # (q, steps, lr)
    ours = WorstCaseAccountant(NoiseConfig(convention, sigma, max_grad_norm=clip), DEFAULT_ALPHAS)  # type: ignore[arg-type]
    reference = RDPAccountant()
    for q, steps, lr in phases:
        for _ in range(steps):
            ours.step(lr=lr, global_batch=64, sample_rate=q)
            reference.step(noise_multiplier=sigma, sample_rate=q)
    assert ours.rdp is not None
    expected = sum(
        np.asarray(compute_rdp(q=q, noise_multiplier=sigma, steps=t, orders=list(DEFAULT_ALPHAS)))
        for q, t, _ in phases
    )
    np.testing.assert_allclose(ours.rdp.numpy(), expected, rtol=1e-9)
    ref_eps, _ = reference.get_privacy_spent(delta=delta, alphas=list(DEFAULT_ALPHAS))
    assert ours.epsilon(delta) == pytest.approx(float(ref_eps), rel=1e-9)


def test_sgld_worst_case_follows_the_learning_rate() -> None:
    """SGLD's clip ratio r_C = sqrt(lr / 2) C / (B sigma) (THEORY §1) changes with the lr."""
    sigma, clip, batch, q = 2.0, 1.0, 8, 0.1
    ours = WorstCaseAccountant(NoiseConfig("sgld", sigma, max_grad_norm=clip), (2, 8))
    for lr in (0.5, 0.125):
        ours.step(lr=lr, global_batch=batch, sample_rate=q)
    ratio = NoiseConfig("sgld", sigma, max_grad_norm=clip).ratios
    expected = sum(
        per_step_rdp(
            ratio(torch.tensor([clip], dtype=torch.float64), lr=lr, batch_size=batch), q, (2, 8)
        )[0]
        for lr in (0.5, 0.125)
    )
    assert ours.rdp is not None
    assert torch.allclose(ours.rdp, expected, rtol=1e-12, atol=0)


def test_without_clipping_there_is_no_worst_case() -> None:
    ours = WorstCaseAccountant(NoiseConfig("dpsgd", 1.0), (2, 4))
    ours.step(lr=0.1, global_batch=32, sample_rate=0.5)
    assert ours.rdp is None
    assert ours.epsilon(1e-5) is None


def test_pieces_equal_one_call() -> None:
    """Splitting rows is exact: per_step_rdp is elementwise in the ratios."""
    ratios = torch.cat([torch.linspace(0, 3, 1500, dtype=torch.float64), torch.tensor([math.inf])])
    pieces = step_rdp_in_pieces(ratios, 0.03, DEFAULT_ALPHAS)
    assert pieces.shape == (ratios.shape[0], len(DEFAULT_ALPHAS))
    assert torch.equal(pieces, per_step_rdp(ratios, 0.03, DEFAULT_ALPHAS))
