"""Noise conventions (THEORY §1): ratios from explicit clipped gradient vectors and noise scales."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_unlearn.accounting import NoiseConfig, dpsgd_ratios, sgld_ratios


def _gradients(seed: int = 0) -> torch.Tensor:
    g = torch.randn(6, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return g * torch.tensor([0.01, 0.3, 0.9, 1.5, 4.0, 20.0], dtype=torch.float64).unsqueeze(1)


def _clip(g: torch.Tensor, clip: float) -> torch.Tensor:
    """clip_C(g) = g * min(1, C / ||g||), on whole gradient vectors."""
    norms = g.norm(dim=1, keepdim=True)
    return g * torch.clamp(clip / norms, max=1.0)


@pytest.mark.parametrize("clip", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("sigma", [0.7, 2.0])
def test_dpsgd_ratio_is_sensitivity_over_opacus_noise(clip: float, sigma: float) -> None:
    g = _gradients()
    lr, batch = 0.1, 32
    # Opacus' step: theta -= lr/B * (sum of clipped grads + N(0, (sigma C)^2)).
    sensitivity = lr / batch * _clip(g, clip).norm(dim=1)
    noise_std = lr / batch * sigma * clip
    expected = sensitivity / noise_std
    torch.testing.assert_close(dpsgd_ratios(g.norm(dim=1), sigma, clip), expected)
    assert bool((dpsgd_ratios(g.norm(dim=1), sigma, clip) <= 1 / sigma + 1e-15).all())


def test_dpsgd_without_clipping_uses_unit_clip_norm() -> None:
    norms = _gradients().norm(dim=1)
    torch.testing.assert_close(dpsgd_ratios(norms, 2.0), norms / 2.0)
    torch.testing.assert_close(NoiseConfig("nominal", 2.0).ratios(norms), norms / 2.0)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_sgld_ratio_is_sensitivity_over_langevin_noise(clip: float | None) -> None:
    g = _gradients(1)
    lr, batch, sigma = 0.05, 16, 0.8
    clipped = g if clip is None else _clip(g, clip)
    # theta -= lr * mean_B(g) + sqrt(2 lr sigma^2) N(0, I): one example moves the mean by g / B.
    sensitivity = lr * clipped.norm(dim=1) / batch
    noise_std = math.sqrt(2 * lr * sigma**2)
    expected = sensitivity / noise_std
    got = sgld_ratios(g.norm(dim=1), sigma, lr=lr, batch_size=batch, max_grad_norm=clip)
    torch.testing.assert_close(got, expected)
    cfg = NoiseConfig("sgld", sigma, clip)
    torch.testing.assert_close(cfg.ratios(g.norm(dim=1), lr=lr, batch_size=batch), expected)


def test_noise_config_dpsgd_matches_function_and_flags_guarantee() -> None:
    norms = torch.tensor([0.2, 5.0], dtype=torch.float32)
    cfg = NoiseConfig("dpsgd", noise_multiplier=1.5, max_grad_norm=1.0)
    out = cfg.ratios(norms)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.tensor([0.2 / 1.5, 1 / 1.5], dtype=torch.float64))
    assert cfg.is_guarantee
    assert not NoiseConfig("nominal", 1.0).is_guarantee
    with pytest.raises(AttributeError):
        cfg.noise_multiplier = 2.0  # type: ignore[misc]


def test_bad_arguments_name_the_problem() -> None:
    norms = torch.ones(3)
    with pytest.raises(ValueError, match="`noise_multiplier`"):
        dpsgd_ratios(norms, 0.0)
    with pytest.raises(ValueError, match="`max_grad_norm`"):
        dpsgd_ratios(norms, 1.0, max_grad_norm=-1.0)
    with pytest.raises(TypeError, match="`noise_multiplier`"):
        dpsgd_ratios(norms, "1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`lr`"):
        sgld_ratios(norms, 1.0, lr=0.0, batch_size=4)
    with pytest.raises(ValueError, match="`batch_size`"):
        sgld_ratios(norms, 1.0, lr=0.1, batch_size=0)
    with pytest.raises(TypeError, match="`batch_size`"):
        sgld_ratios(norms, 1.0, lr=0.1, batch_size=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`convention`"):
        NoiseConfig("gaussian", 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`lr` and `batch_size`"):
        NoiseConfig("sgld", 1.0).ratios(norms)


def test_accounting_validators_are_the_shared_ones() -> None:
    """One set of number validators: a wrong type is a TypeError and the package's named error,
    a value out of range a ValueError and the named error (THEORY §1 arguments)."""
    from lightning_unlearn.accounting import NoiseConfig, UnlearningConstants, worst_case_rdp
    from lightning_unlearn.errors import InvalidArgumentError, InvalidArgumentTypeError

    with pytest.raises(InvalidArgumentTypeError, match="`noise_multiplier`") as wrong_type:
        NoiseConfig("dpsgd", "1.0")  # type: ignore[arg-type]
    assert isinstance(wrong_type.value, TypeError)
    with pytest.raises(InvalidArgumentError, match="`max_grad_norm`") as out_of_range:
        NoiseConfig("dpsgd", 1.0, max_grad_norm=0.0)
    assert not isinstance(out_of_range.value, TypeError)
    with pytest.raises(InvalidArgumentError, match="`steps` to be an integer >= 0"):
        worst_case_rdp(1.0, 0.1, steps=-1)
    with pytest.raises(InvalidArgumentTypeError, match="`alpha` to be an integer >= 2"):
        UnlearningConstants(alpha=2.0, c_lsi=1.0, langevin_sigma=1.0, lr=0.1, target_epsilon=1.0)  # type: ignore[arg-type]
