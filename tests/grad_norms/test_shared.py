"""Shared layers (called several times in one forward), tied weights, gradient checkpointing
and the checks on passes in the "fused" engine, against the float64 batch-of-one loop."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lightning_unlearn.errors import NormHooksError
from lightning_unlearn.grad_norms import attach_norm_hooks
from tests.grad_norms._reference import assert_exact

B = 5


class Twice(nn.Module):
    """One Linear (2-d inputs) and one sequence Linear and a GroupNorm, each applied twice."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.seq = nn.Linear(4, 4)
        self.norm = nn.GroupNorm(2, 4)
        self.conv = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.lin(torch.tanh(self.lin(x)))
        s = self.seq(torch.tanh(self.seq(h.unsqueeze(1).expand(-1, 3, -1))))  # [B, 3, 4]
        c = s.transpose(1, 2)
        c = self.norm(self.conv(torch.tanh(self.norm(self.conv(c)))))
        return torch.tanh(c).sum((1, 2))


class Tied(nn.Module):
    """An embedding whose weight is also the output projection (as GPT-2's wte / lm_head)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.mix = nn.Linear(6, 6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(torch.tanh(self.mix(self.embed(tokens))))


def test_layers_called_twice_are_exact() -> None:
    torch.manual_seed(0)
    net = Twice().double()
    x = torch.randn(B, 4, dtype=torch.float64)
    assert_exact(net, lambda: net(x).pow(2).mean(), lambda i: net(x[i : i + 1]).pow(2).sum(), B)


def test_tied_weights_are_exact() -> None:
    torch.manual_seed(0)
    net = Tied().double()
    tokens = torch.randint(0, 10, (B, 7), generator=torch.Generator().manual_seed(1))

    def loss(i: slice) -> Tensor:
        logits = net(tokens[i])
        return nn.functional.cross_entropy(logits.reshape(-1, 10), tokens[i].reshape(-1))

    assert_exact(net, lambda: loss(slice(None)), lambda i: loss(slice(i, i + 1)), B)


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8))
        self.conv = nn.Sequential(nn.Conv1d(1, 2, 3), nn.GroupNorm(1, 2))
        self.head = nn.Linear(12, 1)
        self.reentrant = reentrant
        self.enabled = True

    def _run(self, f: nn.Module, x: Tensor) -> Tensor:
        return checkpoint(f, x, use_reentrant=self.reentrant) if self.enabled else f(x)

    def forward(self, x: Tensor) -> Tensor:
        h = self._run(self.block, x)
        c = self._run(self.conv, h.unsqueeze(1))
        return self.head(torch.tanh(c).flatten(1)).squeeze(1)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_gradient_checkpointing_is_exact(reentrant: bool) -> None:
    torch.manual_seed(0)
    net = Checkpointed(reentrant).double()
    x = torch.randn(B, 4, dtype=torch.float64, requires_grad=reentrant)

    def example(i: int) -> Tensor:
        # the reference runs without checkpointing: reentrant checkpointing does not support
        # torch.autograd.grad, and the values are the same
        net.enabled = False
        try:
            return net(x[i : i + 1]).pow(2).sum()
        finally:
            net.enabled = True

    assert_exact(net, lambda: net(x).pow(2).mean(), example, B)


class CheckpointedTwice(nn.Module):
    """One layer called twice inside a single checkpointed segment."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)
        self.reentrant = reentrant
        self.enabled = True

    def segment(self, x: Tensor) -> Tensor:
        return self.a(torch.tanh(self.a(x)))

    def forward(self, x: Tensor) -> Tensor:
        h = (
            checkpoint(self.segment, x, use_reentrant=self.reentrant)
            if self.enabled
            else self.segment(x)
        )
        return self.head(h).squeeze(1)


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_layer_called_twice_inside_a_checkpointed_segment_is_exact(reentrant: bool) -> None:
    torch.manual_seed(0)
    net = CheckpointedTwice(reentrant).double()
    x = torch.randn(B, 4, dtype=torch.float64, requires_grad=reentrant)

    def example(i: int) -> Tensor:
        net.enabled = False  # as above: the reference runs the same function unchecked
        try:
            return net(x[i : i + 1]).pow(2).sum()
        finally:
            net.enabled = True

    assert_exact(net, lambda: net(x).pow(2).mean(), example, B)


def test_forward_after_an_unread_backward_is_refused_naming_the_layer() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    x = torch.randn(B, 4)
    with attach_norm_hooks(net) as hooks:
        net(x).sum().backward()
        with pytest.raises(NormHooksError, match=r"'0' \(Linear\) ran a forward pass after"):
            net(x)
        hooks.clear()
        net(x).sum().backward()
        hooks.per_sample_norms()


def test_broadcast_embedding_input_is_expanded_to_the_batch() -> None:
    """HF-style position embedding: indices [1, T] broadcast-added to [B, T, d]."""

    class Positional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(10, 6)
            self.pos = nn.Embedding(7, 6)
            self.head = nn.Linear(6, 1)

        def forward(self, tokens: Tensor) -> Tensor:
            positions = torch.arange(tokens.shape[1]).unsqueeze(0)  # [1, T]
            return self.head(torch.tanh(self.tok(tokens) + self.pos(positions))).sum((1, 2))

    torch.manual_seed(0)
    net = Positional().double()
    tokens = torch.randint(0, 10, (B, 7), generator=torch.Generator().manual_seed(1))
    assert_exact(
        net,
        lambda: net(tokens).pow(2).mean(),
        lambda i: net(tokens[i : i + 1]).pow(2).sum(),
        B,
    )
