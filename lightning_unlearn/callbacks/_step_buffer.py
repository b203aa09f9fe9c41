"""Per-step observations buffered on the device for one batched ledger update (THEORY §2-§3)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_unlearn.accounting import PrivacyLedger

__all__ = ["StepBuffer", "update_in_step_order"]


class StepBuffer:
    """Per-step observations ``(ids, values, norms)`` awaiting one batched ledger update.

    The online estimator's per-step loss (THEORY §2) is a couple of dozen small tensor
    operations whatever the batch size, so it is cheaper once over many steps than once per
    step. Appending keeps references to device tensors and never synchronises with the host.
    ``values`` are the step's ratios ``r``, its already weighted losses, or None (counts and
    norms only); one buffer holds one kind, as the monitor fixes it for a whole ``fit``.

    Example:
        >>> buffer = StepBuffer()
        >>> buffer.append(torch.tensor([0, 1]), torch.tensor([0.5, 1.0]), torch.tensor([2.0, 3.0]))
        >>> buffer.append(torch.tensor([1]), torch.tensor([0.25]), torch.tensor([4.0]))
        >>> len(buffer)
        2
        >>> ids, values, norms = buffer.drain()
        >>> ids.tolist(), values.tolist(), norms.tolist(), len(buffer)
        ([0, 1, 1], [0.5, 1.0, 0.25], [2.0, 3.0, 4.0], 0)
    """

    def __init__(self) -> None:
        self._ids: list[Tensor] = []
        self._values: list[Tensor] = []
        self._norms: list[Tensor] = []

    def __len__(self) -> int:
        """Number of steps (backward passes) buffered."""
        return len(self._ids)

    def append(self, ids: Tensor, values: Tensor | None, norms: Tensor) -> None:
        """Buffer one step's ``[B]`` ids, ``[B, ...]`` values (or None) and ``[B]`` norms."""
        self._ids.append(ids)
        if values is not None:
            self._values.append(values)
        self._norms.append(norms)

    def drain(self) -> tuple[Tensor, Tensor | None, Tensor] | None:
        """The buffered steps concatenated in step order (None when empty); empties the buffer."""
        if not self._ids:
            return None
        ids, values, norms = self._ids, self._values, self._norms
        self.clear()
        assert len(values) in (0, len(ids)), "one kind of values per buffer"
        return torch.cat(ids), torch.cat(values) if values else None, torch.cat(norms)

    def clear(self) -> None:
        """Drop the buffered steps."""
        self._ids, self._values, self._norms = [], [], []


def update_in_step_order(
    ledger: PrivacyLedger, sample_ids: Tensor, rdp: Tensor, grad_norms: Tensor
) -> None:
    """:meth:`PrivacyLedger.update` in which the last row of a repeated id sets ``last_norm``.

    Sums (``privacy``, ``counts``, ``sq_norm_sum``) do not depend on the order of the rows, but
    ``PrivacyLedger.update`` leaves unspecified which duplicate's norm lands in ``last_norm``.
    Rows of several steps can repeat an id (sampling with replacement, ``DistributedSampler``
    padding), so every duplicate is given the norm of its last row before the scatter: the
    result is that of one update per row, in row order. No host synchronisation.

    Example:
        >>> ledger = PrivacyLedger(num_samples=3, alphas=(2,))
        >>> ids, rdp = torch.tensor([2, 0, 2]), torch.ones(3, 1, dtype=torch.float64)
        >>> update_in_step_order(ledger, ids, rdp, torch.tensor([1.0, 5.0, 3.0]))
        >>> ledger.last_norm.tolist(), ledger.counts.tolist()
        ([5.0, 0.0, 3.0], [1, 0, 2])
    """
    ledger.update(sample_ids, rdp, grad_norms)
    if sample_ids.numel() < 2:
        return
    ids = sample_ids.to(device=ledger.device, dtype=torch.int64)
    rows = torch.arange(ids.shape[0], device=ids.device)
    # the last row of every id (one O(N) fill per update, cheaper than sorting the rows)
    last = torch.full((ledger.num_samples,), -1, dtype=torch.int64, device=ids.device)
    last.scatter_reduce_(0, ids, rows, reduce="amax")
    norms = grad_norms.to(device=ledger.device, dtype=torch.float64)
    ledger.last_norm.index_copy_(0, ids, norms[last[ids]])
