"""DifficultyMonitor: direct references, DDP equality, resume and mismatch errors (real digits)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_unlearn.callbacks import DifficultyMonitor
from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.errors import LedgerMismatchError

N = 256


def digits_dataset(n: int = N) -> IndexedDataset:
    x, y = load_digits(return_X_y=True)
    return IndexedDataset(
        TensorDataset(torch.tensor(x[:n], dtype=torch.float32) / 16.0, torch.tensor(y[:n]))
    )


class DigitsClassifier(pl.LightningModule):
    """Module level so that ddp_spawn children can unpickle it."""

    def __init__(self, batch_size: int = 64, n: int = N, validate: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
        self.batch_size, self.n, self.validate = batch_size, n, validate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y, _ = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def val_dataloader(self) -> DataLoader | list:
        return DataLoader(digits_dataset(64), batch_size=64) if self.validate else []

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.3)

    def train_dataloader(self) -> DataLoader:
        dataset = digits_dataset(self.n)
        sampler = None
        if self.trainer.world_size > 1:  # Lightning's own sampler would shuffle; keep the order
            sampler = DistributedSampler(
                dataset, self.trainer.world_size, self.trainer.global_rank, shuffle=False
            )
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, sampler=sampler)


def fit(monitor: DifficultyMonitor, max_epochs: int, **kwargs) -> pl.Trainer:
    model_kwargs = kwargs.pop("model_kwargs", {})
    ckpt_path = kwargs.pop("ckpt_path", None)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=kwargs.pop("devices", 1),
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=kwargs.pop("enable_checkpointing", False),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[monitor, *kwargs.pop("callbacks", [])],
        **kwargs,
    )
    trainer.fit(DigitsClassifier(**model_kwargs), ckpt_path=ckpt_path)
    return trainer


def test_records_equal_direct_evaluation_and_scores(tmp_path: Path):
    monitor = DifficultyMonitor(save_dir=tmp_path)
    trainer = fit(monitor, max_epochs=3)
    assert monitor.epochs == [0, 1, 2]
    model = trainer.lightning_module
    x, y = digits_dataset().dataset.tensors
    with torch.no_grad():
        probs = F.softmax(model(x), -1).double()
    onehot = F.one_hot(y, 10).double()
    torch.testing.assert_close(
        monitor.history["el2n"][-1].double(), (probs - onehot).norm(dim=1), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(
        monitor.history["confidence"][-1].double(), probs[torch.arange(N), y], rtol=1e-5, atol=1e-6
    )
    assert torch.equal(monitor.history["correct"][-1] > 0.5, probs.argmax(1) == y)
    assert model.training  # eval pass restored train mode

    scores = monitor.scores()
    correct = monitor.history["correct"] > 0.5
    by_hand = [sum(bool(correct[t - 1, i] and not correct[t, i]) for t in (1, 2)) for i in range(N)]
    assert scores["forgetting_events"].tolist() == [float(v) for v in by_hand]
    torch.testing.assert_close(
        scores["mean_confidence"], monitor.history["confidence"].double().mean(0)
    )
    assert torch.equal(scores["el2n"], monitor.history["el2n"][0].double())
    assert torch.equal(monitor.scores(el2n_epoch=2)["el2n"], monitor.history["el2n"][2].double())
    lines = (tmp_path / "difficulty_scores.csv").read_text().splitlines()
    assert lines[0] == "sample_id,forgetting_events,never_learned,mean_confidence,el2n"
    assert len(lines) == N + 1
    saved = torch.load(tmp_path / "difficulty_state.pt", weights_only=True)
    assert saved["epochs"] == [0, 1, 2]


def test_every_n_epochs_and_argument_errors():
    monitor = DifficultyMonitor(every_n_epochs=2)
    fit(monitor, max_epochs=3)
    assert monitor.epochs == [1]
    with pytest.raises(ValueError, match="every_n_epochs"):
        DifficultyMonitor(every_n_epochs=0)
    with pytest.raises(ValueError, match="el2n_epoch"):
        monitor.scores(el2n_epoch=0)
    with pytest.raises(ValueError, match="recorded"):
        DifficultyMonitor().scores()


@pytest.mark.ddp
def test_ddp_spawn_equals_single_process(tmp_path: Path):
    single = DifficultyMonitor(save_dir=tmp_path / "single")
    fit(single, max_epochs=2)
    # Two ranks with half the batch each: the same global batches and averaged gradients.
    fit(
        DifficultyMonitor(save_dir=tmp_path / "ddp"),
        max_epochs=2,
        devices=2,
        strategy="ddp_spawn",
        use_distributed_sampler=False,
        model_kwargs={"batch_size": 32},
    )
    ddp = torch.load(tmp_path / "ddp" / "difficulty_state.pt", weights_only=True)
    assert ddp["epochs"] == [0, 1]
    assert ddp["num_samples"] == N
    for name in ("correct", "confidence", "el2n"):
        assert not ddp["history"][name].isnan().any()  # every example evaluated by some rank
        torch.testing.assert_close(ddp["history"][name], single.history[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("validate", [False, True])
def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path: Path, validate: bool):
    # With validation, ModelCheckpoint saves on validation end, before on_train_epoch_end.
    full = DifficultyMonitor()
    fit(full, max_epochs=4, model_kwargs={"validate": validate})
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    fit(
        DifficultyMonitor(),
        max_epochs=2,
        enable_checkpointing=True,
        callbacks=[checkpoint],
        model_kwargs={"validate": validate},
    )
    resumed = DifficultyMonitor()
    again = ModelCheckpoint(dirpath=tmp_path / "resumed", save_last=True, save_top_k=0)
    fit(
        resumed,
        max_epochs=4,
        ckpt_path=str(tmp_path / "last.ckpt"),
        callbacks=[again],
        enable_checkpointing=True,
        model_kwargs={"validate": validate},
    )
    assert resumed.epochs == [0, 1, 2, 3]
    for name in ("correct", "confidence", "el2n"):
        torch.testing.assert_close(resumed.history[name], full.history[name])


def test_state_mismatches_raise_named_errors():
    monitor = DifficultyMonitor()
    fit(monitor, max_epochs=1)
    state = monitor.state_dict()
    with pytest.raises(LedgerMismatchError, match="num_samples=256"):
        DifficultyMonitor(num_samples=100).load_state_dict(state)
    with pytest.raises(LedgerMismatchError, match="version"):
        DifficultyMonitor().load_state_dict({**state, "version": 99})
    with pytest.raises(LedgerMismatchError, match="keys"):
        DifficultyMonitor().load_state_dict({"ledger": None})
    other_data = DifficultyMonitor()
    other_data.load_state_dict(state)
    with pytest.raises(LedgerMismatchError, match="another data set"):
        fit(other_data, max_epochs=2, model_kwargs={"n": 200})


def test_correlation_table_with_real_privacy_ledger():
    """Privacy losses from the real PerInstancePrivacyMonitor against every difficulty score."""
    from scipy.stats import spearmanr

    from lightning_unlearn import PerInstancePrivacyMonitor
    from lightning_unlearn.evaluation import correlation_table, grand_scores

    privacy = PerInstancePrivacyMonitor(noise_multiplier=1.0)
    difficulty = DifficultyMonitor()
    trainer = fit(difficulty, max_epochs=12, callbacks=[privacy])
    grand, ids = grand_scores(trainer.lightning_module, DataLoader(digits_dataset(), 64))
    assert ids.tolist() == list(range(N))
    scores = {**difficulty.scores(), "grand_final": grand}
    losses = privacy.ledger.privacy_loss(8)
    table = correlation_table({"P(alpha=8)": losses}, scores)["P(alpha=8)"]
    assert set(table) == {
        "forgetting_events",
        "never_learned",
        "mean_confidence",
        "el2n",
        "grand_final",
    }
    for name, score in scores.items():
        expected = spearmanr(losses.numpy(), score.numpy()).statistic
        assert table[name] == pytest.approx(expected, abs=1e-5)
    # Examples with large gradients accumulate large losses; confident ones small losses.
    assert table["grand_final"] > 0.5
    assert table["mean_confidence"] < -0.5
