"""The monitor in a real Trainer on a model with an LSTM, attention and a module-level
parameter: exact norms in the ledger, or the named coverage error at the first step."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_unlearn.callbacks import PerInstancePrivacyMonitor
from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.errors import NormHooksError
from tests.grad_norms._reference import per_example_reference

N, T, D = 12, 5, 4


class SeqModel(pl.LightningModule):
    def __init__(self, module_level: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.LSTM(D, 8, batch_first=True)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)
        self.temperature = nn.Parameter(torch.tensor(2.0)) if module_level else None

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        h, _ = self.rnn(x)
        causal = nn.Transformer.generate_square_subsequent_mask(T, dtype=h.dtype)
        a, _ = self.attn(h, h, h, attn_mask=causal, need_weights=False)
        logits = self.head(a[:, -1])
        if self.temperature is not None:
            logits = logits / self.temperature
        return nn.functional.cross_entropy(logits, y)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = batch
        return self.loss(x, y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _data() -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, T, D, generator=g), torch.randint(0, 3, (N,), generator=g)


def _fit(model: pl.LightningModule) -> PerInstancePrivacyMonitor:
    x, y = _data()
    monitor = PerInstancePrivacyMonitor(noise_multiplier=1.0)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[monitor],
    )
    data = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=4, shuffle=False)
    trainer.fit(model, data)
    return monitor


def test_monitor_norms_are_exact_on_lstm_and_attention() -> None:
    model = SeqModel(module_level=False)
    x, y = _data()
    params = [p for p in model.parameters() if p.requires_grad]
    reference, _ = per_example_reference(
        params, lambda i: model.loss(x[i : i + 1], y[i : i + 1]), N
    )
    monitor = _fit(model)
    # float32 model: 1e-4 relative (THEORY §1's norm squared; float32 sums over a few hundred
    # terms per example)
    torch.testing.assert_close(monitor.ledger.sq_norm_sum.double(), reference, rtol=1e-4, atol=0)


def test_module_level_parameter_stops_the_first_step_with_a_named_error() -> None:
    with pytest.raises(NormHooksError, match=r"'temperature'"):
        _fit(SeqModel(module_level=True))
