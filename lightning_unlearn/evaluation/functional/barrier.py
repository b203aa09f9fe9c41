"""Loss barrier along the straight line between two weight vectors (THEORY §6).

.. math::

    B_S = \\max_{\\lambda \\in \\Lambda} L_S((1-\\lambda)\\theta_a + \\lambda\\theta_b)
          - \\big((1-\\lambda) L_S(\\theta_a) + \\lambda L_S(\\theta_b)\\big)

on a grid :math:`\\Lambda` of ``num_points`` equally spaced values in [0, 1], endpoints included.
With BatchNorm, the running statistics at every point (endpoints included) are recomputed on
data, because interpolated running statistics do not describe the interpolated network
(Frankle et al. 2020, Jordan et al. 2023).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_unlearn.evaluation.functional._batch import eval_mode, model_device
from lightning_unlearn.evaluation.functional.adapters import (
    AdapterLike,
    as_adapter,
    batches_with_ids,
)

__all__ = [
    "has_batchnorm",
    "interpolate_state",
    "interpolation_states",
    "loss_barrier",
    "per_example_loss_barrier",
    "recompute_batchnorm",
]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` holds a BatchNorm layer that tracks running statistics."""
    return any(isinstance(m, _BatchNorm) and m.track_running_stats for m in model.modules())


def _check_same_architecture(model_a: nn.Module, model_b: nn.Module) -> None:
    sd_a, sd_b = model_a.state_dict(), model_b.state_dict()
    if sd_a.keys() != sd_b.keys() or any(sd_a[k].shape != sd_b[k].shape for k in sd_a):
        raise ValueError(
            "Expected `model_a` and `model_b` to share one architecture (the same state_dict "
            "keys and shapes), but they differ; interpolate only between copies of one network."
        )


def interpolate_state(
    state_a: dict[str, Tensor], state_b: dict[str, Tensor], lam: float
) -> dict[str, Tensor]:
    """The state ``(1 - lam) * state_a + lam * state_b``; integer entries are taken from ``a``.

    Example:
        >>> import torch
        >>> interpolate_state({"w": torch.zeros(2)}, {"w": torch.ones(2)}, 0.25)["w"].tolist()
        [0.25, 0.25]
    """
    out = {}
    for key, a in state_a.items():
        b = state_b[key].to(a.device)
        out[key] = torch.lerp(a, b.to(a.dtype), lam) if a.is_floating_point() else a.clone()
    return out


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module, dataloader: Iterable[Any], *, batch_adapter: AdapterLike | None = None
) -> None:
    """Recompute the running statistics of every BatchNorm layer of ``model`` on ``dataloader``.

    The statistics become the cumulative average over the loader's batches (``momentum=None``);
    only BatchNorm layers run in train mode, so dropout stays off. Modes and momenta are
    restored. Sample ids are not needed.
    """
    layers = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    adapter = as_adapter(batch_adapter)
    with eval_mode(model):
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
            layer.train()
        seen = False
        for batch, _ in batches_with_ids(dataloader, with_ids=False):
            adapter(model, batch)
            seen = True
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    if not seen:
        raise ValueError("Expected a non-empty `dataloader` to recompute BatchNorm statistics.")


def interpolation_states(
    model_a: nn.Module,
    model_b: nn.Module,
    num_points: int = 11,
    *,
    bn_dataloader: Iterable[Any] | None = None,
    batch_adapter: AdapterLike | None = None,
) -> Iterator[tuple[float, dict[str, Tensor]]]:
    """Yield ``(lambda, state_dict)`` for each grid point, BatchNorm statistics recomputed.

    Args:
        model_a: the network at ``lambda = 0``.
        model_b: the network at ``lambda = 1`` (same architecture).
        num_points: grid size (>= 2), endpoints included.
        bn_dataloader: data on which BatchNorm statistics are recomputed; required when the
            models hold BatchNorm, ignored otherwise.
        batch_adapter: how to read a batch (see
            :mod:`~lightning_unlearn.evaluation.functional.adapters`).

    Raises:
        ValueError: different architectures, ``num_points < 2``, or BatchNorm without
            ``bn_dataloader``.
    """
    if num_points < 2:
        raise ValueError(f"Expected `num_points` >= 2, but got {num_points}.")
    _check_same_architecture(model_a, model_b)
    needs_bn = has_batchnorm(model_a)
    if needs_bn and bn_dataloader is None:
        raise ValueError(
            "Expected a `bn_dataloader` because the models hold BatchNorm layers whose running "
            "statistics must be recomputed at every interpolation point (THEORY §6)."
        )
    state_a = {k: v.detach() for k, v in model_a.state_dict().items()}
    state_b = {k: v.detach() for k, v in model_b.state_dict().items()}
    work = copy.deepcopy(model_a) if needs_bn else None
    for lam in torch.linspace(0.0, 1.0, num_points, dtype=torch.float64).tolist():
        state = interpolate_state(state_a, state_b, lam)
        if work is not None:
            assert bn_dataloader is not None
            work.load_state_dict(state)
            recompute_batchnorm(work, bn_dataloader, batch_adapter=batch_adapter)
            state = {k: v.detach().clone() for k, v in work.state_dict().items()}
        yield lam, state


def _loss_barrier_update(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy of ``model`` at its current weights (no grad, eval mode)."""
    with torch.no_grad(), eval_mode(model):
        logits = model(x.to(model_device(model)))
    return F.cross_entropy(logits.float(), y.to(logits.device).long(), reduction="none")


def _loss_barrier_compute(curve: Tensor) -> tuple[Tensor, Tensor]:
    """Barrier from a curve of losses ``[P, ...]`` on the uniform grid: ``(max gap, gaps)``.

    .. math::

        B = \\max_i \\; L(\\lambda_i) - \\big((1 - \\lambda_i) L(0) + \\lambda_i L(1)\\big)
    """
    lambdas = torch.linspace(0.0, 1.0, curve.shape[0], dtype=curve.dtype, device=curve.device)
    lambdas = lambdas.reshape(-1, *([1] * (curve.dim() - 1)))
    chord = (1.0 - lambdas) * curve[:1] + lambdas * curve[-1:]
    gaps = curve - chord
    return gaps.max(dim=0).values, gaps


def _curve(
    model_a: nn.Module,
    model_b: nn.Module,
    dataloader: Iterable[Any],
    num_points: int,
    bn_dataloader: Iterable[Any] | None,
    batch_adapter: AdapterLike | None,
    with_ids: bool,
) -> tuple[Tensor, Tensor | None]:
    work = copy.deepcopy(model_a)
    adapter = as_adapter(batch_adapter)
    rows, ids = [], None
    states = interpolation_states(
        model_a,
        model_b,
        num_points,
        bn_dataloader=dataloader if bn_dataloader is None else bn_dataloader,
        batch_adapter=batch_adapter,
    )
    for _, state in states:
        work.load_state_dict(state)
        losses, batch_ids = [], []
        with torch.no_grad(), eval_mode(work):
            for batch, sid in batches_with_ids(dataloader, with_ids=with_ids):
                losses.append(adapter(work, batch).loss)
                if sid is not None and with_ids:
                    batch_ids.append(sid)
        if not losses:
            raise ValueError("Expected a non-empty `dataloader`, but it yielded no batches.")
        row = torch.cat(losses).double()
        if with_ids:  # sort by id so that a shuffling loader still lines up across points
            row_ids, order = torch.cat(batch_ids).to(row.device).sort()
            if ids is not None and not torch.equal(ids, row_ids):
                raise ValueError(
                    "Expected `dataloader` to yield the same sample ids at every interpolation "
                    "point, but they changed; use a loader without random subsampling."
                )
            ids, row = row_ids, row[order]
        rows.append(row)
    return torch.stack(rows), ids


def loss_barrier(
    model_a: nn.Module,
    model_b: nn.Module,
    dataloader: Iterable[Any],
    num_points: int = 11,
    *,
    bn_dataloader: Iterable[Any] | None = None,
    batch_adapter: AdapterLike | None = None,
) -> tuple[Tensor, Tensor]:
    """Loss barrier between two networks on a data set (THEORY §6).

    .. math::

        B_S = \\max_{\\lambda} L_S((1-\\lambda)\\theta_a + \\lambda\\theta_b)
              - \\big((1-\\lambda) L_S(\\theta_a) + \\lambda L_S(\\theta_b)\\big)

    :math:`L_S` is the mean cross-entropy over ``dataloader``. The grid includes both
    endpoints, where the gap is 0, so the result is >= 0 up to rounding; a barrier of about 0
    means the two networks are linearly connected on S. Neither model is modified; both
    models' modes are left as they were.

    Args:
        model_a: the network at ``lambda = 0``.
        model_b: the network at ``lambda = 1``, same architecture.
        dataloader: the set S; batches ``(x, y[, sample_id])`` or dicts (ids not required).
        num_points: number of equally spaced ``lambda`` values in [0, 1] (>= 2).
        bn_dataloader: data for recomputing BatchNorm statistics at each point (defaults to
            ``dataloader``); unused without BatchNorm.
        batch_adapter: how to read a batch (see
            :mod:`~lightning_unlearn.evaluation.functional.adapters`).

    Returns:
        ``(barrier, curve)``: the barrier (float64 scalar) and the mean loss at each of the
        ``num_points`` values ``torch.linspace(0, 1, num_points)`` (float64 ``[num_points]``).

    Raises:
        ValueError: different architectures, ``num_points < 2`` or an empty loader.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> loader = DataLoader(TensorDataset(torch.randn(8, 3), torch.arange(8) % 2))
        >>> model = torch.nn.Linear(3, 2)
        >>> barrier, curve = loss_barrier(model, model, loader, num_points=5)
        >>> barrier.abs().item() < 1e-6, tuple(curve.shape)
        (True, (5,))
    """
    curve, _ = _curve(model_a, model_b, dataloader, num_points, bn_dataloader, batch_adapter, False)
    barrier, _ = _loss_barrier_compute(curve.mean(dim=1))
    return barrier, curve.mean(dim=1)


def per_example_loss_barrier(
    model_a: nn.Module,
    model_b: nn.Module,
    dataloader: Iterable[Any],
    num_points: int = 11,
    *,
    bn_dataloader: Iterable[Any] | None = None,
    batch_adapter: AdapterLike | None = None,
) -> tuple[Tensor, Tensor]:
    """Loss barrier of every single example, ``S = {x}`` (THEORY §6; [S25] relates it to P).

    Same definition as :func:`loss_barrier` with :math:`L_S` the loss of one example. BatchNorm
    statistics are still recomputed on the whole ``bn_dataloader`` (default ``dataloader``).

    Args:
        model_a: the network at ``lambda = 0``.
        model_b: the network at ``lambda = 1``.
        dataloader: batches carrying sample ids (see
            :class:`~lightning_unlearn.data.IndexedDataset`).
        num_points: number of equally spaced ``lambda`` values (>= 2).
        bn_dataloader: data for BatchNorm statistics (defaults to ``dataloader``).
        batch_adapter: how to read a batch (see
            :mod:`~lightning_unlearn.evaluation.functional.adapters`).

    Returns:
        ``(barriers [N] float64, sample_ids [N])``, sorted by sample id.

    Raises:
        MissingSampleIdError: the batches carry no sample ids.
    """
    curve, ids = _curve(
        model_a, model_b, dataloader, num_points, bn_dataloader, batch_adapter, True
    )
    assert ids is not None
    barriers, _ = _loss_barrier_compute(curve)
    return barriers, ids
