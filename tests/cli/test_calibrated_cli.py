"""``lightning-unlearn unlearn --reference DIR``: fit -> reference -> the calibrated path on
digits; the report's OUT verification recomputed here in plain torch from the saved
statistics and checkpoints; the retrain recommendation honoured; clear errors (exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_unlearn.accounting import PrivacyLedger
from lightning_unlearn.checkpoints import load_weights
from lightning_unlearn.cli import main
from lightning_unlearn.data.fingerprint import dataset_fingerprint
from lightning_unlearn.data.modules import DigitsDataModule
from lightning_unlearn.models import MLPClassifier
from lightning_unlearn.unlearning.calibration import BudgetCalibration

pytestmark = pytest.mark.slow  # ~40 s: a fit, K = 4 reference models and three unlearning runs

MLP = ["--model.init_args.input_dim", "64", "--model.init_args.lr", "0.5",
       "--model.init_args.momentum", "0.9"]  # fmt: skip
HPARAMS = {"input_dim": 64, "lr": 0.5, "momentum": 0.9}
EPOCHS = "12"


def _phi(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logit-scaled confidence log p_y - log(1 - p_y) = z_y - logsumexp of the other logits."""
    with torch.no_grad():
        z = model.eval()(x).double()
    others = z.scatter(1, y[:, None], float("-inf"))
    return z.gather(1, y[:, None]).squeeze(1) - others.logsumexp(1)


def _law(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column: mean, and the predictive scale of THEORY §6's shrunk Gaussian (nu0 = 2)."""
    n = mask.sum(0).double()
    v = torch.where(mask, values, 0.0)
    mean = v.sum(0) / n
    var = (torch.where(mask, values - mean, 0.0) ** 2).sum(0) / (n - 1)
    pooled = var[n >= 2].mean()
    shrunk = (2.0 * pooled + (n - 1) * var) / (2.0 + n - 1)
    return mean, shrunk.sqrt() * torch.sqrt(1.0 + 1.0 / n)


def _scores(ckpt: Path, refs: Path, ids: torch.Tensor) -> torch.Tensor:
    """The OUT scores z_i of ``ckpt`` on training examples ``ids`` (held-out map), from files."""
    dm = DigitsDataModule()
    dm.setup()
    x, y = dm.train_dataset.dataset.tensors[:2]  # type: ignore[union-attr]
    xh, yh = dm.test_dataset.dataset.tensors[:2]  # type: ignore[union-attr]
    model = MLPClassifier(**HPARAMS)
    load_weights(model, ckpt)
    stats = torch.load(refs / "reference_stats.pt", weights_only=True)
    mean, scale = _law(stats["phi"], ~stats["in_mask"])
    held = []
    for j in range(stats["phi"].shape[0]):
        ref = MLPClassifier(**HPARAMS)
        ref.load_state_dict(torch.load(refs / f"model_{j:03d}.pt", weights_only=True)["state_dict"])
        held.append(_phi(ref, xh, yh))
    h_values = torch.stack(held)
    h_mean, h_scale = _law(h_values, torch.ones_like(h_values, dtype=torch.bool))
    # The held-out map: numpy's weighted line (its weights scale residuals), scipy's MAD.
    h_phi = _phi(model, xh, yh).numpy()
    slope, intercept = np.polyfit(h_mean.numpy(), h_phi, 1, w=1.0 / h_scale.numpy())
    resid = (h_phi - intercept - slope * h_mean.numpy()) / h_scale.numpy()
    c = float(scipy.stats.median_abs_deviation(resid, scale="normal"))
    return (_phi(model, x[ids], y[ids]) - intercept - slope * mean[ids]) / (c * scale[ids])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("calibrated")
    fit = ["fit", "--model", "lightning_unlearn.models.MLPClassifier", *MLP,
           "--trainer.max_epochs", EPOCHS, "--trainer.enable_progress_bar", "false"]  # fmt: skip
    assert main([*fit, "--output_dir", str(root / "fit")]) == 0
    ref = ["reference", "--model", "lightning_unlearn.models.MLPClassifier", *MLP, "--k", "4",
           "--max_epochs", EPOCHS, "--progress", "false"]  # fmt: skip
    assert main([*ref, "--output_dir", str(root / "refs")]) == 0
    z = _scores(root / "fit" / "model.ckpt", root / "refs", torch.arange(1258))
    forget = z.argsort(descending=True)[:6].sort().values  # the examples that look most IN
    assert int((z[forget] > 2.0).sum()) >= 3  # the trained model still shows them as members
    return {"root": root, "forget": forget, "z_before": z[forget]}


def _unlearn(runs: dict[str, Any], out: str, *extra: str) -> list[str]:
    root = runs["root"]
    return [
        "unlearn", "--model.init_args.module", "lightning_unlearn.models.MLPClassifier",
        *[a.replace("--model.", "--model.init_args.module.") for a in MLP],
        "--model.init_args.lr", "0.1", "--checkpoint", str(root / "fit" / "model.ckpt"),
        "--ledger", str(root / "fit" / "privacy_ledger.pt"),
        "--forget_ids", ",".join(str(i) for i in runs["forget"].tolist()),
        "--trainer.enable_progress_bar", "false", "--output_dir", str(root / out), *extra,
    ]  # fmt: skip


def _calibration(runs: dict[str, Any], b: float, **metadata: Any) -> Path:
    """A saved calibration of this data set, flat in P (k = b for every flagged example)."""
    dm = DigitsDataModule()
    dm.setup()
    meta = {"num_samples": 1258, "dataset_fingerprint": dataset_fingerprint(dm.train_dataset, 1258)}
    cal = BudgetCalibration(
        a=0.0, b=b, order=8, miscoverage=0.2, residual_low=-2.0, residual_high=4.0,
        num_points=30, num_censored=0, cap=240, log_p_range=(0.0, 5.0), rates=(0.02,) * 4,
        level=0.05, threshold=2.0, hold=2, metadata={**meta, **metadata},
    )  # fmt: skip
    return cal.save(runs["root"] / f"cal_{b:g}_{len(metadata)}.json")


def test_calibrated_path_report_matches_recomputation(
    runs: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    root = runs["root"]
    cal = _calibration(runs, 20.0)
    argv = _unlearn(runs, "u", "--reference", str(root / "refs"), "--calibration", str(cal))
    capsys.readouterr()
    assert main([*argv, "--hold", "2"]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")  # the last top-level object
    summary = json.loads("\n".join(lines[start:]))
    out = root / "u"
    report = json.loads((out / "request.json").read_text())
    assert summary["detection_power"] == report["verification_before"]["power"]
    assert 0.0 <= summary["detection_power"] <= 1.0
    result = json.loads((out / "result.json").read_text())
    assert report["budget"] == {"steps": 24, "source": "calibration", "predicted": 20,
                                "low": 18, "high": 24.0}  # fmt: skip
    assert report["ran"]
    # Unlearned when the rule fired; a budget spent with the set still flagged is escalated.
    fired = report["stop_reason"] == "calibrated"
    assert report["recommendation"] == ("unlearn" if fired else "retrain")
    assert fired or "was spent" in report["reason"]
    assert result["audit"]["budget_source"] == "budget calibration"
    assert result["audit"]["budget"] == 24
    assert result["budget"] == 24 + 2  # the run's step limit: the budget and the hold window
    assert result["steps"] == report["steps_used"] <= 24 + 2
    # The OUT verification before and after, recomputed from the saved files in plain torch.
    z_after = _scores(out / "unlearned.ckpt", root / "refs", runs["forget"])
    for key, z in (("verification_before", runs["z_before"]), ("verification_after", z_after)):
        got = report[key]
        assert got["flagged"] == int((z > 2.0).sum())
        assert got["flagged_ids"] == runs["forget"][z > 2.0].tolist()
        assert got["mean_score"] == pytest.approx(float(z.mean()), abs=1e-4)  # float32 logits
    if report["stop_reason"] == "calibrated":
        assert report["verification_after"]["satisfied"]
    assert report["compute_fraction"] == pytest.approx(report["steps_used"] / 240)
    assert "Deletion request" in (out / "request.md").read_text()
    assert main(["audit", str(out / "result.json")]) == 0  # the audit record verifies
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert {"request/steps_used", "unlearn/out_flagged"} <= set(events.Tags()["scalars"])


def test_retrain_recommendation_spends_nothing(runs: dict[str, Any]) -> None:
    root = runs["root"]
    cal = _calibration(runs, 10_000.0)  # far above one training run (240 steps)
    argv = _unlearn(runs, "r", "--reference", str(root / "refs"), "--calibration", str(cal))
    assert main(argv) == 0
    report = json.loads((root / "r" / "request.json").read_text())
    assert report["recommendation"] == "retrain"
    assert not report["ran"]
    assert report["steps_used"] == 0
    assert report["budget"]["predicted"] == 10_000
    assert not (root / "r" / "unlearned.ckpt").exists()
    assert not (root / "r" / "result.json").exists()


def test_clear_errors(runs: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    root = runs["root"]
    foreign = root / "foreign_refs"
    shutil.copytree(root / "refs", foreign)
    manifest = json.loads((foreign / "manifest.json").read_text())
    (foreign / "manifest.json").write_text(json.dumps({**manifest, "fingerprint": "0" * 16}))
    corrupt = root / "corrupt_refs"
    shutil.copytree(root / "refs", corrupt)
    (corrupt / "reference_stats.pt").write_bytes(b"not a torch file")
    cal = _calibration(runs, 20.0, dataset_fingerprint="f" * 16)
    cases = {
        "does not exist": ["--reference", str(root / "missing")],
        "another data set": ["--reference", str(foreign)],
        "Cannot read": ["--reference", str(corrupt)],
        "fitted on another": ["--reference", str(root / "refs"), "--calibration", str(cal)],
        "pass `--reference": ["--calibration", str(cal)],
        "belong to the calibrated path": ["--hold", "2"],
    }
    for expected, extra in cases.items():
        assert main(_unlearn(runs, "e", *extra)) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err, err
        assert len(err.splitlines()) == 1, err
    assert not (root / "e" / "unlearned.ckpt").exists()


def test_calibrate_command_writes_the_calibration_unlearn_budgets_from(
    runs: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    root = runs["root"]
    out = root / "cal_fitted.json"
    argv = ["calibrate", "--reference", str(root / "refs"), "--ledger",
            str(root / "fit" / "privacy_ledger.pt"), "--output", str(out),
            "--model", "lightning_unlearn.models.MLPClassifier", *MLP,
            "--probe_size", "8", "--num_models", "2", "--hold", "2", "--lr", "0.1"]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    printed = json.loads(stdout[stdout.rindex('{\n  "calibration"') :])
    cal = BudgetCalibration.load(out)
    assert cal.metadata["reference_k"] == 4
    assert cal.metadata["calibration_runs"] == 2
    assert cal.metadata["probe_size"] == 8
    assert cal.metadata["unlearning_kwargs"] == {"lr": 0.1}
    assert cal.cap == 240  # the training run's length, from the ledger (12 epochs x 20 steps)
    assert cal.hold == 2
    assert 1 <= cal.num_points <= 16
    assert cal.residual_low <= 0.0 <= cal.residual_high
    assert printed["calibration"] == str(out)
    assert (printed["a"], printed["b"], printed["num_points"]) == (cal.a, cal.b, cal.num_points)
    # `unlearn` budgets from it: the report's prediction is the calibration's own, on the
    # forget set's P and the examples the trained model's OUT test flags.
    run = _unlearn(runs, "c", "--reference", str(root / "refs"), "--calibration", str(out))
    assert main([*run, "--hold", "2"]) == 0
    report = json.loads((root / "c" / "request.json").read_text())
    assert report["budget"]["source"] == "calibration"
    forget = runs["forget"]
    flagged = torch.isin(forget, torch.tensor(report["verification_before"]["flagged_ids"]))
    p = PrivacyLedger.load(root / "fit" / "privacy_ledger.pt").privacy_loss(8)[forget]
    assert report["budget"]["predicted"] == cal.predict(p.double(), flagged).steps
    # Bad options are named, in one line, and nothing is written.
    bad = root / "cal_bad.json"
    assert main([*argv[:6], str(bad), *argv[7:], "--probe_size", "0"]) == 2
    assert "probe_size" in capsys.readouterr().err
    assert not bad.exists()
