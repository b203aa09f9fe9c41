"""Forget / retain / held-out splits of a training set, with the original sample ids kept.

A deletion request names examples by their id in the *original* training set (the position
of the example in the dataset the training ``DataLoader`` was given, which indexes the
:class:`~lightning_unlearn.accounting.PrivacyLedger`). :class:`ForgetRetainDataModule` splits
that set into the forget set ``F`` and the retain set ``D' = D \\ F`` (THEORY §5) without
renumbering anything and without changing the batches: every loader iterates the original
dataset with a sampler over the original ids, so the ids of its batches are read from the
sampler (:mod:`~lightning_unlearn.data.sampler_ids`) and the user's ``training_step`` gets the
batches it was trained on. Only the forget batches of
:meth:`ForgetRetainDataModule.train_dataloader` travel with their ids, as a :class:`TaggedBatch`
that ``UnlearningModule`` unpacks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, Sampler, Subset, default_collate
from typing_extensions import override

from lightning_unlearn.errors import ForgetSetError
from lightning_unlearn.validation import check_forget_ids

__all__ = ["EpochSeededSampler", "ForgetRetainDataModule", "TaggedBatch", "validate_forget_ids"]


class TaggedBatch(NamedTuple):
    """A batch exactly as the user's collate function made it, with the examples' ids beside
    it (not inside it). Lightning moves both fields to the device."""

    batch: Any
    sample_ids: torch.Tensor


class _WithIndex(Dataset):
    """Items ``(index, item)`` of a map-style dataset (picklable for worker processes)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


class _TaggingCollate:
    """Collate ``(index, item)`` pairs into a :class:`TaggedBatch` with the user's collate."""

    def __init__(self, collate_fn: Callable[[list[Any]], Any] | None) -> None:
        self.collate_fn = collate_fn or default_collate

    def __call__(self, pairs: list[tuple[int, Any]]) -> TaggedBatch:
        ids = torch.tensor([i for i, _ in pairs], dtype=torch.long)
        return TaggedBatch(self.collate_fn([item for _, item in pairs]), ids)


def validate_forget_ids(forget_ids: Any, num_samples: int) -> torch.Tensor:
    """Check a deletion request against a data set of ``num_samples`` examples.

    The same check as :func:`~lightning_unlearn.validation.check_forget_ids` (kept under this
    name for the data package's API); see it for what is accepted.

    Returns:
        The ids as a sorted 1-D ``torch.long`` tensor on the CPU.

    Raises:
        ForgetSetError: the ids are not 1-D integers, are empty, out of range or duplicated.

    Example:
        >>> validate_forget_ids([4, 1], num_samples=10).tolist()
        [1, 4]
    """
    return check_forget_ids(forget_ids, num_samples)


class EpochSeededSampler(Sampler[int]):
    """A random permutation per epoch drawn from ``seed + epoch`` (independent of global RNGs).

    The epoch is read from ``epoch_fn`` when given (the data module passes the trainer's
    ``current_epoch``), else from the last ``set_epoch`` call. Reading the trainer matters on
    resumption: Lightning 2.6 hands a run resumed from an end-of-epoch checkpoint a shifted
    number through ``set_epoch`` (measured), which would shift every later epoch's order. With
    the trainer's epoch, the resumed run's epochs use the same permutations as the uninterrupted
    run's; one caveat remains (also measured): Lightning draws one batch of the finished epoch
    before starting the next, so a resumed run trains on one extra stale batch at the boundary
    and is not bit-identical. Under DDP Lightning distributes the sampler
    (``DistributedSamplerWrapper``).

    Args:
        indices: the number of items ``n`` (permute ``0..n-1``) or the indices to permute.
        seed: base seed of the permutations.
        epoch_fn: optional callable returning the current epoch.
    """

    def __init__(
        self,
        indices: int | torch.Tensor,
        seed: int = 0,
        epoch_fn: Callable[[], int | None] | None = None,
    ) -> None:
        self.indices = (
            torch.arange(indices) if isinstance(indices, int) else torch.as_tensor(indices).long()
        )
        self.seed = seed
        self.epoch = 0
        self.epoch_fn = epoch_fn

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (used when no ``epoch_fn`` answers)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        epoch = self.epoch if epoch is None else epoch
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(self.indices.numel(), generator=generator)
        return iter(self.indices[order].tolist())

    def __len__(self) -> int:
        return self.indices.numel()


class ForgetRetainDataModule(pl.LightningDataModule):
    """Retain, forget and held-out loaders of a training set, keeping the original sample ids.

    The training loader (what ``Trainer.fit`` consumes while unlearning) is a
    :class:`~lightning.pytorch.utilities.CombinedLoader` in ``"max_size_cycle"`` mode yielding
    ``{"retain": batch, "forget": TaggedBatch(batch, sample_ids)}``: an epoch is one pass over
    the retain set, the (smaller) forget set cycles beside it. The batches themselves are the
    dataset's items collated by ``collate_fn``, exactly what the model was trained on.
    :meth:`retain_dataloader`, :meth:`forget_dataloader` and :meth:`heldout_dataloader` give
    unshuffled loaders for evaluation; each iterates the original dataset with a sampler over
    the original ids, so the evaluation functions read the ids from the sampler.

    Held-out data (examples the model never trained on, the reference of the membership test
    and of loss-calibrated stopping) is either a separate data set (``heldout=dataset``; its
    ids are its own positions) or, with ``heldout=<int or fraction>``, a seeded split of
    ``dataset``. In the second case the held-out examples are excluded from the retain and
    forget sets and from :meth:`full_train_dataloader`, which is the loader to train the
    original model with.

    Args:
        dataset: the original training set: a map-style dataset (ids are its positions; an
            :class:`~lightning_unlearn.data.IndexedDataset` keeps its items with ids), or a
            ``LightningDataModule`` whose ``train_dataloader()``'s dataset and ``collate_fn``
            are used (after ``prepare_data`` and ``setup("fit")``).
        forget_ids: ids (in ``dataset``) of the examples to forget.
        heldout: a held-out dataset, or the number (int) / fraction (float in (0, 1)) of
            ``dataset`` to hold out with a seeded split, or ``None`` (no held-out set).
        batch_size: batch size of the retain loader used for training.
        forget_batch_size: batch size of the forget loader used for training (default
            ``batch_size``).
        eval_batch_size: batch size of the evaluation loaders.
        seed: seed of the held-out split and of the shuffling.
        num_workers: ``DataLoader`` workers.
        collate_fn: how items become a batch (e.g. padding of token sequences); default
            ``torch``'s ``default_collate`` (or the data module's).
        exclude_ids: ids (in ``dataset``) in neither the retain nor the forget set: examples
            the model being unlearned never trained on (a reference model's OUT examples), so
            no unlearning step touches them. Ids keep indexing ``dataset``.

    Raises:
        ForgetSetError: invalid forget or excluded ids, forget ids that fall into the held-out
            split or are also excluded.
        ValueError: invalid sizes.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> ds = TensorDataset(torch.randn(10, 3), torch.arange(10) % 2)
        >>> dm = ForgetRetainDataModule(ds, forget_ids=[2, 7], heldout=2, batch_size=4)
        >>> len(dm.retain_set), len(dm.forget_set), len(dm.heldout_set)
        (6, 2, 2)
        >>> x, y = next(iter(dm.forget_dataloader()))  # the dataset's own batches
        >>> from lightning_unlearn.data import iterate_with_sampler_ids
        >>> [ids.tolist() for _, ids in iterate_with_sampler_ids(dm.forget_dataloader())]
        [[2, 7]]
        >>> batch, batch_idx, _ = next(iter(dm.train_dataloader()))
        >>> sorted(batch), batch["forget"].sample_ids.sort().values.tolist()
        (['forget', 'retain'], [2, 7])
    """

    def __init__(
        self,
        dataset: Dataset | pl.LightningDataModule,
        forget_ids: Sequence[int] | torch.Tensor,
        *,
        heldout: Dataset | int | float | None = None,
        batch_size: int = 64,
        forget_batch_size: int | None = None,
        eval_batch_size: int = 256,
        seed: int = 0,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        exclude_ids: Sequence[int] | torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected `{name}` to be a positive int, but got {value!r}.")
        if forget_batch_size is not None and (
            not isinstance(forget_batch_size, int) or forget_batch_size < 1
        ):
            raise ValueError(
                f"Expected `forget_batch_size` to be a positive int or None, but got "
                f"{forget_batch_size!r}."
            )
        self.batch_size = batch_size
        self.forget_batch_size = forget_batch_size or batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.num_workers = num_workers

        self.dataset, module_collate = _as_map_dataset(dataset)
        self.collate_fn = collate_fn or module_collate
        self.num_samples = len(self.dataset)
        # The entry point of the ids: checked and converted once here; everything downstream
        # (loaders, budgets through `compute_budget(ledger, dm)`, evaluations) trusts them.
        self.forget_ids = check_forget_ids(forget_ids, self.num_samples)
        if self.forget_ids.numel() == self.num_samples:
            raise ForgetSetError(
                f"Expected the forget set to leave examples to retain, but it covers all "
                f"{self.num_samples} examples; retrain from scratch instead of unlearning."
            )

        all_ids = torch.arange(self.num_samples)
        self.heldout_ids: torch.Tensor | None = None
        self.heldout_set: Dataset | None
        if heldout is None:
            self.heldout_set = None
            train_ids = all_ids
        elif isinstance(heldout, int | float) and not isinstance(heldout, bool):
            self.heldout_ids = self._split_heldout(heldout)
            self.heldout_set = Subset(self.dataset, self.heldout_ids.tolist())
            train_ids = all_ids[~torch.isin(all_ids, self.heldout_ids)]
            clash = self.forget_ids[torch.isin(self.forget_ids, self.heldout_ids)]
            if clash.numel():
                raise ForgetSetError(
                    f"Expected forget ids outside the held-out split, but {clash[:10].tolist()} "
                    "were held out (never trained on); drop them or pass `heldout` as a dataset."
                )
        else:
            self.heldout_set, _ = _as_map_dataset(heldout)
            train_ids = all_ids
        self.train_ids = train_ids
        self.exclude_ids = torch.zeros(0, dtype=torch.long)
        size = (
            0
            if exclude_ids is None
            else exclude_ids.numel()
            if isinstance(exclude_ids, torch.Tensor)
            else len(exclude_ids)
        )
        if size:  # a 0-d tensor (size 1) gets `check_forget_ids`' 1-D error
            self.exclude_ids = check_forget_ids(exclude_ids, self.num_samples, name="exclude_ids")
            both = self.forget_ids[torch.isin(self.forget_ids, self.exclude_ids)]
            if both.numel():
                raise ForgetSetError(
                    f"Expected forget ids that are not also excluded, but {both[:10].tolist()} "
                    "are in both `forget_ids` and `exclude_ids`; drop them from one of the two."
                )
        left_out = torch.cat([self.forget_ids, self.exclude_ids])
        self.retain_ids = train_ids[~torch.isin(train_ids, left_out)]
        if self.retain_ids.numel() == 0:
            raise ForgetSetError(
                "Expected the forget set to leave examples to retain, but after the held-out "
                "split nothing is left; hold out fewer examples or forget fewer."
            )
        self.retain_set = Subset(self.dataset, self.retain_ids.tolist())
        self.forget_set = Subset(self.dataset, self.forget_ids.tolist())
        self.train_set = Subset(self.dataset, self.train_ids.tolist())

    def _split_heldout(self, heldout: int | float) -> torch.Tensor:
        n = self.num_samples
        if isinstance(heldout, float):
            if not 0.0 < heldout < 1.0:
                raise ValueError(f"Expected a held-out fraction in (0, 1), but got {heldout!r}.")
            size = max(1, round(heldout * n))
        else:
            size = heldout
        if not 1 <= size < n:
            raise ValueError(
                f"Expected a held-out size in [1, {n}) for a data set of {n} examples, but got "
                f"{heldout!r}."
            )
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randperm(n, generator=generator)[:size].sort().values

    def _loader(
        self,
        ids: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        dataset: Any = None,
        tagged: bool = False,
    ) -> DataLoader:
        """A loader over ``dataset`` (default the original one) drawing the given ids."""
        sampler = (
            EpochSeededSampler(ids, self.seed, self._trainer_epoch) if shuffle else ids.tolist()
        )
        data = self.dataset if dataset is None else dataset
        return DataLoader(
            _WithIndex(data) if tagged else data,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=_TaggingCollate(self.collate_fn) if tagged else self.collate_fn,
        )

    def _trainer_epoch(self) -> int | None:
        return None if self.trainer is None else int(self.trainer.current_epoch)

    @override
    def train_dataloader(self) -> CombinedLoader:
        """``{"retain": batch, "forget": TaggedBatch}`` per step; one epoch = one pass over
        retain."""
        return CombinedLoader(
            {
                "retain": self._loader(self.retain_ids, self.batch_size, shuffle=True),
                "forget": self._loader(
                    self.forget_ids, self.forget_batch_size, shuffle=True, tagged=True
                ),
            },
            mode="max_size_cycle",
        )

    def full_train_dataloader(self, *, shuffle: bool = True) -> DataLoader:
        """The whole training set (retain and forget, not a held-out split), for training the
        original model; the batches are the dataset's own, their ids the sampler's indices.

        Its ``.dataset`` is the full data set (a held-out split is left out by the sampler), so
        a :class:`~lightning_unlearn.PerInstancePrivacyMonitor` sizes its ledger to
        ``num_samples`` and fingerprints the same data set :func:`compute_budget` checks.
        With a held-out split, pass the monitor ``sample_rate=batch_size / len(train_set)``.
        """
        return self._loader(self.train_ids, self.batch_size, shuffle=shuffle)

    def retain_dataloader(self, *, shuffle: bool = False) -> DataLoader:
        """The retain set ``D \\ F``; shuffled with ``shuffle=True`` (for retraining)."""
        if shuffle:
            return self._loader(self.retain_ids, self.batch_size, shuffle=True)
        return self._loader(self.retain_ids, self.eval_batch_size, shuffle=False)

    def forget_dataloader(self) -> DataLoader:
        """The forget set ``F`` in id order, for evaluation."""
        return self._loader(self.forget_ids, self.eval_batch_size, shuffle=False)

    def heldout_dataloader(self) -> DataLoader:
        """The held-out set, for evaluation.

        Raises:
            ValueError: the data module was built without ``heldout``.
        """
        if self.heldout_set is None:
            raise ValueError(
                "Expected a held-out set, but `ForgetRetainDataModule` was built with "
                "`heldout=None`; pass a held-out dataset or a fraction to split off."
            )
        if self.heldout_ids is not None:
            return self._loader(self.heldout_ids, self.eval_batch_size, shuffle=False)
        ids = torch.arange(len(self.heldout_set))  # type: ignore[arg-type]
        return self._loader(ids, self.eval_batch_size, shuffle=False, dataset=self.heldout_set)


def _as_map_dataset(dataset: Any) -> tuple[Any, Callable[[list[Any]], Any] | None]:
    """The map-style dataset (and the collate function of a data module's loader)."""
    collate = None
    if isinstance(dataset, pl.LightningDataModule):
        dataset.prepare_data()
        dataset.setup("fit")
        loader = dataset.train_dataloader()
        inner = getattr(loader, "dataset", None)
        if inner is None:
            raise TypeError(
                "Expected the data module's `train_dataloader()` to be a `DataLoader` with a "
                f"`.dataset`, but got {type(loader).__name__}; pass the training dataset itself."
            )
        dataset, collate = inner, getattr(loader, "collate_fn", None)
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(
            "Expected `dataset` to be a map-style dataset or a LightningDataModule, but got "
            f"{type(dataset).__name__}."
        )
    return dataset, collate
