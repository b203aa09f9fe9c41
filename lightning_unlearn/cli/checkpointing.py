"""Checkpoints of the command line: written atomically, with an embedded SHA-256, verified on load.

``torch.load`` does not check the zip CRC, so flipped data bytes in a checkpoint load as silently
wrong weights. Every checkpoint the commands write (``model.ckpt``, ``unlearned.ckpt`` and the
Lightning checkpoints of ``fit``) carries ``CHECKSUM_KEY``
(:func:`~lightning_unlearn.integrity.save_verified`): the
:func:`~lightning_unlearn.integrity.nested_sha256` of everything else in it. Loading recomputes
it and raises :class:`~lightning_unlearn.errors.IntegrityError` on a mismatch. Checkpoints are
always read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from typing_extensions import override

from lightning_unlearn.integrity import CHECKSUM_KEY, load_verified, save_verified

__all__ = ["CHECKSUM_KEY", "ChecksummedCheckpointIO", "load_verified", "save_verified"]


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
