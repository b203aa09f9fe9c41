"""The experiments' checkpoint files: safe, checksummed, and the same format `lightning-unlearn
fit` writes, so `unlearn` / `evaluate` read them and check their data set's fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_unlearn.checkpoints import load_weights
from lightning_unlearn.data.fingerprint import dataset_fingerprint
from lightning_unlearn.data.forget_ids import read_forget_ids, write_forget_ids
from lightning_unlearn.errors import CheckpointError, IntegrityError
from lightning_unlearn.experiments.builders import build_datamodule, datamodule_from_description
from lightning_unlearn.experiments.checkpoints import load_model_checkpoint, save_model_checkpoint
from lightning_unlearn.models import GroupNormCNN
from tests.cli._faults import flip_byte


def _model() -> GroupNormCNN:
    torch.manual_seed(0)
    return GroupNormCNN(in_channels=1, num_classes=10, input_size=8, lr=0.1)


def _dm():  # type: ignore[no-untyped-def]
    dm = build_datamodule("digits", batch_size=64, seed=0)
    dm.setup()
    return dm


def test_round_trip_rebuilds_the_bundled_model_and_data(tmp_path: Path) -> None:
    model, dm = _model(), _dm()
    save_model_checkpoint(model, tmp_path / "m.ckpt", datamodule=dm, command="demo", seed=3)
    loaded, record = load_model_checkpoint(tmp_path / "m.ckpt")
    assert type(loaded) is GroupNormCNN
    assert (record["command"], record["extra"]) == ("demo", {"seed": 3})
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    rebuilt = datamodule_from_description(record["bundled"]["datamodule"])
    rebuilt.setup()
    data, again = dm.train_dataset, rebuilt.train_dataset
    assert dataset_fingerprint(again, len(again)) == dataset_fingerprint(data, len(data))


def test_the_command_line_reads_it_and_its_fingerprint(tmp_path: Path) -> None:
    model, dm = _model(), _dm()
    path = save_model_checkpoint(model, tmp_path / "m.ckpt", datamodule=dm, command="demo")
    fresh = GroupNormCNN(in_channels=1, num_classes=10, input_size=8, lr=0.1)
    record = load_weights(fresh, path)  # the reader of `unlearn` / `evaluate`
    data = dm.train_dataset
    assert record["dataset_fingerprint"] == dataset_fingerprint(data, len(data))
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)


def test_a_flipped_byte_is_refused(tmp_path: Path) -> None:
    path = save_model_checkpoint(_model(), tmp_path / "m.ckpt", datamodule=_dm(), command="t")
    bad = flip_byte(path, tmp_path / "bad.ckpt")  # inside a tensor's data: loads, wrong weights
    with pytest.raises(IntegrityError):
        load_model_checkpoint(bad)


def test_a_checkpoint_of_another_model_is_refused_with_the_fix(tmp_path: Path) -> None:
    from lightning_unlearn.checkpoints import model_record, save_model

    dm = _dm()
    path = save_model(_model(), tmp_path / "fit.ckpt", model_record(_model(), dm, "fit"))
    with pytest.raises(CheckpointError, match="load_weights"):
        load_model_checkpoint(path)


def test_forget_ids_are_what_unlearn_reads(tmp_path: Path) -> None:
    path = write_forget_ids(tmp_path / "ids.json", torch.tensor([9, 2, 40]))
    # the reader canonicalises once where ids enter (validation.check_forget_ids): sorted
    assert read_forget_ids(str(path)).tolist() == [2, 9, 40]
