"""The demo's calibrated path (issue 15): reference models, the per-example OUT rule, the fitted
budget, and one :func:`~lightning_unlearn.unlearning.request_report.calibrated_unlearn` request
per forget set and method, compared with a retrained oracle (THEORY §5-§6).

Private to :mod:`lightning_unlearn.experiments.demo`; the steps are described in
``docs/tutorials/demo.md`` and ``docs/calibrated_unlearning.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_unlearn.accounting import PrivacyLedger
from lightning_unlearn.data.modules import TensorSplitDataModule
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.evaluation.functional import steps_to_unlearn
from lightning_unlearn.experiments.builders import Architecture, DatasetName, make_model
from lightning_unlearn.experiments.pipeline import (
    forget_set_barrier,
    retrain_oracle,
    tensorboard_logger,
)
from lightning_unlearn.models import ClassifierModule
from lightning_unlearn.unlearning.budget import forget_privacy_loss
from lightning_unlearn.unlearning.calibrated_stopping import CalibratedStopping, OutRule
from lightning_unlearn.unlearning.calibration import BudgetCalibration
from lightning_unlearn.unlearning.calibration_fit import calibrate_budget
from lightning_unlearn.unlearning.module import Method
from lightning_unlearn.unlearning.reference import train_reference_models
from lightning_unlearn.unlearning.reference_rule import STATS_FILE, rule_from_directory
from lightning_unlearn.unlearning.request_report import calibrated_unlearn
from lightning_unlearn.unlearning.result import evaluate_splits
from lightning_unlearn.unlearning.trajectory import ForgetTrajectoryRecorder

__all__ = ["Calibrated", "DemoSettings", "calibrate", "unlearn_group"]

_DEVICE = {"accelerator": "auto", "devices": 1}


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    """The demo's settings (:func:`~lightning_unlearn.experiments.demo.run_demo`'s
    arguments), checked."""

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
    alpha: int
    reference_k: int
    reference_epochs: int | None
    calibration_models: int
    calibration_probe: int
    hold: int
    tau: float
    progress: bool


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


@dataclasses.dataclass
class Calibrated:
    """What the requests need: the OUT rule and, per method, the budget calibration."""

    rule: OutRule
    calibrations: dict[str, BudgetCalibration]
    summary: dict[str, Any]


def calibrate(
    settings: DemoSettings, dm: TensorSplitDataModule, ledger: PrivacyLedger
) -> Calibrated:
    """Steps 3-4: K reference models (reused when on disk), the rule, one calibration per method.

    The reference models are trained with the demo's recipe (model, learning rate, batch size,
    epochs; ``reference_epochs`` may shorten them) on balanced halves into
    ``output_dir/reference``, with their per-example statistics (``reference_stats.pt``: the
    directory ``lightning-unlearn unlearn --reference`` reads); the rule is
    :func:`~lightning_unlearn.unlearning.reference_rule.rule_from_directory`'s, its held-out
    shift read on the test set. Each method's budget calibration
    (:func:`calibrate_budget`) is written to ``output_dir/calibration_<method>.json``; with
    ``budget_steps`` no calibration is fitted (the requests use that fixed budget).
    """
    train, test = dm.train_dataset, dm.test_dataset
    assert train is not None
    assert test is not None
    out = settings.output_dir
    ref_dir = out / "reference"
    found = len(list(ref_dir.glob("model_*.pt")))
    epochs = settings.reference_epochs or settings.epochs
    _say(
        f"3/5 {settings.reference_k} reference models on balanced halves ({epochs} epochs "
        f"each; {found} found in {ref_dir})"
    )
    start = time.perf_counter()
    make = functools.partial(make_model, settings.model, dm, lr=settings.lr)
    refs = train_reference_models(
        make,
        train,
        out_dir=ref_dir,
        k=settings.reference_k,
        seed=settings.seed,
        batch_size=settings.batch_size,
        trainer_kwargs={"max_epochs": epochs, **_DEVICE},
        progress=settings.progress,
    )
    reference_seconds = time.perf_counter() - start
    # The directory `lightning-unlearn unlearn --reference` reads: models, manifest, statistics.
    refs.statistics(DataLoader(train, batch_size=512)).save(ref_dir / STATS_FILE)
    probe = ForgetRetainDataModule(train, [0], heldout=test, batch_size=settings.batch_size)
    rule = rule_from_directory(ref_dir, make, probe)
    start = time.perf_counter()
    calibrations: dict[str, BudgetCalibration] = {}
    if settings.budget_steps is None:
        cap = settings.epochs * math.ceil(len(train) / settings.batch_size)
        for method in settings.methods:
            _say(
                f"4/5 fitting the {method} budget k = a log P + b on {settings.calibration_models}"
                f" reference models ({settings.calibration_probe} probe examples each)"
            )
            cal = calibrate_budget(
                refs, train, ledger, rule, order=4 * settings.alpha, cap=cap,
                hold=settings.hold, probe_size=settings.calibration_probe, heldout=test,
                batch_size=settings.batch_size, method=method,
                num_models=settings.calibration_models, seed=settings.seed,
                trainer_kwargs=_DEVICE, lr=settings.unlearn_lr, sgld_sigma=settings.sgld_sigma,
            )  # fmt: skip
            cal.save(out / f"calibration_{method}.json")
            calibrations[method] = cal
    summary = {
        "k": refs.k,
        "epochs": epochs,
        "reused": found,
        "seconds": round(reference_seconds, 2),
        "calibration_seconds": round(time.perf_counter() - start, 2),
        "rule": {"metric": rule.metric, "threshold": rule.threshold, "level": rule.level},
        "calibrations": {m: _calibration(m, c) for m, c in calibrations.items()},
    }
    return Calibrated(rule, calibrations, summary)


def _calibration(method: str, cal: BudgetCalibration) -> dict[str, Any]:
    return {
        "file": f"calibration_{method}.json",
        "a": cal.a,
        "b": cal.b,
        "num_points": cal.num_points,
        "num_censored": cal.num_censored,
    }


class _Trajectory(ForgetTrajectoryRecorder):
    """The forget set after every optimizer step (:class:`ForgetTrajectoryRecorder`), and the
    stop rule's checks at the end of the run (the report's plots)."""

    def __init__(self, forget_loader: Any) -> None:
        super().__init__(forget_loader)
        self.checks: list[dict[str, Any]] = []

    def curve(self) -> tuple[list[int], list[float]]:
        """``(steps, forget-set mean loss)`` of the recorded steps (empty without a fit)."""
        if not self.records:
            return [], []
        traj = self.trajectory()
        return traj.steps.tolist(), traj.loss.mean(dim=1).tolist()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rules = [c for c in trainer.callbacks if isinstance(c, CalibratedStopping)]  # type: ignore[attr-defined]
        self.checks = [dict(r) for r in rules[0].trajectory] if rules else []


def unlearn_group(
    settings: DemoSettings,
    model: ClassifierModule,
    dm: TensorSplitDataModule,
    ledger: PrivacyLedger,
    calibrated: Calibrated,
    name: str,
    ids: torch.Tensor,
    index: int,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Step 5 for one forget set: its oracle and one calibrated request per method."""
    frdm = ForgetRetainDataModule(
        dm.train_dataset,  # type: ignore[arg-type]
        ids,
        heldout=dm.test_dataset,
        batch_size=settings.batch_size,
        seed=settings.seed,
    )
    _say(f"5/5 [{name}] retraining the oracle without the forget set ({settings.epochs} epochs)")
    oracle, oracle_seconds = retrain_oracle(
        model, frdm, epochs=settings.epochs, seed=settings.seed + 1
    )
    common = {
        "group": name,
        "P_forget": forget_privacy_loss(ledger, ids, 4 * settings.alpha, "max"),
        "retrain_steps": settings.epochs * math.ceil(frdm.retain_ids.numel() / settings.batch_size),
        "oracle_seconds": round(oracle_seconds, 2),
        "barrier_original_oracle": forget_set_barrier(model, oracle, frdm),
        "original": evaluate_splits(model, frdm),
        "oracle": evaluate_splits(oracle, frdm),
    }
    rows, trajectories = [], {}
    for method in settings.methods:
        row, trajectory = _request(settings, model, frdm, ledger, calibrated, method, common, index)
        rows.append(row)
        trajectories[f"{name}, {method}"] = trajectory
    return rows, trajectories


def _request(
    settings: DemoSettings,
    model: ClassifierModule,
    frdm: ForgetRetainDataModule,
    ledger: PrivacyLedger,
    calibrated: Calibrated,
    method: str,
    common: dict[str, Any],
    index: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One deletion request through :func:`calibrated_unlearn`: its row and its trajectory."""
    name = common["group"]
    tag = f"{name.split()[0]}_{method}"
    source: dict[str, Any] = (
        {"steps": settings.budget_steps}
        if settings.budget_steps is not None
        else {"calibration": calibrated.calibrations[method]}
    )
    _say(f"5/5 [{name}] request with {method} (budget from {next(iter(source))})")
    recorder = _Trajectory(frdm.forget_dataloader())
    logger = tensorboard_logger(settings.output_dir / "tensorboard", f"unlearn_{tag}")
    start = time.perf_counter()
    student, report = calibrated_unlearn(
        model, frdm, calibrated.rule, ledger=ledger, retrain_steps=common["retrain_steps"],
        method=method, hold=settings.hold, seed=settings.seed + 10 * index,
        trainer_kwargs={"logger": logger, "callbacks": [recorder],
                        "enable_progress_bar": settings.progress, **_DEVICE},
        output_dir=settings.output_dir / "requests" / tag, lr=settings.unlearn_lr,
        sgld_sigma=settings.sgld_sigma, **source,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if report.stop_reason in ("already_out", "not_run"):  # no fit ran: log the report here
        report.log_to(logger)
        logger.finalize("success")
    oracle_loss = common["oracle"]["forget"]["loss"]
    before, after = report.verification_before, report.verification_after
    steps, losses = recorder.curve()
    checks = [(r["step"], r["flagged"]) for r in recorder.checks]
    if report.stop_reason == "already_out":  # no run: the trained model is the one at step 0
        steps, losses = [0], [common["original"]["forget"]["loss"]]
        checks = [(0, before["flagged"])]
    reached = int(steps_to_unlearn(losses, oracle_loss, settings.tau, steps=steps)) if steps else -1
    row = {
        "group": name,
        "method": method,
        **{k: common[k] for k in ("P_forget", "retrain_steps")},
        "budget": _budget(report.budget),
        "recommendation": report.recommendation,
        "reason": report.reason,
        "ran": report.ran,
        "steps": report.steps_used,
        "arrival_step": report.arrival_step,
        "stop_reason": report.stop_reason,
        "tolerance": before["tolerance"],
        "flagged_before": before["flagged"],
        "flagged_after": after.get("flagged"),
        "mean_tolerance": before["mean_tolerance"],
        "mean_score_before": before["mean_score"],
        "mean_score_after": after.get("mean_score"),
        "power": before.get("power"),
        "compute_fraction": report.compute_fraction,
        "steps_to_oracle": reached,
        "seconds": round(seconds, 2),
        "request": f"requests/{tag}/request.json",
        **{k: common[k] for k in ("oracle_seconds", "barrier_original_oracle", "original")},
        "unlearned": None if student is None else evaluate_splits(student, frdm),
        "oracle": common["oracle"],
    }
    trajectory = {
        "steps": steps,
        "forget_loss": losses,
        "flagged_steps": [step for step, _ in checks],
        "flagged": [flagged for _, flagged in checks],
        "tolerance": before["tolerance"],
        "oracle_forget_loss": oracle_loss,
    }
    return row, trajectory


def _budget(budget: dict[str, Any]) -> dict[str, Any]:
    """The report's budget, JSON-safe: an unbounded interval end (``inf``) becomes ``None``
    with ``"unbounded": True``."""
    high = budget.get("high")
    unbounded = isinstance(high, float) and math.isinf(high)
    return {**budget, "high": None if unbounded else high, "unbounded": unbounded}
