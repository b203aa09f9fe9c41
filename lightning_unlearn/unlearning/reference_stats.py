"""Per-example IN / OUT distributions of reference models, and targets for any forget set.

:class:`ReferenceStatistics` holds, for K reference models and N training examples, the loss
and the logit-scaled confidence ``phi = log p_y - log(1 - p_y)`` of every (model, example)
pair with the IN mask. The OUT distribution of example ``i`` (the models that never trained on
it) is its per-example oracle (THEORY §6): :meth:`ReferenceStatistics.targets` turns it into a
tolerance band for every example of any forget set, with no retraining per request.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_unlearn.evaluation.functional import (
    Band,
    BandRule,
    MaskedMoments,
    gaussian_likelihood_ratio,
    logit_scaled_confidence,
    masked_moments,
    per_example_logits,
    tolerance_band,
)
from lightning_unlearn.evaluation.functional.adapters import AdapterLike
from lightning_unlearn.integrity import atomic_write
from lightning_unlearn.validation import check_forget_ids

__all__ = ["ExampleTargets", "Metric", "ReferenceStatistics", "compute_statistics", "score_model"]

Metric = Literal["phi", "loss"]


def score_model(
    model: nn.Module, dataloader: Any, *, batch_adapter: AdapterLike | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """``(phi [n], loss [n], sample_ids [n])`` of one model over ``dataloader`` (eval mode).

    ``phi`` is :func:`~lightning_unlearn.evaluation.functional.logit_scaled_confidence`, the
    loss the cross-entropy, both from float32 (or wider) logits.
    """
    logits, targets, ids = per_example_logits(model, dataloader, batch_adapter=batch_adapter)
    z = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    phi = logit_scaled_confidence(z, targets)
    loss = F.cross_entropy(z, targets.long(), reduction="none")
    return phi, loss, ids


@dataclasses.dataclass(frozen=True)
class ExampleTargets:
    """Per-example targets of a forget set from the reference models' OUT distributions.

    Attributes:
        sample_ids: ``[E]`` the forget set's ids.
        metric: ``"phi"`` or ``"loss"``.
        band: :class:`~lightning_unlearn.evaluation.functional.Band` of each example ``[E]``.
        out: OUT mean / std / count of each example ``[E]``.
        inside: IN mean / std / count of each example ``[E]``.
    """

    sample_ids: Tensor
    metric: str
    band: Band
    out: MaskedMoments
    inside: MaskedMoments


@dataclasses.dataclass(frozen=True)
class ReferenceStatistics:
    """Loss and confidence of K reference models on N examples, with the IN mask.

    Attributes:
        phi: ``[K, N]`` float64 logit-scaled confidence (NaN where not evaluated).
        loss: ``[K, N]`` float64 cross-entropy.
        in_mask: ``[K, N]`` booleans: model ``k`` trained on example ``i``.

    Example:
        >>> import torch
        >>> phi = torch.tensor([[3.0, 1.0], [1.0, 3.0], [4.0, 0.0], [0.0, 4.0]])
        >>> mask = torch.tensor([[True, False], [False, True], [True, False], [False, True]])
        >>> stats = ReferenceStatistics(phi.double(), -phi.double(), mask)
        >>> stats.out_moments("phi").mean.tolist(), stats.in_moments("phi").mean.tolist()
        ([0.5, 0.5], [3.5, 3.5])
    """

    phi: Tensor
    loss: Tensor
    in_mask: Tensor

    def _values(self, metric: Metric) -> Tensor:
        if metric not in ("phi", "loss"):
            raise ValueError(f"Expected `metric` 'phi' or 'loss', but got {metric!r}.")
        return self.phi if metric == "phi" else self.loss

    def out_moments(self, metric: Metric = "phi") -> MaskedMoments:
        """Per-example moments over the models that did NOT train on the example."""
        values = self._values(metric)
        return masked_moments(values, ~self.in_mask & ~values.isnan())

    def in_moments(self, metric: Metric = "phi") -> MaskedMoments:
        """Per-example moments over the models that trained on the example."""
        values = self._values(metric)
        return masked_moments(values, self.in_mask & ~values.isnan())

    def targets(
        self,
        forget_ids: Sequence[int] | Tensor,
        *,
        metric: Metric = "phi",
        rule: BandRule = "zscore",
        z: float = 2.0,
        min_models: int = 3,
    ) -> ExampleTargets:
        """Per-example targets for the forget set ``forget_ids``: its examples' OUT bands.

        The band of example ``i`` is :func:`~lightning_unlearn.evaluation.functional.
        tolerance_band` of its values under the OUT models (THEORY §6): the range of an
        unlearned model's value that models never trained on ``i`` produce.

        The ids enter here (:func:`~lightning_unlearn.validation.check_forget_ids`): the
        targets come sorted by id.

        Raises:
            ForgetSetError: invalid ids (not integers, duplicated, outside the reference set).
            MeasurementError: some example has fewer than ``min_models`` OUT models.
        """
        ids = check_forget_ids(forget_ids, self.in_mask.shape[1]).to(self.in_mask.device)
        values = self._values(metric)[:, ids]
        out_mask = ~self.in_mask[:, ids] & ~values.isnan()
        band = tolerance_band(
            torch.nan_to_num(values), rule=rule, z=z, mask=out_mask, min_oracles=min_models
        )
        return ExampleTargets(
            sample_ids=ids,
            metric=metric,
            band=band,
            out=masked_moments(values, out_mask),
            inside=masked_moments(values, self.in_mask[:, ids] & ~values.isnan()),
        )

    def lira_scores(
        self, phi: Tensor, sample_ids: Tensor | None = None, *, global_std: bool = True
    ) -> Tensor:
        """U-LiRA-style log likelihood ratio (IN vs OUT Gaussians) of a tested model's ``phi``.

        With few reference models the per-example standard deviations are too noisy (four
        OUT models give a spread that can be ~0, and the Gaussian ratio then explodes); LiRA's
        "fixed variance" variant (Carlini et al. 2022, used with few shadow models) replaces
        them by one IN and one OUT standard deviation for all examples, the root mean of the
        per-example variances. ``global_std=False`` keeps the per-example ones.

        Args:
            phi: ``[E]`` the tested (e.g. unlearned) model's confidence on ``sample_ids``.
            sample_ids: ``[E]`` ids (default ``0 .. N-1``).
            global_std: use the fixed (data-set-wide) standard deviations.

        Returns:
            ``[E]`` float64 scores; > 0 means "looks trained on" (Carlini et al. 2022).
        """
        ids = torch.arange(self.phi.shape[1]) if sample_ids is None else sample_ids.long()
        ids = ids.to(self.phi.device)
        inside, out = self.in_moments("phi"), self.out_moments("phi")
        in_std, out_std = inside.std[ids], out.std[ids]
        if global_std:
            in_std = torch.full_like(in_std, float(inside.std.square().nanmean().sqrt()))
            out_std = torch.full_like(out_std, float(out.std.square().nanmean().sqrt()))
        return gaussian_likelihood_ratio(
            phi.to(self.phi.device), inside.mean[ids], in_std, out.mean[ids], out_std
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the tables atomically (``torch.save`` of tensors)."""
        payload = {"version": 1, "phi": self.phi, "loss": self.loss, "in_mask": self.in_mask}
        with atomic_write(Path(path), "wb") as fh:
            torch.save(payload, fh)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReferenceStatistics:
        """Read tables written by :meth:`save` (``weights_only=True``)."""
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
        return cls(payload["phi"], payload["loss"], payload["in_mask"])


def compute_statistics(
    modules: Sequence[nn.Module],
    in_mask: Tensor,
    dataloader: Any,
    *,
    batch_adapter: AdapterLike | None = None,
) -> ReferenceStatistics:
    """Evaluate every model on ``dataloader`` and lay the results out as ``[K, N]`` tables.

    Raises:
        ValueError: a sample id outside ``[0, N)``.
    """
    k, n = in_mask.shape
    phi = torch.full((k, n), float("nan"), dtype=torch.float64)
    loss = torch.full((k, n), float("nan"), dtype=torch.float64)
    for j, module in enumerate(modules):
        p, ell, ids = score_model(module, dataloader, batch_adapter=batch_adapter)
        ids = ids.long().cpu()
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
            raise ValueError(
                f"Expected sample ids in [0, {n}) (the reference models' training set), but got "
                f"[{int(ids.min())}, {int(ids.max())}]; evaluate on that training set."
            )
        phi[j, ids] = p.double().cpu()
        loss[j, ids] = ell.double().cpu()
    return ReferenceStatistics(phi, loss, in_mask.cpu())
