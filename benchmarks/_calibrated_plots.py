"""Plots of ``calibrated_unlearning.py``'s results (issue 15): forget loss against the oracles'
prediction interval, and measured steps against the budget's interval."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

from _study_report import _save  # benchmarks/ is the script directory

KIND_ORDER = ("low_p", "mid_p", "high_p", "mislabelled", "random")


def _rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    return sorted(results["rows"], key=lambda r: (rank.get(r["kind"], 99), r["seed"]))


def _finish(
    fig: Any, ax: Any, rows: list[dict[str, Any]], ylabel: str, legend: str, path: Path
) -> Path:
    """One tick per set (kind/seed), the axis label and the legend as title; saved."""
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['kind']}/{r['seed']}" for r in rows], rotation=60, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(legend, fontsize=8)
    return _save(fig, path)


def forget_loss_plot(results: dict[str, Any], path: Path) -> Path:
    """Per set: the oracles' interval (bar), the trained, calibrated and fixed-budget losses."""
    import matplotlib.pyplot as plt

    rows = _rows(results)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows) + 2), 4.0))
    for x, r in enumerate(rows):
        lo, hi = r["original_judge"]["forget_loss"]["band"]
        ax.plot(
            [x, x], [max(lo, 1e-4), hi], color="0.6", linewidth=6, solid_capstyle="butt", zorder=1
        )
        ax.scatter(
            [x], [r["report"]["before"]["forget"]["loss"]], marker="o", color="k", s=18, zorder=3
        )
        after = r["report"]["after"] or {}
        if "forget" in after:
            ax.scatter([x], [after["forget"]["loss"]], marker="*", color="tab:red", s=60, zorder=4)
        for f, mk in zip(r["fixed"], ("v", "s", "^"), strict=False):
            ax.scatter(
                [x], [f["after"]["forget"]["loss"]], marker=mk, color="tab:blue", s=14, zorder=3
            )
    ax.set_yscale("log")
    legend = (
        "grey: oracles' 95 % prediction interval; black: trained;\n"
        "red star: calibrated; blue: fixed 1 / 5 / 10 epochs (v, s, ^)"
    )
    return _finish(fig, ax, rows, "forget-set mean loss", legend, path)


def steps_plot(results: dict[str, Any], path: Path) -> Path:
    """Per set: the budget's interval (bar), its point prediction and the measured arrival."""
    import matplotlib.pyplot as plt

    rows = _rows(results)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(rows) + 2), 4.0))
    top = 1.0
    for r in rows:
        b = r["report"]["budget"]
        top = max(top, r["retrain_steps"], b["predicted"] or 0)
    for x, r in enumerate(rows):
        b = r["report"]["budget"]
        high = top * 1.1 if b["high"] is None or math.isinf(b["high"]) else b["high"]
        ax.plot([x, x], [b["low"], high], color="0.6", linewidth=6, solid_capstyle="butt", zorder=1)
        ax.scatter([x], [b["predicted"]], marker="_", color="k", s=80, zorder=3)
        arrival = r["arrival_step"]
        if arrival is not None:
            ax.scatter([x], [arrival], marker="*", color="tab:red", s=60, zorder=4)
        else:
            ax.scatter([x], [top * 1.05], marker="x", color="tab:red", s=30, zorder=4)
    ax.axhline(rows[0]["retrain_steps"] if rows else 0, color="tab:green", linestyle="--")
    legend = (
        "grey: budget interval; black: prediction;\n"
        "red star: measured arrival (x: none); green: cost of retraining"
    )
    return _finish(fig, ax, rows, "fine-tuning steps", legend, path)


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    """Both plots into ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    return [
        forget_loss_plot(results, out / "forget_loss_vs_oracles.png"),
        steps_plot(results, out / "steps_vs_budget.png"),
    ]
