"""Data utilities: sample ids that travel with every batch, splits and bundled data modules."""

from lightning_unlearn.data.fingerprint import dataset_fingerprint
from lightning_unlearn.data.indexed import (
    SAMPLE_ID_KEY,
    IndexedDataset,
    get_sample_ids,
    indexed_item_type,
)
from lightning_unlearn.data.modules import (
    FASHION_MNIST_DIR,
    DigitsDataModule,
    FashionMNISTDataModule,
    TensorSplitDataModule,
    read_idx,
)
from lightning_unlearn.data.splits import ForgetRetainDataModule, validate_forget_ids

__all__ = [
    "FASHION_MNIST_DIR",
    "SAMPLE_ID_KEY",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ForgetRetainDataModule",
    "IndexedDataset",
    "TensorSplitDataModule",
    "dataset_fingerprint",
    "get_sample_ids",
    "indexed_item_type",
    "read_idx",
    "validate_forget_ids",
]
