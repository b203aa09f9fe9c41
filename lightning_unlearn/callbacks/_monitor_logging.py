"""What the monitor writes to the loggers: the per-epoch ``privacy/`` scalars (THEORY §4) and
TensorBoard histograms; and how it keeps the user's logging quiet while it reuses
``training_step`` for a sweep."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from lightning_unlearn.accounting import PrivacyLedger, rdp_to_epsilon

__all__ = ["epoch_metrics", "log_epoch", "report_mask", "silenced_logging", "write_histograms"]


def epoch_metrics(
    ledger: PrivacyLedger,
    mask: Tensor,
    delta: float,
    worst_case_rdp: Tensor | None,
) -> dict[str, float]:
    """The ``privacy/`` scalars of one epoch (THEORY §4).

    Per-instance epsilons are summarised over the examples selected by ``mask`` (seen and
    tracked); the worst case is the data-independent epsilon of the same run, when defined.
    """
    eps, _ = ledger.epsilon(delta)
    values = eps[mask]
    metrics: dict[str, float] = {"privacy/seen_fraction": ledger.seen_fraction()}
    if values.numel() > 0:
        q = torch.quantile(
            values, torch.tensor([0.5, 0.9], dtype=values.dtype, device=values.device)
        )
        metrics["privacy/epsilon_median"] = float(q[0])
        metrics["privacy/epsilon_p90"] = float(q[1])
        metrics["privacy/epsilon_max"] = float(values.max())
    if worst_case_rdp is not None:
        worst, _ = rdp_to_epsilon(worst_case_rdp, ledger.alphas, delta)
        metrics["privacy/epsilon_worst_case"] = float(worst)
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


def write_histograms(loggers: Sequence[Any], ledger: PrivacyLedger, mask: Tensor, step: int) -> int:
    """Histograms of ``log10 P(x, alpha)`` per order and of the last per-sample norms.

    Written to every :class:`TensorBoardLogger`; other loggers have no histograms. Returns the
    number of TensorBoard loggers written to.
    """
    written = 0
    for logger in loggers:
        if not isinstance(logger, TensorBoardLogger):
            continue
        writer = logger.experiment
        privacy = ledger.privacy[mask].detach().cpu()
        for k, alpha in enumerate(ledger.alphas):
            col = privacy[:, k]
            col = col[col > 0]
            if col.numel() > 0:
                writer.add_histogram(f"privacy/log10_P_alpha{alpha}", col.log10(), step)
        norms = ledger.last_norm[(ledger.counts > 0) & mask].detach().cpu()
        if norms.numel() > 0:
            writer.add_histogram("privacy/grad_norm", norms, step)
        written += 1
    return written


@contextmanager
def silenced_logging(pl_module: pl.LightningModule) -> Iterator[None]:
    """Turn ``self.log`` / ``self.log_dict`` into no-ops while a sweep reuses training_step."""

    def _noop(*args: Any, **kwargs: Any) -> None:
        return None

    pl_module.log = _noop  # type: ignore[method-assign]
    pl_module.log_dict = _noop  # type: ignore[method-assign]
    try:
        yield
    finally:
        del pl_module.log
        del pl_module.log_dict


def report_mask(ledger: PrivacyLedger, tracked: Tensor | None, *, swept: bool) -> Tensor:
    """The examples the epoch summaries describe: seen (online; with a loss, sweep) and tracked."""
    mask = ledger.privacy[:, 0] > 0 if swept else ledger.counts > 0
    return mask if tracked is None else mask & tracked


def log_epoch(
    loggers: Sequence[Any],
    ledger: PrivacyLedger,
    mask: Tensor,
    step: int,
    *,
    delta: float,
    worst_case_rdp: Tensor | None,
    histograms: bool,
) -> None:
    """Write one epoch's :func:`epoch_metrics` to every logger (and the histograms)."""
    metrics = epoch_metrics(ledger, mask, delta, worst_case_rdp)
    for logger in loggers:
        logger.log_metrics(metrics, step=step)
    if histograms:
        write_histograms(loggers, ledger, mask, step)
