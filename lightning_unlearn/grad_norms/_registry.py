"""Where the package's ghost-norm samplers are registered: once, by a decorator where each is
defined (Opacus' ``@register_norm_sampler`` pattern).

:func:`norm_sampler` puts a sampler into :data:`NORM_SAMPLERS` (wrapped so that an empty batch
gives empty norms) and into Opacus' ghost-mode registry; a second sampler for the same layer type
is a :class:`~lightning_unlearn.errors.SamplerRegistrationError`, so two definitions can never
silently race for one layer. :func:`ensure_registered` re-registers only what is missing from
Opacus' registry (a process that reset it, as a benchmark does to time Opacus' own samplers).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from opacus.grad_sample import register_norm_sampler
from torch import Tensor, nn

from lightning_unlearn.errors import SamplerRegistrationError

__all__ = ["NORM_SAMPLERS", "NormSampler", "ensure_registered", "norm_sampler"]

NormSampler = Callable[[nn.Module, list[Tensor], Tensor], dict[Tensor, Tensor]]
"""``sampler(layer, activations, backprops) -> {parameter: Tensor[B] of per-example norms}``."""

NORM_SAMPLERS: dict[type[nn.Module], NormSampler] = {}
"""Layer type -> this package's norm sampler (exact types), filled by :func:`norm_sampler`.

Each entry wraps the public function the decorator was applied to, so that an empty batch gives
empty norms; the entries are the objects registered with Opacus.
"""


def _empty_batch_safe(sampler: NormSampler) -> NormSampler:
    """Return empty norms for an empty batch (Poisson sampling can draw one) instead of failing."""

    @functools.wraps(sampler)
    def guarded(layer: nn.Module, activations: list[Tensor], backprops: Tensor) -> dict:
        if backprops.shape[0] == 0:
            return {
                p: backprops.new_zeros(0)
                for p in layer.parameters(recurse=False)
                if p.requires_grad
            }
        return sampler(layer, activations, backprops)

    return guarded


def norm_sampler(*layer_types: type[nn.Module]) -> Callable[[NormSampler], NormSampler]:
    """Decorator: register the decorated function as the norm sampler of ``layer_types``.

    Registers it in :data:`NORM_SAMPLERS` and with Opacus' ghost mode at once, where it is
    defined; the decorated function is returned unchanged (callable directly, e.g. in tests).

    Raises:
        SamplerRegistrationError: a layer type already has a sampler of this package.

    Example:
        >>> class Scale(nn.Module):
        ...     pass
        >>> @norm_sampler(Scale)
        ... def scale_norm_sample(layer, activations, backprops):
        ...     return {}
        >>> NORM_SAMPLERS[Scale].__wrapped__ is scale_norm_sample
        True
        >>> norm_sampler(Scale)(scale_norm_sample)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lightning_unlearn.errors.SamplerRegistrationError: Expected one norm sampler per layer ...
        >>> del NORM_SAMPLERS[Scale]
    """

    def register(sampler: NormSampler) -> NormSampler:
        for layer_type in layer_types:
            if layer_type in NORM_SAMPLERS:
                first = NORM_SAMPLERS[layer_type]
                raise SamplerRegistrationError(
                    f"Expected one norm sampler per layer type, but {layer_type.__name__} already "
                    f"has `{first.__module__}.{first.__qualname__}` and "
                    f"`{sampler.__module__}.{sampler.__qualname__}` registers it again; keep one."
                )
        guarded = _empty_batch_safe(sampler)
        for layer_type in layer_types:
            NORM_SAMPLERS[layer_type] = guarded
            register_norm_sampler(layer_type)(guarded)
        return sampler

    return register


def ensure_registered() -> int:
    """Register with Opacus those of :data:`NORM_SAMPLERS` its registry lacks (or holds
    another sampler for); returns how many were registered (0 in a process that did not reset
    Opacus' registry)."""
    from opacus.grad_sample import GradSampleHooksFastGradientClipping as Hooks

    missing = [(t, s) for t, s in NORM_SAMPLERS.items() if Hooks.NORM_SAMPLERS.get(t) is not s]
    for layer_type, sampler in missing:
        register_norm_sampler(layer_type)(sampler)
    return len(missing)
