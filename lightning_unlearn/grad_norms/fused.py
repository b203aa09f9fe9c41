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
  is computed once, not twice; ``nn.Linear`` on sequences ``[B, *, d_in]`` likewise, with one
  batched matmul, whenever that is no dearer than the ghost Gram form;
* fuses ``nn.GroupNorm`` too: torch's own GroupNorm backward, run on the batch laid out as one
  example with ``B * C`` channels (the same groups), returns every example's weight and bias
  gradient together with the ordinary input gradient, from the mean and inverse standard
  deviation the forward pass saved;
* reads norms of ``nn.Linear`` on 2-d inputs (``||a_i|| ||g_i||``) from a tensor hook on the
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
with buffers and no norm rule. Hooks attached after ``torch.compile`` are ignored by the
compiled graph, as for Opacus.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from torch.utils.hooks import RemovableHandle

from lightning_unlearn.errors import NormHooksError, UnsupportedLayerError
from lightning_unlearn.grad_norms.fused_ops import (
    _conv_padding,
    _FusedConv,
    _FusedGroupNorm,
    _FusedLinear,
    conv_unfold_preferred,
)

__all__ = ["FusedNormEngine", "conv_unfold_preferred"]

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

    def _group_norm(self, layer: nn.Module, inputs: tuple[Any, ...], out: Any) -> Tensor | None:
        if not self._enter(layer, out):
            return None
        assert isinstance(layer, nn.GroupNorm)
        assert layer.weight is not None  # affine: a GroupNorm without parameters gets no hook
        x = inputs[0]
        node = out.grad_fn
        if type(node).__name__ == "NativeGroupNormBackward0":
            # The mean and 1/std the forward pass saved for its own backward (free). Unpacked
            # saved outputs point back to their node: detach, or node and tensors could keep
            # one another alive in a cycle Python's garbage collector cannot see.
            mean, rstd = node._saved_result1.detach(), node._saved_result2.detach()
        else:
            xg = x.detach().reshape(x.shape[0], layer.num_groups, -1)
            var, mean = torch.var_mean(xg, dim=2, unbiased=False)
            rstd = (var + layer.eps).rsqrt()
        fused: Tensor = _FusedGroupNorm.apply(
            x, layer.weight, layer.bias, [out.detach()], layer.num_groups, mean, rstd, self
        )
        return fused

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
