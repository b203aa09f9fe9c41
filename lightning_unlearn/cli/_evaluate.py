"""``evaluate``: how well a checkpoint has forgotten a forget set (THEORY §6).

Per split, :func:`~lightning_unlearn.unlearning.result.evaluate_splits` (the one evaluator and
its keys); with an oracle (retrained without the forget set) the KS forget quality and the
Jensen-Shannon divergence of predictions on the forget set; with a reference model the
forget-set loss barrier. Every checkpoint must record the data set being evaluated.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer

from lightning_unlearn.checkpoints import load_weights, train_dataset
from lightning_unlearn.cli._unlearn import forget_retain
from lightning_unlearn.data.fingerprint import dataset_fingerprint
from lightning_unlearn.errors import CheckpointError
from lightning_unlearn.evaluation.functional import (
    forget_quality_ks,
    loss_barrier,
    per_example_logits,
    per_example_losses,
    prediction_divergence,
)
from lightning_unlearn.integrity import write_json
from lightning_unlearn.unlearning.result import evaluate_splits

__all__ = ["evaluate"]


def _load(model: LightningModule, path: str, what: str, fingerprint: str) -> LightningModule:
    record = load_weights(model, path, what)
    recorded = record.get("dataset_fingerprint")
    if recorded is not None and recorded != fingerprint:
        raise CheckpointError(
            f"Expected the {what} {path!r} to be trained on the configured `data` (fingerprint "
            f"{fingerprint}), but it records {recorded} ({record.get('data')}); configure the "
            "data it was trained on."
        )
    return model.eval()


def evaluate(
    trainer: Trainer,
    model: LightningModule,
    datamodule: LightningDataModule,
    checkpoint: str,
    forget_ids: str,
    oracle: str | None,
    reference: str | None,
) -> dict[str, Any]:
    """Run ``evaluate``; writes ``evaluation.json`` in the output directory and prints it."""
    frdm = forget_retain(datamodule, forget_ids)
    data = train_dataset(datamodule)
    fingerprint = dataset_fingerprint(data, len(data))
    paths = {"oracle": oracle, "reference": reference}
    others = {k: copy.deepcopy(model) for k, v in paths.items() if v is not None}
    _load(model, checkpoint, "checkpoint", fingerprint)
    metrics: dict[str, Any] = {"checkpoint": checkpoint, **evaluate_splits(model, frdm)}
    forget = frdm.forget_dataloader()
    if oracle is not None:
        other = _load(others["oracle"], oracle, "oracle", fingerprint)
        ks = forget_quality_ks(
            per_example_losses(model, forget)[0], per_example_losses(other, forget)[0]
        )
        js = prediction_divergence(
            per_example_logits(model, forget)[0], per_example_logits(other, forget)[0], kind="js"
        )
        metrics["oracle"] = {
            **evaluate_splits(other, frdm),
            "ks_statistic": float(ks.statistic),
            "ks_pvalue": float(ks.pvalue),
            "js_divergence": float(js),
        }
    if reference is not None:
        other = _load(others["reference"], reference, "reference", fingerprint)
        metrics["forget_loss_barrier"] = float(loss_barrier(other, model, forget, num_points=11)[0])
    out = Path(trainer.default_root_dir)
    write_json(out / "evaluation.json", metrics, indent=2)
    print(json.dumps(metrics, indent=2))
    return metrics
