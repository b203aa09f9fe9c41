"""``lightning-unlearn reference``: train K reference models on random parts (resumable).

A thin command over :func:`~lightning_unlearn.unlearning.train_reference_models`: ``model`` is
a ``class_path`` of any LightningModule (a fresh one per reference model), ``data`` a data
module whose training set the halves split.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from jsonargparse import CLI, lazy_instance
from lightning.pytorch import LightningDataModule, LightningModule
from torch.utils.data import DataLoader

from lightning_unlearn.data.modules import DigitsDataModule
from lightning_unlearn.unlearning.reference import train_reference_models
from lightning_unlearn.validation import check_int

__all__ = ["reference", "run"]


def reference(
    *,
    output_dir: str,
    model: Callable[[], LightningModule],
    data: LightningDataModule = lazy_instance(DigitsDataModule),  # noqa: B008
    k: int = 8,
    folds: int = 2,
    max_epochs: int = 15,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    threads: int = 1,
) -> dict[str, Any]:
    """Train K reference models (every example OUT of exactly K / folds; LiRA's halves by
    default); write
    model_XXX.pt with membership masks, manifest.json and reference_stats.pt (per-example loss
    and logit-scaled confidence). Rerunning resumes.

    Args:
        output_dir: directory of the models.
        model: the model class (``class_path`` / ``init_args``), built afresh for each model.
        data: the training data.
        k: number of models (a multiple of ``folds``).
        folds: each model trains on ``1 - 1/folds`` of the data and every example is OUT of
            ``k / folds`` models (2: LiRA's halves; 4: three quarters, closer to the model
            being unlearned).
        max_epochs: training epochs of each model.
        batch_size: training batch size.
        seed: seed of the halves, initialisations and shuffles.
        progress: show a progress bar over the models.
        threads: torch CPU threads.
    """
    if check_int("threads", threads, minimum=0):
        torch.set_num_threads(threads)
    data.prepare_data()
    data.setup("fit")
    refs = train_reference_models(
        model, data, out_dir=output_dir, k=k, seed=seed, batch_size=batch_size, folds=folds,
        trainer_kwargs={"max_epochs": max_epochs, "accelerator": "auto", "devices": 1},
        progress=progress,
    )  # fmt: skip
    ordered = DataLoader(data.train_dataloader().dataset, batch_size=512, shuffle=False)
    stats = refs.statistics(ordered)
    stats.save(Path(output_dir) / "reference_stats.pt")
    summary = {
        "k": refs.k,
        "num_samples": refs.num_samples,
        "out_phi_mean_median": float(stats.out_moments("phi").mean.nanmedian()),
        "in_phi_mean_median": float(stats.in_moments("phi").mean.nanmedian()),
        "stats": str(Path(output_dir) / "reference_stats.pt"),
    }
    print(json.dumps(summary, indent=2))
    return summary


def run(argv: list[str]) -> None:
    """``lightning-unlearn reference ARGS``."""
    CLI(reference, args=argv, prog="lightning-unlearn reference", exit_on_error=False)
