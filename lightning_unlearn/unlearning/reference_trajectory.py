"""Reference models continued like the unlearned model: per-example targets at matched compute.

An unlearned model after ``k`` steps of fine-tuning has seen the original recipe *plus* ``k``
steps. Its like-for-like per-example target is therefore not an OUT reference model's end state
but that model continued for the same ``k`` steps with the same method on its own training half
(the examples it is IN on), with its OUT examples read at every step (THEORY §6; issue 14).
:func:`continue_reference_models` does this with :func:`~lightning_unlearn.unlearning.
trajectory.record_unlearning` (one Lightning run per model, the OUT half as the recorded
"forget" set, the IN half as the retain set); :class:`ReferenceTrajectories` turns the result
into a band per example and per step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.evaluation.functional import Band, BandRule, trajectory_band
from lightning_unlearn.unlearning.reference import ReferenceModels
from lightning_unlearn.unlearning.trajectory import record_unlearning

__all__ = ["ReferenceTrajectories", "continue_reference_models"]


@dataclasses.dataclass(frozen=True)
class ReferenceTrajectories:
    """Every reference model's OUT examples at every step of its continuation.

    Attributes:
        phi: ``[K, T, N]`` float64 logit-scaled confidence of example ``i`` under model ``k``
            after ``t`` continued steps; NaN where model ``k`` trained on ``i`` (IN).
        loss: ``[K, T, N]`` float64 cross-entropy, NaN where IN.
        in_mask: ``[K, N]`` booleans: model ``k`` trained on example ``i``.

    Example:
        >>> import torch
        >>> nan = float("nan")
        >>> phi = torch.tensor([[[nan, 1.0]], [[2.0, nan]], [[4.0, nan]], [[nan, 3.0]],
        ...                     [[3.0, nan]], [[nan, 5.0]]]).double()  # K=6, T=1, N=2
        >>> mask = phi[:, 0].isnan()
        >>> traj = ReferenceTrajectories(phi, phi, mask)
        >>> traj.targets([0, 1], rule="range").center.tolist()
        [[3.0], [3.0]]
    """

    phi: Tensor
    loss: Tensor
    in_mask: Tensor

    def targets(
        self,
        forget_ids: Sequence[int] | Tensor,
        *,
        metric: str = "phi",
        rule: BandRule = "zscore",
        z: float = 2.0,
        min_models: int = 3,
    ) -> Band:
        """``[E, T]`` band of each forget example at each step, from its OUT models.

        Raises:
            MeasurementError: some example has fewer than ``min_models`` OUT models.
            ValueError: ``metric`` is neither ``"phi"`` nor ``"loss"``.
        """
        if metric not in ("phi", "loss"):
            raise ValueError(f"Expected `metric` 'phi' or 'loss', but got {metric!r}.")
        ids = torch.as_tensor(forget_ids, dtype=torch.long)
        values = (self.phi if metric == "phi" else self.loss)[:, :, ids]  # [K, T, E]
        return trajectory_band(
            values.transpose(1, 2),  # [K, E, T]
            rule=rule,
            z=z,
            mask=~self.in_mask[:, ids],
            min_oracles=min_models,
        )


def continue_reference_models(
    refs: ReferenceModels,
    dataset: Dataset,
    *,
    max_steps: int,
    method: str = "finetune",
    batch_size: int = 64,
    seed: int = 0,
    trainer_kwargs: Mapping[str, Any] | None = None,
    **unlearning_kwargs: Any,
) -> ReferenceTrajectories:
    """Continue every reference model for ``max_steps`` steps on its IN half, reading its OUT
    half at every step (the per-example oracles at matched compute, THEORY §6).

    Model ``k`` runs :func:`~lightning_unlearn.unlearning.trajectory.record_unlearning` with its
    OUT examples as the recorded set and its IN examples as the retain set, with the same
    ``method`` and hyper-parameters as the unlearning run it is compared with. The reference
    models themselves are not modified (copies are continued).

    Args:
        refs: the trained reference models (:func:`~lightning_unlearn.unlearning.
            train_reference_models`).
        dataset: their training set (ids ``0 .. N-1`` as in ``refs.in_mask``).
        max_steps: continued steps (the unlearning run's cap).
        method: an :class:`~lightning_unlearn.unlearning.UnlearningModule` method.
        batch_size: batch size of the continuation (the unlearning run's).
        seed: seed of model ``k``'s run is ``seed + k``.
        trainer_kwargs: ``Trainer`` arguments.
        **unlearning_kwargs: ``lr`` and the method's other arguments.

    Returns:
        :class:`ReferenceTrajectories` with ``T = max_steps + 1`` steps (step 0: the model as
        trained).
    """
    k, n = refs.in_mask.shape
    phi = torch.full((k, max_steps + 1, n), float("nan"), dtype=torch.float64)
    loss = torch.full_like(phi, float("nan"))
    for j, module in enumerate(refs.modules):
        out_ids = torch.nonzero(~refs.in_mask[j]).flatten()
        frdm = ForgetRetainDataModule(
            dataset, out_ids, heldout=None, batch_size=batch_size, seed=seed + j
        )
        traj, _ = record_unlearning(
            module,  # type: ignore[arg-type]
            frdm,
            max_steps=max_steps,
            method=method,
            seed=seed + j,
            trainer_kwargs=trainer_kwargs,
            **unlearning_kwargs,
        )
        phi[j][:, traj.sample_ids] = traj.phi
        loss[j][:, traj.sample_ids] = traj.loss
    return ReferenceTrajectories(phi, loss, refs.in_mask.clone())
