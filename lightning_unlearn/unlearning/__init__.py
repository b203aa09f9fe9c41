"""Unlearning: UnlearningModule, SGLD, budgets and stopping rules (THEORY §5, §6).

- :class:`UnlearningModule`: wraps the user's LightningModule and unlearns a forget set.
- :class:`SGLD`: the noisy optimizer of the THEORY §1 SGLD convention.
- :func:`compute_budget`: the step budget (THEORY §5) for ``Trainer(max_steps=...)``;
  :class:`BudgetSpec`: a budget chosen once (fixed steps or the bound's constants).
- :class:`LossCalibratedStopping`: stop once the forget set looks like held-out data;
  :class:`OracleMatchStopping`: once its mean loss is within τ of a retrained oracle's.
- :func:`train_oracle`, :class:`UnlearningResult`: the retrained reference and the run record.
- :func:`train_reference_models`, :class:`ReferenceModels`: K models on random halves (per-example
  OUT targets); :func:`record_unlearning`: the forget set at every unlearning step.
- :class:`CalibratedStopping`, :class:`OutRule`: stop when every forget example looks like its
  own OUT distribution; :func:`calibrate_budget`, :class:`BudgetCalibration`: the budget fitted
  from the reference models; :func:`calibrated_unlearn`: one request end to end, with a report.
"""

from lightning_unlearn.unlearning.budget import (
    Aggregate,
    BudgetSpec,
    check_ledger,
    compute_budget,
    forget_privacy_loss,
)
from lightning_unlearn.unlearning.calibrated_stopping import (
    CalibratedStopping,
    OutRule,
    ReferenceCoverageError,
)
from lightning_unlearn.unlearning.calibration import BudgetCalibration, CalibrationError
from lightning_unlearn.unlearning.calibration_fit import calibrate_budget
from lightning_unlearn.unlearning.module import (
    METHODS,
    Method,
    UnlearningModule,
    module_state_dict_from_checkpoint,
)
from lightning_unlearn.unlearning.oracle import fresh_copy, train_oracle
from lightning_unlearn.unlearning.oracle_stopping import OracleMatchStopping
from lightning_unlearn.unlearning.reference import (
    ReferenceModels,
    ReferenceModelsError,
    balanced_membership,
    train_reference_models,
)
from lightning_unlearn.unlearning.reference_stats import ExampleTargets, ReferenceStatistics
from lightning_unlearn.unlearning.request_report import RequestReport, calibrated_unlearn
from lightning_unlearn.unlearning.result import UnlearningResult, evaluate_splits
from lightning_unlearn.unlearning.sgld import SGLD
from lightning_unlearn.unlearning.stopping import LossCalibratedStopping
from lightning_unlearn.unlearning.trajectory import (
    ForgetTrajectoryRecorder,
    UnlearningTrajectory,
    record_unlearning,
)

__all__ = [
    "METHODS",
    "SGLD",
    "Aggregate",
    "BudgetCalibration",
    "BudgetSpec",
    "CalibratedStopping",
    "CalibrationError",
    "ExampleTargets",
    "ForgetTrajectoryRecorder",
    "LossCalibratedStopping",
    "Method",
    "OracleMatchStopping",
    "OutRule",
    "ReferenceCoverageError",
    "ReferenceModels",
    "ReferenceModelsError",
    "ReferenceStatistics",
    "RequestReport",
    "UnlearningModule",
    "UnlearningResult",
    "UnlearningTrajectory",
    "balanced_membership",
    "calibrate_budget",
    "calibrated_unlearn",
    "check_ledger",
    "compute_budget",
    "evaluate_splits",
    "forget_privacy_loss",
    "fresh_copy",
    "module_state_dict_from_checkpoint",
    "record_unlearning",
    "train_oracle",
    "train_reference_models",
]
