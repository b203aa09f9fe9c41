"""Evaluation: loss barriers, membership inference, difficulty scores (THEORY §6).

Pure functions live in :mod:`lightning_unlearn.evaluation.functional`; the ``Metric`` classes
here call the same helpers, so the two can never disagree.
"""

from lightning_unlearn.evaluation.barrier import LossBarrier
from lightning_unlearn.evaluation.difficulty import PerExampleDifficulty
from lightning_unlearn.evaluation.functional import (
    AutoAdapter,
    BatchAdapter,
    ClassificationAdapter,
    ExampleOutputs,
    FunctionAdapter,
    HFAdapter,
    KSResult,
    LearnedMIAResult,
    binary_auroc,
    correlation_table,
    el2n_scores,
    forget_quality_ks,
    forget_sets_by_quantile,
    forgetting_events,
    grand_scores,
    input_curvature,
    learned_mia,
    loss_barrier,
    loss_mia_auroc,
    mean_true_class_confidence,
    mia_features,
    per_example_logits,
    per_example_loss_barrier,
    per_example_losses,
    per_example_outputs,
    prediction_divergence,
    steps_to_unlearn,
    true_class_confidence,
)
from lightning_unlearn.evaluation.membership import (
    ForgetQualityKS,
    LossMembershipAUROC,
    PredictionDivergence,
)

__all__ = [
    "AutoAdapter",
    "BatchAdapter",
    "ClassificationAdapter",
    "ExampleOutputs",
    "ForgetQualityKS",
    "FunctionAdapter",
    "HFAdapter",
    "KSResult",
    "LearnedMIAResult",
    "LossBarrier",
    "LossMembershipAUROC",
    "PerExampleDifficulty",
    "PredictionDivergence",
    "binary_auroc",
    "correlation_table",
    "el2n_scores",
    "forget_quality_ks",
    "forget_sets_by_quantile",
    "forgetting_events",
    "grand_scores",
    "input_curvature",
    "learned_mia",
    "loss_barrier",
    "loss_mia_auroc",
    "mean_true_class_confidence",
    "mia_features",
    "per_example_logits",
    "per_example_loss_barrier",
    "per_example_losses",
    "per_example_outputs",
    "prediction_divergence",
    "steps_to_unlearn",
    "true_class_confidence",
]
