"""``lightning-unlearn unlearn``: checkpoint + ledger + forget ids -> unlearned checkpoint, JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lightning_unlearn.accounting import UnlearningConstants
from lightning_unlearn.cli._args import add_common
from lightning_unlearn.cli.common import (
    build_datamodule,
    load_ledger,
    load_model_checkpoint,
    read_forget_ids,
    save_model_checkpoint,
)
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.unlearning.module import METHODS

__all__ = ["add_budget_options", "build_parser", "constants_from_args", "run"]


def add_budget_options(parser: argparse.ArgumentParser) -> None:
    """Budget (THEORY §5) and stopping options shared by ``unlearn`` and ``demo``."""
    g = parser.add_argument_group("budget (THEORY §5) and loss-calibrated stopping")
    g.add_argument(
        "--budget-steps",
        type=int,
        default=None,
        help="a fixed step budget instead of the calibrated one",
    )
    g.add_argument(
        "--max-budget-steps",
        type=int,
        default=None,
        help="largest calibrated budget allowed (default: the training run's steps, beyond "
        "which retraining is cheaper)",
    )
    g.add_argument("--alpha", type=int, default=2, help="Rényi order of the target (uses P at 4α)")
    g.add_argument(
        "--c-lsi",
        type=float,
        default=1.0,
        help="log-Sobolev constant C_LSI (unknown for deep nets: a calibration knob)",
    )
    g.add_argument(
        "--bound-noise-multiplier",
        type=float,
        default=1.0,
        help="σ of the bound (the training run's nominal noise multiplier)",
    )
    g.add_argument("--target-epsilon", type=float, default=1.0, help="target Rényi divergence")
    g.add_argument("--d0", type=float, default=0.0, help="D0 of THEORY §5")
    g.add_argument("--d-irr", type=float, default=0.0, help="D_irr of THEORY §5")
    g.add_argument(
        "--aggregate", choices=["max", "mean", "sum"], default="max", help="P of a forget set"
    )
    g.add_argument(
        "--stop",
        choices=["auroc", "loss_gap", "none"],
        default="auroc",
        help="loss-calibrated stopping rule (forget vs held-out losses)",
    )
    g.add_argument("--tolerance", type=float, default=0.05, help="tolerance of the stop rule")
    g.add_argument("--check-every", type=int, default=10, help="steps between stopping checks")


def constants_from_args(args: argparse.Namespace) -> UnlearningConstants:
    """The THEORY §5 constants named by the options (η is the unlearning learning rate)."""
    return UnlearningConstants(
        alpha=args.alpha,
        c_lsi=args.c_lsi,
        langevin_sigma=args.bound_noise_multiplier,
        lr=args.lr,
        d0=args.d0,
        d_irr=args.d_irr,
        target_epsilon=args.target_epsilon,
    )


def build_parser(prog: str = "lightning-unlearn unlearn") -> argparse.ArgumentParser:
    """The ``unlearn`` command's parser."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Unlearn a forget set from a `fit` checkpoint with a step budget computed "
        "from the forget set's privacy losses; write unlearned.ckpt and result.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="model.ckpt written by `fit`")
    parser.add_argument("--ledger", required=True, help="privacy_ledger.pt written by `fit`")
    parser.add_argument(
        "--forget-ids",
        required=True,
        help="forget ids: a .json list, a text file of ids, or inline `3,17,42`",
    )
    parser.add_argument("--method", choices=list(METHODS), default="finetune")
    parser.add_argument("--lr", type=float, default=0.05, help="unlearning learning rate")
    parser.add_argument("--noise-multiplier", type=float, default=0.01, help="SGLD σ (method sgld)")
    parser.add_argument("--seed", type=int, default=0)
    add_budget_options(parser)
    parser.add_argument("--output-dir", required=True, help="directory for the outputs")
    add_common(parser)
    return parser


def stopping_from_args(args: argparse.Namespace) -> Any:
    """The :class:`LossCalibratedStopping` the options describe (None for ``--stop none``)."""
    from lightning_unlearn.unlearning.stopping import LossCalibratedStopping

    if args.stop == "none":
        return None
    return LossCalibratedStopping(
        check_every_n_steps=args.check_every, criterion=args.stop, tolerance=args.tolerance
    )


def recorded_expectations(info: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """Ledger metadata the checkpoint's training run must have recorded (beyond data, model)."""
    extra = info.get("extra", {})
    expected: dict[str, Any] = {"batch_size": batch_size}
    for key in ("noise_multiplier", "max_grad_norm"):
        if extra.get(key) is not None:
            expected[key] = extra[key]
    return expected


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``unlearn``; returns the result dictionary also written to ``result.json``.

    The ledger's recording configuration (data set, model architecture and final weights,
    batch size, noise multiplier) is checked against the checkpoint in every budget mode before
    any step runs. ``unlearned.ckpt`` is written before ``result.json``, whose ``audit`` entry
    ``lightning-unlearn audit`` re-verifies.
    """
    from lightning_unlearn.cli.pipeline import BudgetSpec, tensorboard_logger, unlearn_forget_set
    from lightning_unlearn.unlearning.audit import audit_record

    model, info = load_model_checkpoint(args.checkpoint)
    dm = build_datamodule(info["datamodule"]["name"], **info["datamodule"]["hparams"])
    dm.setup()
    ledger = load_ledger(args.ledger, num_samples=dm.num_train)
    forget_ids = read_forget_ids(args.forget_ids)
    frdm = ForgetRetainDataModule(
        dm.train_dataset,  # type: ignore[arg-type]
        forget_ids,
        heldout=dm.test_dataset,
        batch_size=dm.batch_size,
        seed=args.seed,
    )
    spec = BudgetSpec(
        steps=args.budget_steps,
        constants=None if args.budget_steps is not None else constants_from_args(args),
        aggregate=args.aggregate,
        max_steps=args.max_budget_steps,
    )
    budget = spec.budget(
        ledger, frdm, model=model, expected_metadata=recorded_expectations(info, dm.batch_size)
    )
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    unlearned, result, seconds = unlearn_forget_set(
        model,
        frdm,
        method=args.method,
        budget=budget,
        lr=args.lr,
        stopping=stopping_from_args(args),
        sgld_sigma=args.noise_multiplier,
        logger=tensorboard_logger(out, "tensorboard"),
        progress=not args.no_progress,
        seed=args.seed,
    )
    result.extra.update(
        {
            "budget_source": spec.source,
            "seconds": round(seconds, 2),
            "checkpoint": str(args.checkpoint),
        }
    )
    ckpt = save_model_checkpoint(
        unlearned,
        out / "unlearned.ckpt",
        datamodule=info["datamodule"],
        extra={"command": "unlearn", "method": args.method, "steps": result.steps},
    )
    result.audit = audit_record(
        forget_ids=frdm.forget_ids,
        ledger=ledger,
        model_before=model,
        model_after=unlearned,
        budget=budget,
        budget_source=spec.source,
        steps=result.steps,
        stop_reason=result.stop_reason,
        files={
            "checkpoint": args.checkpoint,
            "ledger": args.ledger,
            "unlearned_checkpoint": str(ckpt),
        },
    )
    result.to_json(out / "result.json")
    summary = {
        "unlearned_checkpoint": str(ckpt),
        "result": str(out / "result.json"),
        "steps": result.steps,
        "budget": result.budget,
        "stop_reason": result.stop_reason,
    }
    print(json.dumps(summary, indent=2))
    return json.loads(result.to_json())
