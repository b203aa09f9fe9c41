"""Whole models in Opacus ghost mode with our samplers vs a loop of batch-size-1 backwards."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from opacus.grad_sample import GradSampleHooksFastGradientClipping, prepare_module
from torch import Tensor, nn

from lightning_unlearn.grad_norms.samplers import NORM_SAMPLERS, register_norm_samplers

B = 6


class LinearSelfAttention(nn.Module):
    """Single-head self-attention whose projections are ``nn.Linear`` (ghost-covered)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.out(F.scaled_dot_product_attention(q, k, v))


class TinyText(nn.Module):
    def __init__(self, vocab: int = 11, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.attn = LinearSelfAttention(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids: Tensor) -> Tensor:
        h = self.emb(ids)
        h = self.norm(h + self.attn(h))
        return self.head(h.mean(1))


def tiny_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, groups=2),
        nn.GroupNorm(3, 6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 3),
    )


def tiny_conv1d() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(2, 4, 3, padding="same", padding_mode="reflect"),
        nn.InstanceNorm1d(4, affine=True),
        nn.Tanh(),
        nn.Conv1d(4, 4, 3, dilation=2),
        nn.Flatten(),
        nn.Linear(4 * 8, 3),
    )


def inputs(name: str) -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    if name == "cnn":
        return tiny_cnn(), torch.randn(B, 1, 9, 9)
    if name == "conv1d":
        return tiny_conv1d(), torch.randn(B, 2, 12)
    ids = torch.randint(0, 11, (B, 5))
    ids[:, -1] = 0  # padding positions
    return TinyText(), ids


def loop_norms(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    norms = []
    for i in range(x.shape[0]):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        norms.append(torch.cat([g.flatten() for g in grads]).norm())
    return torch.stack(norms)


@pytest.mark.parametrize("loss_reduction", ["mean", "sum"])
@pytest.mark.parametrize("name", ["cnn", "conv1d", "text"])
def test_ghost_mode_matches_loop(name: str, loss_reduction: str) -> None:
    register_norm_samplers()
    model, x = inputs(name)
    model = model.double()
    x = x.double() if x.is_floating_point() else x
    y = torch.arange(B) % 3
    ref = loop_norms(model, x, y)

    loss = F.cross_entropy(model(x), y, reduction=loss_reduction)
    plain = nn.utils.parameters_to_vector(torch.autograd.grad(loss, list(model.parameters())))
    hooks = prepare_module(model, "ghost", wrap_model=False, loss_reduction=loss_reduction)
    assert isinstance(hooks, GradSampleHooksFastGradientClipping)
    try:
        model.zero_grad()
        F.cross_entropy(model(x), y, reduction=loss_reduction).backward()
        got = hooks.get_norm_sample()
        # Every layer went through a registered norm sampler: nothing was materialised.
        for m in model.modules():
            if any(True for _ in m.parameters(recurse=False)):
                assert type(m) in NORM_SAMPLERS
        for p in model.parameters():
            assert getattr(p, "grad_sample", None) is None
        # The ordinary gradient is untouched by the hooks.
        grad = nn.utils.parameters_to_vector([p.grad for p in model.parameters()])
        torch.testing.assert_close(grad, plain, rtol=1e-12, atol=1e-12)
    finally:
        hooks.cleanup()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-10)


def test_ghost_mode_float32_second_step() -> None:
    """float32, two steps in a row (the per-parameter norms are overwritten, not stacked)."""
    register_norm_samplers()
    model, x = inputs("cnn")
    y = torch.arange(B) % 3
    hooks = prepare_module(model, "ghost", wrap_model=False, loss_reduction="mean")
    try:
        for step in range(2):
            xs = x + step
            model.zero_grad()
            F.cross_entropy(model(xs), y).backward()
            got = hooks.get_norm_sample()
            hooks.disable_hooks()
            ref = loop_norms(model, xs, y)
            hooks.enable_hooks()
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)
    finally:
        hooks.cleanup()


def test_empty_batch_gives_empty_norms() -> None:
    """Poisson sampling can draw an empty batch; the hooks must not fail on it."""
    register_norm_samplers()
    model, x = inputs("cnn")
    hooks = prepare_module(model, "ghost", wrap_model=False, loss_reduction="sum")
    try:
        F.cross_entropy(model(x[:0]), torch.zeros(0, dtype=torch.long), reduction="sum").backward()
        assert hooks.get_norm_sample().shape == (0,)
    finally:
        hooks.cleanup()


def test_sum_reduction_times_batch_size_equals_mean_reduction() -> None:
    """The identity behind bench_step's ``ghost-sum`` row: norms are linear in the signal."""
    register_norm_samplers()
    model, x = inputs("text")
    y = torch.arange(B) % 3
    norms = {}
    for reduction in ("mean", "sum"):
        hooks = prepare_module(model, "ghost", wrap_model=False, loss_reduction=reduction)
        try:
            F.cross_entropy(model(x), y).backward()  # a mean loss in both cases
            norms[reduction] = hooks.get_norm_sample()
        finally:
            hooks.cleanup()
    torch.testing.assert_close(norms["sum"] * B, norms["mean"], rtol=1e-5, atol=1e-7)
