"""What the monitor reads from the Trainer (THEORY §1).

At the start of a ``fit``: the training data (dataset, size, batch size, collate function),
the global batch (per-rank batch x world size x ``accumulate_grad_batches``), the sample rate
``q`` and the ledger's recording metadata. At every backward pass: what Lightning did to the
loss (the accumulation divisor, the fp16 loss scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_unlearn.callbacks._loss_weights import describe
from lightning_unlearn.callbacks._monitor_config import MonitorConfig
from lightning_unlearn.data.fingerprint import dataset_fingerprint
from lightning_unlearn.errors import MultipleBackwardError
from lightning_unlearn.integrity import architecture_fingerprint

__all__ = [
    "RunPlan",
    "TrainData",
    "check_norm_count",
    "check_one_backward",
    "find_train_data",
    "plan_run",
    "recording_metadata",
    "undo_trainer_scaling",
]


@dataclass(frozen=True)
class TrainData:
    """What the monitor needs to know about the training data of one rank."""

    dataset: Any
    num_samples: int
    batch_size: int | None
    collate_fn: Any


def find_train_data(trainer: pl.Trainer) -> TrainData | None:
    """The training ``DataLoader``'s dataset, size, batch size and collate function.

    Returns None when the training data is not a single map-style ``DataLoader`` (several
    loaders, an iterable dataset without ``__len__``); the monitor then needs ``num_samples``
    and ``sample_rate`` from the user.
    """
    loader = trainer.train_dataloader
    if not isinstance(loader, DataLoader):
        return None
    dataset = loader.dataset
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None
    batch_size = loader.batch_size
    if batch_size is None and loader.batch_sampler is not None:
        batch_size = getattr(loader.batch_sampler, "batch_size", None)
    return TrainData(dataset, n, batch_size, loader.collate_fn)


@dataclass(frozen=True)
class RunPlan:
    """Sizes and rates of one ``fit`` (THEORY §1: the global batch and q)."""

    data: TrainData | None
    num_samples: int
    accumulate: int
    global_batch: int
    sample_rate: float


def plan_run(
    trainer: pl.Trainer,
    automatic_optimization: bool,
    num_samples: int | None,
    sample_rate: float | None,
    ledger_size: int | None = None,
) -> RunPlan:
    """N, the global batch (per-rank batch x world size x accumulation) and ``q``.

    ``ledger_size`` is the size of the id space when it is larger than the loader's dataset
    (an ``IndexedDataset`` split after wrapping: ids of the full set); ``q`` still comes from
    the examples the loader trains on.

    Raises:
        ValueError: when N or the batch size cannot be inferred and was not given.
    """
    data = find_train_data(trainer)
    trained = num_samples or (data.num_samples if data is not None else None)
    n = num_samples or ledger_size or trained
    if n is None or trained is None:
        raise ValueError(
            "Expected a single map-style training DataLoader to infer the data set size, but "
            "got another kind of training data; pass `num_samples=` (and `sample_rate=`)."
        )
    accum = trainer.accumulate_grad_batches if automatic_optimization else 1
    local_batch = data.batch_size if data is not None else None
    if local_batch is None:
        if sample_rate is None:
            raise ValueError(
                "Expected a DataLoader with a `batch_size` to infer `sample_rate`, but it has "
                "none; pass `sample_rate=` to the monitor."
            )
        global_batch = max(1, round(sample_rate * n))
    else:
        global_batch = local_batch * trainer.world_size * accum
    q = sample_rate if sample_rate is not None else min(1.0, global_batch / trained)
    return RunPlan(data, n, accum, global_batch, q)


def undo_trainer_scaling(
    norms: Tensor, accumulate: int, trainer: pl.Trainer
) -> tuple[Tensor, bool]:
    """Undo what Lightning did to the loss before the backward pass (THEORY §1).

    The division by ``accumulate_grad_batches`` (``accumulate > 1``, automatic optimisation) and
    the fp16 ``GradScaler``'s scale; an overflow step (non-finite norms under a scaler) is
    skipped by the scaler, so it contributes nothing (its norms become 0).

    Returns:
        ``(norms, scaled)``: ``scaled`` tells whether a loss scaler was active (its overflow
        steps are expected, so their norms need no finiteness check).
    """
    if accumulate > 1:
        norms = norms * accumulate  # Lightning divided the loss by accumulate_grad_batches
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return norms, False
    finite = torch.isfinite(norms)
    scale = getattr(scaler, "_get_scale_async", scaler.get_scale)()
    norms = norms / torch.as_tensor(scale, device=norms.device, dtype=norms.dtype)
    return torch.where(finite, norms, torch.zeros_like(norms)), True


def recording_metadata(
    plan: RunPlan, config: MonitorConfig, pl_module: pl.LightningModule, world_size: int
) -> dict[str, Any]:
    """The ledger's ``metadata``: the recording configuration ``unlearn`` and resumes check.

    Args:
        plan: this ``fit``'s plan (its ``data`` the id space).
        config: the monitor's options.
        pl_module: the module being trained.
        world_size: the number of ranks.
    """
    n = plan.num_samples
    return {
        "num_samples": n,
        "dataset_fingerprint": (
            dataset_fingerprint(plan.data.dataset, n) if plan.data is not None else None
        ),
        # The recording configuration `unlearn` checks (lightning_unlearn.integrity).
        "model_fingerprint": architecture_fingerprint(pl_module),
        "batch_size": plan.global_batch,
        "noise_multiplier": config.noise.noise_multiplier,
        "max_grad_norm": config.noise.max_grad_norm,
        "estimator": config.estimator,
        "sample_rate": plan.sample_rate,
        "loss_reduction": describe(config.loss_reduction),
        "grad_sample_mode": config.grad_sample_mode,
        "world_size": world_size,
        "delta": config.delta,
    }


def check_one_backward(backwards: int) -> None:
    """One backward pass per batch and optimizer step (the norm of a sum is not the parts').

    Raises:
        MultipleBackwardError: ``backwards > 1``.
    """
    if backwards > 1:
        raise MultipleBackwardError(
            f"Expected one backward pass per batch and optimizer step, but got "
            f"{backwards} for this batch before the optimizer stepped (two "
            "`manual_backward` calls, or an optimizer that re-evaluates its closure such as "
            "LBFGS): every pass sees one part of the examples' gradient, and the norm of the "
            "sum is not given by the parts' norms, so the privacy losses would be wrong. Add "
            "the losses and call `manual_backward` once per optimizer step "
            "(`self.manual_backward(loss_a + loss_b)`)."
        )


def check_norm_count(norms: Tensor, ids: Tensor) -> None:
    """One gradient norm per sample id (shapes only: no host sync).

    Raises:
        ValueError: the counts differ; the message says the layers must see the batch.
    """
    if ids.shape[0] != norms.shape[0]:
        raise ValueError(
            f"Expected one gradient norm per sample id, but got {norms.shape[0]} norms for "
            f"{ids.shape[0]} ids. The module's layers must see the batch (batch-first) "
            "that carries the ids; use `sample_id_fn` for custom batches."
        )
