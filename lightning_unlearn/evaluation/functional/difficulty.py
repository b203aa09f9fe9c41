"""Data-difficulty scores compared with the per-instance privacy loss (THEORY §6).

EL2N and GraNd follow Paul, Ganguli and Dziugaite (NeurIPS 2021); forgetting events follow
Toneva et al. (ICLR 2019); the mean true-class confidence across training is the cheap proxy
of the consistency score (C-score) of Jiang et al. (ICML 2021) that they themselves propose.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from lightning_unlearn.evaluation.functional._batch import eval_mode, model_device
from lightning_unlearn.evaluation.functional.adapters import (
    AdapterLike,
    as_adapter,
    batches_with_ids,
    tensor_inputs,
)

__all__ = [
    "DIFFICULTY_FIELDS",
    "el2n_scores",
    "forgetting_events",
    "grand_scores",
    "mean_true_class_confidence",
    "true_class_confidence",
]


DIFFICULTY_FIELDS = ("count", "correct", "confidence", "el2n")
"""Rows of the dense per-example table built by :func:`_difficulty_update`."""


def _difficulty_update(
    logits: Tensor, targets: Tensor, sample_ids: Tensor, num_samples: int
) -> Tensor:
    """Dense ``[4, num_samples]`` float64 sums (count, correct, confidence, EL2N) by sample id.

    Sums (not means) so that tables from several batches or ranks combine by addition; a
    duplicated id (DistributedSampler padding) is counted twice and averaged away later.
    """
    _check_logits(logits, targets)
    ids = sample_ids.to(logits.device).long()
    if ids.shape != targets.shape:
        raise ValueError(
            f"Expected `sample_ids` of shape {tuple(targets.shape)}, but got {tuple(ids.shape)}."
        )
    # One host sync per batch: this runs in evaluation passes, not in the training step.
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_samples):
        raise ValueError(
            f"Expected sample ids in [0, {num_samples}), but got ids from {int(ids.min())} to "
            f"{int(ids.max())}; set `num_samples` to the size of the whole training set."
        )
    targets = targets.to(logits.device).long()
    rows = torch.stack(
        [
            torch.ones_like(targets, dtype=torch.float64),
            (logits.argmax(dim=-1) == targets).double(),
            true_class_confidence(logits, targets).double(),
            el2n_scores(logits, targets).double(),
        ]
    )
    table = torch.zeros(len(DIFFICULTY_FIELDS), num_samples, dtype=torch.float64, device=ids.device)
    return table.index_add_(1, ids, rows)


def _difficulty_compute(table: Tensor) -> dict[str, Tensor]:
    """Per-example means of a :func:`_difficulty_update` table; NaN where never seen."""
    count = table[0]
    seen = count > 0
    out = {}
    for row, name in enumerate(DIFFICULTY_FIELDS[1:], start=1):
        mean = table[row] / count.clamp_min(1.0)
        out[name] = torch.where(seen, mean, torch.full_like(mean, float("nan")))
    return out


def _check_logits(logits: Tensor, targets: Tensor) -> None:
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            "Expected `logits` [N, C] and `targets` [N], but got shapes "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}."
        )


def el2n_scores(logits: Tensor, targets: Tensor) -> Tensor:
    """EL2N score of every example: the L2 norm of the error vector (Paul et al. 2021; THEORY §6).

    .. math::

        \\mathrm{EL2N}(x, y) = \\lVert \\operatorname{softmax}(f(x)) - e_y \\rVert_2

    Paul et al. average it over a few independently initialised networks early in training
    (a few epochs); pass the logits of each and average the results.

    Args:
        logits: ``[N, C]`` logits.
        targets: ``[N]`` integer labels.

    Returns:
        ``[N]`` float scores in ``[0, sqrt(2)]`` on the logits' device.

    Raises:
        ValueError: the shapes do not match.

    Example:
        >>> import torch
        >>> el2n_scores(torch.tensor([[0.0, 0.0]]), torch.tensor([1])).tolist()
        [0.7071067690849304]
    """
    _check_logits(logits, targets)
    error = F.softmax(logits.float(), dim=-1)
    error = error - F.one_hot(targets.long(), logits.shape[1]).to(error.dtype)
    return error.norm(dim=-1)


def true_class_confidence(logits: Tensor, targets: Tensor) -> Tensor:
    """Softmax probability of the true class, ``softmax(f(x))_y``, per example.

    Example:
        >>> import torch
        >>> true_class_confidence(torch.tensor([[0.0, 0.0]]), torch.tensor([1])).tolist()
        [0.5]
    """
    _check_logits(logits, targets)
    probs = F.softmax(logits.float(), dim=-1)
    return probs.gather(1, targets.long()[:, None]).squeeze(1)


def forgetting_events(correct: Tensor) -> Tensor:
    """Number of forgetting events of every example (Toneva et al. 2019; THEORY §6).

    A forgetting event is a transition from correctly to incorrectly classified between two
    consecutive recordings:

    .. math::

        \\mathrm{forget}(x) = \\sum_{t \\ge 1} [\\mathrm{acc}_{t-1}(x) = 1 \\wedge
            \\mathrm{acc}_t(x) = 0]

    Toneva et al. also treat examples never learned (``correct`` never true) as forgotten
    infinitely often; find them with ``~correct.any(dim=0)``.

    Args:
        correct: ``[T, N]`` boolean correctness of N examples at T successive recordings
            (epochs or presentations).

    Returns:
        ``[N]`` long counts.

    Raises:
        ValueError: ``correct`` is not a 2-D boolean tensor.

    Example:
        >>> import torch
        >>> forgetting_events(torch.tensor([[1], [0], [1], [0], [0]], dtype=torch.bool)).tolist()
        [2]
    """
    if correct.dim() != 2 or correct.dtype != torch.bool:
        raise ValueError(
            "Expected `correct` to be a [T, N] bool tensor, but got dtype "
            f"{correct.dtype} and shape {tuple(correct.shape)}."
        )
    return (correct[:-1] & ~correct[1:]).sum(dim=0)


def mean_true_class_confidence(confidences: Tensor) -> Tensor:
    """Mean true-class confidence over recordings, ignoring NaN (a C-score proxy; THEORY §6).

    .. math::

        \\bar p(x) = \\frac{1}{T} \\sum_{t=1}^{T} \\operatorname{softmax}(f_{\\theta_t}(x))_y

    Jiang et al. (2021) show this learning-speed statistic ranks examples much like their
    hold-out consistency score (C-score), at the cost of one training run.

    Args:
        confidences: ``[T, N]`` true-class probabilities; NaN marks "not recorded".

    Returns:
        ``[N]`` means (NaN for an example never recorded).

    Example:
        >>> import torch
        >>> mean_true_class_confidence(torch.tensor([[0.2, 1.0], [0.4, float("nan")]])).tolist()
        [0.30000001192092896, 1.0]
    """
    if confidences.dim() != 2:
        raise ValueError(
            f"Expected `confidences` [T, N], but got shape {tuple(confidences.shape)}."
        )
    return confidences.nanmean(dim=0)


def grand_scores(
    model: nn.Module,
    dataloader: Iterable[Any],
    *,
    batch_adapter: AdapterLike | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """GraNd score of every example: the norm of its own loss gradient (Paul et al. 2021).

    .. math::

        \\mathrm{GraNd}(x, y) = \\lVert \\nabla_\\theta \\, \\ell(f_\\theta(x), y) \\rVert_2

    over all trainable parameters, with the cross-entropy of the example alone (not divided by
    the batch size). Computed with ``torch.func.vmap(grad(...))`` in eval mode, so BatchNorm
    uses its running statistics and dropout is off; the model and its ``.grad`` are untouched.
    Paul et al. average the score over several initialisations early in training.

    Args:
        model: a classifier mapping inputs to logits.
        dataloader: its batches (ids carried by the batches, else the sampler's indices).
        batch_adapter: how to read a batch; its ``inputs`` must be one tensor (see
            :mod:`~lightning_unlearn.evaluation.functional.adapters`).
        chunk_size: optional ``vmap`` chunk size to bound memory.

    Returns:
        ``(scores [N] float, sample_ids [N])`` in the loader's order, on the model's device.

    Raises:
        MissingSampleIdError: no ids are known for a batch.
        ValueError: the model has no trainable parameters or the loader is empty.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> model = torch.nn.Linear(2, 2, bias=False)
        >>> _ = torch.nn.init.zeros_(model.weight)
        >>> data = TensorDataset(torch.tensor([[3.0, 4.0]]), torch.tensor([0]))
        >>> scores, ids = grand_scores(model, DataLoader(data))
        >>> round(scores.item(), 4)  # ||(p - e_y) x^T|| = ||(-0.5, 0.5)|| * ||(3, 4)||
        3.5355
    """
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(
            "Expected `model` to have trainable parameters for GraNd, but it has none."
        )
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    device = model_device(model)
    adapter = as_adapter(batch_adapter)

    def example_loss(p: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(logits.float(), y.unsqueeze(0).long())

    per_example_grad = vmap(grad(example_loss), in_dims=(None, 0, 0), chunk_size=chunk_size)
    scores, ids = [], []
    with eval_mode(model):
        for batch, sid in batches_with_ids(dataloader):
            x, y = tensor_inputs(adapter, batch)
            assert sid is not None
            grads = per_example_grad(params, x.to(device), y.to(device))
            sq = sum(g.flatten(1).pow(2).sum(dim=1) for g in grads.values())
            assert isinstance(sq, Tensor)
            scores.append(sq.sqrt())
            ids.append(sid.to(device))
    if not scores:
        raise ValueError("Expected a non-empty `dataloader`, but it yielded no batches.")
    return torch.cat(scores), torch.cat(ids)
