"""Fixtures of the evaluation tests: real digits and a data loader with sample ids."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_unlearn.data import IndexedDataset

from ._helpers import digits_tensors


@pytest.fixture(scope="session")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    return digits_tensors()


@pytest.fixture
def digits_loader(digits: tuple[torch.Tensor, torch.Tensor]) -> DataLoader:
    x, y = digits
    return DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=64, shuffle=False)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: on the shared 2-core machine two threads contend badly."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
