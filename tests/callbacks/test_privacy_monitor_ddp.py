"""PerInstancePrivacyMonitor under real DDP: ddp_spawn, 2 CPU processes, gloo, N odd."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, DistributedSampler

from lightning_unlearn import PerInstancePrivacyMonitor, PrivacyLedger
from lightning_unlearn.accounting import DEFAULT_ALPHAS
from tests.callbacks._support import SaveLedgerPerRank, opacus_rdp
from tests.grad_norms._models import (
    LitClassifier,
    build_net,
    digits_dataset,
    digits_inputs,
    loop_sq_norms,
)

N, B, EPOCHS, SEED = 41, 4, 2, 7


@pytest.mark.ddp
@pytest.mark.parametrize("kind", ["mlp", "gru"])  # the GRU: per-sample norms of a recurrent layer
def test_ddp_spawn_counts_norms_and_full_ledger_on_every_rank(tmp_path, kind: str) -> None:
    pl.seed_everything(SEED)  # Lightning seeds its DistributedSampler with PL_GLOBAL_SEED
    monitor = PerInstancePrivacyMonitor(noise_multiplier=1.0, save_dir=tmp_path)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=EPOCHS,
        callbacks=[
            monitor,
            ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True),
            SaveLedgerPerRank(str(tmp_path)),
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(
        LitClassifier(kind, lr=0.0),
        DataLoader(digits_dataset(kind, N), batch_size=B, shuffle=True),
    )

    # Times each id was trained: replay the DistributedSampler of both ranks (with padding).
    trained = torch.zeros(N, dtype=torch.long)
    for epoch in range(EPOCHS):
        for rank in range(2):
            sampler = DistributedSampler(
                range(N), num_replicas=2, rank=rank, shuffle=True, seed=SEED
            )
            sampler.set_epoch(epoch)
            for i in sampler:
                trained[i] += 1
    assert int(trained.sum()) == EPOCHS * (N + 1)  # one padded repeat per epoch

    ledger = PrivacyLedger.load(tmp_path / "privacy_ledger.pt")  # written by rank 0
    assert ledger.counts.tolist() == trained.tolist()
    x, y = digits_inputs(kind, N)
    reference = loop_sq_norms(build_net(kind), x, y)  # single process, batch size 1
    # Float32 norms of batches of 4 against float32 batch-of-one gradients: rounding in the
    # sums over units and (GRU) 8 time steps, measured <= 2.1e-7 relative; 1e-5 bounds it.
    torch.testing.assert_close(ledger.sq_norm_sum, trained * reference, rtol=1e-5, atol=0)
    q = 2 * B / N  # the global batch
    expected = trained.unsqueeze(1) * (1 / q) * opacus_rdp(reference.sqrt(), 1.0, q, DEFAULT_ALPHAS)
    torch.testing.assert_close(ledger.privacy, expected, rtol=1e-5, atol=0)

    for rank in range(2):  # every rank ends with the full ledger
        copy = PrivacyLedger.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(copy.privacy, ledger.privacy, rtol=0, atol=0)
        assert copy.counts.tolist() == trained.tolist()
    # the epoch-end checkpoint holds the reduced ledger of both ranks
    ckpt = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    state = ckpt["callbacks"]["PerInstancePrivacyMonitor"]["ledger"]
    assert state["counts"].tolist() == trained.tolist()


@pytest.mark.ddp
def test_ddp_spawn_sweep_splits_tracked_ids_across_ranks(tmp_path) -> None:
    tracked = [0, 5, 6, 19, 33, 40]  # 6 optimizer steps per epoch on each rank (21 ids, batch 4)
    monitor = PerInstancePrivacyMonitor(
        estimator="sweep", sweep_every=3, track_ids=tracked, save_dir=tmp_path
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        callbacks=[monitor],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(LitClassifier("mlp"), DataLoader(digits_dataset("mlp", N), batch_size=B))
    ledger = PrivacyLedger.load(tmp_path / "privacy_ledger.pt")
    assert ledger.metadata["steps"] == 6
    x, y = digits_inputs("mlp", N)
    norms = loop_sq_norms(build_net("mlp"), x, y).sqrt()
    expected = torch.zeros(N, len(DEFAULT_ALPHAS), dtype=torch.float64)
    q = 2 * B / N
    expected[tracked] = 6 * opacus_rdp(norms[tracked], 1.0, q, DEFAULT_ALPHAS)  # sweeps at 3, 6
    torch.testing.assert_close(ledger.privacy, expected, rtol=1e-5, atol=1e-12)
    assert int(ledger.counts.sum()) == N + 1  # training observations, one padded repeat


@pytest.mark.ddp
def test_ddp_spawn_ledger_of_a_hf_bert_on_dict_batches(tmp_path) -> None:
    """Dict batches carry no ids: under DDP the monitor reads them from Lightning's
    DistributedSampler, and a transformer's per-sample norms add up across ranks."""
    pytest.importorskip("transformers")
    from tests.callbacks._hf_support import FrozenBert, Sentences, bert_sq_norms

    n = 21
    data = Sentences(n)
    pl.seed_everything(SEED)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        callbacks=[PerInstancePrivacyMonitor(noise_multiplier=1.0, save_dir=tmp_path)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(FrozenBert(), DataLoader(data, batch_size=B, shuffle=True))
    trained = torch.zeros(n, dtype=torch.long)
    for rank in range(2):
        sampler = DistributedSampler(range(n), num_replicas=2, rank=rank, shuffle=True, seed=SEED)
        sampler.set_epoch(0)
        for i in sampler:
            trained[i] += 1
    ledger = PrivacyLedger.load(tmp_path / "privacy_ledger.pt")
    assert ledger.counts.tolist() == trained.tolist()
    reference = bert_sq_norms(data)
    # Float32 norms through attention and 2 layers against float32 batch-of-one gradients:
    # measured <= 2.6e-7 relative; 1e-5 bounds it.
    torch.testing.assert_close(ledger.sq_norm_sum, trained * reference, rtol=1e-5, atol=0)
