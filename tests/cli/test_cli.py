"""The `lightning-unlearn` command on real files: fit -> unlearn -> evaluate, help, clear errors."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_unlearn import PrivacyLedger
from lightning_unlearn.cli import COMMANDS, main
from lightning_unlearn.cli.common import load_model_checkpoint, read_forget_ids


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lightning-unlearn {command}")
    assert "--config" in out


def test_top_level_usage_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert all(name in usage for name in COMMANDS)
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `fit` run on digits (2 epochs), shared by the tests of this module."""
    out = tmp_path_factory.mktemp("fit")
    config = out / "fit.yaml"
    config.write_text("epochs: 2\nmodel: cnn\nbatch-size: 128\nseed: 3\n")
    code = main(["fit", "--config", str(config), "--output-dir", str(out), "--no-progress"])
    assert code == 0
    return out


def test_fit_writes_checkpoint_ledger_and_logs(fitted: Path) -> None:
    model, info = load_model_checkpoint(fitted / "model.ckpt")
    assert info["model"] == "cnn"
    assert info["datamodule"]["name"] == "digits"
    assert info["datamodule"]["hparams"]["seed"] == 3  # the YAML config was applied
    ledger = PrivacyLedger.load(fitted / "privacy_ledger.pt")
    assert ledger.num_samples == 1258
    # 2 epochs of shuffled batches: every example seen exactly twice.
    assert torch.equal(ledger.counts, torch.full((1258,), 2, dtype=ledger.counts.dtype))
    assert bool((ledger.privacy_loss(8) > 0).all())
    header = (fitted / "privacy_ledger.csv").read_text().splitlines()[0]
    assert header.startswith("sample_id")
    assert list((fitted / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((fitted / "fit_summary.json").read_text())
    assert 0.5 < summary["test_acc"] <= 1.0  # 2 epochs on digits already learn something
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


def test_unlearn_then_evaluate(fitted: Path, tmp_path: Path) -> None:
    ids_file = tmp_path / "forget.txt"
    ids_file.write_text("5, 17 23\n101")
    out = tmp_path / "unlearn"
    code = main([
        "unlearn", "--checkpoint", str(fitted / "model.ckpt"),
        "--ledger", str(fitted / "privacy_ledger.pt"), "--forget-ids", str(ids_file),
        "--method", "sgld", "--budget-steps", "6", "--stop", "none",
        "--output-dir", str(out), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "sgld"
    assert result["budget"] == 6
    assert result["steps"] == 6
    assert result["num_forget"] == 4
    unlearned, info = load_model_checkpoint(out / "unlearned.ckpt")
    original, _ = load_model_checkpoint(fitted / "model.ckpt")
    assert info["extra"]["steps"] == 6
    changed = [
        not torch.equal(a, b)
        for a, b in zip(
            unlearned.state_dict().values(), original.state_dict().values(), strict=True
        )
    ]
    assert any(changed)  # 6 SGLD steps moved the weights

    metrics_path = tmp_path / "eval.json"
    code = main([
        "evaluate", "--checkpoint", str(out / "unlearned.ckpt"), "--forget-ids", "5,17,23,101",
        "--oracle", str(fitted / "model.ckpt"), "--reference", str(fitted / "model.ckpt"),
        "--output", str(metrics_path), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    metrics = json.loads(metrics_path.read_text())
    for key in ("forget_loss", "forget_acc", "retain_acc", "heldout_acc", "mia_auroc"):
        assert math.isfinite(metrics[key])
    assert 0.0 <= metrics["mia_auroc"] <= 1.0
    assert 0.0 <= metrics["oracle"]["ks_statistic"] <= 1.0
    assert metrics["oracle"]["js_divergence"] >= 0.0
    assert math.isfinite(metrics["forget_loss_barrier"])


def test_unlearn_with_calibrated_budget(fitted: Path, tmp_path: Path) -> None:
    out = tmp_path / "cal"
    code = main([
        "unlearn", "--checkpoint", str(fitted / "model.ckpt"),
        "--ledger", str(fitted / "privacy_ledger.pt"), "--forget-ids", "1,2,3",
        "--c-lsi", "0.001", "--check-every", "2", "--output-dir", str(out), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    # Independent recomputation of THEORY §5 with the command's constants (alpha 2, order 8).
    p = PrivacyLedger.load(fitted / "privacy_ledger.pt").privacy_loss(8)[[1, 2, 3]].max().item()
    c = lambda a: (a - 0.5) / (a - 1)  # noqa: E731
    expected = math.ceil(2 * 0.001 / (1.0 * 0.05) * math.log(c(2) * c(4) * p / 1.0))
    assert result["budget"] == max(expected, 0)
    assert result["steps"] <= result["budget"]
    assert result["stop_reason"] in ("calibrated", "budget")


def _run_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_wrong_paths_and_files_give_clear_errors(
    fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["unlearn", "--ledger", str(fitted / "privacy_ledger.pt"), "--forget-ids", "1",
            "--output-dir", str(tmp_path / "o")]  # fmt: skip
    err = _run_error([*base, "--checkpoint", str(tmp_path / "nope.ckpt")], capsys)
    assert "does not exist" in err
    assert "nope.ckpt" in err
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    assert "could not be read safely" in _run_error([*base, "--checkpoint", str(text)], capsys)
    # A pickle with an arbitrary object is refused by weights_only=True loading.
    evil = tmp_path / "evil.ckpt"
    with evil.open("wb") as fh:
        pickle.dump({"lightning_unlearn": subprocess.Popen}, fh, protocol=2)
    assert "could not be read safely" in _run_error([*base, "--checkpoint", str(evil)], capsys)
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    assert "to be a lightning-unlearn model checkpoint" in _run_error(
        [*base, "--checkpoint", str(plain)], capsys
    )

    ckpt = ["--checkpoint", str(fitted / "model.ckpt"), "--output-dir", str(tmp_path / "o")]
    other = tmp_path / "other_ledger.pt"
    PrivacyLedger(10).save(other)
    err = _run_error(["unlearn", *ckpt, "--ledger", str(other), "--forget-ids", "1"], capsys)
    assert "1258" in err
    assert "10" in err
    ledger = ["--ledger", str(fitted / "privacy_ledger.pt")]
    err = _run_error(["unlearn", *ckpt, *ledger, "--forget-ids", "99999"], capsys)
    assert "99999" in err
    err = _run_error(["unlearn", *ckpt, *ledger, "--forget-ids", str(tmp_path / "x.json")], capsys)
    assert "does not exist" in err
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("epochz: 3\n")
    err = _run_error(["fit", "--config", str(bad_cfg), "--output-dir", str(tmp_path)], capsys)
    assert "epochz" in err


def test_read_forget_ids_formats(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("[3, 1, 2]")
    assert read_forget_ids(str(tmp_path / "a.json")).tolist() == [1, 2, 3]  # canonical: sorted
    assert read_forget_ids("4,5").tolist() == [4, 5]


def test_console_script_entry_point_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_unlearn.cli", "--version"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0
    assert proc.stdout.startswith("lightning-unlearn 0.")


@pytest.mark.parametrize(
    "config", sorted((Path(__file__).parents[2] / "examples" / "configs").glob("*.yaml"))
)
def test_example_configs_are_valid(config: Path) -> None:
    import importlib

    from lightning_unlearn.cli._args import parse_args

    command = config.stem.split("_")[0]
    module = importlib.import_module(f"lightning_unlearn.cli.{command}")
    required = {
        "fit": ["--output-dir", "x"],
        "unlearn": ["--checkpoint", "c", "--ledger", "l", "--forget-ids", "1", "--output-dir", "x"],
    }.get(command, [])
    args = parse_args(module.build_parser(), ["--config", str(config), *required])
    values = __import__("yaml").safe_load(config.read_text())
    for key, value in values.items():
        assert getattr(args, key) == value  # every key reached its option
