"""The model zoo: models people train, fitted by a real Trainer with the monitor attached.

Every case compares the monitor's recorded per-example norms with an independent float64
batch-of-one reference (``_zoo.reference_norms``: the example's own loss written out here, not
the package's code), or asserts the package's named error where that is the contract.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.demos import DemoModel, LightningTransformer
from lightning.pytorch.demos.boring_classes import BoringModel, ManualOptimBoringModel
from lightning.pytorch.demos.lstm import LightningLSTM
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from lightning_unlearn.callbacks import token_mean_weights
from lightning_unlearn.errors import (
    LightningUnlearnError,
    MultipleBackwardError,
    NormHooksError,
    SelfCheckError,
    UnsupportedLayerError,
)
from tests.integration._zoo import assert_records_match, fit, no_dropout

torch.manual_seed(0)
X32 = torch.randn(12, 32)


# ---------------------------------------------------------------- Lightning's demos
class Boring(BoringModel):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return super().training_step(batch[0], batch_idx)


def _boring_loss(m: nn.Module, i: int) -> Tensor:
    out = m.layer(X32[i : i + 1].double())
    return F.mse_loss(out, torch.ones_like(out))


def test_boring_model_exact() -> None:
    module = Boring()
    rec = fit(module, TensorDataset(X32), steps=2)
    assert_records_match(rec, module, _boring_loss, records=2)
    assert rec.self_check_result is not None


class Demo(DemoModel):
    def training_step(self, batch: Any, batch_nb: int) -> Any:
        return super().training_step(batch[0], batch_nb)


def _demo_loss(m: nn.Module, i: int) -> Tensor:
    return torch.relu(m.l1(X32[i : i + 1].double())).sum()


def test_demo_model_summed_loss_is_refused_by_the_self_check() -> None:
    with pytest.raises(SelfCheckError, match="loss_reduction='sum'") as err:
        fit(Demo(), TensorDataset(X32))
    ratios = err.value.engine / err.value.reference
    torch.testing.assert_close(ratios, torch.full_like(ratios, 6.0), rtol=1e-4, atol=0)


def test_demo_model_with_loss_reduction_sum_exact() -> None:
    module = Demo()
    rec = fit(module, TensorDataset(X32), monitor={"loss_reduction": "sum"}, steps=2)
    assert_records_match(rec, module, _demo_loss, records=2)


VOCAB, T = 23, 5
TOKENS = torch.randint(0, VOCAB, (12, T + 1))


class Transformer(LightningTransformer):
    def __init__(self) -> None:
        super().__init__(vocab_size=VOCAB)
        no_dropout(self)

    def prepare_data(self) -> None:  # the demo downloads WikiText-2: not needed here
        return None

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = batch
        return super().training_step((x, y), batch_idx)


def _transformer_loss(m: nn.Module, i: int) -> Tensor:
    x, y = TOKENS[i : i + 1, :-1], TOKENS[i : i + 1, 1:]
    return F.nll_loss(m.model(x, y), y.reshape(-1))  # LightningTransformer.model: float64


def _tokens() -> TensorDataset:
    return TensorDataset(TOKENS[:, :-1], TOKENS[:, 1:])


def test_demo_transformer_exact() -> None:
    module = Transformer()
    rec = fit(module, _tokens())
    assert_records_match(rec, module, _transformer_loss)


class LSTM(LightningLSTM):
    def __init__(self) -> None:
        super().__init__(vocab_size=VOCAB)
        from lightning.pytorch.demos.lstm import SimpleLSTM

        self.model = SimpleLSTM(VOCAB, ninp=8, nhid=8, nlayers=2, dropout=0.0)

    def prepare_data(self) -> None:  # the demo downloads WikiText-2: not needed here
        return None

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = batch
        return super().training_step((x, y), batch_idx)


def _lstm_loss(m: nn.Module, i: int) -> Tensor:
    x, y = TOKENS[i : i + 1, :-1], TOKENS[i : i + 1, 1:]
    hidden = tuple(h.double() for h in m.model.init_hidden(1))
    out, _ = m.model(x, hidden)
    return F.nll_loss(out, y.reshape(-1))


def test_demo_lstm_exact() -> None:
    module = LSTM()
    rec = fit(module, _tokens())
    assert_records_match(rec, module, _lstm_loss)


# ---------------------------------------------------------------- custom layers
class PairLayer(nn.Module):
    """A layer returning a tuple (output, auxiliary)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(32, 4) * 0.2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = x @ self.weight
        return h, h.tanh()


class TupleNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.pair = PairLayer()
        self.head = nn.Linear(4, 3)
        self.temperature = nn.Parameter(torch.tensor(1.5))  # module-level, used in the step

    def scores(self, x: Tensor) -> Tensor:
        h, aux = self.pair(x)
        return self.head(h + aux) / self.temperature

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = batch
        return F.cross_entropy(self.scores(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


Y3 = torch.randint(0, 3, (12,))


def _tuple_loss(m: nn.Module, i: int) -> Tensor:
    return F.cross_entropy(m.scores(X32[i : i + 1].double()), Y3[i : i + 1])


def test_tuple_layer_exact() -> None:
    # The module-level temperature is frozen here: a parameter used outside every submodule's
    # forward has no per-sample rule, and its contract is the named error tested below.
    module = TupleNet()
    module.temperature.requires_grad_(False)
    rec = fit(module, TensorDataset(X32, Y3))
    assert_records_match(rec, module, _tuple_loss)


def test_module_level_parameter_is_a_named_error_of_the_engine() -> None:
    with pytest.raises(NormHooksError, match="'temperature' received a gradient"):
        fit(TupleNet(), TensorDataset(X32, Y3), monitor={"self_check": False})


def test_module_level_parameter_excluded_by_name_warns_and_the_rest_is_exact() -> None:
    module = TupleNet()
    with pytest.warns(UserWarning, match="temperature"):
        rec = fit(module, TensorDataset(X32, Y3), monitor={"exclude": ["temperature"]})
    without = copy.deepcopy(module)  # the reference over the parameters that were kept
    without.temperature.requires_grad_(False)
    assert_records_match(rec, without, _tuple_loss)


def test_module_level_parameter_is_named_by_the_self_check() -> None:
    class OnlyTemperature(TupleNet):
        def scores(self, x: Tensor) -> Tensor:
            return self.head(x[:, :4]) / self.temperature

    with pytest.raises(LightningUnlearnError, match="temperature"):
        fit(OnlyTemperature(), TensorDataset(X32, Y3))


# ---------------------------------------------------------------- ResNet-18-style
class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.down(x))


class ResNet18(pl.LightningModule):
    """ResNet-18's layout (stem, 4 stages of 2 basic blocks, pooled head) at tiny widths."""

    def __init__(self, widths: tuple[int, ...] = (8, 8, 16, 16)) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        ]
        c = widths[0]
        for k, w in enumerate(widths):
            layers += [Block(c, w, 1 if k == 0 else 2), Block(w, w, 1)]
            c = w
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]
        self.net = nn.Sequential(*layers)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


IMAGES, LABELS = torch.randn(12, 3, 16, 16), torch.randint(0, 10, (12,))


def _resnet_loss(m: nn.Module, i: int) -> Tensor:
    return F.cross_entropy(m.net(IMAGES[i : i + 1].double()), LABELS[i : i + 1])


def test_resnet18_with_batchnorm_is_refused() -> None:
    with pytest.raises(UnsupportedLayerError, match="GroupNorm"):
        fit(ResNet18(), TensorDataset(IMAGES, LABELS))


def test_resnet18_fixed_to_groupnorm_exact() -> None:
    from opacus.validators import ModuleValidator

    module = ResNet18()
    module.net = ModuleValidator.fix(module.net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())
    rec = fit(module, TensorDataset(IMAGES, LABELS), steps=2)
    assert_records_match(rec, module, _resnet_loss, records=2)


# ---------------------------------------------------------------- Trainer features
class MLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(32, 16), nn.Tanh(), nn.Dropout(0.0), nn.Linear(16, 3))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def _mlp_loss(m: nn.Module, i: int) -> Tensor:
    return F.cross_entropy(m.net(X32[i : i + 1].double()), Y3[i : i + 1])


@pytest.mark.parametrize(
    ("trainer_kwargs", "records", "rtol"),
    [
        ({"precision": "bf16-mixed"}, 2, 1e-2),
        ({"precision": "16-mixed"}, 2, 1e-2),
        ({"accumulate_grad_batches": 2}, 2, 1e-4),
        ({"gradient_clip_val": 0.05}, 2, 1e-4),
    ],
    ids=["bf16-mixed", "16-mixed", "accumulate", "clip"],
)
def test_trainer_features_exact(trainer_kwargs: dict[str, Any], records: int, rtol: float) -> None:
    module = MLP()
    rec = fit(module, TensorDataset(X32, Y3), steps=2, **trainer_kwargs)
    assert_records_match(rec, module, _mlp_loss, rtol=rtol, records=records)
    assert rec.self_check_result is not None
    assert rec.self_check_result.rtol == rtol


class Manual(ManualOptimBoringModel):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return super().training_step(batch[0], batch_idx)


def test_manual_optimisation_exact() -> None:
    module = Manual()
    rec = fit(module, TensorDataset(X32), steps=2)
    assert_records_match(rec, module, _boring_loss, records=2)
    assert rec.steps == 2


def test_two_manual_backward_calls_per_step_raise() -> None:
    class TwoBackward(Manual):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            opt = self.optimizers()
            out = self.layer(batch[0])
            opt.zero_grad()
            self.manual_backward(out[:, 0].pow(2).mean(), retain_graph=True)
            self.manual_backward(out[:, 1].pow(2).mean())
            opt.step()

    with pytest.raises(MultipleBackwardError, match="manual_backward"):
        fit(TwoBackward(), TensorDataset(X32))


def test_compiled_submodule_run_before_fit_is_a_named_error() -> None:
    module = MLP()
    module.net[0] = torch.compile(module.net[0], backend="eager")
    module.net(X32[:6])  # traced now, before the monitor's hooks exist
    with pytest.raises(NormHooksError, match="compile") as err:
        fit(module, TensorDataset(X32, Y3))
    assert "net.0" in str(err.value)


# ---------------------------------------------------------------- losses not a batch mean
class TinyCausalLM(pl.LightningModule):
    """Token-mean next-token loss over a padded batch (labels -100 on padding)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.head = nn.Linear(8, VOCAB)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        logits = self.head(self.emb(batch["input_ids"]))[:, :-1]
        labels = batch["labels"][:, 1:]
        return F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


LENGTHS = torch.tensor([6, 2, 4, 3, 6, 5, 2, 6, 3, 4, 5, 6])


class Padded(torch.utils.data.Dataset[dict[str, Tensor]]):
    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        labels = TOKENS[i].clone()
        labels[int(LENGTHS[i]) :] = -100
        return {"input_ids": TOKENS[i], "labels": labels}


def _lm_loss(m: nn.Module, i: int) -> Tensor:
    item = Padded()[i]
    logits = m.head(m.emb(item["input_ids"][None]))[:, :-1]
    labels = item["labels"][None, 1:]
    return F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), ignore_index=-100)


def _token_weights(batch: dict[str, Tensor]) -> Tensor:
    return token_mean_weights((batch["labels"][:, 1:] != -100).sum(1))


def test_token_mean_loss_read_as_mean_is_refused() -> None:
    with pytest.raises(SelfCheckError, match="token_mean_weights"):
        fit(TinyCausalLM(), Padded())


def test_token_mean_loss_with_weights_exact() -> None:
    module = TinyCausalLM()
    rec = fit(module, Padded(), steps=2, monitor={"loss_reduction": _token_weights})
    assert_records_match(rec, module, _lm_loss, records=2)


# ---------------------------------------------------------------- HF transformers
def _hf_batch(items: list[dict[str, Tensor]]) -> Any:
    from transformers import BatchEncoding

    return BatchEncoding(
        {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}
    )


class HFModule(pl.LightningModule):
    def __init__(self, kind: str) -> None:
        super().__init__()
        from transformers import (
            BertConfig,
            BertForSequenceClassification,
            GPT2Config,
            GPT2LMHeadModel,
        )

        torch.manual_seed(0)
        self.kind = kind
        if kind == "bert":
            config = BertConfig(
                vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, num_labels=3,
            )  # fmt: skip
            self.model: nn.Module = BertForSequenceClassification(config)
        else:
            config = GPT2Config(
                vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=16,
                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            )  # fmt: skip
            self.model = GPT2LMHeadModel(config)

    def own_loss(self, batch: Any) -> Tensor:
        keys = ("input_ids", "attention_mask", "labels")
        return self.model(**{k: batch[k] for k in keys if k in batch}).loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.own_loss(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class HFData(torch.utils.data.Dataset[dict[str, Tensor]]):
    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        mask = (torch.arange(T + 1) < LENGTHS[i]).long()
        ids = TOKENS[i] * mask
        if self.kind == "bert":
            return {"input_ids": ids, "attention_mask": mask, "labels": Y3[i]}
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": ids.masked_fill(mask == 0, -100),
        }


def _hf_case(kind: str) -> None:
    module = HFModule(kind)
    data = HFData(kind)
    monitor = {"loss_reduction": _token_weights} if kind == "gpt2" else {}
    rec = fit(module, data, monitor=monitor, collate_fn=_hf_batch)

    def loss(m: nn.Module, i: int) -> Tensor:
        return m.own_loss({k: v[None] for k, v in data[i].items()})

    assert_records_match(rec, module, loss)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_hf_tiny_exact(kind: str) -> None:
    _hf_case(kind)


def test_zoo_reference_is_float64() -> None:
    # The harness's own check: the reference of a known case is the closed form.
    module = Boring()
    rec = fit(module, TensorDataset(X32))
    ids, norms, state = rec.records[0]
    w, b = state["layer.weight"].double(), state["layer.bias"].double()
    x = X32[ids].double()
    g_out = (x @ w.T + b - 1.0) * (2.0 / 2)  # d mse / d out of one example (2 outputs)
    closed = (g_out.square().sum(1) * (x.square().sum(1) + 1.0)).sqrt()
    assert math.isclose(float((norms.double() - closed).abs().max()), 0.0, abs_tol=1e-5)
