"""The files the experiments and the command line write: checksummed model checkpoints, id lists.

Model checkpoints are a subset of Lightning's format (``state_dict``, ``hyper_parameters``) plus
a ``"lightning_unlearn"`` entry naming the model class and the data set, so
``GroupNormCNN.load_from_checkpoint`` reads them too. They hold only tensors and plain Python
values, carry an embedded SHA-256 (:func:`~lightning_unlearn.integrity.save_verified`) and are
always read back with ``torch.load(..., weights_only=True)`` and verified.

``torch.load`` does not check the zip CRC, so flipped data bytes in a checkpoint load as silently
wrong weights. Every checkpoint written here (and the Lightning checkpoints of a run with
:class:`ChecksummedCheckpointIO`) carries :data:`~lightning_unlearn.integrity.CHECKSUM_KEY`: the
:func:`~lightning_unlearn.integrity.nested_sha256` of everything else in it. Loading recomputes
it and raises :class:`~lightning_unlearn.errors.IntegrityError` on a mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from lightning_unlearn.errors import CheckpointError
from lightning_unlearn.integrity import CHECKSUM_KEY, load_verified, save_verified, write_json
from lightning_unlearn.models import ClassifierModule, build_model, model_name

__all__ = [
    "CHECKPOINT_KEY",
    "CHECKPOINT_VERSION",
    "CHECKSUM_KEY",
    "ChecksummedCheckpointIO",
    "load_model_checkpoint",
    "save_model_checkpoint",
    "write_forget_ids",
]

CHECKPOINT_KEY = "lightning_unlearn"
"""The checkpoint entry that names the model class, the data set and the writer."""
CHECKPOINT_VERSION = 1


class ChecksummedCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` that writes :func:`save_verified` files and verifies on load.

    Pass it as ``Trainer(plugins=[ChecksummedCheckpointIO()])``: every checkpoint the trainer
    writes (``ModelCheckpoint``, ``trainer.save_checkpoint``) is atomic and checksummed, and
    ``trainer.fit(ckpt_path=...)`` refuses a corrupt one with
    :class:`~lightning_unlearn.errors.IntegrityError`. Loading is always ``weights_only=True``.

    Example:
        >>> import lightning.pytorch as pl
        >>> trainer = pl.Trainer(plugins=[ChecksummedCheckpointIO()], logger=False)
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
        model: a :class:`~lightning_unlearn.models.GroupNormCNN` or
            :class:`~lightning_unlearn.models.MLPClassifier`.
        path: the ``.ckpt`` path (parents created).
        datamodule: :func:`~lightning_unlearn.experiments.builders.describe_datamodule` of the
            training data.
        extra: JSON-able details (e.g. the command that wrote it).

    Returns:
        The path.

    Example:
        >>> import tempfile
        >>> from lightning_unlearn.models import MLPClassifier
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save_model_checkpoint(
        ...         MLPClassifier(4, 3), Path(tmp) / "model.ckpt", datamodule={"name": "digits"}
        ...     )
        ...     load_model_checkpoint(path)[1]["model"]
        'mlp'
    """
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


def write_forget_ids(path: str | Path, ids: torch.Tensor) -> Path:
    """Write ids as a JSON list (what ``lightning-unlearn unlearn --forget-ids`` reads),
    atomically."""
    return write_json(path, [int(i) for i in ids.tolist()])
