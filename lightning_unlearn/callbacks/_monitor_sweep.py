"""The "sweep" estimator of THEORY §3: exact per-example norms at chosen steps.

Every K optimizer steps the monitor computes, at the current weights and without updating them,
the gradient norm of every tracked example and adds ``K * eps(alpha; q, r)`` to its loss. The
pass reuses ``training_step`` (through the monitor's ``sweep_loss``) with logging silenced, takes
gradients with ``torch.autograd.grad`` so that ``p.grad`` is untouched, and forks the random
number generators so that dropout in the sweep does not change the training run. Under DDP each
rank sweeps every ``world_size``-th tracked id; the tables are reduced with the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from lightning_unlearn.accounting import PrivacyLedger
from lightning_unlearn.callbacks._monitor_logging import silenced_logging
from lightning_unlearn.callbacks._run_plan import TrainData
from lightning_unlearn.data.indexed import get_sample_ids
from lightning_unlearn.errors import MissingSampleIdError
from lightning_unlearn.grad_norms import NormHooks

__all__ = ["SweepEstimator", "SweepLoss", "default_sweep_loss", "run_sweep"]

SweepLoss = Callable[[pl.LightningModule, Any, int], Tensor]
"""``(pl_module, batch, batch_idx) -> loss`` of one sweep batch (the monitor's ``sweep_loss``)."""


def default_sweep_loss(pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> Tensor:
    """``training_step``'s loss (its return value, or its ``"loss"``) on a sweep batch.

    Raises:
        ValueError: ``training_step`` returned no tensor loss.
    """
    out = pl_module.training_step(batch, batch_idx)
    loss = out["loss"] if isinstance(out, dict) else out
    if not isinstance(loss, Tensor):
        raise ValueError(
            "Expected `training_step` to return the loss (a tensor or a dict with 'loss') for "
            f"the sweep, but got {type(out).__name__}; override `sweep_loss`."
        )
    return loss


class SweepEstimator:
    """The sweep estimator's schedule: every ``every`` optimizer steps, and the rest at the end.

    Its state is the step of the last sweep (:attr:`last`, saved in the monitor's checkpoint
    state); everything a sweep reads is passed to :meth:`run`.

    Args:
        every: the sweep period K in optimizer steps.
        track_ids: the ids to sweep (default: every id of the ledger).

    Example:
        >>> sweeps = SweepEstimator(every=10)
        >>> sweeps.due(9), sweeps.due(10), sweeps.left(0)
        (False, True, False)
    """

    def __init__(self, every: int, track_ids: Tensor | None = None) -> None:
        self.every = every
        self.track_ids = track_ids
        self.last = 0

    def due(self, steps: int) -> bool:
        """Whether ``steps`` optimizer steps call for a periodic sweep."""
        return steps - self.last >= self.every

    def left(self, steps: int) -> bool:
        """Whether steps since the last sweep remain (the end-of-training sweep)."""
        return steps > self.last

    def run(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        hooks: NormHooks,
        data: TrainData | None,
        target: PrivacyLedger,
        steps: int,
        *,
        sweep_loss: SweepLoss,
        step_loss: Callable[[Tensor], Tensor],
        check_norms: Callable[[Tensor, Tensor], None],
        sample_id_fn: Callable[[Any], Tensor] | None,
    ) -> None:
        """Sweep the tracked ids at ``steps``: each gets ``(steps - last) * eps`` (THEORY §3).

        Raises:
            ValueError: ``data`` is None (no single map-style training DataLoader to sweep).
        """
        if data is None:
            raise ValueError(
                "Expected a single map-style training DataLoader for `estimator='sweep'`, but "
                "got another kind of training data; use `estimator='online'`."
            )
        tracked = self.track_ids if self.track_ids is not None else torch.arange(target.num_samples)
        run_sweep(
            trainer,
            pl_module,
            hooks,
            data,
            tracked,
            target,
            steps - self.last,
            sweep_loss=sweep_loss,
            step_loss=step_loss,
            check_norms=check_norms,
            sample_id_fn=sample_id_fn,
        )
        self.last = steps


def run_sweep(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    hooks: NormHooks,
    data: TrainData,
    tracked: Tensor,
    target: PrivacyLedger,
    weight: int,
    *,
    sweep_loss: SweepLoss,
    step_loss: Callable[[Tensor], Tensor],
    check_norms: Callable[[Tensor, Tensor], None],
    sample_id_fn: Callable[[Any], Tensor] | None,
) -> None:
    """Add ``weight * eps(alpha; q, r_x)`` for this rank's share of the ``tracked`` ids.

    Args:
        trainer: the running Trainer.
        pl_module: the LightningModule, with ``hooks`` attached.
        hooks: the attached norm hooks.
        data: the training data (dataset, batch size, collate function).
        tracked: 1-D tensor of the ids to sweep (all ranks pass the same).
        target: ledger receiving the losses (``privacy`` only; counts are training observations).
        weight: number of steps K this sweep stands for.
        sweep_loss: the loss of one sweep batch.
        step_loss: ``[B]`` norms to their ``[B, K]`` per-step Rényi loss (THEORY §2).
        check_norms: ``(norms, ids)`` raises (or flags) NaN/inf norms.
        sample_id_fn: the user's batch-to-ids function, or None.
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
                ids = _sweep_ids(batch, sample_id_fn, share, start)
                start += ids.shape[0]
                loss = sweep_loss(pl_module, batch, i)
                torch.autograd.grad(loss, params, allow_unused=True)
                norms = hooks.per_sample_norms()
                hooks.clear()
                if ids.shape[0] != norms.shape[0]:
                    raise ValueError(
                        f"Expected one gradient norm per sample id in the sweep, but got "
                        f"{norms.shape[0]} norms for {ids.shape[0]} ids; override `sweep_loss`."
                    )
                check_norms(norms, ids)
                rdp = step_loss(norms) * float(weight)
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
