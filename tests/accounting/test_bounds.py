"""Unlearning steps (THEORY §5, derived constants) and the fitted affine step model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from lightning_unlearn.accounting import (
    PrivacyLedger,
    StepModel,
    UnlearningConstants,
    fit_step_model,
    forget_set_privacy_loss,
    unlearning_steps,
)


def _constants(**overrides: float) -> UnlearningConstants:
    values: dict = dict(
        alpha=2, c_lsi=0.5, langevin_sigma=2.0, lr=0.05, d0=0.1, d_irr=0.1, target_epsilon=0.5
    )
    values.update(overrides)
    return UnlearningConstants(**values)


def test_matches_hand_computation() -> None:
    c = _constants()
    # slope alpha C_LSI / (sigma^2 eta) = 2 * 0.5 / (4 * 0.05) = 5; c_2 = 1.5, c_4 = 3.5 / 3
    # P = 10: 5 * log(1.5 * (3.5 / 3 * 10 + 0.1) / 0.4) = 5 * log(44.125) = 18.935... -> 19
    assert c.steps_per_nat == pytest.approx(5.0)
    assert c.privacy_order == 8
    steps = unlearning_steps(torch.tensor([10.0, 0.0, 1e-9]), c)
    assert steps.dtype == torch.int64
    # P = 0: 5 * log(1.5 * 0.1 / 0.4) < 0 -> clamped to 0
    assert steps.tolist() == [19, 0, 0]
    assert unlearning_steps(10.0, c).item() == 19
    # no D0 and P = 0: log 0 = -inf -> 0 steps; infinite P -> the clamp value
    c0 = _constants(d0=0.0)
    assert unlearning_steps(torch.tensor([0.0, math.inf]), c0).tolist() == [0, 2**62]


@settings(max_examples=50, deadline=None)
@given(
    ps=st.lists(st.floats(0.0, 1e6), min_size=2, max_size=20),
    c_lsi=st.floats(0.01, 10.0),
    d0=st.floats(0.0, 5.0),
    target=st.floats(0.01, 10.0),
)
def test_non_decreasing_and_non_negative(
    ps: list[float], c_lsi: float, d0: float, target: float
) -> None:
    c = _constants(c_lsi=c_lsi, d0=d0, d_irr=0.0, target_epsilon=target)
    steps = unlearning_steps(torch.tensor(sorted(ps), dtype=torch.float64), c)
    assert bool((steps >= 0).all())
    assert bool((steps[1:] >= steps[:-1]).all())


def test_constants_validation() -> None:
    with pytest.raises(ValueError, match="`target_epsilon`"):
        _constants(d_irr=1.0, target_epsilon=0.5)
    with pytest.raises(ValueError, match="`alpha`"):
        _constants(alpha=1)
    with pytest.raises(TypeError, match="`alpha`"):
        _constants(alpha=2.5)
    with pytest.raises(ValueError, match="`c_lsi`"):
        _constants(c_lsi=0.0)
    with pytest.raises(ValueError, match="`d0`"):
        _constants(d0=-1.0)
    with pytest.raises(ValueError, match=">= 0"):
        unlearning_steps(torch.tensor([-1.0]), _constants())


def test_fit_recovers_known_model_and_reproduces_steps() -> None:
    a, b = 7.5, -3.0
    steps = torch.arange(5, 60, 5, dtype=torch.float64)
    p = torch.exp((steps - b) / a)  # exactly on the line
    model = fit_step_model(p, steps)
    assert model.a == pytest.approx(a, rel=1e-10)
    assert model.b == pytest.approx(b, rel=1e-10)
    assert model.r2 == pytest.approx(1.0, abs=1e-12)
    assert model.num_points == steps.numel()
    assert model.predict(p).tolist() == steps.long().tolist()
    assert model.predict(p, rounding="ceil").tolist() in (
        steps.long().tolist(),
        (steps.long() + 1).tolist(),
    )


def test_fit_matches_scipy_linregress_on_noisy_data() -> None:
    rng = np.random.default_rng(0)
    p = np.exp(rng.uniform(-3, 5, size=40))
    k = 4.0 * np.log(p) + 12.0 + rng.normal(0, 2.0, size=40)
    model = fit_step_model(torch.as_tensor(p), torch.as_tensor(k))
    ref = stats.linregress(np.log(p), k)
    assert model.a == pytest.approx(ref.slope, rel=1e-10)
    assert model.b == pytest.approx(ref.intercept, rel=1e-10)
    assert model.r2 == pytest.approx(ref.rvalue**2, rel=1e-10)
    assert model.log_p_range == pytest.approx((np.log(p).min(), np.log(p).max()))


def test_step_model_predict_rounding_and_floor() -> None:
    m = StepModel(a=2.0, b=-1.0)
    p = torch.tensor([math.e**0.3, math.e**2.1, 1e-30, 0.0])
    assert m.predict(p).tolist() == [0, 3, 0, 0]
    assert m.predict(p, rounding="ceil").tolist() == [0, 4, 0, 0]
    with pytest.raises(ValueError, match="rounding"):
        m.predict(p, rounding="floor")  # type: ignore[arg-type]


def test_fit_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        fit_step_model(torch.ones(3), torch.ones(2))
    with pytest.raises(ValueError, match="positive finite"):
        fit_step_model(torch.tensor([0.0, 1.0]), torch.ones(2))
    with pytest.raises(ValueError, match="two distinct"):
        fit_step_model(torch.tensor([2.0, 2.0]), torch.tensor([1.0, 3.0]))


def test_forget_set_aggregate_and_ledger_order() -> None:
    ledger = PrivacyLedger(4, alphas=(2, 8))
    rdp = torch.tensor([[0.1, 1.0], [0.2, 3.0], [0.3, 2.0]], dtype=torch.float64)
    ledger.update(torch.tensor([0, 1, 3]), rdp, torch.ones(3))
    c = _constants()  # alpha = 2 -> P at order 8
    p8 = ledger.privacy_loss(c.privacy_order)
    ids = torch.tensor([1, 3])
    assert forget_set_privacy_loss(p8, ids).item() == 3.0
    assert forget_set_privacy_loss(p8, ids, "mean").item() == 2.5
    assert forget_set_privacy_loss(p8, ids, "sum").item() == 5.0
    with pytest.raises(ValueError, match="non-empty"):
        forget_set_privacy_loss(p8, torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        forget_set_privacy_loss(p8, ids, "median")  # type: ignore[arg-type]


def test_step_model_from_constants_matches_the_bound() -> None:
    c = _constants(d0=0.0, d_irr=0.05, target_epsilon=0.3)
    model = c.step_model()
    p = torch.logspace(-4, 6, 200, dtype=torch.float64)
    assert torch.equal(model.predict(p, rounding="ceil"), unlearning_steps(p, c))
    # fitting the bound's own (unrounded) values recovers the same line
    fitted = fit_step_model(p, model.predict_float(p))
    assert fitted.a == pytest.approx(model.a, rel=1e-9)
    assert fitted.b == pytest.approx(model.b, rel=1e-9)
    with pytest.raises(ValueError, match="`d0`"):
        _constants(d0=0.5).step_model()
