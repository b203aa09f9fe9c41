"""Where the monitor's per-rank state meets the other ranks (STYLE §3, §6).

The dense per-example tables reduce by sum in one place (:func:`reduce_ledger_into`); a NaN / inf
norm is flagged on the device and every rank raises together (:class:`NonFiniteFlag`).
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_unlearn.accounting import PrivacyLedger
from lightning_unlearn.errors import NonFiniteGradientError

__all__ = ["NonFiniteFlag", "nonfinite_error", "reduce_ledger_into"]


def reduce_ledger_into(trainer: pl.Trainer, pending: PrivacyLedger, target: PrivacyLedger) -> None:
    """Sum every rank's ``pending`` tables into ``target`` on every rank, then zero ``pending``.

    Dense tables of length N reduce by sum (STYLE §3): ``privacy``, ``counts`` and
    ``sq_norm_sum``. ``last_norm`` reduces by max over the ranks that saw the example since the
    last reduction and keeps the previous value elsewhere. A collective: every rank must call it.
    """
    strategy = trainer.strategy
    privacy = strategy.reduce(pending.privacy, reduce_op="sum")
    counts = strategy.reduce(pending.counts, reduce_op="sum")
    sq = strategy.reduce(pending.sq_norm_sum, reduce_op="sum")
    last = strategy.reduce(pending.last_norm, reduce_op="max")
    assert isinstance(privacy, Tensor)
    assert isinstance(counts, Tensor)
    assert isinstance(sq, Tensor)
    assert isinstance(last, Tensor)
    target.privacy += privacy.to(target.device)
    target.counts += counts.to(target.device)
    target.sq_norm_sum += sq.to(target.device)
    seen = counts.to(target.device) > 0
    target.last_norm.copy_(torch.where(seen, last.to(target.device), target.last_norm))
    pending.reset()


def nonfinite_error(bad_ids: Tensor | None) -> NonFiniteGradientError:
    """The error for NaN/inf per-sample norms, naming the ids when known."""
    which = "" if bad_ids is None else f" for sample ids {bad_ids[:10].tolist()}"
    return NonFiniteGradientError(
        f"Expected finite per-sample gradient norms, but got NaN or inf{which}. The loss or "
        "the gradients overflowed or are undefined: lower the learning rate, check the "
        "inputs and the loss for NaN, or use `precision='16-mixed'` with a GradScaler "
        "(whose overflow steps the monitor skips)."
    )


class NonFiniteFlag:
    """NaN / inf per-sample norms: raised at once on one CPU process, else flagged on the device.

    On a single CPU process the check is free, so it raises at once naming the ids. Otherwise
    a device flag is set and checked by :meth:`raise_if_set` (at epoch end and before a
    checkpoint), so the step never waits for the device and all DDP ranks raise together (one
    rank raising alone would leave the others hanging).

    Args:
        device: where the flag lives (the module's device).
        world_size: the number of ranks.
    """

    def __init__(self, device: torch.device, world_size: int) -> None:
        self.flag = torch.zeros((), dtype=torch.bool, device=device)
        self.world_size = world_size

    def check(self, norms: Tensor, ids: Tensor) -> None:
        """Check one step's (or sweep batch's) ``[B]`` norms of the examples ``ids``."""
        finite = torch.isfinite(norms)
        if norms.device.type == "cpu" and self.world_size == 1:
            if not bool(finite.all()):
                raise nonfinite_error(ids[~finite.to(ids.device)])
        else:
            self.flag |= ~finite.all()

    def raise_if_set(self, trainer: pl.Trainer) -> None:
        """Raise on every rank when any rank flagged a non-finite norm (a collective)."""
        flag = self.flag
        if trainer.world_size > 1:
            flag = trainer.strategy.reduce(flag.int(), reduce_op="max")
        if bool(flag):
            raise nonfinite_error(None)
