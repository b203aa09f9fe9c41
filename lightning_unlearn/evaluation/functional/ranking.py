"""Rank correlation with bootstrap confidence intervals (how well a score predicts steps)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from lightning_unlearn.evaluation.functional.steps import MeasurementError

__all__ = ["BootstrapCI", "average_ranks", "bootstrap_indices", "bootstrap_spearman", "spearman"]


def average_ranks(values: Tensor) -> Tensor:
    """Ranks ``1..n`` of a 1-D tensor, ties given the mean of the ranks they span (float64).

    Example:
        >>> import torch
        >>> average_ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist()
        [3.5, 1.0, 3.5, 2.0]
    """
    v = values.double().flatten()
    order = torch.sort(v, stable=True).indices
    sorted_v = v[order]
    # Group equal values; each group's rank is the mean of its positions (1-based).
    new_group = torch.ones_like(sorted_v, dtype=torch.bool)
    new_group[1:] = sorted_v[1:] != sorted_v[:-1]
    group = new_group.cumsum(0) - 1
    positions = torch.arange(1, v.numel() + 1, dtype=torch.float64, device=v.device)
    num_groups = int(group[-1]) + 1 if v.numel() else 0
    sums = torch.zeros(num_groups, dtype=torch.float64, device=v.device).index_add_(
        0, group, positions
    )
    counts = torch.zeros_like(sums).index_add_(0, group, torch.ones_like(positions))
    ranks = torch.empty_like(v)
    ranks[order] = (sums / counts)[group]
    return ranks


def spearman(x: Tensor, y: Tensor) -> float:
    r"""Spearman's :math:`\rho`: the Pearson correlation of the average ranks of ``x`` and ``y``.

    .. math::

        \rho = \frac{\sum_i (R_i - \bar R)(S_i - \bar S)}
                    {\sqrt{\sum_i (R_i - \bar R)^2 \sum_i (S_i - \bar S)^2}}.

    NaN when either variable is constant (no ranking to agree with). Censored steps enter with
    their censoring time: when every censoring time is the same cap and exceeds every observed
    arrival, their tied top rank is exactly what is known about them.

    Args:
        x: ``[n]`` values. y: ``[n]`` values.

    Returns:
        :math:`\rho` as a float.

    Raises:
        MeasurementError: lengths differ or fewer than 3 pairs.

    Example:
        >>> import torch
        >>> spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 30.0, 20.0]))
        0.5
    """
    a, b = x.double().flatten(), y.double().flatten().to(x.device)
    if a.shape != b.shape or a.numel() < 3:
        raise MeasurementError(
            f"Expected two 1-D tensors of equal length >= 3, but got {a.numel()} and {b.numel()}."
        )
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.square().sum() * rb.square().sum()).sqrt()
    if float(denom) == 0.0:
        return float("nan")
    return float((ra * rb).sum() / denom)


class BootstrapCI(NamedTuple):
    """A point estimate with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    num_resamples: int


def bootstrap_indices(n: int, num_resamples: int, seed: int) -> Tensor:
    """``[num_resamples, n]`` indices drawn with replacement from a CPU generator seeded ``seed``.

    Example:
        >>> bootstrap_indices(4, 2, seed=0).shape
        torch.Size([2, 4])
    """
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (num_resamples, n), generator=generator)


def bootstrap_spearman(
    x: Tensor, y: Tensor, *, num_resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> BootstrapCI:
    r"""Spearman's :math:`\rho` with a percentile bootstrap interval over the pairs.

    The pairs are resampled with replacement ``num_resamples`` times
    (:func:`bootstrap_indices`); the interval is the ``(1 - level)/2`` and ``(1 + level)/2``
    quantiles (linear interpolation) of the resampled :math:`\rho` (resamples where a variable
    is constant are dropped). Same seed, same interval.

    Args:
        x: ``[n]`` scores. y: ``[n]`` outcomes (e.g. steps).
        num_resamples: bootstrap resamples (>= 10).
        level: coverage of the interval, in (0, 1).
        seed: seed of the resampling.

    Returns:
        :class:`BootstrapCI`.

    Raises:
        MeasurementError: bad arguments or fewer than 3 pairs.

    Example:
        >>> import torch
        >>> ci = bootstrap_spearman(torch.arange(20.0), torch.arange(20.0), num_resamples=50)
        >>> ci.estimate, ci.low, ci.high
        (1.0, 1.0, 1.0)
    """
    if num_resamples < 10 or not 0.0 < level < 1.0:
        raise MeasurementError(
            f"Expected `num_resamples` >= 10 and `level` in (0, 1), but got {num_resamples} and "
            f"{level}."
        )
    a, b = x.double().flatten().cpu(), y.double().flatten().cpu()
    estimate = spearman(a, b)
    values = []
    for idx in bootstrap_indices(a.numel(), num_resamples, seed):
        rho = spearman(a[idx], b[idx])
        if rho == rho:  # drop NaN (a constant resample)
            values.append(rho)
    if not values:
        return BootstrapCI(estimate, float("nan"), float("nan"), 0)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(torch.tensor(values, dtype=torch.float64), q).tolist()
    return BootstrapCI(estimate, low, high, len(values))
