"""How many unlearning steps a forget set gets: THEORY §5 as ``Trainer(max_steps=...)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from lightning_unlearn.accounting import (
    PrivacyLedger,
    StepModel,
    UnlearningConstants,
    forget_set_privacy_loss,
    unlearning_steps,
)
from lightning_unlearn.data.fingerprint import dataset_fingerprint
from lightning_unlearn.data.splits import ForgetRetainDataModule, validate_forget_ids
from lightning_unlearn.errors import LedgerMismatchError

__all__ = ["Aggregate", "check_ledger", "compute_budget", "forget_privacy_loss"]

Aggregate = Literal["max", "mean", "sum"]


def check_ledger(
    ledger: PrivacyLedger,
    num_samples: int,
    expected_metadata: Mapping[str, Any] | None = None,
) -> None:
    """Check that ``ledger`` was recorded on the data set being unlearned.

    Args:
        ledger: the training run's ledger.
        num_samples: size ``N`` of the data set the forget ids refer to.
        expected_metadata: entries the ledger's ``metadata`` must agree with (for example
            ``{"dataset_fingerprint": ...}``); keys absent from the ledger (or ``None`` there)
            are not checked.

    Raises:
        LedgerMismatchError: ``N`` differs or a metadata entry differs.

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
        if ledger.metadata.get(key) is not None and ledger.metadata[key] != value:
            raise LedgerMismatchError(
                f"Expected ledger metadata {key!r} = {value!r}, but the ledger has "
                f"{ledger.metadata[key]!r}: it was recorded on another data set or run; load "
                "the ledger of this training run."
            )


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
    ids = validate_forget_ids(forget_ids, ledger.num_samples)
    losses = ledger.privacy_loss(order)
    return float(forget_set_privacy_loss(losses, ids.to(losses.device), aggregate).item())


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
) -> int:
    r"""The number of unlearning steps for a forget set: use it as ``Trainer(max_steps=...)``.

    Exactly one source:

    * ``constants`` (THEORY §5, with the constants spelled out; our derivation from [C24] and
      [M17], see :func:`~lightning_unlearn.accounting.unlearning_steps`):

      .. math::

          k = \Big\lceil \frac{\alpha C_{LSI}}{\sigma^2 \eta}
              \log \frac{c_\alpha (c_{2\alpha} P(F, 4\alpha) + D_0)}{\varepsilon - D_{irr}}
              \Big\rceil_{\ge 0}

    * ``step_model`` fitted to measured steps on probe forget sets
      (:func:`~lightning_unlearn.accounting.fit_step_model`, :math:`k = a \log P + b`), read at
      the Rényi ``order`` it was fitted at; rounded up (a budget is conservative).
    * ``steps``: a fixed number.

    :math:`P(F, \cdot)` aggregates the forget set's per-example losses (``aggregate``, default
    max); with ``"max"`` or ``"sum"`` the budget never decreases when any example's loss grows.

    Args:
        ledger: the training run's :class:`~lightning_unlearn.PrivacyLedger` (not needed with
            ``steps``).
        forget: the forget ids, or a :class:`~lightning_unlearn.ForgetRetainDataModule`
            (whose ids and data set size are used).
        constants: :class:`~lightning_unlearn.accounting.UnlearningConstants` of the bound.
        step_model: a fitted :class:`~lightning_unlearn.accounting.StepModel`.
        order: Rényi order of ``step_model``'s losses (required with ``step_model``).
        steps: a fixed budget.
        aggregate: ``"max"``, ``"mean"`` or ``"sum"``.
        num_samples: size of the data set the ids refer to (default: the data module's, else
            the ledger's); a different ledger size is an error.
        expected_metadata: ledger metadata entries that must match (see :func:`check_ledger`);
            with a data module, default: the ``"dataset_fingerprint"`` that
            :class:`~lightning_unlearn.PerInstancePrivacyMonitor` records, computed on
            ``forget.dataset``.

    Returns:
        The budget, an int ``>= 0``.

    Raises:
        ValueError: not exactly one source, or a missing argument.
        LedgerMismatchError: the ledger belongs to another data set.
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
    sources = sum(x is not None for x in (constants, step_model, steps))
    if sources != 1:
        raise ValueError(
            "Expected exactly one of `constants`, `step_model` or `steps`, but got "
            f"{sources}; pass the bound's constants, a fitted step model, or a fixed number."
        )
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"Expected `steps` to be an int >= 0, but got {steps!r}.")
        return steps
    if ledger is None or forget is None:
        raise ValueError(
            "Expected a `ledger` and the `forget` ids (or a ForgetRetainDataModule) to compute "
            "a budget from privacy losses, but got None."
        )
    if isinstance(forget, ForgetRetainDataModule):
        num_samples = forget.num_samples if num_samples is None else num_samples
        if expected_metadata is None and ledger.metadata.get("dataset_fingerprint"):
            expected_metadata = {
                "dataset_fingerprint": dataset_fingerprint(forget.dataset, forget.num_samples)
            }
        forget = forget.forget_ids
    check_ledger(
        ledger, ledger.num_samples if num_samples is None else num_samples, expected_metadata
    )
    if constants is not None:
        p = forget_privacy_loss(ledger, forget, constants.privacy_order, aggregate)
        return int(unlearning_steps(p, constants).item())
    assert step_model is not None
    if order is None:
        raise ValueError(
            "Expected the Rényi `order` at which `step_model` was fitted (for example 4 * alpha), "
            "but got None."
        )
    p = forget_privacy_loss(ledger, forget, order, aggregate)
    return int(step_model.predict(p, rounding="ceil").item())
