"""Pure functions behind the evaluation metrics (THEORY §6)."""

from lightning_unlearn.evaluation.functional.losses import per_example_logits, per_example_losses
from lightning_unlearn.evaluation.functional.membership import (
    KSResult,
    LearnedMIAResult,
    binary_auroc,
    forget_quality_ks,
    learned_mia,
    loss_mia_auroc,
    mia_features,
    prediction_divergence,
)

__all__ = [
    "KSResult",
    "LearnedMIAResult",
    "binary_auroc",
    "forget_quality_ks",
    "learned_mia",
    "loss_mia_auroc",
    "mia_features",
    "per_example_logits",
    "per_example_losses",
    "prediction_divergence",
]
