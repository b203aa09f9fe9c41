"""Shared fixture: one digits model trained with the privacy monitor per test session."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest

from lightning_unlearn import PerInstancePrivacyMonitor
from lightning_unlearn.data.splits import ForgetRetainDataModule
from tests.unlearning._digits import DigitsMLP, digits_data, quiet_trainer


@pytest.fixture(scope="session")
def trained() -> dict[str, Any]:
    pl.seed_everything(0, verbose=False)
    train, heldout, forget_ids = digits_data()
    dm = ForgetRetainDataModule(train, forget_ids, heldout=heldout, batch_size=128)
    model = DigitsMLP(weight_decay=5e-4)
    monitor = PerInstancePrivacyMonitor(noise_multiplier=1.0)
    quiet_trainer(max_epochs=60, callbacks=[monitor]).fit(
        model, train_dataloaders=dm.full_train_dataloader()
    )
    return {"dm": dm, "model": model, "ledger": monitor.ledger, "forget_ids": forget_ids}
