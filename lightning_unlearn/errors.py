"""Exceptions raised by lightning_unlearn.

Every exception derives from :class:`LightningUnlearnError`, so ``except LightningUnlearnError``
catches everything the package raises on purpose. Each message names the problem and the fix.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DatasetNotFoundError",
    "ForgetSetError",
    "LedgerMismatchError",
    "LightningUnlearnError",
    "MissingSampleIdError",
    "NonFiniteGradientError",
    "NormHooksError",
    "SampleIdMismatchError",
    "UnsupportedLayerError",
    "UnsupportedModuleError",
    "UnsupportedOrderError",
]


class LightningUnlearnError(Exception):
    """Base class of every error raised on purpose by lightning_unlearn."""


class UnsupportedOrderError(LightningUnlearnError, ValueError):
    """A Rényi order is not an integer >= 2 (THEORY §2)."""


class LedgerMismatchError(LightningUnlearnError, ValueError):
    """A saved ledger (or monitor state) does not match the run it is loaded into.

    Raised when the number of examples, the Rényi orders, the noise convention or the format
    version differ; the message says which and how to recover.
    """


class MissingSampleIdError(LightningUnlearnError, KeyError):
    """The ids of a batch are unknown: it carries none and its sampler cannot be read.

    The message names both fixes: a map-style dataset (ids read from the sampler), or ids in
    the batch (``IndexedDataset`` / ``sample_id_fn``).
    """

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly.
        return str(self.args[0]) if self.args else ""


class SampleIdMismatchError(LightningUnlearnError, ValueError):
    """The ids a batch carries disagree with the examples its DataLoader's sampler drew."""


class UnsupportedLayerError(LightningUnlearnError, TypeError):
    """A layer has no meaningful per-sample gradient (for example BatchNorm)."""


class NonFiniteGradientError(LightningUnlearnError, FloatingPointError):
    """A per-sample gradient norm is NaN or infinite."""


class NormHooksError(LightningUnlearnError, RuntimeError):
    """Per-sample norm hooks used in the wrong state.

    Attached twice to the same module, used after ``detach()``, or read before any backward pass.
    """


class ForgetSetError(LightningUnlearnError, ValueError):
    """Forget ids are out of range, duplicated, empty or cover the whole data set."""


class DatasetNotFoundError(LightningUnlearnError, FileNotFoundError):
    """Data files (such as Fashion-MNIST IDX files) are missing; the message says how to fix it."""


class UnsupportedModuleError(LightningUnlearnError, TypeError):
    """A module cannot be unlearned as given (for example it has no ``training_step`` to reuse)."""


class CheckpointError(LightningUnlearnError, ValueError):
    """A checkpoint, ledger or id file is missing, unreadable, or not the kind expected."""
