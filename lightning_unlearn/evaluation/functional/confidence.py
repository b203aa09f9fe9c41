"""Logit-scaled confidence and the per-example IN / OUT statistics of reference models.

The reference-model tools of the field (LiRA, Carlini et al. 2022; U-LiRA, Hayes et al. 2024;
KLoM, Georgiev et al. 2024) compare a model's *logit-scaled confidence* on an example with
the distribution of the same quantity over models trained with (IN) and without (OUT) that
example. THEORY §6 (membership inference; steps-to-unlearn) uses them as targets. Pure tensor
math: no Lightning here.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "MaskedMoments",
    "gaussian_likelihood_ratio",
    "logit_scaled_confidence",
    "masked_moments",
]


def logit_scaled_confidence(logits: Tensor, targets: Tensor) -> Tensor:
    r"""The logit-scaled confidence :math:`\phi = \log p_y - \log(1 - p_y)` of every example.

    With :math:`p = \operatorname{softmax}(z)` it equals, exactly,

    .. math::

        \phi(z, y) = z_y - \log \sum_{j \ne y} e^{z_j},

    which is how it is computed: one ``logsumexp`` over the other classes, finite for any
    finite logits (the form :math:`\log p_y - \log(1-p_y)` loses everything to rounding once
    :math:`p_y` rounds to 1, at a margin of about 17 in float32). The result is in the logits'
    dtype, or float32 for half-precision logits. LiRA (Carlini et al. 2022) models it as
    Gaussian over models (THEORY §6).

    Args:
        logits: ``[N, C]`` logits, ``C >= 2``.
        targets: ``[N]`` integer labels in ``[0, C)``.

    Returns:
        ``[N]`` values on the logits' device.

    Raises:
        ValueError: shapes do not match, fewer than two classes, or labels out of range.

    Example:
        >>> import torch
        >>> logit_scaled_confidence(torch.tensor([[2.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1]))
        tensor([2., 0.])
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            "Expected `logits` [N, C] and `targets` [N], but got shapes "
            f"{tuple(logits.shape)} and {tuple(targets.shape)}."
        )
    num_classes = logits.shape[1]
    if num_classes < 2:
        raise ValueError(f"Expected `logits` with C >= 2 classes, but got C = {num_classes}.")
    y = targets.long().to(logits.device)
    # Range-checked on the CPU only (no host synchronisation on an accelerator, where an
    # out-of-range label fails inside `gather` instead).
    if y.device.type == "cpu" and y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"Expected `targets` in [0, {num_classes}), but got values in "
            f"[{int(y.min())}, {int(y.max())}]."
        )
    z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    true = z.gather(1, y[:, None]).squeeze(1)
    others = z.scatter(1, y[:, None], float("-inf"))
    return true - torch.logsumexp(others, dim=1)


class MaskedMoments(NamedTuple):
    """Per-example mean, standard deviation and number of models of a masked ``[K, N]`` table."""

    mean: Tensor
    std: Tensor
    n: Tensor


def masked_moments(values: Tensor, mask: Tensor) -> MaskedMoments:
    r"""Mean and sample standard deviation of each column over the rows where ``mask`` holds.

    For example :math:`i` with :math:`S_i = \{k : \mathrm{mask}_{k,i}\}`, :math:`n_i = |S_i|`:

    .. math::

        \mu_i = \frac{1}{n_i} \sum_{k \in S_i} v_{k,i}, \qquad
        s_i = \sqrt{\frac{1}{n_i - 1} \sum_{k \in S_i} (v_{k,i} - \mu_i)^2}.

    This is the OUT (``mask = ~in_mask``) or IN (``mask = in_mask``) distribution of a
    per-example quantity over K reference models (THEORY §6). Computed in float64, centred
    (two-pass), so no catastrophic cancellation.

    Args:
        values: ``[K, N]`` values (model ``k``, example ``i``).
        mask: ``[K, N]`` booleans: which models count for which example.

    Returns:
        ``MaskedMoments(mean, std, n)``, each ``[N]`` (float64, float64, int64); the mean
        is NaN where ``count = 0`` and the standard deviation NaN where ``count < 2``.

    Raises:
        ValueError: shapes differ or ``mask`` is not boolean.

    Example:
        >>> import torch
        >>> v = torch.tensor([[1.0, 5.0], [3.0, 6.0], [9.0, 7.0]])
        >>> m = torch.tensor([[True, True], [True, False], [False, False]])
        >>> mom = masked_moments(v, m)
        >>> mom.mean.tolist(), mom.n.tolist()
        ([2.0, 5.0], [2, 1])
        >>> round(mom.std[0].item(), 6), mom.std[1].isnan().item()
        (1.414214, True)
    """
    if values.dim() != 2 or mask.shape != values.shape:
        raise ValueError(
            f"Expected `values` and `mask` of the same shape [K, N], but got "
            f"{tuple(values.shape)} and {tuple(mask.shape)}."
        )
    if mask.dtype != torch.bool:
        raise ValueError(f"Expected a boolean `mask`, but got dtype {mask.dtype}.")
    v = values.double()
    m = mask.to(v.device)
    count = m.sum(dim=0)
    n = count.double()
    mean = torch.where(m, v, 0.0).sum(dim=0) / n
    centred = torch.where(m, v - mean, 0.0)
    var = (centred * centred).sum(dim=0) / (n - 1.0)
    mean = torch.where(count > 0, mean, float("nan"))
    std = torch.where(count > 1, var.sqrt(), float("nan"))
    return MaskedMoments(mean, std, count)


def gaussian_likelihood_ratio(
    values: Tensor,
    in_mean: Tensor,
    in_std: Tensor,
    out_mean: Tensor,
    out_std: Tensor,
    *,
    min_std: float = 1e-3,
) -> Tensor:
    r"""LiRA's per-example log likelihood ratio of IN against OUT (Carlini et al. 2022).

    With the IN and OUT distributions of :math:`\phi` modelled as Gaussians,

    .. math::

        \Lambda = \log \mathcal N(\phi; \mu_{in}, s_{in}^2)
                - \log \mathcal N(\phi; \mu_{out}, s_{out}^2).

    :math:`\Lambda > 0`: the model's :math:`\phi` looks more like a model trained *on* the
    example. Applied to an unlearned model it is the U-LiRA score (Hayes et al. 2024): after
    successful unlearning it should be about as low as for a model that never saw the example.
    Standard deviations are floored at ``min_std`` (few reference models can give a spread of
    ~0, making the ratio explode).

    Args:
        values: ``[N]`` the tested model's :math:`\phi` per example.
        in_mean: ``[N]`` IN means. in_std: ``[N]`` IN standard deviations.
        out_mean: ``[N]`` OUT means. out_std: ``[N]`` OUT standard deviations.
        min_std: floor of the standard deviations (> 0).

    Returns:
        ``[N]`` float64 log ratios.

    Raises:
        ValueError: ``min_std <= 0``.

    Example:
        >>> import torch
        >>> one, zero = torch.ones(1), torch.zeros(1)
        >>> gaussian_likelihood_ratio(zero, one, one, -one, one).item()  # equidistant
        0.0
    """
    if not min_std > 0:
        raise ValueError(f"Expected `min_std` > 0, but got {min_std!r}.")

    def log_normal(x: Tensor, mu: Tensor, sd: Tensor) -> Tensor:
        s = sd.double().clamp_min(min_std)
        return -0.5 * ((x - mu.double()) / s) ** 2 - s.log() - 0.5 * math.log(2 * math.pi)

    x = values.double()
    return log_normal(x, in_mean, in_std) - log_normal(x, out_mean, out_std)
