"""LightningCLI: the monitor added from the command line with init args (issue 12)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LightningCLI
from torch.utils.data import DataLoader, TensorDataset

from lightning_unlearn import PerInstancePrivacyMonitor, PrivacyLedger


class CLIModule(pl.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)
        self.lr = lr

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        return F.cross_entropy(self.fc(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class CLIData(pl.LightningDataModule):
    def __init__(self, n: int = 24, batch_size: int = 6) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.randn(self.n, 4, generator=g), torch.arange(self.n) % 2)
        return DataLoader(data, batch_size=self.batch_size, shuffle=True)


def test_monitor_from_the_command_line(tmp_path: Path) -> None:
    args = [
        "fit",
        "--trainer.accelerator=cpu",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_epochs=2",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.callbacks+=lightning_unlearn.PerInstancePrivacyMonitor",
        "--trainer.callbacks.noise_multiplier=2.0",
        "--trainer.callbacks.max_grad_norm=1.0",
        "--trainer.callbacks.convention=dpsgd",
        f"--trainer.callbacks.save_dir={tmp_path}",
    ]
    cli = LightningCLI(CLIModule, CLIData, args=args, save_config_kwargs={"overwrite": True})
    monitors = [c for c in cli.trainer.callbacks if isinstance(c, PerInstancePrivacyMonitor)]  # type: ignore[attr-defined]
    assert len(monitors) == 1
    assert monitors[0].noise.noise_multiplier == 2.0
    assert monitors[0].noise.max_grad_norm == 1.0
    ledger = PrivacyLedger.load(tmp_path / "privacy_ledger.pt")
    assert ledger.counts.tolist() == [2] * 24  # ids from the sampler: the data module is plain
    assert ledger.metadata["noise_multiplier"] == 2.0
    assert (tmp_path / "privacy_ledger.csv").is_file()
