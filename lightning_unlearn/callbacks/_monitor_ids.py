"""Where :class:`~lightning_unlearn.callbacks.PerInstancePrivacyMonitor` gets sample ids.

Two sources, in this order of precedence (THEORY §1: every example has a stable id):

1. *explicit* ids carried by the batch: an :class:`~lightning_unlearn.data.IndexedDataset`
   item, a dict with ``"sample_id"``, or what ``sample_id_fn(batch)`` returns;
2. the *sampler*: the index lists the training ``DataLoader``'s batch sampler yielded
   (:mod:`lightning_unlearn.data.sampler_ids`), indices into ``loader.dataset``. The user's
   dataset, batches and ``training_step`` stay as they are.

When both exist and the relation between them is known (an ``IndexedDataset``, possibly under
``Subset`` layers), they must agree, else :class:`~lightning_unlearn.errors.SampleIdMismatchError`.

Lightning creates the training iterator in ``FitLoop.setup_data``, before ``on_train_start``,
and with workers index lists are drawn for prefetching right away; creating a second iterator
later would draw another base seed from the global generator and change the run's data order.
So the wrapping happens inside ``setup_data`` itself, at the one point between the loader being
prepared (``DistributedSampler`` injected, resumed loader states loaded) and being iterated:
:meth:`SampleIdSource.install` (``on_fit_start``) wraps the fit loop's
``_load_combined_loader_states`` step for the duration of the fit. It runs again whenever
Lightning re-creates the loader (``reload_dataloaders_every_n_epochs``). The training run is
the same with and without the monitor, draw for draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_unlearn.data.indexed import IndexedDataset, get_sample_ids
from lightning_unlearn.data.sampler_ids import (
    SamplerIdRecorder,
    record_sample_ids,
    release_sample_ids,
    resolve_indexed,
    sampler_ids_unreadable_reason,
)
from lightning_unlearn.errors import MissingSampleIdError, SampleIdMismatchError

__all__ = ["SampleIdSource", "check_id_range"]

_FIXES = (
    "Either use a map-style dataset with a standard (batch) sampler, from which the monitor "
    "reads the ids itself, or make every batch carry its ids: wrap a map-style dataset in "
    "`lightning_unlearn.data.IndexedDataset`, or pass `sample_id_fn=lambda batch: ...` to "
    "`PerInstancePrivacyMonitor` returning the ids of a batch (for an `IterableDataset`, yield "
    "them with each item)."
)


def _train_loaders(trainer: pl.Trainer) -> list[Any]:
    combined = trainer.fit_loop._combined_loader
    return list(combined.flattened) if combined is not None else []


class SampleIdSource:
    """The ids of every training batch: explicit ones first, else the sampler's.

    Args:
        sample_id_fn: the monitor's ``sample_id_fn`` (or None).
    """

    def __init__(self, sample_id_fn: Callable[[Any], Tensor] | None) -> None:
        self.sample_id_fn = sample_id_fn
        self._loader: Any = None
        self._recorder: SamplerIdRecorder | None = None
        self._reason: str | None = "training has not started"
        self._indexed: IndexedDataset | None = None
        self._index_map: Tensor | None = None
        self._checked = False
        self._installed: Any = None  # the fit loop whose setup step is wrapped
        self._warned_resume = False

    # ------------------------------------------------------------------ id space
    def id_space(self, dataset: Any) -> tuple[Any, int | None]:
        """The data set whose positions the ids index and its size, for a loader over
        ``dataset``: an ``IndexedDataset`` beneath ``Subset`` layers (wrapped, then split) gives
        its full-set ids; otherwise the ids are positions of ``dataset`` (size None: its own)."""
        indexed, index_map = resolve_indexed(dataset)
        if indexed is not None and index_map is not None:
            return indexed, len(indexed)
        return dataset, None

    # ------------------------------------------------------------------ lifecycle
    def install(self, trainer: pl.Trainer) -> None:
        """``on_fit_start``: wrap every training loader Lightning prepares, before it iterates."""
        fit_loop = trainer.fit_loop
        original = getattr(fit_loop, "_load_combined_loader_states", None)
        if self._installed is not None:
            return
        if original is None:
            self._reason = "this Lightning version has no `FitLoop._load_combined_loader_states`"
            return
        source = self

        def load_states_then_wrap() -> None:
            original()
            source._wrap(_train_loaders(trainer))

        fit_loop._load_combined_loader_states = load_states_then_wrap  # type: ignore[method-assign]
        self._installed = fit_loop
        if fit_loop._combined_loader is not None:  # prepared by an earlier fit: iterated anew
            self._wrap(_train_loaders(trainer))

    def attach(self, trainer: pl.Trainer) -> None:
        """``on_train_start``: warn about a mid-epoch resume the loader cannot restore."""
        self._warn_if_resumed_mid_epoch(trainer, _train_loaders(trainer))

    def detach(self) -> None:
        """Undo the wrapping (``teardown``, ``on_exception``)."""
        if self._installed is not None:
            self._installed.__dict__.pop("_load_combined_loader_states", None)
            self._installed = None
        self._release()

    def _release(self) -> None:
        if self._loader is not None:
            release_sample_ids(self._loader)
        self._loader, self._recorder = None, None

    def _wrap(self, loaders: list[Any]) -> None:
        self._release()
        if len(loaders) != 1:
            self._reason = f"the training data has {len(loaders)} loaders, not one `DataLoader`"
            return
        loader = loaders[0]
        self._reason = sampler_ids_unreadable_reason(loader)
        self._loader = loader
        if self._reason is None:
            assert isinstance(loader, DataLoader)
            self._recorder = record_sample_ids(loader)
            self._indexed, self._index_map = resolve_indexed(loader.dataset)
        self._checked = False

    def _warn_if_resumed_mid_epoch(self, trainer: pl.Trainer, loaders: list[Any]) -> None:
        """Lightning 2.6 resumes a mid-epoch checkpoint with a loader that does not restore its
        position by iterating the loader from its first batch and ending the epoch after the
        batches the checkpoint had left (``FitLoop.setup_data`` / ``_TrainingEpochLoop.reset``:
        ``fetched`` starts at the restored batch count): the data of the rest of the epoch is
        not the data the interrupted run would have seen."""
        if self._warned_resume or not trainer.fit_loop.restarting:
            return
        batches = trainer.num_training_batches
        if not math.isfinite(batches) or not loaders:
            return
        per_epoch = math.ceil(batches / max(1, trainer.accumulate_grad_batches))
        stateful = all(
            callable(getattr(dl, "state_dict", None))
            and callable(getattr(dl, "load_state_dict", None))
            for dl in loaders
        )
        if trainer.global_step % per_epoch == 0 or stateful:
            return
        self._warned_resume = True
        done = trainer.global_step % per_epoch
        rank_zero_warn(
            f"Resuming in the middle of an epoch ({done} of its {per_epoch} optimizer steps were "
            "done) with a training DataLoader that does not restore its position: Lightning "
            "starts the epoch's data again from its first batch and ends the epoch after the "
            "remaining steps, so this run re-trains part of an epoch and skips the rest. The "
            "privacy ledger records exactly the examples really trained on (their counts say "
            "so), not those of an uninterrupted run. Resume from an end-of-epoch checkpoint, or "
            "use a loader with `state_dict` / `load_state_dict` that restores its position."
        )

    # ------------------------------------------------------------------ per batch
    def batch_ids(self, batch: Any) -> Tensor:
        """The ids of the batch ``on_train_batch_start`` received (one sampler list popped).

        Raises:
            MissingSampleIdError: neither the batch nor the sampler gives ids.
            SampleIdMismatchError: both do, and they disagree.
        """
        sampled = self._pop()
        try:
            explicit = get_sample_ids(batch, self.sample_id_fn)
        except MissingSampleIdError:
            if self.sample_id_fn is not None:
                raise
            explicit = None
        if explicit is None:
            if sampled is None:
                raise MissingSampleIdError(
                    "The monitor cannot tell which examples are in this batch: the batch "
                    f"carries no sample ids and the sampler's cannot be read ({self._reason}). "
                    + _FIXES
                )
            return sampled
        known = sampled is not None and self._indexed is not None
        if known and (not self._checked or explicit.device.type == "cpu"):
            assert sampled is not None
            self._check_agree(explicit, sampled)
        return explicit

    def _pop(self) -> Tensor | None:
        if self._recorder is None:
            return None
        try:
            return self._recorder.pop()
        except IndexError:
            self._reason = "no index list was recorded for this batch"
            return None

    def _check_agree(self, explicit: Tensor, sampled: Tensor) -> None:
        expected = sampled if self._index_map is None else self._index_map[sampled]
        got = explicit.detach().to("cpu", torch.long)
        if not torch.equal(expected, got):
            raise SampleIdMismatchError(
                f"The batch carries sample ids {got[:8].tolist()} but the DataLoader's sampler "
                f"drew the examples with ids {expected[:8].tolist()} (mapped through the "
                "`Subset` layers to the `IndexedDataset`). A custom collate_fn or batch sampler "
                "reorders or replaces examples; fix it, or drop the `IndexedDataset` so the "
                "monitor uses the sampler's ids."
            )
        self._checked = True


def check_id_range(ids: Tensor, n: int) -> None:
    """Ids of a batch index the ledger (one host sync: on the first batch, or ids on the CPU).

    Raises:
        ValueError: an id outside ``[0, n)``, naming the range seen and the fix.
    """
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
        raise ValueError(
            f"Expected sample ids in [0, {n}) (the ledger's size: `num_samples`, default "
            f"the size of the training DataLoader's dataset), but got ids in "
            f"[{int(ids.min())}, {int(ids.max())}]. Ids carried by the batch must index "
            "that dataset (or the `IndexedDataset` beneath its `Subset` layers); pass "
            "`num_samples=` the size of the set your ids index."
        )
