"""evaluate_splits, the package's one evaluator: its key schema and its numbers against a loop
of single-example losses in float64 and scikit-learn's AUROC."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import TensorDataset

from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.unlearning.result import SPLITS, UnlearningResult, evaluate_splits

FORGET = [1, 4, 7, 8, 20]


def _data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def _reference(
    model: torch.nn.Module, ds: TensorDataset, ids: list[int]
) -> tuple[list[float], float]:
    """Per-example losses (float64, one example at a time) and accuracy."""
    model64 = torch.nn.Linear(4, 3).double()
    model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    losses, correct = [], 0
    with torch.no_grad():
        for i in ids:
            x, y = ds[i]
            logits = model64(x.double()[None])
            losses.append(float(F.cross_entropy(logits, y[None])))
            correct += int(logits.argmax(-1).item() == y.item())
    return losses, correct / len(ids)


def test_schema_and_values_match_an_independent_reference() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    train, heldout = _data(30, 0), _data(12, 1)
    dm = ForgetRetainDataModule(train, FORGET, heldout=heldout, batch_size=7)
    metrics = evaluate_splits(model, dm)
    assert set(metrics) == {*SPLITS, "forget_mia_auroc"}
    ids = {
        "forget": FORGET,
        "retain": [i for i in range(30) if i not in FORGET],
        "heldout": list(range(12)),
    }
    losses = {}
    for split in SPLITS:
        assert set(metrics[split]) == {"loss", "accuracy"}
        ds = heldout if split == "heldout" else train
        losses[split], accuracy = _reference(model, ds, ids[split])
        # float32 forward vs float64: a few ulps of float32 on O(1) losses
        assert metrics[split]["loss"] == pytest.approx(
            sum(losses[split]) / len(ids[split]), abs=1e-5
        )
        assert metrics[split]["accuracy"] == accuracy
    # the loss-threshold attack: members (forget) are predicted by a low loss
    labels = [1] * len(FORGET) + [0] * 12
    expected = roc_auc_score(labels, [-x for x in losses["forget"] + losses["heldout"]])
    assert metrics["forget_mia_auroc"] == pytest.approx(expected, abs=1e-12)


def test_without_a_heldout_set_there_is_no_attack_score() -> None:
    dm = ForgetRetainDataModule(_data(30, 0), FORGET, batch_size=8)
    metrics = evaluate_splits(torch.nn.Linear(4, 3), dm)
    assert set(metrics) == {"forget", "retain"}


def test_diverged_model_reports_none_not_nan() -> None:
    model = torch.nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.fill_(float("inf"))
    dm = ForgetRetainDataModule(_data(30, 0), FORGET, heldout=_data(12, 1), batch_size=8)
    metrics = evaluate_splits(model, dm)
    assert metrics["forget"]["loss"] is None
    assert metrics["forget_mia_auroc"] is None
    record = UnlearningResult(
        method="neggrad", steps=1, budget=1, stop_reason="budget", after=metrics
    )
    assert UnlearningResult.from_json(record.to_json()).after == metrics  # valid JSON, no NaN


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
