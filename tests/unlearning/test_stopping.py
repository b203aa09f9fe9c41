"""LossCalibratedStopping (unlearning/stopping.py): its checks and what it logs."""

from __future__ import annotations

import pytest

from lightning_unlearn import ForgetRetainDataModule, UnlearningModule
from lightning_unlearn.data import IndexedDataset
from tests.unlearning._digits import quiet_trainer
from tests.unlearning._tiny import Tiny
from tests.unlearning._tiny import tiny_data as _data


def test_stopping_trajectory_is_logged_to_tensorboard(tmp_path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lightning_unlearn.unlearning import LossCalibratedStopping

    dm = ForgetRetainDataModule(IndexedDataset(_data()), [0, 6, 9], heldout=10, batch_size=8)
    stop = LossCalibratedStopping(check_every_n_steps=2, criterion="loss_gap", min_steps=100)
    logger = TensorBoardLogger(tmp_path, name="unlearn")
    trainer = quiet_trainer(max_steps=6, logger=logger, callbacks=[stop])
    unlearner = UnlearningModule(Tiny(), method="finetune", lr=1e-4)
    trainer.fit(unlearner, datamodule=dm)
    logger.experiment.flush()
    events = EventAccumulator(str(logger.log_dir))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("unlearn/mia_auroc")}
    assert [r["step"] for r in stop.trajectory] == [0, 2, 4, 6]
    assert sorted(logged) == [0, 2, 4, 6]
    for record in stop.trajectory:
        assert logged[record["step"]] == pytest.approx(record["mia_auroc"], abs=1e-6)
    gaps = {e.step: e.value for e in events.Scalars("unlearn/loss_gap")}
    assert gaps[6] == pytest.approx(stop.trajectory[-1]["loss_gap"], abs=1e-5)
