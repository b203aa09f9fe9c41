"""Like-for-like targets: oracle bands along the oracles' own trajectories, and seed-level CIs.

Unlearning by fine-tuning is *continued training*: after ``k`` steps the unlearned model has seen
the original recipe plus ``k`` more steps. An oracle trained for the original recipe only is
then not the like-for-like target: continued training keeps raising the confidence of easy
examples above what the oracle reaches, and a per-example band taken from the oracle's end state
is left upward by exactly the examples that are easiest to unlearn (issue 14, first tiny run).
The matched target continues the oracles (and the reference models) for the same steps with the
same method and compares step ``k`` with step ``k`` (THEORY §6):

* :func:`trajectory_band`: the band at every step from ``M`` oracle trajectories;
* :func:`first_hold_step_in_band`: the first step from which a trajectory stays inside a band
  that moves with the step (every step checked; gaps refused);
* :func:`grouped_bootstrap_spearman`: Spearman's rho over pooled groups (training seeds) with a
  two-stage bootstrap (seeds, then items within a seed), so the interval covers the seed-to-seed
  variation and not only the sampling of forget sets.

Pure tensor math: no Lightning here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_unlearn.evaluation.functional.ranking import BootstrapCI
from lightning_unlearn.evaluation.functional.steps import (
    Band,
    BandRule,
    MeasurementError,
    StepsResult,
    first_hold_step,
    tolerance_band,
)

__all__ = ["first_hold_step_in_band", "grouped_bootstrap_spearman", "trajectory_band"]


def trajectory_band(
    oracle_trajectories: Tensor,
    *,
    rule: BandRule = "zscore",
    z: float = 2.0,
    mask: Tensor | None = None,
    min_oracles: int = 3,
) -> Band:
    r"""The tolerance band at every step from ``M`` oracle trajectories.

    ``oracle_trajectories[m, ..., k]`` is oracle :math:`m`'s metric after the original recipe
    and ``k`` more steps of the unlearning method (on the retain set, which is the oracle's
    own training set). The band at step :math:`k` is :func:`tolerance_band` of the values at
    that step:

    .. math::

        [\,\bar v_k - z\, s_k,\ \bar v_k + z\, s_k\,]
        \quad\text{with}\quad \bar v_k, s_k = \text{mean, sd}_m\ v_{m,k}.

    Args:
        oracle_trajectories: ``[M, ..., K]`` metric of each oracle at ``K`` consecutive steps.
        rule: ``"zscore"`` or ``"range"`` (see :func:`tolerance_band`).
        z: half-width in standard deviations for ``"zscore"``.
        mask: optional ``[M, ...]`` booleans (which oracles count for which entry, e.g. the OUT
            reference models of each example); the same at every step.
        min_oracles: fewest oracles per entry (>= 2).

    Returns:
        :class:`~lightning_unlearn.evaluation.functional.Band` of shape ``[..., K]``.

    Raises:
        MeasurementError: as :func:`tolerance_band`.

    Example:
        >>> import torch
        >>> traj = torch.tensor([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]])  # 3 oracles, 2 steps
        >>> band = trajectory_band(traj, rule="range")
        >>> band.lower.tolist(), band.upper.tolist(), band.center.tolist()
        ([0.0, 1.0], [2.0, 3.0], [1.0, 2.0])
    """
    v = torch.as_tensor(oracle_trajectories, dtype=torch.float64)
    if v.dim() < 2:
        raise MeasurementError(
            f"Expected `oracle_trajectories` [M, ..., K], but got shape {tuple(v.shape)}."
        )
    m = None
    if mask is not None:
        m = torch.as_tensor(mask).to(v.device)
        if m.shape != v.shape[:-1]:
            raise MeasurementError(
                f"Expected `mask` of shape {tuple(v.shape[:-1])} (the trajectories without "
                f"their step dimension), but got {tuple(m.shape)}."
            )
        m = m.unsqueeze(-1).expand(v.shape)
        v = torch.where(m, v, torch.zeros((), dtype=v.dtype, device=v.device))
    return tolerance_band(v, rule=rule, z=z, mask=m, min_oracles=min_oracles)


def first_hold_step_in_band(
    values: Tensor,
    lower: Tensor,
    upper: Tensor,
    *,
    hold: int = 0,
    steps: Tensor | None = None,
) -> StepsResult:
    r"""First step from which the metric stays inside a band that moves with the step.

    As :func:`~lightning_unlearn.evaluation.functional.first_hold_step`, with the band of
    step :math:`j` compared to the metric of step :math:`j` (matched compute, THEORY §6):

    .. math::

        k^\star = \min \{ k : l_j \le m(j) \le u_j \ \text{for all}\ j = k, \dots, k + h \}.

    Censoring, the hold window and the refusal of gaps are those of ``first_hold_step`` (this
    function applies it to the in-band indicator).

    Args:
        values: ``[..., K]`` the metric at ``K`` consecutive steps.
        lower: ``[..., K]`` band lower edges per step (broadcastable to ``values``).
        upper: ``[..., K]`` band upper edges per step.
        hold: extra steps the metric must stay inside after arriving (>= 0).
        steps: ``[K]`` consecutive step numbers (default ``0 .. K-1``).

    Returns:
        :class:`~lightning_unlearn.evaluation.functional.StepsResult` of shape
        ``values.shape[:-1]``.

    Raises:
        MeasurementError: shapes do not broadcast, gaps in ``steps``, bad ``hold``.

    Example:
        >>> import torch
        >>> m = torch.tensor([3.0, 2.0, 2.0, 2.0])
        >>> lo, hi = torch.tensor([0.0, 0.0, 2.5, 1.5]), torch.tensor([1.0, 2.5, 3.0, 2.5])
        >>> first_hold_step_in_band(m, lo, hi)  # step 1 is inside its own band
        StepsResult(steps=tensor(1), arrived=tensor(True))
        >>> first_hold_step_in_band(m, lo, hi, hold=1)  # step 2 leaves the band again
        StepsResult(steps=tensor(2), arrived=tensor(False))
    """
    v = torch.as_tensor(values, dtype=torch.float64)
    lo = torch.as_tensor(lower, dtype=torch.float64, device=v.device)
    hi = torch.as_tensor(upper, dtype=torch.float64, device=v.device)
    try:
        shape = torch.broadcast_shapes(v.shape, lo.shape, hi.shape)
    except RuntimeError as err:
        raise MeasurementError(
            f"Expected `values` {tuple(v.shape)}, `lower` {tuple(lo.shape)} and `upper` "
            f"{tuple(hi.shape)} to broadcast (the band per step in the last dimension)."
        ) from err
    if shape != v.shape:
        raise MeasurementError(
            f"Expected the bands to broadcast to `values` {tuple(v.shape)}, but they give "
            f"{tuple(shape)}."
        )
    inside = ((v >= lo) & (v <= hi)).double()  # NaN compares False: outside every band
    return first_hold_step(inside, 0.5, 1.5, hold=hold, steps=steps)


def _row_average_ranks(keys: Tensor) -> Tensor:
    """Average ranks ``1..n`` within every row of ``keys`` ``[R, n]`` (ties share their mean)."""
    ordered = keys.sort(dim=1).values
    left = torch.searchsorted(ordered, keys, side="left")
    right = torch.searchsorted(ordered, keys, side="right")
    return (left + right + 1).double() / 2


def _dense(values: Tensor) -> Tensor:
    return torch.unique(values, return_inverse=True)[1].double()


def _pooled_rows(x: Tensor, y: Tensor, groups: Tensor, sizes: Tensor) -> Tensor:
    """Spearman's rho of the pooled within-group scaled ranks, for every row ``[R, n]``.

    ``x``, ``y``: dense integer ranks (float) of the items; ``groups``: ``[R, n]`` labels
    ``0 .. G-1``; ``sizes``: ``[R, n]`` the size of each item's group in its row.
    """
    n = x.shape[1]
    scaled = []
    for v in (x, y):
        keys = groups.double() * (n + 1) + v  # group-major: smaller groups precede
        ranks = _row_average_ranks(keys)
        before = torch.searchsorted(keys.sort(dim=1).values, groups.double() * (n + 1))
        scaled.append((ranks - before) / (sizes + 1))
    rx, ry = (_row_average_ranks(v) for v in scaled)
    rx = rx - rx.mean(dim=1, keepdim=True)
    ry = ry - ry.mean(dim=1, keepdim=True)
    den = (rx.square().sum(dim=1) * ry.square().sum(dim=1)).sqrt()
    rho = (rx * ry).sum(dim=1) / den
    return torch.where(den > 0, rho, torch.full_like(rho, float("nan")))


def _resamples(
    members: list[Tensor], num_resamples: int, generator: torch.Generator
) -> list[tuple[Tensor, Tensor]]:
    """Two-stage resamples as ``(indices [R', n'], new group labels [R', n'])`` batches.

    Groups of one size (the usual case: every seed has as many sets) are drawn in one batch;
    otherwise row by row, rows of equal length batched together.
    """
    sizes = {m.numel() for m in members}
    n_groups = len(members)
    if len(sizes) == 1:
        size = sizes.pop()
        table = torch.stack(members)  # [G, s]
        picks = torch.randint(0, n_groups, (num_resamples, n_groups), generator=generator)
        within = torch.randint(0, size, (num_resamples, n_groups, size), generator=generator)
        sel = table[picks[..., None], within].reshape(num_resamples, -1)
        grp = torch.arange(n_groups).repeat_interleave(size).expand(num_resamples, -1)
        return [(sel, grp)]
    by_length: dict[int, tuple[list[Tensor], list[Tensor]]] = {}
    for _ in range(num_resamples):
        picks = torch.randint(0, n_groups, (n_groups,), generator=generator)
        idx, lab = [], []
        for new_label, p in enumerate(picks.tolist()):
            pool = members[p]
            idx.append(pool[torch.randint(0, pool.numel(), (pool.numel(),), generator=generator)])
            lab.append(torch.full((pool.numel(),), new_label, dtype=torch.long))
        row, row_groups = torch.cat(idx), torch.cat(lab)
        entry = by_length.setdefault(row.numel(), ([], []))
        entry[0].append(row)
        entry[1].append(row_groups)
    return [(torch.stack(a), torch.stack(b)) for a, b in by_length.values()]


def grouped_bootstrap_spearman(
    x: Tensor,
    y: Tensor,
    groups: Tensor,
    *,
    num_resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    r"""Spearman's rho pooled over groups (training seeds), with a two-stage bootstrap.

    Scores of different training runs live on different scales (a P of one seed is not
    comparable with another's), so both variables are first ranked *within* their group and
    scaled to :math:`r/(n_g+1)`; the estimate is Spearman's :math:`\rho` of the pooled scaled
    ranks. Each bootstrap resample draws the groups with replacement, then the items of each
    drawn group with replacement (a resampled group keeps its own label, so two copies of one
    seed are ranked separately), and recomputes :math:`\rho`. The interval is the percentile
    interval; resamples where a variable is constant are dropped. With one group this is
    :func:`~lightning_unlearn.evaluation.functional.bootstrap_spearman` on within-group ranks.

    Args:
        x: ``[n]`` scores. y: ``[n]`` outcomes (e.g. steps). groups: ``[n]`` integer labels.
        num_resamples: bootstrap resamples (>= 10).
        level: coverage of the interval, in (0, 1).
        seed: seed of the resampling (same seed, same interval).

    Returns:
        :class:`~lightning_unlearn.evaluation.functional.BootstrapCI`.

    Raises:
        MeasurementError: shapes differ, bad arguments or fewer than 3 pairs.

    Example:
        >>> import torch
        >>> x = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
        >>> g = torch.tensor([0, 0, 0, 1, 1, 1])
        >>> ci = grouped_bootstrap_spearman(x, -x, g, num_resamples=20)
        >>> ci.estimate
        -1.0
    """
    a = torch.as_tensor(x, dtype=torch.float64).flatten().cpu()
    b = torch.as_tensor(y, dtype=torch.float64).flatten().cpu()
    g = torch.as_tensor(groups).flatten().cpu().long()
    if not (a.shape == b.shape == g.shape):
        raise MeasurementError(
            f"Expected `x`, `y` and `groups` of one length, but got {a.numel()}, {b.numel()} "
            f"and {g.numel()}."
        )
    if a.numel() < 3:
        raise MeasurementError(f"Expected at least 3 pairs, but got {a.numel()}.")
    if num_resamples < 10 or not 0.0 < level < 1.0:
        raise MeasurementError(
            f"Expected `num_resamples` >= 10 and `level` in (0, 1), but got {num_resamples} and "
            f"{level}."
        )
    labels, g = torch.unique(g, return_inverse=True)
    dx, dy = _dense(a), _dense(b)
    counts = torch.bincount(g, minlength=len(labels))
    estimate = float(_pooled_rows(dx[None], dy[None], g[None], counts[g][None].double())[0])
    members = [torch.nonzero(g == lab).flatten() for lab in range(len(labels))]
    generator = torch.Generator().manual_seed(seed)
    values: list[float] = []
    for sel, grp in _resamples(members, num_resamples, generator):
        counts = torch.zeros(grp.shape[0], len(members), dtype=torch.float64)
        counts.scatter_add_(1, grp, torch.ones_like(grp, dtype=torch.float64))
        sizes = counts.gather(1, grp)
        rho = _pooled_rows(dx[sel], dy[sel], grp, sizes)
        values += [v for v in rho.tolist() if v == v]
    if not values:
        return BootstrapCI(estimate, float("nan"), float("nan"), 0)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    low, high = torch.quantile(torch.tensor(values, dtype=torch.float64), q).tolist()
    return BootstrapCI(estimate, low, high, len(values))
