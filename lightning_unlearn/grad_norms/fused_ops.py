"""The autograd pieces of the ``"fused"`` norm engine (:mod:`lightning_unlearn.grad_norms.fused`).

``autograd.Function``s that stand in for the backward pass of a convolution or of a sequence
``nn.Linear``: they return torch's input gradient, form every example's weight gradient once,
send the per-example squared norms to the engine and return their sum as the weight gradient
(THEORY §1: the per-example gradient of the example's own loss).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

__all__ = ["FusedEngine", "conv_unfold_preferred"]


class FusedEngine(Protocol):
    """What the fused engine's parts (ops, attention, units) use of
    :class:`~lightning_unlearn.grad_norms.fused.FusedNormEngine`.

    A protocol, so that the parts depend on this interface rather than import the engine that
    imports them (no import cycle).
    """

    _replaying: bool  # inside a per-example re-run: hooks stand aside
    _names: dict[int, str]  # id(layer) -> qualified name, for messages

    def materialise(self, layer: nn.Module) -> bool:
        """Whether ``layer``'s per-example gradients are materialised (not fused)."""
        ...

    def _record(self, layer: nn.Module, fired: list[bool], sq: Tensor | None, grads: Any) -> None:
        """Record one call's per-example squared norms (or gradients) of ``layer``."""
        ...


# Per-example weight gradients of a 2-d convolution are formed from an explicit unfolding of the
# input when one input patch has at most this many entries (first layers: few input channels),
# where a strided copy plus one batched matmul beats the example-grouped convolution (measured
# on a CPU: 1.1 ms against 3.2 ms for conv 1->16, 3x3, 28x28, batch 128; 5.6 ms against 3.5 ms
# for conv 16->32, 3x3, 14x14).
_UNFOLD_MAX_PATCH = 32


def conv_unfold_preferred(layer: _ConvNd) -> bool:
    """Whether the fused convolution unfolds the input (small patches) instead of running the
    example-grouped weight-gradient convolution.

    Example:
        >>> conv_unfold_preferred(nn.Conv2d(1, 16, 3)), conv_unfold_preferred(nn.Conv2d(16, 32, 3))
        (True, False)
    """
    patch = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    return isinstance(layer, nn.Conv2d) and layer.groups == 1 and patch <= _UNFOLD_MAX_PATCH


def _conv_padding(layer: _ConvNd) -> list[int] | None:
    """Symmetric zero padding of ``layer`` as a list of ints, or None if the fused path cannot
    express it (another ``padding_mode``, or asymmetric ``"same"`` padding)."""
    if layer.padding_mode != "zeros":
        return None
    d = len(layer.kernel_size)
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return [0] * d
        rp = layer._reversed_padding_repeated_twice  # (left, right) pairs, last dim first
        pairs = [(rp[2 * i], rp[2 * i + 1]) for i in range(d)][::-1]
        if any(lo != hi for lo, hi in pairs):
            return None
        return [lo for lo, _ in pairs]
    return [int(p) for p in layer.padding]


def _sq_norms(per_example: Tensor, dtype: torch.dtype) -> Tensor:
    """Squared norm of each example's slice, accumulated in ``dtype`` without a squared copy
    (one reduction pass: about a third of the time of ``(t * t).sum``)."""
    return torch.linalg.vector_norm(per_example.flatten(1), dim=1, dtype=dtype).square()


class _FusedConv(torch.autograd.Function):
    """Identity on the layer's already computed output; its backward replaces the convolution's:
    input gradient as torch computes it, weight gradient as the sum of per-example gradients
    whose norms go to the engine."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        holder: list[Tensor],
        layer: _ConvNd,
        padding: list[int],
        engine: FusedEngine,
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.layer, ctx.padding, ctx.engine = layer, padding, engine
        ctx.fired = [False]
        ctx.has_bias = bias is not None
        return holder[0]

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        layer: _ConvNd = ctx.layer
        engine: FusedEngine = ctx.engine
        padding: list[int] = ctx.padding
        d = len(layer.kernel_size)
        xc = x if x.dtype == g.dtype else x.to(g.dtype)
        wc = weight if weight.dtype == g.dtype else weight.to(g.dtype)
        stride, dilation = list(layer.stride), list(layer.dilation)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                g,
                xc,
                wc,
                None,
                stride,
                padding,
                dilation,
                False,
                [0] * d,
                layer.groups,
                [True, False, False],
            )[0]
        b = x.shape[0]
        sq = g.new_zeros(b, dtype=torch.float32 if g.dtype != torch.float64 else g.dtype)
        grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            per_example = _conv_per_example_weight_grads(layer, xc, wc, g, padding)  # [B, O, P]
            sq = sq + _sq_norms(per_example, sq.dtype)
            grad_w = per_example.sum(0).reshape(weight.shape).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.reshape(b, g.shape[1], -1).sum(2)
            gbf = gb.to(sq.dtype)
            sq = sq + (gbf * gbf).sum(1)
            grad_b = gb.sum(0).to(weight.dtype)
        if engine.materialise(layer):
            grads: list[tuple[Any, Tensor, int]] = []
            if grad_w is not None:
                grads.append((layer.weight, per_example.reshape(b, *weight.shape), 0))
            if grad_b is not None:
                grads.append((layer.bias, gb, 0))
            engine._record(layer, ctx.fired, None, grads)
        else:
            engine._record(layer, ctx.fired, sq, None)
        return grad_x, grad_w, grad_b, None, None, None, None


class _FusedLinear(torch.autograd.Function):
    """Identity on a sequence ``nn.Linear``'s computed output (inputs ``[B, *, d_in]``); its
    backward forms every example's weight gradient ``[B, d_out, d_in]`` with one batched matmul,
    sends their norms to the engine and returns their sum as the weight gradient."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        holder: list[Tensor],
        engine: FusedEngine,
        layer: nn.Module,
        targets: tuple[Any, ...] | None = None,
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.engine, ctx.layer, ctx.targets = engine, layer, targets
        ctx.fired = [False]
        ctx.has_bias = bias is not None and bias.requires_grad
        return holder[0]

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        xc = x if x.dtype == g.dtype else x.to(g.dtype)
        wc = weight if weight.dtype == g.dtype else weight.to(g.dtype)
        grad_x = g @ wc if ctx.needs_input_grad[0] else None
        b = x.shape[0]
        g3 = g.reshape(b, -1, g.shape[-1])
        per_example = torch.bmm(g3.transpose(1, 2), xc.reshape(b, -1, x.shape[-1]))
        acc = torch.float32 if g.dtype != torch.float64 else g.dtype
        sq = _sq_norms(per_example, acc)
        grad_w = per_example.sum(0).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_b = gb = None
        if ctx.has_bias:
            gb = g3.sum(1)
            gbf = gb.to(acc)
            sq = sq + (gbf * gbf).sum(1)
            grad_b = gb.sum(0).to(weight.dtype)
        engine: FusedEngine = ctx.engine
        if ctx.targets is not None or engine.materialise(ctx.layer):
            wp, w0, bp, b0 = ctx.targets or (ctx.layer.weight, 0, ctx.layer.bias, 0)
            grads = [(wp, per_example, w0)] if grad_w is not None else []
            if gb is not None:
                grads.append((bp, gb, b0))
            engine._record(ctx.layer, ctx.fired, None, grads)
        else:
            engine._record(ctx.layer, ctx.fired, sq, None)
        return grad_x, grad_w, grad_b, None, None, None, None


def _conv_per_example_weight_grads(
    layer: _ConvNd, x: Tensor, weight: Tensor, g: Tensor, padding: list[int]
) -> Tensor:
    """``[B, out_channels, in_channels/groups * prod(kernel)]``: the gradient of each example's
    loss with respect to the weight (the weight's own layout after the first axis)."""
    b, out_c = g.shape[:2]
    k = list(layer.kernel_size)
    d = len(k)
    if conv_unfold_preferred(layer):
        ph, pw = padding
        xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
        (sh, sw), (dh, dw) = layer.stride, layer.dilation
        ho, wo = g.shape[2], g.shape[3]
        s = xp.stride()
        patches = xp.as_strided(
            (b, x.shape[1], k[0], k[1], ho, wo),
            (s[0], s[1], s[2] * dh, s[3] * dw, s[2] * sh, s[3] * sw),
        ).reshape(b, -1, ho * wo)  # [B, C*kh*kw, L]
        return torch.bmm(g.reshape(b, out_c, -1), patches.transpose(1, 2))
    # The examples as groups of one batched convolution: its weight gradient is [B*O, C/G, *k],
    # i.e. every example's own weight gradient, for the multiply-adds of the ordinary one.
    groups = layer.groups
    shape = (b * out_c, x.shape[1] // groups, *k)
    grads = torch.ops.aten.convolution_backward(
        g.reshape(1, b * out_c, *g.shape[2:]),
        x.reshape(1, b * x.shape[1], *x.shape[2:]),
        weight.new_empty(shape),  # only its shape is read
        None,
        list(layer.stride),
        padding,
        list(layer.dilation),
        False,
        [0] * d,
        b * groups,
        [False, True, False],
    )[1]
    return grads.reshape(b, out_c, -1)


class _FusedGroupNorm(torch.autograd.Function):
    """Identity on a GroupNorm's computed output; its backward replaces GroupNorm's with one call
    of torch's own GroupNorm backward on the batch laid out as one example with ``B * C``
    channels in ``B * groups`` groups (the same groups, since GroupNorm normalises within an
    example). That call's "weight" and "bias" gradients are then every example's own, ``[B * C]``,
    and its input gradient is the ordinary one: the per-example gradients cost nothing extra."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        holder: list[Tensor],
        groups: int,
        mean: Tensor,
        rstd: Tensor,
        engine: FusedEngine,
        layer: nn.Module,
    ) -> Tensor:
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.groups, ctx.engine, ctx.has_bias = groups, engine, bias is not None
        ctx.layer = layer
        ctx.fired = [False]
        return holder[0]

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, rstd = ctx.saved_tensors
        b, c = x.shape[:2]
        groups = ctx.groups
        # float32 (float64 for float64 inputs) throughout: under autocast the input, the saved
        # statistics, the weight and the incoming gradient can have different dtypes
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        grad_x, per_w, per_b = torch.ops.aten.native_group_norm_backward(
            g.reshape(1, b * c, -1).to(acc),
            x.reshape(1, b * c, -1).to(acc),
            mean.reshape(1, b * groups).to(acc),
            rstd.reshape(1, b * groups).to(acc),
            weight.to(acc).repeat(b),
            1,
            b * c,
            x[0, 0].numel(),
            b * groups,
            [ctx.needs_input_grad[0], True, True],
        )
        per_w, per_b = per_w.view(b, c), per_b.view(b, c)
        sq = per_w.new_zeros(b, dtype=acc)
        grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            sq = sq + _sq_norms(per_w, acc)
            grad_w = per_w.sum(0).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            sq = sq + _sq_norms(per_b, acc)
            grad_b = per_b.sum(0).to(weight.dtype)
        engine: FusedEngine = ctx.engine
        if engine.materialise(ctx.layer):
            grads = [(ctx.layer.weight, per_w, 0)] if grad_w is not None else []
            if grad_b is not None:
                grads.append((ctx.layer.bias, per_b, 0))
            engine._record(ctx.layer, ctx.fired, None, grads)
        else:
            engine._record(ctx.layer, ctx.fired, sq, None)
        if grad_x is not None:
            grad_x = grad_x.reshape(x.shape).to(x.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None, None, None
