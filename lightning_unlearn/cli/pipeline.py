"""The building blocks the commands share: train with the monitor, unlearn a forget set, retrain
an oracle, and evaluate a model on forget / retain / held-out data.

Everything here runs real Lightning ``Trainer`` s; the commands only choose settings and write
files.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from typing_extensions import override

from lightning_unlearn.accounting import DEFAULT_ALPHAS, PrivacyLedger, UnlearningConstants
from lightning_unlearn.callbacks import PerInstancePrivacyMonitor
from lightning_unlearn.data.modules import TensorSplitDataModule
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.evaluation.functional import (
    loss_barrier,
    loss_mia_auroc,
    per_example_losses,
)
from lightning_unlearn.models import ClassifierModule
from lightning_unlearn.unlearning.budget import compute_budget
from lightning_unlearn.unlearning.module import UnlearningModule
from lightning_unlearn.unlearning.oracle import train_oracle
from lightning_unlearn.unlearning.result import UnlearningResult
from lightning_unlearn.unlearning.stopping import LossCalibratedStopping

__all__ = [
    "BudgetSpec",
    "OracleMatchStopping",
    "TrainOutput",
    "evaluate_model",
    "make_trainer",
    "train_with_monitor",
    "unlearn_forget_set",
]


def make_trainer(
    *,
    max_epochs: int | None = None,
    max_steps: int = -1,
    logger: Logger | bool = False,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    **kwargs: Any,
) -> pl.Trainer:
    """A single-device Trainer with quiet defaults (no model summary; checkpoints only when a
    ``ModelCheckpoint`` is among ``callbacks``)."""
    return pl.Trainer(
        accelerator="auto",
        devices=1,
        max_epochs=max_epochs,
        max_steps=max_steps,
        logger=logger,
        callbacks=list(callbacks),
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=5,
        **kwargs,
    )


class _SnapshotCallback(Callback):
    """Keep a copy of the weights at the end of a given epoch (GraNd/EL2N are 'early' scores)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.state: dict[str, torch.Tensor] | None = None

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 == self.epoch:
            self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


@dataclasses.dataclass
class TrainOutput:
    """What :func:`train_with_monitor` returns."""

    model: ClassifierModule
    ledger: PrivacyLedger
    seconds: float
    early_state: dict[str, torch.Tensor] | None = None
    callbacks: list[Callback] = dataclasses.field(default_factory=list)


def train_with_monitor(
    model: ClassifierModule,
    dm: TensorSplitDataModule,
    *,
    epochs: int,
    noise_multiplier: float = 1.0,
    max_grad_norm: float | None = None,
    alphas: Sequence[int] = DEFAULT_ALPHAS,
    save_dir: str | Path | None = None,
    logger: Logger | bool = False,
    progress: bool = True,
    extra_callbacks: Sequence[Callback] = (),
    snapshot_epoch: int | None = None,
    checkpoint_dir: str | Path | None = None,
    ckpt_path: str | Path | None = None,
) -> TrainOutput:
    """Train ``model`` on ``dm`` with a :class:`PerInstancePrivacyMonitor` attached.

    Args:
        model: the classifier.
        dm: the data module (batches ``(x, y, sample_id)``).
        epochs: training epochs.
        noise_multiplier: nominal sigma of the monitor ("nominal" convention, THEORY §1).
        max_grad_norm: optional clipping bound of the accounting.
        alphas: Rényi orders tracked.
        save_dir: where the monitor writes ``privacy_ledger.pt`` / ``.csv`` (None: nowhere).
        logger: a Lightning logger (e.g. TensorBoard) or False.
        progress: show Lightning's progress bar.
        extra_callbacks: more callbacks (e.g. a difficulty monitor).
        snapshot_epoch: keep a copy of the weights after this epoch (1-based).
        checkpoint_dir: write a checksummed Lightning checkpoint there after every epoch
            (``epochNNNN-stepS.ckpt``, the latest kept, and ``last.ckpt``), atomically.
        ckpt_path: resume from this checkpoint (model, optimizer, loops and the monitor's
            ledger); verified against its embedded checksum first.

    Returns:
        The trained model, the ledger, the wall time and the optional early snapshot.
    """
    monitor = PerInstancePrivacyMonitor(
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        alphas=tuple(alphas),
        convention="nominal",
        save_dir=None if save_dir is None else str(save_dir),
    )
    callbacks: list[Callback] = [monitor, *extra_callbacks]
    snapshot = _SnapshotCallback(snapshot_epoch) if snapshot_epoch else None
    if snapshot is not None:
        callbacks.append(snapshot)
    plugins: list[Any] = []
    if checkpoint_dir is not None or ckpt_path is not None:
        from lightning_unlearn.cli.checkpointing import ChecksummedCheckpointIO

        plugins.append(ChecksummedCheckpointIO())
    if checkpoint_dir is not None:
        callbacks.append(
            ModelCheckpoint(
                dirpath=str(checkpoint_dir),
                filename="epoch{epoch:04d}-step{step}",
                auto_insert_metric_name=False,
                every_n_epochs=1,
                save_top_k=1,
                save_last=True,
                save_on_train_epoch_end=True,
                enable_version_counter=False,
            )
        )
    trainer = make_trainer(
        max_epochs=epochs, logger=logger, callbacks=callbacks, progress=progress, plugins=plugins
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm, ckpt_path=None if ckpt_path is None else str(ckpt_path))
    seconds = time.perf_counter() - start
    ledger = monitor.ledger.to("cpu")
    return TrainOutput(
        model=model,
        ledger=ledger,
        seconds=seconds,
        early_state=None if snapshot is None else snapshot.state,
        callbacks=list(extra_callbacks),
    )


def evaluate_model(model: torch.nn.Module, frdm: ForgetRetainDataModule) -> dict[str, float | None]:
    """Loss and accuracy on forget / retain / held-out sets and the forget-vs-held-out MIA AUROC."""
    out: dict[str, float | None] = {}
    losses = {}
    loaders = {"forget": frdm.forget_dataloader(), "retain": frdm.retain_dataloader()}
    if frdm.heldout_set is not None:
        loaders["heldout"] = frdm.heldout_dataloader()
    for name, loader in loaders.items():
        loss, _, correct = per_example_losses(model, loader)
        losses[name] = loss
        out[f"{name}_loss"] = float(loss.double().mean())
        out[f"{name}_acc"] = float(correct.double().mean())
    if "heldout" in losses:
        out["mia_auroc"] = float(loss_mia_auroc(losses["forget"], losses["heldout"]))
    return out


def forget_set_barrier(
    model_a: torch.nn.Module, model_b: torch.nn.Module, frdm: ForgetRetainDataModule
) -> float:
    """Loss barrier (THEORY §6) between two models on the forget set."""
    barrier, _ = loss_barrier(model_a, model_b, frdm.forget_dataloader(), num_points=11)
    return float(barrier)


class OracleMatchStopping(LossCalibratedStopping):
    """Stop when the forget set's mean loss is within ``tau`` of the oracle's (THEORY §6).

    The check schedule, logging and cross-rank decision are those of
    :class:`LossCalibratedStopping`; only the rule differs. Used by ``reproduce`` to measure
    steps-to-unlearn without running past the step where the oracle's level is reached.
    """

    def __init__(
        self,
        oracle_forget_loss: float,
        tau: float,
        check_every_n_steps: int,
        heldout_dataloader: Any = None,
    ) -> None:
        super().__init__(
            check_every_n_steps=check_every_n_steps,
            tolerance=tau,
            heldout_dataloader=heldout_dataloader,
        )
        self.oracle_forget_loss = float(oracle_forget_loss)

    @override
    def is_satisfied(self, record: dict[str, Any]) -> bool:
        return abs(record["forget_loss"] - self.oracle_forget_loss) <= self.tolerance


@dataclasses.dataclass
class BudgetSpec:
    """How the step budget is set: fixed ``steps``, or THEORY §5 ``constants``."""

    steps: int | None = None
    constants: UnlearningConstants | None = None
    aggregate: str = "max"
    max_steps: int | None = None

    def budget(
        self,
        ledger: PrivacyLedger,
        frdm: ForgetRetainDataModule,
        *,
        model: torch.nn.Module | None = None,
        expected_metadata: dict[str, Any] | None = None,
    ) -> int:
        """The budget for this forget set (see :func:`compute_budget`); the ledger's recording
        configuration is checked against ``frdm``, ``model`` and ``expected_metadata`` in
        both modes."""
        return compute_budget(
            ledger,
            frdm,
            steps=self.steps,
            constants=None if self.steps is not None else self.constants,
            aggregate=self.aggregate,  # type: ignore[arg-type]
            model=model,
            expected_metadata=expected_metadata,
            max_steps=self.max_steps,
        )

    @property
    def source(self) -> str:
        """Where the budget comes from, for the audit record."""
        return "fixed --budget-steps" if self.steps is not None else "THEORY §5 constants"


def unlearn_forget_set(
    model: ClassifierModule,
    frdm: ForgetRetainDataModule,
    *,
    method: str,
    budget: int,
    lr: float,
    stopping: Callback | None,
    sgld_sigma: float = 0.01,
    logger: Logger | bool = False,
    progress: bool = True,
    seed: int = 0,
) -> tuple[ClassifierModule, UnlearningResult, float]:
    """Unlearn ``frdm``'s forget set from a copy of ``model``.

    Args:
        model: the trained model (not modified: a deep copy is unlearned).
        frdm: forget / retain / held-out split.
        method: an :class:`UnlearningModule` method.
        budget: the step budget (``Trainer(max_steps=budget)``).
        lr: unlearning learning rate.
        stopping: a stopping callback (e.g. :class:`LossCalibratedStopping`) or None.
        sgld_sigma: SGLD sigma (method ``"sgld"``).
        logger: a Lightning logger or False.
        progress: show the progress bar.
        seed: seed of the run.

    Returns:
        ``(unlearned model, UnlearningResult, seconds)``.
    """
    pl.seed_everything(seed, workers=True, verbose=False)
    student = copy.deepcopy(model)
    student.train()
    unlearner = UnlearningModule(
        student,
        method=method,  # type: ignore[arg-type]
        lr=lr,
        sgld_sigma=sgld_sigma,
        seed=seed,
    )
    callbacks = [stopping] if stopping is not None else []
    start = time.perf_counter()
    if budget > 0:
        trainer = make_trainer(
            max_steps=budget,
            max_epochs=-1,
            logger=logger,
            callbacks=callbacks,
            progress=progress,
            limit_val_batches=0,
        )
        trainer.fit(unlearner, datamodule=frdm)
        result = unlearner.result
    else:
        result = None
    if result is None:  # zero budget: nothing to run
        before = evaluate_model(student, frdm)
        result = UnlearningResult(method=method, steps=0, budget=budget, stop_reason="budget")
        result.extra["metrics_before"] = before
    seconds = time.perf_counter() - start
    unlearned = unlearner.unlearned_module()
    unlearned.eval()
    return unlearned, result, seconds  # type: ignore[return-value]


def retrain_oracle(
    model: ClassifierModule, frdm: ForgetRetainDataModule, *, epochs: int, seed: int
) -> tuple[ClassifierModule, float]:
    """Retrain from scratch on the retain set with the original recipe (THEORY §6)."""
    start = time.perf_counter()
    oracle = train_oracle(model, frdm, seed=seed, max_epochs=epochs, accelerator="auto", devices=1)
    oracle.eval()
    return oracle, time.perf_counter() - start


def tensorboard_logger(root: str | Path, name: str) -> TensorBoardLogger:
    """A TensorBoard logger writing under ``root/name`` (no version sub-folders)."""
    return TensorBoardLogger(save_dir=str(root), name=name, version="", default_hp_metric=False)
