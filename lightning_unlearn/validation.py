"""One set of value validators, shared by the accounting core, the budgets and the command line.

Pure (standard library and torch only). Each validator returns the value in its canonical type
or raises :class:`~lightning_unlearn.errors.InvalidArgumentError` with a one-line message of the
form "Expected `name` to be ..., but got ...". YAML and JSON values reach them unconverted, so
they reject what argparse's ``type=`` would never see: ``epochs: 2.7``, ``true`` for an id.
Forget ids have one validator and converter, :func:`check_forget_ids`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch

from lightning_unlearn.errors import ForgetSetError, InvalidArgumentError, InvalidArgumentTypeError

__all__ = [
    "INT64_MAX",
    "check_float",
    "check_forget_ids",
    "check_int",
    "check_optional",
]

INT64_MAX = 2**63 - 1
"""The largest id a ``torch.long`` tensor holds."""


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: Any, *, minimum: int | None = 1) -> int:
    """An integer ``>= minimum`` (booleans and floats such as ``2.7`` or ``2.0`` are rejected).

    Example:
        >>> check_int("epochs", 3)
        3
        >>> check_int("epochs", 2.7)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_unlearn.errors.InvalidArgumentTypeError: Expected `epochs` to be an integer ...
    """
    if not _is_int(value) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        error = InvalidArgumentError if _is_int(value) else InvalidArgumentTypeError
        raise error(
            f"Expected `{name}` to be an integer{bound}, but got {value!r} "
            f"({type(value).__name__})."
        )
    return int(value)


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = 0.0,
    inclusive: bool = False,
    maximum: float | None = None,
) -> float:
    """A finite real number ``> minimum`` (``>=`` with ``inclusive``) and ``<= maximum``.

    Example:
        >>> check_float("lr", 0.1)
        0.1
        >>> check_float("lr", 0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_unlearn.errors.InvalidArgumentError: Expected `lr` to be a finite number ...
    """
    real = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = real and math.isfinite(float(value))
    if ok and minimum is not None:
        ok = float(value) >= minimum if inclusive else float(value) > minimum
    if ok and maximum is not None:
        ok = float(value) <= maximum
    if not ok:
        bound = "" if minimum is None else f" {'>=' if inclusive else '>'} {minimum}"
        bound += "" if maximum is None else f" and <= {maximum}"
        raise (InvalidArgumentError if real else InvalidArgumentTypeError)(
            f"Expected `{name}` to be a finite number{bound}, but got {value!r} "
            f"({type(value).__name__})."
        )
    return float(value)


def check_optional(name: str, value: Any, check: Any, **kwargs: Any) -> Any:
    """``None``, or ``check(name, value, **kwargs)``."""
    return None if value is None else check(name, value, **kwargs)


def _id_tensor(forget_ids: Any, name: str) -> torch.Tensor:
    """The ids as an integer tensor (no range checks): the one conversion."""
    if isinstance(forget_ids, torch.Tensor) or hasattr(forget_ids, "__array__"):
        try:
            ids = torch.as_tensor(forget_ids)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ForgetSetError(
                f"Expected `{name}` to be integer sample ids, but got "
                f"{type(forget_ids).__name__} ({err})."
            ) from None
        if ids.dtype == torch.bool:
            raise ForgetSetError(
                f"Expected `{name}` to be integer sample ids, but got a boolean mask; pass "
                "`mask.nonzero().flatten()` instead."
            )
        if ids.dtype.is_floating_point or ids.dtype.is_complex:
            raise ForgetSetError(
                f"Expected `{name}` to be integer sample ids, but got dtype {ids.dtype} (a float "
                "id list was not written as ids; convert it with `.long()` if it was)."
            )
        return ids
    if isinstance(forget_ids, str | bytes) or not isinstance(forget_ids, Iterable):
        raise ForgetSetError(
            f"Expected `{name}` to be a sequence of integer sample ids, but got "
            f"{type(forget_ids).__name__} {forget_ids!r}."
        )
    out: list[Any] = []
    for i, value in enumerate(forget_ids):
        if _is_int(value):
            out.append(int(value))
        elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            out.append(int(value.strip()))
        elif (
            isinstance(value, torch.Tensor)
            and value.dim() == 0
            and not (value.dtype.is_floating_point or value.dtype.is_complex)
            and value.dtype != torch.bool
        ):
            out.append(int(value))  # `list(tensor)` gives 0-d tensors
        elif isinstance(value, list | tuple):
            out.append(value)  # nested: reported as not 1-D below
        else:
            raise ForgetSetError(
                f"Expected `{name}` to be integer sample ids, but item {i} is {value!r} "
                f"({type(value).__name__})."
            )
        if _is_int(out[-1]) and not -INT64_MAX - 1 <= out[-1] <= INT64_MAX:
            raise ForgetSetError(
                f"Expected `{name}` to fit in int64, but item {i} is {out[-1]}, out of range."
            )
    try:
        return torch.tensor(out, dtype=torch.long)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ForgetSetError(
            f"Expected `{name}` to be a 1-D sequence of integer sample ids, but got {err}."
        ) from None


def check_forget_ids(
    forget_ids: Any, num_samples: int | None = None, *, name: str = "forget_ids"
) -> torch.Tensor:
    """Forget ids, checked and converted once, where they enter: the canonical id tensor.

    Library entry points (``ForgetRetainDataModule``, ``compute_budget``,
    ``forget_privacy_loss``, ``ReferenceStats.targets``, the audit record, the command line's
    id files) call this once; the functions they hand the result to trust it and do not check
    or convert again.

    Accepts a sequence of Python / numpy integers or decimal strings of integers (text files),
    or a 1-D integer tensor / array. Rejects booleans and boolean masks, floats (``1.5``, and
    ``2.0`` too: an id list holding floats was not written as ids), values outside int64,
    nested lists, an empty set, duplicates and (when ``num_samples`` is given) ids outside
    ``[0, N)``.

    Args:
        forget_ids: the ids.
        num_samples: the size ``N`` of the training set the ids index (valid ids are
            ``[0, N)``); ``None`` where ``N`` is not known yet (a file of ids read before the
            data set): the range is then checked by the entry point that knows ``N``.
        name: how the ids are named in messages.

    Returns:
        The ids as a sorted, duplicate-free, 1-D ``torch.long`` tensor on the CPU.

    Raises:
        ForgetSetError: any of the above; the message names the offending ids and the fix.

    Example:
        >>> check_forget_ids([4, "1"], num_samples=10).tolist()
        [1, 4]
        >>> check_forget_ids([1, 1], num_samples=10)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_unlearn.errors.ForgetSetError: Expected unique forget ids, but got ...
    """
    ids = _id_tensor(forget_ids, name)
    if ids.numel() == 0:
        raise ForgetSetError(
            f"Expected at least one forget id in `{name}`, but got an empty forget set; there is "
            "nothing to unlearn."
        )
    if ids.dim() != 1:
        raise ForgetSetError(
            f"Expected `{name}` to be a 1-D sequence of integer sample ids, but got shape "
            f"{tuple(ids.shape)}."
        )
    ids = ids.long().cpu()
    what = "forget ids" if "forget" in name else f"`{name}`"
    bad = ids[(ids < 0) | (ids >= num_samples)] if num_samples is not None else ids[:0]
    if bad.numel():
        raise ForgetSetError(
            f"Expected {what} in [0, {num_samples}) (the ids of the original training set), "
            f"but got {bad[:10].tolist()}; use the ids of the privacy ledger (positions in the "
            "training DataLoader's dataset)."
        )
    ids, counts = torch.unique(ids, sorted=True, return_counts=True)
    if bool((counts > 1).any()):
        dup = ids[counts > 1][:10].tolist()
        raise ForgetSetError(
            f"Expected unique {what}, but got duplicates {dup}; pass each id once."
        )
    return ids
