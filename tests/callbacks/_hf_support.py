"""A BERT of the HF recipe for the monitor's DDP test (a module of its own: ``ddp_spawn``
pickles the model class by reference, and importing it needs ``transformers``)."""

from __future__ import annotations

import torch

from tests.grad_norms._reference import per_example_reference
from tests.integration.test_hf_recipe import BertClassifier, Sentences

__all__ = ["FrozenBert", "Sentences", "bert_sq_norms"]


class FrozenBert(BertClassifier):
    """The HF recipe's BERT at learning rate 0, so every step sees the initial weights."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def bert_sq_norms(data: Sentences) -> torch.Tensor:
    """Squared gradient norm of each example's own HF loss, one backward each (float64 sums)."""
    model = FrozenBert()

    def loss(i: int) -> torch.Tensor:
        return model(**{k: v[None] for k, v in data[i].items()}).loss

    params = [p for p in model.parameters() if p.requires_grad]
    return per_example_reference(params, loss, len(data))[0]
