"""Input-loss curvature: Hutchinson estimates of the Hessian of the loss w.r.t. the input.

THEORY §6 lists "input loss curvature (Hessian trace w.r.t. the input, estimated with random
vectors)" among the difficulty scores. Garg, Ahmed, Kumar and Roy (ICML 2024) and Ravikumar
et al. (2024) relate input-loss curvature to memorisation and to privacy; their estimator
averages squared norms of finite-difference gradient changes along Rademacher directions,
which approximates :math:`\\operatorname{tr}(H^2)` (up to the step size squared). We offer both
the trace (the THEORY §6 definition, default) and :math:`\\operatorname{tr}(H^2)`, each from
exact Hessian-vector products (double backward) rather than finite differences.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_unlearn.evaluation.functional._batch import eval_mode, model_device
from lightning_unlearn.evaluation.functional.adapters import (
    AdapterLike,
    as_adapter,
    batches_with_ids,
    tensor_inputs,
)

__all__ = ["input_curvature"]


def _input_curvature_update(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    num_probes: int,
    kind: Literal["trace", "trace_squared"],
    generator: torch.Generator,
    max_rows: int,
) -> Tensor:
    """Hutchinson estimate for one batch, summed over ``num_probes`` probes per example.

    Probes are vectorised: the batch is repeated ``k`` times and each copy gets its own probe.
    In eval mode examples do not interact, so the Hessian of the summed loss over the repeated
    batch is block-diagonal and one double backward gives all ``k * B`` products at once.
    """
    batch = x.shape[0]
    total = torch.zeros(batch, dtype=torch.float64, device=x.device)
    per_pass = max(1, min(num_probes, max_rows // max(batch, 1)))
    done = 0
    while done < num_probes:
        k = min(per_pass, num_probes - done)
        xr = x.detach().repeat(k, *([1] * (x.dim() - 1))).requires_grad_(True)
        loss = F.cross_entropy(model(xr).float(), y.long().repeat(k), reduction="sum")
        (g,) = torch.autograd.grad(loss, xr, create_graph=True)
        v = torch.randint(0, 2, xr.shape, generator=generator, device=x.device).to(x.dtype)
        v = 2.0 * v - 1.0  # Rademacher: +-1 with probability 1/2
        (hv,) = torch.autograd.grad(g, xr, grad_outputs=v)
        if kind == "trace":
            values = (v * hv).flatten(1).sum(dim=1)
        else:
            values = hv.flatten(1).pow(2).sum(dim=1)
        total += values.double().reshape(k, batch).sum(dim=0)
        done += k
    return total / num_probes


def input_curvature(
    model: nn.Module,
    dataloader: Iterable[Any],
    num_probes: int = 16,
    *,
    kind: Literal["trace", "trace_squared"] = "trace",
    seed: int = 0,
    batch_adapter: AdapterLike | None = None,
    max_rows: int = 4096,
) -> tuple[Tensor, Tensor]:
    """Per-example curvature of the loss around the input (THEORY §6), by Hutchinson's method.

    With :math:`H(x) = \\nabla_x^2 \\, \\ell(f(x), y)` and Rademacher probes :math:`v_i`:

    .. math::

        \\operatorname{tr} H \\approx \\frac1n \\sum_{i=1}^n v_i^\\top H v_i, \\qquad
        \\operatorname{tr} H^2 \\approx \\frac1n \\sum_{i=1}^n \\lVert H v_i \\rVert_2^2

    Both are unbiased; the trace estimate has variance
    :math:`\\tfrac2n \\sum_{j \\ne k} H_{jk}^2` per example, so raise ``num_probes`` until the
    ranking you care about is stable. ``trace_squared`` is the quantity the finite-difference
    estimator of Garg et al. (2024) approximates. Hessian-vector products come from a double
    backward; the model runs in eval mode and its parameters' ``.grad`` are untouched.

    Args:
        model: a classifier mapping inputs to logits (twice differentiable: prefer smooth
            activations; with ReLU only the softmax contributes curvature).
        dataloader: its batches (ids carried by the batches, else the sampler's indices).
        num_probes: number of Rademacher vectors per example (>= 1).
        kind: ``"trace"`` (default) or ``"trace_squared"``.
        seed: seed of the probe vectors (a generator on the model's device).
        batch_adapter: how to read a batch; its ``inputs`` must be one tensor (see
            :mod:`~lightning_unlearn.evaluation.functional.adapters`).
        max_rows: at most this many (example, probe) pairs go through the model at once; the
            probes of a batch are processed in chunks to respect it (memory bound).

    Returns:
        ``(curvature [N] float64, sample_ids [N])`` in the loader's order, on the model's device.

    Raises:
        ValueError: ``num_probes < 1``, an unknown ``kind`` or an empty loader.
        MissingSampleIdError: no ids are known for a batch.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> data = TensorDataset(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
        >>> curv, ids = input_curvature(torch.nn.Linear(3, 2), DataLoader(data), num_probes=4)
        >>> tuple(curv.shape), bool((curv >= -1e-9).all())  # convex in x for a linear model
        ((4,), True)
    """
    if num_probes < 1:
        raise ValueError(f"Expected `num_probes` >= 1, but got {num_probes}.")
    if kind not in ("trace", "trace_squared"):
        raise ValueError(f"Expected `kind` 'trace' or 'trace_squared', but got {kind!r}.")
    device = model_device(model)
    adapter = as_adapter(batch_adapter)
    generator = torch.Generator(device=device).manual_seed(seed)
    scores, ids = [], []
    with eval_mode(model), torch.enable_grad():
        for batch, sid in batches_with_ids(dataloader):
            x, y = tensor_inputs(adapter, batch)
            assert sid is not None
            x, y = x.to(device), y.to(device)
            curvature = _input_curvature_update(model, x, y, num_probes, kind, generator, max_rows)
            scores.append(curvature)
            ids.append(sid.to(device))
    if not scores:
        raise ValueError("Expected a non-empty `dataloader`, but it yielded no batches.")
    return torch.cat(scores), torch.cat(ids)
