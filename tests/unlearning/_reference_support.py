"""Module-level helpers of the reference-model tests (``ddp_spawn`` pickles them)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

NUM = 120


class SeenMLP(pl.LightningModule):
    """A digits MLP that counts, in a buffer saved with its weights, the ids it trained on."""

    fits = 0  # class-level count of modules created (the resumption test reads it)

    def __init__(self, num_samples: int = NUM) -> None:
        super().__init__()
        type(self).fits += 1
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        self.register_buffer("seen", torch.zeros(num_samples, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, ids = batch
        self.seen.index_add_(0, ids, torch.ones_like(ids))
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.2)


def make_seen_mlp() -> SeenMLP:
    return SeenMLP()


def small_digits(num: int = NUM) -> TensorDataset:
    x, y = load_digits(return_X_y=True)
    return TensorDataset(
        torch.tensor(x[:num] / 16.0, dtype=torch.float32), torch.tensor(y[:num], dtype=torch.long)
    )
