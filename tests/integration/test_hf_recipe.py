"""The Hugging Face recipe (docs/tutorials/monitor.md), run end to end: a tiny BERT built from a
config (nothing downloaded) in a minimal LightningModule taking dict batches; the monitor during
fine-tuning, then the documented unlearning path with no change to the module. Same for a
module whose training_step reads a batch dict of its own keys.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_unlearn import ForgetRetainDataModule, PerInstancePrivacyMonitor, UnlearningModule
from lightning_unlearn.accounting import UnlearningConstants
from lightning_unlearn.evaluation import per_example_losses
from lightning_unlearn.unlearning import LossCalibratedStopping, compute_budget
from tests.unlearning._digits import quiet_trainer

transformers = pytest.importorskip("transformers")

N, T, VOCAB = 48, 8, 100


class Sentences(Dataset):
    """Token sequences of fixed length; the label is whether token 7 occurs."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(1, VOCAB, (n, T), generator=g)
        self.mask = torch.ones(n, T, dtype=torch.long)
        self.mask[: n // 3, -2:] = 0  # some padding
        self.labels = (self.ids == 7).any(dim=1).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


class BertClassifier(pl.LightningModule):
    """What a user writes: dict batches straight into the HF model."""

    def __init__(self) -> None:
        super().__init__()
        config = transformers.BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=VOCAB,
            num_labels=2,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        torch.manual_seed(0)
        self.model = transformers.BertForSequenceClassification(config)

    def forward(self, **batch: torch.Tensor) -> Any:
        # Unchanged HF call: its default broadcast [1, T] position_ids are handled by the engine.
        return self.model(**batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(**batch).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def _unlearn_path(model: pl.LightningModule, dataset: Any, heldout: Any, ledger: Any) -> Any:
    """The documented path (docs/tutorials/unlearning.md), nothing model-specific."""
    dm = ForgetRetainDataModule(dataset, [1, 5, 9], heldout=heldout, batch_size=8)
    constants = UnlearningConstants(
        alpha=2, c_lsi=1.0, langevin_sigma=1.0, lr=0.05, target_epsilon=1.0
    )
    # The bound asks for more steps than these few-step runs trained; allow them, then cap at 6.
    budget = min(compute_budget(ledger, dm, constants=constants, max_steps=1000), 6)
    unlearner = UnlearningModule(model, method="finetune", lr=0.05)
    stop = LossCalibratedStopping(check_every_n_steps=2, criterion="auroc", tolerance=0.0)
    quiet_trainer(max_steps=budget, callbacks=[stop]).fit(unlearner, datamodule=dm)
    return unlearner


def test_hf_sequence_classifier_monitor_then_unlearn() -> None:
    data = Sentences(N)
    model = BertClassifier()
    monitor = PerInstancePrivacyMonitor(noise_multiplier=1.0)
    quiet_trainer(max_epochs=2, callbacks=[monitor]).fit(
        model, DataLoader(data, batch_size=8, shuffle=True)
    )
    ledger = monitor.ledger
    assert ledger.counts.tolist() == [2] * N
    assert bool((ledger.privacy > 0).all())

    unlearner = _unlearn_path(model, data, Sentences(16, seed=1), ledger)
    result = unlearner.result
    assert result is not None
    assert result.steps >= 1
    assert unlearner.module is model
    for split in ("forget", "retain", "heldout"):
        assert 0.0 <= result.after[split]["accuracy"] <= 1.0
    assert result.trajectory  # the stopping rule evaluated the HF batches

    # The adapter's per-example loss equals HF's own mean loss of each example alone.
    losses, ids, _ = per_example_losses(model, DataLoader(data, batch_size=16))
    model.eval()
    with torch.no_grad():
        for i in (0, 20, 47):
            item = {k: v.unsqueeze(0) for k, v in data[i].items()}
            torch.testing.assert_close(
                losses[ids == i][0], model(**item).loss, rtol=1e-5, atol=1e-6
            )


class TinyGPT(pl.LightningModule):
    """A causal LM in dict batches: per-example mean token loss over non-padded tokens."""

    def __init__(self) -> None:
        super().__init__()
        config = transformers.GPT2Config(
            n_embd=32, n_layer=1, n_head=2, vocab_size=VOCAB, n_positions=T, resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0,
        )  # fmt: skip
        torch.manual_seed(0)
        self.model = transformers.GPT2LMHeadModel(config)

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.model(**batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(**batch).loss


def test_causal_lm_per_example_token_loss_matches_hf_loss() -> None:
    data = Sentences(6)
    labels = data.ids.clone()
    labels[:, :2] = -100  # prompt tokens carry no loss
    batch = {"input_ids": data.ids, "attention_mask": data.mask, "labels": labels}
    model = TinyGPT().eval()
    from lightning_unlearn.evaluation import HFAdapter

    out = HFAdapter()(model, batch)
    assert out.logits is None
    with torch.no_grad():
        for i in range(6):
            ref_labels = labels[i : i + 1].masked_fill(data.mask[i : i + 1] == 0, -100)
            ref = model(
                input_ids=data.ids[i : i + 1],
                attention_mask=data.mask[i : i + 1],
                labels=ref_labels,
            ).loss
            torch.testing.assert_close(out.loss[i], ref, rtol=1e-5, atol=1e-6)


class OwnKeys(Dataset):
    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 5, generator=g)
        self.y = (self.x[:, 0] > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.x[i], "target": self.y[i]}


class OwnKeysModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch["features"]), batch["target"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_module_with_its_own_batch_keys_monitor_then_unlearn() -> None:
    data = OwnKeys(40)
    model = OwnKeysModule()
    monitor = PerInstancePrivacyMonitor(noise_multiplier=1.0)
    quiet_trainer(max_epochs=3, callbacks=[monitor]).fit(
        model, DataLoader(data, batch_size=8, shuffle=True)
    )
    assert monitor.ledger.counts.tolist() == [3] * 40
    unlearner = _unlearn_path(model, data, OwnKeys(16, seed=1), monitor.ledger)
    assert unlearner.result is not None
    assert unlearner.result.after["forget"]["loss"] is not None


def test_keys_no_adapter_knows_take_a_function() -> None:
    """{"pixels", "cls"}: the default adapter names `batch_adapter`; a function fixes it."""

    class Pix(OwnKeys):
        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"pixels": self.x[i], "cls": self.y[i]}

    class PixModule(OwnKeysModule):
        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            return F.cross_entropy(self(batch["pixels"]), batch["cls"])

    model, data = PixModule(), Pix(24)
    with pytest.raises(KeyError, match="batch_adapter"):
        per_example_losses(model, DataLoader(data, batch_size=8))

    def adapter(model, batch):  # type: ignore[no-untyped-def]
        logits = model(batch["pixels"])
        return F.cross_entropy(logits, batch["cls"], reduction="none"), logits, batch["cls"]

    dm = ForgetRetainDataModule(data, [0, 3], heldout=Pix(8, seed=2), batch_size=8)
    unlearner = UnlearningModule(model, method="finetune", batch_adapter=adapter)
    stop = LossCalibratedStopping(check_every_n_steps=1)
    quiet_trainer(max_steps=3, callbacks=[stop]).fit(unlearner, datamodule=dm)
    assert unlearner.result is not None
    assert unlearner.result.steps == 3 or unlearner.result.stop_reason == "calibrated"
