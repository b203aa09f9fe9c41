"""Shared set-up of the calibrated-unlearning tests: digits, six reference models, a model.

Built once per test session (``functools.cache``), since two test files use it.
"""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.unlearning import UnlearningModule, train_reference_models
from lightning_unlearn.unlearning.calibrated_stopping import reference_heldout_values
from tests.unlearning._reference_support import NUM, make_seen_mlp, small_digits

TRAINER = {"accelerator": "cpu", "devices": 1, "deterministic": True}
QUIET = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "max_epochs": -1,
    **TRAINER,
}
FORGET = [3, 17, 40, 41, 77, 90]


@functools.cache
def build_setup() -> dict[str, Any]:
    data = IndexedDataset(small_digits())
    x, y = load_digits(return_X_y=True)
    heldout = IndexedDataset(
        TensorDataset(
            torch.tensor(x[NUM : NUM + 60] / 16.0, dtype=torch.float32),
            torch.tensor(y[NUM : NUM + 60], dtype=torch.long),
        )
    )
    refs = train_reference_models(
        make_seen_mlp,
        data,
        out_dir=tempfile.mkdtemp(prefix="lu_refs_"),
        k=6,
        seed=0,
        batch_size=16,
        trainer_kwargs={"max_epochs": 15, **TRAINER},
        progress=False,
    )
    stats = refs.statistics(DataLoader(data, batch_size=512))
    dm = ForgetRetainDataModule(data, FORGET, heldout=heldout, batch_size=16, seed=0)
    held = reference_heldout_values(refs, dm.heldout_dataloader())
    pl.seed_everything(0, verbose=False)
    model = make_seen_mlp()
    pl.Trainer(**{**QUIET, "max_epochs": 30}).fit(
        model, train_dataloaders=DataLoader(data, batch_size=16, shuffle=True)
    )
    return {"data": data, "stats": stats, "dm": dm, "held": held, "model": model, "refs": refs}


class ReportingUnlearner(UnlearningModule):
    """Writes each rank's stop step, reason and a weight checksum to ``report_dir`` (the
    state of ``ddp_spawn`` workers does not come back to the parent)."""

    report_dir: str = ""

    def on_train_end(self) -> None:
        super().on_train_end()
        assert self.result is not None
        flat = torch.cat([p.detach().flatten() for p in self.module.parameters()])
        report = {
            "step": self.trainer.global_step,
            "reason": self.result.stop_reason,
            "checked_steps": [r["step"] for r in self.result.trajectory],
            "weights": flat.double().sum().item(),
        }
        path = Path(self.report_dir) / f"rank{self.trainer.global_rank}.json"
        path.write_text(json.dumps(report))
