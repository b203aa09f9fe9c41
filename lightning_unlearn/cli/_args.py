"""Argument parsing with YAML config files: ``--config file.yaml`` sets defaults, flags win.

After parsing, every value is checked by one shared table of validators (:data:`CHECKS`, built
on :mod:`lightning_unlearn.validation`), so a YAML value that argparse never converts
(``epochs: 2.7``, ``epochs: -1``, ``model: rnn``) is refused before any work starts, with a
one-line :class:`~lightning_unlearn.errors.InvalidArgumentError` (exit status 2).
"""

from __future__ import annotations

import argparse
import functools
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from lightning_unlearn.errors import CheckpointError, InvalidArgumentError
from lightning_unlearn.validation import check_float, check_int, check_optional

__all__ = [
    "CHECKS",
    "add_common",
    "check_output_dir",
    "none_or_float",
    "parse_args",
    "validate_namespace",
]

_pos_int = functools.partial(check_int, minimum=1)
_nonneg_int = functools.partial(check_int, minimum=0)
_pos_float = functools.partial(check_float, minimum=0.0)
_nonneg_float = functools.partial(check_float, minimum=0.0, inclusive=True)


def _opt(check: Callable[..., Any]) -> Callable[[str, Any], Any]:
    return lambda name, value: check_optional(name, value, check)


CHECKS: dict[str, Callable[[str, Any], Any]] = {
    # counts and sizes
    "epochs": _pos_int,
    "batch_size": _pos_int,
    "check_every": _pos_int,
    "forget_size": _pos_int,
    "seeds": _pos_int,
    "n_bins": _pos_int,
    "max_steps": _pos_int,
    "curvature_probes": _nonneg_int,
    "threads": _nonneg_int,
    "seed": _nonneg_int,
    "alpha": functools.partial(check_int, minimum=2),
    "subset": _opt(functools.partial(check_int, minimum=2)),
    "test_subset": _opt(functools.partial(check_int, minimum=2)),
    "budget_steps": _opt(_nonneg_int),
    "max_budget_steps": _opt(_nonneg_int),
    # rates and noise
    "lr": _pos_float,
    "unlearn_lr": _pos_float,
    "noise_multiplier": _pos_float,
    "bound_noise_multiplier": _pos_float,
    "sgld_noise": _nonneg_float,
    "max_grad_norm": _opt(_pos_float),
    "c_lsi": _pos_float,
    "target_epsilon": _pos_float,
    "d0": _nonneg_float,
    "d_irr": _nonneg_float,
    "tolerance": _pos_float,
}
"""Option destination -> validator ``(name, value) -> canonical value``; shared by every command."""


def check_output_dir(path: Any, name: str = "output_dir") -> Path:
    """Check that ``path`` is, or can be created as, a directory files can be written to.

    Nothing is created: a missing directory is judged by its nearest existing ancestor.

    Raises:
        InvalidArgumentError: it is a file, lies under a file, or is not writable.
    """
    out = Path(str(path))
    if out.exists() and not out.is_dir():
        raise InvalidArgumentError(
            f"Expected `{name}` to be a directory, but {str(out)!r} is a file; pass a directory."
        )
    probe = out.absolute()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InvalidArgumentError(
            f"Expected `{name}` {str(out)!r} to be creatable as a directory, but {str(probe)!r} "
            "is a file; choose another directory."
        )
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise InvalidArgumentError(
            f"Expected `{name}` {str(out)!r} to be a writable directory, but {str(probe)!r} is "
            f"not writable ({err.strerror or err}); choose another directory or fix its "
            "permissions."
        ) from None
    return out


def validate_namespace(
    parser: argparse.ArgumentParser, namespace: argparse.Namespace
) -> argparse.Namespace:
    """Check every parsed value with :data:`CHECKS` and the options' ``choices``, in place.

    Raises:
        InvalidArgumentError: a value of the wrong type or out of range.
    """
    for action in parser._actions:
        dest = action.dest
        if not hasattr(namespace, dest):
            continue
        value = getattr(namespace, dest)
        option = action.option_strings[-1] if action.option_strings else dest
        if action.choices is not None and value is not None and value not in action.choices:
            raise InvalidArgumentError(
                f"Expected `{option}` to be one of {sorted(action.choices)}, but got {value!r}."
            )
        if dest in CHECKS:
            setattr(namespace, dest, CHECKS[dest](option.lstrip("-"), value))
    for dest in ("output_dir",):
        if getattr(namespace, dest, None) is not None:
            check_output_dir(getattr(namespace, dest), dest.replace("_", "-"))
    output = getattr(namespace, "output", None)
    if output is not None:
        check_output_dir(Path(str(output)).parent or Path("."), "output")
    return namespace


def none_or_float(text: str) -> float | None:
    """argparse type: a float, or ``none`` for None."""
    return None if text.strip().lower() in ("none", "null", "") else float(text)


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options every command has: ``--config`` and ``--no-progress``."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML file of option values (keys are the long option names, e.g. `epochs: 10`); "
        "options given on the command line override it. See examples/configs/.",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bars (e.g. in CI logs)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; these small models run fastest on one, and more threads than "
        "idle cores slow every step down many times over",
    )


def _load_config(parser: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"The config file {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise CheckpointError(f"The config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise CheckpointError(
            f"Expected the config file {str(path)!r} to hold a mapping of option: value, but "
            f"got {type(data).__name__}."
        )
    known = {a.dest for a in parser._actions if a.dest not in ("help", "config")}
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        raise CheckpointError(
            f"Unknown option(s) {unknown} in {str(path)!r}; valid keys for "
            f"`{parser.prog}` are {sorted(known)}."
        )
    return values


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; values of ``--config`` become defaults that explicit flags override.

    Raises:
        CheckpointError: the config file is missing, not YAML, or names unknown options.
        InvalidArgumentError: a value fails its check (:func:`validate_namespace`).
    """
    # Let an inline id list with negative ids (`--forget-ids -1,3`) be a value, not an option;
    # the range check then reports the negative id.
    parser._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+(,\s*[+-]?\d+)+,?$")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        values = _load_config(parser, known.config)
        for action in parser._actions:
            if action.dest in values:
                action.required = False
        parser.set_defaults(**values)
    return validate_namespace(parser, parser.parse_args(argv))
