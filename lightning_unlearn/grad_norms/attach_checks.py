"""Checks made when norm hooks are attached: layers without per-sample gradients, compiled
submodules, explicit exclusions, and the layers Opacus' modes cannot hook.

Each raises the package's named errors with the layer's qualified name and the fix, before
the first step, rather than letting a wrong norm or a foreign exception reach the user.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from lightning_unlearn.errors import NormHooksError, UnsupportedLayerError

__all__ = [
    "check_not_compiled",
    "find_unsupported_modules",
    "guard_tuple_outputs",
    "resolve_exclude",
]


def find_unsupported_modules(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """List the layers that have no meaningful per-sample gradient.

    A layer is unsupported when it mixes the examples of a batch: every ``BatchNorm`` variant
    (``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm``, lazy ones; with or without running
    statistics or affine parameters: in training it normalises with the batch's statistics),
    and any other layer that owns trainable parameters *and* buffers (running statistics).
    "The gradient of one example's loss" is then not defined. ``InstanceNorm`` and
    ``GroupNorm`` normalise within an example and are fine.

    Args:
        module: the module to inspect (recursively).

    Returns:
        ``(qualified_name, layer)`` pairs, in ``named_modules`` order.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False))
        >>> [name for name, _ in find_unsupported_modules(net)]
        ['1']
    """
    found: list[tuple[str, nn.Module]] = []
    for name, layer in module.named_modules():
        if isinstance(layer, _BatchNorm):
            found.append((name, layer))
            continue
        trainable = any(p.requires_grad for p in layer.parameters(recurse=False))
        if trainable and any(True for _ in layer.buffers(recurse=False)):
            found.append((name, layer))
    return found


def check_not_compiled(module: nn.Module) -> None:
    """Raise :class:`NormHooksError` if ``module`` or a submodule is compiled: a compiled graph
    ignores hooks attached afterwards, so its layers would be missing from the norm."""
    compiled = []
    for name, layer in module.named_modules():
        label = name or "<root>"
        if type(layer).__name__ == "OptimizedModule" or hasattr(layer, "_orig_mod"):
            compiled.append(f"{label!r} (torch.compile wrapper)")
        elif getattr(layer, "_compiled_call_impl", None) is not None:
            compiled.append(f"{label!r} ({type(layer).__name__}.compile())")
    if compiled:
        raise NormHooksError(
            f"Expected an eager module, but got compiled submodules {', '.join(compiled)}: a "
            "compiled graph ignores the per-sample hooks attached afterwards, so its layers "
            "would be silently missing from the norm. Attach the hooks (or start `fit` with the "
            "monitor) on the eager module and compile afterwards, e.g. in "
            "`LightningModule.configure_model`, or train without `torch.compile`."
        )


def resolve_exclude(module: nn.Module, exclude: Sequence[str]) -> list[str]:
    """Qualified names of the trainable parameters named by ``exclude`` (parameter names, or
    module names meaning all their parameters)."""
    if isinstance(exclude, str):
        raise ValueError(
            f"Expected `exclude` to be a list of qualified names, but got the string {exclude!r}."
        )
    params = [n for n, p in module.named_parameters() if p.requires_grad]
    chosen: list[str] = []
    unknown = []
    for item in exclude:
        hits = [n for n in params if n == item or n.startswith(f"{item}.")]
        if not hits:
            unknown.append(item)
        chosen.extend(h for h in hits if h not in chosen)
    if unknown:
        raise ValueError(
            f"Expected `exclude` to name trainable parameters or modules of "
            f"{type(module).__name__}, but got {unknown}; names are those of "
            "`module.named_parameters()` (e.g. 'encoder.0.weight') or of `named_modules()`."
        )
    return chosen


def guard_tuple_outputs(module: nn.Module, mode: str) -> list[RemovableHandle]:
    """Forward hooks, run before Opacus', that turn a trainable layer returning a non-tensor
    (``nn.LSTM``: a tuple; Opacus' hooks fail on it with ``AttributeError``) into a named error.

    Raises:
        UnsupportedLayerError: at attach time for recurrent layers and attention.
    """
    refused = [
        f"{name or '<root>'!r} ({type(m).__name__})"
        for name, m in module.named_modules()
        if isinstance(m, nn.RNNBase | nn.MultiheadAttention)
        and any(p.requires_grad for p in m.parameters())
    ]
    if refused:
        raise UnsupportedLayerError(
            f"Expected layers Opacus' mode={mode!r} can hook, but got {', '.join(refused)}: "
            "they return tuples or use their parameters without calling their submodules, "
            "which Opacus' hooks cannot follow. Use `mode='fused'` (the default), which "
            "computes their exact per-example gradients."
        )
    handles = []
    for name, layer in module.named_modules():
        if any(p.requires_grad for p in layer.parameters(recurse=False)):
            handles.append(
                layer.register_forward_hook(
                    _tensor_output_guard(name or "<root>", mode), prepend=True
                )
            )
    return handles


def _tensor_output_guard(label: str, mode: str) -> Any:
    def hook(layer: nn.Module, inputs: Any, out: Any) -> None:
        if mode == "ghost" and any(
            getattr(p, "_forward_counter", 0) for p in layer.parameters(recurse=False)
        ):
            # Opacus' ghost hooks would raise NotImplementedError here (parameter tying)
            raise UnsupportedLayerError(
                f"Expected each layer to run once per forward pass in Opacus' mode='ghost', but "
                f"{label!r} ({type(layer).__name__}) ran again (a shared layer or tied "
                "weights). Use `mode='fused'` (the default), which sums the calls' per-example "
                "gradients exactly, or `mode='hooks'`."
            )
        if not isinstance(out, Tensor):
            raise UnsupportedLayerError(
                f"Expected {label!r} ({type(layer).__name__}) to return a tensor for Opacus' "
                f"mode={mode!r}, but it returned {type(out).__name__}: Opacus cannot hook it. "
                "Use `mode='fused'` (the default), which supports layers returning tuples."
            )

    return hook
