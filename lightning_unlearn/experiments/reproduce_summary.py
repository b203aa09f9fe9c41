"""The paper's three claims from the per-seed rows of
:func:`~lightning_unlearn.experiments.reproduce.run_reproduce`: means and spreads over seeds."""

from __future__ import annotations

import math
from typing import Any

import torch

from lightning_unlearn.accounting import fit_step_model
from lightning_unlearn.evaluation.functional import correlation_table

__all__ = ["summarise"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    t = torch.tensor(values, dtype=torch.float64)
    std = float(t.std(unbiased=True)) if len(values) > 1 else 0.0
    return float(t.mean()), std


def _spearman(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3 or len(set(y)) < 2 or len(set(x)) < 2:
        return None
    table = correlation_table(
        torch.tensor(x, dtype=torch.float64), {"y": torch.tensor(y, dtype=torch.float64)}
    )
    value = table["privacy_loss"]["y"]
    return None if math.isnan(value) else value


def _loss(metrics: dict[str, Any]) -> float:
    """The forget-set mean loss of :func:`~lightning_unlearn.unlearning.evaluate_splits`
    metrics (NaN where it was not finite, so the means show it)."""
    loss = metrics["forget"]["loss"]
    return math.nan if loss is None else float(loss)


def _gap(row: dict[str, Any]) -> float:
    """Oracle minus original forget-set mean loss: how far unlearning has to move the set."""
    return _loss(row["oracle"]) - _loss(row["original"])


def _steps(rows: list[dict[str, Any]], methods: list[str]) -> dict[str, tuple[float, float]]:
    """Mean and spread of the steps to unlearn, per method."""
    return {m: _mean_std([float(r["methods"][m]["steps"]) for r in rows]) for m in methods}


def _by_bin(rows: list[dict[str, Any]], bins: list[str], methods: list[str]) -> dict[str, Any]:
    """Claim 1's table: per P bin, P, the barrier, THEORY §5's budget and the steps."""
    by_bin: dict[str, Any] = {}
    for b in bins:
        sel = [r for r in rows if r["group"] == b]
        by_bin[b] = {
            "P_max": _mean_std([r["P_max"] for r in sel]),
            "barrier": _mean_std([r["barrier"] for r in sel]),
            "budget_theory": _mean_std([float(r["budget_theory"]) for r in sel]),
            "oracle_forget_acc": _mean_std([r["oracle"]["forget"]["accuracy"] for r in sel]),
            "original_forget_acc": _mean_std([r["original"]["forget"]["accuracy"] for r in sel]),
            "steps": _steps(sel, methods),
            "censored": {m: sum(r["methods"][m]["censored"] for r in sel) for m in methods},
        }
    return by_bin


def _claim1(pbin_rows: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Spearman(P, steps) and the fit k = a log P + b, per method."""
    claim1: dict[str, Any] = {}
    for m in methods:
        p = [r["P_max"] for r in pbin_rows]
        k = [float(r["methods"][m]["steps"]) for r in pbin_rows]
        entry: dict[str, Any] = {"spearman_P_steps": _spearman(p, k)}
        if len(set(k)) > 1:
            model = fit_step_model(torch.tensor(p, dtype=torch.float64), torch.tensor(k))
            entry.update({"a": float(model.a), "b": float(model.b), "r2": float(model.r2)})
        claim1[m] = entry
    return claim1


def _claim3(
    rows: list[dict[str, Any]], bins: list[str], methods: list[str]
) -> tuple[dict[str, Any], dict[str, str]]:
    """The top P bin against the top group of every heuristic, and the hardest per method."""
    groups = [bins[-1]] if bins else []
    groups += list(dict.fromkeys(r["group"] for r in rows if r["kind"] == "heuristic"))
    claim3: dict[str, Any] = {}
    for g in groups:
        sel = [r for r in rows if r["group"] == g]
        claim3[g] = {
            "steps": _steps(sel, methods),
            "barrier": _mean_std([r["barrier"] for r in sel]),
            "P_mean": _mean_std([r["P_mean"] for r in sel]),
            "forget_gap": _mean_std([_gap(r) for r in sel]),
        }
    hardest = {m: max(claim3, key=lambda g: claim3[g]["steps"][m][0]) for m in methods if claim3}
    return claim3, hardest


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Aggregate the per-seed rows into the numbers behind the three claims.

    Args:
        results: ``{"seeds": [...]}`` with each seed's ``rows`` (one per forget set: ``kind``,
            ``group``, ``P_max``, ``P_mean``, ``barrier``, ``budget_theory``, the
            :func:`~lightning_unlearn.unlearning.evaluate_splits` metrics ``original`` and
            ``oracle``, and per method the ``steps`` and whether they were ``censored``),
            ``spearman`` and ``test_acc``.

    Returns:
        ``{"bins": [...], "methods": [...], "by_bin": {...}, "claim1": {...}, "claim2": {...},
        "claim3": {...}, "hardest_group": {...}, "spearman": {...}, "test_acc": ...}``; means
        and (sample) standard deviations over seeds.
    """
    seeds = results["seeds"]
    rows = [r for s in seeds for r in s["rows"]]
    methods = list(rows[0]["methods"]) if rows else []
    bins = list(dict.fromkeys(r["group"] for r in rows if r["kind"] == "P bin"))
    pbin_rows = [r for r in rows if r["kind"] == "P bin"]
    claim2 = {
        "spearman_P_barrier": _spearman(
            [r["P_max"] for r in pbin_rows], [r["barrier"] for r in pbin_rows]
        ),
        "spearman_bin_barrier": _spearman(
            [float(bins.index(r["group"])) for r in pbin_rows], [r["barrier"] for r in pbin_rows]
        ),
    }
    claim3, hardest = _claim3(rows, bins, methods)
    names = list(seeds[0]["spearman"]) if seeds else []
    return {
        "bins": bins,
        "methods": methods,
        "by_bin": _by_bin(rows, bins, methods),
        "claim1": _claim1(pbin_rows, methods),
        "claim2": claim2,
        "claim3": claim3,
        "hardest_group": hardest,
        "spearman": {n: _mean_std([s["spearman"][n] for s in seeds]) for n in names},
        "test_acc": _mean_std([s["test_acc"] for s in seeds]),
    }
