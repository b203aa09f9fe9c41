"""Stochastic gradient Langevin dynamics in the THEORY §1 SGLD convention [C24]."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from lightning_unlearn.errors import InvalidArgumentError
from lightning_unlearn.validation import check_float, check_optional

__all__ = ["SGLD", "check_sgld_sigma"]


def check_sgld_sigma(sigma: object, name: str = "sigma") -> float:
    """The SGLD σ: a finite number > 0; 0 names plain gradient descent as the fix.

    Args:
        sigma: the value.
        name: the argument's name in the message (``sgld_sigma`` in ``UnlearningModule``).

    Returns:
        ``sigma`` as a float.

    Raises:
        InvalidArgumentError: ``sigma`` is not a finite number > 0.
    """
    if isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and sigma == 0:
        raise InvalidArgumentError(
            f"Expected `{name}` of SGLD to be > 0, but got {sigma!r}: SGLD without noise is "
            'plain gradient descent; use `method="finetune"` (UnlearningModule) or '
            "`torch.optim.SGD`."
        )
    return check_float(name, sigma)


class SGLD(Optimizer):
    r"""Noisy gradient descent: a gradient step plus Gaussian noise of scale ``sqrt(2 lr) sigma``.

    The update is the SGLD / Langevin convention of THEORY §1 (Chien et al. 2024, "Langevin
    Unlearning", [C24]):

    .. math::

        \theta \leftarrow \Pi_R\Big(\theta - \eta\,\mathrm{clip}_C\big(\nabla L_B(\theta)
            + \lambda \theta\big) + \sqrt{2\eta\sigma^2}\;\xi\Big),
        \qquad \xi \sim \mathcal N(0, I),

    where :math:`\nabla L_B` is the gradient in ``p.grad`` (the mean over the batch when the
    loss is a batch mean), :math:`\eta` = ``lr``, :math:`\sigma` = ``sigma``,
    :math:`\lambda` = ``weight_decay``, and so the noise standard deviation per coordinate is
    :math:`s = \sigma\sqrt{2\eta}` (THEORY §1: the per-instance ratio is then
    :math:`r = \sqrt{\eta/2}\,\|g_x\| / (B\sigma)`).

    ``sigma`` is the σ of *this* noisy process; it is not the accounting ``noise_multiplier`` of
    the training run (the monitor's and the ledger's) nor the ``langevin_sigma`` of the THEORY §5
    bound (:class:`~lightning_unlearn.accounting.UnlearningConstants`), although unlearning with
    the bound's guarantee runs SGLD at that σ. ``sigma = 0`` is refused: a noiseless Langevin
    step is plain gradient descent, which is ``torch.optim.SGD`` (``method="finetune"`` of
    :class:`~lightning_unlearn.UnlearningModule`), and no THEORY §5 budget holds for it.

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
        sigma: the Langevin noise scale :math:`\sigma > 0` (for :math:`\sigma = 0` use
            ``torch.optim.SGD``).
        max_grad_norm: optional bound :math:`C > 0` on the joint norm of a group's gradients.
        projection_radius: optional radius :math:`R > 0` of the parameter ball.
        weight_decay: L2 coefficient :math:`\lambda \ge 0` added to the gradient.
        seed: seed of the noise generators.

    Raises:
        InvalidArgumentError: a hyper-parameter is out of range (``sigma = 0`` included; the
            message names ``method="finetune"`` / ``torch.optim.SGD``).

    Example:
        >>> import torch
        >>> w = torch.nn.Parameter(torch.zeros(3))
        >>> opt = SGLD([w], lr=0.5, sigma=1e-3, seed=0)
        >>> w.grad = torch.ones(3)
        >>> _ = opt.step()
        >>> [round(v, 2) for v in w.data.tolist()]
        [-0.5, -0.5, -0.5]
        >>> SGLD([w], lr=0.5, sigma=0.0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_unlearn.errors.InvalidArgumentError: Expected `sigma` of SGLD to be > 0, ...
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-2,
        sigma: float = 1e-2,
        *,
        max_grad_norm: float | None = None,
        projection_radius: float | None = None,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        check_float("lr", lr)
        check_sgld_sigma(sigma)
        check_optional("max_grad_norm", max_grad_norm, check_float)
        check_optional("projection_radius", projection_radius, check_float)
        check_float("weight_decay", weight_decay, inclusive=True)
        defaults = {
            "lr": lr,
            "sigma": sigma,
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
            lr, sigma = group["lr"], group["sigma"]
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
