"""The ``"fused"`` norm engine: per-sample gradient norms at close to the cost of plain training.

Opacus' ghost mode (:mod:`lightning_unlearn.grad_norms.hooks`) gets every example's gradient
norm right, but its generic hook machinery costs about 0.5-1 ms of Python per step, and a
convolution's norm costs one extra weight-gradient's worth of work on top of the ordinary
backward pass (``docs/performance.md``). This engine attaches its own, lighter forward hooks to
the leaf layers of a module (no wrapping: identity, class, ``state_dict`` keys unchanged) and

* **fuses** the norm into the backward pass of convolutions: the forward hook hands the layer's
  output to a small ``autograd.Function`` whose backward computes the input gradient as torch
  does, and the *per-example* weight gradients ``G_i`` in one batched call (a convolution whose
  groups are the examples: exactly the multiply-adds of the ordinary weight gradient). From
  ``G_i`` it takes both the norms ``||G_i||`` and ``p.grad = sum_i G_i``, so the weight gradient
  is computed once, not twice;
* reads norms of ``nn.Linear`` (2-d inputs: ``||a_i|| ||g_i||``) and ``nn.GroupNorm`` (from
  the mean and inverse standard deviation its own forward pass saved) from a tensor hook on the
  layer output, without touching the layer's backward;
* calls the norm samplers registered with Opacus (``opacus.grad_sample.register_norm_sampler``:
  this package's for Linear on sequences, Embedding, LayerNorm, InstanceNorm, RMSNorm, and any
  registered by the user) from the same tensor hook, Opacus' per-sample gradient samplers
  (``register_grad_sampler``) for the other layer types Opacus supports, and a ``torch.func``
  fall-back (the layer re-run per example under ``vmap``) for any other layer without buffers.

All of it is THEORY §1's per-example gradient ``g_x(theta_t)`` (of the example's own loss, before
clipping), combined over layers as ``||g_i||^2 = sum_p ||grad_p l_i||^2``. The per-layer rules
are exact; every one is checked against a loop of batch-size-1 backward passes in
``tests/grad_norms/test_fused.py``. ``p.grad`` of a fused layer equals torch's up to float
rounding (the sum over examples is taken in another order).

Limits (each raises a named error rather than giving a wrong norm): a layer called twice in one
forward pass, a parameter shared by two layers (tied weights), or a second backward pass through
one forward pass (``retain_graph``; refused when the norms are read), since the per-example
gradient is then a sum of contributions whose norm per-contribution norms do not give; layers
with buffers and no norm rule. Hooks attached after
``torch.compile`` are ignored by the compiled graph, as for Opacus.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from torch.utils.hooks import RemovableHandle

from lightning_unlearn.errors import NormHooksError, UnsupportedLayerError

__all__ = ["FusedNormEngine", "conv_unfold_preferred"]

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
        engine: FusedNormEngine,
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
        engine: FusedNormEngine = ctx.engine
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
        engine._add(sq, ctx.fired)
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
        engine: FusedNormEngine,
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.engine = engine
        ctx.fired = [False]
        ctx.has_bias = bias is not None
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
        grad_b = None
        if ctx.has_bias:
            gb = g3.sum(1)
            gbf = gb.to(acc)
            sq = sq + (gbf * gbf).sum(1)
            grad_b = gb.sum(0).to(weight.dtype)
        ctx.engine._add(sq, ctx.fired)
        return grad_x, grad_w, grad_b, None, None


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


Handler = Callable[[nn.Module, tuple[Any, ...], Any], Any]


class FusedNormEngine:
    """Forward hooks on the leaf layers of ``module`` that leave per-example squared gradient
    norms in :attr:`sq` after an ordinary backward pass (see the module docstring).

    Created by :func:`lightning_unlearn.grad_norms.attach_norm_hooks` with ``mode="fused"``; use
    that handle (:class:`~lightning_unlearn.grad_norms.NormHooks`) rather than this class.

    Args:
        module: the module; its parameters with ``requires_grad`` make up the norm.
        excluded: ids of parameters left out (``exclude_unsupported``); their layers get no hook.
    """

    def __init__(self, module: nn.Module, excluded: set[int]) -> None:
        self.sq: Tensor | None = None
        self.repeated = False  # a second backward pass reached a traced layer call
        self._replaying = False  # inside the torch.func fall-back: hooks stand aside
        self._called: set[int] = set()
        self._handles: list[RemovableHandle] = []
        from opacus.grad_sample import GradSampleModule
        from opacus.grad_sample import GradSampleModuleFastGradientClipping as Ghost

        norm_samplers = Ghost.NORM_SAMPLERS
        grad_samplers = GradSampleModule.GRAD_SAMPLERS
        owner: dict[int, str] = {}
        plan: list[tuple[nn.Module, Handler]] = []
        missing: list[str] = []
        for name, layer in module.named_modules():
            own = [
                p
                for p in layer.parameters(recurse=False)
                if p.requires_grad and id(p) not in excluded
            ]
            if not own:
                continue
            label = name or "<root>"
            for p in own:
                if id(p) in owner:
                    raise NormHooksError(
                        f"Expected every parameter to belong to one layer, but a parameter of "
                        f"{label!r} is also used by {owner[id(p)]!r} (tied weights): its "
                        "per-example gradient is then a sum over both layers, which the 'fused' "
                        "engine does not form. Use `mode='hooks'` (materialised per-example "
                        "gradients) for such models."
                    )
                owner[id(p)] = label
            handler = self._handler_for(layer, norm_samplers, grad_samplers)
            if handler is None:
                missing.append(f"{label} ({type(layer).__name__})")
            else:
                plan.append((layer, handler))
        if missing:
            raise UnsupportedLayerError(
                "Expected layers with a per-sample norm rule, but got "
                + ", ".join(missing)
                + ": they hold buffers, so neither a norm rule nor the torch.func fall-back "
                "applies. Register a norm sampler for the type with "
                "`opacus.grad_sample.register_norm_sampler`, or freeze the layer's parameters."
            )
        for layer, handler in plan:
            self._handles.append(layer.register_forward_hook(handler))

    # ------------------------------------------------------------------ state
    def _add(self, sq: Tensor, fired: list[bool]) -> None:
        """Add one layer call's squared norms; ``fired`` is that call's own flag, so a second
        backward pass through the same forward (``retain_graph``, or ``autograd.grad`` before
        ``backward``) is noticed: the norm of a sum of per-example gradients is not the sum of
        their squared norms, so the pass is refused when the norms are read."""
        if fired[0]:
            self.repeated = True
            return
        fired[0] = True
        current = self.sq
        if current is None:
            self.sq = sq
        elif current.shape != sq.shape:
            raise NormHooksError(
                "Expected every layer to see the same batch size, but got per-sample norms of "
                f"sizes {current.shape[0]} and {sq.shape[0]}. Layers must take batch-first "
                "inputs of the same batch; read the norms after every backward pass."
            )
        else:
            self.sq = current + sq.to(current.dtype) if sq.dtype != current.dtype else current + sq

    def clear(self) -> None:
        """Forget the norms of the last pass and which layers were called."""
        self.sq = None
        self.repeated = False
        self._called.clear()

    def cleanup(self) -> None:
        """Remove every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def _enter(self, layer: nn.Module, out: Any) -> bool:
        """Whether ``layer``'s call should be traced; raises on a second call in one pass."""
        if self._replaying or not (layer.training and torch.is_grad_enabled()):
            return False
        if not isinstance(out, Tensor) or not out.requires_grad:
            return False
        key = id(layer)
        if key in self._called:
            raise NormHooksError(
                f"Expected each layer to run once per forward pass, but {type(layer).__name__} "
                "ran twice before its norms were read: its per-example gradient is the sum of "
                "both calls, which the 'fused' engine does not form. Use `mode='hooks'`, or read "
                "(and `clear()`) the norms after each backward pass."
            )
        self._called.add(key)
        return True

    # ------------------------------------------------------------------ handlers
    def _handler_for(
        self, layer: nn.Module, norm_samplers: dict[type, Any], grad_samplers: dict[type, Any]
    ) -> Handler | None:
        if type(layer) is nn.Linear:
            return self._linear
        if type(layer) in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
            assert isinstance(layer, _ConvNd)
            if _conv_padding(layer) is not None:
                return self._conv
        if type(layer) is nn.GroupNorm:
            return self._group_norm
        if type(layer) in norm_samplers:
            return self._sampler_handler(norm_samplers[type(layer)], materialised=False)
        if type(layer) in grad_samplers:
            return self._sampler_handler(grad_samplers[type(layer)], materialised=True)
        if not any(True for _ in layer.buffers()):
            # Any other layer: a torch.func fall-back redoes the layer's forward per
            # example (materialised, slower, exact), as Opacus' own ghost mode does.
            return self._sampler_handler(self._torch_func_sampler, materialised=True)
        return None

    def _linear(self, layer: nn.Module, inputs: tuple[Any, ...], out: Any) -> Tensor | None:
        if not self._enter(layer, out):
            return None
        x = inputs[0]
        assert isinstance(layer, nn.Linear)
        if x.dim() != 2:
            positions = math.prod(x.shape[1:-1])
            d_in, d_out = layer.in_features, layer.out_features
            if layer.weight.requires_grad and positions * (d_in + d_out) >= d_in * d_out:
                # Instantiating [B, d_out, d_in] is no dearer than the Gram form: fuse it with
                # the weight gradient, which it then replaces.
                b = layer.bias if layer.bias is not None and layer.bias.requires_grad else None
                fused: Tensor = _FusedLinear.apply(x, layer.weight, b, [out.detach()], self)
                return fused
            from lightning_unlearn.grad_norms.samplers import NORM_SAMPLERS

            self._register_sampler(layer, NORM_SAMPLERS[nn.Linear], [x], out, False)
            return None
        weight = layer.weight.requires_grad
        bias = layer.bias is not None and layer.bias.requires_grad

        fired = [False]

        def hook(g: Tensor) -> None:
            # weight: ||g_i a_i^T|| = ||g_i|| ||a_i||; bias: ||g_i||
            acc = torch.float64 if g.dtype == torch.float64 else torch.float32
            gsq = torch.linalg.vector_norm(g, dim=1, dtype=acc).square()
            if not weight:
                self._add(gsq if bias else torch.zeros_like(gsq), fired)
                return
            xsq = torch.linalg.vector_norm(x, dim=1, dtype=acc).square()
            self._add(gsq * (xsq + 1.0) if bias else gsq * xsq, fired)

        out.register_hook(hook)
        return None

    def _conv(self, layer: nn.Module, inputs: tuple[Any, ...], out: Any) -> Tensor | None:
        if not self._enter(layer, out):
            return None
        assert isinstance(layer, _ConvNd)
        padding = _conv_padding(layer)
        assert padding is not None
        bias = layer.bias if layer.bias is not None and layer.bias.requires_grad else None
        # The ordinary output is reused as is; its own graph (which would compute the weight
        # gradient a second time) is dropped with the original tensor.
        result: Tensor = _FusedConv.apply(
            inputs[0], layer.weight, bias, [out.detach()], layer, padding, self
        )
        return result

    def _group_norm(self, layer: nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
        if not self._enter(layer, out):
            return
        assert isinstance(layer, nn.GroupNorm)
        x = inputs[0]
        groups = layer.num_groups
        node = out.grad_fn
        # The mean and 1/std the forward pass saved for its own backward. Unpacked saved outputs
        # point back to their node, which will hold the hook below: detach, or the node, the
        # hook and these tensors would keep one another alive (a leak invisible to Python's gc).
        saved = (
            (node._saved_result1.detach(), node._saved_result2.detach())
            if type(node).__name__ == "NativeGroupNormBackward0"
            else None
        )
        weight = layer.weight is not None and layer.weight.requires_grad
        bias = layer.bias is not None and layer.bias.requires_grad

        fired = [False]

        def hook(g: Tensor) -> None:
            b, c = g.shape[:2]
            gf = g.reshape(b, c, -1)
            gf = gf.float() if gf.dtype in (torch.float16, torch.bfloat16) else gf
            db = gf.sum(2)  # [B, C]: each example's bias gradient
            sq = (db * db).sum(1) if bias else db.new_zeros(b)
            if weight:
                xf = x.reshape(b, c, -1).to(gf.dtype)
                if saved is not None:
                    mean, rstd = saved[0].to(gf.dtype), saved[1].to(gf.dtype)
                else:
                    var, mean = torch.var_mean(xf.reshape(b, groups, -1), dim=2, unbiased=False)
                    rstd = (var + layer.eps).rsqrt()
                per = c // groups
                ds = torch.linalg.vecdot(gf, xf)  # sum over positions of g * x
                mean_c = mean.reshape(b, groups, 1).expand(b, groups, per).reshape(b, c)
                rstd_c = rstd.reshape(b, groups, 1).expand(b, groups, per).reshape(b, c)
                dw = (ds - db * mean_c) * rstd_c  # sum of g * x_hat: the weight gradient
                sq = sq + (dw * dw).sum(1)
            self._add(sq, fired)

        out.register_hook(hook)

    def _sampler_handler(self, sampler: Any, *, materialised: bool) -> Handler:
        def handler(layer: nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
            if not self._enter(layer, out):
                return
            acts = (
                list(inputs)
                if sampler == self._torch_func_sampler
                else [t for t in inputs if isinstance(t, Tensor)]
            )
            self._register_sampler(layer, sampler, acts, out, materialised)

        return handler

    def _torch_func_sampler(
        self, layer: nn.Module, inputs: list[Any], g: Tensor
    ) -> dict[Tensor, Tensor]:
        """Per-example gradients of ``layer``'s own parameters by ``torch.func``: the layer
        itself (its current mode and attributes) is re-run on each example under ``vmap``,
        with this engine's hooks standing aside. The sampler signature of Opacus."""
        from torch.func import functional_call, grad, vmap

        own = {n: p.detach() for n, p in layer.named_parameters(recurse=False) if p.requires_grad}
        dims = tuple(0 if isinstance(t, Tensor) else None for t in inputs)

        def example_loss(params: dict[str, Tensor], go: Tensor, *args: Any) -> Tensor:
            batched = tuple(a.unsqueeze(0) if isinstance(a, Tensor) else a for a in args)
            out = functional_call(layer, params, batched)
            return (out * go.unsqueeze(0)).sum()

        self._replaying = True
        try:
            grads = vmap(grad(example_loss), in_dims=(None, 0, *dims))(own, g, *inputs)
        finally:
            self._replaying = False
        named = dict(layer.named_parameters(recurse=False))
        return {named[n]: v for n, v in grads.items()}

    def _register_sampler(
        self, layer: nn.Module, sampler: Any, acts: list[Tensor], out: Tensor, materialised: bool
    ) -> None:
        params = {id(p) for p in layer.parameters(recurse=False) if p.requires_grad}
        fired = [False]

        def hook(g: Tensor) -> None:
            result = sampler(layer, acts, g)
            sq: Tensor | None = None
            for p, value in result.items():
                if id(p) not in params:
                    continue
                v = value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
                term = v.reshape(v.shape[0], -1).pow(2).sum(1) if materialised else v * v
                sq = term if sq is None else sq + term
            if sq is not None:
                self._add(sq, fired)

        out.register_hook(hook)
