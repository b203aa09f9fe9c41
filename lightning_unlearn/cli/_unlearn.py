"""``unlearn``: a verified checkpoint, its ledger and forget ids -> the unlearned model and
``result.json`` with the deletion's audit record.

Before any step runs, in every budget mode, the ledger is verified and checked against the
checkpoint (the data set, the architecture, exactly these weights, the batch size). The bound's
σ defaults to the training σ the ledger recorded. ``unlearned.ckpt`` is written before
``result.json``.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_unlearn.accounting import PrivacyLedger, UnlearningConstants
from lightning_unlearn.checkpoints import load_weights, model_record, save_model
from lightning_unlearn.data.forget_ids import read_forget_ids
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.errors import CheckpointError, InvalidArgumentError
from lightning_unlearn.unlearning.audit import audit_record
from lightning_unlearn.unlearning.budget import Aggregate, compute_budget
from lightning_unlearn.unlearning.module import UnlearningModule
from lightning_unlearn.unlearning.result import UnlearningResult, evaluate_splits

__all__ = ["bound_constants", "forget_retain", "load_ledger", "unlearn"]


def load_ledger(path: str) -> PrivacyLedger:
    """Load and verify a ledger file (damaged files raise ``LedgerIntegrityError``)."""
    if not Path(path).is_file():
        raise CheckpointError(
            f"The ledger file {path!r} does not exist; pass the `privacy_ledger.pt` written by "
            "`lightning-unlearn fit`."
        )
    return PrivacyLedger.load(path, map_location="cpu")


def bound_constants(bound: Any, ledger: PrivacyLedger, lr: float) -> UnlearningConstants:
    """THEORY §5's constants; σ defaults to the training σ the ledger recorded, η is ``lr``."""
    return UnlearningConstants.from_ledger(
        ledger,
        alpha=bound.alpha,
        c_lsi=bound.c_lsi,
        lr=lr,
        d0=bound.d0,
        d_irr=bound.d_irr,
        target_epsilon=bound.target_epsilon,
        langevin_sigma=bound.langevin_sigma,
    )


def forget_retain(datamodule: LightningDataModule, forget_ids: str, seed: int = 0) -> Any:
    """The forget / retain split of ``datamodule``'s training set, its test split held out."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    heldout = None
    if is_overridden("test_dataloader", datamodule):
        datamodule.setup("test")
        heldout = datamodule.test_dataloader().dataset
    batch_size = getattr(datamodule, "batch_size", 64)
    return ForgetRetainDataModule(
        datamodule, read_forget_ids(forget_ids), heldout=heldout, batch_size=batch_size, seed=seed
    )


def _run(trainer: Trainer, model: UnlearningModule, frdm: Any, budget: int) -> UnlearningResult:
    if budget > 0:
        trainer.fit_loop.epoch_loop.max_steps = budget
        trainer.fit(model, datamodule=frdm)
        assert model.result is not None
        return model.result
    before = evaluate_splits(model.module, frdm)  # zero budget: nothing to run
    return UnlearningResult(
        method=model.method, steps=0, budget=0, stop_reason="budget",
        num_forget=int(frdm.forget_ids.numel()), before=before, after=before,
    )  # fmt: skip


def unlearn(
    trainer: Trainer,
    model: UnlearningModule,
    datamodule: LightningDataModule,
    checkpoint: str,
    ledger: str,
    forget_ids: str,
    *,
    budget_steps: int | None,
    max_budget_steps: int | None,
    aggregate: Aggregate,
    bound: Any,
    reference: str | None = None,
    calibration: str | None = None,
    hold: int | None = None,
) -> dict[str, Any]:
    """Run ``unlearn`` (see :meth:`~lightning_unlearn.cli.commands.CommandTrainer.unlearn`)."""
    _check_calibrated_options(reference, calibration, hold, max_budget_steps, aggregate)
    load_weights(model.module, checkpoint)
    original = copy.deepcopy(model.module)
    recorded = load_ledger(ledger)
    frdm = forget_retain(datamodule, forget_ids, seed=model.seed)
    batch_size = getattr(datamodule, "batch_size", None)
    common: dict[str, Any] = {
        "model": model.module,
        "expected_metadata": {"batch_size": batch_size} if isinstance(batch_size, int) else {},
    }
    # Checks the ledger against the checkpoint and the data in every mode, before σ is read.
    budget = compute_budget(recorded, frdm, steps=budget_steps or 0, **common)
    out = Path(trainer.default_root_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = None
    if reference is not None:
        from lightning_unlearn.cli._calibrated import SOURCES, calibrated

        result, report = calibrated(
            trainer, model, frdm, recorded, reference=reference, calibration=calibration,
            budget_steps=budget_steps, hold=5 if hold is None else hold, out=out,
            constants=lambda: bound_constants(bound, recorded, model.lr),
        )  # fmt: skip
        if result is None:  # sent to retraining before any step: nothing unlearned, no weights
            request = str(out / "request.json")
            b = report.budget
            return _print({"recommendation": "retrain", "reason": report.reason, "budget": b,
                           "detection_power": report.verification_before.get("power"),
                           "request": request})  # fmt: skip
        # The budget of the request (the run's step limit adds the hold window to it).
        budget, source = int(report.budget["steps"] or 0), SOURCES[report.budget["source"]]
    else:
        source = "fixed budget_steps"
        if budget_steps is None:
            constants = bound_constants(bound, recorded, model.lr)
            budget = compute_budget(
                recorded, frdm, constants=constants, aggregate=aggregate,
                max_steps=max_budget_steps, **common,
            )  # fmt: skip
            source = "THEORY §5 bound"
        result = _run(trainer, model, frdm, budget)
    unlearned = model.unlearned_module().eval()
    result.extra.update(
        {"budget_source": source, "seconds": round(time.perf_counter() - start, 2),
         "checkpoint": str(checkpoint)}
    )  # fmt: skip
    record = model_record(unlearned, datamodule, "unlearn", method=model.method, steps=result.steps)
    ckpt = save_model(unlearned, out / "unlearned.ckpt", record)
    result.audit = audit_record(
        forget_ids=frdm.forget_ids, ledger=recorded, model_before=original,
        model_after=unlearned, budget=budget, budget_source=source, steps=result.steps,
        stop_reason=result.stop_reason,
        files={"checkpoint": checkpoint, "ledger": ledger, "unlearned_checkpoint": str(ckpt)},
    )  # fmt: skip
    result.to_json(out / "result.json")
    summary = {
        "unlearned_checkpoint": str(ckpt),
        "result": str(out / "result.json"),
        "steps": result.steps,
        "budget": budget,
        "stop_reason": result.stop_reason,
    }
    if report is not None:
        summary.update(
            recommendation=report.recommendation,
            detection_power=report.verification_before.get("power"),
            request=str(out / "request.json"),
        )
    return _print(summary)


def _print(summary: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(summary, indent=2))
    return summary


def _check_calibrated_options(
    reference: str | None,
    calibration: str | None,
    hold: int | None,
    max_budget_steps: int | None,
    aggregate: str,
) -> None:
    """The options of the calibrated path (``--reference``) and of the bound's path agree."""
    if reference is None and (calibration is not None or hold is not None):
        raise InvalidArgumentError(
            "`--calibration` and `--hold` belong to the calibrated path; pass `--reference DIR` "
            "(the reference models' directory) too."
        )
    if reference is not None and (max_budget_steps is not None or aggregate != "max"):
        raise InvalidArgumentError(
            "`--max_budget_steps` and `--aggregate` apply to the bound's path only; with "
            "`--reference` the cap is one training run (the ledger's steps) and P is the max: "
            "drop them."
        )
