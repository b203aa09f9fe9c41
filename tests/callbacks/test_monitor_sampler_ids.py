"""The monitor reads sample ids from the training DataLoader's sampler: the user's dataset,
batches and training_step stay exactly as they were (issue 12).

Independent references: the first feature of every example is its position, so the ids of the
batches ``training_step`` really received are decoded from the data itself (``SeenIds``), with
each example's squared gradient norm from a batch-size-1 loop at the weights of that step.
"""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, random_split

from lightning_unlearn import PerInstancePrivacyMonitor, PrivacyLedger
from lightning_unlearn.data import IndexedDataset, dataset_fingerprint
from lightning_unlearn.errors import SampleIdMismatchError
from tests.callbacks._sampler_support import (
    BareTensors,
    BoringStyle,
    PermutationSampler,
    ResumableLoader,
    SeenIds,
    XYModule,
    id_data,
)
from tests.callbacks._support import CrashAt, SaveLedgerPerRank, make_trainer

N, B = 36, 4


@pytest.mark.parametrize(
    ("workers", "accumulate"), [(0, 1), (2, 1), (2, 2)], ids=["plain", "workers", "accumulate"]
)
def test_unchanged_xy_module_on_a_shuffled_tensor_dataset(workers: int, accumulate: int) -> None:
    """shuffle=True, num_workers=2 with prefetching, accumulate_grad_batches: the ids the
    monitor records are those of the batches really trained on, with their own norms."""
    epochs = 3
    monitor = PerInstancePrivacyMonitor(noise_multiplier=1.0, flush_every=3)
    seen = SeenIds(N)
    torch.manual_seed(1)
    loader = DataLoader(
        id_data(N),
        batch_size=B,
        shuffle=True,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
    )
    make_trainer(
        callbacks=[seen, monitor], max_epochs=epochs, accumulate_grad_batches=accumulate
    ).fit(XYModule(), loader)
    ledger = monitor.ledger
    assert ledger.counts.tolist() == [epochs] * N
    assert torch.equal(ledger.counts, seen.counts)
    # Misattributed ids would swap norms between examples: each example's own sum matches.
    torch.testing.assert_close(ledger.sq_norm_sum, seen.sq, rtol=1e-4, atol=1e-7)


def test_unchanged_boring_style_module_on_bare_tensors() -> None:
    monitor = PerInstancePrivacyMonitor()
    seen = SeenIds(N)
    make_trainer(callbacks=[seen, monitor], max_epochs=2).fit(
        BoringStyle(), DataLoader(BareTensors(N), batch_size=B, shuffle=True)
    )
    assert monitor.ledger.counts.tolist() == [2] * N
    assert torch.equal(monitor.ledger.counts, seen.counts)


def test_random_split_ids_are_positions_in_the_part() -> None:
    full = id_data(N)
    part, _ = random_split(full, [24, 12], generator=torch.Generator().manual_seed(0))
    monitor = PerInstancePrivacyMonitor()
    make_trainer(callbacks=[monitor], max_epochs=2).fit(
        XYModule(), DataLoader(part, batch_size=B, shuffle=True)
    )
    assert monitor.ledger.num_samples == 24
    assert monitor.ledger.counts.tolist() == [2] * 24


def test_wrap_before_split_gives_full_set_ids_and_no_index_error() -> None:
    """IndexedDataset over the full set, then random_split: the explicit ids index the full
    set; the ledger is sized to it and the fingerprint is that of the full data."""
    full = IndexedDataset(id_data(N))
    part, _ = random_split(full, [24, 12], generator=torch.Generator().manual_seed(0))

    class FromIndexed(XYModule):
        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y, ids = batch
            assert torch.equal(ids, x[:, 0].round().long())
            return super().training_step((x, y), batch_idx)

    monitor = PerInstancePrivacyMonitor()
    make_trainer(callbacks=[monitor], max_epochs=2).fit(
        FromIndexed(), DataLoader(part, batch_size=B, shuffle=True)
    )
    ledger = monitor.ledger
    assert ledger.num_samples == N
    expected = torch.zeros(N, dtype=torch.long)
    expected[torch.tensor(part.indices)] = 2
    assert torch.equal(ledger.counts, expected)
    assert ledger.metadata["dataset_fingerprint"] == dataset_fingerprint(id_data(N), N)


def test_explicit_ids_that_disagree_with_the_sampler_are_a_named_error() -> None:
    from torch.utils.data import default_collate

    def reversing(items):  # type: ignore[no-untyped-def]
        return default_collate(items[::-1])

    class FromIndexed(XYModule):
        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            x, y, _ = batch
            return super().training_step((x, y), batch_idx)

    loader = DataLoader(IndexedDataset(id_data(N)), batch_size=B, collate_fn=reversing)
    with pytest.raises(SampleIdMismatchError, match="collate_fn or batch sampler"):
        make_trainer(callbacks=[PerInstancePrivacyMonitor()]).fit(FromIndexed(), loader)


def test_reloaded_dataloaders_are_wrapped_again() -> None:
    class Reloading(XYModule):
        def train_dataloader(self):  # type: ignore[no-untyped-def]
            return DataLoader(id_data(N), batch_size=B, shuffle=True)

    monitor = PerInstancePrivacyMonitor()
    make_trainer(callbacks=[monitor], max_epochs=3, reload_dataloaders_every_n_epochs=1).fit(
        Reloading()
    )
    assert monitor.ledger.counts.tolist() == [3] * N


def test_the_monitor_does_not_change_the_training_run() -> None:
    """Same data order, same weights with and without the monitor (no extra RNG draws)."""
    weights = []
    for callbacks in ([], [PerInstancePrivacyMonitor()]):
        pl.seed_everything(3, verbose=False)
        model = XYModule()
        loader = DataLoader(id_data(N), batch_size=B, shuffle=True, num_workers=2)
        make_trainer(callbacks=callbacks, max_epochs=2).fit(model, loader)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)


def _resume_runs(tmp_path, make_loader, crash_batch: int = 5):  # type: ignore[no-untyped-def]
    def monitor() -> PerInstancePrivacyMonitor:
        return PerInstancePrivacyMonitor(noise_multiplier=1.5, max_grad_norm=5.0, flush_every=4)

    full = monitor()
    make_trainer(callbacks=[full], max_epochs=2).fit(XYModule(lr=0.2), make_loader())
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1)
    trainer = make_trainer(
        callbacks=[monitor(), ckpt, CrashAt(1, crash_batch)],
        max_epochs=2,
        enable_checkpointing=True,
    )
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(XYModule(lr=0.2), make_loader())
    steps_per_epoch = N // B
    path = tmp_path / f"epoch=1-step={steps_per_epoch + crash_batch}.ckpt"  # mid-epoch 1
    resumed, seen = monitor(), SeenIds(N)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(callbacks=[resumed, seen], max_epochs=2).fit(
            XYModule(lr=0.2, seed=99), make_loader(), ckpt_path=path
        )
    ours = [w for w in caught if "re-trains part of an epoch" in str(w.message)]
    return full.ledger, resumed.ledger, seen, ours


def test_mid_epoch_resume_with_a_loader_that_restores_its_position(tmp_path) -> None:
    full, resumed, _, warned = _resume_runs(tmp_path, lambda: ResumableLoader(id_data(N), B, 7))
    for name in ("privacy", "counts", "sq_norm_sum", "last_norm"):
        torch.testing.assert_close(getattr(resumed, name), getattr(full, name), rtol=1e-12, atol=0)
    assert resumed.counts.tolist() == [2] * N
    assert not warned


def test_mid_epoch_resume_with_a_plain_loader_warns_once_and_records_what_ran(tmp_path) -> None:
    def make_loader() -> DataLoader:
        return DataLoader(id_data(N), batch_size=B, sampler=PermutationSampler(N, 7))

    crash = 5
    full, resumed, seen, warned = _resume_runs(tmp_path, make_loader, crash)
    assert len(warned) == 1
    # The checkpoint was written after batch crash - 1 of epoch 1. Lightning 2.6 restarts the
    # epoch's data from its first batch and stops after the remaining N/B - crash batches: so
    # epoch 0 (all), epoch 1's first `crash` batches (before the checkpoint) and the first
    # N/B - crash batches of the epoch again.
    remaining = N // B - crash
    assert int(seen.counts.sum()) == remaining * B  # what the resumed run really trained
    sampler = PermutationSampler(N, 7)
    epoch0 = torch.tensor(list(sampler))
    sampler.set_epoch(1)
    epoch1 = torch.tensor(list(sampler))
    expected = torch.zeros(N, dtype=torch.long)
    expected[epoch0] += 1
    expected[epoch1[: crash * B]] += 1
    expected[epoch1[: remaining * B]] += 1
    assert torch.equal(resumed.counts, expected)
    assert not torch.equal(resumed.counts, full.counts)


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_spawn_two_processes_equal_the_single_process_ledger(tmp_path) -> None:
    """DistributedSampler (Lightning's injection) over N = 2 * B * k examples: the global batch
    of every step is the same set of examples as the single-process batch of 2B drawn from the
    same permutation, so the runs are the same run and so are their ledgers."""
    n, epochs, seed = 32, 2, 5
    pl.seed_everything(seed, verbose=False)  # DistributedSampler's seed
    monitor = PerInstancePrivacyMonitor(noise_multiplier=1.0, save_dir=tmp_path)
    pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=epochs,
        callbacks=[monitor, SaveLedgerPerRank(str(tmp_path))],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(XYModule(lr=0.1), DataLoader(id_data(n), batch_size=B, shuffle=True))
    ddp = PrivacyLedger.load(tmp_path / "privacy_ledger.pt")

    single = PerInstancePrivacyMonitor(noise_multiplier=1.0)
    loader = DataLoader(id_data(n), batch_size=2 * B, sampler=PermutationSampler(n, seed))
    make_trainer(callbacks=[single], max_epochs=epochs).fit(XYModule(lr=0.1), loader)
    assert ddp.counts.tolist() == single.ledger.counts.tolist() == [epochs] * n
    # float32 gradients of two processes vs one: summation order only
    torch.testing.assert_close(ddp.sq_norm_sum, single.ledger.sq_norm_sum, rtol=1e-4, atol=0)
    torch.testing.assert_close(ddp.privacy, single.ledger.privacy, rtol=1e-4, atol=0)
