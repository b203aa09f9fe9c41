"""Fault injection: every fault ends in a named error or a correct result, never a silently wrong
number, a hang or a lost file. Corrupted files, impossible values, foreign ledgers, kill -9
during `fit` and during writes, failing writes, bad values."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_unlearn import PrivacyLedger
from lightning_unlearn.checkpoints import load_weights, save_model
from lightning_unlearn.cli import main
from lightning_unlearn.errors import (
    BudgetTooLargeError,
    IntegrityError,
    LedgerIntegrityError,
)
from lightning_unlearn.models import MLPClassifier
from lightning_unlearn.unlearning.budget import compute_budget
from tests.cli._faults import assert_same_run, data_entries, flip_byte

REPO = Path(__file__).parents[2]
QUIET = ["--trainer.enable_progress_bar", "false"]
DATA = ["--data.init_args.batch_size", "128", "--data.init_args.seed", "3"]
FIT = ["fit", "--trainer.max_epochs", "2", *DATA, "--seed_everything", "3", *QUIET]
MLP = ["--model", "lightning_unlearn.models.MLPClassifier", "--model.init_args.input_dim", "64"]
MODULE = {  # the unlearner's module, as each run was trained
    "mlp": ["--model.init_args.module", "lightning_unlearn.models.MLPClassifier",
            "--model.init_args.module.init_args.input_dim", "64"],
    "cnn": [],
}  # fmt: skip


def _fit(out: Path, *extra: str) -> Path:
    assert main([*FIT, "--output_dir", str(out), *extra]) == 0
    return out


def _mlp(path: Path) -> MLPClassifier:
    model = MLPClassifier(input_dim=64)
    load_weights(model, path)
    return model


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three real `fit` runs on the same digits split: MLP, MLP with another batch size, CNN."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "mlp": _fit(root / "mlp", *MLP),
        "mlp64": _fit(root / "mlp64", *MLP, "--data.init_args.batch_size", "64"),
        "cnn": _fit(root / "cnn"),
    }


def _error(argv: list[str], capsys: pytest.CaptureFixture[str], code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line, no traceback
    return err


def _unlearn(run: Path, out: Path, ledger: Path | None = None, *extra: str) -> list[str]:
    return [
        "unlearn", "--checkpoint", str(run / "model.ckpt"), *MODULE[run.name[:3]], *DATA,
        "--ledger", str(ledger or run / "privacy_ledger.pt"), "--forget_ids", "1,2,3",
        "--output_dir", str(out), *QUIET, *extra,
    ]  # fmt: skip


# ---------------------------------------------------------------- corrupted files
def test_flipped_bytes_in_any_ledger_tensor_are_caught(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    src = runs["mlp"] / "privacy_ledger.pt"
    for entry in range(len(data_entries(src))):
        bad = flip_byte(src, tmp_path / f"flipped{entry}.pt", entry=entry)
        with pytest.raises(LedgerIntegrityError, match=r"checksum|non-finite|negative"):
            PrivacyLedger.load(bad)


def test_unlearn_refuses_a_flipped_ledger_and_checkpoint(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs["mlp"]
    bad_ledger = flip_byte(run / "privacy_ledger.pt", tmp_path / "ledger.pt")
    err = _error(_unlearn(run, tmp_path / "o", bad_ledger, "--budget_steps", "1"), capsys)
    assert "ledger.pt" in err
    assert "checksum" in err
    bad_ckpt = flip_byte(run / "model.ckpt", tmp_path / "model.ckpt")
    with pytest.raises(IntegrityError, match="embedded checksum"):
        _mlp(bad_ckpt)
    argv = _unlearn(run, tmp_path / "o", None, "--budget_steps", "1")
    argv[argv.index("--checkpoint") + 1] = str(bad_ckpt)
    assert "embedded checksum" in _error(argv, capsys)
    assert not (tmp_path / "o" / "result.json").exists()


def test_resume_refuses_a_flipped_lightning_checkpoint(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    last = runs["mlp"] / "checkpoints" / "last.ckpt"
    bad = flip_byte(last, tmp_path / "last.ckpt", entry=0)
    err = _error([*FIT, *MLP, "--output_dir", str(tmp_path / "r"), "--ckpt_path", str(bad)],
                 capsys)  # fmt: skip
    assert "embedded checksum" in err
    err = _error([*FIT, "--output_dir", str(tmp_path / "none"), "--ckpt_path", "last"], capsys)
    assert "no checkpoint to resume from" in err


# ---------------------------------------------------------------- impossible values
@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("privacy", float("inf"), "non-finite or negative"),
        ("privacy", float("nan"), "non-finite or negative"),
        ("privacy", -1.0, "non-finite or negative"),
        ("counts", -3, "negative"),
        ("sq_norm_sum", float("nan"), "non-finite or negative"),
    ],
)
def test_impossible_values_with_a_valid_checksum_are_caught(
    tmp_path: Path, name: str, value: float, match: str
) -> None:
    ledger = PrivacyLedger(5, alphas=(2, 8))
    ledger.privacy[:] = torch.tensor([1.0, 2.0], dtype=torch.float64)
    getattr(ledger, name)[3] = value
    ledger.save(tmp_path / "l.pt")  # the checksum is right: only plausibility can tell
    with pytest.raises(LedgerIntegrityError, match=match):
        PrivacyLedger.load(tmp_path / "l.pt")


def test_p_falling_in_the_order_is_caught_and_verify_false_warns(tmp_path: Path) -> None:
    ledger = PrivacyLedger(3, alphas=(2, 8))
    ledger.privacy[1] = torch.tensor([5.0, 1.0], dtype=torch.float64)
    ledger.save(tmp_path / "l.pt")
    with pytest.raises(LedgerIntegrityError, match="decreases with the order"):
        PrivacyLedger.load(tmp_path / "l.pt")
    with pytest.warns(UserWarning, match="without verifying"):
        assert PrivacyLedger.load(tmp_path / "l.pt", verify=False).privacy[1, 0] == 5.0


def test_huge_or_infinite_p_never_hangs_unlearn(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs["mlp"]
    ledger = PrivacyLedger.load(run / "privacy_ledger.pt")
    ledger.privacy[1:4] = 1e300  # finite, plausible, monotone: the bound asks for ~1e5 steps
    ledger.save(tmp_path / "huge.pt")
    err = _error(_unlearn(run, tmp_path / "o", tmp_path / "huge.pt", "--bound.c_lsi", "1"), capsys)
    assert "more than the maximum" in err
    assert str(ledger.metadata["steps"]) in err  # the run length is the default cap
    # An explicit cap is honoured; the in-memory ledger with inf is an integrity error.
    with pytest.raises(BudgetTooLargeError, match="maximum 5 "):
        compute_budget(ledger, [1], steps=None, constants=_constants(), max_steps=5)
    ledger.privacy[2] = float("inf")
    with pytest.raises(LedgerIntegrityError, match="inf"):
        compute_budget(ledger, [2], constants=_constants())


def _constants():  # type: ignore[no-untyped-def]
    from lightning_unlearn.accounting import UnlearningConstants

    return UnlearningConstants(alpha=2, c_lsi=1.0, langevin_sigma=1.0, lr=0.05, target_epsilon=1.0)


# ---------------------------------------------------------------- foreign ledgers
@pytest.mark.parametrize(("other", "key"), [("mlp64", "batch_size"), ("cnn", "model_fingerprint")])
@pytest.mark.parametrize("budget", [["--budget_steps", "1"], []])
def test_a_ledger_of_another_run_on_the_same_data_is_refused(
    runs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    other: str,
    key: str,
    budget: list[str],
) -> None:
    argv = _unlearn(runs["mlp"], tmp_path / "o", runs[other] / "privacy_ledger.pt", *budget)
    assert key in _error(argv, capsys)


@pytest.mark.parametrize("key", ["dataset_fingerprint", "model_sha256", "batch_size"])
def test_a_missing_recording_key_is_a_mismatch(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    ledger = PrivacyLedger.load(runs["mlp"] / "privacy_ledger.pt")
    del ledger.metadata[key]
    ledger.save(tmp_path / "l.pt")  # re-saved: a valid checksum, one key fewer
    err = _error(_unlearn(runs["mlp"], tmp_path / "o", tmp_path / "l.pt", "--budget_steps", "1"),
                 capsys)  # fmt: skip
    assert key in err
    assert "has none" in err


# ---------------------------------------------------------------- bad values
@pytest.mark.parametrize(
    ("yaml", "flags", "match"),
    [
        ("", ["--trainer.max_epochs", "-1"], "`trainer.max_epochs` to be an integer >= 1"),
        ("trainer:\n  max_epochs: 2.7\n", [], "trainer.max_epochs"),
        ("trainer:\n  max_epochs: -1\n", [], "but got -1"),
        ("trainer:\n  max_epochs: true\n", [], "trainer.max_epochs"),
        ("", ["--model.init_args.lr", "0"], "`model.init_args.lr` to be a finite number > 0"),
        ("model:\n  init_args:\n    lr: .nan\n", [], "`model.init_args.lr` to be a finite"),
        ("", ["--trainer.callbacks.noise_multiplier", "-1"], "noise_multiplier"),
        ("", ["--data.init_args.batch_size", "0"], "`batch_size`"),
        ("", ["--trainer.callbacks.max_grad_norm", "-2"], "max_grad_norm"),
        ("model: rnn\n", [], "rnn"),
        ("", ["--threads", "-1"], "`threads` to be an integer >= 0"),
    ],
)
def test_bad_fit_values_exit_2_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml: str, flags: list[str], match: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml or "seed_everything: 0\n")
    out = tmp_path / "out"
    err = _error(["fit", "--config", str(config), *flags, "--output_dir", str(out)], capsys)
    assert match in err
    assert not out.exists()  # refused before anything was created


def test_bad_forget_ids_and_output_dirs_exit_2(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = runs["mlp"]
    base = _unlearn(run, tmp_path / "o", None, "--budget_steps", "1")
    i = base.index("--forget_ids") + 1
    for content, match in [
        ("[1.5, 3]", "item 0 is 1.5 (float)"),
        ("[true, 2]", "item 0 is True (bool)"),
        ("[2, 99999999999999999999]", "fit in int64"),
        ('{"a": 1}', "JSON list"),
    ]:
        ids = tmp_path / "ids.json"
        ids.write_text(content)
        base[i] = str(ids)
        assert match in _error(base, capsys)
    base[i - 1 : i + 1] = ["--forget_ids=-1,3"]  # parsed as ids, not as a file name
    err = _error(base, capsys)
    assert "[-1]" in err
    base[i - 1 : i] = ["--forget_ids", "-1,3"]  # also without `=`
    err = _error(base, capsys)
    assert "[-1]" in err
    assert "[0, 1258)" in err
    afile = tmp_path / "afile"
    afile.write_text("x")
    argv = _unlearn(run, afile, None, "--budget_steps", "1")
    assert "is a file" in _error(argv, capsys)
    argv = _unlearn(run, afile / "sub", None, "--budget_steps", "1")
    assert "is a file" in _error(argv, capsys)


# ---------------------------------------------------------------- writes
def test_outputs_share_one_mode(runs: dict[str, Path]) -> None:
    for name in ("model.ckpt", "privacy_ledger.pt", "privacy_ledger.csv", "fit_summary.json"):
        mode = (runs["mlp"] / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~_umask(), (name, oct(mode))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failing_write_after_training_keeps_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fit"
    (out / "privacy_ledger.csv").mkdir(parents=True)  # a directory: the CSV cannot replace it
    argv = [*FIT, *MLP, "--trainer.max_epochs", "1", "--output_dir", str(out)]
    err = _error(argv, capsys)
    assert "privacy_ledger.csv" in err
    assert "model.ckpt" in err  # says what was saved
    model = _mlp(out / "model.ckpt")
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    assert PrivacyLedger.load(out / "privacy_ledger.pt").num_samples == 1258
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


_DIE_IN_WRITE = """
import os, sys, torch
import lightning_unlearn.integrity as integrity
from lightning_unlearn import PrivacyLedger
target, how = sys.argv[1], sys.argv[2]
if how == "before_rename":
    integrity.os.replace = lambda *a: os._exit(9)
else:
    real = torch.save
    def half(obj, f, *a, **k):
        import io
        buf = io.BytesIO(); real(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2]); f.flush(); os._exit(9)
    torch.save = half
ledger = PrivacyLedger(2000, alphas=(2, 8))
ledger.privacy += 7.0
if target.endswith(".csv"):
    ledger.to_csv(target)
elif target.endswith(".ckpt"):
    from lightning_unlearn.integrity import save_verified
    save_verified({"state_dict": {"w": torch.ones(3)}}, target)
else:
    ledger.save(target)
"""


@pytest.mark.parametrize(
    ("name", "how"),
    [
        ("privacy_ledger.pt", "before_rename"),
        ("privacy_ledger.pt", "half_written"),
        ("model.ckpt", "before_rename"),
        ("model.ckpt", "half_written"),
        ("privacy_ledger.csv", "before_rename"),  # half-written CSV: the SIGKILL test below
    ],
)
def test_a_process_dying_mid_write_leaves_the_previous_file(
    tmp_path: Path, name: str, how: str
) -> None:
    target = tmp_path / name
    target.write_bytes(b"previous content")
    proc = subprocess.run(
        [sys.executable, "-c", _DIE_IN_WRITE, str(target), how],
        capture_output=True, text=True, timeout=120, check=False, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 9, proc.stderr
    assert target.read_bytes() == b"previous content"
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers  # the dead writer could not clean up ...
    PrivacyLedger(3).save(tmp_path / "next.pt")  # ... the next write into the directory does
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_kill_9_during_a_large_csv_export_keeps_the_previous_csv(tmp_path: Path) -> None:
    target = tmp_path / "privacy_ledger.csv"
    target.write_text("previous\n")
    script = (
        "import sys, torch; from lightning_unlearn import PrivacyLedger\n"
        "l = PrivacyLedger(600_000, alphas=(2, 8, 32)); l.privacy += 1.0\n"
        "l.to_csv(sys.argv[1], delta=1e-5)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(target)], cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.endswith(".tmp") and p.stat().st_size > 0 for p in tmp_path.iterdir()):
            assert proc.poll() is None, "the export finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_text() == "previous\n"


# ---------------------------------------------------------------- kill -9 during fit
@pytest.mark.slow
def test_kill_9_during_fit_then_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    epochs, kill_after = 8, random.randint(1, 4)
    argv = ["fit", *MLP, "--trainer.max_epochs", str(epochs), "--data.init_args.batch_size", "64",
            "--data.init_args.seed", "1", "--seed_everything", "1", *QUIET]  # fmt: skip
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lightning_unlearn.cli", *argv, "--output_dir", str(killed)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        marker = f"epoch{kill_after:04d}-"
        while not any(p.name.startswith(marker) for p in (killed / "checkpoints").glob("*.ckpt")):
            assert proc.poll() is None, f"fit ended before epoch {kill_after} was checkpointed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # right after an epoch checkpoint appeared
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.ckpt").exists(), "the kill landed after training had finished"
    assert main([*argv, "--output_dir", str(killed), "--ckpt_path", "last"]) == 0
    summary = json.loads((killed / "fit_summary.json").read_text())
    assert summary["resumed_from"].endswith("last.ckpt")
    full = tmp_path / "full"
    assert main([*argv, "--output_dir", str(full)]) == 0
    assert_same_run(full, killed)  # 1e-12, at whichever epoch boundary last.ckpt held


# ---------------------------------------------------------------- audit
def test_audit_verifies_and_detects_a_replaced_model(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_unlearn.unlearning.audit import verify_audit
    from lightning_unlearn.unlearning.result import UnlearningResult

    out = tmp_path / "u"
    assert main(_unlearn(runs["mlp"], out, None, "--budget_steps", "3")) == 0
    result = UnlearningResult.from_json(out / "result.json")
    audit = result.audit
    assert audit["forget_ids"] == {
        "count": 3,
        "ids": [1, 2, 3],
        "sha256": audit["forget_ids"]["sha256"],
    }
    assert audit["budget"] == 3
    assert audit["budget_source"] == "fixed budget_steps"
    assert audit["steps"] == 3
    assert audit["stop_reason"] == "budget"
    assert audit["model_sha256_before"] != audit["model_sha256_after"]
    assert (
        audit["ledger_sha256"]
        == PrivacyLedger.load(runs["mlp"] / "privacy_ledger.pt").state_dict()["checksum"]
    )
    assert {"python", "torch", "lightning", "opacus", "lightning_unlearn"} <= set(audit["versions"])
    capsys.readouterr()
    assert main(["audit", str(out / "result.json"), "--forget_ids", "3,2,1"]) == 0
    assert len(verify_audit(audit)) == 4
    # Replace the unlearned model by another one that is a valid checkpoint (right checksum).
    model = MLPClassifier(input_dim=64)
    record = load_weights(model, out / "unlearned.ckpt")
    with torch.no_grad():
        next(model.parameters()).add_(1e-6)
    save_model(model, out / "unlearned.ckpt", record)
    err = _error(["audit", str(out / "result.json")], capsys, code=1)
    assert "model hash after" in err
    err = _error(["audit", str(out / "result.json"), "--forget_ids", "1,2"], capsys, code=1)
    assert "forget ids" in err
    assert "does not exist" in _error(["audit", str(tmp_path / "nope.json")], capsys)
