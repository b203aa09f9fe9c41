"""The experiments' building blocks on real digits data: test metrics against a float64 loop,
a zero budget, the barrier of a model with itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_unlearn.data.splits import ForgetRetainDataModule
from lightning_unlearn.experiments.builders import build_datamodule, make_model
from lightning_unlearn.experiments.pipeline import (
    evaluate_test_split,
    forget_set_barrier,
    unlearn_forget_set,
)
from lightning_unlearn.unlearning.result import evaluate_splits


@pytest.fixture(scope="module")
def setup() -> tuple[object, torch.nn.Module, ForgetRetainDataModule]:
    dm = build_datamodule("digits", batch_size=64, seed=0)
    dm.setup()
    torch.manual_seed(0)
    model = make_model("mlp", dm).eval()
    frdm = ForgetRetainDataModule(
        dm.train_dataset,  # type: ignore[arg-type]
        [3, 14, 15, 92, 65],
        heldout=dm.test_dataset,
        batch_size=64,
    )
    return dm, model, frdm


def test_test_metrics_match_a_float64_loop(setup) -> None:  # type: ignore[no-untyped-def]
    dm, model, _ = setup
    model64 = make_model("mlp", dm).double().eval()
    model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    losses, correct = [], 0
    with torch.no_grad():
        for i in range(len(dm.test_dataset)):
            x, y = dm.test_dataset[i][:2]
            logits = model64(x.double()[None])
            losses.append(float(F.cross_entropy(logits, torch.as_tensor(y)[None])))
            correct += int(logits.argmax(-1).item() == int(y))
    metrics = evaluate_test_split(model, dm)
    assert metrics["test_loss"] == pytest.approx(sum(losses) / len(losses), abs=1e-5)
    assert metrics["test_acc"] == correct / len(losses)


def test_zero_budget_runs_nothing_and_records_the_evaluator(setup) -> None:  # type: ignore[no-untyped-def]
    _, model, frdm = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unlearned, result, _ = unlearn_forget_set(
        model, frdm, method="finetune", budget=0, lr=0.1, stopping=None, progress=False
    )
    assert (result.steps, result.budget, result.stop_reason) == (0, 0, "budget")
    assert result.num_forget == 5
    assert result.before == result.after == evaluate_splits(model, frdm)
    for key, value in unlearned.state_dict().items():
        assert torch.equal(value, before[key])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_barrier_of_a_model_with_itself_is_zero(setup) -> None:  # type: ignore[no-untyped-def]
    _, model, frdm = setup
    assert forget_set_barrier(model, model, frdm) == pytest.approx(0.0, abs=1e-6)
