"""Compatibility shim: the pipeline moved to :mod:`lightning_unlearn.experiments.pipeline`,
``BudgetSpec`` to :mod:`lightning_unlearn.unlearning.budget` and ``OracleMatchStopping`` to
:mod:`lightning_unlearn.unlearning.oracle_stopping`. Import them from there."""

from lightning_unlearn.experiments.pipeline import (
    TrainOutput,
    forget_set_barrier,
    make_trainer,
    retrain_oracle,
    tensorboard_logger,
    train_with_monitor,
    unlearn_forget_set,
)
from lightning_unlearn.unlearning.budget import BudgetSpec
from lightning_unlearn.unlearning.oracle_stopping import OracleMatchStopping

__all__ = [
    "BudgetSpec",
    "OracleMatchStopping",
    "TrainOutput",
    "forget_set_barrier",
    "make_trainer",
    "retrain_oracle",
    "tensorboard_logger",
    "train_with_monitor",
    "unlearn_forget_set",
]
