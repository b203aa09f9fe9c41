"""Per-sample gradient norms of normalisation layers' affine parameters (issue 7).

For a normalisation layer ``y = \\hat x \\odot w + b`` (``\\hat x`` the normalised input), one
example's gradients are reductions over the positions that share a parameter entry:

.. math::

    \\nabla_w \\ell_i = \\sum_{t} g_{i,t} \\odot \\hat x_{i,t}, \\qquad
    \\nabla_b \\ell_i = \\sum_{t} g_{i,t},

so the per-example gradients are as small as the parameters themselves (``[B, C]``) and cost one
pass over the activations; ``\\hat x`` is recomputed from the captured input without affine
parameters (the statistics of GroupNorm / LayerNorm / InstanceNorm in training are per example,
so the recomputation is exact).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from lightning_unlearn.grad_norms._registry import norm_sampler

__all__ = [
    "group_norm_norm_sample",
    "instance_norm_norm_sample",
    "layer_norm_norm_sample",
    "rms_norm_norm_sample",
]


def _affine_norms(
    weight: Tensor | None, bias: Tensor | None, xhat: Tensor, g: Tensor, dim: int
) -> dict[Tensor, Tensor]:
    """Norms of ``sum_t g * xhat`` and ``sum_t g`` over the position axis ``dim`` (3-d inputs).

    ``xhat`` is a temporary owned by the caller and is overwritten (saves one activation-sized
    allocation per call).
    """
    out: dict[Tensor, Tensor] = {}
    if weight is not None and weight.requires_grad:
        out[weight] = xhat.mul_(g).sum(dim).norm(dim=1)
    if bias is not None and bias.requires_grad:
        out[bias] = g.sum(dim).norm(dim=1)
    return out


def _per_channel_affine_norms(
    layer: nn.GroupNorm | nn.modules.instancenorm._InstanceNorm, xhat: Tensor, g: Tensor
) -> dict[Tensor, Tensor]:
    """Norms of a per-channel affine layer (``[B, C, *]``: GroupNorm, InstanceNorm)."""
    b, c = xhat.shape[0], xhat.shape[1]
    return _affine_norms(
        layer.weight, layer.bias, xhat.reshape(b, c, -1), g.reshape(b, c, -1), dim=2
    )


@norm_sampler(nn.GroupNorm)
def group_norm_norm_sample(
    layer: nn.Module, activations: list[Tensor], backprops: Tensor
) -> dict[Tensor, Tensor]:
    """Per-sample gradient norms of ``nn.GroupNorm``'s weight and bias (Opacus norm-sampler API).

    Args:
        layer: an affine ``nn.GroupNorm``.
        activations: ``[input]`` (``[B, C, *]``) captured by Opacus' forward hook.
        backprops: gradient w.r.t. the output, same shape, already scaled per example.

    Returns:
        ``{param: norms[B]}`` for each parameter that requires grad.

    Example:
        >>> import torch
        >>> gn = torch.nn.GroupNorm(2, 4)
        >>> x, g = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
        >>> n = group_norm_norm_sample(gn, [x], g)[gn.bias]
        >>> bool(torch.allclose(n, g.sum(2).norm(dim=1)))
        True
    """
    assert isinstance(layer, nn.GroupNorm)
    x = activations[0].to(backprops.dtype)
    xhat = F.group_norm(x, layer.num_groups, eps=layer.eps)
    return _per_channel_affine_norms(layer, xhat, backprops)


@norm_sampler(nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
def instance_norm_norm_sample(
    layer: nn.Module, activations: list[Tensor], backprops: Tensor
) -> dict[Tensor, Tensor]:
    """Per-sample gradient norms of an affine ``nn.InstanceNorm{1,2,3}d`` (Opacus norm-sampler API).

    In training mode instance norm always normalises with the example's own statistics, so
    ``\\hat x`` is recomputed from the input alone.

    Args:
        layer: ``nn.InstanceNorm1d``, ``nn.InstanceNorm2d`` or ``nn.InstanceNorm3d`` with
            ``affine=True``.
        activations: ``[input]`` (``[B, C, *]``).
        backprops: gradient w.r.t. the output.

    Returns:
        ``{param: norms[B]}`` for each parameter that requires grad.
    """
    assert isinstance(layer, (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d))
    x = activations[0].to(backprops.dtype)
    return _per_channel_affine_norms(layer, F.instance_norm(x, eps=layer.eps), backprops)


@norm_sampler(nn.LayerNorm)
def layer_norm_norm_sample(
    layer: nn.Module, activations: list[Tensor], backprops: Tensor
) -> dict[Tensor, Tensor]:
    """Per-sample gradient norms of ``nn.LayerNorm``'s weight and bias (Opacus norm-sampler API).

    Args:
        layer: ``nn.LayerNorm`` with ``elementwise_affine=True`` (``bias=False`` allowed).
        activations: ``[input]`` (``[B, *, *normalized_shape]``).
        backprops: gradient w.r.t. the output.

    Returns:
        ``{param: norms[B]}`` for each parameter that requires grad.
    """
    assert isinstance(layer, nn.LayerNorm)
    g = backprops
    x = activations[0].to(g.dtype)
    shape = tuple(layer.normalized_shape)
    xhat = F.layer_norm(x, shape, eps=layer.eps)
    p = math.prod(shape)
    b = x.shape[0]
    return _affine_norms(
        layer.weight, layer.bias, xhat.reshape(b, -1, p), g.reshape(b, -1, p), dim=1
    )


@norm_sampler(nn.RMSNorm)
def rms_norm_norm_sample(
    layer: nn.Module, activations: list[Tensor], backprops: Tensor
) -> dict[Tensor, Tensor]:
    """Per-sample gradient norms of ``nn.RMSNorm``'s weight (Opacus norm-sampler API).

    Args:
        layer: ``nn.RMSNorm`` with ``elementwise_affine=True``.
        activations: ``[input]`` (``[B, *, *normalized_shape]``).
        backprops: gradient w.r.t. the output.

    Returns:
        ``{weight: norms[B]}`` if the weight requires grad, else ``{}``.
    """
    assert isinstance(layer, nn.RMSNorm)
    g = backprops
    x = activations[0].to(g.dtype)
    shape = tuple(layer.normalized_shape)
    xhat = F.rms_norm(x, shape, eps=layer.eps)
    p = math.prod(shape)
    b = x.shape[0]
    return _affine_norms(layer.weight, None, xhat.reshape(b, -1, p), g.reshape(b, -1, p), dim=1)
