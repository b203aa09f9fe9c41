"""``lightning-unlearn evaluate``: how well a model has forgotten a forget set (THEORY §6)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lightning_unlearn.cli._args import add_common
from lightning_unlearn.cli.common import (
    build_datamodule,
    load_model_checkpoint,
    read_forget_ids,
)
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.errors import CheckpointError
from lightning_unlearn.integrity import write_json

__all__ = ["build_parser", "run"]


def build_parser(prog: str = "lightning-unlearn evaluate") -> argparse.ArgumentParser:
    """The ``evaluate`` command's parser."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Evaluate a checkpoint on a forget set: loss / accuracy on forget, retain "
        "and held-out (test) data, loss-threshold MIA AUROC; with --oracle also the KS forget "
        "quality and prediction divergence; with --reference the forget-set loss barrier.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="the model to evaluate")
    parser.add_argument(
        "--forget-ids",
        required=True,
        help="forget ids: a .json list, a text file of ids, or inline `3,17,42`",
    )
    parser.add_argument(
        "--oracle", default=None, help="checkpoint retrained without the forget set"
    )
    parser.add_argument(
        "--reference", default=None, help="checkpoint for the loss barrier (e.g. the original)"
    )
    parser.add_argument("--output", default=None, help="write the metrics as JSON here")
    add_common(parser)
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``evaluate``; returns the metrics dictionary."""
    from lightning_unlearn.evaluation.functional import (
        forget_quality_ks,
        per_example_logits,
        per_example_losses,
        prediction_divergence,
    )
    from lightning_unlearn.experiments.pipeline import forget_set_barrier
    from lightning_unlearn.unlearning.result import evaluate_splits

    model, info = load_model_checkpoint(args.checkpoint)
    dm = build_datamodule(info["datamodule"]["name"], **info["datamodule"]["hparams"])
    dm.setup()
    frdm = ForgetRetainDataModule(
        dm.train_dataset,  # type: ignore[arg-type]
        read_forget_ids(args.forget_ids),
        heldout=dm.test_dataset,
        batch_size=dm.batch_size,
    )
    metrics: dict[str, Any] = {"checkpoint": str(args.checkpoint), **evaluate_splits(model, frdm)}
    for flag in ("oracle", "reference"):
        path = getattr(args, flag)
        if path is None:
            continue
        other, other_info = load_model_checkpoint(path)
        if other_info["datamodule"] != info["datamodule"]:
            raise CheckpointError(
                f"Expected --{flag} {path!r} to be trained on the same data as --checkpoint, "
                f"but it was trained on {other_info['datamodule']} instead of "
                f"{info['datamodule']}."
            )
        if flag == "oracle":
            forget = frdm.forget_dataloader()
            ks = forget_quality_ks(
                per_example_losses(model, forget)[0], per_example_losses(other, forget)[0]
            )
            logits_m = per_example_logits(model, forget)[0]
            logits_o = per_example_logits(other, forget)[0]
            metrics["oracle"] = {
                **evaluate_splits(other, frdm),
                "ks_statistic": float(ks.statistic),
                "ks_pvalue": float(ks.pvalue),
                "js_divergence": float(prediction_divergence(logits_m, logits_o, kind="js")),
            }
        else:
            metrics["forget_loss_barrier"] = forget_set_barrier(other, model, frdm)
    text = json.dumps(metrics, indent=2)
    if args.output is not None:
        write_json(args.output, metrics, indent=2)
    print(text)
    return metrics
