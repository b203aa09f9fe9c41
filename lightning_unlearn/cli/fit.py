"""``lightning-unlearn fit``: train a classifier with the per-instance privacy monitor.

Crash-safe: a checksummed Lightning checkpoint is written after every epoch
(``checkpoints/last.ckpt``), ``--resume`` continues from it (``--ckpt-path`` from any
checkpoint), and at the end the model is saved first, then the ledger, the CSV and the summary,
each written atomically; a failing write names its file and leaves the others in place.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_unlearn.cli._args import add_common, none_or_float
from lightning_unlearn.cli.common import (
    DATASETS,
    build_datamodule,
    describe_datamodule,
    make_model,
    save_model_checkpoint,
)
from lightning_unlearn.errors import CheckpointError, OutputWriteError
from lightning_unlearn.evaluation.functional import per_example_losses
from lightning_unlearn.integrity import write_json

__all__ = ["add_data_options", "build_parser", "run"]


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """The data-set options shared by ``fit`` and ``demo``."""
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="digits")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="Fashion-MNIST IDX directory (default /usr/share/datasets/fashion-mnist)",
    )
    parser.add_argument(
        "--subset", type=int, default=None, help="Fashion-MNIST: training-pool examples to keep"
    )
    parser.add_argument(
        "--test-subset", type=int, default=None, help="Fashion-MNIST: test examples to keep"
    )


def build_parser(prog: str = "lightning-unlearn fit") -> argparse.ArgumentParser:
    """The ``fit`` command's parser."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train a small classifier with PerInstancePrivacyMonitor; write model.ckpt, "
        "privacy_ledger.pt / .csv and TensorBoard logs to --output-dir.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_options(parser)
    parser.add_argument("--model", choices=["cnn", "mlp"], default="cnn")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1, help="SGD learning rate")
    parser.add_argument(
        "--noise-multiplier",
        type=float,
        default=1.0,
        help="nominal sigma of the accounting (THEORY §1: no noise is added to training)",
    )
    parser.add_argument(
        "--max-grad-norm",
        type=none_or_float,
        default=None,
        help="clipping bound C of the accounting (none: no clipping)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", required=True, help="directory for the outputs")
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run from OUTPUT_DIR/checkpoints/last.ckpt (same options)",
    )
    resume.add_argument(
        "--ckpt-path", default=None, help="continue from this checkpoint written by `fit`"
    )
    add_common(parser)
    return parser


def resume_checkpoint(args: argparse.Namespace) -> Path | None:
    """The checkpoint ``--resume`` / ``--ckpt-path`` name (None for a fresh run).

    Raises:
        CheckpointError: the checkpoint does not exist.
    """
    if args.ckpt_path is not None:
        path = Path(args.ckpt_path)
    elif args.resume:
        path = Path(args.output_dir) / "checkpoints" / "last.ckpt"
    else:
        return None
    if not path.is_file():
        raise CheckpointError(
            f"There is no checkpoint to resume from at {str(path)!r}; run `fit` without "
            "`--resume` to start afresh, or pass `--ckpt-path` of an existing checkpoint."
        )
    return path


def _write(path: Path, writer: Callable[[], Any], saved: list[str]) -> None:
    try:
        writer()
    except OSError as err:
        kept = f"; already saved: {', '.join(saved)}" if saved else ""
        raise OutputWriteError(
            f"Could not write {str(path)!r} ({err.strerror or err}){kept}. Fix the cause and "
            "re-run with `--resume` to rewrite the outputs from the last checkpoint."
        ) from None
    saved.append(str(path))


def datamodule_from_args(args: argparse.Namespace) -> Any:
    """The data module an ``args`` namespace describes."""
    kwargs: dict[str, Any] = {"batch_size": args.batch_size, "seed": args.seed}
    if args.dataset == "fashion-mnist":
        kwargs.update(data_dir=args.data_dir, subset=args.subset, test_subset=args.test_subset)
    return build_datamodule(args.dataset, **kwargs)


def test_metrics(model: torch.nn.Module, dm: Any) -> dict[str, float]:
    """Mean loss and accuracy on the data module's test split."""
    loss, _, correct = per_example_losses(model, dm.test_dataloader())
    return {"test_loss": float(loss.double().mean()), "test_acc": float(correct.double().mean())}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``fit``; returns the summary it also writes to ``fit_summary.json``."""
    from lightning_unlearn.cli.pipeline import tensorboard_logger, train_with_monitor

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = resume_checkpoint(args)
    pl.seed_everything(args.seed, workers=True, verbose=False)
    dm = datamodule_from_args(args)
    dm.setup()
    model = make_model(args.model, dm, lr=args.lr)
    trained = train_with_monitor(
        model,
        dm,
        epochs=args.epochs,
        noise_multiplier=args.noise_multiplier,
        max_grad_norm=args.max_grad_norm,
        logger=tensorboard_logger(out, "tensorboard"),
        progress=not args.no_progress,
        checkpoint_dir=out / "checkpoints",
        ckpt_path=ckpt_path,
    )
    model.eval()
    ledger = trained.ledger
    saved: list[str] = []
    ckpt = out / "model.ckpt"
    _write(
        ckpt,
        lambda: save_model_checkpoint(
            model,
            ckpt,
            datamodule=describe_datamodule(dm),
            extra={
                "command": "fit",
                "epochs": args.epochs,
                "noise_multiplier": args.noise_multiplier,
                "max_grad_norm": args.max_grad_norm,
                "seed": args.seed,
            },
        ),
        saved,
    )
    _write(out / "privacy_ledger.pt", lambda: ledger.save(out / "privacy_ledger.pt"), saved)
    csv_path = out / "privacy_ledger.csv"
    _write(csv_path, lambda: ledger.to_csv(csv_path, delta=ledger.metadata.get("delta")), saved)
    order = max(ledger.alphas)
    p = ledger.privacy_loss(order)
    q = torch.quantile(p.double(), torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    summary = {
        "checkpoint": str(ckpt),
        "ledger": str(out / "privacy_ledger.pt"),
        "resumed_from": None if ckpt_path is None else str(ckpt_path),
        "num_train": dm.num_train,
        "train_seconds": round(trained.seconds, 2),
        **test_metrics(model, dm),
        f"P_alpha{order}_quantiles_10_50_90": [float(v) for v in q],
    }
    summary_path = out / "fit_summary.json"
    _write(summary_path, lambda: write_json(summary_path, summary, indent=2), saved)
    print(json.dumps(summary, indent=2))
    return summary
