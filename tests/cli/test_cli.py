"""The `lightning-unlearn` command on real files: fit -> unlearn -> evaluate against a real oracle,
`--print_config` round trips, the example configs, clear errors."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from lightning_unlearn import PrivacyLedger
from lightning_unlearn.checkpoints import load_weights, model_record, save_model
from lightning_unlearn.cli import COMMANDS, main
from lightning_unlearn.data.forget_ids import read_forget_ids
from lightning_unlearn.data.modules import DigitsDataModule
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.errors import ForgetSetError
from lightning_unlearn.models import GroupNormCNN
from lightning_unlearn.unlearning.oracle import train_oracle

CONFIGS = Path(__file__).parents[2] / "examples" / "configs"
QUIET = ["--trainer.enable_progress_bar", "false"]
DATA = ["--data.init_args.batch_size", "128", "--data.init_args.seed", "3"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: lightning-unlearn")
    assert f" {command}" in out.splitlines()[0]
    assert "--config" in out


def test_top_level_usage_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert all(name in usage for name in COMMANDS)
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`fit --config examples/configs/fit_digits.yaml`, 2 epochs, shared by this module."""
    out = tmp_path_factory.mktemp("fit")
    argv = ["fit", "--config", str(CONFIGS / "fit_digits.yaml"), "--trainer.max_epochs", "2"]
    assert main([*argv, *DATA, *QUIET, "--output_dir", str(out)]) == 0
    return out


def _digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=128, seed=3)
    dm.setup()
    return dm


def test_fit_writes_checkpoint_ledger_and_logs(fitted: Path) -> None:
    model = GroupNormCNN(input_size=8)
    record = load_weights(model, fitted / "model.ckpt")
    assert record["model"]["class_path"] == "lightning_unlearn.models.GroupNormCNN"
    assert record["data"]["init_args"]["seed"] == 3  # the override reached the data module
    ledger = PrivacyLedger.load(fitted / "privacy_ledger.pt")
    assert ledger.num_samples == 1258
    assert ledger.metadata["noise_multiplier"] == 1.0  # from the YAML's monitor init_args
    # 2 epochs of shuffled batches: every example seen exactly twice.
    assert torch.equal(ledger.counts, torch.full((1258,), 2, dtype=ledger.counts.dtype))
    assert (fitted / "privacy_ledger.csv").read_text().startswith("sample_id")
    assert list((fitted / "tensorboard").glob("events.out.tfevents.*"))
    # The summary's test metrics, recomputed here from the test tensors.
    x, y = _digits().test_dataset.dataset.tensors  # type: ignore[union-attr]
    with torch.no_grad():
        logits = model.eval()(x)
    summary = json.loads((fitted / "fit_summary.json").read_text())
    assert summary["test_acc"] == pytest.approx((logits.argmax(1) == y).double().mean().item())
    loss = F.cross_entropy(logits.double(), y).item()
    assert summary["test_loss"] == pytest.approx(loss, rel=1e-5)  # float32 logits


def test_fit_print_config_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["fit", "--model", "lightning_unlearn.models.MLPClassifier",
            "--model.init_args.input_dim", "64", "--trainer.max_epochs", "1", *QUIET]  # fmt: skip
    assert main([*argv, "--output_dir", str(tmp_path / "a"), "--print_config"]) == 0
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert config["trainer"]["callbacks"][0]["class_path"].endswith("PerInstancePrivacyMonitor")
    (tmp_path / "fit.yaml").write_text(printed)
    assert main(["fit", "--config", str(tmp_path / "fit.yaml")]) == 0
    saved = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())
    assert saved["model"] == config["model"]  # the run wrote back the config it ran
    assert saved["trainer"]["callbacks"] == config["trainer"]["callbacks"]


def _unlearn_args(fitted: Path, out: Path, *extra: str) -> list[str]:
    return [
        "unlearn", "--checkpoint", str(fitted / "model.ckpt"),
        "--ledger", str(fitted / "privacy_ledger.pt"), *DATA, *QUIET,
        "--output_dir", str(out), *extra,
    ]  # fmt: skip


def test_unlearn_print_config_round_trip(
    fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _unlearn_args(fitted, tmp_path / "u", "--forget_ids", "4,9", "--budget_steps", "2")
    assert main([*argv, "--model.init_args.method", "sgld", "--print_config"]) == 0
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert config["model"]["init_args"]["module"]["class_path"].endswith("GroupNormCNN")
    assert set(config["bound"]) >= {"alpha", "c_lsi", "langevin_sigma", "target_epsilon"}
    (tmp_path / "unlearn.yaml").write_text(printed)
    assert main(["unlearn", "--config", str(tmp_path / "unlearn.yaml")]) == 0
    result = json.loads((tmp_path / "u" / "result.json").read_text())
    assert (result["method"], result["steps"], result["num_forget"]) == ("sgld", 2, 2)


def _per_example(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model.eval()(x).double(), y, reduction="none")


def _split(ids: list[int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    dm = _digits()
    x, y = dm.train_dataset.dataset.tensors  # type: ignore[union-attr]
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[ids] = False
    tx, ty = dm.test_dataset.dataset.tensors  # type: ignore[union-attr]
    return {"forget": (x[ids], y[ids]), "retain": (x[keep], y[keep]), "heldout": (tx, ty)}


def _barrier(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """max over 11 points of L((1-t) a + t b) - ((1-t) L(a) + t L(b)), by hand."""
    mix = GroupNormCNN(input_size=8)
    sa, sb = a.state_dict(), b.state_dict()
    values = []
    for t in torch.linspace(0, 1, 11).tolist():
        mix.load_state_dict({k: (1 - t) * sa[k] + t * sb[k] for k in sa})
        values.append(_per_example(mix, x, y).mean().item())
    return max(v - ((1 - t) * values[0] + t * values[-1]) for v, t in
               zip(values, torch.linspace(0, 1, 11).tolist(), strict=True))  # fmt: skip


def test_unlearn_then_evaluate_against_a_real_oracle(fitted: Path, tmp_path: Path) -> None:
    ids_file = tmp_path / "forget.txt"
    ids_file.write_text("5, 17 23\n101")
    out = tmp_path / "unlearn"
    argv = _unlearn_args(fitted, out, "--forget_ids", str(ids_file), "--budget_steps", "6",
                         "--model.init_args.method", "sgld")  # fmt: skip
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert (result["method"], result["budget"], result["steps"]) == ("sgld", 6, 6)
    assert result["num_forget"] == 4
    unlearned, original = GroupNormCNN(input_size=8), GroupNormCNN(input_size=8)
    assert load_weights(unlearned, out / "unlearned.ckpt")["extra"]["steps"] == 6
    load_weights(original, fitted / "model.ckpt")
    pairs = zip(unlearned.state_dict().values(), original.state_dict().values(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)

    # A real oracle: the fit recipe retrained on the retain set only (2 epochs, tiny).
    ids = [5, 17, 23, 101]
    dm = _digits()
    frdm = ForgetRetainDataModule(dm.train_dataset, ids, heldout=dm.test_dataset, batch_size=128)  # type: ignore[arg-type]
    oracle = train_oracle(GroupNormCNN(input_size=8), frdm, seed=3, max_epochs=2,
                          accelerator="cpu", devices=1)  # fmt: skip
    oracle_ckpt = save_model(oracle, tmp_path / "oracle.ckpt", model_record(oracle, dm, "oracle"))
    evaluation = tmp_path / "evaluation"
    assert main([
        "evaluate", "--config", str(CONFIGS / "evaluate.yaml"),
        "--checkpoint", str(out / "unlearned.ckpt"), "--forget_ids", "5,17,23,101",
        "--oracle", str(oracle_ckpt), "--reference", str(fitted / "model.ckpt"), *DATA, *QUIET,
        "--output_dir", str(evaluation),
    ]) == 0  # fmt: skip
    metrics = json.loads((evaluation / "evaluation.json").read_text())

    # Every number recomputed here with plain torch / scipy / sklearn.
    parts = _split(ids)
    losses = {name: _per_example(unlearned, x, y) for name, (x, y) in parts.items()}
    for name, (x, y) in parts.items():
        with torch.no_grad():
            acc = (unlearned(x).argmax(1) == y).double().mean().item()
        assert metrics[name]["loss"] == pytest.approx(losses[name].mean().item(), rel=1e-5)
        assert metrics[name]["accuracy"] == pytest.approx(acc, abs=1e-12)
    labels = [1] * len(ids) + [0] * len(losses["heldout"])
    scores = torch.cat([-losses["forget"], -losses["heldout"]]).numpy()
    assert metrics["forget_mia_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    oracle_forget = _per_example(oracle, *parts["forget"])
    ks = ks_2samp(losses["forget"].numpy(), oracle_forget.numpy())
    assert metrics["oracle"]["ks_statistic"] == pytest.approx(ks.statistic, abs=1e-9)
    oracle_loss = oracle_forget.mean().item()
    assert metrics["oracle"]["forget"]["loss"] == pytest.approx(oracle_loss, rel=1e-5)
    with torch.no_grad():
        p = unlearned(parts["forget"][0]).double().softmax(1)
        q = oracle(parts["forget"][0]).double().softmax(1)
    m = (p + q) / 2
    js = 0.5 * ((p * (p / m).log()).sum(1) + (q * (q / m).log()).sum(1))
    assert metrics["oracle"]["js_divergence"] == pytest.approx(js.mean().item(), rel=1e-4)
    barrier = _barrier(original, unlearned, *parts["forget"])
    assert metrics["forget_loss_barrier"] == pytest.approx(barrier, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("sigma", [None, 2.0])
def test_unlearn_budget_from_the_bound(fitted: Path, tmp_path: Path, sigma: float | None) -> None:
    extra = ["--forget_ids", "1,2,3", "--bound.c_lsi", "0.001", "--model.init_args.lr", "0.05"]
    if sigma is not None:
        extra += ["--bound.langevin_sigma", str(sigma)]
    assert main(_unlearn_args(fitted, tmp_path / "cal", *extra)) == 0
    result = json.loads((tmp_path / "cal" / "result.json").read_text())
    # THEORY §5 recomputed with the command's constants (alpha 2, order 8); sigma defaults to
    # the training noise multiplier the ledger recorded.
    ledger = PrivacyLedger.load(fitted / "privacy_ledger.pt")
    s = ledger.metadata["noise_multiplier"] if sigma is None else sigma
    p = ledger.privacy_loss(8)[[1, 2, 3]].max().item()
    c = lambda a: (a - 0.5) / (a - 1)  # noqa: E731
    expected = math.ceil(2 * 0.001 / (s**2 * 0.05) * math.log(c(2) * c(4) * p / 1.0))
    assert result["budget"] == max(expected, 0)
    assert result["audit"]["budget_source"] == "THEORY §5 bound"


def _run_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_wrong_paths_and_files_give_clear_errors(
    fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["unlearn", "--ledger", str(fitted / "privacy_ledger.pt"), "--forget_ids", "1",
            *DATA, "--output_dir", str(tmp_path / "o")]  # fmt: skip
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
    mlp = ["--model.init_args.module", "lightning_unlearn.models.MLPClassifier"]
    err = _run_error([*base, "--checkpoint", str(fitted / "model.ckpt"), *mlp], capsys)
    assert "do not fit the configured model MLPClassifier" in err

    ckpt = ["--checkpoint", str(fitted / "model.ckpt"), *DATA, "--output_dir", str(tmp_path / "o")]
    other = tmp_path / "other_ledger.pt"
    PrivacyLedger(10).save(other)
    err = _run_error(["unlearn", *ckpt, "--ledger", str(other), "--forget_ids", "1"], capsys)
    assert "1258" in err
    assert "10" in err
    ledger = ["--ledger", str(fitted / "privacy_ledger.pt")]
    err = _run_error(["unlearn", *ckpt, *ledger, "--forget_ids", "99999"], capsys)
    assert "99999" in err
    err = _run_error(["unlearn", *ckpt, *ledger, "--forget_ids", str(tmp_path / "x.json")], capsys)
    assert "does not exist" in err
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("trainer:\n  max_epochz: 3\n")
    err = _run_error(["fit", "--config", str(bad_cfg), "--output_dir", str(tmp_path)], capsys)
    assert "max_epochz" in err
    err = _run_error(["evaluate", *ckpt, "--forget_ids", "1", "--data.init_args.seed", "4"], capsys)
    assert "to be trained on the configured `data`" in err


def test_read_forget_ids_formats(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("[3, 1, 2]")
    # canonical once where ids enter (validation.check_forget_ids): sorted, duplicates refused
    assert read_forget_ids(str(tmp_path / "a.json")).tolist() == [1, 2, 3]
    assert read_forget_ids("5,4").tolist() == [4, 5]
    (tmp_path / "b.txt").write_text("7 7")
    with pytest.raises(ForgetSetError, match="duplicates"):
        read_forget_ids(str(tmp_path / "b.txt"))


def test_console_script_entry_point_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_unlearn.cli", "--version"],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0
    assert proc.stdout.startswith("lightning-unlearn 0.")


def test_example_fashion_mnist_config_runs(tmp_path: Path) -> None:
    """The Fashion-MNIST config, on a tiny subset (the digits and unlearn configs run above)."""
    from lightning_unlearn.data.modules import FASHION_MNIST_DIR

    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip("apt-get install dataset-fashion-mnist")
    argv = ["fit", "--config", str(CONFIGS / "fit_fashion_mnist.yaml"), "--trainer.max_steps", "2",
            "--data.init_args.subset", "300", "--data.init_args.test_subset", "50", *QUIET,
            "--output_dir", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    assert PrivacyLedger.load(tmp_path / "privacy_ledger.pt").num_samples == 270


def test_example_unlearn_config_runs(fitted: Path, tmp_path: Path) -> None:
    config = yaml.safe_load((CONFIGS / "unlearn.yaml").read_text())
    assert config["model"]["init_args"]["module"]["class_path"].endswith("GroupNormCNN")
    argv = ["unlearn", "--config", str(CONFIGS / "unlearn.yaml"), "--budget_steps", "3",
            "--forget_ids", str(CONFIGS / "forget_ids.json")]  # fmt: skip
    assert main([*argv, *_unlearn_args(fitted, tmp_path)[1:]]) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["num_forget"] == len(json.loads((CONFIGS / "forget_ids.json").read_text()))
    assert result["steps"] <= 3
