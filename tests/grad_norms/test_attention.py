"""nn.MultiheadAttention (one unit with its out_proj) and the nn.Transformer* layers with
causal and key-padding masks in the "fused" engine, against the float64 batch-of-one loop."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_unlearn.errors import UnsupportedLayerError
from lightning_unlearn.grad_norms import attach_norm_hooks
from tests.grad_norms._reference import assert_exact

B, T, E = 4, 5, 8
# The engine recomputes attention with its own (equal) formula, so p.grad's addends round
# differently from torch's: allowed 1e-12 of the gradient's scale (about 4500 float64 units).
SLACK = 1e-12


def _causal(t: int) -> Tensor:
    return nn.Transformer.generate_square_subsequent_mask(t, dtype=torch.float64)


def _pad() -> Tensor:
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[1, -2:] = True
    pad[3, -1:] = True
    return pad


class Attn(nn.Module):
    def __init__(self, batch_first: bool, kdim: int | None = None) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(E, 2, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.batch_first = batch_first

    def forward(self, x: Tensor, kv: Tensor, **kw: Any) -> Tensor:
        if not self.batch_first:
            x, kv = x.transpose(0, 1), kv.transpose(0, 1)
        out, _ = self.attn(x, kv, kv, **kw)
        return out if self.batch_first else out.transpose(0, 1)


@pytest.mark.parametrize(
    "case",
    ["self", "seq-first", "cross-kdim", "causal", "causal-bool-pad", "weights-per-head"],
)
def test_multihead_attention_is_exact(case: str) -> None:
    torch.manual_seed(0)
    net = Attn(case != "seq-first", kdim=6 if case == "cross-kdim" else None).double()
    x = torch.randn(B, T, E, dtype=torch.float64)
    kv = torch.randn(B, T, 6, dtype=torch.float64) if case == "cross-kdim" else x
    kw: dict[str, Any] = {}
    if case.startswith("causal"):
        kw = {"attn_mask": _causal(T), "is_causal": True, "need_weights": False}
    if case == "causal-bool-pad":
        kw = {"attn_mask": _causal(T) != 0, "key_padding_mask": _pad(), "need_weights": False}
    if case == "weights-per-head":
        kw = {"key_padding_mask": _pad().double() * -1e9, "average_attn_weights": False}

    def call(i: slice) -> Tensor:
        extra = dict(kw)
        if "key_padding_mask" in extra:
            extra["key_padding_mask"] = extra["key_padding_mask"][i]
        return net(x[i], kv[i], **extra)

    norms = assert_exact(
        net,
        lambda: call(slice(None)).pow(2).sum() / B,
        lambda i: call(slice(i, i + 1)).pow(2).sum(),
        B,
        grad_slack=SLACK,
    )
    assert norms.min() > 0


def test_out_proj_is_part_of_the_norm() -> None:
    """out_proj's forward is never called by nn.MultiheadAttention: its gradient must count."""
    torch.manual_seed(0)
    net = Attn(True).double()
    net.attn.in_proj_weight.requires_grad_(False)
    net.attn.in_proj_bias.requires_grad_(False)
    x = torch.randn(B, T, E, dtype=torch.float64)
    norms = assert_exact(
        net,
        lambda: net(x, x).pow(2).sum() / B,
        lambda i: net(x[i : i + 1], x[i : i + 1]).pow(2).sum(),
        B,
        grad_slack=SLACK,
    )
    assert norms.min() > 0


@pytest.mark.parametrize("layer", ["encoder", "decoder"])
def test_transformer_layers_with_masks_are_exact(layer: str) -> None:
    torch.manual_seed(0)
    cls = nn.TransformerEncoderLayer if layer == "encoder" else nn.TransformerDecoderLayer
    net = cls(E, 2, dim_feedforward=12, dropout=0.0, batch_first=True).double()
    x = torch.randn(B, T, E, dtype=torch.float64)
    mem = torch.randn(B, T, E, dtype=torch.float64)
    pad = _pad()

    def call(i: slice) -> Tensor:
        if layer == "encoder":
            return net(x[i], src_mask=_causal(T) != 0, src_key_padding_mask=pad[i], is_causal=True)
        return net(
            x[i], mem[i], tgt_mask=_causal(T), tgt_is_causal=True, memory_key_padding_mask=pad[i]
        )

    assert_exact(
        net,
        lambda: call(slice(None)).pow(2).sum() / B,
        lambda i: call(slice(i, i + 1)).pow(2).sum(),
        B,
        grad_slack=SLACK,
    )


def test_lightning_demo_transformer_is_exact() -> None:
    """Lightning's demo: nn.Transformer, causal target mask, one embedding applied to source
    and target (a shared layer: per-example gradients summed over both calls)."""
    from lightning.pytorch.demos import Transformer

    torch.manual_seed(0)
    vocab = 11
    model = Transformer(vocab_size=vocab, ninp=8, nhead=2, nhid=12, nlayers=1, dropout=0.0)
    model = model.double()
    x, y = torch.randint(0, vocab, (B, T)), torch.randint(0, vocab, (B, T))

    def loss(i: slice) -> Tensor:
        out = model(x[i], y[i])
        return nn.functional.nll_loss(out, y[i].reshape(-1))  # token mean, equal lengths

    assert_exact(
        model, lambda: loss(slice(None)), lambda i: loss(slice(i, i + 1)), B, grad_slack=SLACK
    )


def test_unsupported_attention_options_are_named() -> None:
    net = nn.MultiheadAttention(E, 2, add_bias_kv=True)
    with pytest.raises(UnsupportedLayerError, match=r"'<root>'.*add_bias_kv"):
        attach_norm_hooks(net)
