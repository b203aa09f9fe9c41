"""Argument parsing with YAML config files: ``--config file.yaml`` sets defaults, flags win."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from lightning_unlearn.errors import CheckpointError

__all__ = ["add_common", "none_or_float", "parse_args"]


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
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path, default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        values = _load_config(parser, known.config)
        for action in parser._actions:
            if action.dest in values:
                action.required = False
        parser.set_defaults(**values)
    return parser.parse_args(argv)
