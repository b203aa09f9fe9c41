"""Per-step, per-instance Rényi privacy loss of the sampled Gaussian mechanism (THEORY §2).

Everything here is vectorised over examples and orders, in float64 and in log space. The one
trick worth knowing: the ``k = 0`` and ``k = 1`` terms of the binomial sum carry no
exponential factor, and together with the rest of the binomial weights they sum to exactly one,
so the sum is written as ``1 + S`` with ``S`` a sum of positive terms (one per ``k >= 2``). That
keeps full relative precision even when the loss is tiny (small ``q``, large ``sigma``), where
the direct sum would cancel.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Iterable

import torch
from torch import Tensor

from lightning_unlearn.errors import UnsupportedOrderError

__all__ = ["DEFAULT_ALPHAS", "per_step_rdp", "step_rdp_in_pieces", "validate_alphas"]

DEFAULT_ALPHAS: tuple[int, ...] = (2, 3, 4, 6, 8, 16, 32, 64)
"""Default Rényi orders: integers from 2 to 64, denser where conversions usually land."""

# Orders above this make the [sum(alpha - 1), N] table needlessly large; nothing in the
# literature uses them for accounting (the optimum sits below ~100 for any practical delta).
_MAX_ALPHA = 1024

# Table entries per chunk of ratios, so the [sum(alpha - 1), n] tables stay ~32 MB at most.
_CHUNK_ELEMENTS = 1 << 22

# On the CPU, ratios whose largest exponent max(alpha) (max(alpha) - 1) / 2 * r^2 stays below this
# are summed in linear space (no overflow: exp(600) ~ 4e260), the others in log space.
_LINEAR_LIMIT = 600.0


def validate_alphas(alphas: Iterable[int] | int) -> tuple[int, ...]:
    """Check and normalise Rényi orders: integers ``>= 2``, returned sorted and unique.

    Args:
        alphas: One order or an iterable of orders. Integral floats such as ``8.0`` are accepted
            and converted; anything else is rejected.

    Returns:
        The orders as a sorted tuple of distinct Python ints.

    Raises:
        UnsupportedOrderError: If ``alphas`` is empty, or an order is not an integer in
            ``[2, 1024]`` (fractional orders are not supported by the closed form of THEORY §2).

    Example:
        >>> validate_alphas([8, 2, 2.0, 32])
        (2, 8, 32)
    """
    if isinstance(alphas, numbers.Number) or (isinstance(alphas, Tensor) and alphas.ndim == 0):
        alphas = [alphas]  # type: ignore[list-item]
    out: set[int] = set()
    for a in alphas:  # type: ignore[union-attr]
        value = a.item() if isinstance(a, Tensor) else a
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise UnsupportedOrderError(
                f"Expected every order in `alphas` to be an integer >= 2, but got {a!r}."
            )
        number = float(value)
        if not number.is_integer() or not 2 <= number <= _MAX_ALPHA:
            raise UnsupportedOrderError(
                f"Expected every order in `alphas` to be an integer in [2, {_MAX_ALPHA}], but got "
                f"{value!r}. The per-instance RDP of THEORY §2 uses the closed form for integer "
                f"orders only; round to integers, e.g. `alphas={DEFAULT_ALPHAS}`."
            )
        out.add(int(number))
    if not out:
        raise UnsupportedOrderError(
            f"Expected `alphas` to contain at least one order, but got an empty collection; "
            f"use e.g. `alphas={DEFAULT_ALPHAS}`."
        )
    return tuple(sorted(out))


def _check_sample_rate(sample_rate: float) -> float:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real):
        raise TypeError(f"Expected `sample_rate` to be a float in [0, 1], but got {sample_rate!r}.")
    q = float(sample_rate)
    if not 0.0 <= q <= 1.0:
        raise ValueError(
            f"Expected `sample_rate` to be in [0, 1], but got {sample_rate!r}. With shuffled "
            f"batches use batch_size / num_samples (THEORY §1)."
        )
    return q


@functools.lru_cache(maxsize=128)
def _coefficients(
    alphas: tuple[int, ...], q: float, device: torch.device
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Constants of the ``k >= 2`` terms for orders ``alphas`` and rate ``q`` (cached).

    The terms of all orders are laid out flat, order after order (``W = sum(alpha - 1)`` rows
    instead of a padded ``K * (max(alpha) - 1)``). Returns ``half_kk1 [M, 1]`` (``k (k - 1) / 2``
    for ``k = 2..max(alpha)``) and, for the flat layout, ``log_weight [W, 1]`` (log of
    ``binom(alpha, k) (1 - q)^(alpha - k) q^k``), ``k_index [W]`` (row of ``half_kk1``),
    ``order_index [W]`` (which order), ``segments [K, W]`` (0/1 matrix summing the rows of each
    order), ``lengths [K]`` (``alpha - 1`` rows per order) and ``denom [K]`` (``alpha - 1``).
    """
    k_list = [k for a in alphas for k in range(2, a + 1)]
    o_list = [i for i, a in enumerate(alphas) for _ in range(2, a + 1)]
    a = torch.tensor([alphas[i] for i in o_list], dtype=torch.float64, device=device)
    k = torch.tensor(k_list, dtype=torch.float64, device=device)
    log_binom = torch.lgamma(a + 1) - torch.lgamma(k + 1) - torch.lgamma(a - k + 1)
    log_weight = log_binom + k * math.log(q) + (a - k) * math.log1p(-q)
    k_all = torch.arange(2, max(alphas) + 1, dtype=torch.float64, device=device)
    order_index = torch.tensor(o_list, dtype=torch.int64, device=device)
    segments = torch.nn.functional.one_hot(order_index, len(alphas)).to(torch.float64).T
    return (
        (k_all * (k_all - 1) / 2).unsqueeze(1),
        log_weight.unsqueeze(1),
        torch.tensor(k_list, dtype=torch.int64, device=device) - 2,
        order_index,
        segments.contiguous(),
        torch.tensor([a - 1 for a in alphas], dtype=torch.int64, device=device),
        torch.tensor(alphas, dtype=torch.float64, device=device) - 1,
    )


@functools.lru_cache(maxsize=128)
def _linear_coefficients(
    alphas: tuple[int, ...], q: float, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """``half_kk1 [M]`` (``k (k - 1) / 2`` for ``k = 2..max(alpha)``), ``weights [M, K]``
    (``binom(alpha, k) (1 - q)^(alpha - k) q^k``, zero for ``k > alpha``) and ``denom [K]``."""
    k = torch.arange(2, max(alphas) + 1, dtype=torch.float64, device=device).unsqueeze(1)
    a = torch.tensor(alphas, dtype=torch.float64, device=device).unsqueeze(0)
    valid = k <= a
    kk = torch.where(valid, k, torch.zeros_like(k))
    log_binom = torch.lgamma(a + 1) - torch.lgamma(kk + 1) - torch.lgamma(a - kk + 1)
    log_weight = log_binom + kk * math.log(q) + (a - kk) * math.log1p(-q)
    weights = torch.where(valid, torch.exp(log_weight), torch.zeros_like(log_weight))
    return (k * (k - 1) / 2).squeeze(1), weights.contiguous(), a.squeeze(0) - 1


def _linear_rdp(r2: Tensor, linear: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """``log1p(S) / (alpha - 1)``, ``[n, K]``, for ratios with ``max exponent <= _LINEAR_LIMIT``.

    ``S = sum_k w_{alpha,k} expm1(k (k - 1) r^2 / 2)`` is then one ``[n, M] @ [M, K]`` product:
    the ``M`` growth terms are shared by all orders and every summand is non-negative, so the
    sum loses no precision (agrees with the log-space path to ~1e-14 relative) at a quarter of
    its cost for one step's batch. Weights that underflow belong to terms below ``1e-47``.
    """
    half_kk1, weights, denom = linear
    rows = max(1, _CHUNK_ELEMENTS // half_kk1.numel())
    out = [torch.log1p(torch.expm1(c.unsqueeze(1) * half_kk1) @ weights) for c in r2.split(rows)]
    return torch.cat(out) / denom


def _log_expm1(x: Tensor) -> Tensor:
    """``log(exp(x) - 1)`` for ``x >= 0``, accurate near 0 and without overflow (-inf at 0).

    ``exp(x) - 1`` uses Kahan's correction ``(u - 1) x / log(u)`` with ``u = exp(x)``, as accurate
    as ``expm1`` and several times faster than ``torch.expm1`` on the CPU. Above 40 the result
    is ``x`` to double precision (``log1p(-exp(-x)) < 5e-18``).
    """
    xs = x.clamp(max=40.0)
    u = torch.exp(xs)
    em1 = torch.where(u == 1.0, xs, (u - 1.0) * xs / torch.log(u))
    return torch.where(x > 40.0, x, torch.log(em1))


def _log_one_plus_s(r2: Tensor, coefficients: tuple[Tensor, ...]) -> Tensor:
    """``log(1 + S)``, ``[K, n]``, with ``S = sum_{k>=2} w_{alpha,k} expm1(k(k-1) r^2 / 2)``.

    Works on ``[terms, examples]`` tables, so that the gathers and segment reductions move whole
    contiguous rows (several times faster on CPUs than the ``[examples, terms]`` layout).
    """
    half_kk1, log_weight, k_index, order_index, segments, lengths, _ = coefficients
    log_growth = _log_expm1(half_kk1 * r2)  # [M, n], shared by all orders
    terms = log_weight + log_growth.index_select(0, k_index)  # [W, n]
    # log-sum-exp within each order's segment: shift by the segment's max, so no exp overflows
    # and the exps that matter never underflow (deep underflow is slow on CPUs: clamp it away).
    if terms.device.type in ("cpu", "cuda"):
        # not scatter_reduce there: with 2 CPU threads it took ~100 ms for batches of 16-128
        shift = torch.segment_reduce(terms, "max", lengths=lengths, axis=0, unsafe=True)
    else:  # backends without segment_reduce
        index = order_index.unsqueeze(1).expand_as(terms)
        shift = terms.new_full((segments.shape[0], terms.shape[1]), -math.inf)
        shift = shift.scatter_reduce(0, index, terms, "amax")
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    # Terms more than 700 below their segment's max are clamped to exp(-700) ~ 1e-304 instead
    # of underflowing: relative to the max term (exp(0) = 1) that changes nothing in float64.
    z = terms - shift.index_select(0, order_index)
    log_s = torch.log(segments @ torch.exp(z.clamp(min=-700.0))) + shift
    # r = 0 leaves only clamped terms; multiplying (not selecting) keeps NaN ratios NaN. An
    # infinite ratio is set apart: inf * 0 in the segment matmul would turn it into NaN.
    out = torch.logaddexp(log_s, torch.zeros_like(log_s)) * (r2 != 0)
    return torch.where(torch.isinf(r2), torch.full_like(out, math.inf), out)


def per_step_rdp(
    ratios: Tensor, sample_rate: float, alphas: Iterable[int] = DEFAULT_ALPHAS
) -> Tensor:
    r"""Per-instance Rényi loss of one step of the sampled Gaussian mechanism (THEORY §2).

    For each ratio ``r = Delta(x) / s`` (sensitivity over noise scale, see THEORY §1 and
    ``dpsgd_ratios``) and each integer order ``alpha``:

    .. math::

        \varepsilon(\alpha; x) = \frac{1}{\alpha - 1} \log \sum_{k=0}^{\alpha}
            \binom{\alpha}{k} (1 - q)^{\alpha - k} q^k \exp\!\Big(\frac{k (k - 1)}{2} r^2\Big)

    computed as ``log1p`` of a log-sum-exp over ``k >= 2`` (the ``k = 0, 1`` terms and the
    binomial weights sum to one), so the result is exactly 0 at ``r = 0`` and keeps full relative
    precision for tiny losses. At ``q = 1`` it is the closed form ``alpha * r**2 / 2``. With
    ``r = 1 / noise_multiplier`` it is the data-independent RDP of DP-SGD that Opacus' RDP
    accountant uses.

    No Python loop over examples or orders: the terms of all orders are evaluated at once on a
    ``[sum(alpha - 1), N]`` table (orders laid out one after the other, no padding), reduced per
    order with a segment-wise log-sum-exp (in chunks of rows for very large ``N``). No host
    synchronisation on accelerators. On the CPU, ratios small enough that no term can overflow
    (``max(alpha) (max(alpha) - 1) r^2 / 2 <= 600``, e.g. ``r <= 0.54`` for orders up to 64)
    are summed in linear space instead, as one matrix product of the ``expm1`` growth terms
    (shared by all orders) with the binomial weights: the same value to ~1e-14 relative, about
    four times faster for one step's batch.

    Args:
        ratios: Tensor of any shape ``[...]`` of non-negative ratios ``r``; any device.
            Converted to float64. NaN propagates; ``inf`` gives ``inf``.
        sample_rate: The sampling probability ``q`` in ``[0, 1]`` (``batch_size / num_samples``
            for shuffled batches).
        alphas: Integer Rényi orders ``>= 2`` (sorted and deduplicated by
            ``validate_alphas``; the output columns follow the sorted order).

    Returns:
        Float64 tensor of shape ``[..., K]`` on the device of ``ratios``.

    Raises:
        UnsupportedOrderError: If an order is not an integer ``>= 2``.
        ValueError: If ``sample_rate`` is outside ``[0, 1]``.

    Example:
        >>> r = torch.tensor([0.0, 0.5, 1.0])
        >>> per_step_rdp(r, sample_rate=1.0, alphas=(2, 4))  # q = 1: alpha * r^2 / 2
        tensor([[0.0000, 0.0000],
                [0.2500, 0.5000],
                [1.0000, 2.0000]], dtype=torch.float64)
        >>> per_step_rdp(r, sample_rate=0.01, alphas=(2,))[2]  # log(1 + q^2 (e - 1))
        tensor([0.0002], dtype=torch.float64)
    """
    orders = validate_alphas(alphas)
    q = _check_sample_rate(sample_rate)
    r = torch.as_tensor(ratios).to(torch.float64)
    batch_shape = r.shape
    r2 = (r * r).reshape(-1)
    if q == 1.0:
        a = torch.tensor(orders, dtype=torch.float64, device=r.device)
        return (r2.unsqueeze(1) * a / 2).reshape(*batch_shape, len(orders))
    if q == 0.0 or r2.numel() == 0:
        return torch.zeros(*batch_shape, len(orders), dtype=torch.float64, device=r.device)
    if r2.device.type == "cpu":  # (masking needs the values: free on the CPU only)
        # the largest r^2 of the linear path; NaN and inf take the log-space path
        small = r2 <= _LINEAR_LIMIT / (max(orders) * (max(orders) - 1) / 2)
        num_small = int(small.sum())
        linear = _linear_coefficients(orders, q, r2.device) if num_small else None
        if linear is not None and num_small == r2.shape[0]:
            return _linear_rdp(r2, linear).reshape(*batch_shape, len(orders))
        if linear is not None:  # a mixed batch: each part by its own path (gathers, not masks)
            out = r2.new_empty(r2.shape[0], len(orders))
            rows = small.nonzero().squeeze(1)
            out.index_copy_(0, rows, _linear_rdp(r2.index_select(0, rows), linear))
            rows = (~small).nonzero().squeeze(1)
            out.index_copy_(0, rows, _log_space_rdp(r2.index_select(0, rows), orders, q))
            return out.reshape(*batch_shape, len(orders))
    return _log_space_rdp(r2, orders, q).reshape(*batch_shape, len(orders))


# Elements of per_step_rdp's [sum(alpha - 1), rows] table per call on the CPU: 512 rows of the
# default orders (127 terms each). Measured on the 2-core development CPU, one thread: 4096 rows
# cost 21 ms in one call, 8.5 ms in pieces of 512 and 12 ms in pieces of 128 (one step's batch).
_CPU_TABLE_ELEMENTS = 1 << 16


def step_rdp_in_pieces(
    ratios: Tensor, sample_rate: float, alphas: tuple[int, ...] = DEFAULT_ALPHAS
) -> Tensor:
    """:func:`per_step_rdp` of many buffered rows ``[M]`` (THEORY §2), the same values.

    On the CPU the rows go in pieces whose table of terms stays in a core's cache (row by row
    the same computation); on an accelerator in one call, as few kernel launches as possible.

    Example:
        >>> ratios = torch.linspace(0.0, 2.0, 2000, dtype=torch.float64)
        >>> torch.equal(step_rdp_in_pieces(ratios, 0.1), per_step_rdp(ratios, 0.1))
        True
    """
    terms = sum(a - 1 for a in alphas)
    rows = max(1, _CPU_TABLE_ELEMENTS // terms)
    if ratios.device.type != "cpu" or ratios.shape[0] <= rows:
        return per_step_rdp(ratios, sample_rate, alphas)
    return torch.cat([per_step_rdp(r, sample_rate, alphas) for r in ratios.split(rows)])


def _log_space_rdp(r2: Tensor, orders: tuple[int, ...], q: float) -> Tensor:
    """``[n, K]`` losses of squared ratios ``r2 [n]`` in log space (any ratio, any device)."""
    coefficients = _coefficients(orders, q, r2.device)
    rows = max(1, _CHUNK_ELEMENTS // coefficients[1].numel())
    denom = coefficients[-1]
    # a handful of chunks at most (bounding memory), never a loop over examples
    out = [(_log_one_plus_s(chunk, coefficients).T / denom) for chunk in r2.split(rows)]
    return torch.cat(out).contiguous()
