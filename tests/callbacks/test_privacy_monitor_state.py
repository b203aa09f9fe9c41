"""PerInstancePrivacyMonitor: crash-and-resume, TensorBoard files, and the named errors."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from lightning_unlearn import (
    LedgerMismatchError,
    MissingSampleIdError,
    NonFiniteGradientError,
    NormHooksError,
    PerInstancePrivacyMonitor,
    UnsupportedLayerError,
)
from lightning_unlearn.accounting import DEFAULT_ALPHAS
from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.grad_norms import attach_norm_hooks
from tests.callbacks._support import CrashAt, EpochShuffleSampler, make_trainer
from tests.grad_norms._models import LitClassifier, digits_dataset, digits_inputs

N, B = 36, 6


def _loader(n: int = N, name: str = "mlp") -> DataLoader:
    return DataLoader(digits_dataset(name, n), batch_size=B, sampler=EpochShuffleSampler(n, 3))


def _monitor(**kw: object) -> PerInstancePrivacyMonitor:
    return PerInstancePrivacyMonitor(noise_multiplier=1.5, max_grad_norm=5.0, **kw)


def test_crash_and_resume_gives_the_uninterrupted_ledger(tmp_path) -> None:
    full = _monitor()
    make_trainer(callbacks=[full], max_epochs=2).fit(LitClassifier("mlp", lr=0.2), _loader())

    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    crashed = _monitor()
    trainer = make_trainer(
        callbacks=[crashed, ckpt, CrashAt(1, 2)], max_epochs=2, enable_checkpointing=True
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(LitClassifier("mlp", lr=0.2), _loader())
    assert crashed._hooks is None  # detached on the exception

    resumed = _monitor()
    make_trainer(callbacks=[resumed], max_epochs=2).fit(
        LitClassifier("mlp", lr=0.2, seed=99), _loader(), ckpt_path=tmp_path / "last.ckpt"
    )
    for name in ("privacy", "counts", "sq_norm_sum", "last_norm"):
        torch.testing.assert_close(
            getattr(resumed.ledger, name), getattr(full.ledger, name), rtol=1e-12, atol=0
        )
    assert resumed.ledger.counts.tolist() == [2] * N
    assert resumed.steps == full.steps == 2 * N // B
    assert resumed.worst_case_epsilon() == pytest.approx(full.worst_case_epsilon(), rel=1e-12)


def test_resume_on_other_data_raises_ledger_mismatch(tmp_path) -> None:
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer = make_trainer(callbacks=[_monitor(), ckpt], enable_checkpointing=True)
    trainer.fit(LitClassifier("mlp"), _loader())
    last = tmp_path / "last.ckpt"

    with pytest.raises(LedgerMismatchError, match="num_samples"):
        make_trainer(callbacks=[_monitor()], max_epochs=2).fit(
            LitClassifier("mlp"), _loader(N + 6), ckpt_path=last
        )
    x, y = digits_inputs("mlp", 2 * N)
    other = IndexedDataset(TensorDataset(x[N:], y[N:]))  # same size, other examples
    with pytest.raises(LedgerMismatchError, match="dataset_fingerprint"):
        make_trainer(callbacks=[_monitor()], max_epochs=2).fit(
            LitClassifier("mlp"), DataLoader(other, batch_size=B), ckpt_path=last
        )
    with pytest.raises(LedgerMismatchError, match="noise_multiplier"):
        make_trainer(callbacks=[PerInstancePrivacyMonitor(noise_multiplier=3.0)], max_epochs=2).fit(
            LitClassifier("mlp"), _loader(), ckpt_path=last
        )


def test_tensorboard_histograms_and_scalars(tmp_path) -> None:
    tb = TensorBoardLogger(tmp_path, name="tb", version=0)
    csv_logger = CSVLogger(tmp_path, name="csv", version=0)
    monitor = _monitor(delta=1e-4)
    trainer = make_trainer(
        callbacks=[monitor], logger=[tb, csv_logger], max_epochs=2, log_every_n_steps=1
    )
    trainer.fit(LitClassifier("mlp", lr=0.1), _loader())

    events = EventAccumulator(tb.log_dir, size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    histograms = set(events.Tags()["histograms"])
    expected = {f"privacy/log10_P_alpha{a}" for a in DEFAULT_ALPHAS} | {"privacy/grad_norm"}
    assert expected <= histograms
    assert len(events.Histograms("privacy/grad_norm")) == 2  # one per epoch
    hist = events.Histograms("privacy/log10_P_alpha2")[-1].histogram_value
    assert hist.num == N
    log10_p = monitor.ledger.privacy_loss(2).log10()
    assert hist.min == pytest.approx(float(log10_p.min()), rel=1e-6)
    assert hist.max == pytest.approx(float(log10_p.max()), rel=1e-6)

    scalars = set(events.Tags()["scalars"])
    names = ["epsilon_median", "epsilon_p90", "epsilon_max", "epsilon_worst_case", "seen_fraction"]
    assert {f"privacy/{s}" for s in names} <= scalars
    eps, _ = monitor.ledger.epsilon(1e-4)
    last = {s: events.Scalars(f"privacy/{s}")[-1].value for s in names}
    assert last["epsilon_max"] == pytest.approx(float(eps.max()), rel=1e-6)
    assert last["epsilon_median"] == pytest.approx(float(eps.quantile(0.5)), rel=1e-6)
    assert last["seen_fraction"] == 1.0
    assert last["epsilon_worst_case"] == pytest.approx(monitor.worst_case_epsilon(), rel=1e-6)
    assert last["epsilon_max"] <= last["epsilon_worst_case"]  # clipping on (THEORY §4)

    # another logger gets the scalars (and no histograms)
    text = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    assert all(f"privacy/{s}" in text for s in names)


class _Stream(torch.utils.data.IterableDataset):
    """An iterable dataset without ids: no sampler to read, nothing in the batch."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        x, y = digits_inputs("mlp", 12)
        yield from zip(x, y, torch.zeros(12, dtype=torch.long), strict=True)


def test_missing_sample_ids_name_both_fixes() -> None:
    stream = DataLoader(_Stream(), batch_size=4)
    monitor = PerInstancePrivacyMonitor(num_samples=12, sample_rate=1 / 3)
    with pytest.raises(MissingSampleIdError, match="IterableDataset") as err:
        make_trainer(callbacks=[monitor]).fit(LitClassifier("mlp"), stream)
    assert "IndexedDataset" in str(err.value)
    assert "sample_id_fn" in str(err.value)


def test_sample_id_fn_for_custom_batches() -> None:
    x, y = digits_inputs("mlp", 12)
    ds = TensorDataset(x, y, torch.arange(12))  # ids in the third field of a plain tuple
    monitor = PerInstancePrivacyMonitor(sample_id_fn=lambda batch: batch[2])
    make_trainer(callbacks=[monitor]).fit(LitClassifier("mlp"), DataLoader(ds, batch_size=4))
    assert monitor.ledger.counts.tolist() == [1] * 12


def test_batchnorm_raises_unsupported_layer() -> None:
    with pytest.raises(UnsupportedLayerError, match="GroupNorm"):
        make_trainer(callbacks=[PerInstancePrivacyMonitor()]).fit(
            LitClassifier("batchnorm"), DataLoader(digits_dataset("mlp", 12), batch_size=4)
        )
    monitor = PerInstancePrivacyMonitor(exclude_unsupported=True)
    make_trainer(callbacks=[monitor]).fit(
        LitClassifier("batchnorm"), DataLoader(digits_dataset("mlp", 12), batch_size=4)
    )
    assert monitor.ledger.counts.tolist() == [1] * 12


def test_attaching_twice_raises() -> None:
    model = LitClassifier("mlp")
    hooks = attach_norm_hooks(model)
    with pytest.raises(NormHooksError, match="already has them attached"):
        make_trainer(callbacks=[PerInstancePrivacyMonitor()]).fit(
            model, DataLoader(digits_dataset("mlp", 12), batch_size=4)
        )
    hooks.detach()
    two = [PerInstancePrivacyMonitor(), PerInstancePrivacyMonitor(state_key="second")]
    with pytest.raises(NormHooksError):
        make_trainer(callbacks=two).fit(model, DataLoader(digits_dataset("mlp", 12), batch_size=4))


def test_nan_gradients_raise() -> None:
    x, y = digits_inputs("mlp", 12)
    x[5, 3] = math.nan
    data = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=4)
    with pytest.raises(NonFiniteGradientError, match=r"sample ids \[5\]"):
        make_trainer(callbacks=[PerInstancePrivacyMonitor()]).fit(LitClassifier("mlp"), data)


def test_invalid_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="`estimator`"):
        PerInstancePrivacyMonitor(estimator="exact")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`sample_rate`"):
        PerInstancePrivacyMonitor(sample_rate=1.5)
    with pytest.raises(ValueError, match="`delta`"):
        PerInstancePrivacyMonitor(delta=0.0)
    with pytest.raises(ValueError, match="`sweep_every`"):
        PerInstancePrivacyMonitor(sweep_every=0)
    with pytest.raises(ValueError, match="`convention`"):
        PerInstancePrivacyMonitor(convention="renyi")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="training has not started"):
        _ = PerInstancePrivacyMonitor().ledger
