"""Per-example scores against the reference models' OUT distributions, and their null law.

The calibrated stop rule of issue 15 (THEORY §6; U-LiRA, Hayes et al. 2024; LiRA's offline
test, Carlini et al. 2022) asks, for every forget example ``i``, whether the unlearned model's
logit-scaled confidence :math:`\\phi_i` (or loss) still looks like that of a model *trained on*
``i``, measured against ``i``'s own OUT distribution: the reference models that never saw it.
The functions here are the tensor math of that rule; pure torch, no Lightning:

* :func:`out_gaussian`: per-example OUT mean and a variance shrunk towards the pooled one (a
  few OUT models give a noisy, sometimes zero, spread);
* :func:`out_zscores`: the one-sided predictive z-score of a tested model's value;
* :func:`leave_one_out_zscores`: the same score for every reference model on the examples it
  did *not* train on, against the other OUT models: draws from the score's null law;
* :func:`fit_heldout_map`: how a tested model's values on data nobody trained on relate to the
  reference models' (a model trained on all of ``D`` is, on unseen data, more confident than
  models trained on halves, and more so on easy examples than on hard ones): an affine map in
  value space and the spread around it, fitted on a held-out set, through which the scores
  are read;
* :func:`flagged_tolerance`: from the reference models' null rates, the number of flagged
  examples a never-trained-on set of ``E`` examples shows with probability ``1 - level``;
* :func:`mean_score_tolerance`: the ``1 - level`` quantile of the mean score of ``E``
  never-trained-on examples, from the same null draws;
* :func:`detection_power`: how often the rule would flag a given set if the model still
  treated it as trained on, from the reference models' scores on their own members.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_unlearn.evaluation.functional.confidence import masked_moments

__all__ = [
    "IDENTITY_MAP",
    "HeldoutMap",
    "OutGaussian",
    "binomial_mixture_cdf",
    "detection_power",
    "fit_heldout_map",
    "flagged_tolerance",
    "leave_one_out_zscores",
    "mean_score_tolerance",
    "member_rates",
    "null_and_member_zscores",
    "out_gaussian",
    "out_zscores",
]


_MAD_TO_SD = NormalDist().inv_cdf(0.75)  # a normal law's MAD / sd
_POWER_CHUNK = 1 << 22  # Monte Carlo scores drawn at once by detection_power (32 MiB)


class OutGaussian(NamedTuple):
    """Per-example OUT law: ``mean``, shrunk ``std`` and number ``n`` of OUT models (``[N]``)."""

    mean: Tensor
    std: Tensor
    n: Tensor


class HeldoutMap(NamedTuple):
    """A tested model's values on unseen data as ``intercept + slope * mean`` of the reference
    models' OUT law, with ``scale`` times the law's predictive spread around it
    (:func:`fit_heldout_map`)."""

    intercept: float
    slope: float
    scale: float

    def as_dict(self) -> dict[str, float]:
        """``{"intercept", "slope", "scale"}`` (for reports and logs)."""
        return {"intercept": self.intercept, "slope": self.slope, "scale": self.scale}


IDENTITY_MAP = HeldoutMap(0.0, 1.0, 1.0)
"""The map of a tested model exactly like the reference models (no held-out set)."""


def out_gaussian(
    values: Tensor,
    out_mask: Tensor,
    *,
    prior_weight: float = 2.0,
    pooled_var: float | None = None,
) -> OutGaussian:
    r"""Per-example Gaussian fit of the OUT values with a variance shrunk to the pooled one.

    With :math:`\mu_i, s_i^2` the mean and sample variance of example :math:`i` over its
    :math:`n_i` OUT models (:func:`~lightning_unlearn.evaluation.functional.masked_moments`),
    :math:`s_0^2` the pooled variance (the mean of the per-example variances, LiRA's "fixed
    variance") and :math:`\nu_0` = ``prior_weight`` pseudo-models:

    .. math::

        \tilde s_i^2 = \frac{\nu_0 s_0^2 + (n_i - 1) s_i^2}{\nu_0 + n_i - 1}.

    This is the posterior-mean variance of a normal-scaled-inverse-chi-square prior centred on
    :math:`s_0^2`; ``prior_weight = 0`` is LiRA's per-example fit, a large one its fixed
    variance. An example with one OUT model gets :math:`s_0^2`.

    Args:
        values: ``[K, N]`` the reference models' values (``phi`` or loss).
        out_mask: ``[K, N]`` booleans: model ``k`` did not train on example ``i``.
        prior_weight: :math:`\nu_0 \ge 0`.
        pooled_var: :math:`s_0^2` (default: the NaN-mean of the per-example variances).

    Returns:
        :class:`OutGaussian` (float64; ``mean`` NaN where ``n = 0``).

    Raises:
        ValueError: ``prior_weight < 0``, or no example has two OUT models to pool from.

    Example:
        >>> import torch
        >>> v = torch.tensor([[0.0, 1.0], [2.0, 1.0], [9.0, 9.0]])
        >>> m = torch.tensor([[True, True], [True, True], [False, False]])
        >>> g = out_gaussian(v, m, prior_weight=0.0)
        >>> g.mean.tolist(), [round(s, 4) for s in g.std.tolist()], g.n.tolist()
        ([1.0, 1.0], [1.4142, 0.0], [2, 2])
        >>> [round(s, 4) for s in out_gaussian(v, m, prior_weight=1.0).std.tolist()]
        [1.2247, 0.7071]
    """
    if not prior_weight >= 0:
        raise ValueError(f"Expected `prior_weight` >= 0, but got {prior_weight!r}.")
    moments = masked_moments(values, out_mask)
    var = moments.std.square()
    if pooled_var is None:
        if not bool((~var.isnan()).any()):
            raise ValueError(
                "Expected some example with at least two OUT models to pool a variance from, "
                "but none has; train more reference models."
            )
        pooled_var = float(var.nanmean())
    dof = (moments.n.double() - 1.0).clamp_min(0.0)
    own = torch.nan_to_num(var, nan=0.0)
    denom = prior_weight + dof
    shrunk = torch.where(denom > 0, (prior_weight * pooled_var + dof * own) / denom, pooled_var)
    return OutGaussian(moments.mean, shrunk.sqrt(), moments.n)


def out_zscores(
    values: Tensor,
    law: OutGaussian,
    *,
    direction: float = 1.0,
    min_std: float = 1e-6,
    heldout_map: HeldoutMap = IDENTITY_MAP,
) -> Tensor:
    r"""One-sided predictive z-score of a tested model's values against each OUT law.

    .. math::

        z_i = d \, \frac{v_i - (a + b\,\mu_i)}{c\,\tilde s_i \sqrt{1 + 1/n_i}},

    with :math:`d = +1` for ``phi`` (a member is *more* confident) and :math:`d = -1` for the
    loss (a member has a *lower* loss): large :math:`z_i` means "looks trained on". The factor
    :math:`\sqrt{1 + 1/n_i}` makes it the score of a *new* draw from the law whose mean was
    estimated from :math:`n_i` draws (a prediction, not a confidence, interval).
    :math:`(a, b, c)` is the tested model's :class:`HeldoutMap` (:func:`fit_heldout_map`;
    default :data:`IDENTITY_MAP`, a model like the reference models).

    Args:
        values: ``[E]`` the tested model's values on the examples of ``law``.
        law: their :class:`OutGaussian` (``[E]`` entries).
        direction: ``+1`` (``phi``) or ``-1`` (loss).
        min_std: floor of :math:`\tilde s_i` (> 0).
        heldout_map: :math:`(a, b, c)`.

    Returns:
        ``[E]`` float64 scores.

    Example:
        >>> import torch
        >>> law = OutGaussian(torch.zeros(2), torch.ones(2), torch.tensor([3, 3]))
        >>> [round(z, 4) for z in out_zscores(torch.tensor([1.0, -2.0]), law).tolist()]
        [0.866, -1.7321]
        >>> m = HeldoutMap(intercept=1.0, slope=1.0, scale=2.0)
        >>> [round(z, 4) for z in out_zscores(torch.tensor([1.0, -2.0]), law,
        ...                                   heldout_map=m).tolist()]
        [0.0, -1.299]
    """
    if direction not in (1.0, -1.0):
        raise ValueError(f"Expected `direction` +1 or -1, but got {direction!r}.")
    v = values.double().to(law.mean.device)
    n = law.n.double().clamp_min(1.0)
    a, b, c = heldout_map
    scale = c * law.std.clamp_min(min_std) * torch.sqrt(1.0 + 1.0 / n)
    return direction * (v - (a + b * law.mean)) / scale


def fit_heldout_map(tested: Tensor, law: OutGaussian, *, min_scale: float = 1e-3) -> HeldoutMap:
    r"""How a tested model's values on unseen data depend on the reference models' OUT law.

    On a held-out set no model trained on, ``tested[h]`` is the tested model's value and
    ``law`` the reference models' law (every one of them is OUT). The weighted least-squares
    line

    .. math::

        v_h \approx a + b\,\mu_h, \qquad w_h = 1 / (\tilde s_h^2 (1 + 1/n_h)),

    is the tested model's "never trained on" level as a function of the reference models'
    (a model trained on all of :math:`D` is more confident than models trained on halves, more
    so on easy examples), and :math:`c = \mathrm{MAD}(r) / \Phi^{-1}(3/4)` of the standardised
    residuals :math:`r_h = (v_h - a - b\mu_h) / (\tilde s_h \sqrt{1 + 1/n_h})` its spread in
    units of the law's (robust to a few outliers). A model that has truly forgotten an example
    treats it like unseen data, so :func:`out_zscores` reads its forget-set values through this
    map.

    Args:
        tested: ``[H]`` the tested model's values on the held-out set.
        law: ``[H]`` the reference models' law on the same examples.
        min_scale: floor of :math:`c` (> 0).

    Returns:
        :class:`HeldoutMap` ``(a, b, c)``.

    Raises:
        ValueError: fewer than 3 held-out examples, shapes that differ, non-finite values,
            or OUT means with no spread (a line cannot be fitted).

    Example:
        >>> import torch
        >>> law = OutGaussian(torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.ones(4),
        ...                   torch.full((4,), 1_000_000))
        >>> m = fit_heldout_map(torch.tensor([1.0, 3.0, 5.0, 7.0]), law)
        >>> [round(x, 4) for x in m]
        [1.0, 2.0, 0.001]
    """
    v = tested.double().flatten().to(law.mean.device)
    mu = law.mean.double().flatten()
    if v.shape != mu.shape or v.numel() < 3:
        raise ValueError(
            f"Expected the tested model's values on the same held-out examples as the law, at "
            f"least 3, but got {tuple(v.shape)} values for {tuple(mu.shape)} examples."
        )
    if not bool(torch.isfinite(v).all() and torch.isfinite(mu).all()):
        raise ValueError(
            "Expected finite held-out values, but got NaN or inf; check the held-out loader "
            "(every reference model must be scored on every held-out example)."
        )
    s = law.std.double().clamp_min(1e-6) * torch.sqrt(1.0 + 1.0 / law.n.double().clamp_min(1.0))
    w = s.pow(-2)
    wm = (w * mu).sum() / w.sum()
    sxx = (w * (mu - wm).square()).sum()
    if not float(sxx) > 0.0:
        raise ValueError(
            "Expected held-out examples with different OUT means to fit the map on, but all "
            "are equal; use a larger or more varied held-out set."
        )
    slope = (w * (mu - wm) * (v - (w * v).sum() / w.sum())).sum() / sxx
    intercept = (w * v).sum() / w.sum() - slope * wm
    r = (v - intercept - slope * mu) / s
    # the interpolated median (torch.median takes the lower middle of an even count)
    scale = (r - r.quantile(0.5)).abs().quantile(0.5) / _MAD_TO_SD
    return HeldoutMap(float(intercept), float(slope), max(float(scale), min_scale))


def leave_one_out_zscores(
    values: Tensor,
    out_mask: Tensor,
    *,
    direction: float = 1.0,
    prior_weight: float = 2.0,
    pooled_var: float | None = None,
    heldout: Tensor | None = None,
    members: bool = False,
) -> Tensor:
    r"""The score of every reference model on the examples it never trained on (null draws).

    For every pair :math:`(j, i)` with model :math:`j` OUT for example :math:`i`, the value
    :math:`v_{j,i}` is scored (:func:`out_zscores`) against the OUT law of :math:`i` fitted
    *without* model :math:`j` (:func:`out_gaussian` on the other :math:`n_i - 1` OUT models,
    with the full table's pooled variance). Model :math:`j` never trained on :math:`i`, so these
    are draws of the score under "never trained on", with the tested model's own recipe. With
    ``heldout``, model :math:`j` is read through its own :class:`HeldoutMap` against the other
    models' held-out law (:func:`fit_heldout_map`), exactly as a tested model is.

    With ``members=True`` the same scores are kept on the other entries instead: model
    :math:`j` on the examples it *did* train on (whose OUT law never included it). These are
    draws of the score of a model that still treats the example as a member, the alternative
    the rule should detect (:func:`detection_power`).

    Args:
        values: ``[K, N]`` reference models' values.
        out_mask: ``[K, N]`` OUT mask.
        direction: as in :func:`out_zscores`.
        prior_weight: as in :func:`out_gaussian`.
        pooled_var: as in :func:`out_gaussian` (default: from the full table).
        heldout: ``[K, H]`` the same models' values on a held-out set none trained on.
        members: keep the IN entries (member draws) rather than the OUT ones (null draws).

    Returns:
        ``[K, N]`` float64, NaN where model ``j`` is IN for ``i`` (OUT with ``members``), its
        value is NaN, or ``i`` has no OUT model besides ``j``.

    Example:
        >>> import torch
        >>> v = torch.tensor([[0.0], [1.0], [2.0]])
        >>> z = leave_one_out_zscores(v, torch.ones(3, 1, dtype=torch.bool), prior_weight=0.0)
        >>> [round(x, 4) for x in z[:, 0].tolist()]
        [-1.7321, 0.0, 1.7321]
    """
    null, member = null_and_member_zscores(
        values,
        out_mask,
        direction=direction,
        prior_weight=prior_weight,
        pooled_var=pooled_var,
        heldout=heldout,
    )
    return member if members else null


def null_and_member_zscores(
    values: Tensor,
    out_mask: Tensor,
    *,
    direction: float = 1.0,
    prior_weight: float = 2.0,
    pooled_var: float | None = None,
    heldout: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Both tables of :func:`leave_one_out_zscores` (``members=False`` and ``True``) from one
    pass over the models: ``(null [K, N], member [K, N])``.

    Example:
        >>> import torch
        >>> v = torch.tensor([[0.0, 5.0], [1.0, 1.0], [2.0, 3.0]])
        >>> m = torch.tensor([[True, False], [True, True], [True, True]])
        >>> null, member = null_and_member_zscores(v, m, prior_weight=0.0)
        >>> member[0, 1].item() > 0, bool(member[:, 0].isnan().all()), bool(null[0, 1].isnan())
        (True, True, True)
    """
    if pooled_var is None:
        pooled_var = float(masked_moments(values, out_mask).std.square().nanmean())
    k = values.shape[0]
    if heldout is not None and heldout.shape[0] != k:
        raise ValueError(f"Expected held-out values of {k} models, but got {heldout.shape[0]}.")
    null = torch.full(values.shape, float("nan"), dtype=torch.float64, device=values.device)
    member = null.clone()
    for j in range(k):
        others = out_mask.clone()
        others[j] = False
        law = out_gaussian(values, others, prior_weight=prior_weight, pooled_var=pooled_var)
        hmap = IDENTITY_MAP
        if heldout is not None:
            keep = torch.arange(k, device=heldout.device) != j
            rest = heldout[keep]
            hlaw = out_gaussian(
                rest, torch.ones_like(rest, dtype=torch.bool), prior_weight=prior_weight
            )
            hmap = fit_heldout_map(heldout[j], hlaw)
        z = out_zscores(values[j], law, direction=direction, heldout_map=hmap)
        judged = law.n >= 1
        null[j] = torch.where(out_mask[j] & judged, z, float("nan"))
        member[j] = torch.where(~out_mask[j] & ~values[j].isnan() & judged, z, float("nan"))
    return null, member


def member_rates(null_scores: Tensor, threshold: float) -> Tensor:
    """Per reference model, the fraction of its OUT examples scored above ``threshold``.

    Args:
        null_scores: ``[K, N]`` from :func:`leave_one_out_zscores` (NaN: not a null draw).
        threshold: the flagging threshold of the stop rule.

    Returns:
        ``[K]`` float64 rates :math:`\\rho_j`.

    Raises:
        ValueError: a model has no null draw.

    Example:
        >>> import torch
        >>> z = torch.tensor([[0.0, 3.0, float("nan")], [1.0, 1.0, 5.0]])
        >>> member_rates(z, 2.0).tolist()
        [0.5, 0.3333333333333333]
    """
    valid = ~null_scores.isnan()
    count = valid.sum(dim=1)
    if bool((count == 0).any()):
        raise ValueError(
            "Expected every reference model to be OUT for some scored example, but "
            f"models {(count == 0).nonzero().flatten().tolist()} have none."
        )
    above = (torch.nan_to_num(null_scores, nan=-math.inf) > threshold).sum(dim=1)
    return above.double() / count.double()


def binomial_mixture_cdf(rates: Tensor, size: int) -> Tensor:
    r"""CDF of the number of flagged examples, a mixture of binomials over the models.

    .. math::

        F(c) = \frac1K \sum_j \sum_{m=0}^{c} \binom{E}{m} \rho_j^m (1 - \rho_j)^{E - m},
        \qquad c = 0, \dots, E.

    Args:
        rates: ``[K]`` per-model rates :math:`\rho_j \in [0, 1]`.
        size: :math:`E \ge 1`.

    Returns:
        ``[E + 1]`` float64, :math:`F(0), \dots, F(E)` (the last is 1).

    Example:
        >>> import torch
        >>> [round(x, 4) for x in binomial_mixture_cdf(torch.tensor([0.5]), 2).tolist()]
        [0.25, 0.75, 1.0]
    """
    if size < 1:
        raise ValueError(f"Expected a set size >= 1, but got {size!r}.")
    r = rates.double().clamp(0.0, 1.0)[:, None]
    m = torch.arange(size + 1, dtype=torch.float64, device=r.device)[None, :]
    log_comb = math.lgamma(size + 1.0) - torch.lgamma(m + 1) - torch.lgamma(size - m + 1)
    # x * log(y) with 0 * log(0) = 0 (a rate of exactly 0 or 1).
    log_pmf = log_comb + torch.xlogy(m, r) + torch.xlogy(size - m, 1.0 - r)
    pmf = log_pmf.exp().mean(dim=0)
    return pmf.cumsum(dim=0).clamp(max=1.0)


def flagged_tolerance(rates: Tensor, size: int, level: float = 0.05) -> int:
    r"""The number of flagged examples a never-trained-on set of ``size`` shows at ``1 - level``.

    The smallest :math:`c` with :math:`F(c) \ge 1 - \beta` (:func:`binomial_mixture_cdf`,
    :math:`\beta` = ``level``): a set of :math:`E` examples that a model of the user's recipe
    never trained on has at most :math:`c` examples scored above the threshold with probability
    at least :math:`1 - \beta`, by the reference models' own null draws. Mixing over models
    (rather than one pooled binomial) keeps the correlation of flags within one model: a model
    that is more confident overall flags several examples at once.

    Args:
        rates: ``[K]`` from :func:`member_rates`.
        size: the forget set's size :math:`E`.
        level: :math:`\beta \in (0, 1)`.

    Returns:
        :math:`c \in [0, E]`.

    Example:
        >>> import torch
        >>> flagged_tolerance(torch.tensor([0.05, 0.05]), 10, level=0.05)
        2
        >>> flagged_tolerance(torch.tensor([0.0]), 10)
        0
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"Expected `level` in (0, 1), but got {level!r}.")
    cdf = binomial_mixture_cdf(rates, size)
    # A tiny slack absorbs rounding of a CDF that is exactly 1 - level.
    return int((cdf >= 1.0 - level - 1e-12).nonzero()[0, 0])


def mean_score_tolerance(
    null_scores: Tensor,
    size: int,
    level: float = 0.05,
    *,
    draws: int = 4096,
    seed: int = 0,
    exact_up_to: int = 64,
) -> float:
    r"""The ``1 - level`` quantile of the mean score of ``size`` never-trained-on examples.

    A forget set's *mean* score is the most sensitive sign that the tested model still treats
    it as trained on (every example a little member-like, none past the threshold). Its null
    law is read from the reference models' own null draws (:func:`leave_one_out_zscores`): for
    each model :math:`j`, ``draws`` means of ``size`` of its null scores drawn with replacement
    (for ``size > exact_up_to``, the normal law of such a mean, :math:`N(m_j, s_j^2/E)`), pooled
    over the models (which keeps the correlation within a model, as
    :func:`flagged_tolerance` does), and the tolerance is their :math:`1 - \beta` quantile.
    Seeded: the same inputs give the same tolerance.

    Args:
        null_scores: ``[K, N]`` null draws (NaN: none).
        size: :math:`E \ge 1`.
        level: :math:`\beta \in (0, 1)`.
        draws: Monte Carlo means per model.
        seed: seed of the draws.
        exact_up_to: largest ``size`` drawn example by example.

    Returns:
        The tolerance :math:`t_E`: the set passes when its mean score is at most it.

    Raises:
        ValueError: ``size < 1``, ``level`` outside (0, 1), or a model without null draws.

    Example:
        >>> import torch
        >>> null = torch.tensor([[-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]])
        >>> mean_score_tolerance(null, 1, 0.05)
        1.0
        >>> round(mean_score_tolerance(null, 20, 0.05), 2)  # 1.645 * sqrt(2/3) / sqrt(20) = 0.30
        0.3
    """
    if size < 1:
        raise ValueError(f"Expected a set size >= 1, but got {size!r}.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"Expected `level` in (0, 1), but got {level!r}.")
    g = torch.Generator().manual_seed(seed)
    means = []
    for j in range(null_scores.shape[0]):
        v = null_scores[j].double().cpu()
        v = v[~v.isnan()]
        if v.numel() == 0:
            raise ValueError(
                f"Expected null draws of every reference model, but model {j} has none."
            )
        if size <= exact_up_to:
            idx = torch.randint(0, v.numel(), (draws, size), generator=g)
            means.append(v[idx].mean(dim=1))
        else:
            sd = float(v.std(unbiased=False)) / math.sqrt(size)
            means.append(
                float(v.mean()) + sd * torch.randn(draws, generator=g, dtype=torch.float64)
            )
    return float(torch.cat(means).quantile(1.0 - level))


def detection_power(
    member_scores: Tensor,
    *,
    threshold: float,
    tolerance: int,
    mean_tolerance: float,
    draws: int = 4096,
    seed: int = 0,
) -> float:
    r"""How often the rule rejects "looks OUT" for a set whose examples are still members.

    ``member_scores[:, e]`` holds the member draws of forget example :math:`e`
    (:func:`leave_one_out_zscores` with ``members=True``, one per reference model that trained
    on it; NaN elsewhere). A Monte Carlo draw takes, for every example independently, one of
    its member draws uniformly, and counts it as detected when more than ``tolerance`` scores
    exceed ``threshold`` or their mean exceeds ``mean_tolerance`` (the rule's verdict,
    :meth:`~lightning_unlearn.unlearning.OutRule.judge`). The fraction detected is the rule's
    power on this set: near 1, "looks OUT" is strong evidence that the model forgot it; near the
    rule's level, the reference models cannot tell this set's members from non-members, and the
    verdict says little. Seeded, so the same inputs give the same number; its Monte Carlo
    standard error is at most :math:`1/(2\sqrt{	ext{draws}})`.

    Args:
        member_scores: ``[M, E]`` member draws per example (NaN: none from that model).
        threshold: the rule's flagging threshold.
        tolerance: the flagged-count tolerance for ``E`` examples.
        mean_tolerance: the mean-score tolerance for ``E`` examples.
        draws: Monte Carlo draws (>= 1).
        seed: generator seed.

    Returns:
        The power in :math:`[0, 1]`.

    Raises:
        ValueError: no example, ``draws < 1``, or an example without a member draw (no
            reference model trained on it, so its members' scores are unknown).

    Example:
        >>> import torch
        >>> s = torch.tensor([[0.0, 1.0], [3.0, 3.0], [float("nan"), 1.0]])
        >>> # detected when either score exceeds 2: exactly 1 - (1/2)(2/3) = 2/3
        >>> p = detection_power(s, threshold=2.0, tolerance=0, mean_tolerance=9.0, draws=4000)
        >>> round(p, 2)
        0.66
    """
    m = member_scores.double().cpu()
    if m.ndim != 2 or m.shape[1] == 0 or draws < 1:
        raise ValueError(
            f"Expected [M, E] member scores with E >= 1 and `draws` >= 1, but got shape "
            f"{tuple(m.shape)} and draws={draws!r}."
        )
    count = (~m.isnan()).sum(dim=0)
    if bool((count == 0).any()):
        raise ValueError(
            f"Expected a member draw for every example, but columns "
            f"{(count == 0).nonzero().flatten().tolist()[:10]} have none; train reference "
            "models that include these examples."
        )
    ordered = m.sort(dim=0).values  # NaN sorts last: the first count[e] rows are the draws
    g = torch.Generator().manual_seed(seed)
    detected = 0
    chunk = max(1, _POWER_CHUNK // m.shape[1])  # bounded memory for large forget sets
    for start in range(0, draws, chunk):
        rows = min(chunk, draws - start)
        pick = (torch.rand(rows, m.shape[1], generator=g, dtype=torch.float64) * count).long()
        sample = ordered.gather(0, pick)  # [rows, E]
        flagged = (sample > threshold).sum(dim=1)
        hit = (flagged > tolerance) | (sample.mean(dim=1) > mean_tolerance)
        detected += int(hit.sum())
    return detected / draws
