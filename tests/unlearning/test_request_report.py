"""One deletion request end to end: budget source, retrain recommendation, report files, scalars."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_unlearn.accounting import PrivacyLedger
from lightning_unlearn.integrity import tensors_sha256
from lightning_unlearn.unlearning import UnlearningModule
from lightning_unlearn.unlearning.calibrated_stopping import OutRule
from lightning_unlearn.unlearning.calibration import BudgetCalibration, CalibrationError
from lightning_unlearn.unlearning.calibration_fit import calibrate_budget
from lightning_unlearn.unlearning.request_report import (
    Budget,
    RequestReport,
    calibrated_unlearn,
    recommend,
    resolve_budget,
)
from tests.unlearning._calibration_support import QUIET, TRAINER, build_setup

SETTINGS = {k: v for k, v in QUIET.items() if k != "logger"}


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    return build_setup()


def _ledger(n: int = 120, steps: int = 400) -> PrivacyLedger:
    ledger = PrivacyLedger(n, alphas=(2, 8), metadata={"steps": steps})
    ledger.privacy[:, 1] = torch.linspace(1.0, 100.0, n, dtype=torch.float64)
    return ledger


def _cal(a: float, rates: tuple[float, ...]) -> BudgetCalibration:
    return BudgetCalibration(
        a=a, b=2.0, order=8, miscoverage=0.2, residual_low=-2.0, residual_high=3.0,
        num_points=40, num_censored=0, cap=400, log_p_range=(0.0, 5.0), rates=rates,
        level=0.05, threshold=2.0, hold=2, metadata={"num_samples": 120},
    )  # fmt: skip


def _all_in(setup: dict[str, Any]) -> OutRule:
    """A rule under which every example looks trained on and none may: never satisfied."""
    rule = OutRule.from_reference(setup["stats"])
    return dataclasses.replace(rule, threshold=-50.0, rates=torch.zeros_like(rule.rates))


def test_resolve_budget_sources(setup: dict[str, Any]) -> None:
    dm, ledger = setup["dm"], _ledger()
    assert resolve_budget(None, dm, steps=7) == Budget(7, "fixed")
    cal = _cal(3.0, (0.0,))
    got = resolve_budget(ledger, dm, calibration=cal)
    pred = cal.predict(ledger.privacy_loss(8)[dm.forget_ids])
    assert got == Budget(int(pred.high), "calibration", pred.steps, pred.low, pred.high)
    too_big = resolve_budget(ledger, dm, calibration=_cal(1e4, (0.0,)))
    assert too_big.steps is None  # above the cap: no budget unlearning could honour
    assert recommend(too_big, 400)[0] == "retrain"
    with pytest.raises(ValueError, match="exactly one"):
        resolve_budget(ledger, dm)


def test_retrain_is_recommended_before_any_step(setup: dict[str, Any], tmp_path: Path) -> None:
    model = copy.deepcopy(setup["model"])
    before = tensors_sha256(model)
    rule = _all_in(setup)
    student, report = calibrated_unlearn(
        model, setup["dm"], rule, ledger=_ledger(), calibration=_cal(1e4, (0.0,)),
        output_dir=tmp_path, trainer_kwargs=TRAINER,
    )  # fmt: skip
    assert student is None
    assert report.recommendation == "retrain"
    assert "retrain" in report.reason
    assert (report.ran, report.steps_used, report.stop_reason) == (False, 0, "not_run")
    assert tensors_sha256(model) == before
    assert report.before["forget"]["accuracy"] >= 0
    on_disk = json.loads((tmp_path / "request.json").read_text())
    assert on_disk["recommendation"] == "retrain"
    assert on_disk["budget"]["source"] == "calibration"
    assert (tmp_path / "request.md").read_text().startswith("# Deletion request")


def test_a_calibrated_run_reports_and_logs(setup: dict[str, Any], tmp_path: Path) -> None:
    rule = _all_in(setup)  # never satisfied
    logger = TensorBoardLogger(tmp_path, name="tb", version=0)
    student, report = calibrated_unlearn(
        setup["model"], setup["dm"], rule, steps=6, retrain_steps=60, hold=2, lr=0.1,
        trainer_kwargs={**SETTINGS, "logger": logger}, output_dir=tmp_path,
    )  # fmt: skip
    assert student is not None
    assert report.budget["source"] == "fixed"
    # A fixed budget of 6 plus the hold window of 2 (the rule never fires here).
    assert (report.steps_used, report.stop_reason, report.arrival_step) == (8, "budget", None)
    # The budget ran out with the set still flagged: retraining is recommended after the fact.
    assert report.recommendation == "retrain"
    assert "was spent" in report.reason
    assert "6 flagged" in report.reason
    assert report.compute_fraction == pytest.approx(8 / 60)
    after = report.verification_after
    assert after["size"] == 6
    assert after["flagged"] == 6 > after["tolerance"]
    assert set(report.before) >= {"forget", "retain", "heldout"}
    assert RequestReport(**json.loads(report.to_json())) == report
    logger.experiment.flush()
    events = EventAccumulator(str(Path(logger.log_dir))).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"request/steps_used", "request/compute_fraction", "unlearn/out_flagged"} <= tags
    assert events.Scalars("request/steps_used")[-1].value == 8.0
    # Every member draw exceeds a threshold of -50 and no flag is tolerated: power exactly 1.
    assert report.verification_before["power"] == 1.0
    assert events.Scalars("request/detection_power")[-1].value == 1.0


def test_a_set_already_out_costs_nothing(setup: dict[str, Any]) -> None:
    # Nothing past the threshold and no mean criterion: the set looks OUT before any step.
    rule = dataclasses.replace(OutRule.from_reference(setup["stats"], threshold=50.0), null=None)
    student, report = calibrated_unlearn(
        setup["model"], setup["dm"], rule, steps=10, retrain_steps=60, trainer_kwargs=TRAINER
    )
    assert student is not None
    assert (report.steps_used, report.stop_reason, report.arrival_step) == (0, "already_out", 0)
    assert report.after == report.before
    assert math.isclose(report.compute_fraction, 0.0)


def test_a_set_already_out_under_a_powerless_rule_says_so(setup: dict[str, Any]) -> None:
    # No example can be flagged (threshold 50) and the null's mean tolerance is huge: every
    # set looks OUT, members included, so the rule has no power at all.
    rule = OutRule.from_reference(setup["stats"], threshold=50.0)
    assert rule.null is not None
    rule = dataclasses.replace(rule, null=torch.where(rule.null.isnan(), rule.null, 1e3))
    _, report = calibrated_unlearn(
        setup["model"], setup["dm"], rule, steps=10, retrain_steps=60, trainer_kwargs=TRAINER
    )
    assert report.stop_reason == "already_out"
    assert report.verification_before["power"] == 0.0
    assert report.reason == (
        "the forget set already looks OUT (but the rule's detection power on it is only 0%)"
    )
    assert "caution: low power" in report.to_markdown()


def test_markdown_cautions_about_extrapolated_examples() -> None:
    verdict = {"size": 4, "flagged": 1, "tolerance": 1, "mean_score": 0.2, "mean_tolerance": 0.9}
    report = RequestReport(
        num_forget=4, method="finetune", budget={"steps": 3, "source": "fixed"},
        retrain_steps=60, recommendation="unlearn", reason="test",
        verification_before={**verdict, "extrapolated_ids": [5, 9]},
    )  # fmt: skip
    text = report.to_markdown()
    assert "caution: 2 forget examples lie outside the held-out set's range" in text
    assert "mean score 0.20 (tolerance 0.90)" in text
    clean = dataclasses.replace(report, verification_before={**verdict, "extrapolated_ids": []})
    assert "caution" not in clean.to_markdown()


def test_markdown_states_the_detection_power() -> None:
    verdict = {"size": 4, "flagged": 0, "tolerance": 1, "mean_score": 0.2, "mean_tolerance": 0.9}
    report = RequestReport(
        num_forget=4, method="finetune", budget={"steps": 3, "source": "fixed"},
        retrain_steps=60, recommendation="unlearn", reason="test",
        verification_before={**verdict, "power": 0.9},
    )  # fmt: skip
    text = report.to_markdown()
    assert "- detection power: 90%" in text
    assert "low power" not in text
    weak = dataclasses.replace(report, verification_before={**verdict, "power": 0.3})
    assert "- detection power: 30%" in weak.to_markdown()
    assert "caution: low power" in weak.to_markdown()
    unknown = dataclasses.replace(report, verification_before=verdict)
    assert "detection power" not in unknown.to_markdown()


def test_a_calibration_of_another_recipe_is_refused(setup: dict[str, Any], tmp_path: Path) -> None:
    """Its steps were measured with one method and learning rate: another request is refused."""
    rule = OutRule.from_reference(setup["stats"], heldout=setup["held"])
    cal = calibrate_budget(
        setup["refs"], setup["data"], _ledger(), rule, cap=6, hold=1, probe_size=6,
        heldout=setup["dm"].heldout_set, batch_size=16, num_models=1, trainer_kwargs=TRAINER,
        lr=0.1,
    )  # fmt: skip
    assert (cal.metadata["method"], cal.metadata["unlearning_kwargs"]) == ("finetune", {"lr": 0.1})
    model, dm = setup["model"], setup["dm"]
    common: dict[str, Any] = {"ledger": _ledger(), "trainer_kwargs": TRAINER, "hold": 1}
    refused = [
        ({"lr": 0.05}, "['lr']"),
        ({}, "['lr']"),  # UnlearningModule's default lr, 0.01
        ({"lr": 0.1, "momentum": 0.9}, "['momentum']"),
        ({"lr": 0.1, "method": "sgld"}, "'method'"),
    ]
    for kwargs, differ in refused:
        with pytest.raises(CalibrationError, match=re.escape(differ)):
            calibrated_unlearn(copy.deepcopy(model), dm, rule, calibration=cal, **common, **kwargs)
    cal.save(tmp_path / "cal.json")  # a file is read and checked the same way
    with pytest.raises(CalibrationError, match=re.escape("['lr']")):
        calibrated_unlearn(model, dm, rule, calibration=tmp_path / "cal.json", **common, lr=0.2)
    student = copy.deepcopy(model)  # a caller's UnlearningModule: read from its settings
    with pytest.raises(CalibrationError, match=re.escape("['lr']")):
        calibrated_unlearn(
            student, dm, rule, calibration=cal, unlearner=UnlearningModule(student, lr=0.2),
            **common,
        )  # fmt: skip
    # The same recipe runs, also with an argument fine-tuning ignores (SGLD's sigma).
    _, report = calibrated_unlearn(
        copy.deepcopy(model), dm, rule, calibration=cal, **common, lr=0.1, sgld_sigma=0.5
    )
    assert report.budget["source"] == "calibration"
