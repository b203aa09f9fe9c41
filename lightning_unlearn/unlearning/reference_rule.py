"""The calibrated stop rule of a request from a reference models' directory on disk (issue 15).

``lightning-unlearn reference`` (:func:`~lightning_unlearn.unlearning.train_reference_models`)
writes ``manifest.json``, ``model_XXX.pt`` and ``reference_stats.pt``. :func:`rule_from_directory`
checks them against the data of the request (size and fingerprint) and fits the per-example
:class:`~lightning_unlearn.unlearning.calibrated_stopping.OutRule` with the held-out map of
THEORY §6; :func:`check_calibration` checks a saved budget calibration against the same data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_unlearn.data.fingerprint import dataset_fingerprint
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.unlearning.calibrated_stopping import OutRule, reference_heldout_values
from lightning_unlearn.unlearning.calibration import BudgetCalibration, CalibrationError
from lightning_unlearn.unlearning.reference import ReferenceModels, ReferenceModelsError
from lightning_unlearn.unlearning.reference_stats import ReferenceStatistics

__all__ = ["STATS_FILE", "check_calibration", "rule_from_directory"]

STATS_FILE = "reference_stats.pt"
"""The per-example statistics file ``lightning-unlearn reference`` writes beside the models."""


def _load_stats(path: Path, refs: ReferenceModels) -> ReferenceStatistics:
    if not path.is_file():
        raise ReferenceModelsError(
            f"No {STATS_FILE} in {str(path.parent)!r}; rerun `lightning-unlearn reference` with "
            "the same options (it resumes and writes it)."
        )
    try:
        stats = ReferenceStatistics.load(path)
    except Exception as err:  # truncated, foreign or not a torch file
        raise ReferenceModelsError(
            f"Cannot read {str(path)!r} ({type(err).__name__}); delete it and rerun "
            "`lightning-unlearn reference` with the same options to rewrite it."
        ) from None
    shape = (refs.k, refs.num_samples)
    if tuple(stats.phi.shape) != shape or not torch.equal(stats.in_mask, refs.in_mask):
        raise ReferenceModelsError(
            f"{str(path)!r} does not belong to the reference models beside it (expected [K, N] "
            f"= {list(shape)} tables with their membership masks, got "
            f"{list(stats.phi.shape)}); delete it and rerun `lightning-unlearn reference`."
        )
    return stats


def rule_from_directory(
    directory: str | os.PathLike[str],
    make_module: Callable[[], pl.LightningModule],
    datamodule: ForgetRetainDataModule,
    *,
    threshold: float = 2.0,
    level: float = 0.05,
) -> OutRule:
    """The per-example OUT rule of ``datamodule``'s request from reference models on disk.

    The models are loaded into ``make_module()`` instances; their manifest must record the
    data module's training set (its size and :func:`~lightning_unlearn.data.dataset_fingerprint`),
    and ``reference_stats.pt`` their ``[K, N]`` tables. With a held-out set in ``datamodule``,
    every reference model is scored on it for the rule's held-out map
    (:func:`~lightning_unlearn.unlearning.calibrated_stopping.reference_heldout_values`).

    Args:
        directory: the ``--output_dir`` of ``lightning-unlearn reference``.
        make_module: a fresh module of the reference models' class.
        datamodule: the request (its ``dataset`` is the training set the masks index).
        threshold: :meth:`OutRule.from_reference`'s flagging threshold.
        level: :meth:`OutRule.from_reference`'s tolerance level.

    Raises:
        ReferenceModelsError: no such directory, a missing, corrupt or foreign file, or
            reference models of another data set (size or fingerprint).
    """
    root = Path(directory)
    if not root.is_dir():
        raise ReferenceModelsError(
            f"The reference models' directory {str(root)!r} does not exist; train them with "
            f"`lightning-unlearn reference --output_dir {root}` on the same data."
        )
    refs = ReferenceModels.load(root, make_module)
    n = datamodule.num_samples
    found = (refs.manifest.get("num_samples"), refs.manifest.get("fingerprint"))
    expected = (n, dataset_fingerprint(datamodule.dataset, n))
    if found != expected:
        raise ReferenceModelsError(
            f"The reference models in {str(root)!r} were trained on another data set "
            f"(num_samples, fingerprint = {found}, but the data of this request has {expected}); "
            "train them with `lightning-unlearn reference` on the same `data`."
        )
    stats = _load_stats(root / STATS_FILE, refs)
    heldout = None
    if datamodule.heldout_set is not None:
        heldout = reference_heldout_values(refs, datamodule.heldout_dataloader())
    return OutRule.from_reference(stats, threshold=threshold, level=level, heldout=heldout)


def check_calibration(
    calibration: BudgetCalibration, datamodule: ForgetRetainDataModule
) -> BudgetCalibration:
    """``calibration`` when it was fitted on ``datamodule``'s training set (size, fingerprint).

    Raises:
        CalibrationError: a calibration of another data set.
    """
    n = datamodule.num_samples
    meta = calibration.metadata
    found = (meta.get("num_samples"), meta.get("dataset_fingerprint"))
    expected = (n, dataset_fingerprint(datamodule.dataset, n))
    if found[1] is None:
        raise CalibrationError(
            "The budget calibration records no data set fingerprint (`metadata` has no "
            "'dataset_fingerprint'), so its data set cannot be checked; refit it with "
            "`calibrate_budget`, which records it."
        )
    if found != expected:
        raise CalibrationError(
            f"The budget calibration was fitted on another data set (num_samples, fingerprint = "
            f"{found}, but the data of this request has {expected}); refit it with "
            "`calibrate_budget` on the same data."
        )
    return calibration
