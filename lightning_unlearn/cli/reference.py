"""``lightning-unlearn reference``: train K reference models on random halves (resumable).

A thin command over :func:`~lightning_unlearn.unlearning.train_reference_models` for the bundled
data sets and models; the Python API takes any LightningModule factory and data set.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import Any

from lightning_unlearn.cli._args import add_common
from lightning_unlearn.cli.common import make_model
from lightning_unlearn.cli.fit import add_data_options, datamodule_from_args

__all__ = ["build_parser", "run"]


def build_parser(prog: str = "lightning-unlearn reference") -> argparse.ArgumentParser:
    """The ``reference`` command's parser."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train K reference models (LiRA halves: every example OUT of exactly K/2) "
        "with the fit recipe; write model_XXX.pt with membership masks, manifest.json and "
        "reference_stats.pt (per-example loss and logit-scaled confidence) to --output-dir. "
        "Rerunning resumes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_options(parser)
    parser.add_argument("--model", choices=["cnn", "mlp"], default="cnn")
    parser.add_argument("--k", type=int, default=8, help="number of models (even)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", required=True, help="directory of the models")
    add_common(parser)
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or finish) the models and write their statistics; returns a summary."""
    from lightning_unlearn.unlearning.reference import train_reference_models

    dm = datamodule_from_args(args)
    dm.setup()
    refs = train_reference_models(
        functools.partial(make_model, args.model, dm, lr=args.lr),
        dm.train_dataset,
        out_dir=args.output_dir,
        k=args.k,
        seed=args.seed,
        batch_size=args.batch_size,
        trainer_kwargs={"max_epochs": args.epochs, "accelerator": "auto", "devices": 1},
        progress=not args.no_progress,
    )
    stats = refs.statistics(dm.train_eval_dataloader())
    stats.save(Path(args.output_dir) / "reference_stats.pt")
    out = stats.out_moments("phi")
    summary = {
        "k": refs.k,
        "num_samples": refs.num_samples,
        "out_phi_mean_median": float(out.mean.nanmedian()),
        "in_phi_mean_median": float(stats.in_moments("phi").mean.nanmedian()),
        "stats": str(Path(args.output_dir) / "reference_stats.pt"),
    }
    print(json.dumps(summary, indent=2))
    return summary
