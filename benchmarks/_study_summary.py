"""Summaries of the P-informativeness study: Spearman with seed-level bootstrap intervals, the
top groups' Kaplan-Meier medians, barriers against the scores, the option study.

Steps enter the rank correlations as the mean over a set's runs, a censored run at its
censoring time (cap - hold, the same for every run): tied at the top, which is all that is known
of it. The Kaplan-Meier summaries use the censoring properly.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lightning_unlearn.evaluation.functional import grouped_bootstrap_spearman, summarise_censored

SET_OUTCOMES = ("set", "set_static")
EXAMPLE_OUTCOMES = ("example_ref", "example_ref_static", "example_oracle")
FINETUNE_ONLY = ("example_ref", "example_ref_static")


def baseline_names(per_seed: list[dict[str, Any]]) -> list[str]:
    return [k for k in per_seed[0]["example_scores"] if not k.startswith("opt:")]


def option_names(per_seed: list[dict[str, Any]]) -> list[str]:
    return [k for k in per_seed[0]["example_scores"] if k.startswith("opt:")]


def collect(per_seed: list[dict[str, Any]], method: str, outcome: str) -> dict[str, Any]:
    """Pairs (score, mean steps) with their seed, and the per-run times for Kaplan-Meier."""
    names = list(per_seed[0]["example_scores"])
    xs: dict[str, list[float]] = {k: [] for k in names}
    y: list[float] = []
    groups: list[int] = []
    times: list[list[int]] = []
    arrived: list[list[bool]] = []
    for seed in per_seed:
        for row in seed["rows"]:
            runs = [r[outcome] for r in row["methods"][method]["runs"]]
            if outcome in SET_OUTCOMES:
                t = [int(r["steps"]) for r in runs]
                times.append(t)
                arrived.append([bool(r["arrived"]) for r in runs])
                y.append(sum(t) / len(t))
                groups.append(seed["seed"])
                for k in names:
                    xs[k].append(row["scores"][k])
                continue
            for j, sid in enumerate(row["ids"]):
                t = [int(r["steps"][j]) for r in runs]
                times.append(t)
                arrived.append([bool(r["arrived"][j]) for r in runs])
                y.append(sum(t) / len(t))
                groups.append(seed["seed"])
                for k in names:
                    xs[k].append(seed["example_scores"][k][sid])
    return {"x": xs, "y": y, "groups": groups, "times": times, "arrived": arrived}


def _ci(x: list[float], y: list[float], groups: list[int], boot: int) -> dict[str, float]:
    ci = grouped_bootstrap_spearman(
        torch.tensor(x), torch.tensor(y), torch.tensor(groups), num_resamples=boot, seed=0
    )
    return {"rho": ci.estimate, "low": ci.low, "high": ci.high}


def _top_groups(data: dict[str, Any], names: list[str], quantile: float) -> dict[str, Any]:
    """KM summary of each score's top group (within each seed: the top ``1 - quantile``)."""
    groups = torch.tensor(data["groups"])
    out = {}
    for k in names:
        score = torch.tensor(data["x"][k], dtype=torch.float64)
        top = torch.zeros_like(groups, dtype=torch.bool)
        for g in torch.unique(groups):
            sel = groups == g
            top[sel] = score[sel] >= torch.quantile(score[sel], quantile)
        t = [tt for i, ts in enumerate(data["times"]) if top[i] for tt in ts]
        a = [aa for i, ars in enumerate(data["arrived"]) if top[i] for aa in ars]
        out[k] = summarise_censored(torch.tensor(t), torch.tensor(a))
    return out


def _hardest(top: dict[str, Any]) -> list[str]:
    """Scores ordered by how hard their top group is (KM median, then fraction censored)."""

    def key(k: str) -> tuple[float, float]:
        med = top[k]["km_median"]
        return (-(med if not math.isnan(med) else -1.0), -top[k]["fraction_censored"])

    return sorted(top, key=key)


def _censored(data: dict[str, Any]) -> float:
    flat = [a for ars in data["arrived"] for a in ars]
    return 1.0 - sum(flat) / len(flat)


def _at_zero(data: dict[str, Any]) -> float:
    """Fraction of (run, entry) pairs inside their band from step 0 (nothing to unlearn)."""
    flat = [
        a and t == 0
        for ts, ars in zip(data["times"], data["arrived"], strict=True)
        for t, a in zip(ts, ars, strict=True)
    ]
    return sum(flat) / len(flat)


def outcome_summary(
    per_seed: list[dict[str, Any]], sc: Any, method: str, outcome: str, names: list[str]
) -> dict[str, Any]:
    data = collect(per_seed, method, outcome)
    quantile = 0.5 if outcome in SET_OUTCOMES else 0.75
    top = _top_groups(data, names, quantile)
    return {
        "spearman": {k: _ci(data["x"][k], data["y"], data["groups"], sc.boot) for k in names},
        "n": len(data["y"]),
        "censored": _censored(data),
        "arrived_at_step_0": _at_zero(data),
        "top_group_quantile": quantile,
        "top_group": top,
        "hardest_first": _hardest(top),
        "all_km": summarise_censored(
            torch.tensor([t for ts in data["times"] for t in ts]),
            torch.tensor([a for ars in data["arrived"] for a in ars]),
        ),
    }


def barrier_summary(per_seed: list[dict[str, Any]], sc: Any, names: list[str]) -> dict[str, Any]:
    rows = [(s["seed"], row) for s in per_seed for row in s["rows"]]
    groups = [g for g, _ in rows]
    out: dict[str, Any] = {}
    targets = {"oracle_same_init": [r["barrier_oracle_same_init"] for _, r in rows]}
    targets["oracle_other_init"] = [r["barrier_oracle_other_init"] for _, r in rows]
    for method in sc.methods:
        targets[method] = [r["methods"][method]["runs"][0]["barrier_unlearned"] for _, r in rows]
    for target, values in targets.items():
        out[target] = {
            "mean": sum(values) / len(values),
            "spearman": {
                k: _ci([r["scores"][k] for _, r in rows], values, groups, sc.boot) for k in names
            },
        }
    return out


def check_interval_summary(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """How often a check every 10 steps would have reported other steps than every step."""
    pairs = [
        ([r["set"]["steps"], r["set"]["arrived"]], r["set_coarse_steps"])
        for s in per_seed
        for row in s["rows"]
        for r in row["methods"]["finetune"]["runs"]
    ]
    changed = [fine != coarse for fine, coarse in pairs if fine[1] or coarse[1]]
    return {
        "arrived_runs": len(changed),
        "fraction_changed_by_10_step_checks": sum(changed) / max(1, len(changed)),
    }


def summarise(per_seed: list[dict[str, Any]], sc: Any) -> dict[str, Any]:
    base = baseline_names(per_seed)
    opts = option_names(per_seed)
    outcomes: dict[str, Any] = {}
    for method in sc.methods:
        wanted = SET_OUTCOMES + EXAMPLE_OUTCOMES
        if method != "finetune":
            wanted = tuple(o for o in wanted if o not in FINETUNE_ONLY)
        outcomes[method] = {o: outcome_summary(per_seed, sc, method, o, base) for o in wanted}
    option_study = {}
    for outcome in ("set", "example_ref", "example_oracle"):
        data = collect(per_seed, "finetune", outcome)
        option_study[outcome] = {
            k: _ci(data["x"][k], data["y"], data["groups"], sc.boot)
            for k in ["P_default", "P_sweep", *opts]
        }
    return {
        "outcomes": outcomes,
        "option_study": option_study,
        "barriers": barrier_summary(per_seed, sc, base),
        "check_interval": check_interval_summary(per_seed),
        "estimator_check": {
            "offline_vs_monitor_max_rel_diff": max(
                s["offline_vs_monitor_max_rel_diff"] for s in per_seed
            ),
            "sweep_run_same_model": all(s["sweep_run_same_model"] for s in per_seed),
        },
    }
