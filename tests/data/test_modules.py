"""Bundled data modules: deterministic splits, ids that travel, IDX parsing, clear errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from lightning_unlearn.data import (
    FASHION_MNIST_DIR,
    DigitsDataModule,
    FashionMNISTDataModule,
    read_idx,
)
from lightning_unlearn.errors import DatasetNotFoundError, LightningUnlearnError

HAVE_FASHION = (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
needs_fashion = pytest.mark.skipif(
    not HAVE_FASHION,
    reason=f"Fashion-MNIST IDX files absent from {FASHION_MNIST_DIR}; "
    "run scripts/ensure_fashion_mnist.sh (apt-get install dataset-fashion-mnist)",
)


def test_digits_splits_are_a_seeded_partition_of_the_real_data() -> None:
    dm = DigitsDataModule(val_fraction=0.1, test_fraction=0.2, seed=3)
    dm.setup()
    assert dm.train_indices is not None
    assert dm.val_indices is not None
    assert dm.test_indices is not None
    all_idx = torch.cat([dm.train_indices, dm.val_indices, dm.test_indices])
    assert sorted(all_idx.tolist()) == list(range(1797))  # disjoint and complete
    assert (len(dm.val_indices), len(dm.test_indices)) == (180, 359)
    # Independent reference: sklearn's images / 16 at the recorded source rows.
    bunch = load_digits()
    x, y = dm.train_tensors()
    ref = torch.as_tensor(bunch.images[dm.train_indices.numpy()] / 16.0, dtype=torch.float32)
    torch.testing.assert_close(x[:, 0], ref)
    assert torch.equal(y, torch.as_tensor(bunch.target[dm.train_indices.numpy()]))
    again = DigitsDataModule(seed=3)
    again.setup()
    assert torch.equal(again.train_indices, dm.train_indices)  # type: ignore[arg-type]
    other = DigitsDataModule(seed=4)
    other.setup()
    assert not torch.equal(other.train_indices, dm.train_indices)  # type: ignore[arg-type]


def test_digits_batches_carry_ids_that_index_the_training_tensors() -> None:
    dm = DigitsDataModule(batch_size=50, seed=0)
    x_all, y_all = dm.train_tensors()
    seen = []
    for x, y, ids in dm.train_dataloader():
        assert torch.equal(x, x_all[ids])
        assert torch.equal(y, y_all[ids])
        seen.append(ids)
    assert sorted(torch.cat(seen).tolist()) == list(range(dm.num_train))
    first = next(b[2] for b in dm.train_dataloader())
    assert torch.equal(first, seen[0])  # seeded shuffle: same order every epoch/run
    ordered = torch.cat([b[2] for b in dm.train_eval_dataloader()])
    assert torch.equal(ordered, torch.arange(dm.num_train))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
    ],
)
def test_digits_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trips_a_handwritten_file(tmp_path: Path, compress: bool) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    _write_idx(path, arr, compress)
    np.testing.assert_array_equal(read_idx(path), arr)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x08\x03\x00\x00" + bytes(10))
    with pytest.raises(ValueError, match="IDX"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">i", 10) + bytes(3))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(short)


def test_fashion_from_user_dir_and_missing_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 28, 28))
    labels = np.arange(40) % 10
    for stem, arr in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
        _write_idx(tmp_path / (stem + ".gz"), arr, True)
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as ei:
        FashionMNISTDataModule(data_dir=tmp_path).setup()
    assert isinstance(ei.value, LightningUnlearnError)
    assert "t10k-images" in str(ei.value)
    for stem, arr in (
        ("t10k-images-idx3-ubyte", images[:20]),
        ("t10k-labels-idx1-ubyte", labels[:20]),
    ):
        _write_idx(tmp_path / stem, arr, False)  # uncompressed files are accepted too
    dm = FashionMNISTDataModule(data_dir=tmp_path, val_fraction=0.25, seed=1)
    dm.setup()
    assert (dm.num_train, len(dm.val_dataset), len(dm.test_dataset)) == (30, 10, 20)  # type: ignore[arg-type]
    x, y = dm.train_tensors()
    rows = dm.train_indices.numpy()  # type: ignore[union-attr]
    ref = (torch.as_tensor(images[rows], dtype=torch.float32) / 255.0 - 0.2860) / 0.3530
    torch.testing.assert_close(x[:, 0], ref)
    assert torch.equal(y, torch.as_tensor(labels[rows]))


@needs_fashion
def test_fashion_real_files_subset_is_seeded_and_balanced() -> None:
    labels = read_idx(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz")
    assert labels.shape == (60000,)
    assert np.bincount(labels).tolist() == [6000] * 10  # the published class balance
    images = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10000, 28, 28)
    dm = FashionMNISTDataModule(subset=1000, test_subset=300, val_fraction=0.1, seed=0)
    x, _y, ids = next(iter(dm.train_dataloader()))
    assert dm.num_train == 900
    assert len(dm.test_dataset) == 300
    assert x.shape[1:] == (1, 28, 28)
    assert ids.max() < 900
    x_all, y_all = dm.train_tensors()
    assert torch.equal(x, x_all[ids])
    assert torch.equal(y_all, torch.as_tensor(labels[dm.train_indices.numpy()]))
    dm2 = FashionMNISTDataModule(subset=1000, test_subset=300, seed=0)
    dm2.setup()
    assert torch.equal(dm2.train_indices, dm.train_indices)  # type: ignore[arg-type]


def test_fashion_bad_arguments() -> None:
    with pytest.raises(ValueError, match="subset"):
        FashionMNISTDataModule(subset=1)
