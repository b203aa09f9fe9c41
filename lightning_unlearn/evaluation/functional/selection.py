"""Forget sets by score quantile, correlation tables and steps-to-unlearn (THEORY §6)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics.functional import spearman_corrcoef

__all__ = ["correlation_table", "forget_sets_by_quantile", "steps_to_unlearn"]


def forget_sets_by_quantile(scores: Tensor, n_bins: int, size: int, seed: int = 0) -> list[Tensor]:
    """Draw one forget set from each quantile bin of a per-example score.

    Examples are ordered by score (ties broken by sample id), cut into ``n_bins`` contiguous
    bins of (nearly) equal size, and ``size`` ids are drawn uniformly without replacement from
    each bin. This is how [S25] builds forget sets of increasing privacy loss to measure
    steps-to-unlearn against it.

    Args:
        scores: ``[N]`` scores indexed by sample id (e.g. ``ledger.privacy_loss(alpha)``).
        n_bins: number of quantile bins (>= 1).
        size: forget-set size per bin (>= 1, at most the smallest bin).
        seed: seed of the draws.

    Returns:
        ``n_bins`` sorted LongTensors of sample ids, lowest-score bin first (on the scores'
        device).

    Raises:
        ValueError: bad sizes or non-finite scores.

    Example:
        >>> import torch
        >>> sets = forget_sets_by_quantile(torch.arange(10.0), n_bins=2, size=2, seed=0)
        >>> [bool((s < 5).all()) for s in sets]
        [True, False]
    """
    if scores.dim() != 1:
        raise ValueError(f"Expected `scores` to be 1-D [N], but got shape {tuple(scores.shape)}.")
    if not torch.isfinite(scores).all():
        raise ValueError("Expected finite `scores`, but got NaN or infinite values.")
    if n_bins < 1 or size < 1:
        raise ValueError(f"Expected `n_bins` >= 1 and `size` >= 1, but got {n_bins} and {size}.")
    smallest = scores.numel() // n_bins
    if size > smallest:
        raise ValueError(
            f"Expected `size` <= {smallest} (the smallest of {n_bins} bins of {scores.numel()} "
            f"examples), but got {size}; use fewer bins or smaller forget sets."
        )
    order = torch.sort(scores, stable=True).indices
    generator = torch.Generator().manual_seed(seed)
    out = []
    for bin_ids in torch.tensor_split(order, n_bins):
        pick = torch.randperm(bin_ids.numel(), generator=generator)[:size].to(bin_ids.device)
        out.append(bin_ids[pick].sort().values)
    return out


def correlation_table(
    privacy_losses: Tensor | Mapping[str, Tensor], scores: Mapping[str, Tensor]
) -> dict[str, dict[str, float]]:
    """Spearman rank correlation between privacy losses and every difficulty score (THEORY §6).

    Pairs where either value is NaN (for example an example never recorded) are dropped.
    Ties get average ranks (torchmetrics' ``spearman_corrcoef``, whose denominator carries a
    1e-6 guard against zero variance, so values agree with scipy to about 1e-6).

    Args:
        privacy_losses: ``[N]`` privacy losses (e.g. ``ledger.privacy_loss(alpha)``), or a
            mapping ``name -> [N]`` (e.g. one entry per order or per epsilon).
        scores: mapping ``score name -> [N]`` indexed by the same sample ids.

    Returns:
        ``{privacy name: {score name: rho}}``; a single tensor is named ``"privacy_loss"``.

    Raises:
        ValueError: lengths differ or fewer than 3 pairs remain.

    Example:
        >>> import torch
        >>> p = torch.tensor([0.1, 0.5, 0.2, 0.9])
        >>> table = correlation_table(p, {"el2n": torch.tensor([1.0, 3.0, 2.0, 4.0])})
        >>> round(table["privacy_loss"]["el2n"], 4)
        1.0
    """
    rows = (
        {"privacy_loss": privacy_losses} if isinstance(privacy_losses, Tensor) else privacy_losses
    )
    table: dict[str, dict[str, float]] = {}
    for p_name, p in rows.items():
        table[p_name] = {}
        for s_name, s in scores.items():
            if p.shape != s.shape or p.dim() != 1:
                raise ValueError(
                    f"Expected `{p_name}` and `{s_name}` to be 1-D of equal length, but got "
                    f"shapes {tuple(p.shape)} and {tuple(s.shape)}."
                )
            a, b = p.double(), s.double().to(p.device)
            keep = ~(a.isnan() | b.isnan())
            if int(keep.sum()) < 3:
                raise ValueError(
                    f"Expected at least 3 examples where `{p_name}` and `{s_name}` are both "
                    "defined, but got fewer."
                )
            table[p_name][s_name] = float(spearman_corrcoef(a[keep], b[keep]))
    return table


def steps_to_unlearn(
    trajectory: Tensor | Sequence[float],
    oracle_metric: Tensor | float,
    tau: float,
    *,
    steps: Tensor | Sequence[int] | None = None,
) -> Tensor:
    """First unlearning step at which the forget-set metric is within ``tau`` of the oracle's.

    THEORY §6: with :math:`m_F(k)` the forget-set metric (accuracy or mean loss) after ``k``
    unlearning steps and :math:`m_F^{\\mathrm{oracle}}` that of the model retrained without F,

    .. math::

        k^\\star = \\min \\{ k : |m_F(k) - m_F^{\\mathrm{oracle}}| \\le \\tau \\}.

    Args:
        trajectory: ``[K]`` metric values, or ``[S, K]`` for S seeds; entry ``j`` is measured
            after ``steps[j]`` steps.
        oracle_metric: the oracle's metric, a scalar or ``[S]`` (one per seed).
        tau: tolerance (>= 0).
        steps: ``[K]`` step numbers of the entries (increasing); default ``0, 1, ..., K-1``.

    Returns:
        A long tensor (scalar, or ``[S]``) with the step number; ``-1`` where the metric never
        came within ``tau``. Average over seeds yourself, excluding ``-1``.

    Raises:
        ValueError: bad shapes or ``tau < 0``.

    Example:
        >>> steps_to_unlearn([0.9, 0.7, 0.52, 0.5], oracle_metric=0.5, tau=0.05).item()
        2
        >>> steps_to_unlearn([0.9, 0.7], 0.5, 0.05, steps=[0, 100]).item()
        -1
    """
    values = torch.as_tensor(trajectory, dtype=torch.float64)
    if values.dim() not in (1, 2) or values.shape[-1] == 0:
        raise ValueError(
            f"Expected `trajectory` [K] or [S, K] with K >= 1, but got {tuple(values.shape)}."
        )
    if tau < 0:
        raise ValueError(f"Expected `tau` >= 0, but got {tau}.")
    oracle = torch.as_tensor(oracle_metric, dtype=torch.float64, device=values.device)
    if values.dim() == 2 and oracle.dim() == 1:
        oracle = oracle[:, None]
    if steps is None:
        step_numbers = torch.arange(values.shape[-1], device=values.device)
    else:
        step_numbers = torch.as_tensor(steps, dtype=torch.long, device=values.device)
        if step_numbers.shape != values.shape[-1:]:
            raise ValueError(
                f"Expected `steps` of length {values.shape[-1]}, but got shape "
                f"{tuple(step_numbers.shape)}."
            )
    within = (values - oracle).abs() <= tau
    first = within.to(torch.uint8).argmax(dim=-1)  # first True, or 0 when none
    found = within.any(dim=-1)
    return torch.where(found, step_numbers[first], torch.full_like(first, -1))
