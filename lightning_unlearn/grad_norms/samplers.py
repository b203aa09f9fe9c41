"""Ghost-norm samplers for the layers of MLPs, CNNs and small text models (issue 7).

Opacus' "ghost" mode computes each example's gradient norm layer by layer inside the ordinary
backward pass, from the layer input ``a`` and the output gradient ``g`` it already holds, and
combines the layers as

.. math::

    \\lVert \\nabla_\\theta \\ell_i \\rVert
    = \\Big(\\sum_{p} \\lVert \\nabla_p \\ell_i \\rVert^2\\Big)^{1/2}

(the per-example gradient of THEORY §1, before clipping). Opacus 1.6 ships such *norm samplers*
only for ``nn.Linear`` and ``nn.Embedding``; every other layer falls back to materialising its
per-example gradients. This package registers exact samplers, each where it is defined with the
:func:`~lightning_unlearn.grad_norms._registry.norm_sampler` decorator (Opacus'
``@register_norm_sampler`` pattern, once per layer type), for:

* ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d`` (:mod:`.samplers_conv`: per layer, the cheaper of
  the ghost Gram form and a grouped-convolution instantiation, by multiply-add count),
* ``nn.GroupNorm``, ``nn.LayerNorm``, ``nn.InstanceNorm{1,2,3}d``, ``nn.RMSNorm``
  (:mod:`.samplers_norm`: affine parameters, per-example gradients are reductions),
* ``nn.Linear`` (replacing Opacus' sampler: the Gram form or instantiation, whichever is cheaper,
  for sequence inputs of any rank; Opacus' own handles only 2-d and 3-d inputs),
* ``nn.Embedding`` (replacing Opacus' sampler: honours ``padding_idx``, whose row never receives
  gradient; rejects ``scale_grad_by_freq``, which has no per-example gradient).

A text model built from these layers (token ``nn.Embedding``, self-attention whose projections
are ``nn.Linear``, ``nn.LayerNorm``) is therefore covered end to end. Plain
``nn.MultiheadAttention`` has no norm sampler (Opacus hands a sampler only the positional forward
inputs, so masks passed as keyword arguments would be lost): the ``"fused"`` engine treats it as
one unit with its ``out_proj`` (:mod:`lightning_unlearn.grad_norms.fused_attention`), and
Opacus' modes refuse it at attach.

Every sampler here has the signature Opacus expects,
``sampler(layer, activations: list[Tensor], backprops: Tensor) -> dict[Parameter, Tensor[B]]``,
returns per-parameter norms (not squares), and is checked against a loop of batch-size-1
backward passes in ``tests/grad_norms/test_samplers*.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lightning_unlearn.errors import UnsupportedLayerError
from lightning_unlearn.grad_norms._registry import NORM_SAMPLERS, ensure_registered, norm_sampler
from lightning_unlearn.grad_norms.samplers_conv import conv_flops, conv_norm_sample
from lightning_unlearn.grad_norms.samplers_norm import (
    group_norm_norm_sample,
    instance_norm_norm_sample,
    layer_norm_norm_sample,
    rms_norm_norm_sample,
)

__all__ = [
    "NORM_SAMPLERS",
    "conv_flops",
    "conv_norm_sample",
    "embedding_norm_sample",
    "group_norm_norm_sample",
    "instance_norm_norm_sample",
    "layer_norm_norm_sample",
    "linear_norm_sample",
    "register_norm_samplers",
    "rms_norm_norm_sample",
]


@norm_sampler(nn.Linear)
def linear_norm_sample(
    layer: nn.Module, activations: list[Tensor], backprops: Tensor
) -> dict[Tensor, Tensor]:
    """Per-sample gradient norms of ``nn.Linear`` (Opacus norm-sampler API).

    For inputs ``[B, d_in]`` the weight gradient is the outer product ``g a^T`` and its norm is
    ``||g|| ||a||``. For inputs ``[B, *, d_in]`` (``T`` positions after flattening) it is
    ``sum_t g_t a_t^T``, whose squared norm is computed either from the ``T x T`` Gram matrices
    (``B T^2 (d_in + d_out)`` multiply-adds) or by instantiating ``[B, d_out, d_in]``
    (``B T d_in d_out``), whichever is fewer.

    Args:
        layer: ``nn.Linear``.
        activations: ``[input]`` captured by Opacus' forward hook.
        backprops: gradient w.r.t. the output.

    Returns:
        ``{param: norms[B]}`` for each parameter that requires grad.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(3, 2)
        >>> a, g = torch.randn(4, 3), torch.randn(4, 2)
        >>> n = linear_norm_sample(lin, [a], g)[lin.weight]
        >>> bool(torch.allclose(n, torch.einsum("bo,bi->boi", g, a).flatten(1).norm(dim=1)))
        True
    """
    assert isinstance(layer, nn.Linear)
    g = backprops
    a = activations[0].to(g.dtype)
    b = g.shape[0]
    out: dict[Tensor, Tensor] = {}
    if g.dim() == 2:
        if layer.weight.requires_grad:
            out[layer.weight] = g.norm(dim=1) * a.norm(dim=1)
        if layer.bias is not None and layer.bias.requires_grad:
            out[layer.bias] = g.norm(dim=1)
        return out
    a3 = a.reshape(b, -1, a.shape[-1])
    g3 = g.reshape(b, -1, g.shape[-1])
    t, d_in, d_out = a3.shape[1], a3.shape[2], g3.shape[2]
    if layer.weight.requires_grad:
        if t * (d_in + d_out) < d_in * d_out:
            sq = ((a3 @ a3.transpose(1, 2)) * (g3 @ g3.transpose(1, 2))).sum(dim=(1, 2))
        else:
            sq = torch.linalg.vector_norm(g3.transpose(1, 2) @ a3, dim=(1, 2)).square()
        out[layer.weight] = sq.clamp_min(0).sqrt()
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = g3.sum(1).norm(dim=1)
    return out


@norm_sampler(nn.Embedding)
def embedding_norm_sample(
    layer: nn.Module, activations: list[Tensor], backprops: Tensor
) -> dict[Tensor, Tensor]:
    """Per-sample gradient norms of ``nn.Embedding`` (Opacus norm-sampler API).

    One example's gradient has one row per distinct token it contains, the sum of the output
    gradients at that token's positions (positions holding ``padding_idx`` contribute nothing,
    as in the ordinary backward). Rows are summed by sorting (example, token) keys, so the cost
    is ``O(B T D)`` whatever the vocabulary size.

    Args:
        layer: ``nn.Embedding`` without ``scale_grad_by_freq``.
        activations: ``[token_ids]`` (``[B, *]``, integer).
        backprops: gradient w.r.t. the output (``[B, *, D]``).

    Returns:
        ``{weight: norms[B]}`` if the weight requires grad, else ``{}``.

    Raises:
        UnsupportedLayerError: if the layer scales gradients by in-batch token frequency, which
            couples examples so that no per-example gradient exists.

    Example:
        >>> import torch
        >>> emb = torch.nn.Embedding(5, 2, padding_idx=0)
        >>> ids, g = torch.tensor([[1, 1, 0]]), torch.ones(1, 3, 2)
        >>> embedding_norm_sample(emb, [ids], g)[emb.weight]  # row 1 gets [2, 2]
        tensor([2.8284])
    """
    assert isinstance(layer, nn.Embedding)
    if layer.scale_grad_by_freq:
        raise UnsupportedLayerError(
            "Expected `nn.Embedding(scale_grad_by_freq=False)`, but got scale_grad_by_freq=True: "
            "scaling by in-batch token counts couples examples, so per-example gradients are "
            "undefined. Construct the embedding with scale_grad_by_freq=False."
        )
    out: dict[Tensor, Tensor] = {}
    if not layer.weight.requires_grad:
        return out
    ids = activations[0]
    g = backprops
    b = ids.shape[0]
    ids = ids.reshape(b, -1)
    g2 = g.reshape(-1, g.shape[-1])
    if layer.padding_idx is not None:
        g2 = g2 * (ids.reshape(-1) != layer.padding_idx).unsqueeze(1).to(g2.dtype)
    owner = torch.arange(b, device=ids.device).unsqueeze(1).expand_as(ids).reshape(-1)
    keys = owner * layer.num_embeddings + ids.reshape(-1)
    uniq, inverse = keys.unique(return_inverse=True)
    rows = g2.new_zeros(uniq.shape[0], g2.shape[1]).index_add_(0, inverse, g2)
    row_sq = torch.linalg.vector_norm(rows, dim=1).square()
    sq = g2.new_zeros(b).index_add_(0, uniq // layer.num_embeddings, row_sq)
    out[layer.weight] = sq.sqrt()
    return out


def register_norm_samplers() -> None:
    """Make sure this package's norm samplers are in Opacus' ghost-mode registry (idempotent).

    Each sampler registered itself where it is defined (:func:`~lightning_unlearn.grad_norms.
    _registry.norm_sampler`), when this module was imported; this re-registers only what a
    process removed from Opacus' registry since. Afterwards
    ``opacus.grad_sample.prepare_module(model, "ghost", wrap_model=False)`` (and the package's
    ``attach_norm_hooks(model, mode="ghost")``) computes per-example norms of the layers
    in :data:`NORM_SAMPLERS` without materialising per-example gradients. Registration is global
    to the process, like Opacus' own; Linear and Embedding replace Opacus' samplers by exact
    supersets (see the module docstring).

    Example:
        >>> import torch
        >>> from opacus.grad_sample import GradSampleHooksFastGradientClipping as Hooks
        >>> register_norm_samplers()
        >>> Hooks.NORM_SAMPLERS[torch.nn.Conv2d] is NORM_SAMPLERS[torch.nn.Conv2d]
        True
    """
    ensure_registered()
