"""Fixtures of the evaluation tests: real digits and a data loader with sample ids."""

from __future__ import annotations

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
