"""One set of value validators, shared by the accounting core, the budgets and the command line.

Pure (standard library and torch only). Each validator returns the value in its canonical type
or raises :class:`~lightning_unlearn.errors.InvalidArgumentError` with a one-line message of the
form "Expected `name` to be ..., but got ...". YAML and JSON values reach them unconverted, so
they reject what argparse's ``type=`` would never see: ``epochs: 2.7``, ``true`` for an id.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch

from lightning_unlearn.errors import InvalidArgumentError, InvalidArgumentTypeError

__all__ = [
    "INT64_MAX",
    "check_float",
    "check_int",
    "check_optional",
    "check_sample_ids",
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


def check_sample_ids(values: Iterable[Any], what: str = "forget ids") -> torch.Tensor:
    """Integer sample ids as a 1-D ``torch.long`` tensor: where ids enter, they are checked once.

    Accepts Python / numpy integers and decimal strings of integers (text files). Rejects
    booleans, floats (``1.5``, and ``2.0`` too: an id list holding floats was not written as
    ids) and values outside int64. Ranges against a data set are checked later
    (:func:`~lightning_unlearn.data.splits.validate_forget_ids`), where ``N`` is known.

    Args:
        values: the ids.
        what: how the ids are named in the message.

    Returns:
        The ids, in the order given.

    Raises:
        InvalidArgumentError: a value is not an integer or does not fit in int64.

    Example:
        >>> check_sample_ids([3, "17", -1]).tolist()
        [3, 17, -1]
        >>> check_sample_ids([1.5, 3])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_unlearn.errors.InvalidArgumentError: Expected forget ids to be integers, but ...
    """
    out: list[int] = []
    for i, value in enumerate(values):
        number: int | None = None
        if _is_int(value):
            number = int(value)
        elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            number = int(value.strip())
        if number is None:
            raise InvalidArgumentError(
                f"Expected {what} to be integers, but item {i} is {value!r} "
                f"({type(value).__name__})."
            )
        if not -INT64_MAX - 1 <= number <= INT64_MAX:
            raise InvalidArgumentError(
                f"Expected {what} to fit in int64, but item {i} is {number}, out of range."
            )
        out.append(number)
    return torch.tensor(out, dtype=torch.long)
