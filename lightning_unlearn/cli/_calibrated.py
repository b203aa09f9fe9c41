"""``unlearn --reference DIR``: the calibrated path of issue 15 on the command line.

A thin call of :func:`~lightning_unlearn.unlearning.request_report.calibrated_unlearn` on the
command's trainer and unlearner: the per-example OUT rule from the reference models' directory
(:func:`~lightning_unlearn.unlearning.reference_rule.rule_from_directory`), the budget from a
saved calibration (else the bound, or ``--budget_steps``), the retrain recommendation honoured
before any step, ``request.json`` / ``request.md`` in the output directory.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer

from lightning_unlearn.accounting import PrivacyLedger
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.errors import InvalidArgumentError
from lightning_unlearn.unlearning.calibration import BudgetCalibration
from lightning_unlearn.unlearning.module import UnlearningModule
from lightning_unlearn.unlearning.reference_rule import check_calibration, rule_from_directory
from lightning_unlearn.unlearning.request_report import RequestReport, calibrated_unlearn
from lightning_unlearn.unlearning.result import UnlearningResult
from lightning_unlearn.unlearning.stopping import LossCalibratedStopping
from lightning_unlearn.validation import check_int

__all__ = ["calibrated"]

SOURCES = {"calibration": "budget calibration", "bound": "THEORY §5 bound", "fixed": "fixed"}


def _source(
    calibration: str | None, budget_steps: int | None, constants: Any, frdm: Any
) -> dict[str, Any]:
    if calibration is not None:
        return {"calibration": check_calibration(BudgetCalibration.load(calibration), frdm)}
    if budget_steps is not None:
        return {"steps": budget_steps}
    return {"constants": constants()}


def calibrated(
    trainer: Trainer,
    model: UnlearningModule,
    frdm: ForgetRetainDataModule,
    ledger: PrivacyLedger,
    *,
    reference: str,
    calibration: str | None,
    budget_steps: int | None,
    constants: Any,
    hold: int,
    out: Path,
) -> tuple[UnlearningResult | None, RequestReport]:
    """Run the calibrated path; ``(result for result.json or None when sent to retraining,
    report)``. ``constants`` is called for the bound's constants when it is the source.

    Raises:
        InvalidArgumentError: ``hold`` below 0, or a held-out-AUROC stop rule configured too.
        ReferenceModelsError: missing, corrupt or foreign reference models.
        CalibrationError: a calibration that is missing, of another kind or data set.
    """
    check_int("hold", hold, minimum=0)
    if any(isinstance(c, LossCalibratedStopping) for c in trainer.callbacks):  # type: ignore[attr-defined]
        raise InvalidArgumentError(
            "`--reference` stops by the per-example OUT rule, but `trainer.callbacks` also "
            "has a `LossCalibratedStopping`; remove it (two stop rules), or drop `--reference`."
        )
    trained = model.module
    rule = rule_from_directory(reference, lambda: copy.deepcopy(trained), frdm)
    source = _source(calibration, budget_steps, constants, frdm)
    _, report = calibrated_unlearn(
        trained, frdm, rule, ledger=ledger, hold=hold, seed=model.seed, output_dir=out,
        trainer=trainer, unlearner=model, **source,
    )  # fmt: skip
    if not report.ran:
        return None, report
    result = model.result
    if report.stop_reason == "already_out" or result is None:
        result = UnlearningResult(
            method=model.method, steps=0, budget=report.budget["steps"],
            stop_reason=report.stop_reason, num_forget=report.num_forget,
            before=report.before, after=report.after,
        )  # fmt: skip
    result.extra["request"] = str(out / "request.json")
    result.extra["out_flagged_after"] = report.verification_after.get("flagged")
    return result, report
