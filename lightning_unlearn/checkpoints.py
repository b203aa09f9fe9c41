"""Checkpoints of any LightningModule that load safely: atomic, checksummed, verified on load.

``torch.load`` does not check the zip CRC, so flipped data bytes in a checkpoint load as silently
wrong weights. :class:`ChecksummedCheckpointIO` makes every checkpoint a ``Trainer`` writes carry
``CHECKSUM_KEY`` (:func:`~lightning_unlearn.integrity.save_verified`: the
:func:`~lightning_unlearn.integrity.nested_sha256` of everything else in it) and verifies it on
load (:class:`~lightning_unlearn.errors.IntegrityError` on a mismatch). :func:`save_model` /
:func:`load_weights` write and read a module's weights with a plain record of what built it (the
``class_path`` / ``init_args`` of the model and the data, the training set's fingerprint).
Everything is read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from typing_extensions import override

from lightning_unlearn.data.fingerprint import dataset_fingerprint
from lightning_unlearn.errors import CheckpointError
from lightning_unlearn.integrity import CHECKSUM_KEY, load_verified, save_verified

__all__ = [
    "CHECKSUM_KEY",
    "RECORD_KEY",
    "ChecksummedCheckpointIO",
    "describe",
    "load_weights",
    "model_record",
    "save_model",
    "train_dataset",
]


class ChecksummedCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` that writes :func:`save_verified` files and verifies on load.

    Pass it as ``Trainer(plugins=[ChecksummedCheckpointIO()])``: every checkpoint the trainer
    writes (``ModelCheckpoint``, ``trainer.save_checkpoint``) is atomic and checksummed, and
    ``trainer.fit(ckpt_path=...)`` refuses a corrupt one with
    :class:`~lightning_unlearn.errors.IntegrityError`. Loading is always ``weights_only=True``.
    """

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no `storage_options`.")
        save_verified(checkpoint, path)

    @override
    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        result: dict[str, Any] = load_verified(
            path, "Lightning checkpoint", "Resume from another checkpoint of this run."
        )
        return result


RECORD_KEY = "lightning_unlearn"
RECORD_VERSION = 2
_HINT = "pass the `model.ckpt` written by `lightning-unlearn fit` (or `unlearned.ckpt`)."


def save_model(model: nn.Module, path: str | Path, record: dict[str, Any]) -> Path:
    """Write ``model``'s weights and a plain ``record`` (the ``model`` / ``data`` configs that
    built it, the data set's fingerprint, the command), atomically and checksummed.

    The file holds only tensors and plain values, so it loads with ``weights_only=True``; its
    ``hyper_parameters`` are the model's ``init_args``.
    """
    record = json.loads(json.dumps(record))
    checkpoint = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "hyper_parameters": record.get("model", {}).get("init_args", {}),
        "pytorch-lightning_version": lightning.__version__,
        RECORD_KEY: {"version": RECORD_VERSION, **record},
    }
    return save_verified(checkpoint, path)


def load_weights(module: nn.Module, path: str | Path, what: str = "checkpoint") -> dict[str, Any]:
    """Load the weights of a :func:`save_model` file into ``module`` (verified, weights only).

    Returns:
        The file's record.

    Raises:
        CheckpointError: missing, unreadable, not a lightning-unlearn model checkpoint, or
            weights that do not fit ``module``.
        IntegrityError: the embedded checksum is missing or differs.
    """
    checkpoint = load_verified(path, what, _HINT, expect_key=RECORD_KEY)
    if RECORD_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"Expected {str(path)!r} to be a lightning-unlearn model checkpoint (with a "
            f"{RECORD_KEY!r} entry), but it is not; {_HINT}"
        )
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(
            f"The weights in {what} {str(path)!r} do not fit the configured model "
            f"{type(module).__name__} ({first}); configure the model it was trained as."
        ) from None
    record: dict[str, Any] = checkpoint[RECORD_KEY]
    return record


def describe(obj: Any) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of a module or data module (its plain ``hparams``)."""
    hparams = json.loads(json.dumps(dict(getattr(obj, "hparams", {}) or {}), default=str))
    return {"class_path": f"{type(obj).__module__}.{type(obj).__qualname__}", "init_args": hparams}


def train_dataset(datamodule: LightningDataModule) -> Any:
    """The data set whose positions are the sample ids (the training loader's)."""
    return datamodule.train_dataloader().dataset


def model_record(
    model: LightningModule, datamodule: LightningDataModule, command: str, **extra: Any
) -> dict[str, Any]:
    """The record :func:`save_model` stores beside a model's weights."""
    data = train_dataset(datamodule)
    return {
        "model": describe(model),
        "data": describe(datamodule),
        "dataset_fingerprint": dataset_fingerprint(data, len(data)),
        "command": command,
        "extra": extra,
    }
