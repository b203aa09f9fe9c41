"""The bundled models' checkpoints, as the experiments write and read them.

They are :func:`lightning_unlearn.checkpoints.save_model` files (atomic, checksummed, read with
``torch.load(..., weights_only=True)`` and verified; the same format ``lightning-unlearn fit``
writes, so ``unlearn`` and ``evaluate`` check their data-set fingerprint), whose record also
names the bundled model and data module (``"bundled"``), so :func:`load_model_checkpoint`
rebuilds both without a configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning_unlearn.checkpoints import RECORD_KEY, load_weights, model_record, save_model
from lightning_unlearn.data.modules import TensorSplitDataModule
from lightning_unlearn.errors import CheckpointError
from lightning_unlearn.experiments.builders import describe_datamodule
from lightning_unlearn.integrity import load_verified
from lightning_unlearn.models import ClassifierModule, build_model, model_name

__all__ = ["load_model_checkpoint", "save_model_checkpoint"]

_HINT = "pass a `model.ckpt` written by `lightning-unlearn demo` / `reproduce`."


def save_model_checkpoint(
    model: ClassifierModule,
    path: str | Path,
    *,
    datamodule: TensorSplitDataModule,
    command: str,
    **extra: Any,
) -> Path:
    """Write ``model`` as a :func:`~lightning_unlearn.checkpoints.save_model` file whose record
    also names the bundled model and data module.

    Args:
        model: a :class:`~lightning_unlearn.models.GroupNormCNN` or
            :class:`~lightning_unlearn.models.MLPClassifier`.
        path: the ``.ckpt`` path (parents created).
        datamodule: the bundled data module it was trained on (set up).
        command: what wrote it (``"demo"``, ...).
        **extra: JSON-able details.

    Returns:
        The path.

    Example:
        >>> import tempfile
        >>> from lightning_unlearn.experiments.builders import build_datamodule
        >>> from lightning_unlearn.models import MLPClassifier
        >>> dm = build_datamodule("digits", batch_size=32, seed=0); dm.setup()
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = save_model_checkpoint(MLPClassifier(64, 10), Path(tmp) / "m.ckpt",
        ...                                  datamodule=dm, command="doctest")
        ...     type(load_model_checkpoint(path)[0]).__name__
        'MLPClassifier'
    """
    record = model_record(model, datamodule, command, **extra)
    record["bundled"] = {"model": model_name(model), "datamodule": describe_datamodule(datamodule)}
    return save_model(model, path, record)


def load_model_checkpoint(path: str | Path) -> tuple[ClassifierModule, dict[str, Any]]:
    """Rebuild the bundled model of a :func:`save_model_checkpoint` file and load its weights.

    Returns:
        ``(model, record)``: the model in eval mode and the file's record (``record["bundled"]``
        names the model and the data module:
        :func:`~lightning_unlearn.experiments.builders.datamodule_from_description`).

    Raises:
        CheckpointError: missing, unreadable, or not a checkpoint of a bundled model.
        IntegrityError: the embedded checksum is missing or differs (a corrupt file).
    """
    checkpoint = load_verified(path, "checkpoint", _HINT, expect_key=RECORD_KEY)
    bundled = checkpoint.get(RECORD_KEY, {}).get("bundled")
    if not isinstance(bundled, dict):
        raise CheckpointError(
            f"Expected {str(path)!r} to be a checkpoint of a bundled model (with a "
            f"{RECORD_KEY!r} record naming it), but it is not; {_HINT} For your own model, use "
            "`lightning_unlearn.checkpoints.load_weights(module, path)`."
        )
    model = build_model(bundled["model"], **checkpoint["hyper_parameters"])
    record = load_weights(model, path)
    model.eval()
    return model, record
