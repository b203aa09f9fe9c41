"""The demo: the whole story in about a minute on scikit-learn's digits, callable from Python.

1. Train a small GroupNorm CNN with :class:`~lightning_unlearn.PerInstancePrivacyMonitor`
   (TensorBoard logs).
2. Show the distribution of per-instance privacy losses P(x, 4α) (THEORY §3).
3. Pick a low-P and a high-P forget set (quantile bins, THEORY §6).
4. Unlearn each with the budget of THEORY §5 and loss-calibrated stopping.
5. Retrain an oracle without each forget set and compare (THEORY §6): forget-set loss /
   accuracy, membership-inference AUROC, steps used, and the loss barrier to the oracle.
6. Write ``report.md`` / ``report.html`` with PNG plots, ``summary.json`` and the logs.

``lightning-unlearn demo`` is this function on the command line (``--config``,
``--print_config``; the options are its parameters).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch

from lightning_unlearn.accounting import PrivacyLedger, UnlearningConstants
from lightning_unlearn.data.forget_ids import write_forget_ids
from lightning_unlearn.data.modules import TensorSplitDataModule
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.evaluation.functional import forget_sets_by_quantile, steps_to_unlearn
from lightning_unlearn.experiments._settings import output_directory, python_call, validated
from lightning_unlearn.experiments.builders import (
    Architecture,
    DatasetName,
    build_datamodule,
    make_model,
)
from lightning_unlearn.experiments.checkpoints import save_model_checkpoint
from lightning_unlearn.experiments.pipeline import (
    evaluate_test_split,
    forget_set_barrier,
    retrain_oracle,
    tensorboard_logger,
    train_with_monitor,
    unlearn_forget_set,
)
from lightning_unlearn.integrity import write_json
from lightning_unlearn.models import ClassifierModule
from lightning_unlearn.report.demo import write_demo_report
from lightning_unlearn.unlearning.budget import Aggregate, BudgetSpec, forget_privacy_loss
from lightning_unlearn.unlearning.module import Method
from lightning_unlearn.unlearning.result import evaluate_splits
from lightning_unlearn.unlearning.stopping import LossCalibratedStopping

__all__ = ["DemoStop", "run_demo"]

DemoStop = Literal["observe", "auroc", "loss_gap", "none"]
"""``observe``: spend the budget and record where the loss-calibrated rule would stop;
``auroc`` / ``loss_gap``: stop there; ``none``: no checks."""


@dataclasses.dataclass(frozen=True)
class _Demo:
    """The demo's settings (:func:`run_demo`'s arguments), checked."""

    output_dir: Path
    seed: int
    dataset: DatasetName
    data_dir: str | None
    subset: int | None
    test_subset: int | None
    model: Architecture
    epochs: int
    batch_size: int
    lr: float
    noise_multiplier: float
    max_grad_norm: float | None
    forget_size: int
    n_bins: int
    methods: Sequence[Method]
    unlearn_lr: float
    sgld_sigma: float
    budget_steps: int | None
    max_budget_steps: int | None
    alpha: int
    c_lsi: float
    langevin_sigma: float | None
    target_epsilon: float
    d0: float
    d_irr: float
    aggregate: Aggregate
    stop: DemoStop
    tolerance: float
    check_every: int
    tau: float
    progress: bool

    def constants(self) -> UnlearningConstants:
        """THEORY §5's constants (η is the unlearning learning rate)."""
        return UnlearningConstants(
            alpha=self.alpha,
            c_lsi=self.c_lsi,
            langevin_sigma=self.langevin_sigma,
            lr=self.unlearn_lr,
            d0=self.d0,
            d_irr=self.d_irr,
            target_epsilon=self.target_epsilon,
        )


def run_demo(
    output_dir: str | Path,
    *,
    seed: int = 0,
    dataset: DatasetName = "digits",
    data_dir: str | None = None,
    subset: int | None = None,
    test_subset: int | None = None,
    model: Architecture = "cnn",
    epochs: int = 12,
    batch_size: int = 64,
    lr: float = 0.1,
    noise_multiplier: float = 1.0,
    max_grad_norm: float | None = None,
    forget_size: int = 30,
    n_bins: int = 10,
    methods: Sequence[Method] = ("finetune", "sgld"),
    unlearn_lr: float = 0.05,
    sgld_sigma: float = 0.01,
    budget_steps: int | None = None,
    max_budget_steps: int | None = 100_000,
    alpha: int = 2,
    c_lsi: float = 0.5,
    langevin_sigma: float | None = None,
    target_epsilon: float = 1.0,
    d0: float = 0.0,
    d_irr: float = 0.0,
    aggregate: Aggregate = "max",
    stop: DemoStop = "observe",
    tolerance: float = 0.05,
    check_every: int = 5,
    tau: float = 0.1,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Train with the privacy monitor, pick low- and high-privacy-loss forget sets, unlearn each
    with the calibrated budget and loss-calibrated stopping, compare with retrained oracles, and
    write a report with plots and TensorBoard logs into ``output_dir``.

    Args:
        output_dir: directory for the outputs (created).
        seed: seed of the data split, training and unlearning.
        dataset: ``"digits"`` (bundled) or ``"fashion-mnist"`` (IDX files).
        data_dir: Fashion-MNIST's IDX directory (default /usr/share/datasets/fashion-mnist).
        subset: Fashion-MNIST: training-pool examples to keep.
        test_subset: Fashion-MNIST: test examples to keep.
        model: ``"cnn"`` (GroupNorm CNN) or ``"mlp"``.
        epochs: training (and oracle) epochs.
        batch_size: training batch size.
        lr: training SGD learning rate.
        noise_multiplier: nominal σ of the accounting (THEORY §1: no noise is added).
        max_grad_norm: clipping bound C of the accounting (None: no clipping).
        forget_size: examples per forget set.
        n_bins: P quantile bins; the lowest and the highest are used.
        methods: unlearning methods (:data:`~lightning_unlearn.unlearning.module.METHODS`).
        unlearn_lr: unlearning learning rate (η of THEORY §5).
        sgld_sigma: σ > 0 of SGLD (method ``"sgld"``).
        budget_steps: a fixed step budget instead of the calibrated one.
        max_budget_steps: largest calibrated budget allowed; the demo shows the bound's budget
            even where it exceeds the (short) training run, which ``unlearn`` refuses by
            default, and this cap keeps a runaway budget from hanging it.
        alpha: Rényi order of the target (P is read at 4α).
        c_lsi: log-Sobolev constant C_LSI (unknown for deep nets: a calibration knob).
        langevin_sigma: σ of the THEORY §5 bound; default: the training σ the ledger
            recorded (``noise_multiplier``; §5 continues the noisy process).
        target_epsilon: target Rényi divergence ε.
        d0: D0 of THEORY §5.
        d_irr: D_irr of THEORY §5.
        aggregate: P of a forget set: ``"max"``, ``"mean"`` or ``"sum"`` of its examples'.
        stop: the loss-calibrated rule (see :data:`DemoStop`).
        tolerance: tolerance of the stop rule.
        check_every: steps between stopping checks.
        tau: steps-to-unlearn tolerance on the forget-set mean loss vs the oracle's (THEORY §6).
        progress: show Lightning's progress bars.
        command: how the run was started, shown in the report (default: this call).

    Returns:
        The summary also written to ``summary.json``: the run's settings and timings, the
        test metrics, THEORY §5's constants, P's quantiles, one row per (forget set, method)
        with :func:`~lightning_unlearn.unlearning.result.evaluate_splits` of the original,
        unlearned and oracle models, and the stopping checks' trajectories.

    Raises:
        InvalidArgumentError: a setting of the wrong type or out of range.
        ValueError: THEORY §5's constants are inconsistent (``target_epsilon <= d_irr``).

    Example:
        >>> summary = run_demo("outputs/demo_sgld", methods=["sgld"])  # doctest: +SKIP
        >>> [row["steps_to_oracle"] for row in summary["rows"]]  # doctest: +SKIP
    """
    # at this point locals() holds exactly the arguments
    arguments = {k: v for k, v in locals().items() if k != "command"}
    settings = validated(_Demo(**{**arguments, "output_dir": Path(output_dir)}))
    constants = settings.constants()  # refuses inconsistent constants before any work
    order = constants.privacy_order
    start = time.perf_counter()
    out = output_directory(settings.output_dir)
    pl.seed_everything(settings.seed, workers=True, verbose=False)
    dm, trained, ledger, train_seconds = _train(settings)
    privacy = ledger.privacy_loss(order).cpu()
    _say(f"2/4 choosing forget sets from {settings.n_bins} quantile bins of P(x, α={order})")
    bins = forget_sets_by_quantile(
        privacy, n_bins=settings.n_bins, size=settings.forget_size, seed=0
    )
    groups = {"low P": bins[0].cpu(), "high P": bins[-1].cpu()}
    rows: list[dict[str, Any]] = []
    trajectories: dict[str, dict[str, Any]] = {}
    for index, (name, ids) in enumerate(groups.items()):
        write_forget_ids(out / f"forget_ids_{name.split()[0]}.json", ids)
        group_rows, group_traj = _unlearn_group(settings, trained, dm, ledger, name, ids, index)
        rows += group_rows
        trajectories.update(group_traj)
    _say("4/4 writing the report")
    summary = {
        "command": command or python_call("run_demo", arguments),
        "dataset": settings.dataset,
        "num_train": dm.num_train,
        "order": order,
        "train_seconds": round(train_seconds, 2),
        "fit": evaluate_test_split(trained, dm),
        "tau": settings.tau,
        "stop": settings.stop,
        "tolerance": settings.tolerance,
        "constants": {
            "alpha": constants.alpha,
            "c_lsi": constants.c_lsi,
            "langevin_sigma": constants.resolve(ledger).langevin_sigma,
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
    print(f"TensorBoard: tensorboard --logdir {(out / 'tensorboard').resolve()}")
    return summary


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def _train(
    settings: _Demo,
) -> tuple[TensorSplitDataModule, ClassifierModule, PrivacyLedger, float]:
    """Step 1: the data, and a model trained with the monitor (saved with its ledger)."""
    dm = build_datamodule(
        settings.dataset,
        batch_size=settings.batch_size,
        seed=settings.seed,
        data_dir=settings.data_dir,
        subset=settings.subset,
        test_subset=settings.test_subset,
    )
    dm.setup()
    _say(
        f"1/4 training a {settings.model} on {settings.dataset} ({dm.num_train} examples) with "
        "the monitor"
    )
    model = make_model(settings.model, dm, lr=settings.lr)
    out = settings.output_dir
    trained = train_with_monitor(
        model,
        dm,
        epochs=settings.epochs,
        noise_multiplier=settings.noise_multiplier,
        max_grad_norm=settings.max_grad_norm,
        save_dir=out,
        logger=tensorboard_logger(out / "tensorboard", "fit"),
        progress=settings.progress,
    )
    model.eval()
    save_model_checkpoint(model, out / "model.ckpt", datamodule=dm, command="demo")
    return dm, model, trained.ledger, trained.seconds


def _unlearn_group(
    settings: _Demo,
    model: ClassifierModule,
    dm: TensorSplitDataModule,
    ledger: PrivacyLedger,
    name: str,
    ids: torch.Tensor,
    index: int,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Step 3 for one forget set: its oracle, budget and one unlearning run per method."""
    frdm = ForgetRetainDataModule(
        dm.train_dataset,  # type: ignore[arg-type]
        ids,
        heldout=dm.test_dataset,
        batch_size=settings.batch_size,
        seed=settings.seed,
    )
    _say(f"3/4 [{name}] retraining the oracle without the forget set ({settings.epochs} epochs)")
    oracle, oracle_seconds = retrain_oracle(
        model, frdm, epochs=settings.epochs, seed=settings.seed + 1
    )
    original, oracle_metrics = evaluate_splits(model, frdm), evaluate_splits(oracle, frdm)
    spec = BudgetSpec(
        steps=settings.budget_steps,
        constants=settings.constants(),
        aggregate=settings.aggregate,
        max_steps=settings.max_budget_steps,
    )
    # a fixed budget is what was asked for: no ledger check (the demo's own fresh ledger)
    budget = spec.budget(None if settings.budget_steps is not None else ledger, frdm)
    common = {
        "group": name,
        "P_forget": forget_privacy_loss(
            ledger, ids, settings.constants().privacy_order, settings.aggregate
        ),
        "budget": budget,
        "oracle_seconds": round(oracle_seconds, 2),
        "barrier_original_oracle": forget_set_barrier(model, oracle, frdm),
        "original": original,
        "oracle": oracle_metrics,
    }
    rows, trajectories = [], {}
    for method in settings.methods:
        _say(f"3/4 [{name}] unlearning with {method}: budget {budget} steps")
        row, trajectory = _unlearn_once(settings, model, frdm, method, common, index)
        rows.append(row)
        trajectories[f"{name}, {method}"] = trajectory
    return rows, trajectories


def _stopping(settings: _Demo, budget: int) -> LossCalibratedStopping | None:
    if settings.stop == "none":
        return None
    return LossCalibratedStopping(
        check_every_n_steps=settings.check_every,
        criterion="auroc" if settings.stop == "observe" else settings.stop,
        tolerance=settings.tolerance,
        # observe: check and record, but never stop before the budget is spent
        min_steps=budget + 1 if settings.stop == "observe" else 0,
    )


def _unlearn_once(
    settings: _Demo,
    model: ClassifierModule,
    frdm: ForgetRetainDataModule,
    method: Method,
    common: dict[str, Any],
    index: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One unlearning run: its summary row and its stopping checks."""
    name, budget = common["group"], common["budget"]
    tag = f"{name.split()[0]}_{method}"
    unlearned, result, seconds = unlearn_forget_set(
        model,
        frdm,
        method=method,
        budget=budget,
        lr=settings.unlearn_lr,
        stopping=_stopping(settings, budget),
        sgld_sigma=settings.sgld_sigma,
        logger=tensorboard_logger(settings.output_dir / "tensorboard", f"unlearn_{tag}"),
        progress=settings.progress,
        seed=settings.seed + 10 * index,
    )
    result.to_json(settings.output_dir / f"result_{tag}.json")
    checks = result.trajectory
    steps = [r["step"] for r in checks]
    oracle_loss = common["oracle"]["forget"]["loss"]
    reached = -1
    if steps and oracle_loss is not None:
        forget_losses = [r["forget_loss"] for r in checks]
        reached = int(steps_to_unlearn(forget_losses, oracle_loss, settings.tau, steps=steps))
    row = {
        "group": name,
        "method": method,
        **{k: common[k] for k in ("P_forget", "budget")},
        "steps": result.steps,
        "stop_reason": result.stop_reason,
        "steps_to_oracle": reached,
        "rule_would_stop_at": next((r["step"] for r in checks if r["satisfied"]), None),
        "seconds": round(seconds, 2),
        **{k: common[k] for k in ("oracle_seconds", "barrier_original_oracle", "original")},
        "unlearned": evaluate_splits(unlearned, frdm),
        "oracle": common["oracle"],
    }
    trajectory = {
        "steps": steps,
        "forget_loss": [r["forget_loss"] for r in checks],
        "mia_auroc": [r["mia_auroc"] for r in checks],
        "oracle_forget_loss": oracle_loss,
    }
    return row, trajectory
