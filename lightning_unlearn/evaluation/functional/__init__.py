"""Pure functions behind the evaluation metrics (THEORY §6)."""

from lightning_unlearn.evaluation.functional._batch import eval_mode, model_device
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
from lightning_unlearn.evaluation.functional.confidence import (
    MaskedMoments,
    gaussian_likelihood_ratio,
    logit_scaled_confidence,
    masked_moments,
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
from lightning_unlearn.evaluation.functional.matched import (
    first_hold_step_in_band,
    grouped_bootstrap_spearman,
    trajectory_band,
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
from lightning_unlearn.evaluation.functional.ranking import (
    BootstrapCI,
    average_ranks,
    bootstrap_spearman,
    spearman,
)
from lightning_unlearn.evaluation.functional.selection import (
    correlation_table,
    forget_sets_by_quantile,
    steps_to_unlearn,
)
from lightning_unlearn.evaluation.functional.steps import (
    Band,
    BandRule,
    MeasurementError,
    StepsResult,
    binned_kl,
    first_hold_step,
    tolerance_band,
)
from lightning_unlearn.evaluation.functional.survival import (
    KaplanMeier,
    kaplan_meier,
    km_median,
    summarise_censored,
)

__all__ = [
    "AutoAdapter",
    "Band",
    "BandRule",
    "BatchAdapter",
    "BootstrapCI",
    "ClassificationAdapter",
    "ExampleOutputs",
    "FunctionAdapter",
    "HFAdapter",
    "KSResult",
    "KaplanMeier",
    "LearnedMIAResult",
    "MaskedMoments",
    "MeasurementError",
    "StepsResult",
    "as_adapter",
    "average_ranks",
    "binary_auroc",
    "binned_kl",
    "bootstrap_spearman",
    "correlation_table",
    "el2n_scores",
    "eval_mode",
    "first_hold_step",
    "first_hold_step_in_band",
    "forget_quality_ks",
    "forget_sets_by_quantile",
    "forgetting_events",
    "gaussian_likelihood_ratio",
    "grand_scores",
    "grouped_bootstrap_spearman",
    "input_curvature",
    "interpolate_state",
    "kaplan_meier",
    "km_median",
    "learned_mia",
    "logit_scaled_confidence",
    "loss_barrier",
    "loss_mia_auroc",
    "masked_moments",
    "mean_true_class_confidence",
    "mia_features",
    "model_device",
    "per_example_logits",
    "per_example_loss_barrier",
    "per_example_losses",
    "per_example_outputs",
    "prediction_divergence",
    "recompute_batchnorm",
    "spearman",
    "steps_to_unlearn",
    "summarise_censored",
    "tolerance_band",
    "trajectory_band",
    "true_class_confidence",
]
