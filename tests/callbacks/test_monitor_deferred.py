"""PerInstancePrivacyMonitor's batched ledger updates (``flush_every``): nothing lost or stale."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_unlearn import PerInstancePrivacyMonitor, PrivacyLedger
from tests.callbacks._support import CrashAt, EpochShuffleSampler, make_trainer
from tests.grad_norms._models import LitClassifier, digits_dataset

N, B = 75, 8  # 10 steps per epoch, the last one of 3 examples
FIELDS = ("privacy", "counts", "sq_norm_sum", "last_norm")


class ReplacementSampler(EpochShuffleSampler):
    """N draws with replacement, seeded by the epoch: ids repeat within and across steps."""

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + 1000 * self.epoch)
        return iter(torch.randint(self.n, (self.n,), generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class DecayingLR(LitClassifier):
    """SGD whose learning rate changes after every optimizer step."""

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1.0 + 0.5 * step))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class DoubledLoss(PerInstancePrivacyMonitor):
    """An override of `per_step_loss`: twice the default, recording the step of every call."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.calls: list[int] = []

    def per_step_loss(self, norms: Tensor, trainer: pl.Trainer, batch_size: int) -> Tensor:
        self.calls.append(trainer.global_step)
        return 2.0 * super().per_step_loss(norms, trainer, batch_size)


def _fit(monitor: PerInstancePrivacyMonitor, *callbacks: pl.Callback, epochs: int = 2) -> None:
    data = DataLoader(digits_dataset("mlp", N), batch_size=B, sampler=ReplacementSampler(N))
    make_trainer(callbacks=[monitor, *callbacks], max_epochs=epochs).fit(
        DecayingLR("mlp", lr=0.5), data
    )


def _assert_same_ledger(got: PrivacyLedger, expected: PrivacyLedger) -> None:
    for name in FIELDS:
        torch.testing.assert_close(
            getattr(got, name), getattr(expected, name), rtol=1e-12, atol=1e-12, msg=name
        )


class RecordLR(pl.Callback):
    """The learning rate every backward pass sees."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize(
    "kw",
    [
        {"convention": "nominal", "noise_multiplier": 1.5, "max_grad_norm": 2.0},
        {"convention": "sgld", "noise_multiplier": 0.1, "track_ids": list(range(0, N, 3))},
        {"estimator": "sweep", "sweep_every": 3, "track_ids": list(range(10))},
    ],
    ids=["nominal", "sgld-tracked", "sweep"],
)
def test_batched_updates_give_the_per_step_ledger(kw: dict[str, Any]) -> None:
    """flush_every=1 is one update per step; 7 (not dividing the 10 steps of an epoch) and the
    default buffer several steps, with a learning rate that changes every step ("sgld" losses
    depend on it: evaluating buffered ratios at the flush's rate would differ) and ids repeated
    within and across steps (``last_norm`` must be the later step's)."""
    lr = RecordLR()
    reference = PerInstancePrivacyMonitor(**kw, flush_every=1)
    _fit(reference, lr)
    assert len(set(lr.lrs)) == len(lr.lrs) == 20
    ledger = reference.ledger
    assert int(ledger.counts.sum()) == 2 * N
    assert int(ledger.counts.max()) > 1
    assert bool((ledger.privacy > 0).any())
    for batched in (
        PerInstancePrivacyMonitor(**kw, flush_every=7),
        PerInstancePrivacyMonitor(**kw),
    ):
        _fit(batched)
        assert len(batched._online) == 0
        _assert_same_ledger(batched.ledger, ledger)


def test_reading_the_ledger_mid_epoch_sees_every_step() -> None:
    """Reads alternate between `monitor.ledger` and `monitor.state_dict()`; with flush_every=32
    every read finds the steps since the previous one still buffered."""
    seen: list[tuple[int, int, int]] = []  # (counts read, examples trained, steps buffered)

    class ReadLedger(pl.Callback):
        def __init__(self, monitor: PerInstancePrivacyMonitor) -> None:
            self.monitor, self.examples = monitor, 0

        def on_train_batch_end(
            self,
            trainer: pl.Trainer,
            pl_module: pl.LightningModule,
            outputs: Any,
            batch: Any,
            batch_idx: int,
        ) -> None:
            self.examples += batch[0].shape[0]
            buffered = len(self.monitor._online)
            if batch_idx % 2:
                counts = self.monitor.ledger.counts
            else:
                counts = self.monitor.state_dict()["ledger"]["counts"]
            seen.append((int(counts.sum()), self.examples, buffered))

    monitor = PerInstancePrivacyMonitor(noise_multiplier=1.0, flush_every=32)
    _fit(monitor, ReadLedger(monitor))
    assert len(seen) == 20
    assert all(buffered > 0 for *_, buffered in seen)
    assert [counts for counts, *_ in seen] == [examples for _, examples, _ in seen]
    assert seen[-1][1] == 2 * N


def test_checkpoints_hold_the_buffered_steps_and_resume_matches(tmp_path) -> None:
    """flush_every=4 does not divide the 6 steps of an epoch: the crash at step 5 of the second
    epoch leaves one step in the buffer, a checkpoint at step 3 is taken with three."""
    n, b = 36, 6

    def data() -> DataLoader:
        return DataLoader(digits_dataset("mlp", n), batch_size=b, sampler=EpochShuffleSampler(n, 3))

    def monitor() -> PerInstancePrivacyMonitor:
        return PerInstancePrivacyMonitor(noise_multiplier=1.5, max_grad_norm=5.0, flush_every=4)

    full = monitor()
    make_trainer(callbacks=[full], max_epochs=2).fit(LitClassifier("mlp", lr=0.2), data())

    crashed = monitor()
    epochs = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    steps = ModelCheckpoint(dirpath=tmp_path / "steps", every_n_train_steps=3, save_top_k=-1)
    trainer = make_trainer(
        callbacks=[crashed, epochs, steps, CrashAt(1, 5)], max_epochs=2, enable_checkpointing=True
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(LitClassifier("mlp", lr=0.2), data())
    assert crashed._hooks is None
    assert len(crashed._online) == 0  # flushed on the exception...
    assert crashed._ledger is not None
    assert int(crashed._ledger.counts.sum()) == n + 5 * b  # ...into the in-memory ledger

    at_step3 = torch.load(tmp_path / "steps" / "epoch=0-step=3.ckpt", weights_only=False)
    ledger3 = at_step3["callbacks"]["PerInstancePrivacyMonitor"]["ledger"]
    assert int(ledger3["counts"].sum()) == 3 * b

    resumed = monitor()
    make_trainer(callbacks=[resumed], max_epochs=2).fit(
        LitClassifier("mlp", lr=0.2, seed=99), data(), ckpt_path=tmp_path / "last.ckpt"
    )
    _assert_same_ledger(resumed.ledger, full.ledger)
    assert resumed.ledger.counts.tolist() == [2] * n
    assert resumed.steps == full.steps == 2 * n // b


def test_an_overridden_per_step_loss_is_called_once_per_step() -> None:
    kw: dict[str, Any] = {"noise_multiplier": 1.5, "max_grad_norm": 2.0, "flush_every": 7}
    custom, plain = DoubledLoss(**kw), PerInstancePrivacyMonitor(**kw)
    _fit(custom)
    _fit(plain)
    assert custom.calls == list(range(20))  # at every step, not at the flushes
    torch.testing.assert_close(
        custom.ledger.privacy, 2.0 * plain.ledger.privacy, rtol=1e-12, atol=0
    )
    torch.testing.assert_close(custom.ledger.counts, plain.ledger.counts)


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "8", None])
def test_invalid_flush_every_is_named(value: object) -> None:
    with pytest.raises(ValueError, match="Expected `flush_every` to be an integer >= 1"):
        PerInstancePrivacyMonitor(flush_every=value)  # type: ignore[arg-type]
