"""A budget without user constants: ``k = a log P + b`` fitted from the reference models.

THEORY §5 gives the form of the budget, ``k = a log P(x, 4 alpha) + b``; its constants are
unknown for a deep network. :class:`BudgetCalibration` holds the fit of ``(a, b)`` to
per-example steps-to-unlearn measured on the reference models
(:func:`~lightning_unlearn.unlearning.calibration_fit.calibrate_budget`: each reference model
is fine-tuned on its own training half minus a probe set of its IN examples, and every probe
example's first step at which it looks OUT under the calibrated stop score is recorded) with
the training ledger's ``P``, and a prediction interval from leave-one-out residuals.

Prediction for a forget set of ``E`` examples: the stop rule ends the run once at most ``c``
(its tolerance) examples still look trained on, so the set needs the ``(E - c)``-th smallest of
its examples' steps; the same order statistic of the per-example interval ends gives the
set's interval. The file is JSON with a SHA-256 of its content, written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lightning_unlearn.accounting import StepModel
from lightning_unlearn.errors import IntegrityError, LightningUnlearnError
from lightning_unlearn.evaluation.functional.out_score import flagged_tolerance
from lightning_unlearn.integrity import json_sha256, write_json

__all__ = [
    "BudgetCalibration",
    "CalibrationError",
    "StepPrediction",
    "fit_calibration",
    "loo_residuals",
]

_VERSION = 1
_KIND = "lightning_unlearn.budget_calibration"


class CalibrationError(LightningUnlearnError, ValueError):
    """A budget calibration cannot be fitted, read or applied as asked (too few points, a file
    of another kind or version, a corrupted file, a forget set of another data set)."""


class StepPrediction(NamedTuple):
    """Predicted steps of a forget set with the ends of its prediction interval (ints >= 0;
    ``high`` may be ``math.inf`` when the interval is unbounded)."""

    steps: int
    low: int
    high: float


def loo_residuals(x: Tensor, y: Tensor) -> tuple[float, float, Tensor]:
    r"""Least-squares line and its leave-one-out residuals, in closed form.

    For :math:`y = a x + b` fitted to :math:`n` points, the residual of point :math:`i` under
    the fit *without* it is :math:`e_i / (1 - h_{ii})` with :math:`e_i` the ordinary residual
    and :math:`h_{ii} = 1/n + (x_i - \bar x)^2 / S_{xx}` its leverage.

    Args:
        x: ``[n]`` predictors (at least two distinct values).
        y: ``[n]`` responses.

    Returns:
        ``(a, b, loo [n])`` (float64).

    Example:
        >>> import torch
        >>> a, b, loo = loo_residuals(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, 2.0, 1.0]))
        >>> round(a, 6), round(b, 6), [round(v, 4) for v in loo.tolist()]
        (0.5, 0.5, [-3.0, 1.5, -3.0])
    """
    x, y = x.double().flatten(), y.double().flatten()
    n = x.numel()
    sxx = float(((x - x.mean()) ** 2).sum())
    if n < 3 or sxx == 0.0:
        raise CalibrationError(
            f"Expected at least three points with two distinct predictors to fit steps, but got "
            f"{n} point(s); use more probe examples or reference models."
        )
    a = float(((x - x.mean()) * (y - y.mean())).sum()) / sxx
    b = float(y.mean()) - a * float(x.mean())
    leverage = 1.0 / n + (x - x.mean()) ** 2 / sxx
    return a, b, (y - (a * x + b)) / (1.0 - leverage)


def _conformal_ends(loo: Tensor, miscoverage: float) -> tuple[float, float]:
    """Residual quantiles of a jackknife interval of coverage ``1 - miscoverage``: the
    ``floor((n+1) g/2)``-th and ``ceil((n+1)(1-g/2))``-th smallest LOO residuals (infinite
    when the rank falls outside ``1..n``).

    With skewed residuals both quantiles can fall on one side of 0, and the interval would then
    exclude its own point prediction (measured: an upper residual of -2.74 gave a budget below
    the fitted line). The ends are widened to 0 in that case, so ``low <= point <= high`` always
    holds; widening only raises the coverage.
    """
    r = loo.sort().values
    n = r.numel()
    lo_rank = math.floor((n + 1) * miscoverage / 2)
    hi_rank = math.ceil((n + 1) * (1 - miscoverage / 2))
    lo = float(r[lo_rank - 1]) if lo_rank >= 1 else -math.inf
    hi = float(r[hi_rank - 1]) if hi_rank <= n else math.inf
    return min(lo, 0.0), max(hi, 0.0)


@dataclasses.dataclass(frozen=True)
class BudgetCalibration:
    """The fitted step model with its prediction interval and the stop rule it was measured with.

    Attributes:
        a: slope, steps per unit of ``log P``.
        b: intercept.
        order: Rényi order of ``P`` (the ledger's ``4 alpha``).
        miscoverage: ``1 -`` the interval's nominal coverage.
        residual_low: lower residual quantile (added to ``a log P + b``).
        residual_high: upper residual quantile.
        num_points: examples fitted.
        num_censored: of them, examples that never looked OUT within ``cap`` (fitted at ``cap``,
            a lower bound of their steps).
        cap: steps of each calibration run.
        log_p_range: ``(min, max)`` of ``log P`` fitted.
        rates: the stop rule's null rates (:attr:`OutRule.rates`), for the tolerance.
        level: the stop rule's ``level``.
        threshold: the stop rule's ``threshold``.
        hold: the stop rule's hold window.
        metadata: free JSON (data set fingerprint, ``num_samples``, reference manifest, ...).
        hurdle: fitted on the examples flagged before unlearning only (the others arrive at 0).
    """

    a: float
    b: float
    order: int
    miscoverage: float
    residual_low: float
    residual_high: float
    num_points: int
    num_censored: int
    cap: int
    log_p_range: tuple[float, float]
    rates: tuple[float, ...]
    level: float
    threshold: float
    hold: int
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    hurdle: bool = False

    def __post_init__(self) -> None:
        if not (self.residual_low <= 0.0 <= self.residual_high):
            raise CalibrationError(
                "Expected residual_low <= 0 <= residual_high (an interval that contains its "
                f"point prediction), but got [{self.residual_low}, {self.residual_high}]; refit "
                "the calibration with `calibrate_budget`."
            )

    def step_model(self) -> StepModel:
        """The point fit as an :class:`~lightning_unlearn.accounting.StepModel`."""
        return StepModel(self.a, self.b, math.nan, self.num_points, self.log_p_range)

    def tolerance(self, size: int) -> int:
        """The stop rule's flagged-count tolerance for ``size`` examples."""
        return flagged_tolerance(torch.tensor(self.rates, dtype=torch.float64), size, self.level)

    def predict(self, privacy_losses: Tensor, flagged: Tensor | None = None) -> StepPrediction:
        r"""Steps and interval of a forget set from its examples' ``P`` (THEORY §5).

        .. math::

            \hat k_i = [\text{flagged}_i]\,(a \log P_i + b), \qquad
            k_F = \hat k_{(E - c)}, \qquad
            [\ (\hat k + r_{lo})_{(E-c)},\ (\hat k + r_{hi})_{(E-c)}\ ]

        with :math:`(m)` the :math:`m`-th smallest, :math:`c` the tolerance of :math:`E`
        examples, and each end clamped at 0 and rounded outwards. An example the trained model
        already scores at or below the threshold (not ``flagged``) needs no step: that is
        observable before any step is spent, and a calibration fitted with ``hurdle=True`` was
        fitted on flagged examples only.

        Args:
            privacy_losses: ``[E]`` the forget examples' ``P(x, order)`` (> 0).
            flagged: ``[E]`` booleans, the examples the trained model's OUT test flags
                (:meth:`~lightning_unlearn.unlearning.calibrated_stopping.OutRule.verify`);
                default all (conservative).

        Raises:
            CalibrationError: an empty set, or a non-positive or non-finite ``P``.

        Example:
            >>> import math, torch
            >>> cal = BudgetCalibration(10.0, 0.0, 8, 0.2, -5.0, 5.0, 9, 0, 100, (0.0, 5.0),
            ...                         (0.0,), 0.05, 2.0, 0)
            >>> cal.predict(torch.tensor([1.0, math.e], dtype=torch.float64))
            StepPrediction(steps=10, low=5, high=15.0)
        """
        p = torch.as_tensor(privacy_losses, dtype=torch.float64).flatten().cpu()
        if p.numel() == 0 or not bool(torch.isfinite(p).all() and (p > 0).all()):
            raise CalibrationError(
                "Expected the forget examples' privacy losses, positive and finite, but got "
                f"{p[:5].tolist()}...; check the ledger (never-seen examples have P = 0)."
            )
        k = self.a * p.log() + self.b
        rank = p.numel() - self.tolerance(p.numel())
        if rank <= 0:
            return StepPrediction(0, 0, 0.0)
        easy = (
            torch.zeros_like(p, dtype=torch.bool)
            if flagged is None
            else ~torch.as_tensor(flagged, dtype=torch.bool).flatten().cpu()
        )

        def order_stat(v: Tensor) -> float:
            return float(torch.where(easy, 0.0, v).sort().values[rank - 1])

        point = max(0, math.ceil(order_stat(k) - 1e-9))
        low_f = order_stat(k + self.residual_low)
        low = 0 if math.isinf(low_f) else max(0, math.floor(low_f + 1e-9))
        high_f = order_stat(k + self.residual_high)
        high = math.inf if math.isinf(high_f) else float(max(0, math.ceil(high_f - 1e-9)))
        return StepPrediction(point, low, high)

    def to_dict(self) -> dict[str, Any]:
        """The JSON body (without its checksum)."""
        body = dataclasses.asdict(self)
        body["log_p_range"] = list(self.log_p_range)
        body["rates"] = list(self.rates)
        return {"kind": _KIND, "version": _VERSION, **body}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON with its ``sha256`` atomically; returns the path."""
        body = self.to_dict()
        return write_json(path, {**body, "sha256": json_sha256(body)}, indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BudgetCalibration:
        """Read a file written by :meth:`save`, verifying kind, version and checksum.

        Raises:
            CalibrationError: missing file, another kind or version.
            IntegrityError: the checksum does not match (the file was modified or damaged).
        """
        p = Path(path)
        if not p.is_file():
            raise CalibrationError(
                f"No budget calibration at {str(p)!r}; fit one with `calibrate_budget` first."
            )
        data = json.loads(p.read_text())
        if data.get("kind") != _KIND or data.get("version") != _VERSION:
            raise CalibrationError(
                f"Expected a budget calibration of version {_VERSION} in {str(p)!r}, but got "
                f"kind {data.get('kind')!r}, version {data.get('version')!r}; refit it."
            )
        saved = data.pop("sha256", None)
        if saved != json_sha256(data):
            raise IntegrityError(
                f"The budget calibration {str(p)!r} does not match its sha256: it was modified or "
                "damaged; refit it with `calibrate_budget`."
            )
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BudgetCalibration:
        """Build from :meth:`to_dict`'s body."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        kwargs["log_p_range"] = tuple(kwargs["log_p_range"])
        kwargs["rates"] = tuple(kwargs["rates"])
        return cls(**kwargs)


def fit_calibration(
    privacy_losses: Tensor,
    steps: Tensor,
    arrived: Tensor,
    *,
    order: int,
    cap: int,
    rates: Tensor,
    level: float,
    threshold: float,
    hold: int,
    miscoverage: float = 0.2,
    metadata: Mapping[str, Any] | None = None,
    initially_flagged: Tensor | None = None,
) -> BudgetCalibration:
    r"""Fit :math:`k = a \log P + b` with a jackknife prediction interval (THEORY §5).

    Censored examples (never OUT within the cap) enter at the cap, a lower bound of their
    steps, and are counted in ``num_censored``; a calibration with many of them under-predicts
    hard examples, and its point prediction should be read as "at least".

    Args:
        privacy_losses: ``[n]`` per-example ``P(x, order)`` from the training ledger (> 0).
        steps: ``[n]`` measured steps (censoring times where not ``arrived``).
        arrived: ``[n]`` booleans.
        order: the Rényi order of ``privacy_losses``.
        cap: the calibration runs' length.
        rates, level, threshold, hold: the stop rule the steps were measured with.
        miscoverage: ``1 -`` the interval's coverage (default 0.2: an 80 % interval).
        metadata: stored as is.
        initially_flagged: ``[n]`` booleans, the examples flagged before the first step: a
            hurdle model, fitted on those only (the others need 0 steps, observably). Ignored
            (with ``hurdle=False``) when fewer than three are flagged.

    Raises:
        CalibrationError: fewer than three usable points, or inputs of different lengths.
    """
    p = torch.as_tensor(privacy_losses, dtype=torch.float64).flatten().cpu()
    k = torch.as_tensor(steps, dtype=torch.float64).flatten().cpu()
    a_mask = torch.as_tensor(arrived, dtype=torch.bool).flatten().cpu()
    if not p.shape == k.shape == a_mask.shape:
        raise CalibrationError(
            f"Expected privacy losses, steps and arrivals of one length, but got {p.numel()}, "
            f"{k.numel()}, {a_mask.numel()}."
        )
    if not 0.0 < miscoverage < 1.0:
        raise CalibrationError(f"Expected `miscoverage` in (0, 1), but got {miscoverage!r}.")
    usable = torch.isfinite(p) & (p > 0)
    hurdle = False
    if initially_flagged is not None:
        flagged = torch.as_tensor(initially_flagged, dtype=torch.bool).flatten().cpu()
        if int((usable & flagged).sum()) >= 3:
            usable, hurdle = usable & flagged, True
    p, k, a_mask = p[usable], k[usable], a_mask[usable]
    k = torch.where(a_mask, k, float(cap))
    x = p.log()
    a, b, loo = loo_residuals(x, k)
    lo, hi = _conformal_ends(loo, miscoverage)
    return BudgetCalibration(
        a=a,
        b=b,
        order=int(order),
        miscoverage=float(miscoverage),
        residual_low=lo,
        residual_high=hi,
        num_points=int(x.numel()),
        num_censored=int((~a_mask).sum()),
        cap=int(cap),
        log_p_range=(float(x.min()), float(x.max())),
        rates=tuple(float(r) for r in torch.as_tensor(rates).double().tolist()),
        level=float(level),
        threshold=float(threshold),
        hold=int(hold),
        metadata=dict(metadata or {}),
        hurdle=hurdle,
    )
