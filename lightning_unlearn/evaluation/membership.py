"""Membership inference, forget quality and prediction divergence as torchmetrics ``Metric``s."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from lightning_unlearn.evaluation.functional.membership import (
    _binary_auroc_compute,
    forget_quality_ks,
    prediction_divergence,
)

__all__ = ["ForgetQualityKS", "LossMembershipAUROC", "PredictionDivergence"]


class LossMembershipAUROC(Metric):
    """AUROC of the loss-threshold membership attack (THEORY §6; Yeom et al. 2018).

    ``update(losses, is_member)`` with per-example losses and a boolean membership flag;
    ``compute()`` equals
    :func:`~lightning_unlearn.evaluation.functional.loss_mia_auroc` on all data seen:

    .. math::

        \\mathrm{AUROC} = P(\\ell_{\\text{member}} < \\ell_{\\text{non-member}})
            + \\tfrac12 P(\\ell_{\\text{member}} = \\ell_{\\text{non-member}})

    Example:
        >>> import torch
        >>> metric = LossMembershipAUROC()
        >>> metric.update(torch.tensor([0.1, 0.5, 0.2, 0.15]), torch.tensor([1, 0, 1, 0]).bool())
        >>> metric.compute().item()
        0.75
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    losses: list[Tensor]
    is_member: list[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("losses", default=[], dist_reduce_fx="cat")
        self.add_state("is_member", default=[], dist_reduce_fx="cat")

    def update(self, losses: Tensor, is_member: Tensor) -> None:
        """Add per-example losses ``[B]`` and membership flags ``[B]`` (bool)."""
        if losses.shape != is_member.shape or losses.dim() != 1:
            raise ValueError(
                "Expected `losses` and `is_member` of the same shape [B], but got "
                f"{tuple(losses.shape)} and {tuple(is_member.shape)}."
            )
        self.losses.append(losses.detach().double())
        self.is_member.append(is_member.bool())

    def compute(self) -> Tensor:
        """The AUROC (float64 scalar); needs at least one member and one non-member."""
        losses, member = dim_zero_cat(self.losses), dim_zero_cat(self.is_member)
        if bool(member.all()) or not bool(member.any()):
            raise ValueError("Expected both members and non-members, but got only one group.")
        return _binary_auroc_compute(-losses[member], -losses[~member])


class ForgetQualityKS(Metric):
    """Two-sample KS test between forget-set losses of the unlearned model and of the oracle.

    ``update(unlearned_losses, oracle_losses)``; ``compute()`` returns
    ``{"statistic", "pvalue"}`` exactly as
    :func:`~lightning_unlearn.evaluation.functional.forget_quality_ks` on all data seen.

    Example:
        >>> import torch
        >>> metric = ForgetQualityKS()
        >>> metric.update(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.4, 0.5]))
        >>> metric.compute()["statistic"].item()
        1.0
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    unlearned: list[Tensor]
    oracle: list[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("unlearned", default=[], dist_reduce_fx="cat")
        self.add_state("oracle", default=[], dist_reduce_fx="cat")

    def update(self, unlearned_losses: Tensor, oracle_losses: Tensor) -> None:
        """Add forget-set losses of the unlearned model and of the oracle (1-D each)."""
        self.unlearned.append(unlearned_losses.detach().double().flatten())
        self.oracle.append(oracle_losses.detach().double().flatten())

    def compute(self) -> dict[str, Tensor]:
        """``{"statistic": D, "pvalue": p}`` as float64 scalars."""
        result = forget_quality_ks(dim_zero_cat(self.unlearned), dim_zero_cat(self.oracle))
        return {"statistic": result.statistic, "pvalue": result.pvalue}


class PredictionDivergence(Metric):
    """Mean KL or JS divergence between a model's and the oracle's predictive distributions.

    ``update(logits, oracle_logits)``; ``compute()`` equals
    :func:`~lightning_unlearn.evaluation.functional.prediction_divergence` with
    ``reduction="mean"`` over all examples seen.

    Args:
        kind: ``"kl"`` for KL(model || oracle) or ``"js"`` for Jensen-Shannon.
        kwargs: passed to :class:`torchmetrics.Metric`.

    Example:
        >>> import torch
        >>> metric = PredictionDivergence(kind="js")
        >>> metric.update(torch.zeros(2, 3), torch.zeros(2, 3))
        >>> metric.compute().item()
        0.0
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    divergence_sum: Tensor
    total: Tensor

    def __init__(self, kind: Literal["kl", "js"] = "kl", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kind not in ("kl", "js"):
            raise ValueError(f"Expected `kind` 'kl' or 'js', but got {kind!r}.")
        self.kind: Literal["kl", "js"] = kind
        self.add_state("divergence_sum", torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("total", torch.zeros((), dtype=torch.float64), "sum")

    def update(self, logits: Tensor, oracle_logits: Tensor) -> None:
        """Add ``[B, C]`` logits of the model and of the oracle on the same examples."""
        values = prediction_divergence(logits, oracle_logits, kind=self.kind, reduction="none")
        self.divergence_sum += values.double().sum()
        self.total += values.numel()

    def compute(self) -> Tensor:
        """Mean divergence (float64 scalar)."""
        return self.divergence_sum / self.total
