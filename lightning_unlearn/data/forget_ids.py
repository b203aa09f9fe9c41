"""Forget ids from where a user gives them: a JSON list, a text file, or an inline list.

This is where ids enter, so they are checked here, once
(:func:`~lightning_unlearn.validation.check_forget_ids`: integers only, JSON floats and booleans
refused rather than truncated, within int64, no duplicates, not empty); the range against the
data set is checked where ``N`` is known (the data module the ids are used with).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from lightning_unlearn.errors import CheckpointError
from lightning_unlearn.integrity import write_json
from lightning_unlearn.validation import check_forget_ids

__all__ = ["read_forget_ids", "write_forget_ids"]

_INLINE_IDS = re.compile(r"^\s*[+-]?\d+(\s*,\s*[+-]?\d+)*\s*,?\s*$")


def read_forget_ids(spec: str | Path) -> torch.Tensor:
    """Read forget ids from a ``.json`` list, a text file (ids separated by commas or
    whitespace), or an inline comma-separated list such as ``"3,17,42"``.

    An inline list may hold negative numbers (``-1,3``); the range check against the data set
    then reports them.

    Args:
        spec: a path or an inline list.

    Returns:
        The ids as a sorted, duplicate-free 1-D long tensor.

    Raises:
        CheckpointError: the file is missing or is not a JSON list.
        InvalidArgumentError: a value is not an integer id.

    Example:
        >>> read_forget_ids("4,5").tolist()
        [4, 5]
    """
    text_spec = str(spec)
    path = Path(text_spec)
    if not path.exists() and _INLINE_IDS.match(text_spec):
        parts = [p for p in text_spec.split(",") if p.strip()]
        return check_forget_ids(parts, name="inline forget ids")
    if not path.is_file():
        raise CheckpointError(
            f"The forget-id file {text_spec!r} does not exist; pass a .json list, a text file "
            "of integer ids, or an inline list such as `3,17,42`."
        )
    text = path.read_text()
    if path.suffix != ".json":
        return check_forget_ids(
            text.replace(",", " ").split(), name=f"the forget ids in {text_spec!r}"
        )
    try:
        values = json.loads(text)
    except ValueError as err:
        raise CheckpointError(f"Expected {text_spec!r} to be a JSON list of ids: {err}.") from None
    if not isinstance(values, list):
        raise CheckpointError(
            f"Expected {text_spec!r} to hold a JSON list of ids, but got {type(values).__name__}."
        )
    return check_forget_ids(values, name=f"the forget ids in {text_spec!r}")


def write_forget_ids(path: str | Path, ids: torch.Tensor) -> Path:
    """Write ids as a JSON list (readable by :func:`read_forget_ids`), atomically."""
    return write_json(path, [int(i) for i in ids.tolist()])
