"""lightning_unlearn: per-instance privacy losses and calibrated unlearning for PyTorch Lightning.

The public API is re-exported here; see the documentation for tutorials and THEORY.
"""

from lightning_unlearn.accounting import PrivacyLedger
from lightning_unlearn.callbacks import DifficultyMonitor, PerInstancePrivacyMonitor
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.errors import (
    ForgetSetError,
    LedgerMismatchError,
    LightningUnlearnError,
    MissingSampleIdError,
    NonFiniteGradientError,
    NormHooksError,
    UnsupportedLayerError,
    UnsupportedModuleError,
    UnsupportedOrderError,
)
from lightning_unlearn.evaluation import LossBarrier, loss_barrier, loss_mia_auroc
from lightning_unlearn.unlearning import SGLD, UnlearningModule

__version__ = "0.1.0"

__all__ = [
    "SGLD",
    "DifficultyMonitor",
    "ForgetRetainDataModule",
    "ForgetSetError",
    "LedgerMismatchError",
    "LightningUnlearnError",
    "LossBarrier",
    "MissingSampleIdError",
    "NonFiniteGradientError",
    "NormHooksError",
    "PerInstancePrivacyMonitor",
    "PrivacyLedger",
    "UnlearningModule",
    "UnsupportedLayerError",
    "UnsupportedModuleError",
    "UnsupportedOrderError",
    "__version__",
    "loss_barrier",
    "loss_mia_auroc",
]
