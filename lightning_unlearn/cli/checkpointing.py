"""The command line's checkpoints: :mod:`lightning_unlearn.checkpoints` (kept importable here for
the experiments code that still imports it from the command line until issue 13 merges)."""

from lightning_unlearn.checkpoints import ChecksummedCheckpointIO, load_weights, save_model

__all__ = ["ChecksummedCheckpointIO", "load_weights", "save_model"]
