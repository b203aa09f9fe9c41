"""Exceptions raised by lightning_unlearn.

Every exception derives from :class:`LightningUnlearnError`, so ``except LightningUnlearnError``
catches everything the package raises on purpose. Each message names the problem and the fix.
"""

from __future__ import annotations

__all__ = [
    "AuditMismatchError",
    "BatchFormatError",
    "BudgetTooLargeError",
    "CheckpointError",
    "DatasetNotFoundError",
    "ForgetSetError",
    "IntegrityError",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "LedgerIntegrityError",
    "LedgerMismatchError",
    "LightningUnlearnError",
    "MissingSampleIdError",
    "MultipleBackwardError",
    "NonFiniteGradientError",
    "NormHooksError",
    "OutputWriteError",
    "SampleIdMismatchError",
    "SamplerRegistrationError",
    "SelfCheckError",
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


class BatchFormatError(LightningUnlearnError, KeyError, TypeError):
    """A batch, or a model's output on it, is not in a format the default readers know.

    The message names what was found and the fix (``batch_adapter=``). It is a ``KeyError``
    (a dict batch without the key) and a ``TypeError`` (a batch or output of another type).
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


class DatasetNotFoundError(LightningUnlearnError, FileNotFoundError):
    """Data files (such as Fashion-MNIST IDX files) are missing; the message says how to fix it."""


class UnsupportedModuleError(LightningUnlearnError, TypeError):
    """A module cannot be unlearned as given (for example it has no ``training_step`` to reuse)."""


class CheckpointError(LightningUnlearnError, ValueError):
    """A checkpoint, ledger or id file is missing, unreadable, or not the kind expected."""


class IntegrityError(LightningUnlearnError, ValueError):
    """A file fails verification: its checksum differs, or its content is impossible.

    Raised for flipped bytes, truncated files and values no run can produce (NaN, negative
    losses); the message names the file or field and how to recover.
    """


class LedgerIntegrityError(IntegrityError, LedgerMismatchError):
    """A privacy ledger is corrupt: checksum mismatch, or non-finite / negative / impossible values.

    Also a :class:`LedgerMismatchError`, so code that catches ledger mismatches catches it too.
    """


class InvalidArgumentError(LightningUnlearnError, ValueError):
    """A configuration value (command-line option, YAML key, id) is of the wrong type or range."""


class InvalidArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument of the wrong type (a string or bool for a number): also a ``TypeError``."""


class SamplerRegistrationError(LightningUnlearnError, RuntimeError):
    """A second norm sampler was registered for a layer type that already has one."""


class ForgetSetError(InvalidArgumentError):
    """Forget ids are not integers, out of range, duplicated, empty or cover the whole data set.

    Raised by :func:`~lightning_unlearn.validation.check_forget_ids`, where the ids enter; an
    :class:`InvalidArgumentError` (and so a ``ValueError``).
    """


class BudgetTooLargeError(LightningUnlearnError, ValueError):
    """The unlearning budget a ledger implies exceeds the allowed maximum.

    By default the maximum is the length of the training run: beyond it, retraining without the
    forget set is cheaper than unlearning.
    """


class AuditMismatchError(LightningUnlearnError, ValueError):
    """An audit record does not match the files it describes (``lightning-unlearn audit``)."""


class OutputWriteError(LightningUnlearnError, OSError):
    """An output file could not be written; the message names it and what was already saved."""


class SelfCheckError(LightningUnlearnError, RuntimeError):
    """The monitor's first-step self-check found per-example norms that disagree with a
    batch-of-one reference (THEORY §1: the gradient of each example's own loss).

    The message lists, for every checked example, the engine's norm, the reference norm and
    their ratio, and names the likely cause read from the pattern of the ratios (a summed loss
    read as a mean, a token-averaged loss, a parameter or layer the engine did not see, ...).

    Attributes:
        engine: the engine's norms of the checked examples (1-D, float64, CPU).
        reference: the batch-of-one reference norms of the same examples.
    """

    def __init__(self, message: str, engine: object = None, reference: object = None) -> None:
        super().__init__(message)
        self.engine = engine
        self.reference = reference


class MultipleBackwardError(LightningUnlearnError, RuntimeError):
    """More than one backward pass went through one batch before its optimizer step.

    Each pass's per-example norm is the norm of one part of the examples' gradient, not of the
    whole (the norm of a sum is not the sum of norms): call ``manual_backward`` once per
    optimizer step on the summed loss.
    """
