"""Integrity checks of a saved ledger state: its checksum and the plausibility of its values."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from lightning_unlearn.errors import LedgerIntegrityError
from lightning_unlearn.integrity import json_sha256

__all__ = ["CONFIG_KEYS", "TENSORS", "check_plausible", "ledger_checksum"]

TENSORS: tuple[tuple[str, torch.dtype, bool], ...] = (
    # name, dtype, has an order dimension
    ("privacy", torch.float64, True),
    ("counts", torch.int64, False),
    ("sq_norm_sum", torch.float64, False),
    ("last_norm", torch.float64, False),
)
CONFIG_KEYS = ("version", "num_samples", "alphas", "convention", "metadata")
# Relative slack of the order-monotonicity check: P at a higher order is a sum of per-step
# Rényi divergences that are non-decreasing in the order, each rounded at ~1e-16 relative.
_MONOTONE_RTOL = 1e-9


def ledger_checksum(state: dict[str, Any]) -> str:
    """SHA-256 of a ledger state: its configuration and metadata (canonical JSON) and tensors.

    The tensors enter in a fixed order with their dtype, shape and little-endian bytes, so the
    digest is the same on every device and for every file format.

    Args:
        state: a :meth:`PrivacyLedger.state_dict` (its own ``"checksum"`` entry is ignored).

    Returns:
        64 hexadecimal characters.
    """
    digest = hashlib.sha256()
    digest.update(json_sha256({k: state[k] for k in CONFIG_KEYS}).encode())
    for name, _, _ in TENSORS:
        t = state[name].detach().to("cpu").contiguous()
        digest.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()


def check_plausible(state: dict[str, Any], what: str, *, monotone: bool) -> None:
    """Values no run can produce: NaN/inf, negative losses, counts or norms; P falling in alpha."""
    p = state["privacy"]
    checks = (
        ("privacy", p, "the privacy losses P(x, alpha)"),
        ("sq_norm_sum", state["sq_norm_sum"], "the sums of squared norms"),
        ("last_norm", state["last_norm"], "the last norms"),
    )
    for name, t, desc in checks:
        bad = ~torch.isfinite(t) | (t < 0)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise LedgerIntegrityError(
                f"{what} is corrupt: `{name}` ({desc}) holds {int(bad.sum())} non-finite or "
                f"negative value(s), first at sample id {row} ({t[row].tolist()}); no run "
                "produces these. Restore the ledger file from a good copy or recompute it by "
                "re-running training with the monitor."
            )
    counts = state["counts"]
    if bool((counts < 0).any()):
        row = int((counts < 0).nonzero()[0, 0])
        raise LedgerIntegrityError(
            f"{what} is corrupt: `counts` is negative at sample id {row} ({int(counts[row])}). "
            "Restore the ledger file from a good copy or recompute it."
        )
    if monotone and p.shape[1] > 1:
        low, high = p[:, :-1], p[:, 1:]
        bad_rows = (high < low - _MONOTONE_RTOL * low.abs()).any(dim=1)
        if bool(bad_rows.any()):
            row = int(bad_rows.nonzero()[0, 0])
            raise LedgerIntegrityError(
                f"{what} is corrupt: P(x, alpha) decreases with the order alpha at sample id "
                f"{row} ({p[row].tolist()}), but Rényi losses are non-decreasing in alpha "
                "(THEORY §2-§3). Restore the file or recompute the ledger; a ledger filled with "
                "a custom per-step loss that is not a Rényi divergence loads with `verify=False`."
            )
