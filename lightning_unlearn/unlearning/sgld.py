"""Stochastic gradient Langevin dynamics in the THEORY §1 SGLD convention [C24]."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

__all__ = ["SGLD"]


class SGLD(Optimizer):
    r"""Noisy gradient descent: a gradient step plus Gaussian noise of scale ``sqrt(2 lr) sigma``.

    The update is the SGLD / Langevin convention of THEORY §1 (Chien et al. 2024, "Langevin
    Unlearning", [C24]):

    .. math::

        \theta \leftarrow \Pi_R\Big(\theta - \eta\,\mathrm{clip}_C\big(\nabla L_B(\theta)
            + \lambda \theta\big) + \sqrt{2\eta\sigma^2}\;\xi\Big),
        \qquad \xi \sim \mathcal N(0, I),

    where :math:`\nabla L_B` is the gradient in ``p.grad`` (the mean over the batch when the
    loss is a batch mean), :math:`\eta` = ``lr``, :math:`\sigma` = ``noise_multiplier``,
    :math:`\lambda` = ``weight_decay``, and so the noise standard deviation per coordinate is
    :math:`s = \sigma\sqrt{2\eta}` (THEORY §1: the per-instance ratio is then
    :math:`r = \sqrt{\eta/2}\,\|g_x\| / (B\sigma)`).

    * ``max_grad_norm`` (:math:`C`) clips the **batch** gradient: all gradients of a parameter
      group are scaled together so their joint L2 norm is at most ``C``. This bounds the step;
      it is *not* the per-example clipping of DP-SGD (per-example sensitivities are measured by
      :class:`~lightning_unlearn.PerInstancePrivacyMonitor`, not enforced here).
    * ``projection_radius`` (:math:`R`) projects the parameters of a group back onto the L2
      ball of radius ``R`` after the step (the projected Langevin iteration of [C24]).
    * The noise comes from a ``torch.Generator`` per device seeded with ``seed``, so two runs
      with the same seed draw the same noise; its state is part of :meth:`state_dict`, so a
      run resumed from a checkpoint continues the same noise sequence.

    **DDP.** Under ``DistributedDataParallel`` the gradients are averaged over ranks *before*
    ``step``. Every rank builds its own ``SGLD`` with the same ``seed`` and so draws identical
    noise: the replicas stay identical and the run is one Langevin chain with noise scale
    :math:`\sigma\sqrt{2\eta}` (the noise is not divided among ranks). Giving ranks different
    seeds would make the replicas drift apart; do not.

    Args:
        params: parameters or parameter groups.
        lr: step size :math:`\eta > 0`.
        noise_multiplier: :math:`\sigma \ge 0` (0 gives plain gradient descent).
        max_grad_norm: optional bound :math:`C > 0` on the joint norm of a group's gradients.
        projection_radius: optional radius :math:`R > 0` of the parameter ball.
        weight_decay: L2 coefficient :math:`\lambda \ge 0` added to the gradient.
        seed: seed of the noise generators.

    Raises:
        ValueError: a hyper-parameter is out of range.

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(3))
        >>> opt = SGLD([w], lr=0.5, noise_multiplier=0.0)
        >>> w.grad = torch.ones(3)
        >>> _ = opt.step()
        >>> w.data.tolist()
        [-0.5, -0.5, -0.5]
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        noise_multiplier: float = 1e-2,
        *,
        max_grad_norm: float | None = None,
        projection_radius: float | None = None,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"Expected `lr` to be > 0, but got {lr!r}.")
        if not noise_multiplier >= 0:
            raise ValueError(
                f"Expected `noise_multiplier` to be >= 0, but got {noise_multiplier!r}."
            )
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(
                f"Expected `max_grad_norm` to be > 0 or None, but got {max_grad_norm!r}."
            )
        if projection_radius is not None and not projection_radius > 0:
            raise ValueError(
                f"Expected `projection_radius` to be > 0 or None, but got {projection_radius!r}."
            )
        if not weight_decay >= 0:
            raise ValueError(f"Expected `weight_decay` to be >= 0, but got {weight_decay!r}.")
        defaults = {
            "lr": lr,
            "noise_multiplier": noise_multiplier,
            "max_grad_norm": max_grad_norm,
            "projection_radius": projection_radius,
            "weight_decay": weight_decay,
        }
        super().__init__(params, defaults)
        self.seed = int(seed)
        self._generators: dict[str, torch.Generator] = {}
        self._pending_generator_states: dict[str, Tensor] = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            pending = self._pending_generator_states.pop(key, None)
            if pending is not None:
                gen.set_state(pending)
            self._generators[key] = gen
        return gen

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Take one SGLD step (THEORY §1).

        Args:
            closure: optional closure re-evaluating the loss (called with gradients enabled).

        Returns:
            The closure's loss, if a closure was given.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, sigma = group["lr"], group["noise_multiplier"]
            grads = [
                p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
                for p in params
            ]
            if group["max_grad_norm"] is not None:
                total = torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(g) for g in grads])
                )
                # Scale on device (no host sync): factor = min(1, C / ||g||).
                factor = (group["max_grad_norm"] / (total + 1e-12)).clamp(max=1.0)
                grads = [g * factor.to(g.device) for g in grads]
            noise_std = math.sqrt(2.0 * lr) * sigma
            for p, g in zip(params, grads, strict=True):
                p.add_(g, alpha=-lr)
                if noise_std > 0:
                    noise = torch.randn(
                        p.shape, generator=self._generator(p.device), device=p.device, dtype=p.dtype
                    )
                    p.add_(noise, alpha=noise_std)
            if group["projection_radius"] is not None:
                norm = torch.linalg.vector_norm(
                    torch.stack([torch.linalg.vector_norm(p) for p in group["params"]])
                )
                factor = (group["projection_radius"] / (norm + 1e-12)).clamp(max=1.0)
                for p in group["params"]:
                    p.mul_(factor.to(p.device))
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The optimizer state plus the noise generators' states (for exact resumption)."""
        state = super().state_dict()
        gens = {key: gen.get_state() for key, gen in self._generators.items()}
        gens.update({k: v for k, v in self._pending_generator_states.items() if k not in gens})
        state["generator_states"] = gens
        state["seed"] = self.seed
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the optimizer state and the noise generators (applied lazily per device)."""
        state_dict = dict(state_dict)
        gens = state_dict.pop("generator_states", {})
        self.seed = int(state_dict.pop("seed", self.seed))
        super().load_state_dict(state_dict)
        self._generators.clear()
        self._pending_generator_states = {k: v.cpu() for k, v in gens.items()}
