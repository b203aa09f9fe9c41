"""BudgetSpec: a budget chosen once (fixed steps or THEORY §5's constants), applied later."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightning_unlearn.accounting import PrivacyLedger, UnlearningConstants, unlearning_steps
from lightning_unlearn.errors import BudgetTooLargeError, LedgerMismatchError
from lightning_unlearn.unlearning import BudgetSpec, compute_budget

CONSTANTS = UnlearningConstants(alpha=2, c_lsi=1.0, langevin_sigma=1.0, lr=0.05, target_epsilon=1.0)


def _ledger(p: list[float]) -> PrivacyLedger:
    ledger = PrivacyLedger(len(p), alphas=(2, 8))
    ledger.privacy[:, 1] = torch.tensor(p, dtype=torch.float64)
    ledger.metadata["steps"] = 10**9  # a long run: no cap
    return ledger


def test_constants_budget_is_the_bound_of_the_aggregated_loss() -> None:
    ledger = _ledger([1.0, 50.0, 3.0, 7.0])
    for aggregate, p in [("max", 50.0), ("mean", 28.5), ("sum", 57.0)]:
        spec = BudgetSpec(constants=CONSTANTS, aggregate=aggregate)  # type: ignore[arg-type]
        expected = int(unlearning_steps(torch.tensor(p, dtype=torch.float64), CONSTANTS))
        assert spec.budget(ledger, [1, 3]) == expected
        assert spec.source == "THEORY §5 constants"


def test_fixed_steps_win_over_constants_and_still_check_a_given_ledger() -> None:
    spec = BudgetSpec(steps=7, constants=CONSTANTS)
    assert spec.budget(None, None) == 7
    assert spec.budget(_ledger([1.0, 2.0]), [0]) == 7
    assert spec.source == "fixed --budget-steps"
    with pytest.raises(LedgerMismatchError):
        spec.budget(_ledger([1.0, 2.0]), [0], expected_metadata={"batch_size": 64})


def test_cap_and_frozen() -> None:
    spec = BudgetSpec(constants=CONSTANTS, max_steps=3)
    with pytest.raises(BudgetTooLargeError):
        spec.budget(_ledger([1.0, 1e6]), [1])
    assert compute_budget(steps=5) == BudgetSpec(steps=5).budget(None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.steps = 3  # type: ignore[misc]
