"""Steps-to-unlearn that does not depend on luck: oracle bands, every-step checks, censoring.

THEORY §6 defines steps-to-unlearn as the first step at which the forget-set metric of the
unlearned model is within a tolerance of the oracle's. Measured with one oracle, a fixed
tolerance and a check every ten steps, the count moves with the oracle's seed and with the
check interval (issue 14). The functions here remove those three sources of luck:

* :func:`tolerance_band`: the target is a band from the spread of ``M >= 3`` oracles (or, for
  one example, of the reference models that never trained on it), not a fixed ``tau``;
* :func:`first_hold_step`: the metric is read at *every* step and the answer is the first step
  from which it stays in the band for a hold window; a trajectory with gaps is refused, so the
  result cannot depend on a check interval;
* runs that never arrive are right-censored (``arrived = False``) and summarised with
  :func:`~lightning_unlearn.evaluation.functional.survival.kaplan_meier`, never as the cap;
* :func:`binned_kl`: a distributional distance to the oracles (KLoM, Georgiev et al. 2024) as
  a second outcome.

Pure tensor math: no Lightning here.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from lightning_unlearn.errors import LightningUnlearnError
from lightning_unlearn.evaluation.functional.confidence import masked_moments

__all__ = [
    "Band",
    "BandRule",
    "MeasurementError",
    "StepsResult",
    "binned_kl",
    "first_hold_step",
    "tolerance_band",
]

BandRule = Literal["zscore", "range"]


class MeasurementError(LightningUnlearnError, ValueError):
    """A steps-to-unlearn measurement was asked for in a form that would make it depend on luck
    (too few oracles, a trajectory with gaps between checks) or is malformed."""


class Band(NamedTuple):
    """A tolerance band ``[lower, upper]`` around ``center`` (tensors of the same shape)."""

    lower: Tensor
    upper: Tensor
    center: Tensor


class StepsResult(NamedTuple):
    """Steps-to-unlearn with censoring.

    ``steps`` is the arrival step where ``arrived`` is true; where it is false the run never
    arrived within what was observed and ``steps`` is the right-censoring time ``c``: the
    arrival, if any, is later than ``c`` (THEORY §6).
    """

    steps: Tensor
    arrived: Tensor


def tolerance_band(
    oracle_values: Tensor,
    *,
    rule: BandRule = "zscore",
    z: float = 2.0,
    mask: Tensor | None = None,
    min_oracles: int = 3,
) -> Band:
    r"""The band the unlearned model's metric must reach, from the oracles' own spread.

    ``oracle_values[m, ...]`` is oracle :math:`m`'s metric (for a forget set: its mean loss or
    mean confidence on the set; for one example: that example's value under a reference model
    that never trained on it, selected by ``mask``). With :math:`\bar v`, :math:`s` the mean and
    sample standard deviation over the :math:`M` oracles:

    .. math::

        \text{zscore:}\ [\bar v - z s,\ \bar v + z s] \qquad
        \text{range:}\ [\min_m v_m,\ \max_m v_m].

    "zscore" with ``z = 2`` covers about 95 % of oracle runs if they are roughly Gaussian;
    "range" is distribution-free but narrows with fewer oracles (the range of 3 normal draws is
    about 1.7 standard deviations on average). The centre is :math:`\bar v` for both.

    Args:
        oracle_values: ``[M, ...]`` the metric of each oracle (or reference model).
        rule: ``"zscore"`` or ``"range"``.
        z: half-width in standard deviations for ``"zscore"`` (> 0).
        mask: optional ``[M, ...]`` booleans: which rows count for which entry (for per-example
            OUT distributions of reference models: ``~in_mask``).
        min_oracles: fewest oracles accepted per entry (>= 2; the default 3 is issue 14's).

    Returns:
        :class:`Band` of shape ``oracle_values.shape[1:]`` (float64).

    Raises:
        MeasurementError: fewer than ``min_oracles`` oracles for some entry, non-finite values,
            or a bad ``rule`` / ``z``.

    Example:
        >>> import torch
        >>> oracles = torch.tensor([0.4, 0.5, 0.6], dtype=torch.float64)
        >>> band = tolerance_band(oracles, rule="range")
        >>> band.lower.item(), band.upper.item(), round(band.center.item(), 6)
        (0.4, 0.6, 0.5)
        >>> band = tolerance_band(oracles, z=2.0)
        >>> round(band.lower.item(), 6), round(band.upper.item(), 6)
        (0.3, 0.7)
    """
    if rule not in ("zscore", "range"):
        raise MeasurementError(f"Expected `rule` 'zscore' or 'range', but got {rule!r}.")
    if not z > 0:
        raise MeasurementError(f"Expected `z` > 0, but got {z!r}.")
    if min_oracles < 2:
        raise MeasurementError(f"Expected `min_oracles` >= 2, but got {min_oracles!r}.")
    v = oracle_values.double()
    if v.dim() == 0:
        raise MeasurementError("Expected `oracle_values` [M, ...], but got a scalar.")
    m = torch.ones_like(v, dtype=torch.bool) if mask is None else mask.to(v.device)
    if m.shape != v.shape or m.dtype != torch.bool:
        raise MeasurementError(
            f"Expected a boolean `mask` of shape {tuple(v.shape)}, but got "
            f"{tuple(m.shape)} ({m.dtype})."
        )
    if not torch.isfinite(v[m]).all():
        raise MeasurementError("Expected finite oracle metrics, but got NaN or infinite values.")
    flat_v, flat_m = v.reshape(v.shape[0], -1), m.reshape(m.shape[0], -1)
    count = flat_m.sum(dim=0)
    if int(count.min()) < min_oracles:
        raise MeasurementError(
            f"Expected at least {min_oracles} oracles per entry, but some entry has "
            f"{int(count.min())}; train more oracles (or more reference models) so the band "
            "reflects the oracles' spread rather than one run's luck."
        )
    moments = masked_moments(flat_v, flat_m)
    center = moments.mean
    if rule == "zscore":
        lower, upper = center - z * moments.std, center + z * moments.std
    else:
        lower = torch.where(flat_m, flat_v, float("inf")).amin(dim=0)
        upper = torch.where(flat_m, flat_v, float("-inf")).amax(dim=0)
    shape = v.shape[1:]
    return Band(lower.reshape(shape), upper.reshape(shape), center.reshape(shape))


def _check_steps(steps: Tensor | None, length: int, device: torch.device) -> Tensor:
    if steps is None:
        return torch.arange(length, device=device)
    s = torch.as_tensor(steps, dtype=torch.long, device=device)
    if s.shape != (length,):
        raise MeasurementError(f"Expected `steps` of shape ({length},), but got {tuple(s.shape)}.")
    if length > 1 and not bool((s[1:] - s[:-1] == 1).all()):
        gaps = sorted({int(d) for d in (s[1:] - s[:-1]).tolist() if d != 1})
        raise MeasurementError(
            f"Expected the metric at every step (consecutive step numbers), but got gaps of "
            f"{gaps}; with a check interval the first step inside the band is only known to "
            "an interval, and the answer moves with it. Record the metric at every step."
        )
    return s


def first_hold_step(
    values: Tensor,
    lower: Tensor | float,
    upper: Tensor | float,
    *,
    hold: int = 0,
    steps: Tensor | None = None,
) -> StepsResult:
    r"""First step from which the metric stays inside its band for a hold window.

    With :math:`m(k)` the metric after :math:`k` unlearning steps and the band
    :math:`[l, u]` (THEORY §6; :func:`tolerance_band`):

    .. math::

        k^\star = \min \{ k : l \le m(j) \le u \ \text{for all}\ j = k, \dots, k + h \}.

    ``hold = h = 0`` is the first arrival. An arrival counts only if its whole window was
    observed; if no step qualifies, the run is right-censored at :math:`c = k_{last} - h`
    (every start up to :math:`c` was checked and failed), with ``arrived = False``. NaN values
    are outside every band.

    Args:
        values: ``[..., K]`` the metric at ``K`` consecutive steps (last dimension).
        lower: band lower bounds, broadcastable to ``values.shape[:-1]``.
        upper: band upper bounds, same.
        hold: extra steps the metric must stay inside after arriving (>= 0).
        steps: ``[K]`` step numbers of the entries; must be consecutive integers (default
            ``0 .. K-1``).

    Returns:
        :class:`StepsResult` of shape ``values.shape[:-1]`` (long steps, bool arrived).

    Raises:
        MeasurementError: ``steps`` has gaps (a check interval > 1), ``hold < 0``, or
            ``values`` is empty.

    Example:
        >>> import torch
        >>> m = torch.tensor([0.9, 0.5, 0.8, 0.5, 0.5, 0.5])
        >>> first_hold_step(m, 0.4, 0.6, hold=0)
        StepsResult(steps=tensor(1), arrived=tensor(True))
        >>> first_hold_step(m, 0.4, 0.6, hold=2)
        StepsResult(steps=tensor(3), arrived=tensor(True))
        >>> first_hold_step(m[:4], 0.4, 0.6, hold=2)  # censored: no window fits
        StepsResult(steps=tensor(1), arrived=tensor(False))
    """
    if not isinstance(hold, int) or hold < 0:
        raise MeasurementError(f"Expected `hold` to be an int >= 0, but got {hold!r}.")
    v = torch.as_tensor(values, dtype=torch.float64)
    if v.dim() == 0 or v.shape[-1] == 0:
        raise MeasurementError(f"Expected `values` [..., K] with K >= 1, got {tuple(v.shape)}.")
    k = v.shape[-1]
    step_numbers = _check_steps(steps, k, v.device)
    lo = torch.as_tensor(lower, dtype=torch.float64, device=v.device)[..., None]
    hi = torch.as_tensor(upper, dtype=torch.float64, device=v.device)[..., None]
    inside = ((v >= lo) & (v <= hi)).long()
    width = hold + 1
    censored_at = step_numbers[-1] - hold
    if width > k:
        shape = inside.shape[:-1]
        steps_out = torch.full(shape, int(censored_at), dtype=torch.long, device=v.device)
        return StepsResult(steps_out, torch.zeros(shape, dtype=torch.bool, device=v.device))
    # windows[..., j] = number of in-band steps among j .. j + hold (a cumulative-sum window).
    csum = torch.nn.functional.pad(inside.cumsum(dim=-1), (1, 0))
    windows = csum[..., width:] - csum[..., :-width]
    ok = windows == width
    arrived = ok.any(dim=-1)
    first = ok.to(torch.uint8).argmax(dim=-1)
    steps_out = torch.where(arrived, step_numbers[first], censored_at)
    return StepsResult(steps_out, arrived)


def binned_kl(
    samples_p: Tensor,
    samples_q: Tensor,
    *,
    num_bins: int = 20,
    smoothing: float = 1e-3,
) -> Tensor:
    r"""Per-example KL divergence between two sets of runs, over binned values (KLoM).

    KLoM (Georgiev et al. 2024) compares, for each example, the distribution of a margin over
    unlearned models (``samples_p``) with its distribution over oracles (``samples_q``). Per
    example the common range of both samples is cut into ``num_bins`` equal bins; with counts
    :math:`c^P_b, c^Q_b`, smoothed probabilities
    :math:`\hat p_b = (c^P_b + \lambda) / \sum_b (c^P_b + \lambda)` (same for :math:`q`),

    .. math::

        \mathrm{KL}(\hat p \,\|\, \hat q) = \sum_b \hat p_b \log(\hat p_b / \hat q_b).

    The value is 0 when both samples fill the bins alike and grows as they separate; it is
    meaningful only with many runs on each side (KLoM uses about 100), and is an estimate whose
    bias grows with ``num_bins`` over the number of runs. An example whose values are all
    equal gets 0.

    Args:
        samples_p: ``[R_p, N]`` values of ``R_p`` runs (e.g. unlearned models) per example.
        samples_q: ``[R_q, N]`` values of ``R_q`` runs (e.g. oracles) per example.
        num_bins: bins per example (>= 2).
        smoothing: additive count :math:`\lambda > 0` per bin (keeps the ratio finite).

    Returns:
        ``[N]`` float64 divergences (nats).

    Raises:
        MeasurementError: shapes disagree, bad ``num_bins`` / ``smoothing``, non-finite values.

    Example:
        >>> import torch
        >>> p = torch.tensor([[0.0], [1.0]])
        >>> binned_kl(p, p, num_bins=4).tolist()
        [0.0]
    """
    p, q = samples_p.double(), samples_q.double().to(samples_p.device)
    if p.dim() != 2 or q.dim() != 2 or p.shape[1] != q.shape[1]:
        raise MeasurementError(
            f"Expected `samples_p` [R_p, N] and `samples_q` [R_q, N], but got "
            f"{tuple(p.shape)} and {tuple(q.shape)}."
        )
    if num_bins < 2 or not smoothing > 0:
        raise MeasurementError(
            f"Expected `num_bins` >= 2 and `smoothing` > 0, but got {num_bins} and {smoothing}."
        )
    if not (torch.isfinite(p).all() and torch.isfinite(q).all()):
        raise MeasurementError("Expected finite samples, but got NaN or infinite values.")
    both = torch.cat([p, q])
    lo, hi = both.amin(dim=0), both.amax(dim=0)
    width = torch.where(hi > lo, (hi - lo) / num_bins, 1.0)

    def probs(x: Tensor) -> Tensor:
        idx = ((x - lo) / width).floor().long().clamp(0, num_bins - 1)
        counts = torch.zeros(num_bins, x.shape[1], dtype=torch.float64, device=x.device)
        counts.scatter_add_(0, idx, torch.ones_like(x))
        counts = counts + smoothing
        return counts / counts.sum(dim=0, keepdim=True)

    pp, qq = probs(p), probs(q)
    kl = (pp * (pp.log() - qq.log())).sum(dim=0)
    return torch.where(hi > lo, kl, torch.zeros_like(kl))
