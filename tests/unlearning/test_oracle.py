"""train_oracle (unlearning/oracle.py): a fresh copy retrained on the retain set only."""

from __future__ import annotations

from typing import Any

import torch

from lightning_unlearn import ForgetRetainDataModule
from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.unlearning import train_oracle
from lightning_unlearn.unlearning.oracle import fresh_copy
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


class _WithDropout(Tiny):
    """Records whether each of its layers was in training mode at every training step."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = torch.nn.Dropout(0.5)
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.modes.append(all(m.training for m in self.modules()))
        return super().training_step(batch, batch_idx)


def test_an_oracle_of_a_module_left_in_eval_mode_trains_in_training_mode() -> None:
    # A user evaluates the trained model (eval mode) and then asks for its oracle: the recipe
    # (dropout here; BatchNorm statistics likewise) must be the training one, not eval's.
    dm = ForgetRetainDataModule(IndexedDataset(_data()), [3, 4, 7], batch_size=8)
    net = _WithDropout().eval()
    oracle = train_oracle(net, dm, max_epochs=1, accelerator="cpu")
    assert len(oracle.modes) == 5  # 37 retain examples in batches of 8
    assert all(oracle.modes)
    assert not net.training  # the original's mode is left as it was
    assert fresh_copy(net, seed=0).training
