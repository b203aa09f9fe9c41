"""attach_norm_hooks: per-sample norms against a loop of batch-size-1 backward passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_unlearn.errors import NormHooksError, UnsupportedLayerError
from lightning_unlearn.grad_norms import attach_norm_hooks, find_unsupported_modules
from tests.grad_norms._models import (
    MODEL_NAMES,
    build_net,
    digits_inputs,
    loop_sq_norms,
    summation_tolerance,
)

MODES = ("fused", "ghost", "hooks", "functorch")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_norms_match_batch_size_one_loop(name: str, mode: str) -> None:
    net = build_net(name)
    x, y = digits_inputs(name, 12)
    reference = loop_sq_norms(net, x, y)
    grad_tolerance = summation_tolerance(net, x, y)
    keys = list(net.state_dict())
    net.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    plain_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()

    hooks = attach_norm_hooks(net, mode)
    nn.functional.cross_entropy(net(x), y).backward()
    norms = hooks.per_sample_norms()
    hooks.clear()
    assert norms.shape == (12,)
    assert norms.dtype == torch.float32
    torch.testing.assert_close(norms.double().pow(2), reference, rtol=1e-5, atol=0)
    # p.grad is the ordinary batch gradient up to the order of summation (the fused engine sums
    # per-example gradients); the module is neither wrapped nor renamed.
    for p, g, tol in zip(net.parameters(), plain_grads, grad_tolerance, strict=True):
        excess = (p.grad.double() - g.double()).abs() - tol
        assert excess.max() <= 0, f"p.grad off by more than the summation bound: {excess.max()}"
    assert list(net.state_dict()) == keys
    hooks.detach()
    assert not hooks.attached
    for p in net.parameters():
        assert not any(a in vars(p) for a in ("grad_sample", "_norm_sample", "_forward_counter"))
    assert "autograd_grad_sample_hooks" not in vars(net)


@pytest.mark.parametrize("mode", MODES)
def test_sum_reduction_and_short_batch(mode: str) -> None:
    net = build_net("mlp")
    x, y = digits_inputs("mlp", 5)
    reference = loop_sq_norms(net, x, y)
    with attach_norm_hooks(net, mode, loss_reduction="sum") as hooks:
        nn.functional.cross_entropy(net(x), y, reduction="sum").backward()
        torch.testing.assert_close(
            hooks.per_sample_norms().double().pow(2), reference, rtol=1e-5, atol=0
        )
        hooks.clear()
        # A smaller batch next: the norms follow the batch actually seen.
        nn.functional.cross_entropy(net(x[:3]), y[:3], reduction="sum").backward()
        torch.testing.assert_close(
            hooks.per_sample_norms().double().pow(2), reference[:3], rtol=1e-5, atol=0
        )
    assert not hooks.attached


def test_mean_hooks_on_sum_loss_are_batch_size_times_too_large() -> None:
    """The loss reduction must match: documents why the argument exists."""
    net = build_net("mlp")
    x, y = digits_inputs("mlp", 4)
    reference = loop_sq_norms(net, x, y).sqrt()
    with attach_norm_hooks(net, "hooks", loss_reduction="mean") as hooks:
        nn.functional.cross_entropy(net(x), y, reduction="sum").backward()
        torch.testing.assert_close(
            hooks.per_sample_norms().double(), 4 * reference, rtol=1e-5, atol=0
        )


def test_attaching_twice_raises_and_detach_allows_again() -> None:
    net = build_net("mlp")
    hooks = attach_norm_hooks(net)
    with pytest.raises(NormHooksError, match="already has them attached"):
        attach_norm_hooks(net)
    with pytest.raises(NormHooksError, match="submodule '0'"):
        attach_norm_hooks(nn.Sequential(net))
    hooks.detach()
    hooks.detach()  # idempotent
    with pytest.raises(NormHooksError, match="detach"):
        hooks.per_sample_norms()
    attach_norm_hooks(net).detach()


def test_reading_before_backward_raises() -> None:
    with (
        attach_norm_hooks(build_net("mlp")) as hooks,
        pytest.raises(NormHooksError, match="backward"),
    ):
        hooks.per_sample_norms()


def test_batchnorm_is_rejected_with_fix_and_can_be_excluded() -> None:
    net = build_net("batchnorm")
    assert [n for n, _ in find_unsupported_modules(net)] == ["1"]
    with pytest.raises(
        UnsupportedLayerError, match=r"GroupNorm.*ModuleValidator\.fix.*exclude_unsupported"
    ):
        attach_norm_hooks(net)
    assert "autograd_grad_sample_hooks" not in vars(net)

    x, y = digits_inputs("mlp", 6)
    with attach_norm_hooks(net, "hooks", exclude_unsupported=True) as hooks:
        assert hooks.excluded_parameter_names == ["1.weight", "1.bias"]
        assert all(p.requires_grad for p in net.parameters())  # only left out of the norm
        nn.functional.cross_entropy(net(x), y).backward()
        samples = {n: p.grad_sample for n, p in net.named_parameters() if hasattr(p, "grad_sample")}
        norms = hooks.per_sample_norms()
    assert sorted(samples) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    # Per-sample gradients of the included parameters average to the batch gradient (mean loss),
    # and the norm is taken over the included parameters only.
    params = dict(net.named_parameters())
    for n, gs in samples.items():
        torch.testing.assert_close(gs.mean(0), params[n].grad, rtol=1e-5, atol=1e-6)
    expected = sum(gs.reshape(6, -1).pow(2).sum(1) for gs in samples.values())
    torch.testing.assert_close(norms, expected.sqrt())
    with pytest.warns(UserWarning, match="Excluding"):
        attach_norm_hooks(net, strict=False).detach()


def test_invalid_arguments() -> None:
    net = build_net("mlp")
    with pytest.raises(ValueError, match="`mode`"):
        attach_norm_hooks(net, "ew")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`loss_reduction`"):
        attach_norm_hooks(net, loss_reduction="none")  # type: ignore[arg-type]


def test_unused_parameters_contribute_zero_and_no_stale_norms() -> None:
    """A layer skipped in a step must not reuse the norms of the previous step."""

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 2)
            self.b = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor, use_b: bool) -> torch.Tensor:
            return self.a(x) + (self.b(x) if use_b else 0)

    net = Branchy()
    x = torch.randn(4, 3)
    with attach_norm_hooks(net, "ghost", loss_reduction="sum") as hooks:
        net(x, True).sum().backward()
        both = hooks.per_sample_norms()
        hooks.clear()
        net(x, False).sum().backward()
        only_a = hooks.per_sample_norms()
        hooks.clear()
    expected_a = (x.pow(2).sum(1) * 2 + 2).sqrt()  # weight rows each get x, bias gets 1
    torch.testing.assert_close(only_a, expected_a)
    torch.testing.assert_close(both, (2 * expected_a.pow(2)).sqrt())


def test_tied_weights_need_hooks_mode() -> None:
    """A layer applied twice: "hooks" sums its two contributions per example; ghost refuses."""

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(torch.tanh(self.lin(x))).sum(1)

    torch.manual_seed(0)
    net, x = Tied(), torch.randn(5, 4)
    reference = []
    for i in range(5):
        grads = torch.autograd.grad(net(x[i : i + 1]).sum(), list(net.parameters()))
        reference.append(sum(g.pow(2).sum() for g in grads))
    with attach_norm_hooks(net, "hooks", loss_reduction="sum") as hooks:
        net(x).sum().backward()
        torch.testing.assert_close(hooks.per_sample_norms().pow(2), torch.stack(reference))
    with (
        attach_norm_hooks(net, "ghost") as hooks,
        pytest.raises(UnsupportedLayerError, match=r"'lin' \(Linear\) ran again.*mode='fused'"),
    ):
        net(x)


@pytest.mark.parametrize("mode", ["ghost", "hooks", "functorch"])
def test_attention_and_rnn_are_refused_in_opacus_modes_with_a_fix(mode: str) -> None:
    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.rnn = nn.LSTM(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(self.attn(x, x, x)[0])[0]

    net = Attn()
    with pytest.raises(
        UnsupportedLayerError, match=r"'attn' \(MultiheadAttention\), 'rnn' \(LSTM\).*'fused'"
    ):
        attach_norm_hooks(net, mode)
    # nothing was attached: a later attach is unaffected
    assert not any(k.startswith("_lightning_unlearn") for k in vars(net))
    assert all(not m._forward_hooks for m in net.modules())
    attach_norm_hooks(net, "fused").detach()
