"""Ghost-norm samplers for layers Opacus has none for (Conv, GroupNorm, LayerNorm, ...).

Filled in by the performance work (issue 7); until then no extra sampler is registered and
Opacus falls back to materialising per-layer per-sample gradients for those layers.
"""

from __future__ import annotations

__all__ = ["register_norm_samplers"]


def register_norm_samplers() -> None:
    """Register this package's norm samplers with Opacus (idempotent)."""
