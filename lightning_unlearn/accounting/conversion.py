"""From Rényi losses to (epsilon, delta), per example, and the worst case of a run (THEORY §4)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

import torch
from torch import Tensor

from lightning_unlearn.accounting.conventions import NoiseConfig
from lightning_unlearn.accounting.rdp import DEFAULT_ALPHAS, per_step_rdp, validate_alphas
from lightning_unlearn.validation import check_float, check_int

__all__ = ["WorstCaseAccountant", "rdp_to_epsilon", "worst_case_epsilon", "worst_case_rdp"]


def _check_delta(delta: float) -> float:
    if isinstance(delta, bool) or not isinstance(delta, numbers.Real) or not 0 < delta < 1:
        raise ValueError(
            f"Expected `delta` to be a float in (0, 1), e.g. 1e-5 (below 1 / num_samples), "
            f"but got {delta!r}."
        )
    return float(delta)


def rdp_to_epsilon(rdp: Tensor, alphas: Iterable[int], delta: float) -> tuple[Tensor, Tensor]:
    r"""Convert Rényi losses to ``(epsilon, delta)`` per example (THEORY §4, [B20]).

    The same conversion as Opacus' ``get_privacy_spent``, vectorised over all leading
    dimensions:

    .. math::

        \varepsilon(x; \delta) = \min_\alpha \Big[ P(x, \alpha) + \log\frac{\alpha - 1}{\alpha}
            - \frac{\log \delta + \log \alpha}{\alpha - 1} \Big]

    NaN entries are ignored in the minimum (a row of NaNs gives ``inf``). Values below zero, which
    only arise for very large ``delta``, are reported as 0 (an epsilon cannot be negative).

    Args:
        rdp: Float tensor ``[..., K]`` of Rényi losses, column ``k`` at order ``alphas[k]``.
        alphas: The ``K`` integer orders of the last dimension, sorted ascending as
            ``validate_alphas`` returns them.
        delta: Target ``delta`` in ``(0, 1)``.

    Returns:
        ``(epsilon, best_alpha)``: float64 ``[...]`` and int64 ``[...]`` (the minimising order;
        the largest order for all-NaN rows), on the device of ``rdp``.

    Raises:
        ValueError: If ``delta`` is not in ``(0, 1)`` or ``rdp.shape[-1] != len(alphas)``.
        UnsupportedOrderError: If an order is not an integer ``>= 2``.

    Example:
        >>> eps, best = rdp_to_epsilon(torch.tensor([[0.1, 0.2, 0.8]]), (2, 8, 32), delta=1e-5)
        >>> round(eps.item(), 4), best.item()
        (1.0278, 32)
    """
    orders = validate_alphas(alphas)
    if tuple(alphas) != orders:
        raise ValueError(
            f"Expected `alphas` sorted ascending without duplicates (the ledger's column order), "
            f"but got {tuple(alphas)!r}; pass {orders!r} with columns in that order."
        )
    log_delta = math.log(_check_delta(delta))
    values = torch.as_tensor(rdp).to(torch.float64)
    if values.ndim == 0 or values.shape[-1] != len(orders):
        raise ValueError(
            f"Expected `rdp` to have a last dimension of size len(alphas) = {len(orders)}, but "
            f"got shape {tuple(values.shape)}."
        )
    a = torch.tensor(orders, dtype=torch.float64, device=values.device)
    eps = values + torch.log((a - 1) / a) - (log_delta + torch.log(a)) / (a - 1)
    eps = torch.nan_to_num(eps, nan=math.inf)
    best_eps, idx = eps.min(dim=-1)
    best_alpha = torch.tensor(orders, dtype=torch.int64, device=values.device)[idx]
    return best_eps.clamp(min=0.0), best_alpha


def worst_case_rdp(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    alphas: Iterable[int] = DEFAULT_ALPHAS,
) -> Tensor:
    r"""Data-independent Rényi loss of a DP-SGD run (what Opacus' RDP accountant reports).

    Every example is charged the largest possible ratio ``r = 1 / sigma`` at every step
    (THEORY §2 with THEORY §3 composition):

    .. math::

        P_{\max}(\alpha) = T \cdot \varepsilon(\alpha; q, r = 1/\sigma).

    Args:
        noise_multiplier: ``sigma > 0``.
        sample_rate: Sampling probability ``q`` in ``[0, 1]``.
        steps: Number of steps ``T >= 0``.
        alphas: Integer orders ``>= 2``.

    Returns:
        Float64 tensor ``[K]`` on the default device.

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> worst_case_rdp(1.0, 1.0, steps=10, alphas=(2, 4))
        tensor([10., 20.], dtype=torch.float64)
    """
    check_float("noise_multiplier", noise_multiplier, minimum=0.0)
    check_int("steps", steps, minimum=0)
    r = torch.tensor([1.0 / float(noise_multiplier)], dtype=torch.float64)
    return per_step_rdp(r, sample_rate, alphas)[0] * int(steps)


def worst_case_epsilon(
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    alphas: Iterable[int] = DEFAULT_ALPHAS,
    delta: float = 1e-5,
) -> tuple[float, int]:
    """Data-independent ``(epsilon, best order)`` of a DP-SGD run (THEORY §4).

    This is the epsilon Opacus' RDP accountant would report for the same run; per-instance
    epsilons of the ``"dpsgd"`` convention with clipping never exceed it at the step level.

    Args:
        noise_multiplier: ``sigma > 0``.
        sample_rate: Sampling probability ``q``.
        steps: Number of steps ``T``.
        alphas: Integer orders ``>= 2``.
        delta: Target ``delta`` in ``(0, 1)``.

    Returns:
        ``(epsilon, alpha)`` as Python numbers.

    Raises:
        ValueError: If an argument is out of range.

    Example:
        >>> eps, alpha = worst_case_epsilon(1.0, 0.01, steps=1000, delta=1e-5)
        >>> round(eps, 3), alpha
        (2.108, 8)
    """
    orders = validate_alphas(alphas)
    eps, best = rdp_to_epsilon(
        worst_case_rdp(noise_multiplier, sample_rate, steps, orders), orders, delta
    )
    return float(eps.item()), int(best.item())


class WorstCaseAccountant:
    r"""Data-independent RDP of a run, one optimizer step at a time (THEORY §4).

    With clipping, the ratio ``r_C`` of the convention at ``||g|| = C`` bounds every example's
    ratio; each step adds :func:`worst_case_rdp` of one step at the noise multiplier
    ``1 / r_C`` (for "dpsgd" and "nominal" that is ``sigma``, Opacus' accountant; for "sgld" it
    depends on the step's learning rate and batch):

    .. math::

        P_{\max}(\alpha) = \sum_t \varepsilon(\alpha; q_t, r_C(\mathrm{lr}_t, B_t)).

    Per-step values are cached while the learning rate, batch and ``q`` do not change. Without
    clipping there is no worst case: ``rdp`` stays None.

    Args:
        noise: How norms become ratios (its ``max_grad_norm`` is the clip norm ``C``).
        alphas: Integer orders ``>= 2``, sorted ascending.

    Example:
        >>> accountant = WorstCaseAccountant(NoiseConfig("dpsgd", 1.0, max_grad_norm=1.0), (2, 4))
        >>> for _ in range(10):
        ...     accountant.step(lr=0.1, global_batch=32, sample_rate=1.0)
        >>> accountant.rdp
        tensor([10., 20.], dtype=torch.float64)
        >>> torch.allclose(accountant.rdp, worst_case_rdp(1.0, 1.0, 10, (2, 4)))
        True
    """

    def __init__(self, noise: NoiseConfig, alphas: tuple[int, ...]) -> None:
        self.noise, self.alphas = noise, validate_alphas(alphas)
        self.rdp: Tensor | None = None
        self._cache: tuple[tuple[float, int, float], Tensor] | None = None

    def step(self, lr: float, global_batch: int, sample_rate: float) -> None:
        """Add one optimizer step (no-op without clipping: there is no worst case)."""
        clip = self.noise.max_grad_norm
        if clip is None:
            return
        key = (lr, global_batch, sample_rate)
        if self._cache is None or self._cache[0] != key:
            norm = torch.tensor([clip], dtype=torch.float64)
            ratio = float(self.noise.ratios(norm, lr=lr, batch_size=global_batch)[0])
            per_step = (
                torch.zeros(len(self.alphas), dtype=torch.float64)  # no signal: lr = 0 in "sgld"
                if ratio == 0
                else worst_case_rdp(1.0 / ratio, sample_rate, 1, self.alphas)
            )
            self._cache = (key, per_step)
        step_rdp = self._cache[1]
        self.rdp = step_rdp.clone() if self.rdp is None else self.rdp + step_rdp

    def epsilon(self, delta: float) -> float | None:
        """Worst-case epsilon at ``delta``, or None without clipping."""
        if self.rdp is None:
            return None
        eps, _ = rdp_to_epsilon(self.rdp, self.alphas, delta)
        return float(eps)
