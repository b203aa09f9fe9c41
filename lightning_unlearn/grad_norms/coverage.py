"""No silent omission: every parameter that received a gradient contributes to the norm.

The per-example norm of THEORY §1 sums over *every* trainable parameter the loss reaches. A
parameter used outside any hooked layer's forward (a learnable temperature in
``training_step``, a parameter a layer uses without calling its submodule) gets a gradient
that no per-layer rule sees, and its share of ``||g_i||^2`` would be missing without a word.
:class:`GradientWatch` records, for the parameters whose coverage is not certain in advance,
whether they received a gradient in the last pass: a tensor hook on the parameter, which fires
for ``loss.backward()`` and for ``torch.autograd.grad`` alike (costs one Python call per
watched parameter per pass, nothing on the others). :func:`coverage_error` is the named error
raised when one of them received a gradient that the engine did not account for.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_unlearn.errors import NormHooksError

__all__ = ["GradientWatch", "coverage_error", "parameter_share", "warn_excluded"]


class GradientWatch:
    """Which of ``params`` received a gradient since the last :meth:`clear`.

    Args:
        params: ``{qualified_name: parameter}`` to watch.

    Example:
        >>> import torch
        >>> w = GradientWatch({"t": torch.nn.Parameter(torch.ones(()))})
        >>> (w.params["t"] * 2).backward()
        >>> sorted(w.received({}))
        ['t']
        >>> w.remove()
    """

    def __init__(self, params: dict[str, nn.Parameter]) -> None:
        self.params = params
        self.got: set[int] = set()
        self._handles: list[RemovableHandle] = [
            p.register_hook(functools.partial(self._mark, id(p))) for p in params.values()
        ]

    def _mark(self, key: int, grad: Tensor) -> None:
        self.got.add(key)

    def received(self, covered: set[int] | dict[int, object]) -> list[str]:
        """Names of the watched parameters that got a gradient but are not in ``covered``."""
        if not self.got:
            return []
        return [n for n, p in self.params.items() if id(p) in self.got and id(p) not in covered]

    def clear(self) -> None:
        self.got.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.got.clear()


def parameter_share(module: nn.Module, names: Iterable[str]) -> float:
    """Fraction of ``module``'s trainable parameter entries held by the parameters ``names``."""
    chosen = set(names)
    total = part = 0
    for name, p in module.named_parameters():
        if p.requires_grad:
            total += p.numel()
            part += p.numel() if name in chosen else 0
    return part / total if total else 0.0


def warn_excluded(module: nn.Module, names: list[str], why: str) -> None:
    """Warn (once per call site and message) that ``names`` are left out of the norm."""
    share = parameter_share(module, names)
    warnings.warn(
        f"Excluding {len(names)} parameter(s) from the per-example gradient norm ({why}): "
        f"{', '.join(names)}; they hold {share:.2%} of the trainable parameter entries. The "
        "norms, and every privacy loss formed from them, describe the other parameters only.",
        UserWarning,
        stacklevel=3,
    )


def coverage_error(names: list[str], mode: str) -> NormHooksError:
    """The named error for parameters that received a gradient no norm rule accounted for."""
    shown = ", ".join(repr(n) for n in names[:20]) + (" ..." if len(names) > 20 else "")
    hint = "" if mode == "fused" else " `mode='fused'` (the default) covers more layer types."
    return NormHooksError(
        f"Expected every parameter that receives a gradient to contribute to the per-example "
        f"norm, but {shown} received a gradient in this backward pass that no per-sample rule "
        "saw: used outside its layer's forward (e.g. directly in `training_step`, or by a "
        "module that does not call the submodule owning it), or by a layer in eval mode, or "
        "through a layer the hooks cannot see (a torch.compile'd module). Use the parameter "
        "inside a submodule's forward (e.g. a small `nn.Module` holding it), keep that layer "
        "in training mode, freeze it (`requires_grad_(False)`), or leave it out explicitly "
        f"with `exclude=[...]` / `exclude_unsupported=True` (the norm then omits it).{hint}"
    )
