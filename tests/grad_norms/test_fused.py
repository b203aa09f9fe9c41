"""The "fused" norm engine against a loop of batch-size-1 backward passes (independent reference).

Every per-layer rule of :mod:`lightning_unlearn.grad_norms.fused` (fused convolutions on both the
unfold and the example-grouped path, fused sequence ``nn.Linear``, tensor hooks for 2-d Linear
and GroupNorm, Opacus samplers for the rest) is checked in float64 against the gradient of each
example's own loss, together with ``p.grad`` and the input gradient, which the fused backward
replaces.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from lightning_unlearn.errors import NormHooksError, UnsupportedLayerError
from lightning_unlearn.grad_norms import attach_norm_hooks
from lightning_unlearn.grad_norms.fused import conv_unfold_preferred
from tests.grad_norms._models import build_net, digits_inputs, loop_sq_norms

B = 5
RTOL = 1e-5
FUSED_CONV = "_FusedConvBackward"
FUSED_LINEAR = "_FusedLinearBackward"


# ---------------------------------------------------------------------------- helpers
def _projection(net: nn.Module, x: Tensor) -> Tensor:
    """A fixed random weighting of one example's output (seeded, in the output's dtype)."""
    with torch.no_grad():
        out = net(x[:1])
    gen = torch.Generator().manual_seed(1)
    return torch.randn(out.shape[1:], generator=gen, dtype=torch.float64).to(out.dtype)


def _example_losses(out: Tensor, proj: Tensor) -> Tensor:
    """Each example's own loss: a nonlinear, nontrivial function of its output only."""
    return (torch.tanh(out) * proj).flatten(1).sum(1)


def _loop_reference(net: nn.Module, x: Tensor, proj: Tensor) -> Tensor:
    """Squared norm of the gradient of each example's own loss: one backward pass per example."""
    params = [p for p in net.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        loss = _example_losses(net(x[i : i + 1]), proj).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)  # unused: zero
        rows.append(sum(g.double().pow(2).sum() for g in grads if g is not None))
    return torch.stack(rows)  # type: ignore[arg-type]


def _batch_loss(out: Tensor, proj: Tensor, reduction: str) -> Tensor:
    losses = _example_losses(out, proj)
    return losses.mean() if reduction == "mean" else losses.sum()


def _grads(net: nn.Module, x: Tensor, proj: Tensor, reduction: str) -> list[Tensor | None]:
    """``p.grad`` of every parameter and the input gradient after one ordinary backward pass."""
    net.zero_grad()
    xi = x.detach().clone().requires_grad_(x.is_floating_point())
    _batch_loss(net(xi), proj, reduction).backward()
    return [p.grad.clone() if p.grad is not None else None for p in net.parameters()] + [xi.grad]


def _assert_same_grads(got: list[Tensor | None], expected: list[Tensor | None]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert (g is None) == (e is None)
        if g is not None and e is not None:
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def _record_backward_nodes(layer: nn.Module) -> list[str]:
    """Names of the backward nodes of ``layer``'s outputs as the next layer sees them (a hook
    registered after the engine's sees the output the engine's hook returned)."""
    seen: list[str] = []

    def hook(module: nn.Module, inputs: tuple[object, ...], out: Tensor) -> None:
        seen.append(type(out.grad_fn).__name__)

    layer.register_forward_hook(hook)
    return seen


# ---------------------------------------------------------------------------- configurations
Factory = Callable[[], nn.Module]


def _image(c: int, *spatial: int) -> Callable[[torch.Generator], Tensor]:
    return lambda gen: torch.randn(B, c, *spatial, generator=gen, dtype=torch.float64)


def _tokens(gen: torch.Generator) -> Tensor:
    ids = torch.randint(0, 10, (B, 7), generator=gen)
    ids[:, ::3] = 0  # padding_idx: this row never receives a gradient
    return ids


def _group_norm_inplace_relu() -> nn.Module:
    return nn.Sequential(nn.GroupNorm(2, 4), nn.ReLU(inplace=True))


def _frozen(layer: nn.Module, name: str) -> nn.Module:
    getattr(layer, name).requires_grad_(False)
    return layer


def _channels_last(c: int) -> Callable[[torch.Generator], Tensor]:
    return lambda gen: _image(c, 9, 8)(gen).to(memory_format=torch.channels_last)


def _transposed(c: int) -> Callable[[torch.Generator], Tensor]:
    return lambda gen: _image(c, 8, 9)(gen).transpose(2, 3)


class Bag(nn.Module):
    """``nn.EmbeddingBag`` over fixed-length bags given as a ``[B, L]`` input (the engine's
    per-example re-run; Opacus' rule, which drops repeated ids in a bag, is not used)."""

    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(10, 4, mode="mean")

    def forward(self, ids: Tensor) -> Tensor:
        out: Tensor = self.bag(ids)
        return out


def _bags(gen: torch.Generator) -> Tensor:
    # repeated ids within a bag: what Opacus' EmbeddingBag sampler gets wrong
    return torch.randint(0, 10, (B, 4), generator=gen)


# (id, factory, input, expected path): "unfold" / "grouped" are the fused convolution's two
# ways of forming per-example weight gradients, "linear" the fused sequence Linear, "hook" any
# rule that leaves the layer's own backward alone (tensor hooks and samplers).
CASES: list[tuple[str, Factory, Callable[[torch.Generator], Tensor], str]] = [
    ("conv2d-unfold", lambda: nn.Conv2d(1, 4, 3), _image(1, 9, 8), "unfold"),
    ("conv2d-grouped", lambda: nn.Conv2d(8, 4, 3), _image(8, 9, 8), "grouped"),
    ("conv2d-stride2-unfold", lambda: nn.Conv2d(2, 4, 3, 2, 1), _image(2, 9, 8), "unfold"),
    ("conv2d-stride2-grouped", lambda: nn.Conv2d(8, 4, 3, 2, 1), _image(8, 9, 8), "grouped"),
    (
        "conv2d-dilation2-unfold",
        lambda: nn.Conv2d(3, 4, 3, padding=2, dilation=2),
        _image(3, 9, 8),
        "unfold",
    ),
    (
        "conv2d-dilation2-grouped",
        lambda: nn.Conv2d(6, 4, (3, 2), padding=(2, 1), dilation=2),
        _image(6, 9, 8),
        "grouped",
    ),
    (
        "conv2d-rect-stride-dilation-unfold",
        lambda: nn.Conv2d(2, 3, (3, 2), stride=(2, 1), dilation=(1, 2), padding=(1, 0)),
        _image(2, 9, 8),
        "unfold",
    ),
    ("conv2d-groups2", lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2), _image(4, 9, 8), "grouped"),
    ("conv2d-nobias-unfold", lambda: nn.Conv2d(1, 4, 3, bias=False), _image(1, 9, 8), "unfold"),
    ("conv2d-nobias-grouped", lambda: nn.Conv2d(8, 4, 3, bias=False), _image(8, 9, 8), "grouped"),
    ("conv2d-valid", lambda: nn.Conv2d(3, 4, 3, padding="valid"), _image(3, 9, 8), "unfold"),
    ("conv2d-same-unfold", lambda: nn.Conv2d(1, 4, 5, padding="same"), _image(1, 9, 8), "unfold"),
    (
        "conv2d-same-dilated-grouped",
        lambda: nn.Conv2d(8, 4, 3, padding="same", dilation=2),
        _image(8, 9, 8),
        "grouped",
    ),
    (
        "conv2d-reflect",
        lambda: nn.Conv2d(2, 4, 3, padding=1, padding_mode="reflect"),
        _image(2, 9, 8),
        "hook",
    ),
    ("conv2d-same-even", lambda: nn.Conv2d(2, 3, 4, padding="same"), _image(2, 9, 8), "hook"),
    (
        "conv2d-same-even-kernel-dilation2",  # total padding 2 * 3: symmetric, fused
        lambda: nn.Conv2d(8, 4, 4, padding="same", dilation=2),
        _image(8, 9, 8),
        "grouped",
    ),
    ("conv2d-channels-last-unfold", lambda: nn.Conv2d(2, 4, 3, 1, 1), _channels_last(2), "unfold"),
    ("conv2d-channels-last-grouped", lambda: nn.Conv2d(8, 4, 3), _channels_last(8), "grouped"),
    ("conv2d-transposed-unfold", lambda: nn.Conv2d(2, 4, 3, 2), _transposed(2), "unfold"),
    (
        "conv2d-frozen-weight-unfold",
        lambda: _frozen(nn.Conv2d(1, 4, 3), "weight"),
        _image(1, 9, 8),
        "unfold",
    ),
    (
        "conv2d-frozen-weight-grouped",
        lambda: _frozen(nn.Conv2d(8, 4, 3), "weight"),
        _image(8, 9, 8),
        "grouped",
    ),
    ("conv2d-frozen-bias", lambda: _frozen(nn.Conv2d(8, 4, 3), "bias"), _image(8, 9, 8), "grouped"),
    ("conv1d", lambda: nn.Conv1d(3, 5, 3, stride=2, padding=1), _image(3, 11), "grouped"),
    (
        "conv1d-same-groups",
        lambda: nn.Conv1d(4, 4, 5, padding="same", dilation=2, groups=2),
        _image(4, 11),
        "grouped",
    ),
    ("conv3d", lambda: nn.Conv3d(2, 3, 3, padding=1), _image(2, 4, 5, 4), "grouped"),
    (
        "conv3d-strided-nobias",
        lambda: nn.Conv3d(2, 4, (2, 3, 3), stride=(1, 2, 2), bias=False),
        _image(2, 4, 5, 4),
        "grouped",
    ),
    # 6 positions * (4 + 3) >= 4 * 3: instantiation is no dearer than the Gram form: fused
    ("linear-seq-fused", lambda: nn.Linear(4, 3), _image(6, 4), "linear"),
    ("linear-seq4d-fused", lambda: nn.Linear(4, 3), _image(2, 3, 4), "linear"),
    ("linear-seq-nobias-fused", lambda: nn.Linear(4, 3, bias=False), _image(6, 4), "linear"),
    (
        "linear-seq-frozen-bias-fused",
        lambda: _frozen(nn.Linear(4, 3), "bias"),
        _image(6, 4),
        "linear",
    ),
    # 2 positions * (16 + 16) < 16 * 16: the Gram sampler
    ("linear-seq-gram", lambda: nn.Linear(16, 16), _image(2, 16), "hook"),
    ("linear-2d", lambda: nn.Linear(6, 3), _image(6), "hook"),
    ("linear-2d-nobias", lambda: nn.Linear(6, 3, bias=False), _image(6), "hook"),
    ("linear-2d-frozen-weight", lambda: _frozen(nn.Linear(4, 3), "weight"), _image(4), "hook"),
    ("linear-seq-frozen-weight", lambda: _frozen(nn.Linear(4, 3), "weight"), _image(6, 4), "hook"),
    ("group-norm-inplace-relu", _group_norm_inplace_relu, _image(4, 5, 3), "hook"),
    ("group-norm-frozen-bias", lambda: _frozen(nn.GroupNorm(2, 4), "bias"), _image(4, 5), "hook"),
    (
        "group-norm-frozen-weight",
        lambda: _frozen(nn.GroupNorm(2, 4), "weight"),
        _image(4, 5),
        "hook",
    ),
    ("instance-norm", lambda: nn.InstanceNorm1d(3, affine=True), _image(3, 6), "hook"),
    ("layer-norm", lambda: nn.LayerNorm(4), _image(6, 4), "hook"),
    ("embedding-padding-idx", lambda: nn.Embedding(10, 4, padding_idx=0), _tokens, "hook"),
    ("rms-norm", lambda: nn.RMSNorm(4), _image(6, 4), "hook"),
    ("embedding-bag-re-run", Bag, _bags, "hook"),
    ("prelu-torch-func", lambda: nn.PReLU(3), _image(3, 6), "hook"),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize(
    ("factory", "make_input", "path"),
    [pytest.param(f, i, p, id=n) for n, f, i, p in CASES],
)
def test_layer_norms_and_gradients_match_batch_size_one_loop(
    factory: Factory, make_input: Callable[[torch.Generator], Tensor], path: str
) -> None:
    torch.manual_seed(0)
    net = factory().double()
    x = make_input(torch.Generator().manual_seed(0))
    proj = _projection(net, x)
    reference = _loop_reference(net, x, proj)
    plain = _grads(net, x, proj, "sum")
    layer = net[0] if isinstance(net, nn.Sequential) else net.bag if isinstance(net, Bag) else net
    if path in ("unfold", "grouped"):
        assert conv_unfold_preferred(layer) == (path == "unfold")  # type: ignore[arg-type]

    with attach_norm_hooks(net, "fused", loss_reduction="sum") as hooks:
        nodes = _record_backward_nodes(layer)
        got = _grads(net, x, proj, "sum")
        norms = hooks.per_sample_norms()
        hooks.clear()

    expected_node = {"unfold": FUSED_CONV, "grouped": FUSED_CONV, "linear": FUSED_LINEAR}
    if path in expected_node:
        assert nodes == [expected_node[path]]
    else:
        assert nodes
        assert nodes[0] not in (FUSED_CONV, FUSED_LINEAR)
    assert norms.shape == (B,)
    assert norms.dtype == torch.float64
    torch.testing.assert_close(norms.pow(2), reference, rtol=RTOL, atol=0)
    _assert_same_grads(got, plain)


# ---------------------------------------------------------------------------- whole models
class SeqNet(nn.Module):
    """Sequence model: fused Linear on [B, T, d], LayerNorm, a Gram-form Linear, 2-d head."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 8)  # 6 * (5 + 8) >= 5 * 8: fused
        self.norm = nn.LayerNorm(8)
        self.mix = nn.Linear(8, 8)  # 6 * 16 >= 64: fused
        self.wide = nn.Linear(8, 32)  # 6 * 40 < 256: Gram sampler
        self.head = nn.Linear(32, 3)  # 2-d input: tensor hook

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.mix(self.norm(self.inp(x))))
        return self.head(torch.tanh(self.wide(h)).mean(1))


def _cnn() -> nn.Module:
    """Unfold-path conv, GroupNorm + in-place ReLU, grouped-path conv, 2-d Linear."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 8, 3, stride=2),
        nn.GroupNorm(4, 8),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, 10),
    )


def _seq() -> nn.Module:
    torch.manual_seed(0)
    return SeqNet()


def _seq_input(dtype: torch.dtype = torch.float64) -> Tensor:
    return torch.randn(B, 6, 5, generator=torch.Generator().manual_seed(2), dtype=dtype)


MODELS = [
    pytest.param(_cnn, lambda: digits_inputs("cnn", B)[0].double(), id="cnn"),
    pytest.param(_seq, _seq_input, id="seq"),
]


@pytest.mark.parametrize(("factory", "make_input"), MODELS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_models_norms_and_gradients(
    factory: Callable[[], nn.Module], make_input: Callable[[], Tensor], reduction: str
) -> None:
    """Norms equal the loop for either loss reduction; ``p.grad`` and the input gradient equal
    those of the same module without hooks (the fused backward replaces the layers' own)."""
    net = factory().double()
    x = make_input()
    proj = _projection(net, x)
    reference = _loop_reference(net, x, proj)
    plain = _grads(net, x, proj, reduction)
    assert plain[-1] is not None  # the input gradient is compared too
    with attach_norm_hooks(net, "fused", loss_reduction=reduction) as hooks:  # type: ignore[arg-type]
        got = _grads(net, x, proj, reduction)
        norms = hooks.per_sample_norms()
        hooks.clear()
    torch.testing.assert_close(norms.pow(2), reference, rtol=RTOL, atol=0)
    _assert_same_grads(got, plain)


def test_mismatched_reduction_is_batch_size_times_off() -> None:
    """A mean-reduced loss read as "sum" gives norms B times too small: the argument matters."""
    net = _cnn().double()
    x, y = digits_inputs("cnn", B)
    x = x.double()
    reference = loop_sq_norms(net, x, y).sqrt()
    with attach_norm_hooks(net, "fused", loss_reduction="sum") as hooks:
        nn.functional.cross_entropy(net(x), y).backward()
        torch.testing.assert_close(hooks.per_sample_norms(), reference / B, rtol=RTOL, atol=0)


def test_bf16_autocast_close_to_float32_reference() -> None:
    net = _cnn()
    x, y = digits_inputs("cnn", 8)
    reference = loop_sq_norms(net, x, y).sqrt()
    with attach_norm_hooks(net, "fused") as hooks:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(x)
        assert out.dtype == torch.bfloat16  # autocast did take effect
        nn.functional.cross_entropy(out.float(), y).backward()
        norms = hooks.per_sample_norms()
        hooks.clear()
    assert norms.dtype == torch.float32
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())
    torch.testing.assert_close(norms.double(), reference, rtol=0.02, atol=0)


# ---------------------------------------------------------------------------- steps and state
def test_eval_and_no_grad_forwards_leave_nothing() -> None:
    net = _cnn().double()
    x, y = digits_inputs("cnn", B)
    x = x.double()
    reference = loop_sq_norms(net, x, y)
    with attach_norm_hooks(net, "fused") as hooks:
        net.eval()
        nn.functional.cross_entropy(net(x), y).backward()  # eval forward, gradients still flow
        assert all(p.grad is not None for p in net.parameters())
        with pytest.raises(NormHooksError, match="training mode"):
            hooks.per_sample_norms()
        net.train()
        with torch.no_grad():
            assert not net(x).requires_grad
        with pytest.raises(NormHooksError, match="training mode"):
            hooks.per_sample_norms()
        # Neither forward counted as a call: a training step right after works and is exact.
        net.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        torch.testing.assert_close(hooks.per_sample_norms().pow(2), reference, rtol=RTOL, atol=0)


def _live_tensors() -> int:
    gc.collect()
    # type(), not isinstance: the latter reads `__class__` of deprecated lazy torch objects
    return sum(1 for o in gc.get_objects() if issubclass(type(o), Tensor))


def test_training_steps_do_not_leak_tensors() -> None:
    """Saved GroupNorm statistics pointing back at their autograd node once kept every step's
    graph alive (a cycle through C++ that Python's gc cannot break)."""
    net = _cnn()
    x, y = digits_inputs("cnn", 16)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    counts = {}
    with attach_norm_hooks(net, "fused") as hooks:
        for step in range(1, 31):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            assert hooks.per_sample_norms().isfinite().all()
            hooks.clear()
            opt.step()
            if step in (5, 30):
                counts[step] = _live_tensors()
    assert counts[30] <= counts[5], counts


def test_unused_parameters_contribute_zero_and_no_stale_norms() -> None:
    """Layers skipped in a step (a fused conv, a fused sequence Linear, a 2-d Linear) add
    nothing, and nothing of the previous step leaks into the next."""

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 2, 3)  # always used
            self.b = nn.Conv2d(1, 2, 3)
            self.seq = nn.Linear(6, 4)
            self.flat = nn.Linear(6, 4)

        def forward(self, x: Tensor, use: bool) -> Tensor:
            h = self.a(x)
            if use:
                h = h + self.b(x)
            h = torch.tanh(h).flatten(2)  # [B, 2, 6 * 6]
            if use:
                h = torch.cat([h, self.seq(h[..., :6])], 2)
                h = torch.cat([h, self.flat(h[:, 0, :6]).unsqueeze(1).expand(-1, 2, -1)], 2)
            return h.sum(2)

    torch.manual_seed(0)
    net = Branchy().double()
    x = torch.randn(B, 1, 8, 8, dtype=torch.float64)
    proj = torch.randn(2, dtype=torch.float64)

    def reference(use: bool) -> Tensor:
        return _loop_reference(_Bound(net, use), x, proj)

    with attach_norm_hooks(net, "fused", loss_reduction="sum") as hooks:
        norms = []
        for use in (True, False, True):
            net.zero_grad()
            _example_losses(net(x, use), proj).sum().backward()
            norms.append(hooks.per_sample_norms())
            hooks.clear()
            assert (net.b.weight.grad is not None) == use
    ref_all, ref_a = reference(True), reference(False)
    assert (ref_all > ref_a * 1.01).all()  # the skipped layers do matter
    torch.testing.assert_close(norms[0].pow(2), ref_all, rtol=RTOL, atol=0)
    torch.testing.assert_close(norms[1].pow(2), ref_a, rtol=RTOL, atol=0)
    torch.testing.assert_close(norms[2], norms[0], rtol=1e-12, atol=0)


class _Bound(nn.Module):
    """``net`` with its ``use`` argument fixed (the loop reference calls ``net(x)``)."""

    def __init__(self, net: nn.Module, use: bool) -> None:
        super().__init__()
        self.net, self.use = net, use

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x, self.use)
        return out


# ---------------------------------------------------------------------------- other layers
class Gated(nn.Module):
    """A layer type with no norm rule and no buffers: its own parameter goes through Opacus'
    torch.func fall-back, its child Linear through the engine's own rule (counted once)."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.randn(dim))
        self.lin = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x) * torch.sigmoid(self.gate) + self.gate


class WithBuffer(nn.Module):
    """Own parameter, and a buffer held by a child: neither a rule nor the fall-back applies."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))
        self.stats = nn.Module()
        self.stats.register_buffer("count", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def test_custom_layer_without_buffers_uses_the_torch_func_fallback() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), Gated()).double()
    x = torch.randn(B, 3, dtype=torch.float64)
    proj = _projection(net, x)
    reference = _loop_reference(net, x, proj)
    plain = _grads(net, x, proj, "mean")
    with attach_norm_hooks(net, "fused") as hooks:
        got = _grads(net, x, proj, "mean")
        norms = hooks.per_sample_norms()
    torch.testing.assert_close(norms.pow(2), reference, rtol=RTOL, atol=0)
    _assert_same_grads(got, plain)
    assert "ft_compute_sample_grad" not in vars(net[2])  # detach removes Opacus' attribute


# ---------------------------------------------------------------------------- errors
def test_failed_attach_leaves_the_module_as_before() -> None:
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    net = nn.Sequential(Gated(), a, b, WithBuffer())
    with pytest.raises((NormHooksError, UnsupportedLayerError)):
        attach_norm_hooks(net, "fused")
    assert "ft_compute_sample_grad" not in vars(net[0])


def test_layer_with_buffers_and_no_rule_is_refused_naming_it() -> None:
    net = nn.Sequential(nn.Linear(4, 4), WithBuffer())
    with pytest.raises(UnsupportedLayerError, match=r"'1' \(WithBuffer\).*register_norm_sampler"):
        attach_norm_hooks(net, "fused")
    assert all(not m._forward_hooks for m in net.modules())
    net[1].scale.requires_grad_(False)  # the fix the message names
    attach_norm_hooks(net, "fused").detach()


def _batchnorm_reference(net: nn.Sequential, x: Tensor, y: Tensor) -> Tensor:
    """Squared per-example norms over the Linear layers of Linear -> BatchNorm1d -> Linear,
    from per-example copies of their parameters in a functional forward pass (the batch
    statistics still mix the examples, as in the hooked pass)."""
    lin0, bn, lin2 = net[0], net[1], net[2]
    assert isinstance(lin0, nn.Linear)
    assert isinstance(bn, nn.BatchNorm1d)
    assert isinstance(lin2, nn.Linear)
    copies = [
        p.detach().unsqueeze(0).repeat(x.shape[0], *([1] * p.dim())).requires_grad_()
        for p in (lin0.weight, lin0.bias, lin2.weight, lin2.bias)
    ]
    w0, b0, w2, b2 = copies
    h = torch.einsum("bi,boi->bo", x, w0) + b0
    h = nn.functional.batch_norm(h, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    out = torch.einsum("bi,boi->bo", h, w2) + b2
    grads = torch.autograd.grad(nn.functional.cross_entropy(out, y, reduction="sum"), copies)
    return sum(g.flatten(1).pow(2).sum(1) for g in grads)  # type: ignore[return-value]


def test_batchnorm_rejected_and_exclude_unsupported_matches_reference() -> None:
    net = build_net("batchnorm").double()
    assert isinstance(net, nn.Sequential)
    with pytest.raises(UnsupportedLayerError, match=r"'1' \(BatchNorm1d\).*exclude_unsupported"):
        attach_norm_hooks(net, "fused")
    x, y = digits_inputs("mlp", 8)
    x = x.double()
    reference = _batchnorm_reference(net, x, y)
    with attach_norm_hooks(net, "fused", exclude_unsupported=True) as hooks:
        assert hooks.excluded_parameter_names == ["1.weight", "1.bias"]
        assert all(p.requires_grad for p in net.parameters())  # only left out of the norm
        nn.functional.cross_entropy(net(x), y).backward()
        norms = hooks.per_sample_norms()
    assert net[1].weight.grad is not None  # BatchNorm still trains
    torch.testing.assert_close(norms.pow(2), reference, rtol=RTOL, atol=0)


# ---------------------------------------------------------------------------- detach
def test_detach_removes_every_hook_and_restores_exact_gradients() -> None:
    net = nn.Sequential(_cnn(), nn.Tanh(), Gated(10))
    twin = copy.deepcopy(net)
    x, y = digits_inputs("cnn", B)
    hooks = attach_norm_hooks(net, "fused")
    assert any(m._forward_hooks for m in net.modules())
    nn.functional.cross_entropy(net(x), y).backward()
    hooks.clear()
    hooks.detach()
    for m in net.modules():
        assert not m._forward_hooks
        assert not m._forward_pre_hooks
        assert not m._backward_hooks
        assert "ft_compute_sample_grad" not in vars(m)
        assert not any(k.startswith("_lightning_unlearn") for k in vars(m))
    for model in (net, twin):
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert p.grad is not None
        assert q.grad is not None
        assert torch.equal(p.grad, q.grad)


# ---------------------------------------------------------------------------- known gaps
def test_torch_func_fallback_follows_the_training_mode_at_call_time() -> None:
    class ModeScaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(4))

        def forward(self, x: Tensor) -> Tensor:
            return x * self.w * (2.0 if self.training else 1.0)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), ModeScaled()).double()
    x = torch.randn(B, 3, dtype=torch.float64)
    proj = _projection(net, x)
    reference = _loop_reference(net, x, proj)
    net.eval()
    with attach_norm_hooks(net, "fused", loss_reduction="sum") as hooks:
        net.train()
        _example_losses(net(x), proj).sum().backward()
        torch.testing.assert_close(hooks.per_sample_norms().pow(2), reference, rtol=RTOL, atol=0)


@pytest.mark.parametrize("first", ["retain_graph", "input_grad"])
def test_second_backward_through_one_forward_is_exact_or_refused(first: str) -> None:
    net = _cnn().double()
    x = digits_inputs("cnn", B)[0].double().requires_grad_()
    proj = _projection(net, x)
    reference = _loop_reference(net, x, proj)
    with attach_norm_hooks(net, "fused", loss_reduction="sum") as hooks:
        loss = _example_losses(net(x), proj).sum()
        if first == "retain_graph":
            loss.backward(retain_graph=True)
            factor = 2.0  # p.grad holds twice the gradient: each example's share is 2 g_i
        else:
            torch.autograd.grad(loss, x, retain_graph=True)
            factor = 1.0  # no parameter gradient was asked for
        loss.backward()
        try:
            norms = hooks.per_sample_norms()
        except NormHooksError:
            return  # refusing is as good as being exact
    torch.testing.assert_close(norms.pow(2), factor**2 * reference, rtol=RTOL, atol=0)
