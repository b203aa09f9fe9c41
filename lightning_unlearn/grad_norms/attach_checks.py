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
    "check_parametrizations",
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


def check_parametrizations(module: nn.Module, excluded: Sequence[str]) -> None:
    """Raise :class:`UnsupportedLayerError` for trainable parametrized tensors
    (``torch.nn.utils.parametrizations.weight_norm``, ``spectral_norm``, ``orthogonal``, any
    ``parametrize.register_parametrization``, and the deprecated ``torch.nn.utils.weight_norm``
    and ``spectral_norm``): a layer's per-sample rule gives the gradient of
    the tensor the parametrization computes, not of the parameters it is computed from, so the
    norm would be wrong. Parameters named in ``excluded`` are exempt.

    Example:
        >>> from torch import nn
        >>> from torch.nn.utils.parametrizations import weight_norm
        >>> check_parametrizations(nn.Sequential(weight_norm(nn.Linear(2, 2))), [])
        Traceback (most recent call last):
        ...
        lightning_unlearn.errors.UnsupportedLayerError: Expected ...
    """
    from torch.nn.utils import parametrize

    found = []
    for name, layer in module.named_modules():
        if not parametrize.is_parametrized(layer):
            continue
        prefix = f"{name}.parametrizations" if name else "parametrizations"
        for tensor, plist in layer.parametrizations.items():
            trainable = [
                f"{prefix}.{tensor}.{n}"
                for n, p in plist.named_parameters()
                if p.requires_grad and f"{prefix}.{tensor}.{n}" not in excluded
            ]
            if trainable:
                kinds = "+".join(type(f).__name__ for f in plist)
                label = f"{name}.{tensor}" if name else tensor
                found.append(f"{label!r} ({kinds}; parameters {trainable})")
    found += _legacy_reparametrizations(module, excluded)
    if found:
        raise UnsupportedLayerError(
            "Expected plain parameters, but got parametrized tensors "
            f"{', '.join(found)}: the per-sample rule of the layer gives the gradient of the "
            "computed tensor, not of the parameters it is computed from, so the norm would be "
            "wrong. Remove the parametrization before training "
            "(`torch.nn.utils.parametrize.remove_parametrizations(layer, name)`), freeze "
            "those parameters, or leave them out of the norm with `exclude=[...]` (the norms "
            "are then approximate)."
        )


def _legacy_reparametrizations(module: nn.Module, excluded: Sequence[str]) -> list[str]:
    """The deprecated ``torch.nn.utils.weight_norm`` / ``spectral_norm`` (forward pre-hooks
    computing ``weight`` from ``weight_g``/``weight_v`` or ``weight_orig``). Their norm is exact
    only while ``g == ||v||`` (at initialisation), so the first-step self-check cannot see it."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    found = []
    for name, layer in module.named_modules():
        for hook in layer._forward_pre_hooks.values():
            if not isinstance(hook, WeightNorm | SpectralNorm):
                continue
            names = [f"{name}.{n}" if name else n for n, _ in layer.named_parameters()]
            trainable = [
                q
                for q, (_, p) in zip(names, layer.named_parameters(), strict=True)
                if p.requires_grad and q not in excluded and q.rsplit(".", 1)[-1] != "bias"
            ]
            if trainable:
                label = f"{name}.{hook.name}" if name else hook.name
                found.append(f"{label!r} ({type(hook).__name__}; parameters {trainable})")
    return found


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
        UnsupportedLayerError: at attach time for recurrent layers, attention and
            ``nn.EmbeddingBag``.
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
    bags = [
        f"{name or '<root>'!r}"
        for name, m in module.named_modules()
        if isinstance(m, nn.EmbeddingBag) and any(p.requires_grad for p in m.parameters())
    ]
    if bags:
        raise UnsupportedLayerError(
            f"Expected layers Opacus' mode={mode!r} computes exactly, but got EmbeddingBag "
            f"{', '.join(bags)}: Opacus' rule for it needs `offsets`, drops repeated indices "
            "within a bag and ignores `per_sample_weights` and mode='max'. Use `mode='fused'` "
            "(the default), which computes its exact per-example gradients for bags given as a "
            "2-D input, or freeze the layer's parameters."
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
