"""A cheap fingerprint of a data set, to tell a ledger of one data set from another's.

Stored in a :class:`~lightning_unlearn.accounting.PrivacyLedger`'s metadata by the monitor and
checked on resume and by the unlearning budget (a ledger of another data set of the same size
is rejected with :class:`~lightning_unlearn.errors.LedgerMismatchError`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from torch import Tensor

from lightning_unlearn.data.indexed import IndexedDataset

__all__ = ["dataset_fingerprint"]


def _tensor_bytes(item: Any, out: list[bytes]) -> None:
    if isinstance(item, Tensor):
        out.append(item.detach().cpu().contiguous().numpy().tobytes())
    elif isinstance(item, np.ndarray):
        out.append(np.ascontiguousarray(item).tobytes())
    elif isinstance(item, bool | int | float | str):
        out.append(repr(item).encode())
    elif isinstance(item, dict):
        for key in sorted(item, key=str):
            out.append(str(key).encode())
            _tensor_bytes(item[key], out)
    elif isinstance(item, tuple | list):
        for x in item:
            _tensor_bytes(x, out)


def dataset_fingerprint(dataset: Any, num_samples: int) -> str:
    """A short hash of ``num_samples`` and of the data set's first, middle and last items.

    Cheap (three ``__getitem__`` calls) and stable across processes; it catches a ledger being
    resumed on another data set of the same size, not every possible change of the data. An
    :class:`~lightning_unlearn.data.IndexedDataset` has the fingerprint of the data set it
    wraps (the ids it attaches are not data), so a ledger of a plain dataset (ids from the
    sampler) matches a data module that wraps the same dataset. The items are taken at
    positions of ``len(dataset)`` whatever ``num_samples`` says.

    Args:
        dataset: a map-style dataset (items may be tensors, arrays, numbers, strings, and
            tuples, lists or dicts of them).
        num_samples: the size of the ledger's id space (usually ``len(dataset)``).

    Returns:
        16 hexadecimal characters.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> a = TensorDataset(torch.arange(6.0))
        >>> b = TensorDataset(torch.arange(6.0) + 1)
        >>> dataset_fingerprint(a, 6) == dataset_fingerprint(a, 6)
        True
        >>> dataset_fingerprint(a, 6) == dataset_fingerprint(b, 6)
        False
        >>> from lightning_unlearn.data import IndexedDataset
        >>> dataset_fingerprint(IndexedDataset(a), 6) == dataset_fingerprint(a, 6)
        True
    """
    if isinstance(dataset, IndexedDataset):  # the same data with or without ids attached
        dataset = dataset.dataset
    try:
        size = len(dataset)
    except TypeError:
        size = num_samples
    parts = [str(num_samples).encode()]
    if size > 0:
        for i in sorted({0, size // 2, size - 1}):
            _tensor_bytes(dataset[i], parts)
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
