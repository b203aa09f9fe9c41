"""``nn.MultiheadAttention`` for the ``"fused"`` engine, as one unit with its ``out_proj``.

``nn.MultiheadAttention`` uses its parameters inside one functional call
(``F.multi_head_attention_forward``) and never calls ``out_proj.forward``, so no per-layer hook
sees its projections. The engine's forward hook therefore recomputes the layer's output with
:func:`mha_forward` below, the same mathematics written out with its four projections as
per-example ``nn.Linear`` computations (``fused_ops._FusedLinear``: every example's weight
gradient is formed in the backward pass, THEORY §1), and returns that output in place of the
original, whose graph is dropped. The per-example gradient of the packed ``in_proj_weight`` is
the concatenation of the query, key and value blocks' (disjoint rows), so
its squared norm is the sum of the blocks'.

Cost: the layer's forward runs twice (the original output is discarded) and, with dropout in
the attention, its random mask is drawn twice (the second draw is the one used: still a dropout
mask of the same law). Attention masks follow ``nn.MultiheadAttention``'s conventions:
``attn_mask`` of shape ``[L, S]`` or ``[B * num_heads, L, S]``, boolean (True: not allowed) or
additive float; ``key_padding_mask`` ``[B, S]`` boolean (True: padding) or float;
``is_causal`` is a hint that ``attn_mask`` is the causal mask, as in torch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_unlearn.errors import UnsupportedLayerError
from lightning_unlearn.grad_norms.fused_ops import FusedEngine, _FusedLinear

__all__ = ["check_attention", "mha_forward"]

_ARG_NAMES = (
    "query",
    "key",
    "value",
    "key_padding_mask",
    "need_weights",
    "attn_mask",
    "average_attn_weights",
    "is_causal",
)
_DEFAULTS: dict[str, Any] = {
    "key_padding_mask": None,
    "need_weights": True,
    "attn_mask": None,
    "average_attn_weights": True,
    "is_causal": False,
}


def check_attention(layer: nn.MultiheadAttention, label: str) -> None:
    """Raise :class:`UnsupportedLayerError` for the options :func:`mha_forward` does not cover."""
    if layer.bias_k is not None or layer.add_zero_attn:
        raise UnsupportedLayerError(
            f"Expected {label!r} (MultiheadAttention) without `add_bias_kv` or `add_zero_attn`, "
            "but got them: their per-example gradients are not implemented. Build the layer "
            "without them, or freeze it."
        )


def _proj(
    engine: FusedEngine,
    layer: nn.Module,
    x: Tensor,
    w: Tensor,
    b: Tensor | None,
    targets: tuple[Any, ...],
) -> Tensor:
    """``x @ w.T + b`` whose backward forms every example's weight gradient (batch-first ``x``);
    ``targets`` = (weight parameter, first row, bias parameter, first entry): what ``w`` and
    ``b`` are slices of."""
    out = F.linear(x, w, b)
    if not (w.requires_grad or (b is not None and b.requires_grad)):
        return out
    fused: Tensor = _FusedLinear.apply(x, w, b, [out.detach()], engine, layer, targets)
    return fused


def _float_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(dtype)


def mha_forward(
    engine: FusedEngine,
    layer: nn.MultiheadAttention,
    label: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[Tensor, Tensor | None]:
    """``layer(*args, **kwargs)`` recomputed with per-example projection gradients (see the
    module docstring); same outputs as ``nn.MultiheadAttention.forward`` up to float rounding."""
    call = dict(_DEFAULTS)
    call.update(zip(_ARG_NAMES, args, strict=False))
    call.update(kwargs)
    query, key, value = call["query"], call["key"], call["value"]
    if query.dim() != 3:
        raise UnsupportedLayerError(
            f"Expected batched 3-d inputs to {label!r} (MultiheadAttention), but got a "
            f"{query.dim()}-d query: per-example gradients need a batch dimension."
        )
    if not layer.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    bsz, tgt, e = query.shape
    src = key.shape[1]
    h = layer.num_heads
    hd = e // h
    bias = layer.in_proj_bias
    if layer._qkv_same_embed_dim:
        w = layer.in_proj_weight
        ws = (w[:e], w[e : 2 * e], w[2 * e :])
        targets = [(w, r, bias, r) for r in (0, e, 2 * e)]
    else:
        ws = (layer.q_proj_weight, layer.k_proj_weight, layer.v_proj_weight)
        targets = [(p, 0, bias, r) for p, r in zip(ws, (0, e, 2 * e), strict=True)]
    bs = (None, None, None) if bias is None else (bias[:e], bias[e : 2 * e], bias[2 * e :])
    q, k, v = (
        _proj(engine, layer, t, wi, bi, tg)
        for t, wi, bi, tg in zip((query, key, value), ws, bs, targets, strict=True)
    )
    q = q.view(bsz, tgt, h, hd).transpose(1, 2)
    k = k.view(bsz, src, h, hd).transpose(1, 2)
    v = v.view(bsz, src, h, hd).transpose(1, 2)
    mask = _float_mask(call["attn_mask"], q.dtype)
    if mask is not None and mask.dim() == 3:
        mask = mask.view(bsz, h, tgt, src)
    pad = _float_mask(call["key_padding_mask"], q.dtype)
    if pad is not None:
        pad = pad.view(bsz, 1, 1, src)
        mask = pad if mask is None else mask + pad
    p_drop = layer.dropout if layer.training else 0.0
    weights = None
    if call["need_weights"]:
        scores = (q * (1.0 / math.sqrt(hd))) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores + mask
        attn = torch.softmax(scores, dim=-1)
        weights = attn.mean(dim=1) if call["average_attn_weights"] else attn
        attn = F.dropout(attn, p=p_drop) if p_drop > 0 else attn
        ctx = attn @ v
    else:
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p_drop)
    ctx = ctx.transpose(1, 2).reshape(bsz, tgt, e)
    op = layer.out_proj
    out = _proj(engine, layer, ctx, op.weight, op.bias, (op.weight, 0, op.bias, 0))
    if not layer.batch_first:
        out = out.transpose(0, 1)
    return out, weights
