"""How many unlearning steps an example needs (THEORY §5).

The constants of ``unlearning_steps`` are **derived** by us from Langevin unlearning [C24]
(LSI contraction of Rényi divergence under noisy gradient descent) and the weak triangle
inequality of Rényi divergence [M17]; they are not quoted from [S25], which establishes the
structure (steps grow like ``log P(x, 4 alpha)`` plus an irreducible term). For deep networks the
log-Sobolev constant is unknown, so in practice the affine model ``k = a log P + b`` is fitted to
measured steps-to-unlearn with ``fit_step_model``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from lightning_unlearn.errors import InvalidArgumentError, LedgerMismatchError
from lightning_unlearn.validation import check_float, check_int

if TYPE_CHECKING:
    from lightning_unlearn.accounting.ledger import PrivacyLedger

__all__ = [
    "StepModel",
    "UnlearningConstants",
    "fit_step_model",
    "forget_set_privacy_loss",
    "unlearning_steps",
]

# Step counts are clamped here before the cast to int64 (an infinite loss gives this budget).
_MAX_STEPS = 2**62


def _c(a: float) -> float:
    """``c_a = (a - 1/2) / (a - 1)`` of THEORY §5."""
    return (a - 0.5) / (a - 1.0)


def _real(name: str, value: object, *, positive: bool) -> float:
    """A finite float > 0 (``positive``) or >= 0: the shared validator."""
    return check_float(name, value, minimum=0.0, inclusive=not positive)


@dataclass(frozen=True, kw_only=True)
class UnlearningConstants:
    r"""Constants of the (derived) unlearning bound of THEORY §5.

    Attributes:
        alpha: Rényi order ``alpha >= 2`` of the unlearning guarantee; the bound uses the
            training loss at order ``4 * alpha`` (see ``privacy_order``).
        c_lsi: Log-Sobolev constant ``C_LSI > 0`` of the retain set's stationary law.
        lr: Step size ``eta > 0`` of unlearning.
        langevin_sigma: ``sigma > 0`` of the Langevin noise of unlearning (THEORY §1's SGLD
            convention, the ``sgld_sigma`` unlearning runs at), or ``None``: the σ of the
            training run its ledger recorded (``ledger.metadata["noise_multiplier"]``), filled in
            by :meth:`from_ledger` / :meth:`resolve` and by
            :func:`~lightning_unlearn.unlearning.compute_budget`. THEORY §5 reads unlearning as
            the *continuation* of the noisy training process on the retain set, so by default it
            continues at the training run's σ (in the ledger's convention: with
            ``convention="sgld"`` that is the same Langevin σ; with ``"dpsgd"`` / ``"nominal"``
            it is the nominal σ of the run, and the bound, whose constants are user-given, is
            read at it). Pass it to unlearn at another σ.
        d0: ``D0 = D_{4alpha-1}(rho'_T || nu') >= 0``: how far retraining is from stationarity.
        d_irr: ``D_irr = D_{2alpha-1}(nu' || rho'_T) >= 0``, the irreducible term.
        target_epsilon: Target Rényi divergence ``epsilon > d_irr``.

    Raises:
        ValueError: If a constant is out of range (in particular ``target_epsilon <= d_irr``,
            for which no number of steps suffices).

    Example:
        >>> from lightning_unlearn.accounting import PrivacyLedger
        >>> ledger = PrivacyLedger(4, metadata={"noise_multiplier": 2.0})
        >>> c = UnlearningConstants(alpha=2, c_lsi=1.0, lr=0.1, target_epsilon=1.0)
        >>> c.resolve(ledger).langevin_sigma
        2.0
        >>> c.steps_per_nat  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_unlearn.errors.InvalidArgumentError: Expected `langevin_sigma` ...
    """

    alpha: int
    c_lsi: float
    lr: float
    langevin_sigma: float | None = None
    d0: float = 0.0
    d_irr: float = 0.0
    target_epsilon: float

    def __post_init__(self) -> None:
        check_int("alpha", self.alpha, minimum=2)
        for name in ("c_lsi", "lr", "target_epsilon"):
            _real(name, getattr(self, name), positive=True)
        if self.langevin_sigma is not None:
            _real("langevin_sigma", self.langevin_sigma, positive=True)
        for name in ("d0", "d_irr"):
            _real(name, getattr(self, name), positive=False)
        if self.target_epsilon <= self.d_irr:
            raise ValueError(
                f"Expected `target_epsilon` > `d_irr` ({self.d_irr!r}), but got "
                f"{self.target_epsilon!r}: no number of unlearning steps gets below the "
                f"irreducible distance of retraining from stationarity (THEORY §5)."
            )

    @classmethod
    def from_ledger(
        cls,
        ledger: PrivacyLedger,
        *,
        c_lsi: float,
        lr: float,
        target_epsilon: float,
        alpha: int = 2,
        d0: float = 0.0,
        d_irr: float = 0.0,
        langevin_sigma: float | None = None,
    ) -> UnlearningConstants:
        """The bound's constants with ``langevin_sigma`` defaulting to the ledger's training σ.

        THEORY §5: unlearning continues the noisy process of training on the retain set, so
        the σ of the bound is by default the ``noise_multiplier`` the training run's ledger
        recorded (see the class's ``langevin_sigma``).

        Args:
            ledger: the training run's ledger.
            c_lsi: ``C_LSI > 0``.
            lr: unlearning step size ``eta > 0``.
            target_epsilon: the target divergence.
            alpha: the Rényi order of the guarantee.
            d0: ``D0 >= 0``.
            d_irr: ``D_irr >= 0``.
            langevin_sigma: an explicit σ (wins over the ledger's).

        Returns:
            The constants, ``langevin_sigma`` set.

        Raises:
            LedgerMismatchError: ``langevin_sigma`` is None and the ledger records no σ.
        """
        constants = cls(
            alpha=alpha,
            c_lsi=c_lsi,
            lr=lr,
            d0=d0,
            d_irr=d_irr,
            target_epsilon=target_epsilon,
            langevin_sigma=langevin_sigma,
        )
        return constants.resolve(ledger)

    def resolve(self, ledger: PrivacyLedger) -> UnlearningConstants:
        """These constants, with ``langevin_sigma`` from ``ledger`` if it is None.

        Raises:
            LedgerMismatchError: ``langevin_sigma`` is None and the ledger records no valid σ.
        """
        if self.langevin_sigma is not None:
            return self
        recorded = ledger.metadata.get("noise_multiplier")
        if recorded is None:
            raise LedgerMismatchError(
                "Expected the ledger's metadata to record the training run's `noise_multiplier` "
                "(the default `langevin_sigma` of the THEORY §5 bound), but it has none; pass "
                "`langevin_sigma=` to UnlearningConstants."
            )
        return replace(self, langevin_sigma=_real("langevin_sigma", recorded, positive=True))

    def _sigma(self) -> float:
        if self.langevin_sigma is None:
            raise InvalidArgumentError(
                "Expected `langevin_sigma` of the THEORY §5 bound to be a number > 0, but got "
                "None; pass it, or let the training run's ledger provide it: "
                "`UnlearningConstants.from_ledger(ledger, ...)`, `constants.resolve(ledger)`, "
                "or `compute_budget(ledger, ..., constants=constants)`."
            )
        return self.langevin_sigma

    @property
    def privacy_order(self) -> int:
        """The order ``4 * alpha`` at which the training loss ``P`` enters the bound."""
        return 4 * int(self.alpha)

    @property
    def steps_per_nat(self) -> float:
        r"""``alpha C_LSI / (sigma^2 eta)``: steps per unit of ``log`` divergence (slope ``a``)."""
        return self.alpha * self.c_lsi / (self._sigma() ** 2 * self.lr)

    def step_model(self) -> StepModel:
        r"""The bound as an affine model ``k = a log P + b`` (exact when ``d0 = 0``).

        .. math::

            a = \frac{\alpha C_{LSI}}{\sigma^2 \eta}, \qquad
            b = a \log \frac{c_\alpha c_{2\alpha}}{\varepsilon - D_{irr}}

        ``StepModel.predict(P, rounding="ceil")`` then equals ``unlearning_steps(P, self)``.

        Raises:
            ValueError: If ``d0 != 0`` (the bound is then not affine in ``log P``).

        Example:
            >>> c = UnlearningConstants(alpha=2, c_lsi=1.0, langevin_sigma=1.0, lr=0.1,
            ...                         target_epsilon=1.0)
            >>> m = c.step_model()
            >>> round(m.a, 6), round(m.b, 4)
            (20.0, 11.1923)
        """
        if self.d0 != 0:
            raise ValueError(
                f"Expected `d0` = 0 for an affine step model, but got {self.d0!r}; use "
                f"`unlearning_steps` directly, which handles D0 > 0."
            )
        a = self.steps_per_nat
        ratio = _c(self.alpha) * _c(2 * self.alpha) / (self.target_epsilon - self.d_irr)
        return StepModel(a=a, b=a * math.log(ratio))


def unlearning_steps(privacy_loss_4alpha: Tensor | float, constants: UnlearningConstants) -> Tensor:
    r"""Unlearning steps for a target divergence, by the derived bound of THEORY §5.

    .. math::

        k(x) = \max\Big(0, \Big\lceil \frac{\alpha C_{LSI}}{\sigma^2 \eta}
            \log \frac{c_\alpha (c_{2\alpha} P(x, 4\alpha) + D_0)}{\varepsilon - D_{irr}}
            \Big\rceil\Big), \qquad c_a = \frac{a - 1/2}{a - 1}.

    The constants are our derivation from [C24] and [M17] (labelled "derived" in the docs), not a
    result quoted from [S25]. ``P = 0`` with ``D0 = 0`` gives 0 steps; an infinite ``P`` gives
    ``2**62``.

    Args:
        privacy_loss_4alpha: ``P(x, 4 alpha) >= 0`` per example (or one number), e.g.
            ``ledger.privacy_loss(constants.privacy_order)``.
        constants: The bound's constants (``langevin_sigma`` set, or resolved from the
            ledger: :meth:`UnlearningConstants.resolve`).

    Returns:
        Int64 tensor of the same shape (non-decreasing in ``P``), on the input's device.

    Raises:
        ValueError: If a loss is negative or NaN.
        InvalidArgumentError: ``constants.langevin_sigma`` is None.

    Example:
        >>> c = UnlearningConstants(alpha=2, c_lsi=1.0, langevin_sigma=1.0, lr=0.1,
        ...                         target_epsilon=1.0)
        >>> unlearning_steps(torch.tensor([0.0, 1.0, 100.0]), c)
        tensor([  0,  12, 104])
    """
    p = torch.as_tensor(privacy_loss_4alpha).to(torch.float64)
    if bool(((p < 0) | p.isnan()).any()):
        raise ValueError(
            "Expected `privacy_loss_4alpha` to be >= 0 (an accumulated Rényi loss), but it has "
            "negative or NaN entries."
        )
    a = float(constants.alpha)
    inner = _c(a) * (_c(2 * a) * p + constants.d0) / (constants.target_epsilon - constants.d_irr)
    k = torch.ceil(constants.steps_per_nat * torch.log(inner))
    return k.clamp(min=0, max=_MAX_STEPS).to(torch.int64)


@dataclass(frozen=True)
class StepModel:
    """Affine model of steps-to-unlearn in the log privacy loss, ``k = a log P + b`` (THEORY §5).

    Attributes:
        a: Slope (steps per unit of ``log P``).
        b: Intercept.
        r2: Coefficient of determination of the fit (1.0 for a model built from constants).
        num_points: Number of points it was fitted on (0 if not fitted).
        log_p_range: ``(min, max)`` of ``log P`` seen in the fit; predictions outside it
            extrapolate.
    """

    a: float
    b: float
    r2: float = 1.0
    num_points: int = 0
    log_p_range: tuple[float, float] = field(default=(-math.inf, math.inf))

    def predict_float(self, privacy_losses: Tensor | float) -> Tensor:
        """``a * log P + b`` as float64 (``-inf`` at ``P = 0`` for positive ``a``)."""
        p = torch.as_tensor(privacy_losses).to(torch.float64)
        return self.a * torch.log(p) + self.b

    def predict(
        self,
        privacy_losses: Tensor | float,
        *,
        rounding: Literal["nearest", "ceil"] = "nearest",
    ) -> Tensor:
        """Predicted steps, rounded and clamped to ``>= 0``.

        Args:
            privacy_losses: ``P > 0`` per forget set (``P = 0`` predicts 0 steps).
            rounding: ``"nearest"`` (a regression estimate) or ``"ceil"`` (a conservative budget).

        Returns:
            Int64 tensor of the same shape.

        Example:
            >>> StepModel(a=10.0, b=5.0).predict(torch.tensor([1.0, 2.0]))
            tensor([ 5, 12])
        """
        if rounding not in ("nearest", "ceil"):
            raise ValueError(f"Expected `rounding` 'nearest' or 'ceil', but got {rounding!r}.")
        k = self.predict_float(privacy_losses)
        k = torch.round(k) if rounding == "nearest" else torch.ceil(k)
        return torch.nan_to_num(k, nan=0.0).clamp(min=0, max=_MAX_STEPS).to(torch.int64)


def fit_step_model(privacy_losses: Tensor, measured_steps: Tensor) -> StepModel:
    r"""Least-squares fit of ``k = a log P + b`` to measured steps-to-unlearn (THEORY §5).

    .. math::

        (a, b) = \arg\min_{a, b} \sum_i (k_i - a \log P_i - b)^2,
        \qquad R^2 = 1 - \frac{\sum_i (k_i - \hat k_i)^2}{\sum_i (k_i - \bar k)^2}.

    Args:
        privacy_losses: ``[M]`` positive losses ``P`` (one per probe forget set).
        measured_steps: ``[M]`` measured steps-to-unlearn.

    Returns:
        The fitted ``StepModel`` (``r2`` is 1.0 when all steps are equal and fitted exactly).

    Raises:
        ValueError: If shapes differ, a loss is not positive and finite, or fewer than two
            distinct losses are given.

    Example:
        >>> p = torch.tensor([1.0, 10.0, 100.0])
        >>> model = fit_step_model(p, 3.0 * torch.log(p) + 2.0)
        >>> round(model.a, 6), round(model.b, 6), round(model.r2, 6)
        (3.0, 2.0, 1.0)
    """
    p = torch.as_tensor(privacy_losses).to(torch.float64).reshape(-1).cpu()
    k = torch.as_tensor(measured_steps).to(torch.float64).reshape(-1).cpu()
    if p.shape != k.shape:
        raise ValueError(
            f"Expected `privacy_losses` and `measured_steps` of the same length, but got "
            f"{p.numel()} and {k.numel()}."
        )
    if not bool(torch.isfinite(p).all() and (p > 0).all() and torch.isfinite(k).all()):
        raise ValueError(
            "Expected positive finite `privacy_losses` and finite `measured_steps` (log P is "
            "undefined at P = 0: drop never-seen examples or add a small floor)."
        )
    x = torch.log(p)
    if x.numel() < 2 or float(x.max() - x.min()) == 0.0:
        raise ValueError(
            f"Expected at least two distinct `privacy_losses` to fit a slope, but got "
            f"{x.unique().numel()} distinct value(s)."
        )
    design = torch.stack([x, torch.ones_like(x)], dim=1)
    coef = torch.linalg.lstsq(design, k.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    a, b = float(coef[0]), float(coef[1])
    resid = k - (a * x + b)
    ss_tot = float(((k - k.mean()) ** 2).sum())
    ss_res = float((resid**2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return StepModel(a, b, r2, int(x.numel()), (float(x.min()), float(x.max())))


def forget_set_privacy_loss(
    privacy_loss: Tensor,
    forget_ids: Tensor,
    reduction: Literal["max", "mean", "sum"] = "max",
) -> Tensor:
    """Aggregate the per-example losses of a forget set (THEORY §5; default: max).

    The bound of THEORY §5 covers one example; for a set, the aggregate is a documented choice.
    ``"max"`` (the default) treats the set as hard as its hardest member.

    The ids are trusted: pass them as
    :func:`~lightning_unlearn.validation.check_forget_ids` returns them (as
    :func:`~lightning_unlearn.unlearning.compute_budget` does); they are not converted or
    range-checked again here.

    Args:
        privacy_loss: ``[N]`` per-example losses, e.g. ``ledger.privacy_loss(4 * alpha)``.
        forget_ids: Canonical ids of the forget set (a non-empty 1-D ``torch.long`` tensor).
        reduction: ``"max"``, ``"mean"`` or ``"sum"``.

    Returns:
        A 0-d float64 tensor on the device of ``privacy_loss``.

    Raises:
        ValueError: If ``forget_ids`` is empty or ``reduction`` unknown.

    Example:
        >>> forget_set_privacy_loss(torch.tensor([1.0, 5.0, 2.0]), torch.tensor([0, 2]))
        tensor(2., dtype=torch.float64)
    """
    if forget_ids.numel() == 0:  # an empty mean or sum would be a silent 0 / NaN
        raise ValueError("Expected a non-empty `forget_ids`, but got an empty tensor.")
    values = privacy_loss.to(torch.float64)[forget_ids.to(privacy_loss.device)]
    if reduction == "max":
        return values.max()
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    raise ValueError(f"Expected `reduction` in ('max', 'mean', 'sum'), but got {reduction!r}.")
