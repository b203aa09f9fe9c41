"""One deletion request, end to end: budget and its source, retrain check, calibrated run, report.

:func:`calibrated_unlearn` is the documented path of issue 15 (the demo and the command line
call it):

1. :func:`resolve_budget`: the budget with its source, ``"calibration"`` (a
   :class:`~lightning_unlearn.unlearning.calibration.BudgetCalibration`: no user constant),
   ``"bound"`` (THEORY §5 with known constants) or ``"fixed"``; with a calibration the
   prediction interval too;
2. :func:`recommend`: *before any step is spent*, when the upper end of the interval exceeds
   the cost of retraining (steps of one training run), the request is sent to retraining (or a
   stronger method) instead;
3. otherwise the model is unlearned with :class:`~lightning_unlearn.unlearning.
   calibrated_stopping.CalibratedStopping` (per-example OUT test) within the budget;
4. :class:`RequestReport`: JSON, Markdown and TensorBoard scalars of all of it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_unlearn.accounting import PrivacyLedger, UnlearningConstants
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.evaluation.functional.adapters import AdapterLike
from lightning_unlearn.evaluation.functional.out_score import IDENTITY_MAP
from lightning_unlearn.integrity import atomic_write
from lightning_unlearn.unlearning.budget import budget_cap, compute_budget
from lightning_unlearn.unlearning.calibrated_stopping import CalibratedStopping, OutRule
from lightning_unlearn.unlearning.calibration import BudgetCalibration, CalibrationError
from lightning_unlearn.unlearning.module import UnlearningModule, method_recipe
from lightning_unlearn.unlearning.reference_stats import score_model
from lightning_unlearn.unlearning.result import evaluate_splits

__all__ = [
    "Budget",
    "RequestReport",
    "calibrated_unlearn",
    "check_calibration_recipe",
    "recommend",
    "resolve_budget",
    "verify_forget_set",
]

LOW_POWER = 0.5
"""Below this detection power a "looks OUT" verdict is reported as weak evidence."""


@dataclasses.dataclass(frozen=True)
class Budget:
    """A budget with where it came from.

    Attributes:
        steps: the budget (``Trainer(max_steps=...)``): with a calibration, the interval's
            upper end capped at one training run (the stop rule ends the run earlier).
        source: ``"calibration"``, ``"bound"`` or ``"fixed"``.
        predicted: the calibration's point prediction (``None`` for the other sources).
        low: the interval's lower end (``None`` for the other sources).
        high: the interval's upper end (``math.inf``: unbounded; ``None`` for the others).
    """

    steps: int | None
    source: str
    predicted: int | None = None
    low: int | None = None
    high: float | None = None


def resolve_budget(
    ledger: PrivacyLedger | None,
    datamodule: ForgetRetainDataModule,
    *,
    calibration: BudgetCalibration | str | os.PathLike[str] | None = None,
    constants: UnlearningConstants | None = None,
    steps: int | None = None,
    model: torch.nn.Module | None = None,
    flagged_ids: list[int] | None = None,
) -> Budget:
    """The budget of ``datamodule``'s forget set and its source (calibration first).

    With a calibration, ``steps`` is the interval's upper end capped at the training run's
    length (an unbounded interval: the cap), and ``None`` when the point prediction itself
    exceeds the cap (no budget that unlearning could honour): :func:`recommend` then sends the
    request to retraining. ``flagged_ids`` (the forget examples the trained model's OUT test
    flags, :meth:`OutRule.verify`) lets the calibration give 0 steps to the others.

    Raises:
        ValueError: no source given, or more than one.
        CalibrationError: a calibration of another data set.
        LedgerMismatchError: the ledger belongs to another data set or model.
    """
    given = [
        k
        for k, v in {"calibration": calibration, "bound": constants, "fixed": steps}.items()
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError(
            "Expected exactly one budget source (`calibration`, `constants` or `steps`), but got "
            f"{given or 'none'}."
        )
    if steps is not None:
        return Budget(compute_budget(steps=steps), "fixed")
    if ledger is None:
        raise ValueError("Expected the training run's `ledger` for a calibrated or bound budget.")
    if constants is not None:
        return Budget(compute_budget(ledger, datamodule, constants=constants, model=model), "bound")
    cal = (
        calibration
        if isinstance(calibration, BudgetCalibration)
        else BudgetCalibration.load(calibration)  # type: ignore[arg-type]
    )
    if cal.metadata.get("num_samples", ledger.num_samples) != datamodule.num_samples:
        raise CalibrationError(
            f"Expected a calibration of this {datamodule.num_samples}-example data set, but it "
            f"was fitted on {cal.metadata.get('num_samples')}; refit it with `calibrate_budget`."
        )
    p = ledger.privacy_loss(cal.order).double().cpu()[datamodule.forget_ids.cpu()]
    flagged = None
    if flagged_ids is not None:
        flagged = torch.isin(datamodule.forget_ids.cpu(), torch.as_tensor(flagged_ids).long())
    pred = cal.predict(p, flagged)
    cap, _ = budget_cap(ledger)
    if pred.steps > cap:  # predicted to need more than a training run: nothing to honour
        return Budget(None, "calibration", pred.steps, pred.low, pred.high)
    upper = cap if math.isinf(pred.high) else min(int(pred.high), cap)
    return Budget(upper, "calibration", pred.steps, pred.low, pred.high)


def recommend(budget: Budget, retrain_steps: int) -> tuple[str, str]:
    """``("unlearn" | "retrain", reason)``: retrain when the predicted steps exceed retraining.

    The prediction is the calibration's point prediction (the budget itself for the other
    sources). A request predicted below one training run is unlearned with the interval's
    upper end as its budget, capped at one training run; if that budget runs out with the set
    still flagged, :func:`calibrated_unlearn` recommends retraining after the fact.

    Example:
        >>> recommend(Budget(50, "calibration", 20, 5, 50.0), retrain_steps=400)[0]
        'unlearn'
        >>> recommend(Budget(400, "calibration", 150, 40, 900.0), retrain_steps=400)[0]
        'unlearn'
        >>> recommend(Budget(None, "calibration", 500, 90, 900.0), retrain_steps=400)[0]
        'retrain'
    """
    point = budget.predicted if budget.predicted is not None else budget.steps
    interval = ""
    if budget.low is not None and budget.high is not None:
        high = "unbounded" if math.isinf(budget.high) else f"{budget.high:.0f}"
        interval = f", interval [{budget.low}, {high}]"
    if point is None or budget.steps is None or point > retrain_steps:
        shown = "unknown" if point is None else str(point)
        return "retrain", (
            f"the predicted steps ({shown}{interval}) exceed one training run on the retain set "
            f"({retrain_steps} steps): retrain without the forget set, or use a stronger method "
            "(e.g. SGLD or NegGrad+) for this request"
        )
    return "unlearn", (
        f"the predicted steps ({point}{interval}) are below one training run ({retrain_steps} "
        f"steps); budget {budget.steps} steps at most"
    )


@dataclasses.dataclass
class RequestReport:
    """What happened to one deletion request (JSON, Markdown, TensorBoard).

    Attributes:
        num_forget: forget-set size.
        method: the unlearning method.
        budget: :class:`Budget` as a dict.
        retrain_steps: steps of one training run on the retain set (the cost of retraining).
        recommendation: ``"unlearn"`` or ``"retrain"``; ``reason`` says why.
        ran: whether unlearning ran.
        steps_used: optimizer steps spent (0 when not run).
        arrival_step: first step of the hold window that stopped the run: the steps the forget
            set needed to look OUT, what the calibration predicts (``None``: it never did).
        stop_reason: ``"calibrated"`` (the OUT rule fired), ``"budget"``, ``"other"``,
            ``"already_out"`` (the trained model already passes the OUT test: no step spent) or
            ``"not_run"`` (sent to retraining).
        verification_before: per-example OUT verification of the trained model
            (:meth:`OutRule.verify`: flagged, tolerance, ...).
        verification_after: the same after unlearning.
        before: loss / accuracy on forget, retain, held-out before (and forget MIA AUROC).
        after: the same after.
        compute_fraction: ``steps_used / retrain_steps``.
    """

    num_forget: int
    method: str
    budget: dict[str, Any]
    retrain_steps: int
    recommendation: str
    reason: str
    ran: bool = False
    steps_used: int = 0
    arrival_step: int | None = None
    stop_reason: str = "not_run"
    verification_before: dict[str, Any] = dataclasses.field(default_factory=dict)
    verification_after: dict[str, Any] = dataclasses.field(default_factory=dict)
    before: dict[str, Any] = dataclasses.field(default_factory=dict)
    after: dict[str, Any] = dataclasses.field(default_factory=dict)
    compute_fraction: float = 0.0

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """JSON text (``Infinity`` for an unbounded interval); written atomically to ``path``."""
        text = json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)
        if path is not None:
            with atomic_write(path, "w") as fh:
                fh.write(text)
        return text

    def to_markdown(self) -> str:
        """A short human-readable report."""
        b = self.budget
        interval = (
            ""
            if b.get("low") is None
            else f" (interval [{b['low']}, {b['high']}], point {b['predicted']})"
        )
        lines = [
            "# Deletion request",
            "",
            f"- forget set: {self.num_forget} examples; method `{self.method}`",
            f"- budget: {b.get('steps')} steps from `{b.get('source')}`{interval}",
            f"- retraining costs {self.retrain_steps} steps; recommendation: "
            f"**{self.recommendation}** ({self.reason})",
            f"- steps used: {self.steps_used} ({self.compute_fraction:.1%} of one training run); "
            f"stopped by: `{self.stop_reason}`",
        ]
        for name, v in (("before", self.verification_before), ("after", self.verification_after)):
            if v:
                lines.append(
                    f"- OUT verification {name}: {v['flagged']} of {v['size']} forget examples "
                    f"still look trained on (tolerance {v['tolerance']}), mean score "
                    f"{v['mean_score']:.2f} (tolerance {v['mean_tolerance']:.2f})"
                )
        power = self.verification_before.get("power")
        if power is not None:
            lines.append(
                f"- detection power: {power:.0%} (how often the rule sees a set like this one as "
                "trained on when it still is, by the reference models' own members)"
            )
            if power < LOW_POWER:
                lines.append(
                    "- caution: low power: the reference models barely tell this set's members "
                    'from non-members, so "looks OUT" is weak evidence that it was forgotten; '
                    "more reference models (a larger `k`) raise the power, retraining is certain"
                )
        extrapolated = self.verification_before.get("extrapolated_ids") or []
        if extrapolated:
            lines.append(
                f"- caution: {len(extrapolated)} forget examples lie outside the held-out set's "
                "range of OUT confidence, where the held-out map is extrapolated (typically "
                "mislabelled or very atypical examples): their verdicts are less certain; a "
                "held-out set with such examples, or reference models on more of the data, helps"
            )
        if self.before and self.after:
            lines += [
                "",
                "| split | loss before | loss after | accuracy before | accuracy after |",
                "|---|---|---|---|---|",
            ]
            for split in ("forget", "retain", "heldout"):
                if split in self.before and split in self.after:
                    x, y = self.before[split], self.after[split]
                    lines.append(
                        f"| {split} | {_num(x['loss'])} | {_num(y['loss'])} | "
                        f"{x['accuracy']:.3f} | {y['accuracy']:.3f} |"
                    )
        return "\n".join(lines) + "\n"

    def log_to(self, logger: Any, step: int = 0) -> None:
        """Log the report's numbers as ``request/*`` scalars (a Lightning logger or a
        ``SummaryWriter``)."""
        scalars = {
            "request/budget": float(self.budget.get("steps") or -1),
            "request/steps_used": float(self.steps_used),
            "request/compute_fraction": self.compute_fraction,
            "request/retrain_recommended": float(self.recommendation == "retrain"),
        }
        for name, v in (("before", self.verification_before), ("after", self.verification_after)):
            if v:
                scalars[f"request/flagged_{name}"] = float(v["flagged"])
        if self.verification_before.get("power") is not None:
            scalars["request/detection_power"] = float(self.verification_before["power"])
        for name, d in (("before", self.before), ("after", self.after)):
            for split in ("forget", "retain", "heldout"):
                if split in d:
                    scalars[f"request/{split}_accuracy_{name}"] = float(d[split]["accuracy"])
        if hasattr(logger, "log_metrics"):
            logger.log_metrics(scalars, step=step)
        else:
            for key, value in scalars.items():
                logger.add_scalar(key, value, step)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def verify_forget_set(
    rule: OutRule,
    model: torch.nn.Module,
    dm: ForgetRetainDataModule,
    *,
    batch_adapter: AdapterLike | None = None,
) -> dict[str, Any]:
    """:meth:`OutRule.verify` of ``model`` on ``dm``'s forget set (map from its held-out set),
    its batches read by ``batch_adapter`` (default: ``(x, y, ...)`` or Hugging Face dicts)."""
    phi, loss, ids = score_model(model, dm.forget_dataloader(), batch_adapter=batch_adapter)
    values = phi if rule.metric == "phi" else loss
    hmap = IDENTITY_MAP
    if rule.heldout_law is not None:
        h_phi, h_loss, h_ids = score_model(
            model, dm.heldout_dataloader(), batch_adapter=batch_adapter
        )
        hmap = rule.heldout_map(h_phi if rule.metric == "phi" else h_loss, h_ids.cpu())
    return rule.verify(values, ids.cpu(), hmap)


def check_calibration_recipe(
    calibration: BudgetCalibration,
    method: str,
    unlearner: UnlearningModule | None = None,
    unlearning_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Refuse a budget calibration fitted for another unlearning recipe than the request's.

    The calibration's steps were measured with one method, learning rate and noise
    (``metadata["method"]`` and ``["unlearning_kwargs"]``, written by
    :func:`~lightning_unlearn.unlearning.calibration_fit.calibrate_budget`); a request with
    another would get a budget for a different procedure, silently. Both sides are compared
    through :func:`~lightning_unlearn.unlearning.module.method_recipe` (the arguments the
    method depends on, defaults filled in). Calibrations without that metadata (built by hand
    with ``fit_calibration``), and requests with an optimizer factory of their own (its settings
    are not recorded), are not checked.

    Raises:
        CalibrationError: the recipes differ; the message names both and the fix.
    """
    recorded = calibration.metadata
    if "method" not in recorded:
        return
    if unlearner is not None:
        if unlearner.optimizer_factory is not None:
            return
        arguments: Mapping[str, Any] = unlearner.hparams
        method = unlearner.method
    else:
        arguments = unlearning_kwargs or {}
        if arguments.get("optimizer") is not None:
            return
    fitted = method_recipe(str(recorded["method"]), recorded.get("unlearning_kwargs", {}))
    request = method_recipe(method, arguments)
    if fitted != request:
        differ = sorted(
            k for k in fitted.keys() | request.keys() if fitted.get(k) != request.get(k)
        )
        raise CalibrationError(
            "Expected the request to unlearn with the recipe its budget calibration was fitted "
            f"for, but they differ in {differ}: calibration {fitted}, request {request}. Refit the "
            "calibration with the request's method and arguments (`calibrate_budget(..., "
            "method=..., lr=...)`, `lightning-unlearn calibrate --method ... --lr ...`), or "
            "unlearn with the calibration's."
        )


def calibrated_unlearn(
    model: pl.LightningModule,
    datamodule: ForgetRetainDataModule,
    rule: OutRule,
    *,
    ledger: PrivacyLedger | None = None,
    calibration: BudgetCalibration | str | os.PathLike[str] | None = None,
    constants: UnlearningConstants | None = None,
    steps: int | None = None,
    retrain_steps: int | None = None,
    method: str = "finetune",
    hold: int = 5,
    run_anyway: bool = False,
    seed: int = 0,
    trainer_kwargs: Mapping[str, Any] | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    trainer: pl.Trainer | None = None,
    unlearner: UnlearningModule | None = None,
    batch_adapter: AdapterLike | None = None,
    **unlearning_kwargs: Any,
) -> tuple[pl.LightningModule | None, RequestReport]:
    """Unlearn a deletion request with the calibrated stop rule, or say it should be retrained.

    Args:
        model: the trained module (not modified: a deep copy is unlearned).
        datamodule: the request's :class:`~lightning_unlearn.ForgetRetainDataModule`.
        rule: the per-example OUT rule from the reference models
            (:meth:`~lightning_unlearn.unlearning.calibrated_stopping.OutRule.from_reference`).
        ledger: the training run's ledger (for a calibrated or bound budget).
        calibration: the budget calibration (or its file): the default source.
        constants: THEORY §5's constants (the "bound" source).
        steps: a fixed budget (the "fixed" source).
        retrain_steps: the cost of retraining, in steps (default: the run length the ledger
            records).
        method: the unlearning method.
        hold: the stop rule's hold window.
        run_anyway: unlearn even when retraining is recommended (within the cost of retraining).
        seed: seed of the run.
        trainer_kwargs: ``Trainer`` arguments (defaults: quiet, no checkpoints); a ``logger``
            here also receives the report's scalars.
        output_dir: where ``request.json`` and ``request.md`` are written (optional).
        trainer: a caller's ``Trainer`` to run on instead of one built from ``trainer_kwargs``
            (the command line's: its logger, accelerator and callbacks); its ``max_steps`` is
            set to the budget and the stop rule is appended to its callbacks.
        unlearner: a caller's :class:`~lightning_unlearn.UnlearningModule` whose ``module``
            is ``model`` (unlearned in place: keep a copy), instead of one built from
            ``method`` and ``unlearning_kwargs``.
        batch_adapter: how every evaluation of the request (the OUT verifications, the stop
            rule, the split metrics) and the unlearning run read a batch (default: the
            ``unlearner``'s, else ``(x, y, ...)`` or Hugging Face dicts; see
            :mod:`~lightning_unlearn.evaluation.functional.adapters`).
        **unlearning_kwargs: :class:`~lightning_unlearn.UnlearningModule` arguments (``lr``).

    Returns:
        ``(unlearned copy or None when not run, report)``.

    Raises:
        ValueError: no budget source, or no ``retrain_steps`` known.
        ReferenceCoverageError: forget examples the reference models cannot judge.
    """
    rule.check_ids(datamodule.forget_ids)
    method = method if unlearner is None else unlearner.method
    if retrain_steps is None:
        recorded = None if ledger is None else ledger.metadata.get("steps")
        if not isinstance(recorded, int) or recorded <= 0:
            raise ValueError("Expected `retrain_steps=` or a ledger that records its run length.")
        retrain_steps = recorded
    if batch_adapter is None and unlearner is not None:
        batch_adapter = unlearner.batch_adapter
    if calibration is not None and steps is None:
        if not isinstance(calibration, BudgetCalibration):
            calibration = BudgetCalibration.load(calibration)
        check_calibration_recipe(calibration, method, unlearner, unlearning_kwargs)
    before = verify_forget_set(rule, model, datamodule, batch_adapter=batch_adapter)
    budget = resolve_budget(
        ledger,
        datamodule,
        calibration=calibration,
        constants=constants,
        steps=steps,
        model=model,
        # A set that fails by its mean score alone has no flagged example to budget for:
        # every example then counts (the conservative prediction).
        flagged_ids=None
        if before["mean_score"] > before["mean_tolerance"]
        else before["flagged_ids"],
    )
    choice, reason = recommend(budget, retrain_steps)
    report = RequestReport(
        num_forget=int(datamodule.forget_ids.numel()),
        method=method,
        budget=dataclasses.asdict(budget),
        retrain_steps=int(retrain_steps),
        recommendation=choice,
        reason=reason,
        verification_before=before,
    )
    student: pl.LightningModule | None = None
    if report.verification_before["satisfied"]:
        # Nothing to unlearn: the trained model already treats the set as never seen.
        student = copy.deepcopy(model)
        report.recommendation, report.reason = "unlearn", "the forget set already looks OUT"
        power = before.get("power")
        if power is not None and power < LOW_POWER:
            report.reason += f" (but the rule's detection power on it is only {power:.0%})"
        report.before = report.after = evaluate_splits(
            model, datamodule, batch_adapter=batch_adapter
        )
        report.verification_after = report.verification_before
        report.ran, report.stop_reason, report.arrival_step = True, "already_out", 0
    elif choice == "retrain" and not run_anyway:
        report.before = evaluate_splits(model, datamodule, batch_adapter=batch_adapter)
    else:  # the budget bounds the arrival; the hold window's steps confirm it
        limit = budget.steps + hold if budget.steps is not None and choice == "unlearn" else None
        student = _run(
            report, model, datamodule, rule, hold=hold, seed=seed, method=method,
            limit=retrain_steps if limit is None else limit, trainer=trainer,
            trainer_kwargs=trainer_kwargs, unlearner=unlearner, batch_adapter=batch_adapter,
            **unlearning_kwargs,
        )  # fmt: skip
        _escalate(report)
    if trainer is not None and report.stop_reason in ("already_out", "not_run"):  # no fit: log now
        for logger in trainer.loggers:
            report.log_to(logger)
            logger.finalize("success")
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        report.to_json(out / "request.json")
        with atomic_write(out / "request.md", "w") as fh:
            fh.write(report.to_markdown())
    return student, report


def _escalate(report: RequestReport) -> None:
    """After a run the budget ended with the set still flagged: recommend retraining."""
    after = report.verification_after
    if report.stop_reason == "calibrated" or after.get("satisfied", False):
        return
    report.recommendation = "retrain"
    report.reason = (
        f"the budget ({report.steps_used} steps) was spent and the forget set still looks "
        f"trained on ({after['flagged']} flagged, tolerance {after['tolerance']}; mean score "
        f"{after['mean_score']:.2f}, tolerance {after['mean_tolerance']:.2f}): retrain "
        "without it, or use a stronger method (e.g. SGLD or NegGrad+)"
    )


def _run(
    report: RequestReport,
    model: pl.LightningModule,
    datamodule: ForgetRetainDataModule,
    rule: OutRule,
    *,
    hold: int,
    seed: int,
    method: str,
    limit: int,
    trainer: pl.Trainer | None,
    trainer_kwargs: Mapping[str, Any] | None,
    unlearner: UnlearningModule | None,
    batch_adapter: AdapterLike | None = None,
    **unlearning_kwargs: Any,
) -> pl.LightningModule:
    """Unlearn within ``limit`` steps under the calibrated stop rule; fill in ``report``."""
    pl.seed_everything(seed, verbose=False)
    if unlearner is None:
        student = copy.deepcopy(model).train()
        unlearner = UnlearningModule(
            student,
            method=method,  # type: ignore[arg-type]
            seed=seed,
            batch_adapter=batch_adapter,
            **unlearning_kwargs,
        )
    student = unlearner.module
    stopper = CalibratedStopping(rule, hold=hold, batch_adapter=batch_adapter)
    if trainer is None:
        settings: dict[str, Any] = {
            "max_steps": int(limit),
            "max_epochs": -1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 0,
        }
        settings.update(trainer_kwargs or {})
        settings["callbacks"] = [*settings.get("callbacks", []), stopper]
        trainer = pl.Trainer(**settings)
    else:
        trainer.fit_loop.epoch_loop.max_steps = int(limit)
        trainer.callbacks.append(stopper)  # type: ignore[attr-defined]
    trainer.fit(unlearner, datamodule=datamodule)
    result = unlearner.result
    assert result is not None
    report.ran = True
    report.steps_used = result.steps
    report.stop_reason = result.stop_reason
    report.before, report.after = result.before, result.after
    report.verification_after = verify_forget_set(
        rule, student, datamodule, batch_adapter=batch_adapter
    )
    report.compute_fraction = result.steps / report.retrain_steps
    report.arrival_step = stopper.arrival_step
    for logger in trainer.loggers:
        report.log_to(logger, step=result.steps)
    return student
