"""Unchanged user modules and data for the sampler-id tests (module level: picklable)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

D, C = 6, 3


def id_data(n: int, seed: int = 0) -> TensorDataset:
    """``(x, y)`` whose first feature is the example's position: batches reveal their ids."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    x[:, 0] = torch.arange(n, dtype=torch.float32)
    return TensorDataset(x, torch.randint(0, C, (n,), generator=g))


def ids_of(batch: Any) -> torch.Tensor:
    x = batch if isinstance(batch, torch.Tensor) else batch[0]
    return x[:, 0].round().long().cpu()


class XYModule(pl.LightningModule):
    """A user's module, untouched: ``x, y = batch``."""

    def __init__(self, lr: float = 0.05, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, C))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the id column is scaled down so the loss stays tame; the model sees it as a feature
        return self.net(x * torch.tensor([0.01] + [1.0] * (D - 1), device=x.device))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class BoringStyle(pl.LightningModule):
    """Lightning's BoringModel shape: a bare-tensor dataset, ``self.layer(batch)``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(D, 2)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        out = self.layer(batch * 0.01)
        return F.mse_loss(out, torch.ones_like(out))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.layer.parameters(), lr=0.1)


class BareTensors(Dataset):
    """Items are bare tensors (BoringModel's RandomDataset), the first entry the position."""

    def __init__(self, n: int) -> None:
        self.data = id_data(n).tensors[0]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]


class PermutationSampler(Sampler[int]):
    """``randperm(n)`` seeded by ``seed + epoch``: DistributedSampler's permutation."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class ResumableSampler(PermutationSampler):
    """A permutation per epoch that can start after the examples a checkpoint consumed."""

    def __init__(self, n: int, seed: int = 0) -> None:
        super().__init__(n, seed)
        self.drawn, self.skip = 0, 0

    def __iter__(self) -> Iterator[int]:
        order = list(super().__iter__())
        skip, self.skip = self.skip, 0
        self.drawn = skip
        for i in order[skip:]:
            self.drawn += 1
            yield i


class ResumableLoader(DataLoader):
    """A DataLoader that restores its position (Lightning's ``_Stateful``: state_dict and
    load_state_dict, applied on the next ``iter``), as torchdata's StatefulDataLoader does."""

    def __init__(self, dataset: Any, batch_size: int, seed: int = 0) -> None:
        super().__init__(
            dataset, batch_size=batch_size, sampler=ResumableSampler(len(dataset), seed)
        )

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        assert isinstance(sampler, ResumableSampler)
        return {"epoch": sampler.epoch, "drawn": sampler.drawn}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        assert isinstance(sampler, ResumableSampler)
        sampler.epoch, sampler.skip = state["epoch"], state["drawn"]


class SeenIds(pl.Callback):
    """Independent reference: the ids decoded from every batch ``training_step`` received, and
    each example's squared gradient norm at the weights of that step (batch-size-1 loop)."""

    def __init__(self, n: int) -> None:
        self.counts = torch.zeros(n, dtype=torch.long)
        self.sq = torch.zeros(n, dtype=torch.float64)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        ids = ids_of(batch)
        self.counts += torch.bincount(ids, minlength=self.counts.numel())
        if not isinstance(pl_module, XYModule):
            return
        x, y = batch
        clean = XYModule()  # the same weights in a module without the monitor's hooks
        clean.load_state_dict(pl_module.state_dict())
        params = [p for p in clean.parameters() if p.requires_grad]
        for i in range(x.shape[0]):
            loss = F.cross_entropy(clean(x[i : i + 1]), y[i : i + 1])
            grads = torch.autograd.grad(loss, params)
            self.sq[ids[i]] += sum(float(g.double().pow(2).sum()) for g in grads)
