"""Pure functions behind the evaluation metrics (THEORY §6)."""

from lightning_unlearn.evaluation.functional.adapters import (
    AutoAdapter,
    BatchAdapter,
    ClassificationAdapter,
    ExampleOutputs,
    FunctionAdapter,
    HFAdapter,
    as_adapter,
)
from lightning_unlearn.evaluation.functional.barrier import (
    interpolate_state,
    loss_barrier,
    per_example_loss_barrier,
    recompute_batchnorm,
)
from lightning_unlearn.evaluation.functional.curvature import input_curvature
from lightning_unlearn.evaluation.functional.difficulty import (
    el2n_scores,
    forgetting_events,
    grand_scores,
    mean_true_class_confidence,
    true_class_confidence,
)
from lightning_unlearn.evaluation.functional.losses import (
    per_example_logits,
    per_example_losses,
    per_example_outputs,
)
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
from lightning_unlearn.evaluation.functional.selection import (
    correlation_table,
    forget_sets_by_quantile,
    steps_to_unlearn,
)

__all__ = [
    "AutoAdapter",
    "BatchAdapter",
    "ClassificationAdapter",
    "ExampleOutputs",
    "FunctionAdapter",
    "HFAdapter",
    "KSResult",
    "LearnedMIAResult",
    "as_adapter",
    "binary_auroc",
    "correlation_table",
    "el2n_scores",
    "forget_quality_ks",
    "forget_sets_by_quantile",
    "forgetting_events",
    "grand_scores",
    "input_curvature",
    "interpolate_state",
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
    "recompute_batchnorm",
    "steps_to_unlearn",
    "true_class_confidence",
]
