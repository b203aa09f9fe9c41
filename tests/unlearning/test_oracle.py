"""train_oracle (unlearning/oracle.py): a fresh copy retrained on the retain set only."""

from __future__ import annotations

from lightning_unlearn import ForgetRetainDataModule
from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.unlearning import train_oracle
from tests.unlearning._tiny import Tiny
from tests.unlearning._tiny import tiny_data as _data


def test_train_oracle_retrains_a_fresh_copy_on_the_retain_set_only() -> None:

    dm = ForgetRetainDataModule(IndexedDataset(_data()), [3, 4, 7], batch_size=8)
    net = Tiny()
    oracle = train_oracle(net, dm, max_epochs=1, accelerator="cpu")
    assert type(oracle) is Tiny
    assert oracle is not net
    assert sorted(oracle.seen) == dm.retain_ids.tolist()  # one epoch over the retain set only
    assert not net.seen  # the original is untouched
