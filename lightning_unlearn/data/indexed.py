"""Sample ids carried by the items themselves (THEORY §1: every example has a stable id).

The fallback route: for a map-style dataset the monitor and the evaluations read the ids from
the ``DataLoader``'s sampler (:mod:`lightning_unlearn.data.sampler_ids`) and nothing here is
needed. Ids in the batch are needed for an ``IterableDataset`` (no sampler), a batch sampler that
yields something other than indices, or when you want ids of your own (e.g. of a full set that
you split afterwards). :class:`IndexedDataset` attaches them:

* a tuple item ``(x, y)`` becomes ``IndexedItem(x, y, sample_id)``, a named tuple whose last
  field is ``sample_id``. ``default_collate`` and Lightning's device transfer keep named tuples,
  so the batch is still recognisable as carrying ids, and ``x, y, ids = batch`` still unpacks.
* a dict item gets the key ``"sample_id"``.
* any other item ``x`` becomes ``IndexedItem(x, sample_id)``.

So wrapping changes the batches. A bare-tensor item does *not* stay a tensor: a tensor subclass
carrying its id through ``default_collate``, device transfer and every operation of the model
would be fragile and slow, and the sampler already gives the ids of such datasets with the
batches untouched. The docs therefore recommend the wrapper only where the sampler cannot help.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset

# Reading ids is shared by the layers below data (the pure evaluation functions): it lives in
# the leaf module lightning_unlearn.sample_ids; re-exported here, where the ids are attached.
from lightning_unlearn.sample_ids import SAMPLE_ID_KEY, SampleIdFn, get_sample_ids

__all__ = ["SAMPLE_ID_KEY", "IndexedDataset", "SampleIdFn", "get_sample_ids", "indexed_item_type"]

_MAX_ARITY = 16
_module = sys.modules[__name__]


def _make_item_type(arity: int) -> type:
    """A picklable named tuple with ``arity`` data fields followed by ``sample_id``."""
    name = f"IndexedItem{arity}"
    fields = [f"field{i}" for i in range(arity)] + [SAMPLE_ID_KEY]
    cls = collections.namedtuple(name, fields)  # type: ignore[misc]
    cls.__module__ = __name__
    setattr(_module, name, cls)  # picklable by qualified name (DataLoader workers, ddp_spawn)
    return cls


_ITEM_TYPES = {n: _make_item_type(n) for n in range(1, _MAX_ARITY + 1)}


def indexed_item_type(arity: int) -> type:
    """Return the named-tuple type used for items with ``arity`` data fields plus a sample id."""
    if not 1 <= arity <= _MAX_ARITY:
        raise ValueError(f"Expected an item with 1 to {_MAX_ARITY} fields, but got {arity}.")
    return _ITEM_TYPES[arity]


class IndexedDataset(Dataset):
    """Wrap a map-style dataset so that every item carries its integer sample id.

    The id of item ``i`` is ``i``: stable across epochs, shuffling and processes.

    Args:
        dataset: any map-style dataset with ``__len__``.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> ds = IndexedDataset(TensorDataset(torch.zeros(5, 2), torch.arange(5)))
        >>> x, y, ids = next(iter(DataLoader(ds, batch_size=2, shuffle=False)))
        >>> ids.tolist()
        [0, 1]
        >>> get_sample_ids(next(iter(DataLoader(ds, batch_size=3)))).tolist()
        [0, 1, 2]
    """

    def __init__(self, dataset: Any) -> None:
        if isinstance(dataset, IndexedDataset):
            raise ValueError(
                "Expected an un-indexed dataset, but got an `IndexedDataset`; wrap it only once."
            )
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(
                "Expected `dataset` to be a map-style dataset with `__len__` and `__getitem__`, "
                f"but got {type(dataset).__name__}."
            )
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        if isinstance(item, Mapping):
            if SAMPLE_ID_KEY in item:
                raise ValueError(
                    f"Expected dict items without a `{SAMPLE_ID_KEY}` key, but the wrapped "
                    "dataset already has one; do not wrap it in `IndexedDataset`."
                )
            out = dict(item)
            out[SAMPLE_ID_KEY] = index
            return out
        if isinstance(item, tuple | list):
            return indexed_item_type(len(item))(*item, index)
        return indexed_item_type(1)(item, index)
