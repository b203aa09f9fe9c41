"""PerInstancePrivacyMonitor in real Trainer runs: norms, corrections, accounting, files."""

from __future__ import annotations

import csv
import functools

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp

from lightning_unlearn import PerInstancePrivacyMonitor, PrivacyLedger
from lightning_unlearn.accounting import DEFAULT_ALPHAS
from tests.callbacks._support import loader, make_trainer
from tests.grad_norms._models import (
    MODEL_NAMES,
    LitClassifier,
    digits_dataset,
    digits_inputs,
    loop_sq_norms,
)

N, B = 40, 8


def _fit(
    model: LitClassifier,
    monitor: PerInstancePrivacyMonitor,
    n: int = N,
    batch: int = B,
    name: str = "mlp",
    **trainer_kw: object,
) -> PerInstancePrivacyMonitor:
    trainer = make_trainer(callbacks=[monitor], **trainer_kw)
    trainer.fit(model, loader(digits_dataset(name, n), batch))
    return monitor


def _reference(name: str, model: LitClassifier, n: int = N) -> torch.Tensor:
    x, y = digits_inputs(name, n)
    return loop_sq_norms(model.net, x, y)


@functools.cache
def _initial_reference(name: str, n: int) -> torch.Tensor:
    """Reference norms at the seeded initial weights (what an lr = 0 run keeps)."""
    return _reference(name, LitClassifier(name), n)


def _opacus_rdp(norms: torch.Tensor, sigma: float, q: float) -> torch.Tensor:
    """Per-instance RDP of one step from Opacus' analysis: r = ||g|| / sigma <=> sigma' = 1/r."""
    rows = [
        compute_rdp(q=q, noise_multiplier=float(sigma / g), steps=1, orders=list(DEFAULT_ALPHAS))
        for g in norms.tolist()
    ]
    return torch.as_tensor(np.array(rows), dtype=torch.float64)


@pytest.mark.parametrize("mode", ["ghost", "hooks", "functorch"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_lr0_norms_match_batch_size_one_loop(name: str, mode: str) -> None:
    n = 24
    model = LitClassifier(name, lr=0.0)
    keys = list(model.state_dict())
    monitor = _fit(model, PerInstancePrivacyMonitor(grad_sample_mode=mode), n=n, batch=6, name=name)
    ledger = monitor.ledger
    assert ledger.counts.tolist() == [1] * n
    torch.testing.assert_close(ledger.sq_norm_sum, _initial_reference(name, n), rtol=1e-5, atol=0)
    # the module was neither wrapped nor renamed, and the hooks are gone after fit
    assert list(model.state_dict()) == keys
    assert "autograd_grad_sample_hooks" not in vars(model)
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())


def test_online_losses_match_opacus_analysis_and_files(tmp_path) -> None:
    model = LitClassifier("mlp", lr=0.0)
    monitor = _fit(
        model, PerInstancePrivacyMonitor(noise_multiplier=2.0, save_dir=tmp_path), max_epochs=2
    )
    norms = _reference("mlp", model).sqrt()
    q = B / N
    expected = 2 * (1 / q) * _opacus_rdp(norms, 2.0, q)  # 2 epochs, each observation = 1/q steps
    # float32 norms: relative error ~1e-7 in r, amplified a little through exp(k(k-1) r^2 / 2)
    torch.testing.assert_close(monitor.ledger.privacy, expected, rtol=1e-5, atol=0)
    assert monitor.ledger.metadata["sample_rate"] == q

    saved = PrivacyLedger.load(tmp_path / "privacy_ledger.pt")
    torch.testing.assert_close(saved.privacy, monitor.ledger.privacy, rtol=0, atol=0)
    assert saved.metadata["steps"] == monitor.steps == 10
    with open(tmp_path / "privacy_ledger.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N
    eps, _ = monitor.ledger.epsilon(1e-5)
    assert float(rows[7]["epsilon"]) == pytest.approx(float(eps[7]), rel=1e-12)


def test_accumulate_grad_batches_gives_the_same_norms() -> None:
    one = _fit(LitClassifier("mlp"), PerInstancePrivacyMonitor())
    two = _fit(LitClassifier("mlp"), PerInstancePrivacyMonitor(), accumulate_grad_batches=2)
    torch.testing.assert_close(two.ledger.sq_norm_sum, one.ledger.sq_norm_sum, rtol=1e-6, atol=0)
    # the step covers two micro-batches: q doubles, and so does the global batch
    assert two.ledger.metadata["sample_rate"] == 2 * one.ledger.metadata["sample_rate"]


def test_sum_reduced_loss() -> None:
    model = LitClassifier("cnn", reduction="sum")
    monitor = _fit(model, PerInstancePrivacyMonitor(loss_reduction="sum"), name="cnn", batch=7)
    torch.testing.assert_close(
        monitor.ledger.sq_norm_sum, _reference("cnn", model), rtol=1e-5, atol=0
    )


def test_manual_optimization() -> None:
    model = LitClassifier("mlp", manual=True)
    monitor = _fit(model, PerInstancePrivacyMonitor())
    torch.testing.assert_close(
        monitor.ledger.sq_norm_sum, _reference("mlp", model), rtol=1e-5, atol=0
    )
    assert monitor.steps == N // B


def test_bf16_mixed_within_one_percent() -> None:
    model = LitClassifier("mlp")
    monitor = _fit(model, PerInstancePrivacyMonitor(), precision="bf16-mixed")
    norms = monitor.ledger.sq_norm_sum.sqrt()
    torch.testing.assert_close(norms, _reference("mlp", model).sqrt(), rtol=1e-2, atol=0)


def test_fp16_grad_scaler_is_undone() -> None:
    from lightning.pytorch.plugins.precision import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    model = LitClassifier("mlp")
    plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    monitor = _fit(model, PerInstancePrivacyMonitor(), plugins=[plugin])
    assert scaler.get_scale() > 1  # the gradients really were scaled
    norms = monitor.ledger.sq_norm_sum.sqrt()
    torch.testing.assert_close(norms, _reference("mlp", model).sqrt(), rtol=1e-2, atol=0)


def test_dpsgd_clipped_epsilon_equals_opacus_accountant() -> None:
    sigma, clip, n, batch, epochs = 1.3, 1e-3, 48, 8, 2
    monitor = PerInstancePrivacyMonitor(
        noise_multiplier=sigma, max_grad_norm=clip, convention="dpsgd", delta=1e-5
    )
    _fit(LitClassifier("mlp", lr=0.05), monitor, n=n, batch=batch, max_epochs=epochs)
    ledger = monitor.ledger
    assert bool((ledger.last_norm > clip).all())  # every norm is clipped
    accountant = RDPAccountant()
    steps = epochs * n // batch
    for _ in range(steps):
        accountant.step(noise_multiplier=sigma, sample_rate=batch / n)
    expected = accountant.get_epsilon(delta=1e-5, alphas=list(DEFAULT_ALPHAS))
    eps, _ = ledger.epsilon(1e-5)
    torch.testing.assert_close(eps, torch.full_like(eps, expected), rtol=1e-9, atol=0)
    assert monitor.worst_case_epsilon() == pytest.approx(expected, rel=1e-9)


def test_sweep_estimator_over_tracked_ids() -> None:
    tracked = [0, 3, 17, 39]
    monitor = PerInstancePrivacyMonitor(estimator="sweep", sweep_every=2, track_ids=tracked)
    model = LitClassifier("mlp")
    _fit(model, monitor)  # 5 steps: sweeps after steps 2 and 4 (K = 2) and at the end (1 step)
    norms = _reference("mlp", model).sqrt()
    expected = torch.zeros(N, len(DEFAULT_ALPHAS), dtype=torch.float64)
    expected[tracked] = 5 * _opacus_rdp(norms[tracked], 1.0, B / N)
    torch.testing.assert_close(monitor.ledger.privacy, expected, rtol=1e-6, atol=1e-12)
    assert monitor.ledger.counts.tolist() == [1] * N  # counts are training observations


def test_online_track_ids_and_sample_rate() -> None:
    monitor = _fit(
        LitClassifier("mlp"), PerInstancePrivacyMonitor(track_ids=[1, 2], sample_rate=0.5)
    )
    privacy = monitor.ledger.privacy
    assert bool((privacy[[1, 2]] > 0).all())
    assert privacy[0].abs().sum() == 0
    assert privacy[3:].abs().sum() == 0
    assert monitor.ledger.counts.tolist() == [1] * N
    assert monitor.ledger.metadata["sample_rate"] == 0.5


def test_sgld_convention_uses_the_optimizer_lr_and_global_batch() -> None:
    """r = sqrt(lr / 2) * ||g|| / (B * sigma); lr tiny so the weights (and norms) stay put."""
    lr, sigma = 1e-10, 1e-6
    model = LitClassifier("mlp", lr=lr)
    monitor = _fit(model, PerInstancePrivacyMonitor(noise_multiplier=sigma, convention="sgld"))
    norms = _initial_reference("mlp", N).sqrt()
    q = B / N
    # r = norm * sqrt(lr/2) / (B sigma): an Opacus noise multiplier of B sigma sqrt(2/lr) / norm
    effective_sigma = B * sigma * (2 / lr) ** 0.5
    expected = (1 / q) * _opacus_rdp(norms, effective_sigma, q)
    torch.testing.assert_close(monitor.ledger.privacy, expected, rtol=1e-5, atol=0)


def test_checkpoint_without_monitor_state_warns(tmp_path) -> None:
    trainer = make_trainer(enable_checkpointing=False)
    trainer.fit(LitClassifier("mlp"), loader(digits_dataset("mlp", 12), 4))
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    monitor = PerInstancePrivacyMonitor()
    with pytest.warns(UserWarning, match="starts from zero"):
        make_trainer(callbacks=[monitor], max_epochs=2).fit(
            LitClassifier("mlp"),
            loader(digits_dataset("mlp", 12), 4),
            ckpt_path=tmp_path / "plain.ckpt",
        )
    assert monitor.ledger.counts.tolist() == [1] * 12  # only the resumed epoch
