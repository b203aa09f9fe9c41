"""The "sweep" estimator of THEORY §3: exact per-example norms at chosen steps.

Every K optimizer steps the monitor computes, at the current weights and without updating them,
the gradient norm of every tracked example and adds ``K * eps(alpha; q, r)`` to its loss. The
pass reuses ``training_step`` (through the monitor's ``sweep_loss``) with logging silenced, takes
gradients with ``torch.autograd.grad`` so that ``p.grad`` is untouched, and forks the random
number generators so that dropout in the sweep does not change the training run. Under DDP each
rank sweeps every ``world_size``-th tracked id; the tables are reduced with the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from lightning_unlearn.accounting import PrivacyLedger
from lightning_unlearn.callbacks._monitor_utils import TrainData, silenced_logging
from lightning_unlearn.data.indexed import get_sample_ids
from lightning_unlearn.errors import MissingSampleIdError
from lightning_unlearn.grad_norms import NormHooks

if TYPE_CHECKING:
    from lightning_unlearn.callbacks.privacy_monitor import PerInstancePrivacyMonitor

__all__ = ["run_sweep"]


def run_sweep(
    monitor: PerInstancePrivacyMonitor,
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    hooks: NormHooks,
    data: TrainData,
    tracked: Tensor,
    target: PrivacyLedger,
    weight: int,
) -> None:
    """Add ``weight * eps(alpha; q, r_x)`` for this rank's share of the ``tracked`` ids.

    Args:
        monitor: the monitor (its ``sweep_loss``, ``per_step_loss`` and finite checks are used).
        trainer: the running Trainer.
        pl_module: the LightningModule, with ``hooks`` attached.
        hooks: the attached norm hooks.
        data: the training data (dataset, batch size, collate function).
        tracked: 1-D tensor of the ids to sweep (all ranks pass the same).
        target: ledger receiving the losses (``privacy`` only; counts are training observations).
        weight: number of steps K this sweep stands for.
    """
    share = tracked[trainer.global_rank :: trainer.world_size]
    if share.numel() == 0:
        return
    loader: DataLoader[Any] = DataLoader(
        Subset(data.dataset, share.tolist()),
        batch_size=data.batch_size or 64,
        shuffle=False,
        collate_fn=data.collate_fn,
    )
    params = hooks.parameters
    device = pl_module.device
    fork_devices = [] if device.type == "cpu" else [device.index or 0]
    was_training = pl_module.training
    pl_module.train()
    try:
        with (
            torch.random.fork_rng(devices=fork_devices, device_type=device.type),
            silenced_logging(pl_module),
            torch.enable_grad(),
        ):
            start = 0
            for i, raw in enumerate(loader):
                batch = trainer.strategy.batch_to_device(raw)
                ids = _sweep_ids(batch, monitor.sample_id_fn, share, start)
                start += ids.shape[0]
                loss = monitor.sweep_loss(pl_module, batch, i)
                torch.autograd.grad(loss, params, allow_unused=True)
                norms = hooks.per_sample_norms()
                hooks.clear()
                if ids.shape[0] != norms.shape[0]:
                    raise ValueError(
                        f"Expected one gradient norm per sample id in the sweep, but got "
                        f"{norms.shape[0]} norms for {ids.shape[0]} ids; override `sweep_loss`."
                    )
                monitor._check_step_norms(norms, ids)
                rdp = monitor.per_step_loss(norms, trainer, monitor._global_batch) * float(weight)
                target.privacy.index_add_(0, ids.to(target.device), rdp.to(target.device))
    finally:
        hooks.clear()
        pl_module.train(was_training)


def _sweep_ids(batch: Any, sample_id_fn: Any, share: Tensor, start: int) -> Tensor:
    """Ids the batch carries, else the next positions of the unshuffled ``share`` loader."""
    try:
        return get_sample_ids(batch, sample_id_fn)
    except MissingSampleIdError:
        if sample_id_fn is not None:
            raise
    size = _batch_len(batch)
    return share[start : start + size]


def _batch_len(batch: Any) -> int:
    if isinstance(batch, Tensor):
        return int(batch.shape[0])
    values = batch.values() if isinstance(batch, dict) else batch
    for value in values:
        if isinstance(value, Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise ValueError(
        f"Expected a sweep batch with a tensor of batch size first, but got "
        f"{type(batch).__name__}; pass `sample_id_fn=` to the monitor."
    )
