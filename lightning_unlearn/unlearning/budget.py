"""How many unlearning steps a forget set gets: THEORY §5 as ``Trainer(max_steps=...)``.

Before a budget is computed the ledger is checked against what is being unlearned (its data
set, and with ``model=`` the architecture and the exact trained weights it was recorded with);
a recorded key that is missing counts as a mismatch. A budget is capped: by default at the
number of steps of the training run the ledger records, beyond which retraining on the retain
set costs less than unlearning (:class:`~lightning_unlearn.errors.BudgetTooLargeError`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from lightning_unlearn.accounting import (
    PrivacyLedger,
    StepModel,
    UnlearningConstants,
    forget_set_privacy_loss,
    unlearning_steps,
)
from lightning_unlearn.data.fingerprint import dataset_fingerprint
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.errors import BudgetTooLargeError, LedgerIntegrityError, LedgerMismatchError
from lightning_unlearn.integrity import architecture_fingerprint, tensors_sha256
from lightning_unlearn.unlearning.calibration import BudgetCalibration, CalibrationError
from lightning_unlearn.validation import check_forget_ids, check_int

__all__ = [
    "FALLBACK_MAX_STEPS",
    "Aggregate",
    "BudgetSpec",
    "budget_cap",
    "check_ledger",
    "compute_budget",
    "forget_privacy_loss",
    "recording_expectations",
]

Aggregate = Literal["max", "mean", "sum"]

FALLBACK_MAX_STEPS = 1_000_000
"""The budget cap of a ledger that records no run length (``metadata["steps"]``)."""


def recording_expectations(
    *,
    model: nn.Module | None = None,
    dataset: Any = None,
    num_samples: int | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """The ledger metadata a run on ``model`` / ``dataset`` must have recorded.

    :class:`~lightning_unlearn.PerInstancePrivacyMonitor` records ``dataset_fingerprint``
    (:func:`~lightning_unlearn.data.dataset_fingerprint`), ``model_fingerprint`` (names, shapes
    and dtypes of the weights), ``model_sha256`` (the weights at the end of ``fit``) and
    ``batch_size`` (the global batch).

    Args:
        model: the trained model the forget set is unlearned from.
        dataset: the training data set (its ids are the ledger's rows).
        num_samples: its size (default ``len(dataset)``).
        batch_size: the training run's global batch size.

    Returns:
        A dict for :func:`check_ledger`'s ``expected_metadata``.
    """
    expected: dict[str, Any] = {}
    if dataset is not None:
        n = len(dataset) if num_samples is None else num_samples
        expected["dataset_fingerprint"] = dataset_fingerprint(dataset, n)
    if model is not None:
        expected["model_fingerprint"] = architecture_fingerprint(model)
        expected["model_sha256"] = tensors_sha256(model)
    if batch_size is not None:
        expected["batch_size"] = batch_size
    return expected


def check_ledger(
    ledger: PrivacyLedger,
    num_samples: int,
    expected_metadata: Mapping[str, Any] | None = None,
) -> None:
    """Check that ``ledger`` was recorded on the data set (and model) being unlearned.

    Args:
        ledger: the training run's ledger.
        num_samples: size ``N`` of the data set the forget ids refer to.
        expected_metadata: entries the ledger's ``metadata`` must hold with these values (for
            example :func:`recording_expectations`); an entry the ledger lacks (or holds as
            ``None``) is a mismatch, not a pass.

    Raises:
        LedgerMismatchError: ``N`` differs, or a metadata entry differs or is missing.

    Example:
        >>> from lightning_unlearn.accounting import PrivacyLedger
        >>> check_ledger(PrivacyLedger(10), num_samples=10)
        >>> check_ledger(PrivacyLedger(10), num_samples=12)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_unlearn.errors.LedgerMismatchError: Expected a ledger of the 12-example data ...
    """
    if ledger.num_samples != num_samples:
        raise LedgerMismatchError(
            f"Expected a ledger of the {num_samples}-example data set being unlearned, but the "
            f"ledger has {ledger.num_samples} examples; load the ledger saved by the training run "
            "on this data set."
        )
    for key, value in (expected_metadata or {}).items():
        saved = ledger.metadata.get(key)
        if saved is None:
            raise LedgerMismatchError(
                f"Expected the ledger's metadata to record {key!r} (= {value!r} for the model "
                "and data being unlearned), but it has none, so it cannot be checked against "
                "them. Use the ledger written by the training run of this checkpoint with this "
                "version of lightning_unlearn (re-run training with the monitor)."
            )
        if saved != value:
            raise LedgerMismatchError(
                f"Expected ledger metadata {key!r} = {value!r}, but the ledger has {saved!r}: "
                "it was recorded on another data set, model or run; load the ledger of this "
                "training run."
            )


def budget_cap(ledger: PrivacyLedger | None, max_steps: int | None = None) -> tuple[int, str]:
    """The largest budget allowed and where it comes from.

    Args:
        ledger: the training run's ledger (its ``metadata["steps"]`` is the default cap).
        max_steps: an explicit cap (wins).

    Returns:
        ``(cap, source)``, the source a phrase for messages.

    Raises:
        InvalidArgumentError: ``max_steps`` is not an integer ``>= 0``.
    """
    if max_steps is not None:
        return check_int("max_steps", max_steps, minimum=0), "the given `max_steps`"
    steps = None if ledger is None else ledger.metadata.get("steps")
    if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0:
        return steps, "the length of the training run the ledger records"
    return FALLBACK_MAX_STEPS, "the default for ledgers without a recorded run length"


def _capped(k: int, p: float, order: int, aggregate: str, cap: tuple[int, str]) -> int:
    limit, source = cap
    if k > limit:
        raise BudgetTooLargeError(
            f"The forget set's privacy loss P = {p:.6g} (order {order}, {aggregate}) implies "
            f"{k} unlearning steps, more than the maximum {limit} ({source}); retraining "
            "without the forget set costs about one training run, so it is cheaper. Retrain on "
            "the retain set (e.g. `lightning_unlearn.unlearning.train_oracle`), or allow more "
            "steps with `max_steps=` (`--max-budget-steps` on the command line)."
        )
    return k


def forget_privacy_loss(
    ledger: PrivacyLedger,
    forget_ids: Sequence[int] | torch.Tensor,
    order: int,
    aggregate: Aggregate = "max",
) -> float:
    """The forget set's privacy loss ``P(F, order)``: max / mean / sum over its examples.

    THEORY §5 bounds one example; for a set the aggregate is a documented choice, and the
    default ``"max"`` budgets the set as its hardest member.

    Args:
        ledger: the training run's ledger (must contain ``order``).
        forget_ids: ids of the forget set (validated against ``ledger.num_samples``).
        order: Rényi order, ``4 * alpha`` for the bound.
        aggregate: ``"max"``, ``"mean"`` or ``"sum"``.

    Returns:
        The aggregate as a Python float.

    Raises:
        UnsupportedOrderError: ``order`` is not one of the ledger's orders.
        ForgetSetError: invalid forget ids.
    """
    return _privacy_loss(ledger, check_forget_ids(forget_ids, ledger.num_samples), order, aggregate)


def _privacy_loss(
    ledger: PrivacyLedger, ids: torch.Tensor, order: int, aggregate: Aggregate
) -> float:
    """``P(F, order)`` of canonical ids (:func:`check_forget_ids`): trusts them."""
    losses = ledger.privacy_loss(order)
    value = float(forget_set_privacy_loss(losses, ids, aggregate).item())
    if not math.isfinite(value) or value < 0:
        raise LedgerIntegrityError(
            f"The forget set's privacy loss P(F, {order}) is {value}, but losses are finite and "
            "non-negative: the ledger is corrupt. Reload it from its file (the load verifies "
            "it) or recompute it by re-running training with the monitor."
        )
    return value


def compute_budget(
    ledger: PrivacyLedger | None = None,
    forget: ForgetRetainDataModule | Sequence[int] | torch.Tensor | None = None,
    *,
    constants: UnlearningConstants | None = None,
    step_model: StepModel | None = None,
    order: int | None = None,
    steps: int | None = None,
    aggregate: Aggregate = "max",
    num_samples: int | None = None,
    expected_metadata: Mapping[str, Any] | None = None,
    model: nn.Module | None = None,
    max_steps: int | None = None,
    calibration: BudgetCalibration | str | os.PathLike[str] | None = None,
) -> int:
    r"""The number of unlearning steps for a forget set: use it as ``Trainer(max_steps=...)``.

    Exactly one source:

    * ``calibration`` (the default of the documented path when one is saved: issue 15), a
      :class:`~lightning_unlearn.unlearning.calibration.BudgetCalibration` (or its file)
      fitted from the reference models and this ledger, no user constant: the budget is the
      *upper* end of its prediction interval for the forget set (the calibrated stop rule
      ends the run earlier); see :func:`~lightning_unlearn.unlearning.request_report.
      resolve_budget` for the budget with its source and interval.

    * ``constants`` (THEORY §5, with the constants spelled out; our derivation from [C24] and
      [M17], see :func:`~lightning_unlearn.accounting.unlearning_steps`):

      .. math::

          k = \Big\lceil \frac{\alpha C_{LSI}}{\sigma^2 \eta}
              \log \frac{c_\alpha (c_{2\alpha} P(F, 4\alpha) + D_0)}{\varepsilon - D_{irr}}
              \Big\rceil_{\ge 0}

    * ``step_model`` fitted to measured steps on probe forget sets
      (:func:`~lightning_unlearn.accounting.fit_step_model`, :math:`k = a \log P + b`), read at
      the Rényi ``order`` it was fitted at; rounded up (a budget is conservative).
    * ``steps``: a fixed number (not capped: it is what was asked for).

    :math:`P(F, \cdot)` aggregates the forget set's per-example losses (``aggregate``, default
    max); with ``"max"`` or ``"sum"`` the budget never decreases when any example's loss grows.

    Whenever a ``ledger`` is given (with ``steps`` too) it is checked first: its size, and the
    recording configuration :func:`recording_expectations` derives from the data module's data
    set and from ``model``; a key the ledger lacks is a mismatch.

    Args:
        ledger: the training run's :class:`~lightning_unlearn.PrivacyLedger` (not needed with
            ``steps``).
        forget: the forget ids, or a :class:`~lightning_unlearn.ForgetRetainDataModule`
            (whose ids and data set size are used).
        constants: :class:`~lightning_unlearn.accounting.UnlearningConstants` of the bound;
            with ``langevin_sigma=None`` the bound's σ is the training σ the ledger recorded
            (``metadata["noise_multiplier"]``): THEORY §5 unlearns by continuing the noisy
            process (:meth:`~lightning_unlearn.accounting.UnlearningConstants.resolve`).
        step_model: a fitted :class:`~lightning_unlearn.accounting.StepModel`.
        order: Rényi order of ``step_model``'s losses (required with ``step_model``).
        steps: a fixed budget.
        aggregate: ``"max"``, ``"mean"`` or ``"sum"``.
        num_samples: size of the data set the ids refer to (default: the data module's, else
            the ledger's); a different ledger size is an error.
        expected_metadata: more ledger metadata entries that must match (see
            :func:`check_ledger`); with a data module the ``"dataset_fingerprint"`` of
            ``forget.dataset`` is always expected.
        model: the trained model being unlearned: the ledger must record its architecture
            and exactly these weights (``model_fingerprint``, ``model_sha256``).
        max_steps: the largest budget allowed (default: see :func:`budget_cap`).
        calibration: a fitted budget calibration or the path of its file.

    Returns:
        The budget, an int ``>= 0``.

    Raises:
        ValueError: not exactly one source, or a missing argument.
        LedgerMismatchError: the ledger belongs to another data set, model or run.
        LedgerIntegrityError: the forget set's losses are NaN, infinite or negative.
        BudgetTooLargeError: the budget exceeds the cap; retraining is cheaper.
        ForgetSetError: invalid forget ids.
        UnsupportedOrderError: the ledger lacks the needed order.

    Example:
        >>> import torch
        >>> from lightning_unlearn.accounting import PrivacyLedger, StepModel
        >>> ledger = PrivacyLedger(4, alphas=(2, 8))
        >>> ledger.privacy[:, 1] = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
        >>> compute_budget(ledger, [1, 2], step_model=StepModel(a=10.0, b=1.0), order=8)
        15
        >>> compute_budget(steps=7)
        7
    """
    sources = sum(x is not None for x in (constants, step_model, steps, calibration))
    if sources != 1:
        raise ValueError(
            "Expected exactly one of `calibration`, `constants`, `step_model` or `steps`, but "
            f"got {sources}; pass a budget calibration, the bound's constants, a fitted step "
            "model, or a fixed number."
        )
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
        raise ValueError(f"Expected `steps` to be an int >= 0, but got {steps!r}.")
    if step_model is not None and order is None:
        raise ValueError(
            "Expected the Rényi `order` at which `step_model` was fitted (for example 4 * alpha), "
            "but got None."
        )
    if ledger is None:
        if steps is not None:
            return steps
        raise ValueError(
            "Expected a `ledger` and the `forget` ids (or a ForgetRetainDataModule) to compute "
            "a budget from privacy losses, but got None."
        )
    expected = dict(expected_metadata or {})
    expected.update(recording_expectations(model=model))
    ids: torch.Tensor | None = None
    if isinstance(forget, ForgetRetainDataModule):
        num_samples = forget.num_samples if num_samples is None else num_samples
        expected.setdefault(
            "dataset_fingerprint", dataset_fingerprint(forget.dataset, forget.num_samples)
        )
        ids = forget.forget_ids  # checked where they entered, by the data module
    check_ledger(ledger, ledger.num_samples if num_samples is None else num_samples, expected)
    if ids is not None and int(ids[-1]) >= ledger.num_samples:  # sorted: the last is the max
        check_forget_ids(ids, ledger.num_samples)  # names the ids beyond the ledger
    if steps is not None:
        return steps
    if ids is None:
        if forget is None:
            raise ValueError(
                "Expected the `forget` ids (or a ForgetRetainDataModule) to compute a budget "
                "from privacy losses, but got None."
            )
        ids = check_forget_ids(forget, ledger.num_samples)  # the ids enter here
    cap = budget_cap(ledger, max_steps)
    if calibration is not None:
        return _calibrated(ledger, ids, calibration, aggregate, cap)
    if constants is not None:
        # THEORY §5: unlearning continues the training run's noisy process, so the bound's σ
        # defaults to the σ the ledger recorded (UnlearningConstants.langevin_sigma).
        constants = constants.resolve(ledger)
        p = _privacy_loss(ledger, ids, constants.privacy_order, aggregate)
        k = int(unlearning_steps(p, constants).item())
        return _capped(k, p, constants.privacy_order, aggregate, cap)
    assert step_model is not None
    assert order is not None
    p = _privacy_loss(ledger, ids, order, aggregate)
    return _capped(int(step_model.predict(p, rounding="ceil").item()), p, order, aggregate, cap)


@dataclasses.dataclass(frozen=True)
class BudgetSpec:
    """How a step budget is set: a fixed number of ``steps``, or THEORY §5's ``constants``.

    A small value object for the code that chooses a budget once and applies it to a forget
    set later (the command line, the experiments); :meth:`budget` calls :func:`compute_budget`.

    Attributes:
        steps: a fixed budget (takes precedence over ``constants``).
        constants: the bound's :class:`~lightning_unlearn.accounting.UnlearningConstants`.
        aggregate: how the forget set's privacy losses combine (``"max"``, ``"mean"``,
            ``"sum"``).
        max_steps: the largest budget allowed (default: see :func:`budget_cap`).

    Example:
        >>> spec = BudgetSpec(steps=7)
        >>> spec.budget(None, None), spec.source
        (7, 'fixed --budget-steps')
    """

    steps: int | None = None
    constants: UnlearningConstants | None = None
    aggregate: Aggregate = "max"
    max_steps: int | None = None

    def budget(
        self,
        ledger: PrivacyLedger | None,
        forget: ForgetRetainDataModule | Sequence[int] | torch.Tensor | None,
        *,
        model: nn.Module | None = None,
        expected_metadata: Mapping[str, Any] | None = None,
    ) -> int:
        """The budget for this forget set (see :func:`compute_budget`); whenever a ledger is
        given, its recording configuration is checked against ``forget`` (a data module's
        data set), ``model`` and ``expected_metadata`` in both modes."""
        return compute_budget(
            ledger,
            forget,
            steps=self.steps,
            constants=None if self.steps is not None else self.constants,
            aggregate=self.aggregate,
            model=model,
            expected_metadata=expected_metadata,
            max_steps=self.max_steps,
        )

    @property
    def source(self) -> str:
        """Where the budget comes from, for the audit record."""
        return "fixed --budget-steps" if self.steps is not None else "THEORY §5 constants"


def _calibrated(
    ledger: PrivacyLedger,
    ids: torch.Tensor,
    calibration: BudgetCalibration | str | os.PathLike[str],
    aggregate: str,
    cap: tuple[int, str],
) -> int:
    """The upper end of a calibration's interval for the (checked) ``ids``, capped like the
    others."""
    cal = (
        calibration
        if isinstance(calibration, BudgetCalibration)
        else BudgetCalibration.load(calibration)
    )
    recorded = cal.metadata.get("num_samples")
    if recorded is not None and recorded != ledger.num_samples:
        raise CalibrationError(
            f"Expected a budget calibration of this {ledger.num_samples}-example data set, but it "
            f"was fitted on {recorded} examples; refit it with `calibrate_budget`."
        )
    p = ledger.privacy_loss(cal.order).double()[ids.to(ledger.privacy.device)].cpu()
    high = cal.predict(p).high
    value = float(forget_set_privacy_loss(p, torch.arange(p.numel()), "max"))
    k = max(cal.cap, cap[0]) + 1 if math.isinf(high) else int(high)
    return _capped(k, value, cal.order, f"{aggregate}, calibrated upper end", cap)
