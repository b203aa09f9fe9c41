"""OracleMatchStopping: the rule |forget loss - oracle's| <= tau, under a real Trainer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_unlearn.data.indexed import IndexedDataset
from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.errors import InvalidArgumentError
from lightning_unlearn.unlearning import OracleMatchStopping, UnlearningModule
from tests.unlearning._digits import quiet_trainer
from tests.unlearning.test_module import Tiny, _data

FORGET = [0, 6, 9]


def _forget_loss(model: torch.nn.Module) -> float:
    """Independent reference: one example at a time, in float64."""
    data = _data()
    model = model.double().eval()
    with torch.no_grad():
        losses = [
            F.cross_entropy(model(data[i][0].double()[None]), data[i][1][None]) for i in FORGET
        ]
    model.float()
    return float(torch.stack(losses).mean())


def test_rule_is_the_absolute_gap_to_the_oracle() -> None:
    stop = OracleMatchStopping(oracle_forget_loss=1.0, tau=0.25, check_every_n_steps=3)
    assert stop.is_satisfied({"forget_loss": 1.25})
    assert stop.is_satisfied({"forget_loss": 0.75})
    assert not stop.is_satisfied({"forget_loss": 1.2500001})
    assert not stop.is_satisfied({"forget_loss": 0.7499999})
    assert stop.tolerance == 0.25
    assert stop.check_every_n_steps == 3


@pytest.mark.parametrize("bad", [math.nan, math.inf, None, True, "1.0"])
def test_non_finite_oracle_loss_is_refused(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="oracle_forget_loss"):
        OracleMatchStopping(oracle_forget_loss=bad, tau=0.1, check_every_n_steps=2)  # type: ignore[arg-type]


def _run(oracle_forget_loss: float, tau: float) -> tuple[OracleMatchStopping, UnlearningModule]:
    dm = ForgetRetainDataModule(IndexedDataset(_data()), FORGET, heldout=10, batch_size=8)
    torch.manual_seed(0)
    unlearner = UnlearningModule(Tiny(), method="finetune", lr=0.05)
    stop = OracleMatchStopping(oracle_forget_loss, tau, check_every_n_steps=2)
    quiet_trainer(max_steps=6, callbacks=[stop]).fit(unlearner, datamodule=dm)
    return stop, unlearner


def test_stops_at_once_when_already_at_the_oracle_level() -> None:
    torch.manual_seed(0)
    level = _forget_loss(Tiny())  # the same initial weights as in _run
    stop, unlearner = _run(level, tau=1e-4)
    assert [r["step"] for r in stop.trajectory] == [0]
    assert stop.trajectory[0]["forget_loss"] == pytest.approx(level, abs=1e-5)
    assert stop.stopped_step == 0
    assert unlearner.result is not None
    assert (unlearner.result.steps, unlearner.result.stop_reason) == (0, "calibrated")


def test_unreachable_oracle_level_spends_the_budget() -> None:
    stop, unlearner = _run(100.0, tau=0.01)
    assert [r["step"] for r in stop.trajectory] == [0, 2, 4, 6]
    assert not any(r["satisfied"] for r in stop.trajectory)
    assert unlearner.result is not None
    assert (unlearner.result.steps, unlearner.result.stop_reason) == (6, "budget")
