"""What ``fit`` writes after training: the model, the ledger, its CSV and a summary.

Each file is written atomically, in that order; a write that fails names its file and what
was already saved, and ``--ckpt_path last`` rewrites them from the last epoch checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_unlearn.callbacks import PerInstancePrivacyMonitor
from lightning_unlearn.checkpoints import model_record, save_model, train_dataset
from lightning_unlearn.errors import OutputWriteError
from lightning_unlearn.evaluation.functional import per_example_losses
from lightning_unlearn.integrity import write_json

__all__ = ["write_fit_outputs"]


def _write(path: Path, writer: Callable[[], Any], saved: list[str]) -> None:
    try:
        writer()
    except OSError as err:
        kept = f"; already saved: {', '.join(saved)}" if saved else ""
        raise OutputWriteError(
            f"Could not write {str(path)!r} ({err.strerror or err}){kept}. Fix the cause and "
            "re-run with `--ckpt_path last` to rewrite the outputs from the last checkpoint."
        ) from None
    saved.append(str(path))


def write_fit_outputs(
    trainer: Trainer,
    model: LightningModule,
    datamodule: LightningDataModule,
    *,
    resumed_from: str | None,
    seconds: float,
) -> dict[str, Any]:
    """Write ``model.ckpt``, ``privacy_ledger.pt`` / ``.csv`` and ``fit_summary.json`` into the
    trainer's ``default_root_dir``; returns (and prints) the summary."""
    out = Path(trainer.default_root_dir)
    model.eval()
    saved: list[str] = []
    ckpt = out / "model.ckpt"
    record = model_record(model, datamodule, "fit", epochs=trainer.current_epoch)
    _write(ckpt, lambda: save_model(model, ckpt, record), saved)
    summary: dict[str, Any] = {
        "checkpoint": str(ckpt),
        "resumed_from": resumed_from,
        "num_train": len(train_dataset(datamodule)),
        "train_seconds": round(seconds, 2),
    }
    monitors = [c for c in trainer.callbacks if isinstance(c, PerInstancePrivacyMonitor)]  # type: ignore[attr-defined]
    if monitors:
        ledger = monitors[0].ledger.to("cpu")
        _write(out / "privacy_ledger.pt", lambda: ledger.save(out / "privacy_ledger.pt"), saved)
        csv = out / "privacy_ledger.csv"
        _write(csv, lambda: ledger.to_csv(csv, delta=ledger.metadata.get("delta")), saved)
        order = max(ledger.alphas)
        levels = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
        q = torch.quantile(ledger.privacy_loss(order).double(), levels)
        summary["ledger"] = str(out / "privacy_ledger.pt")
        summary[f"P_alpha{order}_quantiles_10_50_90"] = [float(v) for v in q]
    if is_overridden("test_dataloader", datamodule):
        loss, _, correct = per_example_losses(model, datamodule.test_dataloader())
        summary["test_loss"] = float(loss.double().mean())
        summary["test_acc"] = float(correct.double().mean())
    path = out / "fit_summary.json"
    _write(path, lambda: write_json(path, summary, indent=2), saved)
    print(json.dumps(summary, indent=2))
    return summary
