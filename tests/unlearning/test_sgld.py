"""SGLD against a hand-written reference update (THEORY §1, SGLD convention)."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_unlearn import SGLD
from lightning_unlearn.errors import InvalidArgumentError


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(4, 3, generator=g)),
        torch.nn.Parameter(torch.randn(5, generator=g)),
    ]


def _grads(params: list[torch.nn.Parameter], scale: float = 1.0) -> None:
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, scale * (i + 1))


def test_step_matches_reference_with_clipping_and_projection() -> None:
    lr, sigma, clip, radius, seed = 0.05, 0.7, 1.5, 2.0, 11
    params = _params()
    start = [p.detach().clone() for p in params]
    _grads(params, scale=2.0)
    grads = [p.grad.clone() for p in params]
    opt = SGLD(params, lr=lr, sigma=sigma, max_grad_norm=clip,
               projection_radius=radius, seed=seed)  # fmt: skip
    opt.step()

    # Reference: a loop over scalars, noise from an identically seeded generator.
    gen = torch.Generator().manual_seed(seed)
    total = math.sqrt(sum(float(v) ** 2 for g in grads for v in g.flatten()))
    factor = min(1.0, clip / total)
    expected = []
    for p0, g in zip(start, grads, strict=True):
        noise = torch.randn(p0.shape, generator=gen)
        expected.append(p0 - lr * factor * g + math.sqrt(2 * lr * sigma**2) * noise)
    norm = math.sqrt(sum(float(v) ** 2 for e in expected for v in e.flatten()))
    expected = [e * min(1.0, radius / norm) for e in expected]
    for p, e in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-6, atol=1e-6)
    assert math.sqrt(sum(float(p.detach().pow(2).sum()) for p in params)) <= radius + 1e-5


def test_noise_scale_is_sqrt_2_lr_sigma() -> None:
    lr, sigma = 0.02, 0.3
    p = torch.nn.Parameter(torch.zeros(200_000))
    opt = SGLD([p], lr=lr, sigma=sigma, seed=0)
    p.grad = torch.zeros_like(p)
    opt.step()
    assert float(p.detach().std()) == pytest.approx(math.sqrt(2 * lr) * sigma, rel=0.01)
    assert abs(float(p.detach().mean())) < 1e-3


def test_same_seed_reproduces_and_state_dict_resumes() -> None:
    def run(steps: int, opt: SGLD, params: list[torch.nn.Parameter]) -> None:
        for _ in range(steps):
            _grads(params, 0.1)
            opt.step()

    a = _params()
    opt_a = SGLD(a, lr=0.1, sigma=1.0, seed=5)
    run(6, opt_a, a)

    b = _params()
    opt_b = SGLD(b, lr=0.1, sigma=1.0, seed=5)
    run(3, opt_b, b)
    state = opt_b.state_dict()
    saved = [p.detach().clone() for p in b]
    c = [torch.nn.Parameter(s) for s in saved]
    opt_c = SGLD(c, lr=0.1, sigma=1.0, seed=999)  # seed restored from the state
    opt_c.load_state_dict(state)
    run(3, opt_c, c)
    for x, y in zip(a, c, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)

    other = _params()
    run(6, SGLD(other, lr=0.1, sigma=1.0, seed=6), other)
    assert not torch.equal(other[0], a[0])


def test_weight_decay_step_matches_reference() -> None:
    lr, sigma, wd, seed = 0.1, 0.2, 0.1, 4
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    p.grad = torch.tensor([0.5, 0.5])
    SGLD([p], lr=lr, sigma=sigma, weight_decay=wd, seed=seed).step()
    noise = torch.randn(2, generator=torch.Generator().manual_seed(seed))
    start = torch.tensor([1.0, -2.0])
    step = lr * (torch.tensor([0.5, 0.5]) + wd * start)
    expected = start - step + math.sqrt(2 * lr) * sigma * noise
    torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)


def test_zero_sigma_is_refused_and_names_plain_sgd() -> None:
    with pytest.raises(InvalidArgumentError, match=r"`sigma` of SGLD.*finetune.*SGD"):
        SGLD(_params(), lr=0.1, sigma=0.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.0}, "`lr`"),
        ({"sigma": -1.0}, "`sigma`"),
        ({"sigma": float("nan")}, "`sigma`"),
        ({"max_grad_norm": 0.0}, "`max_grad_norm`"),
        ({"projection_radius": -1.0}, "`projection_radius`"),
        ({"weight_decay": -0.1}, "`weight_decay`"),
    ],
)
def test_bad_hyper_parameters_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SGLD(_params(), **kwargs)
