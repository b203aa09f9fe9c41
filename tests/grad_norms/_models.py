"""Tiny models and real data shared by the grad_norms and monitor tests.

Defined at module level so that ``ddp_spawn`` children can unpickle them. The data are
scikit-learn's real 8x8 digits (1797 images shipped inside the wheel): flat features for the
MLP, 1x8x8 images for the GroupNorm CNN and pixel intensities 0..16 as a token sequence of
length 64 for the Embedding + LayerNorm text model.
"""

from __future__ import annotations

import functools
from typing import Any

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from lightning_unlearn.data import IndexedDataset

MODEL_NAMES = ("mlp", "cnn", "text")


@functools.cache
def _digits() -> tuple[Tensor, Tensor]:
    x, y = load_digits(return_X_y=True)
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)


def digits_inputs(name: str, n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` digits in the input format of model ``name``."""
    x, y = _digits()
    x, y = x[:n], y[:n]
    if name in ("mlp", "gru"):
        return x / 16.0, y
    if name == "cnn":
        return (x / 16.0).reshape(n, 1, 8, 8), y
    if name == "text":
        return x.long(), y
    raise ValueError(name)


def digits_dataset(name: str, n: int) -> IndexedDataset:
    return IndexedDataset(TensorDataset(*digits_inputs(name, n)))


class TextNet(nn.Module):
    """Token embedding -> LayerNorm -> linear mixing -> mean pooling -> classifier."""

    def __init__(self, vocab: int = 17, dim: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: Tensor) -> Tensor:
        h = torch.tanh(self.mix(self.norm(self.embed(tokens))))
        return self.head(h.mean(dim=1))


class RowGRU(nn.Module):
    """A digit read as a sequence of its 8 rows: GRU -> linear head on the last hidden state."""

    def __init__(self, hidden: int = 12, classes: int = 10) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        _, h = self.rnn(x.reshape(-1, 8, 8))
        return self.head(h[-1])


def build_net(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if name == "mlp":
        return nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.GroupNorm(2, 4),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3),
            nn.GroupNorm(2, 4),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(4 * 6 * 6, 10),
        )
    if name == "text":
        return TextNet()
    if name == "batchnorm":
        return nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Linear(16, 10))
    if name == "gru":
        return RowGRU()
    raise ValueError(name)


def loop_sq_norms(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Reference: squared gradient norm of each example's own loss, one backward each."""
    out = []
    params = [p for p in net.parameters() if p.requires_grad]
    for i in range(x.shape[0]):
        loss = nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        out.append(sum(g.double().pow(2).sum() for g in grads))
    return torch.stack(out)


def summation_tolerance(net: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
    """Per-element bound, one tensor per parameter, on how far two float32 batch gradients that
    sum the same per-example terms in different orders can differ.

    Recursive summation of ``n`` float32 addends is off by at most ``gamma_n * sum |addend|``
    with ``gamma_n = n u / (1 - n u)`` and ``u = 2**-24`` (Higham, *Accuracy and Stability of
    Numerical Algorithms*, 2nd ed., eq. 4.4); two orders differ by at most twice that. The
    addends are the per-example, per-position products; ``n`` is bounded by the batch size
    times the input's elements per example, and ``sum |addend|`` is taken as the sum over
    examples of each example's absolute gradient (float64, one backward each).
    """
    params = [p for p in net.parameters() if p.requires_grad]
    abs_sum = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for i in range(x.shape[0]):
        loss = nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1])
        for acc, g in zip(abs_sum, torch.autograd.grad(loss, params), strict=True):
            acc += g.double().abs()
    n = x.shape[0] * x[0].numel()
    u = 2.0**-24
    gamma = n * u / (1 - n * u)
    # The batch gradient of a mean loss carries the factor 1/B on every addend.
    return [2 * gamma * acc / x.shape[0] for acc in abs_sum]


class LitClassifier(pl.LightningModule):
    """Cross-entropy classifier over ``(x, y, sample_id)`` batches, plain SGD."""

    def __init__(
        self,
        name: str = "mlp",
        lr: float = 0.0,
        reduction: str = "mean",
        manual: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.net = build_net(name, seed)
        self.lr = lr
        self.reduction = reduction
        self.automatic_optimization = not manual

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        x, y, _ = batch
        loss = nn.functional.cross_entropy(self.net(x), y, reduction=self.reduction)
        self.log("train_loss", loss.detach())
        if self.automatic_optimization:
            return loss
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        return None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)
