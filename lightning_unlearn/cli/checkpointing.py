"""Compatibility shim: ``ChecksummedCheckpointIO`` moved to
:mod:`lightning_unlearn.experiments.checkpoints`; the checksum helpers live in
:mod:`lightning_unlearn.integrity`. Import them from there."""

from lightning_unlearn.experiments.checkpoints import ChecksummedCheckpointIO
from lightning_unlearn.integrity import CHECKSUM_KEY, load_verified, save_verified

__all__ = ["CHECKSUM_KEY", "ChecksummedCheckpointIO", "load_verified", "save_verified"]
