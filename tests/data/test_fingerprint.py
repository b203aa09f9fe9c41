"""dataset_fingerprint (data/fingerprint.py) against the hash written out by hand."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import torch
from torch.utils.data import TensorDataset

from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.data.fingerprint import dataset_fingerprint


def _data(n: int = 9) -> TensorDataset:
    return TensorDataset(torch.arange(n * 2.0).reshape(n, 2), torch.arange(n) % 3)


def test_fingerprint_is_the_hash_of_size_and_first_middle_last_items() -> None:
    data = _data()
    parts = [b"9"]
    for i in (0, 4, 8):
        x, y = data[i]
        parts += [x.numpy().tobytes(), y.numpy().tobytes()]
    expected = hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]
    assert dataset_fingerprint(data, 9) == expected


def test_fingerprint_sees_the_sampled_items_and_the_size_only() -> None:
    data, base = _data(), dataset_fingerprint(_data(), 9)
    assert dataset_fingerprint(data, 10) != base  # the id space's size is part of it
    for i, changed in ((0, True), (4, True), (8, True), (1, False), (7, False)):
        x = data.tensors[0].clone()
        x[i, 0] += 1
        other = dataset_fingerprint(TensorDataset(x, data.tensors[1]), 9)
        assert (other != base) is changed, i  # a cheap check: only three items are read
    assert dataset_fingerprint(IndexedDataset(data), 9) == base  # attached ids are not data


def test_fingerprint_of_dicts_arrays_and_numbers_is_stable_across_processes() -> None:
    items = [{"b": np.arange(3) + i, "a": float(i), "s": f"x{i}"} for i in range(5)]
    here = dataset_fingerprint(items, 5)
    code = (
        "import numpy as np; from lightning_unlearn.data.fingerprint import dataset_fingerprint;"
        "items = [{'a': float(i), 's': f'x{i}', 'b': np.arange(3) + i} for i in range(5)];"
        "print(dataset_fingerprint(items, 5))"
    )
    there = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert there == here  # keys sorted, no object ids or memory addresses
    changed = [dict(item) for item in items]
    changed[2]["s"] = "y"
    assert dataset_fingerprint(changed, 5) != here
