"""Shared plumbing of the evaluation functions: splitting batches, devices, eval mode."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_unlearn.data import SAMPLE_ID_KEY, get_sample_ids

__all__ = ["BatchFn", "eval_mode", "model_device", "split_batch"]

BatchFn = Callable[[Any], tuple[Tensor, Tensor]]
"""A user function ``batch -> (inputs, targets)`` for batch structures not understood here."""

_INPUT_KEYS = ("x", "input", "inputs", "image", "images", "features")
_TARGET_KEYS = ("y", "target", "targets", "label", "labels")


def model_device(model: nn.Module) -> torch.device:
    """The device of the first parameter or buffer of ``model`` (CPU for a stateless module)."""
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def _first_key(batch: Mapping[str, Any], keys: tuple[str, ...], what: str) -> Any:
    for key in keys:
        if key in batch:
            return batch[key]
    raise KeyError(
        f"Expected a dict batch with a {what} key (one of {list(keys)}), but got keys "
        f"{sorted(batch)}; pass `batch_fn=lambda batch: (inputs, targets)` instead."
    )


def split_batch(
    batch: Any, batch_fn: BatchFn | None = None, *, with_ids: bool = True
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Split a batch into ``(inputs, targets, sample_ids)``.

    Understands the batches of :class:`~lightning_unlearn.data.IndexedDataset`: named tuples
    ``(x, y, sample_id)`` and dicts with the key ``"sample_id"``. Plain ``(x, y)`` tuples are
    accepted when ``with_ids`` is false.

    Args:
        batch: one batch from a data loader.
        batch_fn: optional ``batch -> (inputs, targets)`` for other structures; sample ids are
            still read with :func:`~lightning_unlearn.data.get_sample_ids`.
        with_ids: whether the sample ids are required.

    Returns:
        ``(inputs, targets, sample_ids)``; ``sample_ids`` is ``None`` only when ``with_ids`` is
        false and the batch carries none.

    Raises:
        MissingSampleIdError: ``with_ids`` and the batch carries no ids.
    """
    ids: Tensor | None
    try:
        ids = get_sample_ids(batch)
    except KeyError:
        if with_ids:
            raise
        ids = None
    if batch_fn is not None:
        inputs, targets = batch_fn(batch)
    elif isinstance(batch, Mapping):
        inputs = _first_key(batch, _INPUT_KEYS, "input")
        targets = _first_key(batch, _TARGET_KEYS, "target")
    elif isinstance(batch, tuple | list):
        fields = [v for k, v in _named_items(batch) if k != SAMPLE_ID_KEY]
        if len(fields) < 2:
            raise ValueError(
                f"Expected a batch `(inputs, targets[, sample_id])`, but got {len(batch)} fields; "
                "pass `batch_fn=lambda batch: (inputs, targets)`."
            )
        inputs, targets = fields[0], fields[1]
    else:
        raise TypeError(
            f"Expected a tuple or dict batch, but got {type(batch).__name__}; pass "
            "`batch_fn=lambda batch: (inputs, targets)`."
        )
    return inputs, targets, ids


def _named_items(batch: tuple[Any, ...] | list[Any]) -> Iterator[tuple[str, Any]]:
    fields = getattr(batch, "_fields", None)
    if fields is None:
        yield from ((str(i), v) for i, v in enumerate(batch))
    else:
        yield from zip(fields, batch, strict=True)


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put ``models`` in eval mode and restore each submodule's previous mode on exit."""
    saved = [[(m, m.training) for m in model.modules()] for model in models]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for modes in saved:
            for module, training in modes:
                module.training = training


def iterate(dataloader: Iterable[Any]) -> Iterator[Any]:
    """Iterate a data loader (kept as a function so errors can name the argument)."""
    if not isinstance(dataloader, Iterable):
        raise TypeError(
            f"Expected `dataloader` to be an iterable of batches, but got "
            f"{type(dataloader).__name__}."
        )
    yield from dataloader
