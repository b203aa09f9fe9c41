"""ForgetRetainDataModule: ids survive every split, bad forget ids get named errors."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_unlearn import ForgetSetError
from lightning_unlearn.data import IndexedDataset, iterate_with_sampler_ids
from lightning_unlearn.data.splits import (
    EpochSeededSampler,
    ForgetRetainDataModule,
    TaggedBatch,
    validate_forget_ids,
)


def _dataset(n: int = 50) -> TensorDataset:
    # The feature encodes the id, so a batch can be checked against its ids independently.
    return TensorDataset(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n) % 3)


def _collect(loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Features (which encode the id) and the ids read from the sampler; the batch itself
    is the dataset's own `(x, y)` (or an `IndexedDataset` item, whose ids must agree)."""
    xs, ids = [], []
    for batch, sid in iterate_with_sampler_ids(loader):
        assert len(batch) in (2, 3)
        if len(batch) == 3:
            assert torch.equal(batch[2], sid)
        xs.append(batch[0][:, 0].long())
        ids.append(sid)
    return torch.cat(xs), torch.cat(ids)


def test_loaders_keep_original_ids_and_partition_the_data() -> None:
    forget = [3, 17, 42]
    dm = ForgetRetainDataModule(_dataset(), forget, heldout=0.2, batch_size=8, seed=1)
    x_f, ids_f = _collect(dm.forget_dataloader())
    x_r, ids_r = _collect(dm.retain_dataloader())
    x_h, ids_h = _collect(dm.heldout_dataloader())
    x_t, ids_t = _collect(dm.full_train_dataloader())
    for x, ids in ((x_f, ids_f), (x_r, ids_r), (x_h, ids_h), (x_t, ids_t)):
        assert torch.equal(x, ids)  # each item's id is its index in the original data set
    assert ids_f.tolist() == forget
    assert len(ids_h) == 10
    everything = torch.cat([ids_f, ids_r, ids_h]).sort().values
    assert torch.equal(everything, torch.arange(50))  # a partition: no overlap, nothing lost
    assert torch.equal(ids_t.sort().values, torch.cat([ids_f, ids_r]).sort().values)
    assert dm.full_train_dataloader().dataset is dm.dataset  # a monitor sizes its ledger to N


def test_train_dataloader_pairs_retain_and_forget_batches() -> None:
    dm = ForgetRetainDataModule(_dataset(), [0, 1, 2], batch_size=10, forget_batch_size=2)
    loader = dm.train_dataloader()
    seen_retain, seen_forget = [], []
    for batch, _, _ in loader:
        x, _ = batch["retain"]  # the dataset's own batch, unchanged
        seen_retain.append(x[:, 0].long())
        forget = batch["forget"]
        assert isinstance(forget, TaggedBatch)
        x_f, _ = forget.batch
        assert torch.equal(x_f[:, 0].long(), forget.sample_ids)
        seen_forget.append(forget.sample_ids)
    assert len(seen_retain) == 5  # one epoch = one pass over the 47 retained examples
    assert sorted(torch.cat(seen_retain).tolist()) == list(range(3, 50))
    assert set(torch.cat(seen_forget).tolist()) == {0, 1, 2}  # the forget set cycles


def test_heldout_dataset_and_datamodule_input() -> None:
    class DM(pl.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(IndexedDataset(_dataset(20)), batch_size=4)

    held = TensorDataset(torch.zeros(5, 1), torch.zeros(5, dtype=torch.long))
    dm = ForgetRetainDataModule(DM(), [5], heldout=held)
    assert dm.num_samples == 20
    assert len(dm.retain_set) == 19
    _, ids = _collect(dm.heldout_dataloader())
    assert ids.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("ids", "match"),
    [
        ([], "empty forget set"),
        ([1, 99], r"in \[0, 50\)"),
        ([-1], r"in \[0, 50\)"),
        ([4, 4, 7], "duplicates"),
        (list(range(50)), "covers all 50"),
        ([[1, 2]], "1-D"),
        ([0.5], "integer"),
        (torch.ones(50, dtype=torch.bool), "boolean mask"),
    ],
)
def test_bad_forget_ids_are_named(ids, match: str) -> None:
    with pytest.raises(ForgetSetError, match=match):
        ForgetRetainDataModule(_dataset(), ids)


def test_forget_ids_inside_heldout_split_are_rejected() -> None:
    held = ForgetRetainDataModule(_dataset(), [0], heldout=10, seed=3).heldout_ids
    assert held is not None
    with pytest.raises(ForgetSetError, match="held out"):
        ForgetRetainDataModule(_dataset(), [int(held[0])], heldout=10, seed=3)
    with pytest.raises(ValueError, match="held-out size"):
        ForgetRetainDataModule(_dataset(), [0], heldout=50)
    with pytest.raises(ValueError, match="fraction"):
        ForgetRetainDataModule(_dataset(), [0], heldout=1.5)


def test_excluded_examples_are_in_no_training_batch() -> None:
    """A reference model's OUT examples: neither retained nor forgotten, ids unchanged."""
    out = [5, 6, 7, 20, 49]
    dm = ForgetRetainDataModule(_dataset(), [0, 1], batch_size=10, exclude_ids=out)
    assert dm.exclude_ids.tolist() == out
    assert sorted(dm.retain_ids.tolist()) == [i for i in range(2, 50) if i not in out]
    seen_retain, seen_forget = [], []
    for batch, _, _ in dm.train_dataloader():
        seen_retain.append(batch["retain"][0][:, 0].long())  # the feature encodes the id
        seen_forget.append(batch["forget"].batch[0][:, 0].long())
    assert len(seen_retain) == 5  # an epoch is one pass over the 43 retained examples
    assert sorted(torch.cat(seen_retain).tolist()) == dm.retain_ids.tolist()
    assert set(torch.cat(seen_forget).tolist()) == {0, 1}
    assert _collect(dm.forget_dataloader())[1].tolist() == [0, 1]
    assert dm.num_samples == 50  # ids keep indexing the whole data set
    for nothing in (None, [], torch.zeros(0, dtype=torch.long)):
        plain = ForgetRetainDataModule(_dataset(), [0, 1], exclude_ids=nothing)
        assert plain.exclude_ids.numel() == 0
        assert plain.retain_ids.tolist() == list(range(2, 50))


@pytest.mark.parametrize(
    ("exclude", "match"),
    [
        ([1, 8], r"\[1\] are in both"),
        ([60], "exclude_ids"),
        ([2, 2], "exclude_ids"),
        (torch.tensor(3), "`exclude_ids` to be a 1-D"),
    ],
)
def test_bad_excluded_ids_are_named(exclude: object, match: str) -> None:
    with pytest.raises(ForgetSetError, match=match):
        ForgetRetainDataModule(_dataset(), [0, 1], exclude_ids=exclude)


def test_validate_returns_sorted_unique_long() -> None:
    out = validate_forget_ids(torch.tensor([9, 2, 5], dtype=torch.int32), 10)
    assert out.dtype == torch.long
    assert out.tolist() == [2, 5, 9]


def test_epoch_seeded_sampler_reproduces_per_epoch() -> None:
    a, b = EpochSeededSampler(30, seed=4), EpochSeededSampler(30, seed=4)
    first = list(a)
    assert sorted(first) == list(range(30))
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    sub = EpochSeededSampler(torch.tensor([3, 8, 11]), seed=0)
    assert sorted(sub) == [3, 8, 11]
    assert len(sub) == 3
