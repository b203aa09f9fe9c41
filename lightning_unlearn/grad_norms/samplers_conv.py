"""Per-sample gradient norms of convolution layers without the unfold blow-up (issue 7).

A convolution's weight gradient for one example is a sum over output positions ``t``:

.. math::

    \\nabla_W \\ell_i = \\sum_t g_{i,t}\\, a_{i,t}^\\top,
    \\qquad
    \\lVert \\nabla_W \\ell_i \\rVert^2
    = \\sum_{t,s} (a_{i,t}^\\top a_{i,s})\\,(g_{i,t}^\\top g_{i,s}),

where ``a_{i,t}`` is the unfolded input patch (``C_in/groups * prod(kernel)`` numbers) seen by
position ``t`` and ``g_{i,t}`` the output gradient there. Two exact ways to get the norm:

* **instantiate**: form the per-example weight gradient and square it. Instead of unfolding the
  input (``B * C_in * prod(kernel) * L`` numbers in memory), the whole batch is treated as one
  grouped convolution with ``B * groups`` groups; the weight gradient of that convolution *is*
  the stack of per-example weight gradients, computed by the backend's own convolution
  weight-gradient kernel. Cost ``B * C_out * D * L`` multiply-adds.
* **ghost (Gram)**: the right-hand form above, two ``L x L`` Gram matrices per example and group.
  Cost ``B * groups * L^2 * (D + C_out/groups)``; cheaper when the layer has many channels and few
  positions (late layers of a deep CNN on small images).

:func:`conv_norm_sample` picks the cheaper by this multiply-add count, layer by layer, call by
call. The bias gradient of one example is ``sum_t g_{i,t}``, a reduction.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_unlearn.grad_norms._registry import norm_sampler

__all__ = ["conv_flops", "conv_norm_sample"]

_ConvNd = nn.Conv1d | nn.Conv2d | nn.Conv3d


def conv_flops(
    layer: nn.Module, batch_size: int, num_positions: int
) -> dict[Literal["instantiate", "ghost"], int]:
    """Multiply-add counts of the two exact ways to get a convolution's per-sample weight norms.

    .. math::

        F_{\\text{inst}} = B\\,C_\\text{out}\\,D\\,L, \\qquad
        F_{\\text{ghost}} = B\\,G\\,L^2\\,(D + C_\\text{out}/G), \\qquad
        D = \\frac{C_\\text{in}}{G}\\prod_j k_j.

    Args:
        layer: a ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d``.
        batch_size: ``B``.
        num_positions: ``L``, the number of output positions per example.

    Returns:
        ``{"instantiate": F_inst, "ghost": F_ghost}``; ghost is only offered (finite) for 1-d
        and 2-d convolutions, otherwise it is reported as a huge number.

    Example:
        >>> from torch import nn
        >>> conv_flops(nn.Conv2d(16, 32, 3), batch_size=2, num_positions=4)
        {'instantiate': 36864, 'ghost': 5632}
    """
    groups = int(layer.groups)  # type: ignore[arg-type]
    d = int(layer.in_channels) // groups * math.prod(layer.kernel_size)  # type: ignore[arg-type]
    c_out = int(layer.out_channels)  # type: ignore[arg-type]
    inst = batch_size * c_out * d * num_positions
    ghost = batch_size * groups * num_positions**2 * (d + c_out // groups)
    if not isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        ghost = 2**62
    return {"instantiate": inst, "ghost": ghost}


def _explicit_padding(layer: _ConvNd, x: Tensor) -> tuple[Tensor, list[int]]:
    """Apply string ("same"), asymmetric or non-zero-mode padding up front, as the layer does.

    Returns the (maybe padded) input and the symmetric zero padding still to apply.
    """
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        pad = list(layer._reversed_padding_repeated_twice)
        if any(pad):
            x = F.pad(x, pad, mode=mode)
        return x, [0] * (x.dim() - 2)
    return x, list(layer.padding)


def _weight_sq_instantiate(layer: _ConvNd, x: Tensor, g: Tensor) -> Tensor:
    """Squared per-sample weight-gradient norms via one grouped convolution weight gradient."""
    b = x.shape[0]
    groups = int(layer.groups)
    x, padding = _explicit_padding(layer, x)
    # Batch folded into channels: example i, group j is group i * groups + j of a big conv.
    xi = x.reshape(1, b * x.shape[1], *x.shape[2:])
    go = g.reshape(1, b * g.shape[1], *g.shape[2:])
    w = layer.weight
    # Only the weight's shape is read when just the weight gradient is requested.
    w_shape = torch.empty((b * w.shape[0], *w.shape[1:]), dtype=g.dtype, device=g.device)
    _, gw, _ = torch.ops.aten.convolution_backward(
        go,
        xi,
        w_shape,
        None,
        list(layer.stride),
        padding,
        list(layer.dilation),
        False,
        [0] * len(padding),
        b * groups,
        [False, True, False],
    )
    # One fused reduction: no squared copy of the [B, C_out, D] gradients.
    return torch.linalg.vector_norm(gw.reshape(b, -1), dim=1).square()


def _weight_sq_ghost(layer: _ConvNd, x: Tensor, g: Tensor) -> Tensor:
    """Squared per-sample weight-gradient norms via the Gram form, never forming the gradient."""
    b = x.shape[0]
    groups = int(layer.groups)
    x, padding = _explicit_padding(layer, x)
    if x.dim() == 3:  # Conv1d as a 2-d convolution of height 1
        x = x.unsqueeze(2)
        g = g.unsqueeze(2)
        kernel = (1, layer.kernel_size[0])
        stride = (1, layer.stride[0])
        dilation = (1, layer.dilation[0])
        pad2 = (0, padding[0])
    else:
        kernel = tuple(layer.kernel_size)  # type: ignore[assignment]
        stride = tuple(layer.stride)  # type: ignore[assignment]
        dilation = tuple(layer.dilation)  # type: ignore[assignment]
        pad2 = (padding[0], padding[1])
    a = F.unfold(x, kernel, dilation=dilation, padding=pad2, stride=stride)  # [B, C_in*k, L]
    num_pos = a.shape[-1]
    a = a.reshape(b, groups, -1, num_pos)
    go = g.reshape(b, groups, -1, num_pos)
    gram_a = a.transpose(-1, -2) @ a  # [B, G, L, L]
    gram_g = go.transpose(-1, -2) @ go
    return (gram_a * gram_g).sum(dim=(1, 2, 3))


@norm_sampler(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv_norm_sample(
    layer: nn.Module, activations: list[Tensor], backprops: Tensor
) -> dict[Tensor, Tensor]:
    """Per-sample gradient norms of a convolution's weight and bias (Opacus norm-sampler API).

    Chooses, by :func:`conv_flops`, between instantiating the per-example weight gradients
    (through a grouped convolution) and the ghost Gram form; both are exact.

    Args:
        layer: ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d`` (any stride, padding including
            ``"same"`` and non-zero padding modes, dilation, groups, with or without bias).
        activations: ``[input]`` as captured by Opacus' forward hook, batch first.
        backprops: gradient of the per-example losses w.r.t. the layer output, batch first
            (Opacus has already multiplied it by the batch size for ``loss_reduction="mean"``).

    Returns:
        ``{param: norms[B]}`` for each parameter that requires grad.

    Example:
        >>> import torch
        >>> conv = torch.nn.Conv2d(2, 3, 3, bias=False)
        >>> x, g = torch.randn(4, 2, 5, 5), torch.randn(4, 3, 3, 3)
        >>> norms = conv_norm_sample(conv, [x], g)[conv.weight]
        >>> ref = torch.stack([torch.autograd.grad((conv(x[i:i+1]) * g[i:i+1]).sum(),
        ...                    conv.weight)[0].norm() for i in range(4)])
        >>> bool(torch.allclose(norms, ref, rtol=1e-4))
        True
    """
    assert isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    g = backprops
    x = activations[0].to(g.dtype)
    out: dict[Tensor, Tensor] = {}
    if layer.weight.requires_grad:
        num_pos = math.prod(g.shape[2:])
        flops = conv_flops(layer, g.shape[0], num_pos)
        if flops["ghost"] < flops["instantiate"]:
            sq = _weight_sq_ghost(layer, x, g)
        else:
            sq = _weight_sq_instantiate(layer, x, g)
        out[layer.weight] = sq.clamp_min(0).sqrt()
    if layer.bias is not None and layer.bias.requires_grad:
        out[layer.bias] = g.reshape(g.shape[0], g.shape[1], -1).sum(2).norm(dim=1)
    return out
