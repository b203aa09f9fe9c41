"""Kaplan-Meier summaries of steps-to-unlearn with right-censored runs (THEORY §6).

A run that has not unlearned its forget set when the step cap is reached did not take "cap"
steps: it took more, by an unknown amount. Such runs are right-censored, and their summary is
the Kaplan-Meier estimate of the survival function :math:`S(t) = \\Pr(T > t)` (the
probability that a run still has not arrived after ``t`` steps), its median, and the fraction
censored. Pure tensor math: no Lightning here.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from lightning_unlearn.evaluation.functional.steps import MeasurementError

__all__ = ["KaplanMeier", "kaplan_meier", "km_median", "summarise_censored"]


class KaplanMeier(NamedTuple):
    """The Kaplan-Meier curve: at each distinct event time, the number at risk, the number of
    events, and :math:`S(t)` just after that time (all ``[T]``)."""

    times: Tensor
    at_risk: Tensor
    events: Tensor
    survival: Tensor


def _as_inputs(times: Tensor, arrived: Tensor) -> tuple[Tensor, Tensor]:
    t = torch.as_tensor(times, dtype=torch.float64).flatten()
    a = torch.as_tensor(arrived).flatten()
    if a.dtype != torch.bool or a.shape != t.shape:
        raise MeasurementError(
            f"Expected boolean `arrived` of the same length as `times` ({t.numel()}), but got "
            f"dtype {a.dtype} and {a.numel()} entries."
        )
    if t.numel() == 0:
        raise MeasurementError("Expected at least one run, but got none.")
    if not torch.isfinite(t).all():
        raise MeasurementError("Expected finite `times`; censored runs carry their censoring time.")
    return t, a.to(t.device)


def kaplan_meier(times: Tensor, arrived: Tensor) -> KaplanMeier:
    r"""The Kaplan-Meier estimate of :math:`S(t) = \Pr(T > t)` from right-censored times.

    With :math:`t_1 < t_2 < \dots` the distinct times of observed arrivals, :math:`d_i` the
    arrivals at :math:`t_i` and :math:`n_i` the runs with time :math:`\ge t_i` (a run censored
    at :math:`t_i` is still at risk at :math:`t_i`, the usual convention):

    .. math::

        \hat S(t) = \prod_{i : t_i \le t} \left(1 - \frac{d_i}{n_i}\right).

    Args:
        times: ``[R]`` arrival steps (where ``arrived``) or censoring times (elsewhere), as
            returned by :func:`~lightning_unlearn.evaluation.functional.first_hold_step`.
        arrived: ``[R]`` booleans: the run arrived (an event) or was censored.

    Returns:
        :class:`KaplanMeier` (float64 times and survival, long counts); empty when no run
        arrived (then :math:`\hat S = 1` throughout).

    Raises:
        MeasurementError: lengths differ, no runs, or non-finite times.

    Example:
        >>> import torch
        >>> km = kaplan_meier(torch.tensor([1, 2, 2, 3, 5]),
        ...                   torch.tensor([True, True, False, True, False]))
        >>> km.times.tolist(), km.at_risk.tolist(), km.events.tolist()
        ([1.0, 2.0, 3.0], [5, 4, 2], [1, 1, 1])
        >>> [round(s, 4) for s in km.survival.tolist()]
        [0.8, 0.6, 0.3]
    """
    t, a = _as_inputs(times, arrived)
    event_times = torch.unique(t[a], sorted=True)
    at_risk = (t[None, :] >= event_times[:, None]).sum(dim=1)
    events = ((t[None, :] == event_times[:, None]) & a[None, :]).sum(dim=1)
    survival = torch.cumprod(1.0 - events.double() / at_risk.double(), dim=0)
    return KaplanMeier(event_times, at_risk, events, survival)


def km_median(times: Tensor, arrived: Tensor) -> float:
    r"""The Kaplan-Meier median: the first event time with :math:`\hat S(t) \le 1/2`.

    ``inf`` when the estimate never falls to 1/2 (more than half the runs are censored before
    any later arrival): the median is then only known to exceed the largest censoring time;
    report it as such, never as the cap.

    Args:
        times: ``[R]`` arrival or censoring times.
        arrived: ``[R]`` booleans.

    Returns:
        The median as a float (``inf`` when not reached).

    Example:
        >>> import torch
        >>> km_median(torch.tensor([1, 2, 2, 3, 5]), torch.tensor([True, True, False, True, False]))
        3.0
        >>> km_median(torch.tensor([0, 100, 100]), torch.tensor([True, False, False]))
        inf
    """
    km = kaplan_meier(times, arrived)
    below = (km.survival <= 0.5).nonzero()
    if below.numel() == 0:
        return math.inf
    return float(km.times[below[0, 0]])


def summarise_censored(times: Tensor, arrived: Tensor) -> dict[str, float]:
    """Kaplan-Meier median, fraction censored and largest censoring time of a group of runs.

    Args:
        times: ``[R]`` arrival or censoring times.
        arrived: ``[R]`` booleans.

    Returns:
        ``{"km_median", "fraction_censored", "max_censor_time", "n"}`` (``max_censor_time`` is
        NaN when nothing is censored; ``km_median`` is ``inf`` when not reached).

    Example:
        >>> import torch
        >>> out = summarise_censored(torch.tensor([0, 4, 9]), torch.tensor([True, True, False]))
        >>> out["km_median"], round(out["fraction_censored"], 4), out["max_censor_time"]
        (4.0, 0.3333, 9.0)
    """
    t, a = _as_inputs(times, arrived)
    censored = t[~a]
    return {
        "km_median": km_median(t, a),
        "fraction_censored": float((~a).double().mean()),
        "max_censor_time": float(censored.max()) if censored.numel() else math.nan,
        "n": float(t.numel()),
    }
