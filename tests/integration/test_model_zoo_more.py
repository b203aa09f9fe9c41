"""More of the model zoo: layers, HF architectures and Lightning features nobody on the team
wrote, fitted by a real Trainer with the monitor in its default mode.

Every case compares the recorded per-example norms with the float64 batch-of-one reference of
``_zoo`` (the example's own loss written out here), or asserts the package's named error.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrizations
from torch.utils.data import DataLoader, TensorDataset, random_split

from lightning_unlearn import PerInstancePrivacyMonitor
from lightning_unlearn.errors import NormHooksError, SelfCheckError, UnsupportedLayerError
from tests.integration._zoo import assert_records_match, fit, reference_norms

torch.manual_seed(0)
IMG, SEQ, VEC = torch.randn(12, 3, 8, 8), torch.randn(12, 4, 8), torch.randn(12, 8)
TOK = torch.randint(0, 10, (12, 5))
TOK[::3, -2:] = 0
Y = torch.randint(0, 3, (12,))


class Net(pl.LightningModule):
    """Cross-entropy of ``net(x)``: the layer under test inside a plain LightningModule."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loss_of(x: Tensor) -> Callable[[nn.Module, int], Tensor]:
    def loss(m: nn.Module, i: int) -> Tensor:
        xi = x[i : i + 1]
        return F.cross_entropy(m(xi.double() if xi.is_floating_point() else xi), Y[i : i + 1])

    return loss


def _exact(net: nn.Module, x: Tensor, **trainer_kwargs: Any) -> None:
    module = Net(net)
    rec = fit(module, TensorDataset(x, Y), steps=2, **trainer_kwargs)
    assert_records_match(rec, module, _loss_of(x), records=2)


def _head(*layers: nn.Module, n: int) -> nn.Sequential:
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(n, 3))


# ---------------------------------------------------------------- convolutions
CONVS: dict[str, Callable[[], nn.Module]] = {
    "reflect": lambda: _head(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), n=256),
    "circular": lambda: _head(nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular"), n=256),
    "same-even-kernel": lambda: _head(nn.Conv2d(3, 4, 4, padding="same"), n=256),
    "depthwise": lambda: _head(nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 3, groups=6, padding=1), n=384),
    "transpose": lambda: _head(
        nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=1), n=512
    ),
    "transpose-groups": lambda: _head(
        nn.Conv2d(3, 4, 1), nn.ConvTranspose2d(4, 2, 2, stride=2, groups=2), n=512
    ),
}


@pytest.mark.parametrize("kind", list(CONVS))
def test_conv_variants_exact(kind: str) -> None:
    _exact(CONVS[kind](), IMG)


# ---------------------------------------------------------------- other torch layers
class Bilinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Bilinear(4, 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(x[:, :4], x[:, 4:])


class Embed(nn.Module):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.e = nn.Embedding(10, 6, **kwargs)
        self.h = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.h(self.e(x).mean(1))


class Bag(nn.Module):
    """``nn.EmbeddingBag`` on ``[B, L]`` bags (repeated tokens in a bag), or flat with offsets."""

    def __init__(self, mode: str = "mean", weighted: bool = False, offsets: bool = False):
        super().__init__()
        self.e = nn.EmbeddingBag(10, 6, mode=mode)
        self.h = nn.Linear(6, 3)
        self.weighted, self.offsets = weighted, offsets

    def forward(self, x: Tensor) -> Tensor:
        if self.offsets:
            starts = torch.arange(0, x.numel(), x.shape[1], device=x.device)
            return self.h(self.e(x.reshape(-1), starts))
        w = ((x + 1.0) / 10.0).to(self.e.weight.dtype) if self.weighted else None
        return self.h(self.e(x, per_sample_weights=w))


class Cell(nn.Module):
    """A recurrent cell called once per time step in a Python loop."""

    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell, self.h = cell, nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        state: Any = None
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
        return self.h(state[0] if isinstance(state, tuple) else state)


class LegacyWeightNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        with pytest.warns(FutureWarning):
            self.a = torch.nn.utils.weight_norm(nn.Linear(8, 5))
        self.b = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.a(x).tanh())


LAYERS: dict[str, tuple[Callable[[], nn.Module], Tensor]] = {
    "bilinear": (Bilinear, VEC),
    "prelu": (lambda: nn.Sequential(nn.Linear(8, 5), nn.PReLU(), nn.Linear(5, 3)), VEC),
    "prelu-channels": (lambda: _head(nn.Conv2d(3, 4, 3), nn.PReLU(4), n=144), IMG),
    "embedding-padding-idx": (lambda: Embed(padding_idx=0), TOK),
    "embedding-max-norm": (lambda: Embed(max_norm=0.5), TOK),
    "embedding-bag-mean": (Bag, TOK),
    "embedding-bag-max": (lambda: Bag("max"), TOK),
    "embedding-bag-weighted-sum": (lambda: Bag("sum", weighted=True), TOK),
    "lstm-cell-loop": (lambda: Cell(nn.LSTMCell(8, 6)), SEQ),
    "gru-cell-loop": (lambda: Cell(nn.GRUCell(8, 6)), SEQ),
}


@pytest.mark.parametrize("kind", list(LAYERS))
def test_layers_exact(kind: str) -> None:
    make, x = LAYERS[kind]
    _exact(make(), x)


def test_legacy_weight_norm_is_a_named_error() -> None:
    # Its norm through the Linear rule equals the true one only while g == ||v|| (at
    # initialisation: the first-step self-check passes), then drifts (0.4 % after one step).
    with pytest.raises(UnsupportedLayerError, match=r"'net.a.weight' \(WeightNorm.*weight_g"):
        fit(Net(LegacyWeightNorm()), TensorDataset(VEC, Y))


def test_embedding_bag_with_offsets_is_a_named_error() -> None:
    with pytest.raises(UnsupportedLayerError, match=r"'net.e' \(EmbeddingBag\).*2-D input"):
        fit(Net(Bag(offsets=True)), TensorDataset(TOK, Y))


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_embedding_bag_in_opacus_modes_is_a_named_error(mode: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=r"EmbeddingBag 'net.e'.*mode='fused'"):
        fit(Net(Bag()), TensorDataset(TOK, Y), monitor={"grad_sample_mode": mode})


@pytest.mark.parametrize(
    ("wrap", "kind"),
    [
        (parametrizations.weight_norm, "_WeightNorm"),
        (parametrizations.spectral_norm, "_SpectralNorm"),
    ],
    ids=["weight_norm", "spectral_norm"],
)
def test_parametrized_weight_is_a_named_error(wrap: Callable[..., nn.Module], kind: str) -> None:
    net = nn.Sequential(wrap(nn.Linear(8, 5)), nn.Tanh(), nn.Linear(5, 3))
    with pytest.raises(UnsupportedLayerError, match=rf"'net.0.weight' \({kind}.*remove_param"):
        fit(Net(net), TensorDataset(VEC, Y))


def test_bidirectional_two_layer_gru_exact() -> None:
    class GRU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(8, 6, num_layers=2, batch_first=True, bidirectional=True)
            self.h = nn.Linear(12, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.h(self.rnn(x)[0][:, -1])

    _exact(GRU(), SEQ)


# ---------------------------------------------------------------- Lightning features
def test_example_input_array_exact() -> None:
    net = nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3))
    module = Net(net)
    module.example_input_array = torch.randn(2, 8)
    rec = fit(module, TensorDataset(VEC, Y), steps=2, enable_model_summary=True)
    assert_records_match(rec, module, _loss_of(VEC), records=2)


def test_compiled_lightning_module_exact() -> None:
    module = Net(nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)))
    eager = copy.deepcopy(module)  # Lightning swaps a compiled forward into `module` itself
    rec = fit(torch.compile(module, backend="eager"), TensorDataset(VEC, Y), steps=2)
    assert_records_match(rec, eager, _loss_of(VEC), records=2)


# ---------------------------------------------------------------- HF transformers
V, T = 40, 6
HF_TOKENS = torch.randint(3, V, (12, T))
HF_MASK = (torch.arange(T) < torch.tensor([6, 2, 4, 3, 6, 5, 2, 6, 3, 4, 5, 6])[:, None]).long()
PIXELS = torch.randn(12, 3, 8, 8)


def _hf_collate(items: list[dict[str, Tensor]]) -> Any:
    from transformers import BatchEncoding

    return BatchEncoding(
        {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}
    )


class HFData(torch.utils.data.Dataset[dict[str, Tensor]]):
    def __init__(self, item: Callable[[int], dict[str, Tensor]]) -> None:
        self.item = item

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.item(i)


class HF(pl.LightningModule):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def own_loss(self, batch: Any) -> Tensor:
        return self.model(**batch).loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.own_loss(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _classify(pad: int) -> Callable[[int], dict[str, Tensor]]:
    def item(i: int) -> dict[str, Tensor]:
        ids = torch.where(HF_MASK[i] == 1, HF_TOKENS[i], torch.tensor(pad))
        return {"input_ids": ids, "attention_mask": HF_MASK[i], "labels": Y[i]}

    return item


def _causal(i: int) -> dict[str, Tensor]:  # unpadded: the token mean is the example mean
    return {"input_ids": HF_TOKENS[i], "labels": HF_TOKENS[i]}


def _vit(i: int) -> dict[str, Tensor]:
    return {"pixel_values": PIXELS[i], "labels": Y[i]}


def _hf_model(kind: str, attn: str | None) -> tuple[nn.Module, Callable[[int], dict[str, Tensor]]]:
    import transformers as tf

    torch.manual_seed(0)
    kw: dict[str, Any] = {} if attn is None else {"attn_implementation": attn}
    drop = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    if kind == "distilbert":
        c = tf.DistilBertConfig(
            vocab_size=V, dim=16, n_layers=1, n_heads=2, hidden_dim=32, dropout=0.0,
            attention_dropout=0.0, seq_classif_dropout=0.0, num_labels=3, **kw,
        )  # fmt: skip
        return tf.DistilBertForSequenceClassification(c), _classify(0)
    if kind == "roberta":  # position ids from input_ids, offset by padding_idx
        c = tf.RobertaConfig(
            vocab_size=V, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=20, num_labels=3, pad_token_id=1,
            **drop, **kw,
        )  # fmt: skip
        return tf.RobertaForSequenceClassification(c), _classify(1)
    if kind in ("llama", "llama-tied", "mistral"):
        config = tf.MistralConfig if kind == "mistral" else tf.LlamaConfig
        c = config(
            vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
            tie_word_embeddings=kind == "llama-tied", **kw,
        )  # fmt: skip
        lm = tf.MistralForCausalLM if kind == "mistral" else tf.LlamaForCausalLM
        return lm(c), _causal
    c = tf.ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, num_labels=3, **drop, **kw,
    )  # fmt: skip
    return tf.ViTForImageClassification(c), _vit


@pytest.mark.parametrize(
    ("kind", "attn"),
    [
        ("distilbert", "eager"),
        ("distilbert", None),
        ("roberta", "eager"),
        ("roberta", None),
        ("llama", "eager"),
        ("llama", None),
        ("llama-tied", None),
        ("mistral", None),
        ("vit", "eager"),
        ("vit", None),
    ],
)
def test_hf_tiny_more_exact(kind: str, attn: str | None) -> None:
    model, item = _hf_model(kind, attn)
    module = HF(model)
    rec = fit(module, HFData(item), steps=2, collate_fn=_hf_collate)

    def loss(m: nn.Module, i: int) -> Tensor:
        one = {k: v[None] for k, v in item(i).items()}
        return m.own_loss({k: v.double() if v.is_floating_point() else v for k, v in one.items()})

    assert_records_match(rec, module, loss, records=2)


def _t5(decoder_len: int) -> HF:
    import transformers as tf

    torch.manual_seed(0)
    c = tf.T5Config(
        vocab_size=V, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, dropout_rate=0.0, decoder_start_token_id=0,
        pad_token_id=0, attn_implementation="eager",
    )  # fmt: skip
    return HF(tf.T5ForConditionalGeneration(c))


def _t5_data(decoder_len: int) -> HFData:
    return HFData(
        lambda i: {
            "input_ids": HF_TOKENS[i],
            "attention_mask": HF_MASK[i],
            "labels": HF_TOKENS[i, :decoder_len],
        }
    )


def test_t5_relative_attention_bias_is_a_named_error() -> None:
    # relative_attention_bias embeds a [query, key] bucket matrix with no batch dimension
    with pytest.raises(NormHooksError, match=r"relative_attention_bias.*exclude"):
        fit(_t5(4), _t5_data(4), collate_fn=_hf_collate)


def test_t5_relative_attention_bias_with_sequence_as_long_as_the_batch_fails_the_self_check() -> (
    None
):
    # The bucket matrix's first dimension equals the batch size (6): only the self-check sees it.
    with pytest.raises(SelfCheckError, match="batch size 6"):
        fit(_t5(6), _t5_data(6), collate_fn=_hf_collate)


# ---------------------------------------------------------------- ids from the sampler (issue 12)
def _unwrapped_fit(module: pl.LightningModule, loader: DataLoader[Any], **kwargs: Any) -> Any:
    monitor = PerInstancePrivacyMonitor(noise_multiplier=1.0)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[monitor], **kwargs,
    )  # fmt: skip
    trainer.fit(module, loader)
    return monitor.ledger


@pytest.mark.parametrize("workers", [0, 2])
def test_unchanged_boring_model_on_a_shuffled_split_norms_land_on_the_right_ids(
    workers: int,
) -> None:
    # No IndexedDataset, BoringModel unchanged: each example's ledger norm is its own.
    from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset

    full = RandomDataset(32, 40)
    train, _ = random_split(full, [24, 16], generator=torch.Generator().manual_seed(3))
    torch.manual_seed(5)
    module = BoringModel()
    start = copy.deepcopy(module.state_dict())
    loader = DataLoader(train, batch_size=6, shuffle=True, num_workers=workers)
    ledger = _unwrapped_fit(module, loader, max_steps=1)
    seen = torch.nonzero(ledger.counts > 0).flatten()
    assert seen.numel() == 6

    def loss(m: nn.Module, i: int) -> Tensor:
        out = m.layer(train[i][None].double())
        return F.mse_loss(out, torch.ones_like(out))

    ref = reference_norms(module, start, seen, loss)
    torch.testing.assert_close(ledger.last_norm[seen].double(), ref, rtol=1e-4, atol=0)


def test_hf_dict_batches_without_indexed_dataset_land_on_the_right_ids() -> None:
    model, item = _hf_model("distilbert", None)
    module = HF(model)
    start = copy.deepcopy(module.state_dict())
    loader = DataLoader(HFData(item), batch_size=6, shuffle=True, collate_fn=_hf_collate)
    ledger = _unwrapped_fit(module, loader, max_steps=1)
    seen = torch.nonzero(ledger.counts > 0).flatten()
    assert seen.numel() == 6

    def loss(m: nn.Module, i: int) -> Tensor:
        return m.own_loss({k: v[None] for k, v in item(i).items()})

    ref = reference_norms(module, start, seen, loss)
    torch.testing.assert_close(ledger.last_norm[seen].double(), ref, rtol=1e-4, atol=0)
