"""IndexedDataset and get_sample_ids: ids travel with every item and batch."""

from __future__ import annotations

import pickle

import pytest
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_unlearn.data import SAMPLE_ID_KEY, IndexedDataset, get_sample_ids, indexed_item_type
from lightning_unlearn.errors import MissingSampleIdError


class DictDataset(Dataset):
    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": torch.full((2,), float(i)), "y": torch.tensor(i % 2)}


class ScalarDataset(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([10.0 * i])


def test_tuple_items_become_named_tuples_and_batches_unpack() -> None:
    x, y = torch.randn(20, 3), torch.arange(20)
    ds = IndexedDataset(TensorDataset(x, y))
    item = ds[7]
    assert type(item) is indexed_item_type(2)
    assert item.sample_id == 7
    torch.testing.assert_close(item.field0, x[7])
    # shuffled batches: every id points at its own row
    for bx, by, ids in DataLoader(ds, batch_size=6, shuffle=True):
        torch.testing.assert_close(bx, x[ids])
        assert by.tolist() == ids.tolist()  # y == index here
    batch = next(iter(DataLoader(ds, batch_size=5, shuffle=False)))
    assert hasattr(batch, SAMPLE_ID_KEY)
    assert get_sample_ids(batch).tolist() == [0, 1, 2, 3, 4]


def test_named_tuple_survives_pickle_workers_and_device_transfer() -> None:
    ds = IndexedDataset(TensorDataset(torch.randn(8, 2), torch.arange(8)))
    restored = pickle.loads(pickle.dumps(ds[3]))
    assert type(restored) is type(ds[3])
    assert restored.sample_id == 3
    torch.testing.assert_close(restored.field0, ds[3].field0)
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=1)))
    moved = move_data_to_device(batch, torch.device("cpu"))
    assert type(moved) is type(batch)
    assert get_sample_ids(moved).tolist() == [0, 1, 2, 3]


def test_dict_items_get_the_sample_id_key() -> None:
    ds = IndexedDataset(DictDataset())
    assert ds[4][SAMPLE_ID_KEY] == 4
    batch = next(iter(DataLoader(ds, batch_size=3, shuffle=False)))
    assert get_sample_ids(batch).tolist() == [0, 1, 2]
    assert batch["x"][:, 0].tolist() == [0.0, 1.0, 2.0]


def test_other_items_are_wrapped_with_their_id() -> None:
    ds = IndexedDataset(ScalarDataset())
    assert ds[2].sample_id == 2
    assert ds[2].field0.tolist() == [20.0]
    x, ids = next(iter(DataLoader(ds, batch_size=4)))
    assert x[:, 0].tolist() == [0.0, 10.0, 20.0, 30.0]
    assert ids.tolist() == [0, 1, 2, 3]


def test_list_items_are_indexed_like_tuples() -> None:
    class ListDataset(Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> list[int]:
            return [i, 2 * i]

    assert tuple(IndexedDataset(ListDataset())[2]) == (2, 4, 2)


def test_invalid_wrapping_is_rejected() -> None:
    ds = IndexedDataset(TensorDataset(torch.zeros(3, 1)))
    with pytest.raises(ValueError, match="wrap it only once"):
        IndexedDataset(ds)
    with pytest.raises(TypeError, match="map-style"):
        IndexedDataset(iter(range(3)))

    class HasKey(DictDataset):
        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {SAMPLE_ID_KEY: torch.tensor(i)}

    with pytest.raises(ValueError, match="already has one"):
        IndexedDataset(HasKey())[0]
    with pytest.raises(ValueError, match="1 to 16 fields"):
        indexed_item_type(17)


def test_missing_ids_name_indexed_dataset_and_sample_id_fn() -> None:
    plain = next(iter(DataLoader(TensorDataset(torch.zeros(4, 2), torch.arange(4)), batch_size=2)))
    with pytest.raises(MissingSampleIdError, match=r"IndexedDataset.*sample_id_fn"):
        get_sample_ids(plain)
    with pytest.raises(MissingSampleIdError, match="IndexedDataset"):
        get_sample_ids({"x": torch.zeros(2)})
    assert get_sample_ids(plain, sample_id_fn=lambda b: b[1]).tolist() == [0, 1]


def test_ids_must_be_a_1d_integer_tensor() -> None:
    with pytest.raises(MissingSampleIdError, match="1-D integer"):
        get_sample_ids({SAMPLE_ID_KEY: torch.tensor([0.0, 1.0])})
    with pytest.raises(MissingSampleIdError, match="1-D integer"):
        get_sample_ids({SAMPLE_ID_KEY: torch.tensor([[0, 1]])})
    with pytest.raises(MissingSampleIdError, match="1-D integer"):
        get_sample_ids({SAMPLE_ID_KEY: torch.tensor([True, False])})
    ids = get_sample_ids({SAMPLE_ID_KEY: torch.tensor([3, 1], dtype=torch.int32)})
    assert ids.dtype == torch.long
    assert ids.tolist() == [3, 1]
