"""Data utilities: sample ids that travel with every batch, splits and bundled data modules."""

from lightning_unlearn.data.indexed import (
    SAMPLE_ID_KEY,
    IndexedDataset,
    get_sample_ids,
    indexed_item_type,
)

__all__ = ["SAMPLE_ID_KEY", "IndexedDataset", "get_sample_ids", "indexed_item_type"]
