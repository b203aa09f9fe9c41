"""Shared pieces of the command line: data sets, models, safe checkpoints, ledgers and id files.

Checkpoints written by the command line are a subset of Lightning's format (``state_dict``,
``hyper_parameters``) plus a ``"lightning_unlearn"`` entry naming the model class and the data
set, so ``GroupNormCNN.load_from_checkpoint`` reads them too. They hold only tensors and plain
Python values, carry an embedded SHA-256 (:mod:`lightning_unlearn.cli.checkpointing`) and are
always read back with ``torch.load(..., weights_only=True)`` and verified.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import lightning
import torch
from torch import nn

from lightning_unlearn.accounting import PrivacyLedger
from lightning_unlearn.data.modules import (
    DigitsDataModule,
    FashionMNISTDataModule,
    TensorSplitDataModule,
)
from lightning_unlearn.errors import CheckpointError, LedgerMismatchError
from lightning_unlearn.integrity import load_verified, save_verified, write_json
from lightning_unlearn.models import ClassifierModule, GroupNormCNN, MLPClassifier, build_model
from lightning_unlearn.validation import check_forget_ids

__all__ = [
    "CHECKPOINT_KEY",
    "DATASETS",
    "build_datamodule",
    "describe_datamodule",
    "load_ledger",
    "load_model_checkpoint",
    "make_model",
    "read_forget_ids",
    "save_model_checkpoint",
    "write_forget_ids",
]

CHECKPOINT_KEY = "lightning_unlearn"
CHECKPOINT_VERSION = 1
DATASETS: dict[str, type[TensorSplitDataModule]] = {
    "digits": DigitsDataModule,
    "fashion-mnist": FashionMNISTDataModule,
}


def build_datamodule(name: str, **kwargs: Any) -> TensorSplitDataModule:
    """Build a bundled data module by name (``"digits"`` or ``"fashion-mnist"``).

    Args:
        name: the data set.
        **kwargs: constructor arguments; ``None`` values are dropped so defaults apply.

    Returns:
        The data module (not yet set up).

    Raises:
        ValueError: unknown data set name.
    """
    if name not in DATASETS:
        raise ValueError(f"Expected `dataset` to be one of {sorted(DATASETS)}, but got {name!r}.")
    cls = DATASETS[name]
    return cls(**{k: v for k, v in kwargs.items() if v is not None})


def describe_datamodule(dm: TensorSplitDataModule) -> dict[str, Any]:
    """``{"name": ..., "hparams": {...}}`` from which :func:`build_datamodule` rebuilds ``dm``."""
    for name, cls in DATASETS.items():
        if type(dm) is cls:
            return {"name": name, "hparams": dict(dm.hparams)}
    raise ValueError(f"Expected a bundled data module, but got {type(dm).__name__}.")


def make_model(arch: str, dm: TensorSplitDataModule, **hparams: Any) -> ClassifierModule:
    """A ``"cnn"`` (:class:`GroupNormCNN`) or ``"mlp"`` sized for the data module's inputs."""
    channels, height, width = dm.input_shape
    if arch == "cnn":
        return GroupNormCNN(
            in_channels=channels, num_classes=dm.num_classes, input_size=height, **hparams
        )
    if arch == "mlp":
        return MLPClassifier(
            input_dim=channels * height * width, num_classes=dm.num_classes, **hparams
        )
    raise ValueError(f"Expected `model` to be 'cnn' or 'mlp', but got {arch!r}.")


def save_model_checkpoint(
    model: ClassifierModule,
    path: str | Path,
    *,
    datamodule: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a model checkpoint that loads safely (``weights_only=True``), atomically, with an
    embedded checksum.

    Args:
        model: a :class:`GroupNormCNN` or :class:`MLPClassifier`.
        path: the ``.ckpt`` path (parents created).
        datamodule: :func:`describe_datamodule` of the training data.
        extra: JSON-able details (e.g. the command that wrote it).

    Returns:
        The path.
    """
    from lightning_unlearn.models import model_name

    checkpoint = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "hyper_parameters": json.loads(json.dumps(dict(model.hparams))),
        "pytorch-lightning_version": lightning.__version__,
        CHECKPOINT_KEY: {
            "version": CHECKPOINT_VERSION,
            "model": model_name(model),
            "datamodule": json.loads(json.dumps(datamodule)),
            "extra": json.loads(json.dumps(extra or {})),
        },
    }
    return save_verified(checkpoint, path)


def load_model_checkpoint(path: str | Path) -> tuple[ClassifierModule, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_model_checkpoint` (``weights_only=True``).

    Args:
        path: the ``.ckpt`` path.

    Returns:
        ``(model, info)``: the model in eval mode, and the checkpoint's ``"lightning_unlearn"``
        entry (``model``, ``datamodule``, ``extra``).

    Raises:
        CheckpointError: the file is missing, unreadable, or not a lightning-unlearn
            checkpoint.
        IntegrityError: its embedded checksum is missing or differs (a corrupt file).
    """
    hint = "pass the `model.ckpt` written by `lightning-unlearn fit` (or `unlearned.ckpt`)."
    checkpoint = load_verified(path, "checkpoint", hint, expect_key=CHECKPOINT_KEY)
    if CHECKPOINT_KEY not in checkpoint:
        raise CheckpointError(
            f"Expected {str(path)!r} to be a lightning-unlearn model checkpoint (with a "
            f"{CHECKPOINT_KEY!r} entry), but it is not; {hint}"
        )
    info = checkpoint[CHECKPOINT_KEY]
    if info.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"Expected checkpoint format version {CHECKPOINT_VERSION}, but {str(path)!r} has "
            f"{info.get('version')!r}; re-create it with this version's `lightning-unlearn fit`."
        )
    model = build_model(info["model"], **checkpoint["hyper_parameters"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(f"The weights in {str(path)!r} do not fit the model: {err}") from None
    model.eval()
    return model, info


def load_ledger(path: str | Path, num_samples: int | None = None) -> PrivacyLedger:
    """Load a :class:`PrivacyLedger` saved by the monitor, with clear errors.

    Args:
        path: ``privacy_ledger.pt``.
        num_samples: the expected number of training examples (checked when given).

    Returns:
        The ledger on the CPU.

    Raises:
        CheckpointError: missing or unreadable file.
        LedgerMismatchError: the ledger covers another number of examples.
    """
    path = Path(path)
    hint = "pass the `privacy_ledger.pt` written by `lightning-unlearn fit`."
    if not path.is_file():
        raise CheckpointError(f"The ledger file {str(path)!r} does not exist; {hint}")
    try:
        ledger = PrivacyLedger.load(path, map_location="cpu")
    except (LedgerMismatchError, CheckpointError):
        raise
    except Exception as err:
        raise CheckpointError(
            f"Expected {str(path)!r} to be a PrivacyLedger file, but it could not be read "
            f"({type(err).__name__}: {err}); {hint}"
        ) from None
    if num_samples is not None and ledger.num_samples != num_samples:
        raise LedgerMismatchError(
            f"Expected a ledger of {num_samples} training examples (the checkpoint's data set), "
            f"but {str(path)!r} has {ledger.num_samples}; pass the ledger written by the same "
            "`lightning-unlearn fit` run as the checkpoint."
        )
    return ledger


_INLINE_IDS = re.compile(r"^\s*[+-]?\d+(\s*,\s*[+-]?\d+)*\s*,?\s*$")


def read_forget_ids(spec: str) -> torch.Tensor:
    """Read forget ids from a file (``.json`` list, or text with ids separated by commas or
    whitespace) or from an inline comma-separated list such as ``"3,17,42"``.

    The ids are checked here, where they enter
    (:func:`~lightning_unlearn.validation.check_forget_ids`): integers only (JSON floats and
    booleans are errors, not truncated), within int64; an inline list may hold negative numbers
    (``-1,3``), which the range check against the data set then reports.

    Args:
        spec: a path or an inline list.

    Returns:
        The ids as a 1-D long tensor (validation against the data set happens later).

    Raises:
        CheckpointError: the file is missing or is not valid JSON.
        InvalidArgumentError: a value is not an integer id.
    """
    path = Path(spec)
    if not path.exists() and _INLINE_IDS.match(spec):
        return check_forget_ids([p for p in spec.split(",") if p.strip()], name="inline forget ids")
    if not path.is_file():
        raise CheckpointError(
            f"The forget-id file {spec!r} does not exist; pass a .json list, a text file of "
            "integer ids, or an inline list such as `3,17,42`."
        )
    text = path.read_text()
    if path.suffix == ".json":
        try:
            values = json.loads(text)
        except ValueError as err:
            raise CheckpointError(f"Expected {spec!r} to be a JSON list of ids: {err}.") from None
        if not isinstance(values, list):
            raise CheckpointError(
                f"Expected {spec!r} to hold a JSON list of ids, but got {type(values).__name__}."
            )
    else:
        values = text.replace(",", " ").split()
    return check_forget_ids(values, name=f"the forget ids in {spec!r}")


def write_forget_ids(path: str | Path, ids: torch.Tensor) -> Path:
    """Write ids as a JSON list (readable by :func:`read_forget_ids`), atomically."""
    return write_json(path, [int(i) for i in ids.tolist()])


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
