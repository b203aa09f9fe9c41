"""UnlearningResult and evaluate_splits (unlearning/result.py) against independent references."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import TensorDataset

from lightning_unlearn import ForgetRetainDataModule
from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.unlearning import UnlearningResult, evaluate_splits
from tests.unlearning._tiny import Tiny
from tests.unlearning._tiny import tiny_data as _data


def test_evaluate_splits_matches_a_plain_loop_and_scikit_learn() -> None:
    torch.manual_seed(0)
    data = _data(60)
    held_data = TensorDataset(torch.randn(12, 4), torch.randint(0, 3, (12,)))
    dm = ForgetRetainDataModule(
        IndexedDataset(data), [3, 8, 21, 40], heldout=held_data, batch_size=8
    )
    net = Tiny().eval()
    out = evaluate_splits(net, dm)

    def reference(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
        with torch.no_grad():
            logits = net(x).double()
        loss = F.cross_entropy(logits, y, reduction="none")
        return loss, float((logits.argmax(1) == y).double().mean())

    x, y = data.tensors
    for name, ids in (("forget", dm.forget_ids), ("retain", dm.retain_ids)):
        loss, acc = reference(x[ids], y[ids])
        assert out[name]["loss"] == pytest.approx(float(loss.mean()), rel=1e-5)
        assert out[name]["accuracy"] == pytest.approx(acc, abs=1e-12)
    forget, _ = reference(x[dm.forget_ids], y[dm.forget_ids])
    held, acc = reference(*held_data.tensors)
    assert out["heldout"]["accuracy"] == pytest.approx(acc, abs=1e-12)
    labels = [1] * len(forget) + [0] * len(held)
    expected = roc_auc_score(labels, (-torch.cat([forget, held])).tolist())
    # the losses are float32 in the library: ties aside, the ranking and so the AUROC agree
    assert out["forget_mia_auroc"] == pytest.approx(expected, abs=1e-9)


def test_result_json_round_trip_and_named_errors(tmp_path) -> None:
    result = UnlearningResult(
        method="sgld",
        steps=7,
        budget=None,
        stop_reason="budget",
        num_forget=3,
        before={"forget": {"loss": 1.25, "accuracy": 1.0}, "forget_mia_auroc": 0.75},
        trajectory=[{"step": 0, "mia_auroc": 0.75, "satisfied": False}],
        extra={"aggregate": "max"},
    )
    path = tmp_path / "result.json"
    text = result.to_json(path)
    assert path.read_text() == text
    assert json.loads(text)["before"]["forget"]["loss"] == 1.25
    assert UnlearningResult.from_json(path) == result
    assert UnlearningResult.from_json(text) == result
    with pytest.raises(ValueError, match=r"lacks \['budget', 'stop_reason'\]"):
        UnlearningResult.from_json('{"method": "sgld", "steps": 1}')
