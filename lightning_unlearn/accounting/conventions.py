"""Noise conventions: from per-sample gradient norms to sensitivity/noise ratios (THEORY §1).

Every per-instance loss depends on an example only through ``r = Delta(x) / s``, the per-instance
sensitivity of one step over the standard deviation of the noise added in that step. The three
conventions differ only in what ``s`` is:

- ``"dpsgd"`` (Opacus): ``s = lr * sigma * C / B``, so ``r = ||clip_C(g)|| / (sigma * C)``.
- ``"sgld"`` (Langevin): ``s = sigma * sqrt(2 * lr)``, so
  ``r = sqrt(lr / 2) * ||clip_C(g)|| / (B * sigma)``.
- ``"nominal"`` (no real noise): the DP-SGD formula with a nominal ``sigma`` chosen by the user;
  the losses are a calibrated difficulty score, not a privacy guarantee.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from lightning_unlearn.validation import check_float, check_int

__all__ = ["Convention", "NoiseConfig", "dpsgd_ratios", "sgld_ratios"]

Convention = Literal["nominal", "dpsgd", "sgld"]
_CONVENTIONS: tuple[str, ...] = get_args(Convention)


def _positive(name: str, value: object, *, allow_none: bool = False) -> float | None:
    """A finite float > 0 (or None with ``allow_none``): the shared validator."""
    if value is None and allow_none:
        return None
    return check_float(name, value, minimum=0.0)


def _clipped(grad_norms: Tensor, max_grad_norm: float | None) -> Tensor:
    norms = torch.as_tensor(grad_norms).to(torch.float64)
    return norms if max_grad_norm is None else norms.clamp(max=max_grad_norm)


def dpsgd_ratios(
    grad_norms: Tensor, noise_multiplier: float, max_grad_norm: float | None = None
) -> Tensor:
    r"""Ratios ``r`` of DP-SGD (Opacus' convention; THEORY §1).

    Opacus adds noise of standard deviation ``lr * sigma * C / B`` to the averaged clipped
    gradient, so the learning rate and batch size cancel:

    .. math::

        r(x) = \frac{\lVert \mathrm{clip}_C(g_x) \rVert}{\sigma C},
        \qquad \mathrm{clip}_C(g) = g \min(1, C / \lVert g \rVert).

    The data-independent worst case is ``r = 1 / sigma``. With ``max_grad_norm=None`` there is no
    clipping and ``C = 1``: ``r = ||g|| / sigma`` (the "nominal" convention for training without
    clipping, where ``sigma`` is a nominal noise multiplier).

    Args:
        grad_norms: Per-sample gradient norms ``||g_x||`` (the gradient of each example's own
            loss, not divided by the batch size), any shape and device.
        noise_multiplier: ``sigma > 0``.
        max_grad_norm: Clip norm ``C > 0``, or ``None`` for no clipping.

    Returns:
        Float64 tensor of the same shape and device as ``grad_norms``.

    Raises:
        ValueError: If ``noise_multiplier`` or ``max_grad_norm`` is not positive and finite.

    Example:
        >>> dpsgd_ratios(torch.tensor([0.5, 2.0]), noise_multiplier=2.0, max_grad_norm=1.0)
        tensor([0.2500, 0.5000], dtype=torch.float64)
    """
    sigma = _positive("noise_multiplier", noise_multiplier)
    clip = _positive("max_grad_norm", max_grad_norm, allow_none=True)
    assert sigma is not None
    return _clipped(grad_norms, clip) / (sigma * (1.0 if clip is None else clip))


def sgld_ratios(
    grad_norms: Tensor,
    noise_multiplier: float,
    lr: float,
    batch_size: int,
    max_grad_norm: float | None = None,
) -> Tensor:
    r"""Ratios ``r`` of stochastic gradient Langevin dynamics (THEORY §1, [C24]).

    The step ``theta <- theta - lr * mean_B(g) + sqrt(2 lr sigma^2) N(0, I)`` has per-instance
    sensitivity ``lr * ||clip_C(g_x)|| / B`` and noise ``sigma * sqrt(2 lr)``:

    .. math::

        r(x) = \sqrt{\frac{\eta}{2}} \, \frac{\lVert \mathrm{clip}_C(g_x) \rVert}{B \sigma}.

    Args:
        grad_norms: Per-sample gradient norms (each example's own loss), any shape and device.
        noise_multiplier: ``sigma > 0`` of the Langevin noise (the "temperature" scale).
        lr: Learning rate ``eta > 0`` of the step.
        batch_size: Batch size ``B >= 1`` (the global batch under DDP).
        max_grad_norm: Clip norm ``C``, or ``None`` for no clipping.

    Returns:
        Float64 tensor of the same shape and device as ``grad_norms``.

    Raises:
        ValueError: If an argument is not positive and finite, or ``batch_size`` is not an
            integer ``>= 1``.

    Example:
        >>> sgld_ratios(torch.tensor([4.0]), noise_multiplier=1.0, lr=0.5, batch_size=2)
        tensor([1.], dtype=torch.float64)
    """
    sigma = _positive("noise_multiplier", noise_multiplier)
    eta = _positive("lr", lr)
    clip = _positive("max_grad_norm", max_grad_norm, allow_none=True)
    check_int("batch_size", batch_size, minimum=1)
    assert sigma is not None
    assert eta is not None
    return _clipped(grad_norms, clip) * (math.sqrt(eta / 2.0) / (int(batch_size) * sigma))


@dataclass(frozen=True)
class NoiseConfig:
    """How per-sample gradient norms become ratios ``r`` (THEORY §1).

    Attributes:
        convention: ``"dpsgd"`` (Opacus DP-SGD: real noise ``lr * sigma * C / B``), ``"sgld"``
            (Langevin noise ``sigma * sqrt(2 lr)``) or ``"nominal"`` (ordinary training without
            noise: the DP-SGD formula with a nominal ``sigma`` chosen by the user; the resulting
            losses are a calibrated difficulty score, not a privacy guarantee).
        noise_multiplier: ``sigma > 0``.
        max_grad_norm: Clip norm ``C``, or ``None`` for no clipping (then ``C = 1`` in the DP-SGD
            formula).

    Example:
        >>> cfg = NoiseConfig("nominal", noise_multiplier=1.0)
        >>> cfg.ratios(torch.tensor([3.0]))
        tensor([3.], dtype=torch.float64)
        >>> NoiseConfig("sgld", 1.0).ratios(torch.tensor([4.0]), lr=0.5, batch_size=2)
        tensor([1.], dtype=torch.float64)
    """

    convention: Convention
    noise_multiplier: float
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        if self.convention not in _CONVENTIONS:
            raise ValueError(
                f"Expected `convention` to be one of {_CONVENTIONS}, but got {self.convention!r}."
            )
        _positive("noise_multiplier", self.noise_multiplier)
        _positive("max_grad_norm", self.max_grad_norm, allow_none=True)

    @property
    def is_guarantee(self) -> bool:
        """Whether the noise is real, so that losses bound privacy (False for "nominal")."""
        return self.convention != "nominal"

    def ratios(
        self, grad_norms: Tensor, *, lr: float | None = None, batch_size: int | None = None
    ) -> Tensor:
        """Ratios ``r`` of the per-sample ``grad_norms`` under this convention.

        Args:
            grad_norms: Per-sample gradient norms of each example's own loss.
            lr: Learning rate of the step; required by ``"sgld"``, ignored otherwise.
            batch_size: (Global) batch size; required by ``"sgld"``, ignored otherwise.

        Returns:
            Float64 ratios, same shape and device as ``grad_norms``.

        Raises:
            ValueError: If ``"sgld"`` is used without ``lr`` and ``batch_size``.
        """
        if self.convention == "sgld":
            if lr is None or batch_size is None:
                raise ValueError(
                    "Expected `lr` and `batch_size` for the 'sgld' convention, but got "
                    f"lr={lr!r}, batch_size={batch_size!r}; pass the step's learning rate and "
                    "global batch size."
                )
            return sgld_ratios(
                grad_norms, self.noise_multiplier, lr, batch_size, self.max_grad_norm
            )
        return dpsgd_ratios(grad_norms, self.noise_multiplier, self.max_grad_norm)
