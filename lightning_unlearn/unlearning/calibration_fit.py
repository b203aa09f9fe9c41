"""Fit a :class:`~lightning_unlearn.unlearning.calibration.BudgetCalibration` from the
reference models and the training ledger (issue 15, deliverable 2; THEORY §5).

Every reference model ``j`` trained on its half ``IN_j``. A probe set ``F_j`` of its IN
examples, spread over the ledger's ``P`` (evenly spaced ranks), is unlearned from it by the
same method and learning rate the request will use, on ``IN_j \\ F_j``, for ``cap`` steps, with
the calibrated stop score (:class:`~lightning_unlearn.unlearning.calibrated_stopping.
CalibratedStopping` in observe mode) read after every step. Example ``i``'s steps are the
first step from which its score stays at or below the threshold for the hold window
(:func:`~lightning_unlearn.evaluation.functional.first_hold_step`; censored at
``cap - hold``). One run per reference model, no retraining, no user constant.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import Dataset

from lightning_unlearn.accounting import PrivacyLedger
from lightning_unlearn.data.fingerprint import dataset_fingerprint
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.evaluation.functional import first_hold_step
from lightning_unlearn.unlearning.calibrated_stopping import CalibratedStopping, OutRule
from lightning_unlearn.unlearning.calibration import (
    BudgetCalibration,
    CalibrationError,
    fit_calibration,
)
from lightning_unlearn.unlearning.module import UnlearningModule
from lightning_unlearn.unlearning.reference import ReferenceModels
from lightning_unlearn.unlearning.trajectory import quiet_trainer_kwargs

__all__ = ["calibrate_budget", "probe_ids", "probe_steps"]


def probe_ids(in_ids: torch.Tensor, privacy_loss: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` ids of ``in_ids`` at evenly spaced ranks of ``privacy_loss`` (low to high P).

    Example:
        >>> import torch
        >>> probe_ids(torch.arange(10), torch.arange(10.0) ** 2, 3).tolist()
        [0, 4, 9]
    """
    order = in_ids[privacy_loss[in_ids].argsort()]
    size = min(size, order.numel())
    pos = torch.linspace(0, order.numel() - 1, size).round().long()
    return order[pos.unique()].sort().values


def probe_steps(
    model: pl.LightningModule,
    dataset: Dataset,
    probe: torch.Tensor,
    exclude: torch.Tensor,
    rule: OutRule,
    *,
    cap: int,
    hold: int,
    heldout: Dataset | None = None,
    batch_size: int = 64,
    seed: int = 0,
    method: str = "finetune",
    trainer_kwargs: Mapping[str, Any] | None = None,
    **unlearning_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example steps to look OUT of ``probe``, unlearned from a copy of ``model``.

    The copy is unlearned by ``method`` with ``probe`` as the forget set (the examples a method
    with a forget term ascends on) and ``dataset`` minus ``probe`` and ``exclude`` as the
    retain set (for a reference model ``exclude`` is its OUT examples, so the retain set is its
    own half minus the probe, and no step touches an example it never trained on).

    Returns:
        ``(steps [P], arrived [P], flagged_at_start [P])`` in the order of ``probe`` sorted by
        id.
    """
    pl.seed_everything(seed, verbose=False)
    student = copy.deepcopy(model).train()
    # The probe is the forget set (what a method with a forget term ascends on) and `exclude`
    # is in neither set: no step touches an example the model never trained on.
    probe = torch.as_tensor(probe, dtype=torch.long).flatten().cpu()
    exclude = torch.as_tensor(exclude, dtype=torch.long).flatten().cpu()
    train_dm = ForgetRetainDataModule(
        dataset,
        probe,
        heldout=heldout,
        batch_size=batch_size,
        seed=seed,
        exclude_ids=exclude[~torch.isin(exclude, probe)],
    )
    eval_dm = ForgetRetainDataModule(dataset, probe, heldout=heldout, batch_size=batch_size)
    observer = CalibratedStopping(
        rule,
        hold=hold,
        stop=False,
        keep_scores=True,
        forget_dataloader=eval_dm.forget_dataloader(),
        heldout_dataloader=eval_dm.heldout_dataloader() if heldout is not None else None,
    )
    unlearner = UnlearningModule(student, method=method, seed=seed, **unlearning_kwargs)  # type: ignore[arg-type]
    settings = quiet_trainer_kwargs(trainer_kwargs, cap)
    settings["callbacks"] = [*settings.get("callbacks", []), observer]
    pl.Trainer(**settings).fit(unlearner, datamodule=train_dm)
    scores = torch.stack(observer.scores)  # [T, P]
    steps = torch.tensor([r["step"] for r in observer.trajectory])
    result = first_hold_step(scores.T, -float("inf"), rule.threshold, hold=hold, steps=steps)
    assert observer.sample_ids is not None
    order = observer.sample_ids.argsort()
    flagged = scores[0] > rule.threshold
    return result.steps[order].cpu(), result.arrived[order].cpu(), flagged[order].cpu()


def calibrate_budget(
    refs: ReferenceModels,
    dataset: Dataset,
    ledger: PrivacyLedger,
    rule: OutRule,
    *,
    order: int = 8,
    cap: int | None = None,
    hold: int = 5,
    probe_size: int = 32,
    heldout: Dataset | None = None,
    batch_size: int = 64,
    method: str = "finetune",
    miscoverage: float = 0.2,
    hurdle: bool = True,
    num_models: int | None = None,
    seed: int = 0,
    trainer_kwargs: Mapping[str, Any] | None = None,
    **unlearning_kwargs: Any,
) -> BudgetCalibration:
    """Fit the step model from one unlearning run of every reference model (module docstring).

    Args:
        refs: the reference models (their IN masks index ``dataset``).
        dataset: the training set (ids are its positions, as for the ledger).
        ledger: the training run's ledger: ``P(x, order)`` per example.
        rule: the calibrated stop rule (:meth:`OutRule.from_reference`).
        order: Rényi order of ``P`` (THEORY §5: ``4 alpha``).
        cap: steps per run (default: the training run's length in the ledger's metadata,
            beyond which retraining is cheaper).
        hold: the stop rule's hold window.
        probe_size: probe examples per reference model.
        heldout: the held-out data set of the rule's map (required when the rule has one).
        batch_size: the unlearning batch size.
        method: the unlearning method the budget is for.
        miscoverage: ``1 -`` the prediction interval's coverage.
        num_models: fine-tune only the first ``num_models`` reference models (default all;
            fewer runs, so raise ``probe_size`` to keep the number of points).
        hurdle: fit on the probe examples the stop score flags before the first step only
            (the others need no step; most examples of a model that generalises look OUT
            from the start, and a line through their zeros and the few hard ones fits
            neither); falls back to all examples when fewer than three are flagged.
        seed: seed of the runs (run ``j`` uses ``seed + j``).
        trainer_kwargs: ``Trainer`` arguments of the runs.
        **unlearning_kwargs: :class:`UnlearningModule` arguments (``lr``, ...).

    Raises:
        CalibrationError: ledger and reference models of different data sets, no cap known.
    """
    n = refs.num_samples
    if ledger.num_samples != n or len(dataset) != n:  # type: ignore[arg-type]
        raise CalibrationError(
            f"Expected the ledger ({ledger.num_samples} examples), the data set "
            f"({len(dataset)}) and the reference models' masks ({n}) to index one data set."  # type: ignore[arg-type]
        )
    if rule.num_samples != n:
        raise CalibrationError(
            f"Expected a stop rule fitted on these reference models ({n} examples), but it "
            f"covers {rule.num_samples}."
        )
    if cap is None:
        run = ledger.metadata.get("steps")
        if not isinstance(run, int) or run <= 0:
            raise CalibrationError(
                "Expected `cap=` or a ledger that records its run length (metadata['steps'])."
            )
        cap = run
    p = ledger.privacy_loss(order).double().cpu()
    all_p, all_steps, all_arrived, all_flagged = [], [], [], []
    count = refs.k if num_models is None else max(1, min(num_models, refs.k))
    for j, module in enumerate(refs.modules[:count]):
        in_ids = refs.in_mask[j].nonzero().flatten()
        probe = probe_ids(in_ids, p, probe_size)
        out_ids = (~refs.in_mask[j]).nonzero().flatten()
        steps, arrived, flagged = probe_steps(
            module,  # type: ignore[arg-type]
            dataset,
            probe,
            out_ids,
            rule,
            cap=cap,
            hold=hold,
            heldout=heldout,
            batch_size=batch_size,
            seed=seed + j,
            method=method,
            trainer_kwargs=trainer_kwargs,
            **unlearning_kwargs,
        )
        all_p.append(p[probe])
        all_steps.append(steps)
        all_arrived.append(arrived)
        all_flagged.append(flagged)
    metadata = {
        "num_samples": n,
        "dataset_fingerprint": dataset_fingerprint(dataset, n),
        "reference_k": refs.k,
        "calibration_runs": count,
        "method": method,
        "probe_size": probe_size,
        "unlearning_kwargs": {k: v for k, v in unlearning_kwargs.items() if _plain(v)},
    }
    return fit_calibration(
        torch.cat(all_p),
        torch.cat(all_steps),
        torch.cat(all_arrived),
        order=order,
        cap=cap,
        rates=rule.rates,
        level=rule.level,
        threshold=rule.threshold,
        hold=hold,
        miscoverage=miscoverage,
        metadata=metadata,
        initially_flagged=torch.cat(all_flagged) if hurdle else None,
    )


def _plain(value: Any) -> bool:
    return isinstance(value, int | float | str | bool) or value is None
