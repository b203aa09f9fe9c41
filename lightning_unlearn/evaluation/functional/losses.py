"""Per-example outputs and losses of a classifier over a data loader."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_unlearn.evaluation.functional._batch import (
    BatchFn,
    eval_mode,
    iterate,
    model_device,
    split_batch,
)

__all__ = ["per_example_logits", "per_example_losses"]


@torch.no_grad()
def per_example_logits(
    model: nn.Module, dataloader: Iterable[Any], *, batch_fn: BatchFn | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Run ``model`` over ``dataloader`` in eval mode and collect its outputs.

    Args:
        model: a classifier mapping a batch of inputs to logits ``[B, C]``.
        dataloader: batches ``(x, y, sample_id)`` or dicts with ``"sample_id"`` (see
            :class:`~lightning_unlearn.data.IndexedDataset`).
        batch_fn: optional ``batch -> (inputs, targets)`` for other batch structures.

    Returns:
        ``(logits [N, C], targets [N], sample_ids [N])`` in the loader's order, on the model's
        device. The model's train/eval modes are restored afterwards.

    Raises:
        MissingSampleIdError: a batch carries no sample ids.
        ValueError: the loader is empty.
    """
    device = model_device(model)
    logits, targets, ids = [], [], []
    with eval_mode(model):
        for batch in iterate(dataloader):
            x, y, sid = split_batch(batch, batch_fn)
            assert sid is not None  # split_batch raises when ids are required and missing
            logits.append(model(x.to(device)))
            targets.append(y.to(device))
            ids.append(sid.to(device))
    if not logits:
        raise ValueError("Expected a non-empty `dataloader`, but it yielded no batches.")
    return torch.cat(logits), torch.cat(targets), torch.cat(ids)


def per_example_losses(
    model: nn.Module, dataloader: Iterable[Any], *, batch_fn: BatchFn | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Cross-entropy loss, sample id and correctness of every example in ``dataloader``.

    No gradients are recorded; the model runs in eval mode and its modes are restored.

    .. math::

        \\ell(x, y) = -\\log \\operatorname{softmax}(f(x))_y

    Args:
        model: a classifier mapping inputs to logits ``[B, C]``.
        dataloader: batches ``(x, y, sample_id)`` or dicts with ``"sample_id"``.
        batch_fn: optional ``batch -> (inputs, targets)`` for other batch structures.

    Returns:
        ``(losses [N] float, sample_ids [N] long, correct [N] bool)`` in the loader's order, on
        the model's device.

    Raises:
        MissingSampleIdError: a batch carries no sample ids.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> from lightning_unlearn.data import IndexedDataset
        >>> ds = IndexedDataset(TensorDataset(torch.eye(3), torch.tensor([0, 1, 0])))
        >>> model = torch.nn.Linear(3, 2, bias=False)
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> losses, ids, correct = per_example_losses(model, DataLoader(ds, batch_size=2))
        >>> [round(v, 4) for v in losses.tolist()], ids.tolist()
        ([0.6931, 0.6931, 0.6931], [0, 1, 2])
    """
    logits, targets, ids = per_example_logits(model, dataloader, batch_fn=batch_fn)
    losses = F.cross_entropy(logits.float(), targets.long(), reduction="none")
    correct = logits.argmax(dim=-1) == targets
    return losses, ids, correct
