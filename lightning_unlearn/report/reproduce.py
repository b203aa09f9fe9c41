"""Summary statistics, plots and the report of ``lightning-unlearn reproduce``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from lightning_unlearn.accounting import fit_step_model
from lightning_unlearn.evaluation.functional import correlation_table
from lightning_unlearn.report import (
    Report,
    plot_bin_series,
    plot_privacy_histogram,
    plot_score_grid,
)

__all__ = ["summarise", "write_reproduce_report"]


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


def _gap(row: dict[str, Any]) -> float:
    """Oracle minus original forget-set mean loss: how far unlearning has to move the set."""
    return float(row["oracle"]["forget_loss"]) - float(row["original"]["forget_loss"])


def _steps(rows: list[dict[str, Any]], method: str) -> tuple[float, float]:
    return _mean_std([float(r["methods"][method]["steps"]) for r in rows])


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Aggregate the per-seed rows into the numbers behind the three claims.

    Returns:
        ``{"bins": [...], "methods": [...], "by_bin": {...}, "claim1": {...}, "claim2": {...},
        "claim3": {...}, "spearman": {...}}``; means and (sample) standard deviations over
        seeds.
    """
    seeds = results["seeds"]
    rows = [r for s in seeds for r in s["rows"]]
    methods = list(rows[0]["methods"]) if rows else []
    bins = list(dict.fromkeys(r["group"] for r in rows if r["kind"] == "P bin"))
    by_bin: dict[str, Any] = {}
    for b in bins:
        sel = [r for r in rows if r["group"] == b]
        by_bin[b] = {
            "P_max": _mean_std([r["P_max"] for r in sel]),
            "barrier": _mean_std([r["barrier"] for r in sel]),
            "budget_theory": _mean_std([float(r["budget_theory"]) for r in sel]),
            "oracle_forget_acc": _mean_std([r["oracle"]["forget_acc"] for r in sel]),
            "original_forget_acc": _mean_std([r["original"]["forget_acc"] for r in sel]),
            "steps": {
                m: _mean_std([float(r["methods"][m]["steps"]) for r in sel]) for m in methods
            },
            "censored": {m: sum(r["methods"][m]["censored"] for r in sel) for m in methods},
        }
    pbin_rows = [r for r in rows if r["kind"] == "P bin"]
    claim1: dict[str, Any] = {}
    for m in methods:
        p = [r["P_max"] for r in pbin_rows]
        k = [float(r["methods"][m]["steps"]) for r in pbin_rows]
        entry: dict[str, Any] = {"spearman_P_steps": _spearman(p, k)}
        if len(set(k)) > 1:
            model = fit_step_model(torch.tensor(p, dtype=torch.float64), torch.tensor(k))
            entry.update({"a": float(model.a), "b": float(model.b), "r2": float(model.r2)})
        claim1[m] = entry
    claim2 = {
        "spearman_P_barrier": _spearman(
            [r["P_max"] for r in pbin_rows], [r["barrier"] for r in pbin_rows]
        ),
        "spearman_bin_barrier": _spearman(
            [float(bins.index(r["group"])) for r in pbin_rows], [r["barrier"] for r in pbin_rows]
        ),
    }
    groups = [bins[-1]] if bins else []
    groups += list(dict.fromkeys(r["group"] for r in rows if r["kind"] == "heuristic"))
    claim3: dict[str, Any] = {}
    for g in groups:
        sel = [r for r in rows if r["group"] == g]
        claim3[g] = {
            "steps": {
                m: _mean_std([float(r["methods"][m]["steps"]) for r in sel]) for m in methods
            },
            "barrier": _mean_std([r["barrier"] for r in sel]),
            "P_mean": _mean_std([r["P_mean"] for r in sel]),
            "forget_gap": _mean_std([_gap(r) for r in sel]),
        }
    hardest: dict[str, str] = {}
    for m in methods:
        best = None
        for g, c in claim3.items():
            if best is None or c["steps"][m][0] > claim3[best]["steps"][m][0]:
                best = g
        if best is not None:
            hardest[m] = best
    names = list(seeds[0]["spearman"]) if seeds else []
    spearman = {n: _mean_std([s["spearman"][n] for s in seeds]) for n in names}
    return {
        "bins": bins,
        "methods": methods,
        "by_bin": by_bin,
        "claim1": claim1,
        "claim2": claim2,
        "claim3": claim3,
        "hardest_group": hardest,
        "spearman": spearman,
        "test_acc": _mean_std([s["test_acc"] for s in seeds]),
    }


def _fmt(ms: tuple[float, float]) -> str:
    return f"{ms[0]:.3g} ± {ms[1]:.2g}"


def write_reproduce_report(out: Path, results: dict[str, Any]) -> tuple[Path, Path]:
    """Write the four plots and ``report.md`` / ``report.html`` into ``out``."""
    s = results["summary"]
    order = results["order"]
    settings = results["settings"]
    seed0 = results["seeds"][0]
    plots = out / "plots"
    privacy0 = torch.tensor(seed0["privacy"], dtype=torch.float64)
    plot_privacy_histogram(privacy0, plots / "privacy_histogram.png", alpha=order)
    bins, methods = s["bins"], s["methods"]
    plot_bin_series(
        bins,
        {
            m: (
                [s["by_bin"][b]["steps"][m][0] for b in bins],
                [s["by_bin"][b]["steps"][m][1] for b in bins],
            )
            for m in methods
        },
        plots / "steps_vs_p_bin.png",
        ylabel=f"steps to oracle level (τ={settings['tau']}, cap {settings['max_steps']})",
        title="Steps to unlearn vs privacy-loss bin (mean ± sd over seeds)",
    )
    plot_bin_series(
        bins,
        {
            "original → oracle": (
                [s["by_bin"][b]["barrier"][0] for b in bins],
                [s["by_bin"][b]["barrier"][1] for b in bins],
            )
        },
        plots / "barrier_vs_p_bin.png",
        ylabel="forget-set loss barrier",
        title="Loss barrier vs privacy-loss bin (mean ± sd over seeds)",
    )
    scores0 = {k: torch.tensor(v, dtype=torch.float64) for k, v in seed0["scores"].items()}
    plot_score_grid(
        privacy0, scores0, plots / "p_vs_scores.png", alpha=order, rhos=seed0["spearman"]
    )
    groups = list(s["claim3"])
    plot_bin_series(
        groups,
        {
            m: (
                [s["claim3"][g]["steps"][m][0] for g in groups],
                [s["claim3"][g]["steps"][m][1] for g in groups],
            )
            for m in methods
        },
        plots / "hardest_group.png",
        ylabel="steps to oracle level",
        title="Which selection finds the hardest group to unlearn?",
        xlabel="forget set (top bin of each score)",
    )

    r = Report("lightning-unlearn reproduce: per-instance privacy and unlearning on Fashion-MNIST")
    seeds = results["seeds"]
    r.add_paragraph(
        f"{len(seeds)} seeds; {seeds[0]['num_train']} training images per seed (scale "
        f"{settings['scale']}); GroupNorm CNN, {settings['epochs']} epochs of SGD "
        f"(lr {settings['lr']}, batch {settings['batch_size']}); test accuracy "
        f"{_fmt(s['test_acc'])}; forget sets of {seeds[0]['forget_size']} examples; "
        f"P(x, α={order}) with nominal σ={settings['noise_multiplier']}; total "
        f"{results.get('seconds', '?')} s."
    )
    r.add_code(results["command"])
    r.add_heading("Claim 1: P predicts the steps needed to unlearn")
    r.add_paragraph(
        f"Steps to unlearn: first check (every {settings['check_every']} steps) at which the "
        f"forget set's mean loss is within τ={settings['tau']} of the retrained oracle's "
        f"(THEORY §6); runs that never got there count as the cap ({settings['max_steps']})."
    )
    headers = [
        "P bin",
        "P(F) max",
        "barrier",
        *[f"steps {m}" for m in methods],
        *[f"capped {m}" for m in methods],
        "budget THEORY §5",
    ]
    r.add_table(
        headers,
        [
            [
                b,
                _fmt(s["by_bin"][b]["P_max"]),
                _fmt(s["by_bin"][b]["barrier"]),
                *[_fmt(s["by_bin"][b]["steps"][m]) for m in methods],
                *[s["by_bin"][b]["censored"][m] for m in methods],
                _fmt(s["by_bin"][b]["budget_theory"]),
            ]
            for b in bins
        ],
    )
    r.add_table(
        ["method", "Spearman(P, steps)", "fit k = a log P + b: a", "b", "R²"],
        [
            [m, c.get("spearman_P_steps"), c.get("a"), c.get("b"), c.get("r2")]
            for m, c in s["claim1"].items()
        ],
    )
    r.add_image("plots/steps_vs_p_bin.png", "Steps to unlearn vs P bin, both methods")
    r.add_heading("Claim 2: larger P, larger loss barrier")
    r.add_paragraph(
        "Loss barrier on the forget set between the trained model and its oracle (THEORY §6). "
        f"Spearman(P, barrier) over all P-bin forget sets: "
        f"{s['claim2']['spearman_P_barrier']}; Spearman(bin, barrier): "
        f"{s['claim2']['spearman_bin_barrier']}."
    )
    r.add_image("plots/barrier_vs_p_bin.png", "Loss barrier vs P bin")
    r.add_heading("Claim 3: P finds harder groups than the heuristics")
    r.add_table(
        ["forget set", *[f"steps {m}" for m in methods], "barrier", "mean P", "loss gap"],
        [
            [
                g,
                *[_fmt(c["steps"][m]) for m in methods],
                _fmt(c["barrier"]),
                _fmt(c["P_mean"]),
                _fmt(c["forget_gap"]),
            ]
            for g, c in s["claim3"].items()
        ],
    )
    r.add_paragraph(
        "Loss gap: the oracle's forget-set mean loss minus the original model's, i.e. how far "
        "unlearning has to move the set. Hardest group (most steps) per method: "
        + ", ".join(f"{m}: {g}" for m, g in s["hardest_group"].items())
        + "."
    )
    r.add_image("plots/hardest_group.png", "Steps to unlearn of the top group of each score")
    r.add_heading("P and the data-difficulty scores")
    r.add_table(
        ["score", "Spearman ρ with P (mean ± sd over seeds)"],
        [[k, _fmt(v)] for k, v in s["spearman"].items()],
    )
    r.add_image("plots/p_vs_scores.png", "P against each difficulty score (seed 0)")
    r.add_image("plots/privacy_histogram.png", "Distribution of log10 P (seed 0)")
    return r.write(out)
