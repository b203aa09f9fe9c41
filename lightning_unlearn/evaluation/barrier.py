"""``LossBarrier``: the loss barrier of THEORY §6 as a torchmetrics ``Metric``."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from lightning_unlearn.evaluation.functional.adapters import AdapterLike
from lightning_unlearn.evaluation.functional.barrier import (
    _loss_barrier_compute,
    _loss_barrier_update,
    interpolation_states,
)

__all__ = ["LossBarrier"]


class LossBarrier(Metric):
    """Loss barrier between two networks, accumulated over batches (THEORY §6).

    .. math::

        B_S = \\max_{\\lambda} L_S((1-\\lambda)\\theta_a + \\lambda\\theta_b)
              - \\big((1-\\lambda) L_S(\\theta_a) + \\lambda L_S(\\theta_b)\\big)

    The interpolated weights (with BatchNorm statistics recomputed on ``bn_dataloader``) are
    built once at construction and kept, ``num_points`` copies of the state; each ``update``
    evaluates the batch at every point. The summed losses reduce by sum across processes, so
    the metric is exact under DDP. Same definition and helpers as
    :func:`~lightning_unlearn.evaluation.functional.loss_barrier`.

    Args:
        model_a: the network at ``lambda = 0``.
        model_b: the network at ``lambda = 1``, same architecture.
        num_points: number of equally spaced ``lambda`` values in [0, 1] (>= 2).
        bn_dataloader: data for recomputing BatchNorm statistics; required with BatchNorm.
        batch_adapter: how to read the batches of ``bn_dataloader`` (see
            :mod:`~lightning_unlearn.evaluation.functional.adapters`).
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> metric = LossBarrier(model, model, num_points=3)
        >>> metric.update(torch.randn(4, 3), torch.tensor([0, 1, 1, 0]))
        >>> abs(metric.compute().item()) < 1e-6
        True
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    loss_sum: Tensor
    total: Tensor

    def __init__(
        self,
        model_a: nn.Module,
        model_b: nn.Module,
        num_points: int = 11,
        *,
        bn_dataloader: Iterable[Any] | None = None,
        batch_adapter: AdapterLike | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        states = interpolation_states(
            model_a, model_b, num_points, bn_dataloader=bn_dataloader, batch_adapter=batch_adapter
        )
        self._states = [state for _, state in states]
        # A plain list keeps the working copy out of the metric's own modules and state_dict.
        self._work: list[nn.Module] = [copy.deepcopy(model_a)]
        self.num_points = num_points
        self.add_state(
            "loss_sum", torch.zeros(num_points, dtype=torch.float64), dist_reduce_fx="sum"
        )
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, inputs: Tensor, targets: Tensor) -> None:
        """Add one batch of inputs and integer targets at every interpolation point."""
        work = self._work[0]
        sums = []
        for state in self._states:
            work.load_state_dict(state)
            sums.append(_loss_barrier_update(work, inputs, targets).double().sum())
        self.loss_sum += torch.stack(sums).to(self.loss_sum.device)
        self.total += targets.numel()

    def curve(self) -> Tensor:
        """Mean loss at each ``lambda`` in ``torch.linspace(0, 1, num_points)`` so far."""
        return self.loss_sum / self.total

    def compute(self) -> Tensor:
        """The barrier (float64 scalar); see :meth:`curve` for the losses along the line."""
        barrier, _ = _loss_barrier_compute(self.curve())
        return barrier
