"""Helpers of the fault-injection tests: flip bytes inside torch zip files, compare runs."""

from __future__ import annotations

import shutil
import struct
import zipfile
from pathlib import Path

import torch

from lightning_unlearn import PrivacyLedger
from lightning_unlearn.checkpoints import load_weights
from lightning_unlearn.models import MLPClassifier

LEDGER_TENSORS = ("privacy", "counts", "sq_norm_sum", "last_norm")


def data_entries(path: Path) -> list[tuple[str, int, int]]:
    """``(name, data offset, size)`` of every tensor-storage entry of a torch zip file."""
    out = []
    with zipfile.ZipFile(path) as archive, path.open("rb") as fh:
        for info in archive.infolist():
            if "/data/" not in info.filename or info.file_size == 0:
                continue
            fh.seek(info.header_offset + 26)
            name_len, extra_len = struct.unpack("<HH", fh.read(4))
            out.append(
                (info.filename, info.header_offset + 30 + name_len + extra_len, info.file_size)
            )
    return out


def flip_byte(src: Path, dst: Path, entry: int = 0, where: float = 0.5) -> Path:
    """Copy ``src`` to ``dst`` with one data byte of storage ``entry`` inverted."""
    shutil.copyfile(src, dst)
    _, offset, size = data_entries(dst)[entry]
    pos = offset + int(size * where)
    with dst.open("r+b") as fh:
        fh.seek(pos)
        byte = fh.read(1)
        fh.seek(pos)
        fh.write(bytes([byte[0] ^ 0xFF]))
    return dst


def assert_same_run(a: Path, b: Path, atol: float = 1e-12) -> None:
    """The final MLP and ledger of two `fit` output directories agree to ``atol``."""
    model_a, model_b = MLPClassifier(input_dim=64), MLPClassifier(input_dim=64)
    load_weights(model_a, a / "model.ckpt")
    load_weights(model_b, b / "model.ckpt")
    for (key, x), y in zip(
        model_a.state_dict().items(), model_b.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(y, x, rtol=0, atol=atol, msg=f"weights {key}")
    ledger_a = PrivacyLedger.load(a / "privacy_ledger.pt")
    ledger_b = PrivacyLedger.load(b / "privacy_ledger.pt")
    for name in LEDGER_TENSORS:
        x, y = getattr(ledger_a, name), getattr(ledger_b, name)
        torch.testing.assert_close(y, x, rtol=0, atol=atol, msg=f"ledger {name}")
