"""Shared fixtures of the unlearning tests: scikit-learn's digits with a memorised forget set.

The forget set is a group of training examples whose labels were replaced by wrong ones: the
model can fit them only by memorising them, so before unlearning the loss-threshold attack
recognises them (AUROC near 1 against held-out examples corrupted the same way) and a model
retrained without them cannot (AUROC near 0.5). The held-out reference set therefore carries
the same label corruption as the forget set.

Defined at module level so ``ddp_spawn`` workers can pickle them.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

NUM_FORGET = 40
NUM_HELDOUT = 200
NUM_CLASSES = 10


class DigitsMLP(pl.LightningModule):
    """A small MLP for 8x8 digits whose ``training_step`` returns the mean cross-entropy."""

    def __init__(
        self,
        hidden: int = 128,
        lr: float = 0.1,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.1,
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES))
        self.lr = lr
        self.weight_decay = weight_decay
        self.label_smoothing = label_smoothing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch  # the dataset's own batches: the monitor reads ids from the sampler
        loss = F.cross_entropy(self(x), y, label_smoothing=self.label_smoothing)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(
            self.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay
        )


def _wrong_labels(y: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shift = torch.randint(1, NUM_CLASSES, y.shape, generator=g)
    return (y + shift) % NUM_CLASSES


def digits_data(
    seed: int = 0, num_train: int = 800
) -> tuple[TensorDataset, TensorDataset, torch.Tensor]:
    """``(train, heldout, forget_ids)``: train = digits minus held-out, forget ids mislabeled.

    The held-out set (never trained on) has wrong labels drawn the same way.
    """
    x_np, y_np = load_digits(return_X_y=True)
    x = torch.tensor(x_np / 16.0, dtype=torch.float32)
    y = torch.tensor(y_np, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    held, train = perm[:NUM_HELDOUT], perm[NUM_HELDOUT : NUM_HELDOUT + num_train]
    x_tr, y_tr = x[train], y[train].clone()
    forget_ids = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed + 1))
    forget_ids = forget_ids[:NUM_FORGET].sort().values
    y_tr[forget_ids] = _wrong_labels(y_tr[forget_ids], seed + 2)
    heldout = TensorDataset(x[held], _wrong_labels(y[held], seed + 3))
    return TensorDataset(x_tr, y_tr), heldout, forget_ids


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "deterministic": True,
    }
    settings.update(kwargs)
    return pl.Trainer(**settings)


__all__ = ["DigitsMLP", "digits_data", "quiet_trainer"]
