"""The building blocks of the experiments: train with the monitor, unlearn a forget set, retrain
an oracle, and measure a model (test metrics, the forget-set loss barrier).

Everything here runs real Lightning ``Trainer`` s; the experiments and the commands only choose
settings and write files. A model on a forget / retain / held-out split is measured by the
package's one evaluator, :func:`~lightning_unlearn.unlearning.result.evaluate_splits`.
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

from lightning_unlearn.accounting import DEFAULT_ALPHAS, PrivacyLedger
from lightning_unlearn.callbacks import PerInstancePrivacyMonitor
from lightning_unlearn.checkpoints import ChecksummedCheckpointIO
from lightning_unlearn.data.modules import TensorSplitDataModule
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.evaluation.functional import loss_barrier, per_example_losses
from lightning_unlearn.models import ClassifierModule
from lightning_unlearn.unlearning.module import UnlearningModule
from lightning_unlearn.unlearning.oracle import train_oracle
from lightning_unlearn.unlearning.result import UnlearningResult, evaluate_splits

__all__ = [
    "TrainOutput",
    "evaluate_test_split",
    "forget_set_barrier",
    "make_trainer",
    "retrain_oracle",
    "tensorboard_logger",
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


def evaluate_test_split(model: torch.nn.Module, dm: TensorSplitDataModule) -> dict[str, float]:
    """Mean loss and accuracy on the data module's test split:
    ``{"test_loss": float, "test_acc": float}``."""
    loss, _, correct = per_example_losses(model, dm.test_dataloader())
    return {"test_loss": float(loss.double().mean()), "test_acc": float(correct.double().mean())}


def forget_set_barrier(
    model_a: torch.nn.Module, model_b: torch.nn.Module, frdm: ForgetRetainDataModule
) -> float:
    """Loss barrier (THEORY §6) between two models on the forget set."""
    barrier, _ = loss_barrier(model_a, model_b, frdm.forget_dataloader(), num_points=11)
    return float(barrier)


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
        sgld_sigma: SGLD sigma > 0 (method ``"sgld"``).
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
    if result is None:  # zero budget: nothing runs, the model after is the model before
        metrics = evaluate_splits(student, frdm)
        result = UnlearningResult(
            method=method,
            steps=0,
            budget=budget,
            stop_reason="budget",
            num_forget=int(frdm.forget_ids.numel()),
            before=metrics,
            after=copy.deepcopy(metrics),
        )
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
