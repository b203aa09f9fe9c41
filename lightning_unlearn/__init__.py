"""lightning_unlearn: per-instance privacy losses and calibrated unlearning for PyTorch Lightning.

The public API is re-exported here; see the documentation for tutorials and THEORY.

Only the pure parts (errors and the accounting core) are imported eagerly. Names that need
Lightning or Opacus (the callbacks, unlearning, evaluation) are imported on first access
(PEP 562), so ``import lightning_unlearn.accounting`` works where neither is installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightning_unlearn.accounting import PrivacyLedger
from lightning_unlearn.errors import (
    ForgetSetError,
    LedgerMismatchError,
    LightningUnlearnError,
    MissingSampleIdError,
    MultipleBackwardError,
    NonFiniteGradientError,
    NormHooksError,
    SelfCheckError,
    UnsupportedLayerError,
    UnsupportedModuleError,
    UnsupportedOrderError,
)

if TYPE_CHECKING:
    from lightning_unlearn.callbacks import DifficultyMonitor, PerInstancePrivacyMonitor
    from lightning_unlearn.data.modules import DigitsDataModule, FashionMNISTDataModule
    from lightning_unlearn.data.splits import ForgetRetainDataModule
    from lightning_unlearn.evaluation import LossBarrier, loss_barrier, loss_mia_auroc
    from lightning_unlearn.unlearning import SGLD, UnlearningModule

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily on first attribute access)
_LAZY = {
    "DifficultyMonitor": "lightning_unlearn.callbacks",
    "PerInstancePrivacyMonitor": "lightning_unlearn.callbacks",
    "ForgetRetainDataModule": "lightning_unlearn.data.splits",
    "DigitsDataModule": "lightning_unlearn.data.modules",
    "FashionMNISTDataModule": "lightning_unlearn.data.modules",
    "LossBarrier": "lightning_unlearn.evaluation",
    "loss_barrier": "lightning_unlearn.evaluation",
    "loss_mia_auroc": "lightning_unlearn.evaluation",
    "SGLD": "lightning_unlearn.unlearning",
    "UnlearningModule": "lightning_unlearn.unlearning",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_unlearn' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "SGLD",
    "DifficultyMonitor",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ForgetRetainDataModule",
    "ForgetSetError",
    "LedgerMismatchError",
    "LightningUnlearnError",
    "LossBarrier",
    "MissingSampleIdError",
    "MultipleBackwardError",
    "NonFiniteGradientError",
    "NormHooksError",
    "PerInstancePrivacyMonitor",
    "PrivacyLedger",
    "SelfCheckError",
    "UnlearningModule",
    "UnsupportedLayerError",
    "UnsupportedModuleError",
    "UnsupportedOrderError",
    "__version__",
    "loss_barrier",
    "loss_mia_auroc",
]
