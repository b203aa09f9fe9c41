"""The experiments' checkpoint files: safe, checksummed, and the same format `lightning-unlearn
unlearn` / `evaluate` read (cli/common.py keeps its own reader until the CLI uses this one)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_unlearn.cli.common import load_model_checkpoint as cli_load
from lightning_unlearn.cli.common import read_forget_ids
from lightning_unlearn.cli.common import save_model_checkpoint as cli_save
from lightning_unlearn.errors import IntegrityError
from lightning_unlearn.experiments.checkpoints import (
    ChecksummedCheckpointIO,
    load_model_checkpoint,
    save_model_checkpoint,
    write_forget_ids,
)
from lightning_unlearn.models import GroupNormCNN
from tests.cli._faults import flip_byte

DESCRIPTION = {"name": "digits", "hparams": {"batch_size": 64, "seed": 0}}


def _model() -> GroupNormCNN:
    torch.manual_seed(0)
    return GroupNormCNN(in_channels=1, num_classes=10, input_size=8, lr=0.1)


@pytest.mark.parametrize(("save", "load"), [(save_model_checkpoint, load_model_checkpoint),
                                            (save_model_checkpoint, cli_load),
                                            (cli_save, load_model_checkpoint)])  # fmt: skip
def test_round_trip_and_compatible_with_the_command_line(save, load, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = _model()
    save(model, tmp_path / "m.ckpt", datamodule=DESCRIPTION, extra={"command": "demo"})
    loaded, info = load(tmp_path / "m.ckpt")
    assert type(loaded) is GroupNormCNN
    assert info["datamodule"] == DESCRIPTION
    assert info["extra"] == {"command": "demo"}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_a_flipped_byte_is_refused(tmp_path: Path) -> None:
    path = save_model_checkpoint(_model(), tmp_path / "m.ckpt", datamodule=DESCRIPTION)
    bad = flip_byte(path, tmp_path / "bad.ckpt")  # inside a tensor's data: loads, wrong weights
    with pytest.raises(IntegrityError):
        load_model_checkpoint(bad)


def test_checkpoint_io_round_trip(tmp_path: Path) -> None:
    io = ChecksummedCheckpointIO()
    state = {"state_dict": {"w": torch.arange(4.0)}, "epoch": 3}
    io.save_checkpoint(state, tmp_path / "c.ckpt")
    loaded = io.load_checkpoint(tmp_path / "c.ckpt")
    assert loaded["epoch"] == 3
    assert torch.equal(loaded["state_dict"]["w"], torch.arange(4.0))
    with pytest.raises(TypeError, match="storage_options"):
        io.save_checkpoint(state, tmp_path / "d.ckpt", storage_options={"x": 1})


def test_forget_ids_are_what_unlearn_reads(tmp_path: Path) -> None:
    path = write_forget_ids(tmp_path / "ids.json", torch.tensor([9, 2, 40]))
    # the reader canonicalises once where ids enter (validation.check_forget_ids): sorted
    assert read_forget_ids(str(path)).tolist() == [2, 9, 40]
