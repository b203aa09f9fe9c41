"""``PerExampleDifficulty``: dense per-example difficulty tables by sample id (THEORY §6)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_unlearn.evaluation.functional.difficulty import (
    DIFFICULTY_FIELDS,
    _difficulty_compute,
    _difficulty_update,
)

__all__ = ["PerExampleDifficulty"]


class PerExampleDifficulty(Metric):
    """Correctness, true-class confidence and EL2N of every example, indexed by sample id.

    The state is one dense ``[4, num_samples]`` table of sums (count, correct, confidence,
    EL2N) that reduces by sum across processes, so a distributed evaluation pass gives the
    same table as a single process; an id seen twice (DistributedSampler padding) is averaged.
    :class:`~lightning_unlearn.callbacks.DifficultyMonitor` uses the same helpers each epoch.

    Args:
        num_samples: size of the whole data set (ids are in ``[0, num_samples)``).
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = PerExampleDifficulty(num_samples=3)
        >>> metric.update(torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0]),
        ...               torch.tensor([2, 0]))
        >>> out = metric.compute()
        >>> out["correct"].tolist()
        [0.0, nan, 1.0]
    """

    is_differentiable = False
    full_state_update = False
    table: Tensor

    def __init__(self, num_samples: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if num_samples < 1:
            raise ValueError(f"Expected `num_samples` >= 1, but got {num_samples}.")
        self.num_samples = num_samples
        default = torch.zeros(len(DIFFICULTY_FIELDS), num_samples, dtype=torch.float64)
        self.add_state("table", default, dist_reduce_fx="sum")

    def update(self, logits: Tensor, targets: Tensor, sample_ids: Tensor) -> None:
        """Add ``[B, C]`` logits, ``[B]`` targets and ``[B]`` sample ids."""
        self.table += _difficulty_update(logits, targets, sample_ids, self.num_samples).to(
            self.table.device
        )

    def compute(self) -> dict[str, Tensor]:
        """``{"correct", "confidence", "el2n"}``: ``[num_samples]`` means, NaN where unseen."""
        return _difficulty_compute(self.table)
