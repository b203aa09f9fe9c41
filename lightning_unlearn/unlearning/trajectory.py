"""Record the forget set's per-example confidence and loss at every unlearning step.

Steps-to-unlearn must not depend on a check interval (issue 14; THEORY §6): this callback reads
the forget set after *every* optimizer step (forget sets are small; one forward pass over them
per step), and :func:`~lightning_unlearn.evaluation.functional.first_hold_step` refuses
trajectories with gaps. :func:`record_unlearning` runs one unlearning job with it.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from typing_extensions import override

from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.unlearning.module import UnlearningModule
from lightning_unlearn.unlearning.reference_stats import score_model

__all__ = ["ForgetTrajectoryRecorder", "UnlearningTrajectory", "record_unlearning"]

_STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class UnlearningTrajectory:
    """The forget set at every step ``0 .. T-1`` of one unlearning run.

    Attributes:
        steps: ``[T]`` step numbers (consecutive, from 0: before the first step).
        phi: ``[T, E]`` logit-scaled confidence of every forget example.
        loss: ``[T, E]`` cross-entropy of every forget example.
        sample_ids: ``[E]`` the forget examples' ids.
    """

    steps: Tensor
    phi: Tensor
    loss: Tensor
    sample_ids: Tensor

    def set_metric(self, metric: str = "phi") -> Tensor:
        """``[T]`` the forget set's mean ``phi`` (or mean loss) at every step."""
        values = self.phi if metric == "phi" else self.loss
        return values.mean(dim=1)


class ForgetTrajectoryRecorder(Callback):
    """Evaluate the forget set before the first step and after every optimizer step.

    Each record is kept on the model's device (no host synchronisation per step) and stacked
    once by :meth:`trajectory`. Under DDP every rank evaluates the same full forget set on
    identical replicas. An ``UnlearningModule`` is evaluated through its ``.module``.

    Args:
        forget_dataloader: the forget set (default: ``trainer.datamodule.forget_dataloader()``).

    Example:
        >>> recorder = ForgetTrajectoryRecorder()
        >>> recorder.records
        []
    """

    def __init__(self, forget_dataloader: Iterable[Any] | None = None) -> None:
        self._loader = forget_dataloader
        self.records: list[tuple[int, Tensor, Tensor, Tensor]] = []

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = int(trainer.global_step)
        if self.records and self.records[-1][0] == step:
            return  # no optimizer step since the last record (gradient accumulation)
        loader = self._loader
        if loader is None:
            loader = trainer.datamodule.forget_dataloader()  # type: ignore[attr-defined]
        inner = getattr(pl_module, "module", None)
        model: nn.Module = inner if isinstance(inner, nn.Module) else pl_module
        phi, loss, ids = score_model(model, loader)
        self.records.append((step, phi.detach(), loss.detach(), ids.detach()))

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.records:
            self._record(trainer, pl_module)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._record(trainer, pl_module)

    def trajectory(self) -> UnlearningTrajectory:
        """The records as one :class:`UnlearningTrajectory` (on the CPU).

        Raises:
            ValueError: nothing recorded, or the records' sample ids differ.
        """
        if not self.records:
            raise ValueError("Expected recorded steps, but the recorder has none; fit first.")
        ids = self.records[0][3].cpu()
        for _, _, _, other in self.records:
            if not torch.equal(other.cpu(), ids):
                raise ValueError("Expected the same forget examples at every step.")
        return UnlearningTrajectory(
            steps=torch.tensor([r[0] for r in self.records], dtype=torch.long),
            phi=torch.stack([r[1] for r in self.records]).double().cpu(),
            loss=torch.stack([r[2] for r in self.records]).double().cpu(),
            sample_ids=ids.long(),
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "records": [(s, p.cpu(), ell.cpu(), i.cpu()) for s, p, ell, i in self.records],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version") != _STATE_VERSION or "records" not in state_dict:
            raise ValueError(
                f"Expected a ForgetTrajectoryRecorder state of version {_STATE_VERSION}, but got "
                f"{state_dict.get('version')!r}; resume without this callback's state."
            )
        self.records = [tuple(r) for r in state_dict["records"]]


def quiet_trainer_kwargs(
    trainer_kwargs: Mapping[str, Any] | None, max_steps: int
) -> dict[str, Any]:
    """``Trainer`` keywords of a measured unlearning run: ``max_steps`` steps, no logger,
    checkpoints, progress bar, summary or validation; ``trainer_kwargs`` override them."""
    settings: dict[str, Any] = {
        "max_steps": max_steps,
        "max_epochs": -1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    settings.update(trainer_kwargs or {})
    return settings


def record_unlearning(
    model: pl.LightningModule,
    frdm: ForgetRetainDataModule,
    *,
    max_steps: int,
    method: str = "finetune",
    seed: int = 0,
    trainer_kwargs: Mapping[str, Any] | None = None,
    **unlearning_kwargs: Any,
) -> tuple[UnlearningTrajectory, pl.LightningModule]:
    """Unlearn ``frdm``'s forget set from a copy of ``model`` for exactly ``max_steps`` steps.

    The forget set is recorded at steps ``0 .. max_steps`` (:class:`ForgetTrajectoryRecorder`).
    No early stop: the caller reads steps-to-unlearn from the trajectory
    (:func:`~lightning_unlearn.evaluation.functional.first_hold_step`).

    Args:
        model: the trained module (not modified: a deep copy is unlearned).
        frdm: the forget / retain split.
        max_steps: unlearning steps (>= 0; 0 records step 0 only).
        method: an :class:`UnlearningModule` method.
        seed: seed of the run (``seed_everything`` and the method's own seed).
        trainer_kwargs: ``Trainer`` arguments (defaults: quiet, single device).
        **unlearning_kwargs: arguments of :class:`UnlearningModule` (``lr``, ...).

    Returns:
        ``(trajectory, unlearned copy of the user's module)``.
    """
    if not isinstance(max_steps, int) or max_steps < 0:
        raise ValueError(f"Expected `max_steps` to be an int >= 0, but got {max_steps!r}.")
    pl.seed_everything(seed, verbose=False)
    student = copy.deepcopy(model)
    recorder = ForgetTrajectoryRecorder()
    if max_steps == 0:
        phi, loss, ids = score_model(student, frdm.forget_dataloader())
        recorder.records.append((0, phi, loss, ids))
        return recorder.trajectory(), student
    student.train()
    unlearner = UnlearningModule(student, method=method, seed=seed, **unlearning_kwargs)  # type: ignore[arg-type]
    settings = quiet_trainer_kwargs(trainer_kwargs, max_steps)
    settings["callbacks"] = [*settings.get("callbacks", []), recorder]
    pl.Trainer(**settings).fit(unlearner, datamodule=frdm)
    return recorder.trajectory(), unlearner.unlearned_module()
