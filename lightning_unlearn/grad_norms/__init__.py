"""Per-sample gradient norms through Opacus hooks; the only package that imports opacus.

:func:`attach_norm_hooks` attaches Opacus (>= 1.6) hooks to a module in place (no wrapping) and
returns a :class:`NormHooks` handle whose :meth:`~NormHooks.per_sample_norms` gives each
example's gradient norm after an ordinary backward pass (THEORY §1). Every parameter that
received a gradient contributes, or reading the norms raises a named error listing it
(:mod:`lightning_unlearn.grad_norms.coverage`). The default ``"fused"`` engine
(:mod:`lightning_unlearn.grad_norms.fused`) also covers recurrent layers, layers returning
tuples, ``nn.MultiheadAttention``, shared layers, tied weights, HF transformers' broadcast
``position_ids`` and gradient checkpointing. Importing this package registers the extra
ghost-norm samplers of :mod:`lightning_unlearn.grad_norms.samplers`.
"""

from lightning_unlearn.grad_norms.hooks import (
    GradSampleMode,
    LossReduction,
    NormHooks,
    attach_norm_hooks,
    find_unsupported_modules,
)

# Importing the samplers registers them, once, where each is defined (`_registry.norm_sampler`).
from lightning_unlearn.grad_norms.samplers import register_norm_samplers

__all__ = [
    "GradSampleMode",
    "LossReduction",
    "NormHooks",
    "attach_norm_hooks",
    "find_unsupported_modules",
    "register_norm_samplers",
]
