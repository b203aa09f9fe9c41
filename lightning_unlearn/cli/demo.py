"""``lightning-unlearn demo``: the whole story in about a minute on scikit-learn's digits.

1. Train a small GroupNorm CNN with :class:`PerInstancePrivacyMonitor` (TensorBoard logs).
2. Show the distribution of per-instance privacy losses P(x, 4α) (THEORY §3).
3. Pick a low-P and a high-P forget set (quantile bins, THEORY §6).
4. Unlearn each with the budget of THEORY §5 and loss-calibrated stopping.
5. Retrain an oracle without each forget set and compare: forget-set loss / accuracy,
   membership-inference AUROC, steps used, and the loss barrier to the oracle.
6. Write ``report.md`` / ``report.html`` with PNG plots, ``summary.json`` and the logs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lightning_unlearn.cli._args import add_common, none_or_float
from lightning_unlearn.cli.common import (
    build_datamodule,
    describe_datamodule,
    make_model,
    save_model_checkpoint,
    write_forget_ids,
)
from lightning_unlearn.cli.fit import add_data_options, test_metrics
from lightning_unlearn.cli.unlearn import add_budget_options, constants_from_args
from lightning_unlearn.integrity import write_json

__all__ = ["build_parser", "run"]


def build_parser(prog: str = "lightning-unlearn demo") -> argparse.ArgumentParser:
    """The ``demo`` command's parser."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Train with the privacy monitor, pick low- and high-privacy-loss forget "
        "sets, unlearn each with the calibrated budget and loss-calibrated stopping, compare "
        "with retrained oracles, and write a report with plots and TensorBoard logs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_data_options(parser)
    parser.add_argument("--model", choices=["cnn", "mlp"], default="cnn")
    parser.add_argument("--epochs", type=int, default=12, help="training (and oracle) epochs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1, help="training SGD learning rate")
    parser.add_argument("--noise-multiplier", type=float, default=1.0, help="nominal σ")
    parser.add_argument("--max-grad-norm", type=none_or_float, default=None)
    parser.add_argument("--forget-size", type=int, default=30, help="examples per forget set")
    parser.add_argument(
        "--n-bins", type=int, default=10, help="P quantile bins; the lowest and highest are used"
    )
    parser.add_argument(
        "--methods", default="finetune,sgld", help="comma-separated unlearning methods"
    )
    parser.add_argument("--unlearn-lr", type=float, default=0.05, help="unlearning learning rate")
    parser.add_argument("--sgld-noise", type=float, default=0.01, help="SGLD σ")
    add_budget_options(parser)
    for action in parser._actions:
        if action.dest == "stop":
            action.choices = ["observe", "auroc", "loss_gap", "none"]
            action.help = (
                "observe: spend the budget and record where the loss-calibrated rule would stop; "
                "auroc / loss_gap: stop there"
            )
    parser.add_argument(
        "--tau",
        type=float,
        default=0.1,
        help="steps-to-unlearn tolerance on the forget-set mean loss vs the oracle's (THEORY §6)",
    )
    # The demo shows the bound's budget even where it exceeds the (short) training run, which
    # `unlearn` refuses by default; a cap still keeps a runaway budget from hanging it.
    parser.set_defaults(c_lsi=0.5, check_every=5, stop="observe", max_budget_steps=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default="outputs/demo")
    add_common(parser)
    return parser


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the demo; returns the summary also written to ``summary.json``."""
    from lightning_unlearn.cli.pipeline import (
        evaluate_model,
        forget_set_barrier,
        retrain_oracle,
        tensorboard_logger,
        train_with_monitor,
        unlearn_forget_set,
    )
    from lightning_unlearn.data.splits import ForgetRetainDataModule
    from lightning_unlearn.evaluation.functional import forget_sets_by_quantile, steps_to_unlearn
    from lightning_unlearn.unlearning.budget import compute_budget, forget_privacy_loss
    from lightning_unlearn.unlearning.stopping import LossCalibratedStopping

    start = time.perf_counter()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tb_root = out / "tensorboard"
    progress = not args.no_progress
    methods = [m.strip() for m in str(args.methods).split(",") if m.strip()]
    pl.seed_everything(args.seed, workers=True, verbose=False)
    kwargs: dict[str, Any] = {"batch_size": args.batch_size, "seed": args.seed}
    if args.dataset == "fashion-mnist":
        kwargs.update(data_dir=args.data_dir, subset=args.subset, test_subset=args.test_subset)
    dm = build_datamodule(args.dataset, **kwargs)
    dm.setup()

    _say(
        f"1/4 training a {args.model} on {args.dataset} ({dm.num_train} examples) with the monitor"
    )
    model = make_model(args.model, dm, lr=args.lr)
    trained = train_with_monitor(
        model,
        dm,
        epochs=args.epochs,
        noise_multiplier=args.noise_multiplier,
        max_grad_norm=args.max_grad_norm,
        save_dir=out,
        logger=tensorboard_logger(tb_root, "fit"),
        progress=progress,
    )
    model.eval()
    save_model_checkpoint(
        model, out / "model.ckpt", datamodule=describe_datamodule(dm), extra={"command": "demo"}
    )
    ledger = trained.ledger
    constants = constants_from_args(argparse.Namespace(**{**vars(args), "lr": args.unlearn_lr}))
    order = constants.privacy_order
    privacy = ledger.privacy_loss(order).cpu()
    fit_metrics = test_metrics(model, dm)

    _say(f"2/4 choosing forget sets from {args.n_bins} quantile bins of P(x, α={order})")
    bins = forget_sets_by_quantile(privacy, n_bins=args.n_bins, size=args.forget_size, seed=0)
    groups = {"low P": bins[0].cpu(), "high P": bins[-1].cpu()}
    for name, ids in groups.items():
        write_forget_ids(out / f"forget_ids_{name.split()[0]}.json", ids)

    rows: list[dict[str, Any]] = []
    trajectories: dict[str, dict[str, Any]] = {}
    for gi, (name, ids) in enumerate(groups.items()):
        frdm = ForgetRetainDataModule(
            dm.train_dataset,  # type: ignore[arg-type]
            ids,
            heldout=dm.test_dataset,
            batch_size=args.batch_size,
            seed=args.seed,
        )
        _say(f"3/4 [{name}] retraining the oracle without the forget set ({args.epochs} epochs)")
        oracle, oracle_seconds = retrain_oracle(model, frdm, epochs=args.epochs, seed=args.seed + 1)
        original_metrics = evaluate_model(model, frdm)
        oracle_metrics = evaluate_model(oracle, frdm)
        barrier = forget_set_barrier(model, oracle, frdm)
        p_forget = forget_privacy_loss(ledger, ids, order, args.aggregate)
        if args.budget_steps is not None:
            budget = compute_budget(steps=args.budget_steps)
        else:
            budget = compute_budget(
                ledger,
                frdm,
                constants=constants,
                aggregate=args.aggregate,
                max_steps=args.max_budget_steps,
            )
        for method in methods:
            _say(f"3/4 [{name}] unlearning with {method}: budget {budget} steps")
            stopping = None
            if args.stop != "none":
                stopping = LossCalibratedStopping(
                    check_every_n_steps=args.check_every,
                    criterion="auroc" if args.stop == "observe" else args.stop,
                    tolerance=args.tolerance,
                    # observe: check and record, but never stop before the budget is spent
                    min_steps=budget + 1 if args.stop == "observe" else 0,
                )
            unlearned, result, seconds = unlearn_forget_set(
                model,
                frdm,
                method=method,
                budget=budget,
                lr=args.unlearn_lr,
                stopping=stopping,
                sgld_sigma=args.sgld_noise,
                logger=tensorboard_logger(tb_root, f"unlearn_{name.split()[0]}_{method}"),
                progress=progress,
                seed=args.seed + 10 * gi,
            )
            after = evaluate_model(unlearned, frdm)
            steps_axis = [r["step"] for r in result.trajectory]
            reached = -1
            if steps_axis:
                reached = int(
                    steps_to_unlearn(
                        [r["forget_loss"] for r in result.trajectory],
                        float(oracle_metrics["forget_loss"] or 0.0),
                        args.tau,
                        steps=steps_axis,
                    )
                )
            would_stop = next((r["step"] for r in result.trajectory if r["satisfied"]), None)
            rows.append(
                {
                    "group": name,
                    "method": method,
                    "P_forget": p_forget,
                    "budget": budget,
                    "steps": result.steps,
                    "stop_reason": result.stop_reason,
                    "steps_to_oracle": reached,
                    "rule_would_stop_at": would_stop,
                    "seconds": round(seconds, 2),
                    "oracle_seconds": round(oracle_seconds, 2),
                    "barrier_original_oracle": barrier,
                    "original": original_metrics,
                    "unlearned": after,
                    "oracle": oracle_metrics,
                }
            )
            trajectories[f"{name}, {method}"] = {
                "steps": [r["step"] for r in result.trajectory],
                "forget_loss": [r["forget_loss"] for r in result.trajectory],
                "mia_auroc": [r["mia_auroc"] for r in result.trajectory],
                "oracle_forget_loss": oracle_metrics["forget_loss"],
            }
            result.to_json(out / f"result_{name.split()[0]}_{method}.json")

    _say("4/4 writing the report")
    from lightning_unlearn.cli.demo_report import write_demo_report

    summary = {
        "command": " ".join(["lightning-unlearn", "demo", *getattr(args, "argv", [])]),
        "dataset": args.dataset,
        "num_train": dm.num_train,
        "order": order,
        "train_seconds": round(trained.seconds, 2),
        "fit": fit_metrics,
        "tau": args.tau,
        "stop": args.stop,
        "tolerance": args.tolerance,
        "constants": {
            "alpha": constants.alpha,
            "c_lsi": constants.c_lsi,
            "langevin_sigma": constants.langevin_sigma,
            "lr": constants.lr,
            "target_epsilon": constants.target_epsilon,
            "d0": constants.d0,
            "d_irr": constants.d_irr,
        },
        "privacy_quantiles": {
            str(q): float(privacy.double().quantile(q)) for q in (0.0, 0.1, 0.5, 0.9, 1.0)
        },
        "rows": rows,
        "trajectories": trajectories,
    }
    report_md, report_html = write_demo_report(out, summary, privacy, groups)
    summary["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / "summary.json", summary, indent=2)
    _say(f"done in {summary['seconds']} s")
    print(f"\nReport: {report_html.resolve()}\n        {report_md.resolve()}")
    print(f"TensorBoard: tensorboard --logdir {tb_root.resolve()}")
    return summary
