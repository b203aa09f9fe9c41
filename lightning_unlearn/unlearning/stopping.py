"""Loss-calibrated stopping: stop unlearning once the forget set looks like held-out data."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import lightning.pytorch as pl
from torch import nn
from typing_extensions import override

from lightning_unlearn.evaluation.functional import loss_mia_auroc, per_example_losses
from lightning_unlearn.evaluation.functional.adapters import AdapterLike
from lightning_unlearn.unlearning._stop_state import TrajectoryStopCallback

__all__ = ["LossCalibratedStopping"]

Criterion = Literal["auroc", "loss_gap"]
_STATE_VERSION = 1


class LossCalibratedStopping(TrajectoryStopCallback):
    r"""Stop an unlearning run when the forget set's losses look like those of unseen data.

    Every ``check_every_n_steps`` optimizer steps (and once before the first step), the
    per-example losses (read through ``batch_adapter``) of the forget set :math:`F` and of a
    held-out set :math:`H` are computed (eval mode, no gradients) and compared (THEORY §6):

    * ``criterion="auroc"``: the loss-threshold membership attack's AUROC between :math:`F`
      and :math:`H`; the rule is satisfied when
      :math:`\mathrm{AUROC}(F, H) - \tfrac12 \le \tau`.
    * ``criterion="loss_gap"``: the gap of the mean losses; satisfied when
      :math:`\bar\ell_H - \bar\ell_F \le \tau`.

    Failure mode: the reference is *typical* held-out data, not data of the forget set's own
    difficulty. A set of atypical (high-P) examples has losses above typical held-out losses
    even under a model that never saw it, so the rule fires at step 0 without unlearning
    anything; a set of easy (low-P) examples has losses below them even for the oracle, so it
    never fires. With reference models, use the per-example
    :class:`~lightning_unlearn.unlearning.calibrated_stopping.CalibratedStopping` instead
    (``docs/calibrated_unlearning.md``).

    Both rules are one-sided: a forget set that has become *less* member-like than held-out
    data (AUROC below 0.5, mean loss above held-out) also counts as unlearned, so a check that
    lands just past the crossing still stops. The decision goes through
    ``trainer.strategy.reduce_boolean_decision`` so all ranks stop at the same step (every rank
    evaluates the same full forget and held-out sets on identical replicas).

    Each check is appended to :attr:`trajectory` and logged through the trainer's loggers as
    ``unlearn/forget_loss``, ``unlearn/heldout_loss``, ``unlearn/loss_gap`` and
    ``unlearn/mia_auroc`` at the current step. The trajectory and the stopping step are saved
    in checkpoints.

    Args:
        check_every_n_steps: steps between checks.
        criterion: ``"auroc"`` or ``"loss_gap"``.
        tolerance: :math:`\tau \ge 0`.
        min_steps: never stop before this many steps.
        forget_dataloader: loader of the forget set; default
            ``trainer.datamodule.forget_dataloader()``.
        heldout_dataloader: loader of the held-out set; default
            ``trainer.datamodule.heldout_dataloader()``.
        check_on_train_start: also check before the first step (a forget set that already
            looks unseen then needs 0 steps).
        batch_adapter: how to read a batch and get per-example losses (see
            :mod:`~lightning_unlearn.evaluation.functional.adapters`); default: the
            ``batch_adapter`` of the :class:`~lightning_unlearn.UnlearningModule` being trained,
            else ``(x, y, ...)`` classification or Hugging Face-style dicts.

    Raises:
        ValueError: an argument is out of range.

    Example:
        >>> stop = LossCalibratedStopping(check_every_n_steps=5, criterion="auroc", tolerance=0.05)
        >>> stop.is_satisfied({"mia_auroc": 0.53, "loss_gap": 0.4})
        True
    """

    _state_version = _STATE_VERSION

    def __init__(
        self,
        check_every_n_steps: int = 10,
        criterion: Criterion = "auroc",
        tolerance: float = 0.05,
        *,
        min_steps: int = 0,
        forget_dataloader: Iterable[Any] | None = None,
        heldout_dataloader: Iterable[Any] | None = None,
        check_on_train_start: bool = True,
        batch_adapter: AdapterLike | None = None,
    ) -> None:
        if not isinstance(check_every_n_steps, int) or check_every_n_steps < 1:
            raise ValueError(
                f"Expected `check_every_n_steps` to be a positive int, but got "
                f"{check_every_n_steps!r}."
            )
        if criterion not in ("auroc", "loss_gap"):
            raise ValueError(
                f"Expected `criterion` to be 'auroc' or 'loss_gap', but got {criterion!r}."
            )
        if not tolerance >= 0:
            raise ValueError(f"Expected `tolerance` to be >= 0, but got {tolerance!r}.")
        if not isinstance(min_steps, int) or min_steps < 0:
            raise ValueError(f"Expected `min_steps` to be an int >= 0, but got {min_steps!r}.")
        self.check_every_n_steps = check_every_n_steps
        self.criterion = criterion
        self.tolerance = float(tolerance)
        self.min_steps = min_steps
        self.check_on_train_start = check_on_train_start
        self.batch_adapter = batch_adapter
        self._forget_loader = forget_dataloader
        self._heldout_loader = heldout_dataloader
        self.trajectory = []
        self.stopped_step = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            criterion=self.criterion,
            tolerance=self.tolerance,
            check_every_n_steps=self.check_every_n_steps,
        )

    def is_satisfied(self, record: dict[str, Any]) -> bool:
        """Whether one check's record meets the rule (overridable).

        Args:
            record: a trajectory entry with ``mia_auroc`` and ``loss_gap``.

        Returns:
            True when the forget set is within ``tolerance`` of held-out data.
        """
        if self.criterion == "auroc":
            return bool(record["mia_auroc"] - 0.5 <= self.tolerance)
        return bool(record["loss_gap"] <= self.tolerance)

    def _loaders(self, trainer: pl.Trainer) -> tuple[Iterable[Any], Iterable[Any]]:
        dm = getattr(trainer, "datamodule", None)
        forget, heldout = self._forget_loader, self._heldout_loader
        if forget is None and dm is not None and hasattr(dm, "forget_dataloader"):
            forget = dm.forget_dataloader()
        if heldout is None and dm is not None and hasattr(dm, "heldout_dataloader"):
            heldout = dm.heldout_dataloader()
        if forget is None or heldout is None:
            raise ValueError(
                "Expected forget and held-out loaders for `LossCalibratedStopping`, but got "
                "none; pass `forget_dataloader=` and `heldout_dataloader=`, or fit with a "
                "`ForgetRetainDataModule(..., heldout=...)`."
            )
        return forget, heldout

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Run one check now: compute, record, log and (if satisfied) stop the trainer.

        Args:
            trainer: the running trainer.
            pl_module: the module being trained (an ``UnlearningModule`` is evaluated through
                its wrapped ``.module``).

        Returns:
            The trajectory entry of this check.
        """
        inner = getattr(pl_module, "module", None)
        model: nn.Module = inner if isinstance(inner, nn.Module) else pl_module
        forget, heldout = self._loaders(trainer)
        adapter = self.batch_adapter or getattr(pl_module, "batch_adapter", None)
        forget_losses, _, _ = per_example_losses(model, forget, batch_adapter=adapter)
        heldout_losses, _, _ = per_example_losses(model, heldout, batch_adapter=adapter)
        # One host sync per check (every n steps), not per step.
        forget_mean = forget_losses.double().mean().item()
        heldout_mean = heldout_losses.double().mean().item()
        record: dict[str, Any] = {
            "step": int(trainer.global_step),
            "forget_loss": forget_mean,
            "heldout_loss": heldout_mean,
            "loss_gap": heldout_mean - forget_mean,
            "mia_auroc": loss_mia_auroc(forget_losses, heldout_losses).item(),
        }
        record["satisfied"] = self.is_satisfied(record)
        self.trajectory.append(record)
        metrics = {f"unlearn/{k}": float(record[k]) for k in ("forget_loss", "heldout_loss")}
        metrics["unlearn/loss_gap"] = float(record["loss_gap"])
        metrics["unlearn/mia_auroc"] = float(record["mia_auroc"])
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=record["step"])
        decision = record["satisfied"] and record["step"] >= self.min_steps
        if trainer.strategy.reduce_boolean_decision(decision, all=True):
            trainer.should_stop = True
            self.stopped_step = record["step"]
        return record

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._resumed_stopped(trainer):
            return
        if self.check_on_train_start and trainer.global_step == 0 and not self.trajectory:
            self.check(trainer, pl_module)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if step > 0 and step % self.check_every_n_steps == 0:
            if self.trajectory and self.trajectory[-1]["step"] == step:
                return  # already checked at this step (gradient accumulation)
            self.check(trainer, pl_module)
