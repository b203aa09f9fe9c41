"""Unlearning under ddp_spawn (2 CPU processes) and resumption of an interrupted run."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_unlearn.unlearning import LossCalibratedStopping, UnlearningModule
from tests.unlearning._digits import quiet_trainer

SGLD_KW = {"lr": 0.3, "sgld_sigma": 0.005, "weight_decay": 5e-3}


class ReportingUnlearner(UnlearningModule):
    """Writes each rank's result and a weight checksum to ``report_dir`` (ddp_spawn workers'
    state does not come back to the parent)."""

    report_dir: str = ""

    def on_train_end(self) -> None:
        super().on_train_end()
        assert self.result is not None
        flat = torch.cat([p.detach().flatten() for p in self.module.parameters()])
        report = {
            "step": self.trainer.global_step,
            "reason": self.result.stop_reason,
            "trajectory_steps": [r["step"] for r in self.result.trajectory],
            "trajectory_auroc": [r["mia_auroc"] for r in self.result.trajectory],
            "weights": flat.double().sum().item(),
            "weights_abs": flat.double().abs().sum().item(),
        }
        path = Path(self.report_dir) / f"rank{self.trainer.global_rank}.json"
        path.write_text(json.dumps(report))


@pytest.mark.ddp
def test_ddp_spawn_ranks_stop_at_the_same_step_with_identical_replicas(
    trained: dict[str, Any], tmp_path
) -> None:
    unlearner = ReportingUnlearner(
        copy.deepcopy(trained["model"]), method="sgld", seed=7, **SGLD_KW
    )
    unlearner.report_dir = str(tmp_path)
    stop = LossCalibratedStopping(check_every_n_steps=5, criterion="auroc", tolerance=0.4)
    trainer = quiet_trainer(
        max_steps=150, devices=2, strategy="ddp_spawn", callbacks=[stop], deterministic=False
    )
    trainer.fit(unlearner, datamodule=trained["dm"])
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert reports[0]["step"] == reports[1]["step"]
    assert reports[0]["reason"] == reports[1]["reason"] == "calibrated"
    assert reports[0]["step"] < 150
    assert reports[0]["trajectory_steps"] == reports[1]["trajectory_steps"]
    aurocs = reports[0]["trajectory_auroc"]
    assert aurocs[-1] <= 0.9 < min(aurocs[:-1])  # stopped at the first satisfied check
    # Same SGLD seed on both ranks: identical noise, so the replicas stayed identical.
    assert reports[0]["weights"] == reports[1]["weights"]
    assert reports[0]["weights_abs"] == reports[1]["weights_abs"]


class _CrashError(RuntimeError):
    pass


class _CrashAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise _CrashError(f"simulated crash at step {self.step}")


class _NoiseState(Callback):
    """The SGLD generator state at a given step (or at the start of a resumed run)."""

    def __init__(self, step: int | None = None) -> None:
        self.step = step
        self.state: torch.Tensor | None = None

    def _grab(self, trainer: pl.Trainer) -> None:
        self.state = trainer.optimizers[0].state_dict()["generator_states"]["cpu"].clone()

    def on_train_start(self, trainer, pl_module) -> None:
        if self.step is None:
            self._grab(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self._grab(trainer)


def _run(trained: dict[str, Any], callbacks: list[Callback], ckpt_path: str | None = None):
    pl.seed_everything(5, verbose=False)
    unlearner = UnlearningModule(copy.deepcopy(trained["model"]), method="sgld", seed=1, **SGLD_KW)
    stop = LossCalibratedStopping(check_every_n_steps=4, tolerance=0.0)
    trainer = quiet_trainer(max_steps=18, callbacks=[stop, *callbacks], enable_checkpointing=True)
    trainer.fit(unlearner, datamodule=trained["dm"], ckpt_path=ckpt_path)
    return unlearner, stop, trainer


def test_interrupted_run_resumes_from_its_checkpoint(trained: dict[str, Any], tmp_path) -> None:
    at_six = _NoiseState(step=6)
    reference, ref_stop, _ = _run(trained, [at_six])

    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1)
    with pytest.raises(_CrashError):
        _run(trained, [ckpt, _CrashAt(10)])
    saved = sorted(p.name for p in tmp_path.glob("*.ckpt"))
    assert saved == ["epoch=0-step=6.ckpt"]  # ceil(760 retained examples / 128) = 6 steps per epoch

    on_resume = _NoiseState()
    resumed, stop, trainer = _run(trained, [on_resume], ckpt_path=str(tmp_path / saved[0]))
    assert trainer.global_step == 18
    assert resumed.result is not None
    assert reference.result is not None
    assert resumed.result.steps == reference.result.steps == 18
    assert resumed.result.stop_reason == "budget"
    # The SGLD noise stream continues where it was at the checkpoint (step 6), not from the seed.
    assert at_six.state is not None
    assert on_resume.state is not None
    assert torch.equal(on_resume.state, at_six.state)
    # Stopping trajectory and the "before" evaluation came back from the checkpoint.
    assert [r["step"] for r in stop.trajectory] == [r["step"] for r in ref_stop.trajectory]
    assert stop.trajectory[:2] == ref_stop.trajectory[:2]  # checks 0 and 4, before the crash
    assert resumed.result.before == reference.result.before
    # The resumed run unlearned as far as the uninterrupted one.
    auroc = resumed.result.after["forget_mia_auroc"]
    assert auroc == pytest.approx(reference.result.after["forget_mia_auroc"], abs=0.05)
    assert auroc < resumed.result.before["forget_mia_auroc"]
