"""Trainer helpers for the monitor tests (module level: picklable for ddp_spawn)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler


class EpochShuffleSampler(Sampler[int]):
    """A shuffling sampler whose order depends only on (seed, epoch), as Lightning resumes it."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + 1000 * self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def make_trainer(**kwargs: Any) -> pl.Trainer:
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def loader(dataset: Any, batch_size: int = 8, shuffle: bool = True, **kw: Any) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, **kw)


class CrashAt(pl.Callback):
    """Raise at (epoch, batch_idx): a crash in the middle of training."""

    def __init__(self, epoch: int, batch_idx: int) -> None:
        self.epoch, self.batch_idx = epoch, batch_idx

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch_idx:
            raise RuntimeError("simulated crash")


class SaveLedgerPerRank(pl.Callback):
    """Write every rank's copy of the monitor's ledger (ddp_spawn: the parent sees none)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lightning_unlearn import PerInstancePrivacyMonitor

        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, PerInstancePrivacyMonitor):
                cb.ledger.save(f"{self.directory}/rank{trainer.global_rank}.pt")


def opacus_rdp(
    norms: torch.Tensor, sigma: float, q: float, alphas: tuple[int, ...]
) -> torch.Tensor:
    """Per-instance RDP of one step from Opacus' analysis: r = ||g|| / sigma <=> sigma' = 1/r."""
    from opacus.accountants.analysis.rdp import compute_rdp

    rows = [
        compute_rdp(q=q, noise_multiplier=float(sigma / g), steps=1, orders=list(alphas))
        for g in norms.tolist()
    ]
    return torch.tensor(rows, dtype=torch.float64)
