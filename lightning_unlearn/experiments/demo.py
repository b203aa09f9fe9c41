"""The demo: the whole story in one to two minutes on scikit-learn's digits, callable from Python.

1. Train a small GroupNorm CNN with :class:`~lightning_unlearn.PerInstancePrivacyMonitor`
   (TensorBoard logs).
2. Show the distribution of per-instance privacy losses P(x, 4α) (THEORY §3) and pick a low-P
   and a high-P forget set (quantile bins, THEORY §6).
3. Train K reference models with the same recipe on balanced halves (``reference/``, reused
   when a rerun finds them) and fit the per-example OUT rule from them (THEORY §6).
4. Fit the budget k = a·log P + b (THEORY §5's form) from fine-tuning runs of reference models,
   with a prediction interval, one per method (``calibration_<method>.json``).
5. For each forget set and method, one deletion request through
   :func:`~lightning_unlearn.unlearning.request_report.calibrated_unlearn`: it may find the set
   already OUT, recommend retraining before spending a step, or unlearn until the OUT rule holds
   (``requests/<set>_<method>/request.json`` / ``.md``); a model retrained without each set is
   the oracle the report compares with: forget-set loss / accuracy, membership-inference AUROC,
   retain and test accuracy, and the loss barrier.
6. Write ``report.md`` / ``report.html`` with PNG plots, ``summary.json`` and the logs.

``lightning-unlearn demo`` is this function on the command line (``--config``,
``--print_config``; the options are its parameters).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from lightning_unlearn.accounting import PrivacyLedger
from lightning_unlearn.data.forget_ids import write_forget_ids
from lightning_unlearn.data.modules import TensorSplitDataModule
from lightning_unlearn.errors import InvalidArgumentError
from lightning_unlearn.evaluation.functional import forget_sets_by_quantile
from lightning_unlearn.experiments._demo_calibrated import (
    DemoSettings,
    calibrate,
    unlearn_group,
)
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
    tensorboard_logger,
    train_with_monitor,
)
from lightning_unlearn.integrity import write_json
from lightning_unlearn.models import ClassifierModule
from lightning_unlearn.report.demo import write_demo_report
from lightning_unlearn.unlearning.module import Method

__all__ = ["STOP_REASONS", "run_demo"]

STOP_REASONS = ("calibrated", "budget", "other", "already_out", "not_run")
"""A request's ``stop_reason`` in ``summary.json``
(:class:`~lightning_unlearn.unlearning.request_report.RequestReport`): the OUT rule held,
the budget (plus the hold window) was spent, something else ended the run, the trained model
already passed the OUT test (no step), or the request was sent to retraining (no step)."""


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
    alpha: int = 2,
    reference_k: int = 8,
    reference_epochs: int | None = None,
    calibration_models: int = 2,
    calibration_probe: int = 64,
    hold: int = 5,
    tau: float = 0.1,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Train with the privacy monitor, pick low- and high-privacy-loss forget sets, train
    reference models, fit the per-example OUT rule and the budget, run one calibrated deletion
    request per forget set and method, compare with retrained oracles, and write a report with
    plots and TensorBoard logs into ``output_dir`` (module docstring).

    Args:
        output_dir: directory for the outputs (created; its ``reference/`` models are reused
            by a rerun with the same settings, and refused with a named error otherwise).
        seed: seed of the data split, training, reference models and unlearning.
        dataset: ``"digits"`` (bundled) or ``"fashion-mnist"`` (IDX files).
        data_dir: Fashion-MNIST's IDX directory (default /usr/share/datasets/fashion-mnist).
        subset: Fashion-MNIST: training-pool examples to keep.
        test_subset: Fashion-MNIST: test examples to keep.
        model: ``"cnn"`` (GroupNorm CNN) or ``"mlp"``.
        epochs: training (and oracle) epochs; one training run is the cost of retraining.
        batch_size: training and unlearning batch size.
        lr: training SGD learning rate.
        noise_multiplier: nominal σ of the accounting (THEORY §1: no noise is added).
        max_grad_norm: clipping bound C of the accounting (None: no clipping).
        forget_size: examples per forget set.
        n_bins: P quantile bins; the lowest and the highest are used.
        methods: unlearning methods (:data:`~lightning_unlearn.unlearning.module.METHODS`),
            each with its own budget calibration.
        unlearn_lr: unlearning learning rate.
        sgld_sigma: σ > 0 of SGLD (method ``"sgld"``).
        budget_steps: a fixed step budget (source ``"fixed"``) instead of the fitted one; no
            calibration is fitted then.
        alpha: Rényi order of the target; P is read at 4α (THEORY §5).
        reference_k: reference models (even: every example is OUT of ``reference_k / 2``).
        reference_epochs: their epochs (default ``epochs``: the same recipe).
        calibration_models: reference models fine-tuned per method to fit the budget.
        calibration_probe: probe examples per such run.
        hold: extra consecutive steps the OUT rule must hold before the run stops.
        tau: steps-to-unlearn tolerance on the forget-set mean loss vs the oracle's (THEORY §6).
        progress: show Lightning's progress bars.
        command: how the run was started, shown in the report (default: this call).

    Returns:
        The summary also written to ``summary.json``: the run's settings and timings, the
        test metrics, P's quantiles, the reference models and calibrations, one row per
        (forget set, method) with the request's budget (and interval and source),
        recommendation, steps used, stop reason (:data:`STOP_REASONS`), flagged forget
        examples before and after with the tolerance, compute fraction, and
        :func:`~lightning_unlearn.unlearning.result.evaluate_splits` of the original,
        unlearned (``None`` when sent to retraining) and oracle models, and per request the
        forget loss and flagged count along the run.

    Raises:
        InvalidArgumentError: a setting of the wrong type or out of range.
        ReferenceModelsError: ``output_dir/reference`` holds models of other settings.

    Example:
        >>> summary = run_demo("outputs/demo_sgld", methods=["sgld"])  # doctest: +SKIP
        >>> [row["stop_reason"] for row in summary["rows"]]  # doctest: +SKIP
    """
    # at this point locals() holds exactly the arguments
    arguments = {k: v for k, v in locals().items() if k != "command"}
    settings = validated(DemoSettings(**{**arguments, "output_dir": Path(output_dir)}))
    if settings.reference_k % 2:
        raise InvalidArgumentError(
            f"Expected `reference_k` to be even (every example OUT of half the reference "
            f"models), but got {settings.reference_k}."
        )
    order = 4 * settings.alpha
    start = time.perf_counter()
    out = output_directory(settings.output_dir)
    pl.seed_everything(settings.seed, workers=True, verbose=False)
    dm, trained, ledger, train_seconds = _train(settings)
    privacy = ledger.privacy_loss(order).cpu()
    _say(f"2/5 choosing forget sets from {settings.n_bins} quantile bins of P(x, α={order})")
    bins = forget_sets_by_quantile(
        privacy, n_bins=settings.n_bins, size=settings.forget_size, seed=0
    )
    groups = {"low P": bins[0].cpu(), "high P": bins[-1].cpu()}
    calibrated = calibrate(settings, dm, ledger)
    rows: list[dict[str, Any]] = []
    trajectories: dict[str, dict[str, Any]] = {}
    for index, (name, ids) in enumerate(groups.items()):
        write_forget_ids(out / f"forget_ids_{name.split()[0]}.json", ids)
        group_rows, group_traj = unlearn_group(
            settings, trained, dm, ledger, calibrated, name, ids, index
        )
        rows += group_rows
        trajectories.update(group_traj)
    _say("writing the report")
    summary = {
        "command": command or python_call("run_demo", arguments),
        "dataset": settings.dataset,
        "model": settings.model,
        "num_train": dm.num_train,
        "epochs": settings.epochs,
        "order": order,
        "train_seconds": round(train_seconds, 2),
        "fit": evaluate_test_split(trained, dm),
        "tau": settings.tau,
        "hold": settings.hold,
        "unlearn_lr": settings.unlearn_lr,
        "budget_source": "fixed" if settings.budget_steps is not None else "calibration",
        "reference": calibrated.summary,
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
    settings: DemoSettings,
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
        f"1/5 training a {settings.model} on {settings.dataset} ({dm.num_train} examples) with "
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
