"""How a batch loss weights its examples, and how the monitor undoes it (THEORY §1).

THEORY §1 defines ``g_x`` as the gradient of example ``x``'s *own* loss. A training loss that
weights its examples as

.. math::

    L = \\sum_{i \\in B} w_i \\, \\ell_i

gives the norm hooks (run with ``loss_reduction="sum"``) the norms ``w_i ||g_i||``, so

.. math::

    \\lVert g_i \\rVert = \\frac{\\lVert \\nabla L |_i \\rVert}{w_i}.

``loss_reduction="mean"`` is ``w_i = 1/B``, ``"sum"`` is ``w_i = 1``; a callable gives any other
weighting, for example a loss averaged over the tokens of the whole batch
(:func:`token_mean_weights`: ``w_i = n_i / sum_j n_j`` for ``n_i`` tokens of example ``i``).
An example with ``w_i = 0`` took no part in the loss: its recorded norm is 0.

The step's actual dependence on ``x`` is then ``w_x ||g_x||`` rather than ``||g_x|| / B``; the
monitor records ``||g_x||`` (THEORY §1's quantity) and forms the ratio of THEORY §1 with the
batch size, as it does for a mean loss.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

__all__ = [
    "LossWeights",
    "check_loss_weights",
    "describe",
    "engine_reduction",
    "loss_weights_of",
    "token_mean_weights",
    "undo_loss_weights",
]

LossWeights = Literal["mean", "sum"] | Callable[[Any], Tensor]
"""``"mean"``, ``"sum"`` or ``batch -> Tensor[B]`` of per-example loss weights ``w_i``."""


def token_mean_weights(token_counts: Tensor) -> Tensor:
    """Loss weights ``w_i = n_i / sum_j n_j`` of a loss averaged over every token of the batch.

    A causal-LM loss such as ``cross_entropy(logits.flatten(0, 1), labels.flatten(),
    ignore_index=-100)`` is the mean over all non-ignored tokens of the batch, so example ``i``
    with ``n_i`` tokens enters it as ``(n_i / sum_j n_j) * (its own token mean)``.

    Args:
        token_counts: ``[B]`` number of tokens of each example that enter the loss (for HF
            causal LMs, which shift the labels inside the model:
            ``(labels[:, 1:] != -100).sum(1)``).

    Returns:
        ``[B]`` float weights summing to 1 (all zero if no example has a token).

    Example:
        >>> token_mean_weights(torch.tensor([3, 1, 0]))
        tensor([0.7500, 0.2500, 0.0000])
    """
    counts = token_counts if token_counts.is_floating_point() else token_counts.float()
    return counts / counts.sum().clamp_min(1)


def loss_weights_of(reduction: LossWeights, batch: Any) -> Tensor | None:
    """The per-example weights of a callable ``reduction`` for ``batch`` (None otherwise)."""
    if not callable(reduction):
        return None
    weights = reduction(batch)
    if not isinstance(weights, Tensor) or weights.dim() != 1:
        raise ValueError(
            "Expected `loss_reduction(batch)` to return a 1-D tensor of per-example loss "
            f"weights, but got {type(weights).__name__}"
            f"{'' if not isinstance(weights, Tensor) else f' of shape {tuple(weights.shape)}'}."
        )
    return weights


def check_loss_weights(weights: Tensor | None, batch_size: int) -> None:
    """Shape and sign of the weights (first batch: reads the values, one host sync).

    Raises:
        ValueError: not one non-negative finite weight per example.
    """
    if weights is None:
        return
    if weights.shape[0] != batch_size:
        raise ValueError(
            f"Expected one loss weight per example, but `loss_reduction(batch)` returned "
            f"{weights.shape[0]} weights for a batch of {batch_size}."
        )
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(
            "Expected finite non-negative loss weights from `loss_reduction(batch)`, but got "
            f"{weights[:8].tolist()}..."
        )


def undo_loss_weights(norms: Tensor, weights: Tensor | None) -> Tensor:
    """``||g_i|| = norms_i / w_i`` for norms read with ``loss_reduction="sum"`` (0 where
    ``w_i = 0``); ``norms`` unchanged without weights. No host synchronisation.

    Example:
        >>> undo_loss_weights(torch.tensor([1.5, 0.5, 0.0]), torch.tensor([0.75, 0.25, 0.0]))
        tensor([2., 2., 0.])
    """
    if weights is None:
        return norms
    w = weights.to(device=norms.device, dtype=norms.dtype)
    zero = w == 0
    return torch.where(zero, torch.zeros_like(norms), norms / torch.where(zero, 1.0, w))


def engine_reduction(reduction: LossWeights) -> Literal["mean", "sum"]:
    """The ``loss_reduction`` the norm hooks are attached with: a weighted loss is read as a
    sum and divided by its weights afterwards."""
    return "sum" if callable(reduction) else reduction


def describe(reduction: LossWeights) -> str:
    """A stable string of ``reduction`` for the ledger's metadata (resume checks)."""
    if callable(reduction):
        return f"weights:{getattr(reduction, '__qualname__', type(reduction).__name__)}"
    return reduction
