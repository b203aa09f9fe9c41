"""Acceptance of issue 4 on real data: train on digits with the monitor, then unlearn.

One model is trained once per module (with :class:`PerInstancePrivacyMonitor`), then copies of it
are unlearned with "finetune" and "sgld". The forget set is 40 mislabeled training examples, so
the loss-threshold attack recognises them before unlearning (see ``_digits.py``).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from sklearn.metrics import roc_auc_score

from lightning_unlearn.accounting import UnlearningConstants, fit_step_model
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.evaluation.functional import per_example_losses
from lightning_unlearn.unlearning import (
    LossCalibratedStopping,
    UnlearningModule,
    UnlearningResult,
    compute_budget,
)
from tests.unlearning._digits import DigitsMLP, quiet_trainer

ORDER = 8  # P at order 4 * alpha with alpha = 2
# steps_per_nat = alpha * c_lsi / (sigma^2 * lr) = 20: budgets of a few hundred steps here.
CONSTANTS = UnlearningConstants(alpha=2, c_lsi=1.0, langevin_sigma=1.0, lr=0.1, target_epsilon=1.0)
FINETUNE = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-3}
SGLD_KW = {"lr": 0.3, "sgld_sigma": 0.005, "weight_decay": 5e-3}


class _ForgetLossRecorder(Callback):
    """Per-example forget losses at every check step (an independent record for the tests)."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.losses: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            loss, _, _ = per_example_losses(
                pl_module.module, trainer.datamodule.forget_dataloader()
            )
            self.losses[trainer.global_step] = loss.cpu()


def _sklearn_auroc(model: torch.nn.Module, dm: ForgetRetainDataModule) -> float:
    forget, _, _ = per_example_losses(model, dm.forget_dataloader())
    held, _, _ = per_example_losses(model, dm.heldout_dataloader())
    labels = [1] * len(forget) + [0] * len(held)
    return float(roc_auc_score(labels, (-torch.cat([forget, held])).tolist()))


def test_monitor_ledger_ranks_forget_set_and_budget(trained: dict[str, Any]) -> None:
    ledger, dm = trained["ledger"], trained["dm"]
    p = ledger.privacy_loss(ORDER)
    # Mislabeled (memorised) examples carry larger per-instance losses than retained ones.
    assert p[dm.forget_ids].median() > 3 * p[dm.retain_ids].median()
    budget = compute_budget(ledger, dm, constants=CONSTANTS)
    # Independent: THEORY §5 written out with math.log, at the max over the forget set.
    c = lambda a: (a - 0.5) / (a - 1)  # noqa: E731
    p_max = float(p[dm.forget_ids].max())
    expected = math.ceil(20.0 * math.log(c(2) * c(4) * p_max / 1.0))
    assert budget == max(expected, 0)
    mean_budget = compute_budget(ledger, dm, constants=CONSTANTS, aggregate="mean")
    assert mean_budget <= budget


def test_finetune_unlearns_and_calibrated_stop_fires_before_budget(
    trained: dict[str, Any], tmp_path
) -> None:
    dm = trained["dm"]
    budget = compute_budget(trained["ledger"], dm, constants=CONSTANTS)
    assert budget > 150
    model = copy.deepcopy(trained["model"])
    unlearner = UnlearningModule(model, method="finetune", **FINETUNE)
    stop = LossCalibratedStopping(check_every_n_steps=5, criterion="auroc", tolerance=0.2)
    recorder = _ForgetLossRecorder(every=5)
    pl.seed_everything(1, verbose=False)
    quiet_trainer(max_steps=budget, callbacks=[stop, recorder]).fit(unlearner, datamodule=dm)
    result = unlearner.result
    assert result is not None
    assert result.stop_reason == "calibrated"
    assert result.steps < budget
    assert result.budget == budget
    assert result.steps == stop.stopped_step
    # It stopped at the first satisfied check, and only then.
    satisfied = [r["step"] for r in result.trajectory if r["satisfied"]]
    assert satisfied == [result.steps]
    assert all(r["mia_auroc"] > 0.7 for r in result.trajectory[:-1])
    # The MIA AUROC moved toward 0.5 (checked with scikit-learn, independently).
    before, after = result.before["forget_mia_auroc"], _sklearn_auroc(model, dm)
    assert before > 0.85
    assert after == pytest.approx(result.after["forget_mia_auroc"], abs=1e-9)
    assert after <= 0.7
    assert abs(after - 0.5) < abs(before - 0.5)
    assert result.after["retain"]["accuracy"] >= result.before["retain"]["accuracy"] - 0.03
    # The unlearned model is the user's own object, class and keys.
    assert unlearner.unlearned_module() is model
    assert type(model) is DigitsMLP
    assert set(model.state_dict()) == set(trained["model"].state_dict())
    # JSON round trip of the whole record.
    path = tmp_path / "result.json"
    result.to_json(path)
    assert UnlearningResult.from_json(path) == result

    # k = a log P + b fitted to the probe sets' measured steps: the fit is checked against an
    # independent least-squares solver (numpy.polyfit) and the budgets it gives for the probe
    # sets and for the whole forget set against ceil(a log P_max + b) written out with math,
    # P_max read from the ledger's rows in plain Python. Probe sets: four groups of the forget
    # set; measured steps: the first recorded step at which the group's mean loss reached half
    # the held-out set's mean loss at the start.
    held0 = result.trajectory[0]["heldout_loss"]
    ids = dm.forget_ids
    groups = [ids[i::4] for i in range(4)]
    pos = {int(v): i for i, v in enumerate(ids.tolist())}
    p8 = trained["ledger"].privacy_loss(ORDER).tolist()
    measured, losses_p = [], []
    for group in groups:
        rows = torch.tensor([pos[int(v)] for v in group])
        step = next(
            (s for s, loss in sorted(recorder.losses.items()) if loss[rows].mean() >= 0.5 * held0),
            None,
        )
        assert step is not None, "every probe group should be unlearned before the stop"
        measured.append(step)
        losses_p.append(max(p8[int(v)] for v in group))
    assert len(set(losses_p)) == 4  # four distinct points: the slope is determined
    step_model = fit_step_model(
        torch.tensor(losses_p, dtype=torch.float64), torch.tensor(measured, dtype=torch.float64)
    )
    slope, intercept = np.polyfit(np.log(losses_p), np.asarray(measured, dtype=np.float64), 1)
    assert step_model.a == pytest.approx(slope, rel=1e-9, abs=1e-9)
    assert step_model.b == pytest.approx(intercept, rel=1e-9, abs=1e-9)
    fitted = slope * np.log(losses_p) + intercept
    ss_res = float(((np.asarray(measured) - fitted) ** 2).sum())
    ss_tot = float(((np.asarray(measured) - np.mean(measured)) ** 2).sum())
    assert step_model.r2 == pytest.approx(1 - ss_res / ss_tot if ss_tot else 1.0, abs=1e-9)
    for group, p_max in [*zip(groups, losses_p, strict=True), (ids, max(losses_p))]:
        expected = max(0, math.ceil(slope * math.log(p_max) + intercept))
        got = compute_budget(trained["ledger"], group, step_model=step_model, order=ORDER)
        assert got == expected


def test_sgld_unlearns_within_budget(trained: dict[str, Any]) -> None:
    dm = trained["dm"]
    model = copy.deepcopy(trained["model"])
    unlearner = UnlearningModule(model, method="sgld", seed=3, **SGLD_KW)
    # Tolerance 0: the rule cannot be met within this budget, so the budget ends the run.
    stop = LossCalibratedStopping(check_every_n_steps=10, criterion="auroc", tolerance=0.0)
    quiet_trainer(max_steps=120, callbacks=[stop]).fit(unlearner, datamodule=dm)
    result = unlearner.result
    assert result is not None
    assert result.stop_reason == "budget"
    assert result.steps == 120
    assert stop.stopped_step is None
    before, after = result.before["forget_mia_auroc"], _sklearn_auroc(model, dm)
    assert after < before - 0.05
    assert abs(after - 0.5) < abs(before - 0.5)
    assert result.after["retain"]["accuracy"] >= result.before["retain"]["accuracy"] - 0.03
    assert result.after["forget"]["loss"] > result.before["forget"]["loss"]


def test_ledger_of_another_dataset_is_rejected(trained: dict[str, Any]) -> None:
    from lightning_unlearn import LedgerMismatchError
    from tests.unlearning._digits import digits_data

    # Same size (800), different examples: only the monitor's dataset fingerprint can tell.
    other_train, other_heldout, other_forget = digits_data(seed=1)
    other = ForgetRetainDataModule(other_train, other_forget, heldout=other_heldout)
    assert other.num_samples == trained["ledger"].num_samples
    with pytest.raises(LedgerMismatchError, match="dataset_fingerprint"):
        compute_budget(trained["ledger"], other, constants=CONSTANTS)
    with pytest.raises(LedgerMismatchError, match="800 examples"):
        compute_budget(trained["ledger"], [0, 1], constants=CONSTANTS, num_samples=799)
