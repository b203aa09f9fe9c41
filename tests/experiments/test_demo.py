"""The demo end to end at a tiny scale on real data, through `lightning-unlearn demo`.

It checks that the report and plots are written and hold real numbers, and that the summary's
numbers are the package's evaluator's (not that the demo's conclusions hold: too small a scale
for that; see docs/results_fashion_mnist.md).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from lightning_unlearn.cli import main
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.experiments.builders import datamodule_from_description
from lightning_unlearn.experiments.checkpoints import load_model_checkpoint
from lightning_unlearn.unlearning.result import SPLITS, evaluate_splits

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"(?<![\w.])-?\d+\.\d+(?:e[+-]\d+)?", text)]


def check_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 5000  # a real figure, not an empty canvas


def test_demo_tiny_scale_writes_report_with_numbers(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    argv = [
        "demo", "--epochs", "2", "--forget_size", "8", "--n_bins", "4",
        "--methods", "[finetune, sgld]", "--budget_steps", "10", "--check_every", "5",
        "--output_dir", str(out), "--progress", "false",
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == " ".join(["lightning-unlearn", *argv])
    assert summary["num_train"] == 1258
    assert len(summary["rows"]) == 4  # 2 forget sets x 2 methods
    for row in summary["rows"]:
        assert row["budget"] == 10
        assert row["steps"] == 10  # "observe" spends the budget
        for model in ("original", "unlearned", "oracle"):
            metrics = row[model]
            assert all(math.isfinite(metrics[s][k]) for s in SPLITS for k in ("loss", "accuracy"))
            assert 0.0 <= metrics["forget_mia_auroc"] <= 1.0
        assert len(summary["trajectories"][f"{row['group']}, {row['method']}"]["steps"]) == 3
    low = next(r for r in summary["rows"] if r["group"] == "low P")
    high = next(r for r in summary["rows"] if r["group"] == "high P")
    assert high["P_forget"] > low["P_forget"]

    # the "original" rows are evaluate_splits of the saved model on the saved forget set
    model, info = load_model_checkpoint(out / "model.ckpt")
    dm = datamodule_from_description(info["bundled"]["datamodule"])
    dm.setup()
    ids = torch.tensor(json.loads((out / "forget_ids_high.json").read_text()))
    frdm = ForgetRetainDataModule(dm.train_dataset, ids, heldout=dm.test_dataset, batch_size=64)  # type: ignore[arg-type]
    assert evaluate_splits(model, frdm) == high["original"]

    md = (out / "report.md").read_text()
    assert "| high P | sgld |" in md
    assert len(numbers(md)) > 40
    assert "<table>" in (out / "report.html").read_text()
    for name in ("privacy_histogram", "forget_loss_trajectory", "mia_auroc_trajectory",
                 "budget_vs_steps"):  # fmt: skip
        check_png(out / "plots" / f"{name}.png")
    assert (out / "privacy_ledger.pt").is_file()
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert len(events) >= 5  # the fit run and the four unlearning runs
