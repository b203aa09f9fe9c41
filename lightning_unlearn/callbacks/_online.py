"""The online estimator of THEORY §3: each observation stands for the ``1/q`` steps of an epoch.

An observation of example ``x`` with ratio ``r`` adds ``(1/q) * eps(alpha; q, r)`` to
``P(x, alpha)``: "the epoch's steps at the norm seen this epoch" for shuffled epochs, unbiased
under Poisson sampling. The steps are buffered on the device and their per-step losses (THEORY
§2) formed in one batched update per flush (:func:`~lightning_unlearn.accounting.
step_rdp_in_pieces`), with the same result as one update per step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_unlearn.accounting import PrivacyLedger, step_rdp_in_pieces
from lightning_unlearn.callbacks._step_buffer import StepBuffer, update_in_step_order

__all__ = ["OnlineEstimator", "tracked_mask"]


class OnlineEstimator:
    """Buffered per-step observations and their flush into a ledger (THEORY §2-§3).

    What a step records (:meth:`record`) is one of three kinds, fixed for a whole ``fit`` by
    :meth:`start`: the step's ratios ``r`` (the default), its already weighted per-step losses
    (a monitor whose ``per_step_loss`` is overridden), or None (``estimator="sweep"``: counts
    and norms only, the sweep adds the losses).

    Args:
        alphas: the ledger's Rényi orders.
        flush_every: steps buffered before :meth:`record` asks for a flush.

    Example:
        >>> import torch
        >>> online = OnlineEstimator(alphas=(2,), flush_every=2)
        >>> online.start(sample_rate=0.5, tracked=None, losses_given=False)
        >>> online.record(torch.tensor([0]), torch.tensor([1.0]), torch.tensor([3.0]))
        False
        >>> ledger = PrivacyLedger(2, alphas=(2,))
        >>> online.flush(ledger)
        >>> ledger.counts.tolist(), round(float(ledger.privacy[0, 0]), 6)  # 2 * eps(2; 0.5, 1)
        ([1, 0], 0.714748)
    """

    def __init__(self, alphas: tuple[int, ...], flush_every: int) -> None:
        self.alphas = alphas
        self.flush_every = flush_every
        self.buffer = StepBuffer()
        self.sample_rate = 1.0
        self.tracked: Tensor | None = None
        self.losses_given = False

    def start(self, *, sample_rate: float, tracked: Tensor | None, losses_given: bool) -> None:
        """Fix a ``fit``'s ``q``, its tracked mask (``[N]`` bool, or None: all) and what
        :meth:`record` is given (weighted losses, or ratios)."""
        self.sample_rate = sample_rate
        self.tracked = tracked
        self.losses_given = losses_given

    def __len__(self) -> int:
        """Steps buffered."""
        return len(self.buffer)

    def record(self, ids: Tensor, values: Tensor | None, norms: Tensor) -> bool:
        """Buffer one step; returns whether ``flush_every`` steps are now buffered."""
        self.buffer.append(ids, values, norms)
        return len(self.buffer) >= self.flush_every

    def flush(self, target: PrivacyLedger | None) -> None:
        """Add the buffered steps to ``target`` in one update (nothing without a target).

        The same rows as one update per step: the per-step loss is elementwise in the ratios,
        sums do not depend on the order and ``last_norm`` takes the last row of each id.
        """
        drained = self.buffer.drain() if target is not None else None
        if drained is None or target is None:
            return
        ids, values, norms = drained
        if values is None:
            rdp = norms.new_zeros((norms.shape[0], len(self.alphas)), dtype=torch.float64)
        else:
            q = self.sample_rate
            rdp = (
                values
                if self.losses_given
                else step_rdp_in_pieces(values, q, self.alphas) * (1.0 / q)
            )
            if self.tracked is not None:
                rdp = rdp * self.tracked[ids].unsqueeze(1)
        update_in_step_order(target, ids, rdp, norms)


def tracked_mask(track_ids: Tensor | None, n: int, device: torch.device) -> Tensor | None:
    """``[N]`` bool of the tracked ids on ``device`` (None: every id is tracked).

    Raises:
        ValueError: the ids are empty or outside ``[0, N)``.
    """
    if track_ids is None:
        return None
    if track_ids.numel() == 0 or int(track_ids.min()) < 0 or int(track_ids.max()) >= n:
        raise ValueError(f"Expected `track_ids` to be non-empty ids in [0, {n}).")
    mask = torch.zeros(n, dtype=torch.bool, device=device)
    mask[track_ids.to(device)] = True
    return mask
