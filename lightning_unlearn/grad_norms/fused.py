"""The ``"fused"`` norm engine: per-sample gradient norms at close to the cost of plain training.

Opacus' ghost mode (:mod:`lightning_unlearn.grad_norms.hooks`) gets every example's gradient
norm right, but its generic hook machinery costs about 0.5-1 ms of Python per step, and a
convolution's norm costs one extra weight-gradient's worth of work on top of the ordinary
backward pass (``docs/performance.md``). This engine attaches its own, lighter forward hooks to
the layers of a module (no wrapping: identity, class, ``state_dict`` keys unchanged) and

* **fuses** the norm into the backward pass of convolutions: the forward hook hands the layer's
  output to a small ``autograd.Function`` whose backward computes the input gradient as torch
  does, and the *per-example* weight gradients ``G_i`` in one batched call (a convolution whose
  groups are the examples: exactly the multiply-adds of the ordinary weight gradient). From
  ``G_i`` it takes both the norms ``||G_i||`` and ``p.grad = sum_i G_i``, so the weight gradient
  is computed once, not twice; ``nn.Linear`` on sequences ``[B, *, d_in]`` likewise, with one
  batched matmul, whenever that is no dearer than the ghost Gram form;
* fuses ``nn.GroupNorm`` too: torch's own GroupNorm backward, run on the batch laid out as one
  example with ``B * C`` channels (the same groups), returns every example's weight and bias
  gradient together with the ordinary input gradient;
* reads norms of ``nn.Linear`` on 2-d inputs (``||a_i|| ||g_i||``) from a tensor hook on the
  layer output, without touching the layer's backward;
* calls the norm samplers registered with Opacus (this package's for Linear on sequences,
  Embedding, LayerNorm, InstanceNorm, RMSNorm, and any registered by the user) from the same
  tensor hook, Opacus' per-sample gradient samplers for the other layer types Opacus supports,
  and a ``torch.func`` fall-back (the layer re-run per example under ``vmap``) for any other
  layer without buffers;
* treats ``nn.MultiheadAttention`` as one unit with its ``out_proj``
  (:mod:`~lightning_unlearn.grad_norms.fused_attention`), and recurrent layers (``nn.LSTM``,
  ``nn.GRU``, ``nn.RNN``), layers returning tuples and layers called with keyword arguments as
  units re-run per example (:mod:`~lightning_unlearn.grad_norms.fused_units`).

All of it is THEORY §1's per-example gradient ``g_x(theta_t)`` (of the example's own loss, before
clipping), combined over parameters as ``||g_i||^2 = sum_p ||grad_p l_i||^2``.

**Shared layers and tied weights.** A layer called several times in one forward pass (an
embedding applied to source and target) or a parameter owned by two layers (GPT-2's ``wte`` and
``lm_head``) gets a per-example gradient that is the *sum* over the calls, whose norm the calls'
norms do not give. For those layers only, each call's per-example gradients are materialised and
accumulated (``[B, *p.shape]`` per parameter, kept until the norms are read: B times the
parameter's memory), and the norm of the sum is formed when the norms are read.

**Broadcast inputs.** An ``nn.Embedding`` called with a batch of one while the pass's batch is
B > 1 (HF transformers' ``position_ids`` of shape ``[1, T]``, broadcast-added afterwards) has
its indices and output expanded to the B examples: the values, hence the forward, are
unchanged, and each example's share of the gradient becomes visible. The pass's batch size is
that of the first layer traced in the pass, or the one given to
:meth:`FusedNormEngine.expect_batch_size`.

**Gradient checkpointing.** Forward hooks fire again when ``torch.utils.checkpoint`` recomputes
a segment inside the backward pass. Non-reentrant checkpointing (``use_reentrant=False``, HF's
default) recomputes a layer already traced in the pass: the engine rebuilds the same structure
and counts nothing. Reentrant checkpointing runs the first forward without gradients and the
recomputation with them: those are the calls traced, counted like a forward pass's (a layer
called twice inside one segment is a shared layer).

Limits (each raises a named error naming the layer): a second backward pass through one forward
pass (``retain_graph``; refused when the norms are read), a forward pass after a backward pass
without reading the norms, layers with buffers and no norm rule, recurrent layers with dropout,
``PackedSequence`` inputs. Hooks attached after ``torch.compile`` are ignored by the compiled
graph: ``attach_norm_hooks`` refuses compiled submodules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd
from torch.utils import _pytree as pytree
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

Handler = Callable[..., Any]
Grads = list[tuple[Tensor, Tensor, int]]  # (parameter, per-example gradient [B, ...], first row)
_graph_task_id: Callable[[], int] = getattr(torch._C, "_current_graph_task_id", lambda: -1)


def _needs_grad(out: Any) -> bool:
    if isinstance(out, Tensor):
        return out.requires_grad
    return any(isinstance(t, Tensor) and t.requires_grad for t in pytree.tree_leaves(out))


class FusedNormEngine:
    """Forward hooks on the layers of ``module`` that leave per-example squared gradient
    norms in :meth:`total_sq` after an ordinary backward pass (see the module docstring).

    Created by :func:`lightning_unlearn.grad_norms.attach_norm_hooks` with ``mode="fused"``; use
    that handle (:class:`~lightning_unlearn.grad_norms.NormHooks`) rather than this class.

    Args:
        module: the module; its parameters with ``requires_grad`` make up the norm.
        excluded: ids of parameters left out; layers with no other parameter get no hook.
    """

    def __init__(self, module: nn.Module, excluded: set[int]) -> None:
        self.sq: Tensor | None = None
        self.repeated = False  # a second backward pass reached a traced layer call
        self._replaying = False  # inside a per-example re-run: hooks stand aside
        self._acc: dict[int, Tensor] = {}  # per-example gradients of shared layers' parameters
        self._calls: dict[int, int] = {}
        self._forward_calls: set[int] = set()  # layers traced outside a backward pass
        self._batch: int | None = None
        self._backward_seen = False
        self._covered: set[int] = set()
        self._eval_hit: list[str] = []
        self._handles: list[RemovableHandle] = []
        self._names: dict[int, str] = {}
        self._params: dict[int, list[int]] = {}  # layer -> ids of its included parameters
        self._watched_layers: set[int] = set()
        self._shared_layers: set[int] = set()
        self._sharing = False  # a shared layer exists, or a layer ran twice in this pass
        self.watched: dict[str, nn.Parameter] = {}  # parameters whose coverage is dynamic
        self._plan(module, excluded)

    # ------------------------------------------------------------------ attach
    def _plan(self, module: nn.Module, excluded: set[int]) -> None:
        from opacus.grad_sample import GradSampleModule
        from opacus.grad_sample import GradSampleModuleFastGradientClipping as Ghost

        norm_samplers, grad_samplers = Ghost.NORM_SAMPLERS, GradSampleModule.GRAD_SAMPLERS
        owners: dict[int, list[int]] = {}
        plan: list[tuple[nn.Module, Handler, bool]] = []
        missing: list[str] = []
        units = [m for m in module.modules() if isinstance(m, nn.MultiheadAttention)]
        inside = {id(c) for u in units for c in u.modules() if c is not u}
        for name, layer in module.named_modules(remove_duplicate=False):
            if id(layer) in inside or id(layer) in self._names:
                continue
            recurse = isinstance(layer, nn.MultiheadAttention)
            own = [
                p
                for p in layer.parameters(recurse=recurse)
                if p.requires_grad and id(p) not in excluded
            ]
            if not own:
                continue
            label = name or "<root>"
            self._names[id(layer)] = label
            self._params[id(layer)] = [id(p) for p in own]
            for p in own:
                owners.setdefault(id(p), []).append(id(layer))
            handler, kwargs, watched = self._handler_for(layer, label, norm_samplers, grad_samplers)
            if handler is None:
                missing.append(f"{label!r} ({type(layer).__name__})")
                continue
            plan.append((layer, handler, kwargs))
            if watched:
                self._watched_layers.add(id(layer))
                for n, p in layer.named_parameters(recurse=recurse):
                    if id(p) in self._params[id(layer)]:
                        self.watched[f"{name}.{n}" if name else n] = p
        for layers in owners.values():
            if len(layers) > 1:
                self._shared_layers.update(layers)
        self._sharing = bool(self._shared_layers)
        if missing:
            raise UnsupportedLayerError(
                "Expected layers with a per-sample norm rule, but got "
                + ", ".join(missing)
                + ": they hold buffers, so neither a norm rule nor the per-example re-run "
                "applies. Register a norm sampler for the type with "
                "`opacus.grad_sample.register_norm_sampler`, or freeze the layer's parameters."
            )
        for layer, handler, kwargs in plan:
            self._handles.append(layer.register_forward_hook(handler, with_kwargs=kwargs))
        if any(type(m) is nn.Embedding for m in module.modules()):
            # broadcast inputs are expanded to the batch of the module's own input, when the
            # module itself is called (an HF model); else to that of the first traced layer
            self._handles.append(module.register_forward_pre_hook(self._root, with_kwargs=True))

    def _root(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._batch is None and not self._replaying and torch.is_grad_enabled():
            for t in (*args, *kwargs.values()):
                if isinstance(t, Tensor) and t.dim():
                    self._batch = t.shape[0]
                    return

    def _handler_for(
        self,
        layer: nn.Module,
        label: str,
        norm_samplers: dict[type, Any],
        grad_samplers: dict[type, Any],
    ) -> tuple[Handler | None, bool, bool]:
        """(forward hook, whether it takes kwargs, whether its coverage must be watched)."""
        if type(layer) is nn.Linear:
            return self._linear, False, False
        if type(layer) in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
            assert isinstance(layer, _ConvNd)
            if _conv_padding(layer) is not None:
                return self._conv, False, False
        if type(layer) is nn.GroupNorm:
            return self._group_norm, False, False
        if isinstance(layer, nn.MultiheadAttention):
            from lightning_unlearn.grad_norms.fused_attention import check_attention

            check_attention(layer, label)
            return self._attention, True, True
        if isinstance(layer, nn.RNNBase):
            return self._unit, True, True
        if isinstance(layer, nn.Embedding) and layer.scale_grad_by_freq:
            raise UnsupportedLayerError(
                f"Expected {label!r} (Embedding) with scale_grad_by_freq=False, but got True: "
                "scaling by in-batch token counts couples examples, so per-example gradients "
                "are undefined. Construct the embedding with scale_grad_by_freq=False."
            )
        if type(layer) is nn.EmbeddingBag:
            return self._embedding_bag, True, True
        if type(layer) in norm_samplers:
            return (
                self._sampler_handler(norm_samplers[type(layer)], materialised=False),
                False,
                False,
            )
        if type(layer) in grad_samplers:
            return (
                self._sampler_handler(grad_samplers[type(layer)], materialised=True),
                False,
                False,
            )
        if not any(True for _ in layer.buffers()):
            # Any other layer: re-run per example (torch.func for one tensor output and
            # positional inputs, a loop for tuples and keyword inputs): slower, exact.
            return self._fallback, True, True
        return None, False, False

    # ------------------------------------------------------------------ state
    def expect_batch_size(self, batch_size: int) -> None:
        """Tell the engine the batch size of the coming pass (broadcast inputs are expanded to
        it); otherwise the first layer traced in the pass sets it."""
        self._batch = int(batch_size)

    def materialise(self, layer: nn.Module) -> bool:
        """Whether ``layer``'s per-example gradients must be accumulated (shared layer)."""
        if not self._sharing:  # no shared layer and no second call in this pass: the fast path
            return False
        key = id(layer)
        return key in self._shared_layers or self._calls.get(key, 0) > 1

    def _record(self, layer: nn.Module, fired: list[bool], sq: Tensor | None, grads: Any) -> None:
        """One layer call's contribution: squared norms ``sq``, or per-example gradients
        ``grads`` (accumulated until read). ``fired`` is that call's own flag, so a second
        backward pass through the same forward is noticed and refused when the norms are read:
        the norm of a sum of per-example gradients is not the sum of their squared norms."""
        if fired[0]:
            self.repeated = True
            return
        fired[0] = True
        self._backward_seen = True
        key = id(layer)
        if key in self._watched_layers:
            self._covered.update(self._params[key])
        if grads is None:
            assert sq is not None
            current = self.sq
            if current is None:
                self.sq = sq
            elif current.shape == sq.shape and current.dtype == sq.dtype:
                self.sq = current + sq
            else:
                self._add(sq, layer)
            return
        for p, value, start in grads:
            self._accumulate(layer, p, value, start)

    def _accumulate(self, layer: nn.Module, p: Tensor, value: Tensor, start: int) -> None:
        buf = self._acc.get(id(p))
        if buf is None:
            dtype = torch.float64 if value.dtype == torch.float64 else torch.float32
            buf = torch.zeros((value.shape[0], *p.shape), dtype=dtype, device=value.device)
            self._acc[id(p)] = buf
        if buf.shape[0] != value.shape[0]:
            self._batch_error(buf.shape[0], value.shape[0], layer)
        part = (
            buf
            if start == 0 and value[0].numel() == p.numel()
            else buf.narrow(1, start, value.shape[1])
        )
        part += value.reshape(part.shape).to(buf.dtype)

    def _add(self, sq: Tensor, layer: nn.Module) -> None:
        current = self.sq
        if current is None:
            self.sq = sq
        elif current.shape != sq.shape:
            self._batch_error(current.shape[0], sq.shape[0], layer)
        else:
            self.sq = current + sq.to(current.dtype) if sq.dtype != current.dtype else current + sq

    def _batch_error(self, seen: int, got: int, layer: nn.Module) -> None:
        label = self._names.get(id(layer), type(layer).__name__)
        raise NormHooksError(
            "Expected every layer to see the same batch size, but got per-sample norms of "
            f"sizes {seen} and {got} (the latter from {label!r}, {type(layer).__name__}). "
            "Layers must take batch-first inputs of the same batch; an input broadcast over "
            "the batch (shape [1, ...]) is expanded only for nn.Embedding: expand it to the "
            "batch (`x.expand(batch_size, ...)`) or call `hooks.expect_batch_size(B)` before the "
            "forward pass. A layer whose input has no batch dimension at all (T5's "
            "`relative_attention_bias`, an embedding of positions broadcast afterwards) has no "
            "per-example rule: freeze its parameters or leave them out of the norm with "
            "`exclude=[...]`. Read the norms after every backward pass."
        )

    def total_sq(self) -> Tensor | None:
        """Per-example squared norms of the last pass (None if nothing was recorded)."""
        total = self.sq
        for buf in self._acc.values():
            sq = torch.linalg.vector_norm(buf.flatten(1), dim=1).square()
            if total is None:
                total = sq
            elif total.shape != sq.shape:
                raise NormHooksError(
                    "Expected every layer to see the same batch size, but got per-sample "
                    f"gradients of sizes {total.shape[0]} and {sq.shape[0]} (a shared layer)."
                )
            else:
                total = total + sq.to(total.dtype)
        return total

    def clear(self) -> None:
        """Forget the norms of the last pass and which layers were called."""
        self.sq = None
        self.repeated = False
        self._acc = {}
        self._calls.clear()
        self._forward_calls.clear()
        self._sharing = bool(self._shared_layers)
        self._batch = None
        self._backward_seen = False
        self._covered.clear()
        self._eval_hit.clear()

    def cleanup(self) -> None:
        """Remove every hook (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.clear()

    def _enter(self, layer: nn.Module, out: Any) -> bool:
        """Whether ``layer``'s call should be traced."""
        if self._replaying or not torch.is_grad_enabled():
            return False
        if not (out.requires_grad if isinstance(out, Tensor) else _needs_grad(out)):
            return False
        if not layer.training:
            self._watch_eval(layer, out)
            return False
        key = id(layer)
        calls = self._calls.get(key, 0)
        if not self._calls:
            self._eval_hit.clear()  # a new pass: eval-mode gradients of an earlier one are stale
        if _graph_task_id() != -1:
            # inside a backward pass: a checkpointed segment recomputed. Non-reentrant: the
            # layer was traced in the forward pass; rebuild the same structure (the saved
            # tensors must match), count nothing. Reentrant: the first forward ran without
            # gradients, so these are the traced calls, counted like a forward pass's (a layer
            # called twice in the segment is then a shared layer).
            if key in self._forward_calls:
                return True
        elif self._backward_seen:
            label = self._names.get(key, type(layer).__name__)
            raise NormHooksError(
                f"Expected the norms to be read after each backward pass, but {label!r} "
                f"({type(layer).__name__}) ran a forward pass after a backward pass whose norms "
                "were not read: two backward passes per read would add squared norms of parts "
                "of one example's gradient. Call `per_sample_norms()` and `clear()` after each "
                "backward pass, or sum the losses and call backward once."
            )
        else:
            self._forward_calls.add(key)
        self._calls[key] = calls + 1
        if calls:
            self._sharing = True
        if self._batch is None and isinstance(out, Tensor) and out.dim():
            self._batch = out.shape[0]
        return True

    def _watch_eval(self, layer: nn.Module, out: Any) -> None:
        """A layer in eval mode inside a pass with gradients: flag it if a gradient reaches it."""
        label = self._names.get(id(layer), type(layer).__name__)
        for t in pytree.tree_leaves(out):
            if isinstance(t, Tensor) and t.requires_grad:
                t.register_hook(lambda g, label=label: self._eval_hit.append(label))
                return

    def uncovered_eval_layers(self) -> list[str]:
        """Layers in eval mode that received a gradient in the last pass (not in the norm)."""
        return sorted(set(self._eval_hit))

    # ------------------------------------------------------------------ handlers
    def _linear(self, layer: nn.Module, inputs: tuple[Any, ...], out: Any) -> Tensor | None:
        if not self._enter(layer, out):
            return None
        x = inputs[0]
        assert isinstance(layer, nn.Linear)
        if x.dim() != 2:
            positions = math.prod(x.shape[1:-1])
            d_in, d_out = layer.in_features, layer.out_features
            if layer.weight.requires_grad and (
                positions * (d_in + d_out) >= d_in * d_out or id(layer) in self._shared_layers
            ):
                # Instantiating [B, d_out, d_in] is no dearer than the Gram form: fuse it with
                # the weight gradient, which it then replaces.
                b = layer.bias if layer.bias is not None and layer.bias.requires_grad else None
                fused: Tensor = _FusedLinear.apply(x, layer.weight, b, [out.detach()], self, layer)
                return fused
            from lightning_unlearn.grad_norms.samplers import NORM_SAMPLERS

            self._register_sampler(layer, NORM_SAMPLERS[nn.Linear], [x], out, False)
            return None
        weight = layer.weight.requires_grad
        bias = layer.bias is not None and layer.bias.requires_grad
        fired = [False]

        def hook(g: Tensor) -> None:
            if self.materialise(layer):
                grads = [(layer.weight, g[:, :, None] * x[:, None, :], 0)] if weight else []
                if bias:
                    grads.append((layer.bias, g, 0))
                self._record(layer, fired, None, grads)
                return
            # weight: ||g_i a_i^T|| = ||g_i|| ||a_i||; bias: ||g_i||
            acc = torch.float64 if g.dtype == torch.float64 else torch.float32
            gsq = torch.linalg.vector_norm(g, dim=1, dtype=acc).square()
            if not weight:
                self._record(layer, fired, gsq if bias else torch.zeros_like(gsq), None)
                return
            xsq = torch.linalg.vector_norm(x, dim=1, dtype=acc).square()
            self._record(layer, fired, gsq * (xsq + 1.0) if bias else gsq * xsq, None)

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
            x, layer.weight, layer.bias, [out.detach()], layer.num_groups, mean, rstd, self, layer
        )
        return fused

    def _sampler_handler(self, sampler: Any, *, materialised: bool) -> Handler:
        def handler(layer: nn.Module, inputs: tuple[Any, ...], out: Any) -> Tensor | None:
            if not self._enter(layer, out):
                return None
            acts = [t for t in inputs if isinstance(t, Tensor)]
            batch = self._batch or 1
            if type(layer) is nn.Embedding and out.shape[0] == 1 and batch > 1 and acts:
                # a broadcast input (HF position_ids [1, T]): the same rows for every example
                acts = [acts[0].expand(batch, *acts[0].shape[1:])]
                out = out.expand(batch, *out.shape[1:])
                self._register_sampler(layer, sampler, acts, out, materialised)
                return out
            self._register_sampler(layer, sampler, acts, out, materialised)
            return None

        return handler

    def _register_sampler(
        self, layer: nn.Module, sampler: Any, acts: list[Tensor], out: Tensor, materialised: bool
    ) -> None:
        params = {id(p) for p in layer.parameters(recurse=False) if p.requires_grad}
        fired = [False]

        def hook(g: Tensor) -> None:
            if self.materialise(layer):
                result = self._grad_sampler(layer)(layer, acts, g)
                grads = [(p, v, 0) for p, v in result.items() if id(p) in params]
                self._record(layer, fired, None, grads)
                return
            result = sampler(layer, acts, g)
            sq: Tensor | None = None
            for p, value in result.items():
                if id(p) not in params:
                    continue
                v = value.float() if value.dtype in (torch.float16, torch.bfloat16) else value
                term = v.reshape(v.shape[0], -1).pow(2).sum(1) if materialised else v * v
                sq = term if sq is None else sq + term
            if sq is not None:
                self._record(layer, fired, sq, None)

        out.register_hook(hook)

    def _grad_sampler(self, layer: nn.Module) -> Any:
        from opacus.grad_sample import GradSampleModule

        return GradSampleModule.GRAD_SAMPLERS.get(type(layer), self._torch_func_sampler)

    # ------------------------------------------------------------------ units
    def _fallback(
        self, layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> Any:
        if isinstance(out, Tensor) and not kwargs:
            if not self._enter(layer, out):
                return None
            self._register_sampler(layer, self._torch_func_sampler, list(args), out, True)
            return None
        return self._unit(layer, args, kwargs, out)

    def _embedding_bag(
        self, layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> Any:
        """``nn.EmbeddingBag`` by the per-example re-run, for bags given as a ``[B, L]`` input.

        Opacus' rule for the layer is not used: it drops repeated indices within a bag and
        ignores ``per_sample_weights`` and ``mode='max'``. Bags given by ``offsets`` (a flat
        input) are refused: the batch is not the input's first dimension.
        """
        flat = args[0] if args else kwargs.get("input")
        offsets = args[1] if len(args) > 1 else kwargs.get("offsets")
        if offsets is not None or (isinstance(flat, Tensor) and flat.dim() != 2):
            label = self._names.get(id(layer), type(layer).__name__)
            raise UnsupportedLayerError(
                f"Expected {label!r} (EmbeddingBag) to take its bags as a 2-D input [batch, "
                "bag_length] without `offsets`, but it got a flat input with offsets: the "
                "per-example gradient needs the batch as the input's first dimension. Pad the "
                "bags to one length and pass them as a 2-D tensor (`padding_idx` marks the "
                "padding), or freeze the layer's parameters."
            )
        return self._fallback(layer, args, kwargs, out)

    def _unit(
        self, layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> Any:
        """Any output structure: all differentiable outputs through one tap; the layer's own
        parameters' per-example gradients by re-running it per example in the backward pass."""
        if not self._enter(layer, out):
            return None
        from lightning_unlearn.grad_norms.fused_units import (
            batch_dims,
            per_example_grads,
            tap_outputs,
        )

        label = self._names.get(id(layer), type(layer).__name__)
        batch_dims(layer, label, args, kwargs)  # refuse PackedSequence / dropout at forward time
        first = next(t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, Tensor))
        rnn_seq_first = isinstance(layer, nn.RNNBase) and not layer.batch_first
        batch = first.shape[1 if rnn_seq_first else 0]
        if self._batch is None:
            self._batch = batch
        fired = [False]

        def record(grads: tuple[Tensor, ...]) -> None:
            if fired[0]:
                self.repeated = True
                return
            self._replaying = True
            try:
                result = per_example_grads(layer, label, args, kwargs, list(grads), batch)
            finally:
                self._replaying = False
            self._record(layer, fired, None, [(p, v, 0) for p, v in result.items()])

        new_out, _ = tap_outputs(out, record)
        return new_out

    def _attention(
        self, layer: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> Any:
        if not self._enter(layer, out):
            return None
        from lightning_unlearn.grad_norms.fused_attention import mha_forward

        assert isinstance(layer, nn.MultiheadAttention)
        label = self._names.get(id(layer), type(layer).__name__)
        return mha_forward(self, layer, label, args, kwargs)

    def _torch_func_sampler(
        self, layer: nn.Module, inputs: list[Any], g: Tensor
    ) -> dict[Tensor, Tensor]:
        """The sampler signature of Opacus over :func:`fused_units.torch_func_grads`."""
        from lightning_unlearn.grad_norms.fused_units import torch_func_grads

        return torch_func_grads(self, layer, inputs, g)
