"""The demo end to end at a tiny scale on real data, through `lightning-unlearn demo`.

It checks that the calibrated path really runs (reference models, OUT rule, fitted budgets,
one `calibrated_unlearn` request per forget set and method, each with its report), that the
summary's numbers are the package's own (evaluator, request reports, calibration files), that a
rerun reuses the reference models, and that `lightning-unlearn unlearn --reference` on the
demo's outputs gives the same request. Not that the demo's conclusions hold: too small a scale
for that, and the verdicts are the rule's, which may change; see docs/calibrated_unlearning.md.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from lightning_unlearn.accounting import PrivacyLedger
from lightning_unlearn.cli import main
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.experiments._demo_calibrated import Calibrated, DemoSettings, unlearn_group
from lightning_unlearn.experiments.builders import datamodule_from_description, make_model
from lightning_unlearn.experiments.checkpoints import load_model_checkpoint
from lightning_unlearn.experiments.demo import STOP_REASONS
from lightning_unlearn.report.demo import write_demo_report
from lightning_unlearn.unlearning.calibration import BudgetCalibration
from lightning_unlearn.unlearning.reference_rule import rule_from_directory
from lightning_unlearn.unlearning.result import SPLITS, evaluate_splits

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOLD = 2
TINY = [
    "--epochs", "2", "--forget_size", "8", "--n_bins", "4", "--reference_k", "4",
    "--calibration_models", "1", "--calibration_probe", "16", "--hold", str(HOLD),
    "--progress", "false",
]  # fmt: skip
REQUEST_KEYS = {
    "num_forget", "method", "budget", "retrain_steps", "recommendation", "reason", "ran",
    "steps_used", "arrival_step", "stop_reason", "verification_before", "verification_after",
    "before", "after", "compute_fraction",
}  # fmt: skip


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"(?<![\w.])-?\d+\.\d+(?:e[+-]\d+)?", text)]


def check_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > 5000  # a real figure, not an empty canvas


def check_metrics(metrics: dict[str, Any]) -> None:
    assert all(math.isfinite(metrics[s][k]) for s in SPLITS for k in ("loss", "accuracy"))
    assert 0.0 <= metrics["forget_mia_auroc"] <= 1.0


def check_row(out: Path, row: dict[str, Any], source: str) -> None:
    """One request's row: its report on disk, and the invariants of the calibrated path."""
    assert row["stop_reason"] in STOP_REASONS
    assert row["budget"]["source"] == source
    report = json.loads((out / row["request"]).read_text())
    assert set(report) == REQUEST_KEYS
    assert (out / row["request"]).with_suffix(".md").is_file()
    assert report["stop_reason"] == row["stop_reason"]
    assert report["steps_used"] == row["steps"]
    assert report["verification_before"]["flagged"] == row["flagged_before"]
    assert row["tolerance"] == report["verification_before"]["tolerance"]
    assert row["power"] == report["verification_before"]["power"]
    assert 0.0 <= row["power"] <= 1.0
    assert row["retrain_steps"] == 2 * math.ceil((1258 - 8) / 64)
    assert row["compute_fraction"] == pytest.approx(row["steps"] / row["retrain_steps"])
    check_metrics(row["original"])
    check_metrics(row["oracle"])
    if row["stop_reason"] == "not_run":  # sent to retraining before any step
        assert row["recommendation"] == "retrain"
        assert row["steps"] == 0
        assert row["unlearned"] is None
        return
    assert row["ran"]
    check_metrics(row["unlearned"])
    assert row["budget"]["steps"] is not None
    assert 0 <= row["steps"] <= row["budget"]["steps"] + HOLD
    if row["stop_reason"] == "already_out":
        assert row["steps"] == 0
        assert row["flagged_before"] <= row["tolerance"]
        assert row["mean_score_before"] <= row["mean_tolerance"]
        assert row["unlearned"] == row["original"]
    if row["stop_reason"] == "calibrated":
        assert row["flagged_after"] <= row["tolerance"]
        assert row["mean_score_after"] <= row["mean_tolerance"]
    elif row["stop_reason"] == "budget":  # spent with the set still flagged: escalated
        flagged = (
            row["flagged_after"] > row["tolerance"]
            or row["mean_score_after"] > row["mean_tolerance"]
        )
        assert (row["recommendation"] == "retrain") == flagged


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """One tiny demo run (tests that change its directory work on a copy)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    argv = ["demo", *TINY, "--output_dir", str(out)]
    assert main(argv) == 0
    return out, argv


@pytest.mark.slow
def test_demo_runs_the_calibrated_path(demo: tuple[Path, list[str]]) -> None:
    out, argv = demo
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == " ".join(["lightning-unlearn", *argv])
    assert summary["num_train"] == 1258
    assert summary["budget_source"] == "calibration"
    assert (summary["reference"]["k"], summary["reference"]["reused"]) == (4, 0)
    for method in ("finetune", "sgld"):  # one calibration per method, from the reference models
        cal = BudgetCalibration.load(out / f"calibration_{method}.json")
        assert cal.metadata["method"] == method
        assert (cal.metadata["reference_k"], cal.metadata["calibration_runs"]) == (4, 1)
        assert cal.metadata["unlearning_kwargs"]["lr"] == 0.05
        assert summary["reference"]["calibrations"][method]["num_points"] == cal.num_points
    assert len(summary["rows"]) == 4  # 2 forget sets x 2 methods
    for row in summary["rows"]:
        check_row(out, row, "calibration")
        trajectory = summary["trajectories"][f"{row['group']}, {row['method']}"]
        if row["ran"]:  # the forget loss at step 0 and after every step that was taken
            assert trajectory["steps"] == list(range(row["steps"] + 1))
    low = next(r for r in summary["rows"] if r["group"] == "low P")
    high = next(r for r in summary["rows"] if r["group"] == "high P")
    assert high["P_forget"] > low["P_forget"]

    # the "original" rows are evaluate_splits of the saved model on the saved forget set
    model, info = load_model_checkpoint(out / "model.ckpt")
    dm = datamodule_from_description(info["bundled"]["datamodule"])
    dm.setup()
    ids = torch.tensor(json.loads((out / "forget_ids_high.json").read_text()))
    frdm = ForgetRetainDataModule(dm.train_dataset, ids, heldout=dm.test_dataset, batch_size=64)  # type: ignore[arg-type]
    assert evaluate_splits(model, frdm) == high["original"]

    md = (out / "report.md").read_text()
    assert "| high P | sgld |" in md
    assert "(calibration)" in md
    assert len(numbers(md)) > 40
    assert "<table>" in (out / "report.html").read_text()
    for name in ("privacy_histogram", "forget_loss_trajectory", "out_flagged_trajectory",
                 "budget_vs_steps"):  # fmt: skip
        check_png(out / "plots" / f"{name}.png")
    assert (out / "privacy_ledger.pt").is_file()
    events = {p.parent.name for p in (out / "tensorboard").rglob("events.out.tfevents.*")}
    assert {"fit", "unlearn_low_finetune", "unlearn_high_sgld"} <= events


@pytest.mark.slow
def test_the_command_line_gives_the_demo_s_request(
    demo: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """`lightning-unlearn unlearn --reference` on the demo's outputs: the same request."""
    out, _ = demo
    high = next(r for r in json.loads((out / "summary.json").read_text())["rows"]
                if r["group"] == "high P" and r["method"] == "finetune")  # fmt: skip
    request = tmp_path / "cli_request"
    cli = [
        "unlearn", "--model.init_args.module", "lightning_unlearn.models.GroupNormCNN",
        "--model.init_args.module.init_args.input_size", "8", "--model.init_args.lr", "0.05",
        "--checkpoint", str(out / "model.ckpt"), "--ledger", str(out / "privacy_ledger.pt"),
        "--forget_ids", str(out / "forget_ids_high.json"), "--reference", str(out / "reference"),
        "--calibration", str(out / "calibration_finetune.json"), "--hold", str(HOLD),
        "--trainer.enable_progress_bar", "false", "--output_dir", str(request),
    ]  # fmt: skip
    assert main(cli) == 0
    by_cli = json.loads((request / "request.json").read_text())
    by_demo = json.loads((out / high["request"]).read_text())
    for key in ("verification_before", "budget", "recommendation", "retrain_steps"):
        assert by_cli[key] == by_demo[key], key


@pytest.mark.slow
def test_a_rerun_reuses_the_reference_models(demo: tuple[Path, list[str]], tmp_path: Path) -> None:
    out = tmp_path / "demo"
    shutil.copytree(demo[0], out)  # copy2: modification times are kept
    models = sorted((out / "reference").glob("model_*.pt"))
    assert len(models) == 4
    stamps = [p.stat().st_mtime_ns for p in models]
    # here with a fixed budget: no calibration is fitted, the reference models are the same
    assert main(["demo", *TINY, "--budget_steps", "3", "--output_dir", str(out)]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["reference"]["reused"] == 4
    assert [p.stat().st_mtime_ns for p in models] == stamps
    assert again["budget_source"] == "fixed"
    assert again["reference"]["calibrations"] == {}
    for row in again["rows"]:
        check_row(out, row, "fixed")
        assert row["budget"]["steps"] == 3


@pytest.mark.slow
def test_a_request_the_rule_never_passes_spends_its_budget_and_hold(
    demo: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """The running branch of a request, forced: a rule that flags every example (threshold
    -inf after the fit, so its tolerance is the fitted one) never stops a run, which then
    spends exactly the fixed budget plus the hold window, recorded step by step."""
    out, _ = demo
    model, info = load_model_checkpoint(out / "model.ckpt")
    dm = datamodule_from_description(info["bundled"]["datamodule"])
    dm.setup()
    settings = DemoSettings(
        output_dir=tmp_path / "forced", seed=0, dataset="digits", data_dir=None, subset=None,
        test_subset=None, model="cnn", epochs=1, batch_size=64, lr=0.1, noise_multiplier=1.0,
        max_grad_norm=None, forget_size=8, n_bins=4, methods=("finetune",), unlearn_lr=0.05,
        sgld_sigma=0.01, budget_steps=4, alpha=2, reference_k=4, reference_epochs=None,
        calibration_models=1, calibration_probe=16, hold=HOLD, tau=0.1, progress=False,
    )  # fmt: skip
    ids = torch.tensor(json.loads((out / "forget_ids_high.json").read_text()))
    probe = ForgetRetainDataModule(dm.train_dataset, [0], heldout=dm.test_dataset)  # type: ignore[arg-type]
    rule = rule_from_directory(out / "reference", lambda: make_model("cnn", dm, lr=0.1), probe)
    never = Calibrated(dataclasses.replace(rule, threshold=-math.inf), {}, {})
    ledger = PrivacyLedger.load(out / "privacy_ledger.pt")
    (row,), trajectories = unlearn_group(settings, model, dm, ledger, never, "high P", ids, 0)  # type: ignore[arg-type]
    assert row["stop_reason"] == "budget"
    assert row["steps"] == 4 + HOLD
    assert row["flagged_before"] == row["flagged_after"] == 8
    assert row["unlearned"] != row["original"]  # steps were taken
    trajectory = trajectories["high P, finetune"]
    assert trajectory["steps"] == trajectory["flagged_steps"] == list(range(4 + HOLD + 1))
    assert trajectory["flagged"] == [8] * (4 + HOLD + 1)
    assert trajectory["forget_loss"][0] == pytest.approx(row["original"]["forget"]["loss"])
    assert trajectory["forget_loss"][-1] == pytest.approx(row["unlearned"]["forget"]["loss"])
    report = json.loads((settings.output_dir / row["request"]).read_text())
    assert report["steps_used"] == 4 + HOLD


@pytest.mark.slow
def test_the_report_shows_a_request_sent_to_retraining(
    demo: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """A request sent to retraining (unbounded interval, no run, no unlearned model) has its
    own cells in the report; the demo's own run decides whether it happens, so it is made here
    from the run's summary."""
    out, _ = demo
    summary = json.loads((out / "summary.json").read_text())
    row = summary["rows"][-1]
    row.update(
        budget={**row["budget"], "steps": None, "low": 40, "high": None, "unbounded": True},
        recommendation="retrain", ran=False, steps=0, stop_reason="not_run", unlearned=None,
        flagged_after=None, mean_score_after=None, compute_fraction=0.0, steps_to_oracle=-1,
    )  # fmt: skip
    key = f"{row['group']}, {row['method']}"
    summary["trajectories"][key].update(steps=[], forget_loss=[], flagged_steps=[], flagged=[])
    ledger = PrivacyLedger.load(out / "privacy_ledger.pt")
    groups = {
        f"{name} P": torch.tensor(json.loads((out / f"forget_ids_{name}.json").read_text()))
        for name in ("low", "high")
    }
    md, _ = write_demo_report(tmp_path, summary, ledger.privacy_loss(8).cpu(), groups)
    text = md.read_text()
    assert f"| {row['group']} | {row['method']} | unlearned (not run) | – |" in text
    assert "none [40, ∞] (calibration) | retrain | 0 | not_run |" in text
    check_png(tmp_path / "plots" / "budget_vs_steps.png")
