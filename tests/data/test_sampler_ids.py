"""The sampler-id recorder: order, fresh passes, unreadable samplers, release, pickling."""

from __future__ import annotations

import pickle

import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from lightning_unlearn.data import record_sample_ids, release_sample_ids
from lightning_unlearn.data.sampler_ids import sampler_ids_unreadable_reason


def _data(n: int = 10) -> TensorDataset:
    return TensorDataset(torch.arange(n, dtype=torch.float32))


def test_a_new_pass_drops_what_an_abandoned_pass_left() -> None:
    loader = DataLoader(_data(), batch_size=3, shuffle=True)
    recorder = record_sample_ids(loader)
    it = iter(loader)
    next(it)  # a pass abandoned after one batch (max_steps, should_stop)
    for (x,) in loader:
        assert recorder.pop().tolist() == x.long().tolist()
    assert len(recorder) == 0


def test_unbatched_loader_and_release() -> None:
    loader = DataLoader(_data(4), batch_size=None)
    original = loader.sampler
    recorder = record_sample_ids(loader)
    assert record_sample_ids(loader) is recorder  # idempotent
    assert [int(recorder.pop()) for _ in [next(iter(loader))]] == [0]
    release_sample_ids(loader)
    assert loader.sampler is original


def test_non_integer_batch_samplers_are_unreadable_and_wrappers_pickle() -> None:
    class Keys(BatchSampler):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield ["a", "b"]

    keys = Keys(SequentialSampler(range(2)), batch_size=2, drop_last=False)
    loader = DataLoader({"a": torch.zeros(1), "b": torch.ones(1)}, batch_sampler=keys)
    recorder = record_sample_ids(loader)
    next(iter(loader))
    assert recorder.pop() is None
    assert sampler_ids_unreadable_reason(DataLoader(_data(), in_order=False)) is not None
    plain = DataLoader(_data(), batch_size=4)
    record_sample_ids(plain)
    clone = pickle.loads(pickle.dumps(plain.batch_sampler))
    assert clone.batch_size == 4
