"""Each norm sampler against a loop of batch-size-1 backward passes (independent reference)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_unlearn.errors import UnsupportedLayerError
from lightning_unlearn.grad_norms import samplers_conv
from lightning_unlearn.grad_norms.samplers import (
    NORM_SAMPLERS,
    conv_norm_sample,
    embedding_norm_sample,
    linear_norm_sample,
    register_norm_samplers,
)

RTOL = 1e-5
B = 5


def loop_reference(layer: nn.Module, x: Tensor, g: Tensor) -> dict[str, Tensor]:
    """Per-example, per-parameter gradient norms from B separate backward passes."""
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    params = [p for p in layer.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        out = layer(x[i : i + 1])
        grads = torch.autograd.grad((out * g[i : i + 1]).sum(), params)
        rows.append(torch.stack([gr.norm() for gr in grads]))
    table = torch.stack(rows)  # [B, P]
    return {n: table[:, j] for j, n in enumerate(names)}


def check(layer: nn.Module, x: Tensor, sampler: Callable[..., dict[Tensor, Tensor]]) -> None:
    layer = layer.double()
    layer.train()
    x = x.double() if x.is_floating_point() else x
    with torch.no_grad():
        out_shape = layer(x).shape
    g = torch.randn(out_shape, dtype=torch.float64)
    ref = loop_reference(layer, x, g)
    got = sampler(layer, [x], g)
    by_name = {n: got[p] for n, p in layer.named_parameters() if p.requires_grad}
    assert set(by_name) == set(ref)
    for name, value in by_name.items():
        assert value.shape == (x.shape[0],)
        torch.testing.assert_close(value, ref[name], rtol=RTOL, atol=1e-10, msg=name)


CONV2D = [
    dict(in_channels=3, out_channels=4, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, bias=False),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), dilation=2, padding=(2, 1), groups=2),
    dict(in_channels=2, out_channels=4, kernel_size=3, padding="same", padding_mode="reflect"),
    dict(in_channels=2, out_channels=3, kernel_size=4, padding="same"),  # asymmetric padding
    dict(
        in_channels=3, out_channels=3, kernel_size=3, padding=1, padding_mode="circular", groups=3
    ),
]
CONV1D = [
    dict(in_channels=3, out_channels=5, kernel_size=3),
    dict(in_channels=4, out_channels=4, kernel_size=5, stride=2, padding=2, dilation=2, groups=2),
    dict(in_channels=2, out_channels=3, kernel_size=2, padding="same", padding_mode="replicate"),
]


@pytest.mark.parametrize("path", ["dispatch", "ghost", "instantiate"])
@pytest.mark.parametrize("kwargs", CONV2D)
def test_conv2d_matches_loop(kwargs: dict, path: str) -> None:
    torch.manual_seed(0)
    layer = nn.Conv2d(**kwargs)
    check(layer, torch.randn(B, kwargs["in_channels"], 9, 8), _conv_path(path))


@pytest.mark.parametrize("path", ["dispatch", "ghost", "instantiate"])
@pytest.mark.parametrize("kwargs", CONV1D)
def test_conv1d_matches_loop(kwargs: dict, path: str) -> None:
    torch.manual_seed(1)
    layer = nn.Conv1d(**kwargs)
    check(layer, torch.randn(B, kwargs["in_channels"], 17), _conv_path(path))


def test_conv3d_matches_loop() -> None:
    torch.manual_seed(2)
    layer = nn.Conv3d(2, 4, 3, stride=(1, 2, 1), padding=1, groups=2)
    check(layer, torch.randn(B, 2, 5, 6, 4), conv_norm_sample)


def _conv_path(path: str) -> Callable[..., dict[Tensor, Tensor]]:
    """The dispatcher, or one weight path forced (bias always via the dispatcher's reduction)."""
    if path == "dispatch":
        return conv_norm_sample

    def forced(layer: nn.Module, acts: list[Tensor], g: Tensor) -> dict[Tensor, Tensor]:
        out = conv_norm_sample(layer, acts, g)
        fn = getattr(samplers_conv, f"_weight_sq_{path}")
        out[layer.weight] = fn(layer, acts[0], g).sqrt()
        return out

    return forced


def test_conv_dispatch_picks_fewer_flops() -> None:
    early = samplers_conv.conv_flops(nn.Conv2d(16, 32, 3), batch_size=128, num_positions=784)
    late = samplers_conv.conv_flops(nn.Conv2d(512, 512, 3), batch_size=128, num_positions=16)
    assert early["instantiate"] < early["ghost"]
    assert late["ghost"] < late["instantiate"]
    assert samplers_conv.conv_flops(nn.Conv3d(2, 2, 3), 1, 1)["ghost"] > 2**60


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (nn.GroupNorm(2, 6), (B, 6, 4, 3)),
        (nn.GroupNorm(3, 6), (B, 6, 7)),
        (nn.LayerNorm(8), (B, 5, 8)),
        (nn.LayerNorm((3, 4), bias=False), (B, 2, 3, 4)),
        (nn.LayerNorm(6), (B, 6)),
        (nn.InstanceNorm1d(4, affine=True), (B, 4, 9)),
        (nn.InstanceNorm2d(3, affine=True), (B, 3, 5, 4)),
        (nn.InstanceNorm3d(2, affine=True), (B, 2, 3, 3, 3)),
        (nn.RMSNorm(6), (B, 4, 6)),
    ],
)
def test_norm_layers_match_loop(layer: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(3)
    with torch.no_grad():  # non-trivial affine parameters
        for p in layer.parameters():
            p.normal_()
    check(layer, torch.randn(shape) * 2 + 0.5, NORM_SAMPLERS[type(layer)])


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (nn.Linear(7, 3), (B, 7)),
        (nn.Linear(7, 3, bias=False), (B, 4, 7)),  # Gram: T (d_in + d_out) < d_in d_out
        (nn.Linear(4, 3), (B, 9, 4)),  # instantiate
        (nn.Linear(4, 6), (B, 2, 3, 4)),  # rank-4 input
    ],
)
def test_linear_matches_loop(layer: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(4)
    check(layer, torch.randn(shape), linear_norm_sample)


@pytest.mark.parametrize("padding_idx", [None, 0])
def test_embedding_matches_loop(padding_idx: int | None) -> None:
    torch.manual_seed(5)
    layer = nn.Embedding(6, 4, padding_idx=padding_idx)
    ids = torch.randint(0, 6, (B, 7))
    ids[0] = 2  # one token repeated: its row sums 7 gradients
    ids[1, :3] = 0
    check(layer, ids, embedding_norm_sample)


def test_embedding_rejects_scale_grad_by_freq() -> None:
    layer = nn.Embedding(4, 2, scale_grad_by_freq=True)
    with pytest.raises(UnsupportedLayerError, match="scale_grad_by_freq=False"):
        embedding_norm_sample(layer, [torch.zeros(2, 3, dtype=torch.long)], torch.ones(2, 3, 2))


def test_frozen_parameters_are_skipped() -> None:
    layer = nn.Conv2d(2, 3, 3)
    layer.weight.requires_grad_(False)
    got = conv_norm_sample(layer, [torch.randn(2, 2, 5, 5)], torch.randn(2, 3, 3, 3))
    assert list(got) == [layer.bias]


def test_register_is_idempotent_and_complete() -> None:
    from opacus.grad_sample import GradSampleHooksFastGradientClipping as Hooks

    register_norm_samplers()
    register_norm_samplers()
    for layer_type, sampler in NORM_SAMPLERS.items():
        assert Hooks.NORM_SAMPLERS[layer_type] is sampler
    expected = {nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm}
    expected |= {nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.Linear, nn.Embedding}
    assert set(NORM_SAMPLERS) == expected
    assert NORM_SAMPLERS[nn.Conv2d].__wrapped__ is conv_norm_sample  # type: ignore[attr-defined]


def test_samplers_are_registered_once_where_defined(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing the package registered every sampler; registering again does not happen
    (nothing is missing from Opacus' registry) and a second sampler for a type raises."""
    from lightning_unlearn.errors import SamplerRegistrationError
    from lightning_unlearn.grad_norms import _registry

    calls: list[type] = []
    real = _registry.register_norm_sampler

    def counting(layer_type: type) -> Any:
        calls.append(layer_type)
        return real(layer_type)

    monkeypatch.setattr(_registry, "register_norm_sampler", counting)
    register_norm_samplers()
    assert calls == []  # already registered at import: not registered twice
    with pytest.raises(SamplerRegistrationError, match=r"Conv2d already has.*conv_norm_sample"):
        _registry.norm_sampler(nn.Conv2d)(linear_norm_sample)
    assert calls == []
    assert NORM_SAMPLERS[nn.Conv2d].__wrapped__ is conv_norm_sample  # type: ignore[attr-defined]
    # A process that reset Opacus' registry (a benchmark timing Opacus' own samplers) gets
    # exactly the missing ones back.
    from opacus.grad_sample import GradSampleHooksFastGradientClipping as Hooks

    monkeypatch.setitem(Hooks.NORM_SAMPLERS, nn.GroupNorm, linear_norm_sample)
    register_norm_samplers()
    assert calls == [nn.GroupNorm]
    assert Hooks.NORM_SAMPLERS[nn.GroupNorm] is NORM_SAMPLERS[nn.GroupNorm]
