"""lightning_unlearn: per-instance privacy losses and calibrated unlearning for PyTorch Lightning.

The public API is re-exported here; see the documentation for tutorials and THEORY.
"""

from lightning_unlearn.accounting import PrivacyLedger
from lightning_unlearn.callbacks import PerInstancePrivacyMonitor
from lightning_unlearn.errors import (
    ForgetSetError,
    LedgerMismatchError,
    LightningUnlearnError,
    MissingSampleIdError,
    NonFiniteGradientError,
    NormHooksError,
    UnsupportedLayerError,
    UnsupportedOrderError,
)

__version__ = "0.1.0"

__all__ = [
    "ForgetSetError",
    "LedgerMismatchError",
    "LightningUnlearnError",
    "MissingSampleIdError",
    "NonFiniteGradientError",
    "NormHooksError",
    "PerInstancePrivacyMonitor",
    "PrivacyLedger",
    "UnsupportedLayerError",
    "UnsupportedOrderError",
    "__version__",
]
