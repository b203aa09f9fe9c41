"""Checkpoints of the command line: written atomically, with an embedded SHA-256, verified on load.

``torch.load`` does not check the zip CRC, so flipped data bytes in a checkpoint load as silently
wrong weights. Every checkpoint the commands write (``model.ckpt``, ``unlearned.ckpt`` and the
Lightning checkpoints of ``fit``) carries ``CHECKSUM_KEY``: the
:func:`~lightning_unlearn.integrity.nested_sha256` of everything else in it. Loading recomputes
it and raises :class:`~lightning_unlearn.errors.IntegrityError` on a mismatch. Checkpoints are
always read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from lightning_unlearn.errors import CheckpointError, IntegrityError
from lightning_unlearn.integrity import atomic_write, nested_sha256

__all__ = ["CHECKSUM_KEY", "ChecksummedCheckpointIO", "load_verified", "save_verified"]

CHECKSUM_KEY = "lightning_unlearn_sha256"


def save_verified(checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` ``checkpoint`` plus its embedded checksum, atomically; returns the path."""
    body = {k: v for k, v in checkpoint.items() if k != CHECKSUM_KEY}
    data = {**body, CHECKSUM_KEY: nested_sha256(body)}
    with atomic_write(path) as fh:
        torch.save(data, fh)
    return Path(path)


def load_verified(
    path: str | os.PathLike[str],
    what: str = "checkpoint",
    hint: str = "",
    *,
    expect_key: str | None = None,
) -> Any:
    """Load a checkpoint written by :func:`save_verified` and check its embedded checksum.

    Args:
        path: the file.
        what: how the file is named in messages.
        hint: what to do instead, appended to messages.
        expect_key: an entry every checkpoint of this kind has; a file lacking both it and a
            checksum is reported as a file of another kind rather than as a corrupt one.

    Returns:
        The checkpoint dict, without the checksum entry.

    Raises:
        CheckpointError: the file is missing or cannot be read safely.
        IntegrityError: the checksum is missing or differs (corrupt or altered file).
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"The {what} file {str(p)!r} does not exist; {hint}")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, AttributeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"Expected {str(p)!r} to be a {what} saved with torch.save, but it could not be "
            f"read safely ({first}); it is corrupt, truncated or of another kind. {hint}"
        ) from None
    except Exception as err:  # damaged archives raise assorted errors from the unpickler
        raise CheckpointError(
            f"{str(p)!r} could not be read ({type(err).__name__}: {err}); the {what} is "
            f"corrupt or truncated. {hint}"
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"Expected {str(p)!r} to hold a {what} dict; {hint}")
    saved = data.pop(CHECKSUM_KEY, None)
    if saved is None and expect_key is not None and expect_key not in data:
        raise CheckpointError(
            f"Expected {str(p)!r} to be a lightning-unlearn model {what} (with a "
            f"{expect_key!r} entry), but it is not; {hint}"
        )
    if saved is None:
        raise IntegrityError(
            f"The {what} {str(p)!r} carries no {CHECKSUM_KEY!r} entry, so it cannot be "
            f"verified: it was not written by this version of lightning-unlearn. {hint}"
        )
    actual = nested_sha256(data)
    if saved != actual:
        raise IntegrityError(
            f"The {what} {str(p)!r} does not match its embedded checksum (SHA-256 "
            f"{actual[:12]}... instead of {str(saved)[:12]}...): it is corrupt or was changed "
            f"after it was written. Restore it from a good copy or re-create it. {hint}"
        )
    return data


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
