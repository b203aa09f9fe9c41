"""Harness of the model zoo: a real Trainer fit with a recording monitor, and an independent
float64 batch-of-one reference of every recorded per-example norm (THEORY §1)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from lightning_unlearn import PerInstancePrivacyMonitor
from lightning_unlearn.data import IndexedDataset, get_sample_ids


class RecordingMonitor(PerInstancePrivacyMonitor):
    """Records ``(ids, norms, weights at the batch start)`` of every backward pass."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(noise_multiplier=1.0, **kwargs)
        self.records: list[tuple[Tensor, Tensor, dict[str, Tensor]]] = []
        self._state: dict[str, Tensor] = {}
        self._batch_ids: Tensor | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        self._batch_ids = get_sample_ids(batch, self.sample_id_fn).cpu()
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def per_step_loss(self, norms: Tensor, trainer: pl.Trainer, batch_size: int) -> Tensor:
        assert self._batch_ids is not None
        self.records.append((self._batch_ids, norms.detach().float().cpu(), self._state))
        return super().per_step_loss(norms, trainer, batch_size)


def fit(
    module: pl.LightningModule,
    dataset: Dataset[Any],
    *,
    batch_size: int = 6,
    steps: int = 1,
    monitor: dict[str, Any] | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    **trainer_kwargs: Any,
) -> RecordingMonitor:
    """Fit ``module`` on ``IndexedDataset(dataset)`` (no shuffle) for ``steps`` batches."""
    rec = RecordingMonitor(**(monitor or {}))
    kwargs: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": steps,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "callbacks": [rec],
    }
    kwargs.update(trainer_kwargs)
    loader = DataLoader(
        IndexedDataset(dataset), batch_size=batch_size, shuffle=False, collate_fn=collate_fn
    )
    pl.Trainer(**kwargs).fit(module, loader)
    return rec


def reference_norms(
    module: nn.Module,
    state: dict[str, Tensor],
    ids: Tensor,
    example_loss: Callable[[nn.Module, int], Tensor],
) -> Tensor:
    """``||grad of example i's own loss||`` at the weights ``state``, in float64, one example
    at a time, every trainable parameter included."""
    ref = copy.deepcopy(module).double()
    ref.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in state.items()})
    ref.train()
    params = [p for p in ref.parameters() if p.requires_grad]
    out = []
    for i in ids.tolist():
        grads = torch.autograd.grad(example_loss(ref, i), params, allow_unused=True)
        out.append(sum(g.pow(2).sum() for g in grads if g is not None) ** 0.5)
    return torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in out])


def assert_records_match(
    rec: RecordingMonitor,
    module: nn.Module,
    example_loss: Callable[[nn.Module, int], Tensor],
    rtol: float = 1e-4,
    records: int = 1,
) -> None:
    """The first ``records`` recorded norms equal the float64 reference to ``rtol``."""
    assert len(rec.records) >= records
    for ids, norms, state in rec.records[:records]:
        ref = reference_norms(module, state, ids, example_loss)
        torch.testing.assert_close(norms.double(), ref, rtol=rtol, atol=rtol * float(ref.max()))


def no_dropout(module: nn.Module) -> nn.Module:
    """Dropout rates 0 everywhere (the batch-of-one reference then sees the same function)."""
    for m in module.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
        elif isinstance(m, nn.MultiheadAttention | nn.RNNBase):
            m.dropout = 0.0
    return module
