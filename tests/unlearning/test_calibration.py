"""Budget calibration: the fit, its jackknife interval, the set prediction, the file, the budget."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lightning_unlearn.accounting import PrivacyLedger, fit_step_model
from lightning_unlearn.errors import BudgetTooLargeError, IntegrityError
from lightning_unlearn.unlearning import compute_budget
from lightning_unlearn.unlearning.calibration import (
    BudgetCalibration,
    CalibrationError,
    fit_calibration,
    loo_residuals,
)


def _cal(**kw: object) -> BudgetCalibration:
    base = dict(
        a=10.0, b=5.0, order=8, miscoverage=0.2, residual_low=-3.0, residual_high=4.0,
        num_points=20, num_censored=0, cap=500, log_p_range=(0.0, 6.0), rates=(0.02, 0.05),
        level=0.05, threshold=2.0, hold=3, metadata={"num_samples": 6},
    )  # fmt: skip
    base.update(kw)
    return BudgetCalibration(**base)  # type: ignore[arg-type]


def test_loo_residuals_match_explicit_refits() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(15, generator=g, dtype=torch.float64) * 5
    y = 3 * x + 2 + torch.randn(15, generator=g, dtype=torch.float64)
    a, b, loo = loo_residuals(x, y)
    full = fit_step_model(x.exp(), y)  # the package's own least squares, on log P = x
    assert (a, b) == pytest.approx((full.a, full.b), rel=1e-10)
    for i in range(15):
        keep = torch.arange(15) != i
        m = fit_step_model(x[keep].exp(), y[keep])
        assert loo[i].item() == pytest.approx(y[i].item() - (m.a * x[i].item() + m.b), rel=1e-9)
    with pytest.raises(CalibrationError, match="three points"):
        loo_residuals(torch.ones(5), torch.arange(5.0))


def test_interval_covers_new_points_at_its_nominal_rate() -> None:
    g = torch.Generator().manual_seed(1)
    n, m, fits = 40, 200, 60
    coverage = []
    for _ in range(fits):  # the interval is random too: its coverage is an average over fits
        x = torch.rand(n + m, generator=g, dtype=torch.float64) * 6
        k = 20 * x + 10 + 8 * torch.randn(n + m, generator=g, dtype=torch.float64)
        cal = fit_calibration(
            x[:n].exp(), k[:n], torch.ones(n, dtype=torch.bool), order=8, cap=10_000,
            rates=torch.zeros(2), level=0.05, threshold=2.0, hold=0, miscoverage=0.2,
        )  # fmt: skip
        pred = cal.a * x[n:] + cal.b
        inside = (pred + cal.residual_low <= k[n:]) & (k[n:] <= pred + cal.residual_high)
        coverage.append(float(inside.double().mean()))
    # Nominal 0.8 (the jackknife ranks give slightly more, 0.805 at n = 40); the mean over
    # 60 x 200 points has a standard error of about 0.01.
    assert 0.76 <= sum(coverage) / fits <= 0.86


def test_censored_points_enter_at_the_cap_and_are_counted() -> None:
    p = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=torch.float64)
    steps = torch.tensor([0, 3, 5, 7, 9])
    arrived = torch.tensor([True, True, True, True, False])
    cal = fit_calibration(
        p, steps, arrived, order=8, cap=50, rates=torch.zeros(1), level=0.05, threshold=2.0,
        hold=0,
    )  # fmt: skip
    ref = fit_step_model(p, torch.tensor([0.0, 3, 5, 7, 50]))
    assert (cal.a, cal.b) == pytest.approx((ref.a, ref.b), rel=1e-10)
    assert cal.num_censored == 1
    assert cal.num_points == 5


def test_set_prediction_is_the_order_statistic_of_the_tolerance() -> None:
    cal = _cal()
    p = torch.tensor([1.0, 2.0, 5.0, 3.0, 50.0, 7.0, 9.0, 11.0, 2.5, 4.0], dtype=torch.float64)
    c = cal.tolerance(p.numel())
    k = sorted((10.0 * math.log(v) + 5.0) for v in p.tolist())
    rank = p.numel() - c  # all but c examples must look OUT
    pred = cal.predict(p)
    assert pred.steps == math.ceil(k[rank - 1] - 1e-9)
    assert pred.low == math.floor(k[rank - 1] - 3.0 + 1e-9)
    assert pred.high == math.ceil(k[rank - 1] + 4.0 - 1e-9)
    # Monotone: raising any example's P never lowers the prediction.
    bigger = p.clone()
    bigger[0] = 1e6
    assert cal.predict(bigger).high >= pred.high
    with pytest.raises(CalibrationError, match="positive and finite"):
        cal.predict(torch.tensor([0.0, 1.0]))


def test_file_round_trip_and_integrity(tmp_path) -> None:
    cal = _cal(residual_high=math.inf)
    path = cal.save(tmp_path / "calibration.json")
    assert BudgetCalibration.load(path) == cal
    data = json.loads(path.read_text())
    data["a"] = 11.0
    path.write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match="sha256"):
        BudgetCalibration.load(path)
    path.write_text(json.dumps({"kind": "other"}))
    with pytest.raises(CalibrationError, match="version"):
        BudgetCalibration.load(path)
    with pytest.raises(CalibrationError, match="No budget calibration"):
        BudgetCalibration.load(tmp_path / "missing.json")


def test_compute_budget_uses_the_calibrations_upper_end(tmp_path) -> None:
    ledger = PrivacyLedger(6, alphas=(2, 8), metadata={"steps": 1000})
    ledger.privacy[:, 1] = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0], dtype=torch.float64)
    cal = _cal()
    forget = [1, 4]
    expected = cal.predict(ledger.privacy_loss(8)[forget]).high
    assert compute_budget(ledger, forget, calibration=cal) == expected
    assert compute_budget(ledger, forget, calibration=cal.save(tmp_path / "c.json")) == expected
    with pytest.raises(ValueError, match="exactly one"):
        compute_budget(ledger, forget, calibration=cal, steps=3)
    with pytest.raises(BudgetTooLargeError, match="cheaper"):
        compute_budget(ledger, forget, calibration=_cal(a=1e4))
    with pytest.raises(BudgetTooLargeError):
        compute_budget(ledger, forget, calibration=_cal(residual_high=math.inf))
    with pytest.raises(CalibrationError, match="6-example"):
        compute_budget(ledger, forget, calibration=_cal(metadata={"num_samples": 7}))


def test_hurdle_fit_and_prediction() -> None:
    p = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0], dtype=torch.float64)
    steps = torch.tensor([0, 0, 6, 9, 15, 18])
    flagged = torch.tensor([False, False, True, True, True, True])
    kw = dict(order=8, cap=50, rates=torch.zeros(1), level=0.05, threshold=2.0, hold=0)
    cal = fit_calibration(
        p, steps, torch.ones(6, dtype=torch.bool), initially_flagged=flagged, **kw
    )
    ref = fit_step_model(p[2:], steps[2:].double())  # the flagged examples only
    assert cal.hurdle
    assert (cal.a, cal.b, cal.num_points) == pytest.approx((ref.a, ref.b, 4), rel=1e-10)
    # Fewer than three flagged: the plain fit on all points.
    plain = fit_calibration(
        p, steps, torch.ones(6, dtype=torch.bool), initially_flagged=flagged & (p > 10), **kw
    )
    assert not plain.hurdle
    assert plain.num_points == 6
    # Unflagged examples need no step; all flagged is the conservative default.
    assert cal.predict(p, torch.zeros(6, dtype=torch.bool)) == (0, 0, 0.0)
    assert cal.predict(p, torch.ones(6, dtype=torch.bool)) == cal.predict(p)


def test_interval_always_contains_its_point_prediction() -> None:
    """Skewed residuals (one far outlier in the middle of a line) put both jackknife quantiles
    below 0; the ends are widened to 0 so the budget (the upper end) is never below the line."""
    import numpy as np

    x = np.arange(1.0, 11.0)
    y = np.where(x == 5, 100.0, x)
    p = torch.tensor(np.exp(x), dtype=torch.float64)
    steps = torch.tensor(y, dtype=torch.long)
    # independent reference: leave-one-out residuals by explicit refits with numpy
    loo = []
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        a, b = np.polyfit(x[keep], y[keep], 1)
        loo.append(y[i] - (a * x[i] + b))
    hi_rank = math.ceil((len(x) + 1) * (1 - 0.5 / 2))
    assert sorted(loo)[hi_rank - 1] < 0  # the raw upper end would sit below the line
    cal = fit_calibration(
        p, steps, torch.ones(len(x), dtype=torch.bool), order=8, cap=500,
        rates=torch.zeros(1), level=0.05, threshold=2.0, hold=0, miscoverage=0.5,
    )  # fmt: skip
    assert cal.residual_low <= 0.0 <= cal.residual_high
    for value in p:
        pred = cal.predict(value[None])
        assert pred.low <= pred.steps <= pred.high
    with pytest.raises(CalibrationError, match="contains its point prediction"):
        _cal(residual_high=-1.0)
