"""`lightning-unlearn fit` / `unlearn` on the user's own LightningModule and DataModule (by
class_path), with the monitor configured under `trainer.callbacks` from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_unlearn import PrivacyLedger
from lightning_unlearn.checkpoints import load_weights
from lightning_unlearn.cli import main


class CLIModule(pl.LightningModule):
    def __init__(self, lr: float = 0.1) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class CLIData(pl.LightningDataModule):
    def __init__(self, n: int = 24, batch_size: int = 6) -> None:
        super().__init__()
        self.n, self.batch_size = n, batch_size
        g = torch.Generator().manual_seed(0)
        self.data = TensorDataset(torch.randn(n, 4, generator=g), torch.arange(n) % 2)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True)


USER = ["--model", f"{__name__}.CLIModule", "--data", f"{__name__}.CLIData"]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu"]


def test_user_module_with_the_monitor_from_the_command_line(tmp_path: Path) -> None:
    fit = tmp_path / "fit"
    argv = [
        "fit", *USER, *QUIET, "--trainer.max_epochs=2",
        "--trainer.callbacks.noise_multiplier=2.0",
        "--trainer.callbacks.max_grad_norm=1.0",
        "--trainer.callbacks.convention=dpsgd",
        "--output_dir", str(fit),
    ]  # fmt: skip
    assert main(argv) == 0
    ledger = PrivacyLedger.load(fit / "privacy_ledger.pt")
    assert ledger.counts.tolist() == [2] * 24  # ids from the sampler: the data module is plain
    assert ledger.metadata["noise_multiplier"] == 2.0
    assert ledger.metadata["max_grad_norm"] == 1.0
    assert (fit / "privacy_ledger.csv").is_file()
    model = CLIModule()
    assert load_weights(model, fit / "model.ckpt")["model"]["class_path"].endswith("CLIModule")

    # The unlearner holds the user's module as a nested class_path.
    out = tmp_path / "unlearn"
    argv = [
        "unlearn", "--model.init_args.module", f"{__name__}.CLIModule",
        "--data", f"{__name__}.CLIData", *QUIET, "--checkpoint", str(fit / "model.ckpt"),
        "--ledger", str(fit / "privacy_ledger.pt"), "--forget_ids", "0,5",
        "--budget_steps", "2", "--output_dir", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert (result["steps"], result["num_forget"]) == (2, 2)
    assert set(result["before"]) == {"forget", "retain"}  # no test split: no held-out set
    unlearned = CLIModule()
    load_weights(unlearned, out / "unlearned.ckpt")
    assert not torch.equal(unlearned.fc.weight, model.fc.weight)
