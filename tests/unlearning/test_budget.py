"""compute_budget and its parts (unlearning/budget.py) against THEORY §5 written out."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from lightning_unlearn import ForgetRetainDataModule, LedgerMismatchError
from lightning_unlearn.accounting import (
    PrivacyLedger,
    StepModel,
    UnlearningConstants,
    unlearning_steps,
)
from lightning_unlearn.errors import BudgetTooLargeError, InvalidArgumentError
from lightning_unlearn.unlearning import compute_budget
from lightning_unlearn.unlearning.budget import budget_cap, forget_privacy_loss
from tests.unlearning._tiny import tiny_data as _data


def _ledger(p: list[float], **metadata: Any) -> PrivacyLedger:
    ledger = PrivacyLedger(len(p), alphas=(2, 8), metadata=metadata or None)
    ledger.privacy[:, 1] = torch.tensor(p, dtype=torch.float64)
    return ledger


def test_budget_sources_aggregates_and_monotonicity() -> None:
    constants = UnlearningConstants(
        alpha=2, c_lsi=2.0, langevin_sigma=0.5, lr=0.1, target_epsilon=0.5, d0=0.1
    )
    p = [0.5, 2.0, 8.0, 30.0, 100.0]
    ledger = _ledger(p)

    def bound(pv: float) -> int:  # THEORY §5 written out independently
        c = lambda a: (a - 0.5) / (a - 1)  # noqa: E731
        spn = 2 * 2.0 / (0.5**2 * 0.1)
        return max(0, math.ceil(spn * math.log(c(2) * (c(4) * pv + 0.1) / 0.5)))

    assert compute_budget(ledger, [0, 3], constants=constants) == bound(30.0)
    assert compute_budget(ledger, [0, 3], constants=constants, aggregate="mean") == bound(15.25)
    assert compute_budget(ledger, [0, 3], constants=constants, aggregate="sum") == bound(30.5)
    budgets = [compute_budget(ledger, [i], constants=constants) for i in range(5)]
    assert budgets == sorted(budgets)  # non-decreasing in P
    assert budgets[-1] > budgets[0]
    model = StepModel(a=7.0, b=-3.0)
    assert compute_budget(ledger, [4], step_model=model, order=8) == math.ceil(
        7.0 * math.log(100.0) - 3.0
    )
    assert compute_budget(steps=12) == 12


def test_budget_sigma_defaults_to_the_ledgers_training_sigma() -> None:
    """THEORY §5 continues the noisy process: without `langevin_sigma` the ledger's σ is used."""
    unset = UnlearningConstants(alpha=2, c_lsi=1.0, lr=0.1, target_epsilon=1.0)
    recorded = _ledger([0.5, 40.0], noise_multiplier=0.5)
    explicit = UnlearningConstants(
        alpha=2, c_lsi=1.0, langevin_sigma=0.5, lr=0.1, target_epsilon=1.0
    )
    spn = 2 * 1.0 / (0.5**2 * 0.1)  # alpha C_LSI / (sigma^2 eta), written out
    expected = math.ceil(spn * math.log(1.5 * (7 / 6 * 40.0) / 1.0))
    assert compute_budget(recorded, [1], constants=unset) == expected
    assert compute_budget(recorded, [1], constants=explicit) == expected
    other = UnlearningConstants(alpha=2, c_lsi=1.0, langevin_sigma=1.0, lr=0.1, target_epsilon=1.0)
    assert compute_budget(recorded, [1], constants=other) < expected  # an explicit σ wins
    from_ledger = UnlearningConstants.from_ledger(recorded, c_lsi=1.0, lr=0.1, target_epsilon=1.0)
    assert from_ledger == explicit
    with pytest.raises(LedgerMismatchError, match=r"noise_multiplier.*langevin_sigma"):
        compute_budget(_ledger([0.5, 40.0]), [1], constants=unset)
    with pytest.raises(InvalidArgumentError, match="langevin_sigma"):
        unlearning_steps(1.0, unset)


def test_budget_rejects_mismatched_ledgers_and_bad_calls() -> None:
    constants = UnlearningConstants(
        alpha=2, c_lsi=1.0, langevin_sigma=1.0, lr=0.1, target_epsilon=1.0
    )
    dm = ForgetRetainDataModule(_data(40), [1, 2])
    with pytest.raises(LedgerMismatchError, match="40-example"):
        compute_budget(_ledger([1.0] * 30), dm, constants=constants)
    other = _ledger([1.0] * 40, dataset_fingerprint="0123456789abcdef")
    with pytest.raises(LedgerMismatchError, match="dataset_fingerprint"):
        compute_budget(other, dm, constants=constants)
    with pytest.raises(ValueError, match="exactly one"):
        compute_budget(_ledger([1.0] * 40), dm)
    with pytest.raises(ValueError, match="exactly one"):
        compute_budget(_ledger([1.0] * 40), dm, constants=constants, steps=3)
    with pytest.raises(ValueError, match="order"):
        compute_budget(_ledger([1.0] * 40), dm, step_model=StepModel(a=1.0, b=0.0))
    with pytest.raises(ValueError, match="int >= 0"):
        compute_budget(steps=-1)


def test_budget_cap_refuses_more_than_one_training_run() -> None:
    constants = UnlearningConstants(
        alpha=2, c_lsi=1.0, langevin_sigma=1.0, lr=0.1, target_epsilon=1.0
    )
    ledger = _ledger([0.5, 40.0], steps=50)
    assert budget_cap(ledger) == (50, "the length of the training run the ledger records")
    assert budget_cap(ledger, max_steps=7)[0] == 7
    k = math.ceil(20.0 * math.log(1.5 * (7 / 6) * 40.0))  # 20 log(c_2 c_4 P), P = 40
    assert k > 50
    with pytest.raises(
        BudgetTooLargeError, match=f"{k} unlearning steps, more than the maximum 50"
    ):
        compute_budget(ledger, [1], constants=constants)
    assert compute_budget(ledger, [1], constants=constants, max_steps=k) == k
    assert compute_budget(ledger, [0], constants=constants) < 50  # P = 0.5 fits


def test_forget_privacy_loss_aggregates_the_ledger_rows() -> None:
    ledger = _ledger([1.0, 5.0, 2.0, 7.0])
    assert forget_privacy_loss(ledger, [2, 0], order=8) == 2.0
    assert forget_privacy_loss(ledger, [2, 0], order=8, aggregate="mean") == 1.5
    assert forget_privacy_loss(ledger, torch.tensor([3, 1]), order=8, aggregate="sum") == 12.0
    with pytest.raises(InvalidArgumentError, match="duplicates"):
        forget_privacy_loss(ledger, [1, 1], order=8)
