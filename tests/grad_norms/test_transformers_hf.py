"""HF transformers (tiny configs, nothing downloaded) in the "fused" engine: BERT and GPT-2
with their default broadcast position_ids, GPT-2's tied input/output embeddings and gradient
checkpointing, against the float64 batch-of-one loop."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from tests.grad_norms._reference import assert_exact

transformers = pytest.importorskip("transformers")

B, T = 3, 6
SLACK = 1e-12  # attention recomputed by the engine: see tests/grad_norms/test_attention.py


def _bert(attn: str) -> nn.Module:
    cfg = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=100,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=3,
        attn_implementation=attn,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg).double().train()


def _gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(
        n_embd=32,
        n_layer=2,
        n_head=2,
        vocab_size=100,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).double().train()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bert_sequence_classification_is_exact(attn: str) -> None:
    model = _bert(attn)
    ids = torch.randint(0, 100, (B, T), generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 2, 1])

    def loss(i: slice) -> Tensor:
        return model(input_ids=ids[i], labels=labels[i]).loss

    assert_exact(model, lambda: loss(slice(None)), lambda i: loss(slice(i, i + 1)), B)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "checkpointing"])
def test_gpt2_lm_with_tied_embeddings_is_exact(checkpointing: bool) -> None:
    model = _gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    if checkpointing:
        model.gradient_checkpointing_enable()
    ids = torch.randint(0, 100, (B, T), generator=torch.Generator().manual_seed(1))

    def loss(i: slice) -> Tensor:
        return model(input_ids=ids[i], labels=ids[i]).loss  # token mean, equal lengths

    # HF's causal-LM loss casts the logits to float32: the loss's gradient carries float32
    # rounding (u = 6e-8) in the reference and in the hooked pass alike, so both the norms and
    # p.grad are compared to 1e-6 (about 16 float32 units), not to float64 precision.
    assert_exact(
        model,
        lambda: loss(slice(None)),
        lambda i: loss(slice(i, i + 1)),
        B,
        rtol=1e-6,
        grad_slack=1e-6,
    )


@pytest.mark.parametrize("mode", ["hooks", "functorch"])
def test_opacus_modes_name_the_broadcast_position_embedding(mode: str) -> None:
    from lightning_unlearn.errors import NormHooksError
    from lightning_unlearn.grad_norms import attach_norm_hooks

    model = _bert("eager")
    ids = torch.randint(0, 100, (B, T))
    with attach_norm_hooks(model, mode) as hooks:  # type: ignore[arg-type]
        model(input_ids=ids, labels=torch.tensor([0, 1, 2])).loss.backward()
        with pytest.raises(NormHooksError, match=r"position_embeddings.weight \(1\).*mode='fused'"):
            hooks.per_sample_norms()
