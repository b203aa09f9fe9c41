"""Per-example outputs and losses of a model over a data loader (through ``batch_adapter``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_unlearn.evaluation.functional._batch import eval_mode
from lightning_unlearn.evaluation.functional.adapters import (
    AdapterLike,
    ExampleOutputs,
    as_adapter,
    batches_with_ids,
)

__all__ = ["per_example_logits", "per_example_losses", "per_example_outputs"]


@torch.no_grad()
def per_example_outputs(
    model: nn.Module, dataloader: Iterable[Any], *, batch_adapter: AdapterLike | None = None
) -> tuple[ExampleOutputs, Tensor]:
    """Run ``model`` over ``dataloader`` in eval mode; every example's outputs and id.

    Args:
        model: the model (a classifier, a Hugging Face model, a LightningModule, ...).
        dataloader: its batches; ids are those the batches carry, else (a ``DataLoader`` over
            a map-style dataset) the indices its sampler drew.
        batch_adapter: how to read a batch (see
            :mod:`~lightning_unlearn.evaluation.functional.adapters`; default: ``(x, y, ...)``
            classification or Hugging Face-style dicts).

    Returns:
        ``(outputs, sample_ids)``: the batches' :class:`ExampleOutputs` concatenated in the
        loader's order (``loss``, ``correct``, and ``logits`` / ``targets`` where the adapter
        gives them), on the model's device. The model's modes are restored afterwards.

    Raises:
        MissingSampleIdError: no ids are known for a batch.
        ValueError: the loader is empty.
    """
    adapter = as_adapter(batch_adapter)
    parts: list[ExampleOutputs] = []
    ids: list[Tensor] = []
    with eval_mode(model):
        for batch, sid in batches_with_ids(dataloader):
            out = adapter(model, batch)
            assert sid is not None
            if out.loss.dim() != 1 or out.loss.shape[0] != sid.shape[0]:
                raise ValueError(
                    "Expected the `batch_adapter` to return one loss per example "
                    f"([{sid.shape[0]}]), but got shape {tuple(out.loss.shape)}."
                )
            parts.append(out)
            ids.append(sid.to(out.loss.device))
    if not parts:
        raise ValueError("Expected a non-empty `dataloader`, but it yielded no batches.")
    logits = [p.logits for p in parts]
    targets = [p.targets for p in parts]
    merged = ExampleOutputs(
        loss=torch.cat([p.loss for p in parts]),
        logits=torch.cat(logits) if all(t is not None for t in logits) else None,  # type: ignore[arg-type]
        targets=torch.cat(targets) if all(t is not None for t in targets) else None,  # type: ignore[arg-type]
        correct=torch.cat([p.correctness() for p in parts])
        if all(p.correct is not None or p.logits is not None for p in parts)
        else None,
    )
    return merged, torch.cat(ids)


def per_example_logits(
    model: nn.Module, dataloader: Iterable[Any], *, batch_adapter: AdapterLike | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Run ``model`` over ``dataloader`` in eval mode and collect its class logits.

    Args:
        model: a classifier (logits ``[B, C]`` through ``batch_adapter``).
        dataloader: its batches (ids as in :func:`per_example_outputs`).
        batch_adapter: how to read a batch (default: ``(x, y, ...)`` or Hugging Face dicts).

    Returns:
        ``(logits [N, C], targets [N], sample_ids [N])`` in the loader's order, on the model's
        device. The model's train/eval modes are restored afterwards.

    Raises:
        MissingSampleIdError: no ids are known for a batch.
        ValueError: the loader is empty, or the adapter gives no class logits (a causal LM).
    """
    out, ids = per_example_outputs(model, dataloader, batch_adapter=batch_adapter)
    if out.logits is None or out.targets is None or out.logits.dim() != 2:
        raise ValueError(
            "Expected class logits [N, C] and targets from the `batch_adapter`, but it gave "
            "none (e.g. a causal language model); use `per_example_losses` instead."
        )
    return out.logits, out.targets, ids


def per_example_losses(
    model: nn.Module, dataloader: Iterable[Any], *, batch_adapter: AdapterLike | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Loss, sample id and correctness of every example in ``dataloader``.

    No gradients are recorded; the model runs in eval mode and its modes are restored. With
    the default adapter the loss of a classifier is

    .. math::

        \\ell(x, y) = -\\log \\operatorname{softmax}(f(x))_y

    Args:
        model: the model.
        dataloader: its batches; ids are those the batches carry, else the indices the
            ``DataLoader``'s sampler drew (positions in ``dataloader.dataset``).
        batch_adapter: how to read a batch (default: ``(x, y, ...)`` or Hugging Face dicts).

    Returns:
        ``(losses [N] float, sample_ids [N] long, correct [N] bool)`` in the loader's order, on
        the model's device.

    Raises:
        MissingSampleIdError: no ids are known for a batch.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> ds = TensorDataset(torch.eye(3), torch.tensor([0, 1, 0]))
        >>> model = torch.nn.Linear(3, 2, bias=False)
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> losses, ids, correct = per_example_losses(model, DataLoader(ds, batch_size=2))
        >>> [round(v, 4) for v in losses.tolist()], ids.tolist()
        ([0.6931, 0.6931, 0.6931], [0, 1, 2])
    """
    out, ids = per_example_outputs(model, dataloader, batch_adapter=batch_adapter)
    return out.loss, ids, out.correctness()
