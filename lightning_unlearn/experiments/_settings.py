"""Checks of the experiments' settings: one rule per option name, the choices from the types.

The experiments are called from Python as well as through ``jsonargparse`` (which checks
types, not ranges), so every value is checked here, before any work starts, and a bad one is
refused with a one-line :class:`~lightning_unlearn.errors.InvalidArgumentError`.
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from lightning_unlearn.errors import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    OutputWriteError,
)
from lightning_unlearn.validation import check_float, check_int, check_optional

__all__ = ["output_directory", "python_call", "validated"]

_pos_int = functools.partial(check_int, minimum=1)
_nonneg_int = functools.partial(check_int, minimum=0)
_pos_float = functools.partial(check_float, minimum=0.0)
_nonneg_float = functools.partial(check_float, minimum=0.0, inclusive=True)


def _opt(check: Callable[..., Any]) -> Callable[[str, Any], Any]:
    return lambda name, value: check_optional(name, value, check)


RULES: dict[str, Callable[[str, Any], Any]] = {
    "epochs": _pos_int,
    "batch_size": _pos_int,
    "check_every": _pos_int,
    "forget_size": _pos_int,
    "seeds": _pos_int,
    "n_bins": _pos_int,
    "max_steps": _pos_int,
    "early_epoch": _pos_int,
    "curvature_probes": _nonneg_int,
    "seed": _nonneg_int,
    "hold": _nonneg_int,
    "reference_k": functools.partial(check_int, minimum=2),
    "reference_epochs": _opt(_pos_int),
    "calibration_models": _pos_int,
    "calibration_probe": functools.partial(check_int, minimum=2),
    "alpha": functools.partial(check_int, minimum=2),
    "subset": _opt(functools.partial(check_int, minimum=2)),
    "test_subset": _opt(functools.partial(check_int, minimum=2)),
    "budget_steps": _opt(_nonneg_int),
    "max_budget_steps": _opt(_nonneg_int),
    "scale": _pos_float,
    "lr": _pos_float,
    "unlearn_lr": _pos_float,
    "noise_multiplier": _pos_float,
    "langevin_sigma": _opt(_pos_float),
    "sgld_sigma": _pos_float,
    "max_grad_norm": _opt(_pos_float),
    "c_lsi": _pos_float,
    "target_epsilon": _pos_float,
    "d0": _nonneg_float,
    "d_irr": _nonneg_float,
    "tolerance": _pos_float,
    "tau": _nonneg_float,
}
"""Setting name -> validator ``(name, value) -> canonical value``."""

Settings = TypeVar("Settings")


def _check_choice(name: str, value: Any, hint: Any) -> Any:
    """``value`` against a ``Literal[...]``, a ``Sequence[Literal[...]]`` or ``bool`` hint."""
    origin = typing.get_origin(hint)
    if origin is Literal and value not in typing.get_args(hint):
        raise InvalidArgumentError(
            f"Expected `{name}` to be one of {list(typing.get_args(hint))}, but got {value!r}."
        )
    if origin is Sequence:
        (item,) = typing.get_args(hint)
        if isinstance(value, str) or not isinstance(value, Sequence) or not value:
            raise InvalidArgumentTypeError(
                f"Expected `{name}` to be a non-empty list such as "
                f"{list(typing.get_args(item))[:2]}, but got {value!r}."
            )
        return tuple(_check_choice(name, v, item) for v in value)
    if hint is bool and not isinstance(value, bool):
        raise InvalidArgumentTypeError(
            f"Expected `{name}` to be True or False, but got {value!r} ({type(value).__name__})."
        )
    return value


def validated(settings: Settings) -> Settings:
    """A copy of the frozen dataclass ``settings`` with every value checked and canonical.

    Raises:
        InvalidArgumentError: a value of the wrong type, out of range, or not among the
            choices its type lists.
    """
    hints = typing.get_type_hints(type(settings))
    values = {}
    for field in dataclasses.fields(settings):  # type: ignore[arg-type]
        value = getattr(settings, field.name)
        if field.name in RULES:
            value = RULES[field.name](field.name, value)
        values[field.name] = _check_choice(field.name, value, hints[field.name])
    return dataclasses.replace(settings, **values)  # type: ignore[type-var]


def python_call(name: str, arguments: dict[str, Any]) -> str:
    """How a run started from Python is shown in its report: ``name(key=value, ...)``."""
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in arguments.items()) + ")"


def output_directory(path: Path) -> Path:
    """Create ``path`` (with parents) and check that files can be written there, before any
    work starts rather than at the first write after training.

    Raises:
        OutputWriteError: it is a file, lies under a file, or is not writable.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise OutputWriteError(
            f"Expected `output_dir` {str(path)!r} to be a writable directory, but it is not "
            f"({err.strerror or err}); choose another directory or fix its permissions."
        ) from None
    return path
