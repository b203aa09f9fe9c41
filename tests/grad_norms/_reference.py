"""A float64 batch-of-one reference for any model and loss, and the checks every engine test
makes against it: norms, ``p.grad`` and the module left unchanged after ``detach``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_unlearn.grad_norms import attach_norm_hooks

# float64 recursive summation of n addends: gamma_n = n u / (1 - n u), u = 2**-53 (Higham eq.
# 4.4); n is bounded generously by 1e6 addends per gradient entry (batch x positions x heads).
_GAMMA64 = 1e6 * 2.0**-53 / (1 - 1e6 * 2.0**-53)


def per_example_reference(
    params: Sequence[Tensor], example_loss: Callable[[int], Tensor], n: int
) -> tuple[Tensor, list[Tensor]]:
    """Squared gradient norm of each example's own loss (one backward each), and per parameter
    the sum over examples of the absolute per-example gradients (for the summation bound)."""
    sq = []
    abs_sum = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for i in range(n):
        grads = torch.autograd.grad(example_loss(i), list(params), allow_unused=True)
        total = torch.zeros((), dtype=torch.float64)
        for acc, g in zip(abs_sum, grads, strict=True):
            if g is not None:
                total = total + g.double().pow(2).sum()
                acc += g.double().abs()
        sq.append(total)
    return torch.stack(sq), abs_sum


def assert_exact(
    net: nn.Module,
    batch_loss: Callable[[], Tensor],
    example_loss: Callable[[int], Tensor],
    n: int,
    mode: str = "fused",
    *,
    loss_reduction: str = "mean",
    rtol: float = 1e-9,
    grad_slack: float = 0.0,
    **attach: Any,
) -> Tensor:
    """Attach ``mode`` hooks to ``net`` (float64), run ``batch_loss().backward()`` and check:
    the norms against :func:`per_example_reference`, ``p.grad`` against a plain backward within
    twice the float64 summation bound (plus ``grad_slack`` times the gradient's largest entry,
    for layers the engine recomputes with another, equal formula, such as attention: their
    inputs to the sums round differently), and ``net`` unchanged after ``detach``. Returns the
    squared norms."""
    params = [p for p in net.parameters() if p.requires_grad]
    reference, abs_sum = per_example_reference(params, example_loss, n)
    net.zero_grad(set_to_none=True)
    batch_loss().backward()
    plain = [None if p.grad is None else p.grad.clone() for p in params]
    net.zero_grad(set_to_none=True)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    hook_counts = [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m.__dict__)) for m in net.modules()
    ]
    hooks = attach_norm_hooks(net, mode, loss_reduction=loss_reduction, **attach)  # type: ignore[arg-type]
    try:
        batch_loss().backward()
        norms = hooks.per_sample_norms()
        hooks.clear()
    finally:
        hooks.detach()
    assert norms.shape == (n,)
    torch.testing.assert_close(norms.double().pow(2), reference, rtol=rtol, atol=0)
    scale = 1.0 / n if loss_reduction == "mean" else 1.0
    for p, g, a in zip(params, plain, abs_sum, strict=True):
        if g is None:
            assert p.grad is None or not p.grad.any()
            continue
        bound = 2 * _GAMMA64 * a * scale + grad_slack * g.abs().max()
        excess = (p.grad.double() - g.double()).abs() - bound
        assert excess.max() <= 0, f"p.grad off by more than the summation bound: {excess.max()}"
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    after = [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m.__dict__)) for m in net.modules()
    ]
    assert after == hook_counts, "the module was left changed after detach"
    for p in net.parameters():
        assert not p._backward_hooks, "a tensor hook was left on a parameter"
    return norms
