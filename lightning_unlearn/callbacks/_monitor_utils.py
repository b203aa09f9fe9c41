"""Helpers of :class:`~lightning_unlearn.callbacks.PerInstancePrivacyMonitor`.

Kept apart from the callback so that it reads as the sequence of Lightning hooks: discovering
the training data (size, batch size, a fingerprint), buffering per-step observations for one
batched ledger update, reducing dense per-example tables across ranks, and the per-epoch
summaries written to the loggers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_unlearn.accounting import PrivacyLedger, rdp_to_epsilon
from lightning_unlearn.errors import NonFiniteGradientError

__all__ = [
    "RunPlan",
    "StepBuffer",
    "TrainData",
    "epoch_metrics",
    "find_train_data",
    "nonfinite_error",
    "plan_run",
    "reduce_ledger_into",
    "silenced_logging",
    "update_in_step_order",
    "write_histograms",
]


@dataclass(frozen=True)
class TrainData:
    """What the monitor needs to know about the training data of one rank."""

    dataset: Any
    num_samples: int
    batch_size: int | None
    collate_fn: Any


def find_train_data(trainer: pl.Trainer) -> TrainData | None:
    """The training ``DataLoader``'s dataset, size, batch size and collate function.

    Returns None when the training data is not a single map-style ``DataLoader`` (several
    loaders, an iterable dataset without ``__len__``); the monitor then needs ``num_samples``
    and ``sample_rate`` from the user.
    """
    loader = trainer.train_dataloader
    if not isinstance(loader, DataLoader):
        return None
    dataset = loader.dataset
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None
    batch_size = loader.batch_size
    if batch_size is None and loader.batch_sampler is not None:
        batch_size = getattr(loader.batch_sampler, "batch_size", None)
    return TrainData(dataset, n, batch_size, loader.collate_fn)


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


@dataclass(frozen=True)
class RunPlan:
    """Sizes and rates of one ``fit`` (THEORY §1: the global batch and q)."""

    data: TrainData | None
    num_samples: int
    accumulate: int
    global_batch: int
    sample_rate: float


def plan_run(
    trainer: pl.Trainer,
    automatic_optimization: bool,
    num_samples: int | None,
    sample_rate: float | None,
    ledger_size: int | None = None,
) -> RunPlan:
    """N, the global batch (per-rank batch x world size x accumulation) and ``q``.

    ``ledger_size`` is the size of the id space when it is larger than the loader's dataset
    (an ``IndexedDataset`` split after wrapping: ids of the full set); ``q`` still comes from
    the examples the loader trains on.

    Raises:
        ValueError: when N or the batch size cannot be inferred and was not given.
    """
    data = find_train_data(trainer)
    trained = num_samples or (data.num_samples if data is not None else None)
    n = num_samples or ledger_size or trained
    if n is None or trained is None:
        raise ValueError(
            "Expected a single map-style training DataLoader to infer the data set size, but "
            "got another kind of training data; pass `num_samples=` (and `sample_rate=`)."
        )
    accum = trainer.accumulate_grad_batches if automatic_optimization else 1
    local_batch = data.batch_size if data is not None else None
    if local_batch is None:
        if sample_rate is None:
            raise ValueError(
                "Expected a DataLoader with a `batch_size` to infer `sample_rate`, but it has "
                "none; pass `sample_rate=` to the monitor."
            )
        global_batch = max(1, round(sample_rate * n))
    else:
        global_batch = local_batch * trainer.world_size * accum
    q = sample_rate if sample_rate is not None else min(1.0, global_batch / trained)
    return RunPlan(data, n, accum, global_batch, q)


def nonfinite_error(bad_ids: Tensor | None) -> NonFiniteGradientError:
    """The error for NaN/inf per-sample norms, naming the ids when known."""
    which = "" if bad_ids is None else f" for sample ids {bad_ids[:10].tolist()}"
    return NonFiniteGradientError(
        f"Expected finite per-sample gradient norms, but got NaN or inf{which}. The loss or "
        "the gradients overflowed or are undefined: lower the learning rate, check the "
        "inputs and the loss for NaN, or use `precision='16-mixed'` with a GradScaler "
        "(whose overflow steps the monitor skips)."
    )
