"""``lightning-unlearn calibrate``: fit the budget calibration from reference models (issue 15).

A thin command over :func:`~lightning_unlearn.unlearning.calibration_fit.calibrate_budget`:
the reference models of ``lightning-unlearn reference`` are each fine-tuned once on their own
half minus a probe of their examples, every probe example's steps to look OUT are read, and
``k = a log P + b`` is fitted with a prediction interval against the training ledger's ``P``.
The file it writes is what ``lightning-unlearn unlearn --reference DIR --calibration FILE``
budgets from.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import torch
from jsonargparse import CLI, lazy_instance
from lightning.pytorch import LightningDataModule, LightningModule

from lightning_unlearn.cli._unlearn import forget_retain, load_ledger
from lightning_unlearn.data.modules import DigitsDataModule
from lightning_unlearn.errors import InvalidArgumentError
from lightning_unlearn.unlearning.calibration_fit import calibrate_budget
from lightning_unlearn.unlearning.reference import ReferenceModels
from lightning_unlearn.unlearning.reference_rule import rule_from_directory
from lightning_unlearn.validation import check_float, check_int

__all__ = ["calibrate", "run"]


def calibrate(
    *,
    reference: str,
    ledger: str,
    output: str,
    model: Callable[[], LightningModule],
    data: LightningDataModule = lazy_instance(DigitsDataModule),  # noqa: B008
    lr: float = 0.1,
    method: str = "finetune",
    probe_size: int = 48,
    num_models: int | None = None,
    hold: int = 5,
    order: int = 8,
    cap: int | None = None,
    seed: int = 0,
    threads: int = 1,
) -> dict[str, Any]:
    """Fit and save the budget calibration (JSON with a checksum) from the reference models.

    Args:
        reference: the reference models' directory (``lightning-unlearn reference``).
        ledger: the training run's ``privacy_ledger.pt`` (``lightning-unlearn fit``).
        output: the calibration file to write (atomically).
        model: the model class of the reference models (``class_path`` / ``init_args``).
        data: the training data (its test split is the held-out set of the stop rule's map,
            as in ``unlearn``).
        lr: the unlearning learning rate the budget is for (use the one ``unlearn`` will use).
        method: the unlearning method the budget is for.
        probe_size: probe examples per reference model.
        num_models: reference models fine-tuned (default half of them, at least 2).
        hold: the stop rule's hold window.
        order: Rényi order of ``P`` (THEORY §5: ``4 alpha``).
        cap: steps per run (default: the training run's length the ledger records).
        seed: seed of the runs.
        threads: torch CPU threads.

    Raises:
        InvalidArgumentError: an option out of range.
        ReferenceModelsError: missing or foreign reference models.
        CalibrationError: ledger and reference models of different data sets.
    """
    if check_int("threads", threads, minimum=0):
        torch.set_num_threads(threads)
    check_float("lr", lr)
    check_int("probe_size", probe_size, minimum=1)
    check_int("hold", hold, minimum=0)
    if num_models is not None:
        check_int("num_models", num_models, minimum=1)
    frdm = forget_retain(data, "0", seed=seed)  # any id: the rule needs the data and held-out set
    if frdm.heldout_set is None:
        raise InvalidArgumentError(
            "Expected a data module with a test split (the stop rule's held-out set), but "
            f"{type(data).__name__} has no `test_dataloader`; add one."
        )
    trained = load_ledger(ledger)
    rule = rule_from_directory(reference, lambda: copy.deepcopy(model()), frdm)
    refs = ReferenceModels.load(reference, model)
    count = num_models if num_models is not None else max(2, refs.k // 2)
    cal = calibrate_budget(
        refs, frdm.dataset, trained, rule, order=order, cap=cap, hold=hold,
        probe_size=probe_size, heldout=data.test_dataloader().dataset,
        batch_size=getattr(data, "batch_size", 64),
        method=method, num_models=count, seed=seed, lr=lr,
        trainer_kwargs={"accelerator": "auto", "devices": 1},
    )  # fmt: skip
    path = cal.save(output)
    summary = {
        "calibration": str(path),
        "a": cal.a,
        "b": cal.b,
        "num_points": cal.num_points,
        "num_censored": cal.num_censored,
        "residual_interval": [cal.residual_low, cal.residual_high],
        "cap": cal.cap,
    }
    print(json.dumps(summary, indent=2))
    return summary


def run(argv: list[str]) -> None:
    """``lightning-unlearn calibrate ARGS``."""
    CLI(calibrate, args=argv, prog="lightning-unlearn calibrate", exit_on_error=False)
