"""The bundled classifiers: shapes, mean cross-entropy, SGD default, checkpoint round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_unlearn.data import IndexedDataset
from lightning_unlearn.models import GroupNormCNN, MLPClassifier, build_model, model_name


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
@pytest.mark.parametrize("side", [8, 28])
def test_cnn_training_step_is_mean_cross_entropy(side: int) -> None:
    torch.manual_seed(0)
    model = GroupNormCNN(input_size=side)
    x = torch.randn(5, 1, side, side)
    y = torch.tensor([0, 1, 2, 3, 4])
    batch = torch.utils.data.default_collate(
        [IndexedDataset(torch.utils.data.TensorDataset(x, y))[i] for i in range(5)]
    )
    loss = model.training_step(batch, 0)
    # Independent reference: a loop of per-example -log softmax at the label, averaged.
    with torch.no_grad():
        per = [-torch.log_softmax(model(x[i : i + 1])[0], dim=0)[y[i]] for i in range(5)]
    torch.testing.assert_close(loss.detach(), torch.stack(per).mean())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_default_optimizer_is_plain_sgd() -> None:
    opt = MLPClassifier(input_dim=4, hidden=(3,), lr=0.3).configure_optimizers()
    assert type(opt) is torch.optim.SGD
    assert opt.defaults["lr"] == 0.3
    assert opt.defaults["momentum"] == 0.0


def test_build_model_round_trips_hparams() -> None:
    torch.manual_seed(0)
    model = GroupNormCNN(input_size=8, channels=(8, 8), num_groups=2)
    clone = build_model(model_name(model), **dict(model.hparams))
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(clone(x), model(x))
    assert F.softmax(model(x), -1).shape == (2, 10)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: GroupNormCNN(channels=(6, 8), num_groups=4), "num_groups"),
        (lambda: GroupNormCNN(input_size=2), "input_size"),
        (lambda: MLPClassifier(hidden=(0,)), "hidden"),
        (lambda: MLPClassifier(lr=-1.0), "lr"),
        (lambda: build_model("resnet"), "name"),
    ],
)
def test_bad_model_arguments(factory, match: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match):
        factory()
