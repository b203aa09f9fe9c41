"""Every parameter that receives a gradient contributes to the norm, or a named error (all
modes); explicit exclusions; attach-time refusals (compiled submodules, BatchNorm variants)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from lightning_unlearn.errors import NormHooksError, UnsupportedLayerError
from lightning_unlearn.grad_norms import attach_norm_hooks, find_unsupported_modules
from tests.grad_norms._reference import assert_exact

MODES = ("fused", "ghost", "hooks", "functorch")
B = 6


class Tempered(nn.Module):
    """A learnable temperature used outside any submodule's forward (as in `training_step`)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
        self.temperature = nn.Parameter(torch.tensor(1.5))

    def loss(self, x: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
        return nn.functional.cross_entropy(self.body(x) / self.temperature, y, reduction=reduction)


def _data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, 5, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (B,), generator=g
    )


@pytest.mark.parametrize("mode", MODES)
def test_module_level_parameter_is_named_not_omitted(mode: str) -> None:
    torch.manual_seed(0)
    net, (x, y) = Tempered().double(), _data()
    with attach_norm_hooks(net, mode) as hooks:  # type: ignore[arg-type]
        net.loss(x, y).backward()
        with pytest.raises(NormHooksError, match=r"'temperature'.*exclude="):
            hooks.per_sample_norms()
        hooks.clear()
        # the sweep's path: torch.autograd.grad (post-accumulate hooks would not fire there)
        torch.autograd.grad(net.loss(x, y), list(net.parameters()))
        with pytest.raises(NormHooksError, match="'temperature'"):
            hooks.per_sample_norms()


@pytest.mark.parametrize("mode", MODES)
def test_explicit_exclusion_warns_with_share_and_is_exact_for_the_rest(mode: str) -> None:
    torch.manual_seed(0)
    net, (x, y) = Tempered().double(), _data()
    net.temperature.requires_grad_(False)  # the reference: the other parameters only

    def example(i: int) -> Tensor:
        return net.loss(x[i : i + 1], y[i : i + 1])

    reference_net = net
    net.temperature.requires_grad_(True)
    with pytest.warns(UserWarning, match=r"temperature; they hold 1\.49%"):
        hooks = attach_norm_hooks(net, mode, exclude=["temperature"])  # type: ignore[arg-type]
    net.loss(x, y).backward()
    norms = hooks.per_sample_norms()
    hooks.detach()
    params = [p for n, p in reference_net.named_parameters() if n != "temperature"]
    expected = torch.stack(
        [sum(g.pow(2).sum() for g in torch.autograd.grad(example(i), params)) for i in range(B)]
    )
    torch.testing.assert_close(norms.double().pow(2), expected, rtol=1e-6, atol=0)


def test_exclude_unsupported_drops_uncovered_parameters_with_one_warning() -> None:
    net, (x, y) = Tempered().double(), _data()
    with attach_norm_hooks(net, exclude_unsupported=True) as hooks:
        net.loss(x, y).backward()
        with pytest.warns(UserWarning, match="temperature"):
            hooks.per_sample_norms()
        hooks.clear()
        net.loss(x, y).backward()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # once only
            hooks.per_sample_norms()


def test_temperature_inside_a_submodule_is_exact() -> None:
    """The fix the message names: the parameter in a small module's forward."""

    class Temperature(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.t = nn.Parameter(torch.tensor(1.5))

        def forward(self, z: Tensor) -> Tensor:
            return z / self.t

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3), Temperature()).double()
    x, y = _data()
    assert_exact(
        net,
        lambda: nn.functional.cross_entropy(net(x), y),
        lambda i: nn.functional.cross_entropy(net(x[i : i + 1]), y[i : i + 1]),
        B,
    )


def test_layer_in_eval_mode_inside_a_training_pass_is_named() -> None:
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
    x, y = _data()
    with attach_norm_hooks(net) as hooks:
        net[0].eval()
        nn.functional.cross_entropy(net(x), y).backward()
        with pytest.raises(NormHooksError, match=r"'0 \(eval mode\)'"):
            hooks.per_sample_norms()


def test_compiled_submodules_are_refused_at_attach() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    wrapped = nn.Sequential(torch.compile(net[0]), net[1])
    with pytest.raises(NormHooksError, match=r"'0' \(torch.compile wrapper\).*compile afterwards"):
        attach_norm_hooks(wrapped)
    net[1].compile()
    with pytest.raises(NormHooksError, match=r"'1' \(Linear.compile\(\)\)"):
        attach_norm_hooks(net)
    assert not net[1]._forward_hooks


@pytest.mark.parametrize(
    "layer",
    [
        nn.BatchNorm1d(4, track_running_stats=False),
        nn.BatchNorm1d(4, affine=False),
        nn.SyncBatchNorm(4),
        nn.BatchNorm2d(4, track_running_stats=False),
    ],
    ids=["no-running-stats", "no-affine", "sync", "2d"],
)
def test_every_batchnorm_variant_is_detected(layer: nn.Module) -> None:
    net = nn.Sequential(nn.Linear(4, 4), layer)
    assert [n for n, _ in find_unsupported_modules(net)] == ["1"]
    assert find_unsupported_modules(nn.Sequential(nn.InstanceNorm1d(4, affine=True))) == []


def test_embedding_scaled_by_frequency_is_refused_at_attach_naming_it() -> None:
    net = nn.Sequential(nn.Embedding(5, 3, scale_grad_by_freq=True), nn.Linear(3, 1))
    with pytest.raises(UnsupportedLayerError, match=r"'0' \(Embedding\).*scale_grad_by_freq"):
        attach_norm_hooks(net)
