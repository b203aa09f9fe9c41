"""Quick step-time ratio of a Lightning run with PerInstancePrivacyMonitor vs. without.

Same process, same data (Fashion-MNIST, batch 128), runs interleaved plain / monitor, each step
timed from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward, the monitor's
read and ledger update, optimizer step); the median over the timed steps of each run is taken,
and the ratio of medians reported per repeat. Models: an MLP 784-256-256-10 and a CNN
conv16-GN-conv32-GN-fc, as in PLATFORM.md. Timings are machine-dependent; on a shared CPU
they are noisy: read the range over repeats, not one number.

    python benchmarks/bench_monitor_quick.py [--steps 30] [--repeats 3] [--modes ghost hooks]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_unlearn import PerInstancePrivacyMonitor
from lightning_unlearn.data import IndexedDataset

FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
LABELS = "/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz"


def load_data(n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        from lightning_unlearn.data.modules import read_idx

        x = torch.as_tensor(read_idx(FASHION)[:n].astype(np.float32) / 255.0)
        y = torch.as_tensor(read_idx(LABELS)[:n].astype(np.int64))
        return x.unsqueeze(1), y, "Fashion-MNIST"
    except (OSError, ImportError):
        g = torch.Generator().manual_seed(0)
        return (
            torch.rand(n, 1, 28, 28, generator=g),
            torch.randint(0, 10, (n,), generator=g),
            "random",
        )


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, 10),
        )
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.GroupNorm(4, 32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 10),
    )


class Lit(pl.LightningModule):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.net = build(name)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class StepTimer(pl.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self._t = 0.0

    def on_train_batch_start(self, *args: Any) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, *args: Any) -> None:
        self.times.append(time.perf_counter() - self._t)


def run(name: str, data: DataLoader, steps: int, mode: str | None) -> float:
    timer = StepTimer()
    callbacks: list[pl.Callback] = [timer]
    if mode is not None:
        callbacks.insert(0, PerInstancePrivacyMonitor(grad_sample_mode=mode, log_histograms=False))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps + 5,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Lit(name), data)
    return statistics.median(timer.times[5:])  # drop warm-up steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["ghost"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    x, y, source = load_data(128 * (args.steps + 5))
    data = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=128, shuffle=True)
    print(f"data: {source}, batch 128, {args.steps} timed steps, torch threads {args.threads}")
    for name in ("mlp", "cnn"):
        for mode in args.modes:
            rows = []
            for _ in range(args.repeats):
                plain = run(name, data, args.steps, None)
                monitored = run(name, data, args.steps, mode)
                rows.append((plain, monitored, monitored / plain))
            ratios = [r[2] for r in rows]
            detail = ", ".join(f"{p * 1e3:.1f}->{m * 1e3:.1f} ms" for p, m, _ in rows)
            print(
                f"{name} {mode}: ratio median {statistics.median(ratios):.2f} "
                f"(range {min(ratios):.2f}-{max(ratios):.2f}; {detail})"
            )


if __name__ == "__main__":
    main()
