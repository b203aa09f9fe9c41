"""Sample ids read from the indices a ``DataLoader``'s sampler yields (THEORY §1: stable ids).

The recording is implemented in :mod:`lightning_unlearn.sample_ids` (a leaf module the pure
evaluation functions can import) and re-exported here; :func:`resolve_indexed` is the data
package's own. A map-style ``DataLoader`` fetches every batch from one list of indices drawn
from its batch sampler and returns the batches in the order the lists were drawn (also with
workers), so :func:`record_sample_ids` reads the ids beside the data without touching the
dataset or the batch.

The ids are indices into ``loader.dataset``: for a ``Subset`` or a ``random_split`` part they
are the part's own positions ``[0, len(part))``; :func:`resolve_indexed` maps them through
``Subset`` layers to the ids of an :class:`~lightning_unlearn.data.IndexedDataset` beneath.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Subset

from lightning_unlearn.data.indexed import IndexedDataset

# The recording itself is shared by the layers below data (the pure evaluation functions): it
# lives in the leaf module lightning_unlearn.sample_ids; re-exported here.
from lightning_unlearn.sample_ids import (
    SamplerIdRecorder,
    iterate_with_sampler_ids,
    record_sample_ids,
    release_sample_ids,
    sampler_ids_unreadable_reason,
)

__all__ = [
    "SamplerIdRecorder",
    "iterate_with_sampler_ids",
    "record_sample_ids",
    "release_sample_ids",
    "resolve_indexed",
    "sampler_ids_unreadable_reason",
]


def resolve_indexed(dataset: Any) -> tuple[IndexedDataset | None, Tensor | None]:
    """The :class:`IndexedDataset` beneath ``dataset`` (through ``Subset`` layers) and the map
    from positions of ``dataset`` to its ids.

    Returns:
        ``(indexed, index_map)``: ``index_map[i]`` is the id of position ``i`` of ``dataset``
        (None when ``dataset`` is the ``IndexedDataset`` itself: the identity);
        ``(None, None)`` when there is none beneath.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset, random_split
        >>> full = IndexedDataset(TensorDataset(torch.zeros(10, 2)))
        >>> part, _ = random_split(full, [4, 6], generator=torch.Generator().manual_seed(0))
        >>> indexed, index_map = resolve_indexed(part)
        >>> indexed is full, index_map.tolist() == list(part.indices)
        (True, True)
    """
    index_map: Tensor | None = None
    current = dataset
    while isinstance(current, Subset):
        step = torch.as_tensor(list(current.indices), dtype=torch.long)
        index_map = step if index_map is None else step[index_map]
        current = current.dataset
    if isinstance(current, IndexedDataset):
        return current, index_map
    return None, None
