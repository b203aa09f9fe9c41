"""Recurrent layers and tuple-returning layers in the "fused" engine, against the float64
batch-of-one loop."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_unlearn.errors import UnsupportedLayerError
from lightning_unlearn.grad_norms import attach_norm_hooks
from tests.grad_norms._reference import assert_exact

B, T, D, H = 5, 4, 3, 6


class Recurrent(nn.Module):
    def __init__(self, kind: type[nn.RNNBase], batch_first: bool, **kw: Any) -> None:
        super().__init__()
        self.rnn = kind(D, H, batch_first=batch_first, **kw)
        out = H * (2 if kw.get("bidirectional") else 1)
        self.head = nn.Linear(out, 2)
        self.batch_first = batch_first

    def forward(self, x: Tensor, hx: Any = None) -> Tensor:
        seq, state = self.rnn(x, hx)
        h = state[0] if isinstance(state, tuple) else state
        last = seq[:, -1] if self.batch_first else seq[-1]
        return self.head(last).sum(1) + h.sum((0, 2))


def _case(kind: type[nn.RNNBase], batch_first: bool, with_state: bool, **kw: Any) -> None:
    torch.manual_seed(0)
    net = Recurrent(kind, batch_first, **kw).double()
    x = torch.randn(B, T, D, dtype=torch.float64)
    layers = kw.get("num_layers", 1) * (2 if kw.get("bidirectional") else 1)
    h0 = torch.randn(layers, B, H, dtype=torch.float64) if with_state else None
    hx: Any = (h0, torch.randn_like(h0)) if with_state and kind is nn.LSTM else h0

    def inputs(i: slice) -> tuple[Tensor, Any]:
        xi = x[i] if batch_first else x[i].transpose(0, 1)
        if hx is None:
            return xi, None
        if isinstance(hx, tuple):
            return xi, tuple(t[:, i] for t in hx)
        return xi, hx[:, i]

    assert_exact(
        net,
        lambda: net(*inputs(slice(None))).pow(2).mean(),
        lambda i: net(*inputs(slice(i, i + 1))).pow(2).sum(),
        B,
    )


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN], ids=["lstm", "gru", "rnn"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "seq-first"])
def test_recurrent_layers_are_exact(kind: type[nn.RNNBase], batch_first: bool) -> None:
    _case(kind, batch_first, with_state=False)


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU], ids=["lstm", "gru"])
def test_multilayer_bidirectional_with_initial_state_is_exact(kind: type[nn.RNNBase]) -> None:
    _case(kind, False, with_state=True, num_layers=2, bidirectional=True)
    _case(kind, True, with_state=True, num_layers=2, bidirectional=True)


def test_recurrent_dropout_and_packed_sequences_are_refused_with_the_fix() -> None:
    net = nn.LSTM(D, H, num_layers=2, dropout=0.5)
    x = torch.randn(T, B, D)
    with attach_norm_hooks(net) as hooks:
        with pytest.raises(UnsupportedLayerError, match=r"'<root>' \(LSTM\).*dropout=0"):
            net(x)
        hooks.clear()
        net.dropout = 0.0
        packed = nn.utils.rnn.pack_padded_sequence(x, [T] * B)
        with pytest.raises(UnsupportedLayerError, match=r"PackedSequence.*padded"):
            net(packed)


class TupleLayer(nn.Module):
    """A custom layer returning a tuple, with a keyword input."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(D, H))
        self.b = nn.Parameter(torch.randn(H))

    def forward(self, x: Tensor, *, scale: float = 1.0) -> tuple[Tensor, Tensor]:
        h = torch.tanh(x @ self.w + self.b)
        return h * scale, (h * self.b).sum(1)


class WithTuple(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = TupleLayer()
        self.head = nn.Linear(H, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, extra = self.layer(x, scale=2.0)
        return self.head(h).squeeze(1) + extra


def test_custom_layer_returning_a_tuple_is_exact() -> None:
    torch.manual_seed(0)
    net = WithTuple().double()
    x = torch.randn(B, D, dtype=torch.float64)
    assert_exact(
        net,
        lambda: net(x).pow(2).mean(),
        lambda i: net(x[i : i + 1]).pow(2).sum(),
        B,
    )


def test_lightning_demo_lstm_is_exact_and_its_default_dropout_is_named() -> None:
    from lightning.pytorch.demos import SimpleLSTM

    torch.manual_seed(0)
    model = SimpleLSTM(vocab_size=20, ninp=8, nhid=8, nlayers=2, dropout=0.0).double()
    x, y = torch.randint(0, 20, (B, T)), torch.randint(0, 20, (B, T))

    def loss(i: slice) -> Tensor:
        h = tuple(t.double() for t in model.init_hidden(x[i].shape[0]))
        out, _ = model(x[i], h)
        return nn.functional.nll_loss(out.view(-1, 20), y[i].reshape(-1))  # token mean

    assert_exact(model, lambda: loss(slice(None)), lambda i: loss(slice(i, i + 1)), B)
    dropped = SimpleLSTM(vocab_size=20, ninp=8, nhid=8, nlayers=2)  # the demo's dropout=0.2
    with (
        attach_norm_hooks(dropped),
        pytest.raises(UnsupportedLayerError, match=r"'rnn' \(LSTM\).*dropout=0.2"),
    ):
        dropped(x, dropped.init_hidden(B))


class NotVmappable(nn.Module):
    """An operation torch.func cannot batch (``.item()``): the per-example loop takes over."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(D))

    def forward(self, x: Tensor) -> Tensor:
        rows = [x[i] * self.w * float(x[i].sum().item() > -1e9) for i in range(x.shape[0])]
        return torch.stack(rows)


class Noisy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(D))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.dropout(x * self.w, 0.5)


def test_layer_torch_func_cannot_batch_falls_back_to_an_exact_loop() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(NotVmappable(), nn.Tanh(), nn.Linear(D, 1)).double()
    x = torch.randn(B, D, dtype=torch.float64)
    assert_exact(net, lambda: net(x).pow(2).mean(), lambda i: net(x[i : i + 1]).pow(2).sum(), B)


def test_random_custom_layer_is_named_not_wrong() -> None:
    net = nn.Sequential(Noisy(), nn.Linear(D, 1))
    with (
        attach_norm_hooks(net),
        pytest.raises(UnsupportedLayerError, match=r"'0' \(Noisy\).*deterministic"),
    ):
        net(torch.randn(B, D)).sum().backward()  # raised from the backward pass
