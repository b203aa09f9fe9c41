"""Per-example gradients of whole layers ("units") for the ``"fused"`` engine.

Some layers have no closed-form norm rule: recurrent layers (``nn.LSTM``, ``nn.GRU``,
``nn.RNN``), layers that return tuples, and any other layer without buffers. For them the engine
(:mod:`lightning_unlearn.grad_norms.fused`) passes *all* tensor outputs of the call through one
identity :class:`_OutputTap`, whose backward receives every output's gradient at once, and then
forms the per-example gradients of the layer's own parameters (THEORY §1) by re-running the layer
on each example:

.. math::

    \\nabla_\\theta \\ell_i = \\nabla_\\theta \\sum_k \\langle \\bar y_{k,i},\\ f_k(x_i;
        \\theta) \\rangle,

where ``y_k`` are the layer's outputs and ``\\bar y_{k,i}`` example ``i``'s slice of their
gradients. Exact whenever the layer treats examples independently and deterministically (no
BatchNorm, no dropout inside the layer, which re-running cannot reproduce: a recurrent layer with
``dropout > 0`` is refused). The re-run is ``torch.func.vmap`` where it works for the layer's
operations and a loop over the examples otherwise (recurrent layers always loop): a layer's
backward then costs about B extra small forward and backward passes. Inputs passed as keyword
arguments are re-run too (the forward hook captures them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils import _pytree as pytree

from lightning_unlearn.errors import UnsupportedLayerError

if TYPE_CHECKING:
    from lightning_unlearn.grad_norms.fused_ops import FusedEngine

__all__ = ["batch_dims", "per_example_grads", "torch_func_grads"]


class _OutputTap(torch.autograd.Function):
    """Identity on a layer's tensor outputs; its backward hands all of their gradients to
    ``record`` at once (zeros for outputs the loss does not use)."""

    @staticmethod
    def forward(ctx: Any, record: Any, *outs: Tensor) -> tuple[Tensor, ...]:
        ctx.record = record
        return tuple(o.view_as(o) for o in outs)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        ctx.record(grads)
        return (None, *grads)


def tap_outputs(out: Any, record: Any) -> tuple[Any, list[Tensor]]:
    """Route the differentiable tensors of ``out`` (any nesting) through one :class:`_OutputTap`.

    Returns the output with those tensors replaced, and the original tensors (in pytree order)."""
    leaves, spec = pytree.tree_flatten(out)
    picked = [i for i, t in enumerate(leaves) if isinstance(t, Tensor) and t.requires_grad]
    originals = [leaves[i] for i in picked]
    tapped = _OutputTap.apply(record, *originals)
    for i, t in zip(picked, tapped, strict=True):
        leaves[i] = t
    return pytree.tree_unflatten(leaves, spec), originals


def batch_dims(layer: nn.Module, label: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Where the batch lies in each input of ``layer``: a pytree like ``(args, kwargs)`` of ints
    (the batch dimension) or None (not batched: passed whole to every example).

    Recurrent layers follow ``batch_first`` (hidden states have the batch in dimension 1); any
    other layer is batch-first: a tensor is batched when its first dimension is the batch size
    of the first tensor input.

    Raises:
        UnsupportedLayerError: a ``PackedSequence`` input, an unbatched recurrent input, or a
            recurrent layer with ``dropout > 0`` in training mode.
    """
    if isinstance(layer, nn.RNNBase):
        x = args[0] if args else kwargs.get("input")
        if isinstance(x, PackedSequence):
            raise UnsupportedLayerError(
                f"Expected padded tensor inputs to {label!r} ({type(layer).__name__}), but got a "
                "PackedSequence: per-example re-runs need the batch as a tensor dimension. Pass "
                "the padded batch (and mask the padded steps' outputs in the loss) instead of "
                "`pack_padded_sequence`, or freeze the layer."
            )
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise UnsupportedLayerError(
                f"Expected a batched 3-d input to {label!r} ({type(layer).__name__}), but got "
                f"{type(x).__name__}; per-example gradients need a batch dimension."
            )
        if layer.dropout > 0 and layer.num_layers > 1 and layer.training:
            raise UnsupportedLayerError(
                f"Expected {label!r} ({type(layer).__name__}) without inter-layer dropout, but "
                f"got dropout={layer.dropout}: its masks cannot be reproduced per example, so the "
                "per-example gradients would be wrong. Set `dropout=0` and apply `nn.Dropout` "
                "between single-layer recurrent modules (or outside the layer)."
            )
        first = 0 if layer.batch_first else 1
        return pytree.tree_map(
            lambda t: None if not isinstance(t, Tensor) else 1,
            (args, kwargs),
        ), first
    tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
    size = tensors[0].shape[0] if tensors and tensors[0].dim() else None
    dims = pytree.tree_map(
        lambda t: 0 if isinstance(t, Tensor) and t.dim() and t.shape[0] == size else None,
        (args, kwargs),
    )
    return dims, None


def _select(tree: Any, dims: Any, i: int) -> Any:
    leaves, spec = pytree.tree_flatten(tree)
    dim_leaves = pytree.tree_leaves(dims, is_leaf=lambda d: d is None)
    out = [t if d is None else t.narrow(d, i, 1) for t, d in zip(leaves, dim_leaves, strict=True)]
    return pytree.tree_unflatten(out, spec)


def per_example_grads(
    layer: nn.Module,
    label: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    out_grads: list[Tensor],
    batch: int,
) -> dict[nn.Parameter, Tensor]:
    """``{parameter: [B, *shape]}``: each example's gradient of ``sum_k <g_k_i, y_k_i>`` with
    respect to ``layer``'s own trainable parameters, by re-running ``layer`` per example.

    Args:
        layer: the layer (run in its current mode; the caller's hooks must stand aside).
        label: its qualified name, for error messages.
        args: the positional inputs of the call, kwargs: the keyword inputs.
        out_grads: the gradients of the call's differentiable outputs, in pytree order.
        batch: the batch size B.
    """
    params = [(n, p) for n, p in layer.named_parameters(recurse=False) if p.requires_grad]
    dims, rnn_first = batch_dims(layer, label, args, kwargs)
    if rnn_first is not None:
        # the sequence input follows batch_first, hidden states have the batch in dimension 1
        (arg_dims, kw_dims) = dims
        arg_dims = (rnn_first, *arg_dims[1:]) if args else arg_dims
        if not args and "input" in kw_dims:
            kw_dims = {**kw_dims, "input": rnn_first}
        dims = (arg_dims, kw_dims)
    acc = [torch.zeros((batch, *p.shape), dtype=p.dtype, device=p.device) for _, p in params]
    tensors = [p for _, p in params]
    with torch.enable_grad():
        for i in range(batch):
            a_i, k_i = _select((args, kwargs), dims, i)
            a_i = pytree.tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, a_i)
            k_i = pytree.tree_map(lambda t: t.detach() if isinstance(t, Tensor) else t, k_i)
            out = layer(*a_i, **k_i)
            outs = [t for t in pytree.tree_leaves(out) if isinstance(t, Tensor) and t.requires_grad]
            if len(outs) != len(out_grads):
                raise UnsupportedLayerError(
                    f"Expected {label!r} ({type(layer).__name__}) to return the same outputs for "
                    "one example as for the batch, but it did not; per-example re-runs need a "
                    "layer that treats examples independently. Freeze the layer or replace it."
                )
            total = None
            for k, (o, g) in enumerate(zip(outs, out_grads, strict=True)):
                # a recurrent layer's output sequence follows batch_first; h_n, c_n: dim 1
                d = 0 if rnn_first is None else (rnn_first if k == 0 else 1)
                g_i = g.narrow(d, i, 1)
                term = (o * g_i.to(o.dtype)).sum()
                total = term if total is None else total + term
            if total is None:
                continue
            grads = torch.autograd.grad(total, tensors, allow_unused=True)
            for buf, gr in zip(acc, grads, strict=True):
                if gr is not None:
                    buf[i] = gr
    return dict(zip(tensors, acc, strict=True))


def torch_func_grads(
    engine: FusedEngine, layer: nn.Module, inputs: list[Any], g: Tensor
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

    named = dict(layer.named_parameters(recurse=False))
    engine._replaying = True
    try:
        grads = vmap(grad(example_loss), in_dims=(None, 0, *dims))(own, g, *inputs)
    except RuntimeError as err:
        label = engine._names.get(id(layer), type(layer).__name__)
        if "randomness" in str(err):
            raise UnsupportedLayerError(
                f"Expected {label!r} ({type(layer).__name__}) to be deterministic, but it "
                "draws random numbers (dropout inside the layer): re-running it per example "
                "cannot reproduce them. Move the randomness into its own module (e.g. "
                "`nn.Dropout`) outside the layer, or freeze the layer."
            ) from err
        # an operation torch.func cannot batch: a loop over the examples instead (exact)
        from lightning_unlearn.grad_norms.fused_units import per_example_grads

        loop = per_example_grads(layer, label, tuple(inputs), {}, [g], g.shape[0])
        return {p: v for p, v in loop.items()}
    finally:
        engine._replaying = False
    return {named[n]: v for n, v in grads.items()}
