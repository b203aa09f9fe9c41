"""Atomic writes, stale temporaries and hashes (the validators: tests/test_validation.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lightning_unlearn.errors import IntegrityError
from lightning_unlearn.integrity import (
    architecture_fingerprint,
    atomic_write,
    load_verified,
    nested_sha256,
    remove_stale_temporaries,
    save_verified,
    tensors_sha256,
)


def test_a_failing_write_keeps_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")

    def write_half() -> None:
        with atomic_write(target, "w") as fh:
            fh.write("half")
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_half()
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_only_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    mine = tmp_path / f".x.pid{os.getpid()}.abc.tmp"
    dead = tmp_path / ".x.pid999999999.abc.tmp"  # beyond pid_max: no such process
    other = tmp_path / "notes.tmp"
    for p in (mine, dead, other):
        p.write_text("t")
    assert remove_stale_temporaries(tmp_path) == [dead]
    assert mine.exists()
    assert other.exists()


def test_new_files_get_the_umask_mode(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "f") as fh:
            fh.write(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o640


def test_hashes_see_values_names_dtypes_not_order() -> None:
    a = {"w": torch.arange(4.0), "b": torch.zeros(2)}
    assert tensors_sha256(a) == tensors_sha256(dict(reversed(list(a.items()))))
    assert tensors_sha256(a) != tensors_sha256({**a, "w": torch.arange(4.0).double()})
    assert tensors_sha256(a) != tensors_sha256({"v": a["w"], "b": a["b"]})
    assert architecture_fingerprint(a) == architecture_fingerprint(
        {"w": torch.ones(4), "b": a["b"]}
    )
    assert nested_sha256({"a": [1, 2.0]}) != nested_sha256({"a": [1, 2]})  # types count


def test_verified_checkpoints_round_trip_and_refuse_edits(tmp_path: Path) -> None:
    path = save_verified({"state_dict": {"w": torch.ones(3)}, "epoch": 2}, tmp_path / "c.ckpt")
    assert load_verified(path)["epoch"] == 2
    torch.save({"state_dict": {"w": torch.ones(3)}}, tmp_path / "plain.ckpt")
    with pytest.raises(IntegrityError, match="no 'lightning_unlearn_sha256'"):
        load_verified(tmp_path / "plain.ckpt")
