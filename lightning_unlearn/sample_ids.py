"""How an example's stable id is read (THEORY §1): from the batch, or from the loader's sampler.

A shared leaf module (torch only, beside :mod:`~lightning_unlearn.validation`): the data
package, the monitor and the evaluations all read ids through it, so the pure evaluation layer
(:mod:`lightning_unlearn.evaluation.functional`) needs nothing of :mod:`lightning_unlearn.data`.
The data package re-exports every name (``lightning_unlearn.data.get_sample_ids``, ...).

**From the batch** (:func:`get_sample_ids`): a named tuple with a ``sample_id`` field or a dict
with the key ``"sample_id"`` (what :class:`~lightning_unlearn.data.IndexedDataset` items collate
to), or any batch through a user's ``sample_id_fn``.

**From the sampler.** A map-style ``DataLoader`` fetches every batch from one list of indices
drawn from its batch sampler, and returns the batches in the order the lists were drawn, also
with worker processes and prefetching (unless it was built with ``in_order=False``). So the ids
of the batches can be read *beside* the data, without touching the dataset or the batch:
:func:`record_sample_ids` wraps the loader's batch sampler in place so that every index list it
yields is also appended to a FIFO queue in the main process, and the consumer pops one list per
batch, in order. The ids are indices into ``loader.dataset``
(:func:`~lightning_unlearn.data.sampler_ids.resolve_indexed` maps them through ``Subset``
layers to the ids of an ``IndexedDataset`` beneath). Only the main process touches the queue:
workers receive index lists from it, they never draw them, so nothing here needs to be
picklable or shared.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from lightning_unlearn.errors import MissingSampleIdError

__all__ = [
    "SAMPLE_ID_KEY",
    "SampleIdFn",
    "SamplerIdRecorder",
    "get_sample_ids",
    "iterate_with_sampler_ids",
    "record_sample_ids",
    "release_sample_ids",
    "sampler_ids_unreadable_reason",
]

SAMPLE_ID_KEY = "sample_id"
"""The key (dict batches) or field (named-tuple batches) that carries the ids."""

SampleIdFn = Callable[[Any], torch.Tensor]


def get_sample_ids(batch: Any, sample_id_fn: SampleIdFn | None = None) -> torch.Tensor:
    """Pull the sample ids out of a batch as a 1-D integer tensor.

    Args:
        batch: a batch made from an :class:`~lightning_unlearn.data.IndexedDataset` (a named
            tuple with a ``sample_id`` field, or a dict with the key ``"sample_id"``), or any
            batch when ``sample_id_fn`` is given.
        sample_id_fn: optional user function ``batch -> ids`` for custom batch structures.

    Returns:
        The ids as a 1-D ``torch.long`` tensor on the batch's device.

    Raises:
        MissingSampleIdError: the batch carries no ids; the message says how to add them.
    """
    if sample_id_fn is not None:
        ids = sample_id_fn(batch)
    elif isinstance(batch, Mapping) and SAMPLE_ID_KEY in batch:
        ids = batch[SAMPLE_ID_KEY]
    elif isinstance(batch, tuple) and hasattr(batch, SAMPLE_ID_KEY):
        ids = getattr(batch, SAMPLE_ID_KEY)
    else:
        raise MissingSampleIdError(
            "The batch carries no sample ids (got a batch of type "
            f"{type(batch).__name__}). Wrap your training dataset in "
            "`lightning_unlearn.data.IndexedDataset(dataset)` so each item carries its id, or "
            "pass `sample_id_fn=lambda batch: ...` that returns the ids of a custom batch."
        )
    ids = torch.as_tensor(ids)
    if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise MissingSampleIdError(
            "Expected the sample ids to be a 1-D integer tensor, but got dtype "
            f"{ids.dtype} and shape {tuple(ids.shape)}; check `sample_id_fn` or the dataset."
        )
    return ids.long()


_ATTR = "__lightning_unlearn_recorder__"


class SamplerIdRecorder:
    """FIFO of the index lists a wrapped sampler has yielded and no consumer has taken yet.

    ``None`` entries stand for index lists that were not integer sequences (a custom batch
    sampler yielding keys): their batches have no readable ids.
    """

    def __init__(self) -> None:
        self._queue: deque[list[int] | None] = deque()
        self.iterations = 0

    def __len__(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        """A new pass over the sampler began: what an abandoned pass left is dropped.

        Lightning replaces the iterator at every epoch (and when a run stops early the
        prefetched lists of the old pass are never trained on), so only the newest pass counts.
        """
        self._queue.clear()
        self.iterations += 1

    def push(self, indices: Any) -> None:
        """Record one yielded index list (a single index for a loader without batching)."""
        try:
            items = [indices] if isinstance(indices, int) else list(indices)
            self._queue.append([int(i) for i in items] if _all_ints(items) else None)
        except TypeError:
            self._queue.append(None)

    def pop(self) -> Tensor | None:
        """The ids of the next batch (1-D ``long`` on the CPU), or None if they were unreadable.

        Raises:
            IndexError: nothing was recorded (the batch did not come from the wrapped sampler).
        """
        entry = self._queue.popleft()
        return None if entry is None else torch.tensor(entry, dtype=torch.long)

    def clear(self) -> None:
        """Drop every recorded list."""
        self._queue.clear()


def _all_ints(items: list[Any]) -> bool:
    return all(
        isinstance(i, int)
        or (isinstance(i, Tensor) and i.numel() == 1 and not i.is_floating_point())
        for i in items
    )


class _RecordingSampler:
    """Delegates to the loader's (batch) sampler and records what it yields."""

    def __init__(self, inner: Any, recorder: SamplerIdRecorder) -> None:
        self.__dict__["_inner"] = inner
        self.__dict__["_recorder"] = recorder

    def __iter__(self) -> Iterator[Any]:
        recorder: SamplerIdRecorder = self.__dict__["_recorder"]
        recorder.start()
        for indices in self.__dict__["_inner"]:
            recorder.push(indices)
            yield indices

    def __len__(self) -> int:
        return len(self.__dict__["_inner"])

    def __getattr__(self, name: str) -> Any:  # batch_size, drop_last, sampler, set_epoch, ...
        inner = self.__dict__.get("_inner")
        if inner is None:  # during unpickling, before __dict__ is restored
            raise AttributeError(name)
        return getattr(inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.__dict__["_inner"], name, value)


def sampler_ids_unreadable_reason(loader: Any) -> str | None:
    """Why the sampler of ``loader`` cannot give the ids of its batches (None if it can)."""
    if not isinstance(loader, DataLoader):
        return f"the training data is a {type(loader).__name__}, not a single `DataLoader`"
    if isinstance(loader.dataset, IterableDataset):
        return "its dataset is an `IterableDataset`, whose batches are not drawn by a sampler"
    if not getattr(loader, "in_order", True):
        return "it was built with `in_order=False`, so batches may come out of sampler order"
    return None


def record_sample_ids(loader: DataLoader) -> SamplerIdRecorder:
    """Wrap ``loader``'s batch sampler in place so every index list it yields is recorded.

    Idempotent: a loader already wrapped returns its recorder. The wrapping takes effect for
    iterators created afterwards (``iter(loader)``); :func:`release_sample_ids` undoes it.

    Args:
        loader: a map-style ``DataLoader`` (see :func:`sampler_ids_unreadable_reason`).

    Returns:
        The recorder whose :meth:`~SamplerIdRecorder.pop` gives the ids of the next batch.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> loader = DataLoader(TensorDataset(torch.arange(6.0)), batch_size=4, shuffle=True)
        >>> recorder = record_sample_ids(loader)
        >>> for (x,) in loader:
        ...     assert recorder.pop().tolist() == x.long().tolist()
    """
    existing = loader.__dict__.get(_ATTR)
    if existing is not None:
        return existing[0]
    recorder = SamplerIdRecorder()
    # DataLoader refuses to re-assign its samplers once built; the instance dict is the same
    # attribute without that guard. Which of the two the iterators read: `_index_sampler`.
    name = "batch_sampler" if loader._auto_collation else "sampler"
    original = loader.__dict__[name]
    loader.__dict__[name] = _RecordingSampler(original, recorder)
    loader.__dict__[_ATTR] = (recorder, name, original)
    return recorder


def release_sample_ids(loader: Any) -> None:
    """Undo :func:`record_sample_ids` (no-op for a loader that is not wrapped)."""
    state = getattr(loader, "__dict__", {}).pop(_ATTR, None)
    if state is not None:
        _, name, original = state
        loader.__dict__[name] = original


def iterate_with_sampler_ids(loader: DataLoader) -> Iterator[tuple[Any, Tensor | None]]:
    """Yield ``(batch, ids)`` of one pass over ``loader``; ids from its sampler (or None).

    The pass records into a recorder of its own, beneath any wrapping already in place (the
    monitor's queue of the training pass is left untouched), and the loader's sampler is put
    back afterwards.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset, Subset
        >>> part = Subset(TensorDataset(torch.arange(10.0)), [7, 2, 5])
        >>> [ids.tolist() for _, ids in iterate_with_sampler_ids(DataLoader(part, batch_size=2))]
        [[0, 1], [2]]
    """
    name = "batch_sampler" if loader._auto_collation else "sampler"
    current = loader.__dict__[name]
    base = current.__dict__["_inner"] if isinstance(current, _RecordingSampler) else current
    recorder = SamplerIdRecorder()
    loader.__dict__[name] = _RecordingSampler(base, recorder)
    try:
        for batch in loader:
            yield batch, recorder.pop()
    finally:
        loader.__dict__[name] = current
