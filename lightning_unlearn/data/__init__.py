"""Data utilities: sample ids (from the sampler, or carried by the batch), splits, data modules.

The id plumbing (:mod:`~lightning_unlearn.data.indexed`, :mod:`~lightning_unlearn.data.sampler_ids`,
:mod:`~lightning_unlearn.data.fingerprint`) needs torch only and is imported eagerly; the
Lightning data modules are imported on first access (PEP 562), so the evaluation functions can
read ids without importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightning_unlearn.data.fingerprint import dataset_fingerprint
from lightning_unlearn.data.indexed import (
    SAMPLE_ID_KEY,
    IndexedDataset,
    get_sample_ids,
    indexed_item_type,
)
from lightning_unlearn.data.sampler_ids import (
    iterate_with_sampler_ids,
    record_sample_ids,
    release_sample_ids,
    resolve_indexed,
)

if TYPE_CHECKING:
    from lightning_unlearn.data.modules import (
        FASHION_MNIST_DIR,
        DigitsDataModule,
        FashionMNISTDataModule,
        TensorSplitDataModule,
        read_idx,
    )
    from lightning_unlearn.data.splits import (
        ForgetRetainDataModule,
        TaggedBatch,
        validate_forget_ids,
    )

_LAZY = {
    "FASHION_MNIST_DIR": "lightning_unlearn.data.modules",
    "DigitsDataModule": "lightning_unlearn.data.modules",
    "FashionMNISTDataModule": "lightning_unlearn.data.modules",
    "TensorSplitDataModule": "lightning_unlearn.data.modules",
    "read_idx": "lightning_unlearn.data.modules",
    "ForgetRetainDataModule": "lightning_unlearn.data.splits",
    "TaggedBatch": "lightning_unlearn.data.splits",
    "validate_forget_ids": "lightning_unlearn.data.splits",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_unlearn.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "FASHION_MNIST_DIR",
    "SAMPLE_ID_KEY",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ForgetRetainDataModule",
    "IndexedDataset",
    "TaggedBatch",
    "TensorSplitDataModule",
    "dataset_fingerprint",
    "get_sample_ids",
    "indexed_item_type",
    "iterate_with_sampler_ids",
    "read_idx",
    "record_sample_ids",
    "release_sample_ids",
    "resolve_indexed",
    "validate_forget_ids",
]
