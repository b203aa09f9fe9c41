"""Bundled data modules whose batches carry sample ids: scikit-learn's digits and Fashion-MNIST.

Both modules hold the whole data set as tensors (small enough for memory), split it
deterministically from ``seed``, and wrap each split in
:class:`~lightning_unlearn.data.IndexedDataset`, so batches are ``(x, y, sample_id)`` and the ids
of the training split are ``0 .. num_train - 1`` (stable across runs with the same ``seed``).
``train_indices`` (and ``val_indices``, ``test_indices``) map ids back to rows of the source data.

The training shuffle is a function of ``(seed, epoch)``
(:class:`~lightning_unlearn.data.splits.EpochSeededSampler`, whose ``set_epoch`` Lightning's fit
loop calls at the start of every epoch), not of a generator's running state: resuming from a
checkpoint written at the end of an epoch trains exactly the batches the uninterrupted run
would have (tested to 1e-12 on the weights and the ledger).
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from lightning_unlearn.data.indexed import IndexedDataset
from lightning_unlearn.data.splits import EpochSeededSampler
from lightning_unlearn.errors import DatasetNotFoundError

__all__ = [
    "FASHION_MNIST_DIR",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "TensorSplitDataModule",
    "read_idx",
]

#: Where the Debian package ``dataset-fashion-mnist`` puts the IDX files.
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Mean and standard deviation of the Fashion-MNIST training pixels scaled to [0, 1].
_FASHION_MEAN, _FASHION_STD = 0.2860, 0.3530


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"Expected `{name}` to be in [0, 1), but got {value!r}.")


def _check_batch_size(name: str, value: int) -> None:
    if int(value) != value or value < 1:
        raise ValueError(f"Expected `{name}` to be a positive int, but got {value!r}.")


class TensorSplitDataModule(pl.LightningDataModule):
    """Base class: in-memory train / val / test tensors wrapped in ``IndexedDataset``.

    Subclasses implement :meth:`load_splits`, returning ``(x, y, source_index)`` for each split.

    Args:
        batch_size: training batch size.
        eval_batch_size: batch size of the validation, test and ordered-train loaders.
        seed: seed of the split and of the training shuffle.
        num_workers: ``DataLoader`` workers.
    """

    num_classes: int = 10
    input_shape: tuple[int, int, int] = (1, 1, 1)

    def __init__(
        self, batch_size: int = 64, eval_batch_size: int = 512, seed: int = 0, num_workers: int = 0
    ) -> None:
        super().__init__()
        _check_batch_size("batch_size", batch_size)
        _check_batch_size("eval_batch_size", eval_batch_size)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size)
        self.seed = int(seed)
        self.num_workers = int(num_workers)
        self.train_dataset: IndexedDataset | None = None
        self.val_dataset: IndexedDataset | None = None
        self.test_dataset: IndexedDataset | None = None
        self.train_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None
        self.test_indices: torch.Tensor | None = None

    def load_splits(
        self,
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Return ``{"train"|"val"|"test": (x float32, y int64, source_index int64)}``."""
        raise NotImplementedError

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        splits = self.load_splits()
        x, y, idx = splits["train"]
        self.train_dataset = IndexedDataset(TensorDataset(x, y))
        self.train_indices = idx
        self.val_indices = splits["val"][2]
        self.test_indices = splits["test"][2]
        self.val_dataset = IndexedDataset(TensorDataset(*splits["val"][:2]))
        self.test_dataset = IndexedDataset(TensorDataset(*splits["test"][:2]))

    @property
    def num_train(self) -> int:
        """Number of training examples (the ``num_samples`` of the privacy ledger)."""
        self.setup()
        assert self.train_dataset is not None
        return len(self.train_dataset)

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training inputs and labels, row ``i`` being sample id ``i``."""
        self.setup()
        assert self.train_dataset is not None
        x, y = self.train_dataset.dataset.tensors
        return x, y

    @override
    def train_dataloader(self) -> DataLoader:
        self.setup()
        assert self.train_dataset is not None
        return DataLoader(
            self.train_dataset,
            batch_size=self.batch_size,
            sampler=EpochSeededSampler(len(self.train_dataset), self.seed),
            # Only the workers' base seed comes from here; it leaves torch's global RNG alone.
            generator=torch.Generator().manual_seed(self.seed),
            num_workers=self.num_workers,
        )

    def _eval_loader(self, ds: IndexedDataset | None) -> DataLoader:
        return DataLoader(
            ds,  # type: ignore[arg-type]
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )

    def train_eval_dataloader(self) -> DataLoader:
        """The training split in id order, without shuffling (for per-example evaluation)."""
        self.setup()
        return self._eval_loader(self.train_dataset)

    @override
    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._eval_loader(self.val_dataset)

    @override
    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._eval_loader(self.test_dataset)


def _split_permutation(n: int, fractions: tuple[float, float], seed: int) -> list[torch.Tensor]:
    """Seeded permutation of ``range(n)`` cut into (train, val, test) with the given fractions."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * fractions[0])
    n_test = round(n * fractions[1])
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ValueError(
            f"Expected the fractions {fractions} to leave training examples out of {n}, but "
            "none are left; lower `val_fraction` / `test_fraction`."
        )
    return [perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]]


class DigitsDataModule(TensorSplitDataModule):
    """scikit-learn's bundled handwritten digits (1797 images, 8x8, 10 classes); no download.

    Pixels (0-16) are scaled to [0, 1]; inputs have shape ``(1, 8, 8)``. The split is a seeded
    random permutation: ``test_fraction`` for the test split (the held-out data of unlearning
    evaluations), ``val_fraction`` for validation, the rest for training.

    Args:
        batch_size: training batch size.
        val_fraction: fraction of all examples used for validation.
        test_fraction: fraction of all examples used for testing.
        seed: seed of the split and of the training shuffle.
        eval_batch_size: batch size of the evaluation loaders.
        num_workers: ``DataLoader`` workers.

    Example:
        >>> dm = DigitsDataModule(batch_size=32, seed=0)
        >>> dm.setup()
        >>> dm.num_train, len(dm.val_dataset), len(dm.test_dataset)
        (1258, 180, 359)
        >>> x, y, ids = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), float(x.max()) <= 1.0
        ((32, 1, 8, 8), True)
    """

    input_shape = (1, 8, 8)

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        eval_batch_size: int = 512,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, seed, num_workers)
        _check_fraction("val_fraction", val_fraction)
        _check_fraction("test_fraction", test_fraction)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.save_hyperparameters()

    @override
    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        from sklearn.datasets import load_digits

        data, target = load_digits(return_X_y=True)
        x = torch.as_tensor(np.asarray(data, dtype=np.float32) / 16.0).reshape(-1, 1, 8, 8)
        y = torch.as_tensor(np.asarray(target, dtype=np.int64))
        parts = _split_permutation(len(y), (self.val_fraction, self.test_fraction), self.seed)
        return {
            name: (x[idx].contiguous(), y[idx].contiguous(), idx)
            for name, idx in zip(("train", "val", "test"), parts, strict=True)
        }


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an unsigned-byte IDX file (the MNIST / Fashion-MNIST format), gzip-compressed or not.

    The format: two zero bytes, a type code (``0x08`` = unsigned byte), the number of dimensions
    ``d``, ``d`` big-endian int32 sizes, then the data in C order.

    Args:
        path: path of the ``.gz`` or uncompressed file.

    Returns:
        A ``uint8`` array of the stored shape.

    Raises:
        ValueError: the file is not an unsigned-byte IDX file or is truncated.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(
            f"Expected an unsigned-byte IDX file (magic 0x0000 08 ..), but {path} starts with "
            f"{raw[:4].hex() or 'nothing'}; is it the right (unpacked or .gz) Fashion-MNIST file?"
        )
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4).astype(np.int64)
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) if ndim else 0
    if len(raw) - offset != expected:
        raise ValueError(
            f"Expected {expected} data bytes for shape {tuple(dims)} in {path}, but found "
            f"{len(raw) - offset}; the file is truncated or corrupt."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(tuple(dims))


def _find_idx(data_dir: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    return None


@lru_cache(maxsize=2)
def _load_fashion(data_dir: str) -> dict[str, np.ndarray]:
    root = Path(data_dir)
    found = {key: _find_idx(root, stem) for key, stem in _FASHION_FILES.items()}
    missing = [_FASHION_FILES[k] + ".gz" for k, p in found.items() if p is None]
    if missing:
        raise DatasetNotFoundError(
            f"Fashion-MNIST IDX files not found in {root}: missing {', '.join(missing)}. "
            "Install them with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files "
            f"go to {FASHION_MNIST_DIR}), or put the four files "
            "{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] from "
            "https://github.com/zalandoresearch/fashion-mnist into a directory and pass it as "
            "`data_dir`."
        )
    return {key: read_idx(p) for key, p in found.items() if p is not None}


class FashionMNISTDataModule(TensorSplitDataModule):
    """Fashion-MNIST (60k train + 10k test, 28x28 grey images, 10 classes) from IDX files.

    Files are read with numpy from ``data_dir`` (default: where the Debian package
    ``dataset-fashion-mnist`` installs them, :data:`FASHION_MNIST_DIR`). Pixels are scaled to
    [0, 1] and standardised with the training-set mean and standard deviation. The training pool
    is the official training file, optionally reduced to a seeded random ``subset``; of that
    pool, ``val_fraction`` goes to validation. The test split is the official test file,
    optionally reduced to ``test_subset`` examples.

    Args:
        data_dir: directory holding the four IDX files (``.gz`` or uncompressed).
        batch_size: training batch size.
        subset: number of training-pool examples to keep (None: all 60000).
        test_subset: number of test examples to keep (None: all 10000).
        val_fraction: fraction of the training pool used for validation.
        seed: seed of the subsets, the split and the training shuffle.
        eval_batch_size: batch size of the evaluation loaders.
        num_workers: ``DataLoader`` workers.

    Raises:
        DatasetNotFoundError: (at ``setup``) the files are missing; the message says how to
            install them.
    """

    input_shape = (1, 28, 28)

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        batch_size: int = 128,
        subset: int | None = None,
        test_subset: int | None = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        eval_batch_size: int = 1024,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, seed, num_workers)
        _check_fraction("val_fraction", val_fraction)
        for name, value in (("subset", subset), ("test_subset", test_subset)):
            if value is not None and (int(value) != value or value < 2):
                raise ValueError(f"Expected `{name}` to be None or an int >= 2, but got {value!r}.")
        self.data_dir = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
        self.subset = None if subset is None else int(subset)
        self.test_subset = None if test_subset is None else int(test_subset)
        self.val_fraction = float(val_fraction)
        # Plain types only, so checkpoints holding these load with `weights_only=True`.
        self.save_hyperparameters(
            {
                "data_dir": None if data_dir is None else str(data_dir),
                "batch_size": self.batch_size,
                "subset": self.subset,
                "test_subset": self.test_subset,
                "val_fraction": self.val_fraction,
                "seed": self.seed,
                "eval_batch_size": self.eval_batch_size,
                "num_workers": self.num_workers,
            }
        )

    @staticmethod
    def _to_tensor(images: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(images.astype(np.float32) / 255.0).unsqueeze(1)
        return (x - _FASHION_MEAN) / _FASHION_STD

    @override
    def load_splits(self) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        arrays = _load_fashion(str(self.data_dir.resolve()))
        gen = torch.Generator().manual_seed(self.seed)
        n_pool = len(arrays["train_labels"])
        pool = torch.randperm(n_pool, generator=gen)
        if self.subset is not None:
            if self.subset > n_pool:
                raise ValueError(f"Expected `subset` <= {n_pool}, but got {self.subset}.")
            pool = pool[: self.subset]
        n_val = round(len(pool) * self.val_fraction)
        train_idx, val_idx = pool[n_val:], pool[:n_val]
        n_test = len(arrays["test_labels"])
        test_idx = torch.arange(n_test)
        if self.test_subset is not None:
            test_idx = torch.randperm(n_test, generator=gen)[: min(self.test_subset, n_test)]
        out = {}
        for name, idx, img, lab in (
            ("train", train_idx, "train_images", "train_labels"),
            ("val", val_idx, "train_images", "train_labels"),
            ("test", test_idx, "test_images", "test_labels"),
        ):
            rows = idx.numpy()
            x = self._to_tensor(arrays[img][rows])
            y = torch.as_tensor(arrays[lab][rows].astype(np.int64))
            out[name] = (x, y, idx)
        return out
