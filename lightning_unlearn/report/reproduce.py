"""The plots and the report of the paper's experiment
(:func:`~lightning_unlearn.experiments.reproduce.run_reproduce`), from its results dictionary
(the claims' statistics: :func:`~lightning_unlearn.experiments.reproduce_summary.summarise`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lightning_unlearn.report.document import Report
from lightning_unlearn.report.plots import (
    plot_bin_series,
    plot_privacy_histogram,
    plot_score_grid,
)

__all__ = ["write_reproduce_report"]


def _fmt(ms: tuple[float, float]) -> str:
    return f"{ms[0]:.3g} ± {ms[1]:.2g}"


def write_reproduce_report(out: Path, results: dict[str, Any]) -> tuple[Path, Path]:
    """Write the five plots and ``report.md`` / ``report.html`` into ``out``.

    Args:
        out: output directory.
        results: the experiment's results (``settings``, ``order``, ``seeds``, ``summary``,
            ``command``, ``seconds``), as
            :func:`~lightning_unlearn.experiments.reproduce.run_reproduce` returns them.

    Returns:
        The Markdown and HTML paths.
    """
    _write_plots(out, results)
    s = results["summary"]
    r = Report("lightning-unlearn reproduce: per-instance privacy and unlearning on Fashion-MNIST")
    _add_setup(r, results)
    _add_claim1(r, s, results["settings"])
    _add_claim2(r, s)
    _add_claim3(r, s)
    r.add_heading("P and the data-difficulty scores")
    r.add_table(
        ["score", "Spearman ρ with P (mean ± sd over seeds)"],
        [[k, _fmt(v)] for k, v in s["spearman"].items()],
    )
    r.add_image("plots/p_vs_scores.png", "P against each difficulty score (seed 0)")
    r.add_image("plots/privacy_histogram.png", "Distribution of log10 P (seed 0)")
    return r.write(out)


def _write_plots(out: Path, results: dict[str, Any]) -> None:
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


def _add_setup(r: Report, results: dict[str, Any]) -> None:
    s = results["summary"]
    order = results["order"]
    settings = results["settings"]
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


def _add_claim1(r: Report, s: dict[str, Any], settings: dict[str, Any]) -> None:
    bins, methods = s["bins"], s["methods"]
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


def _add_claim2(r: Report, s: dict[str, Any]) -> None:
    r.add_heading("Claim 2: larger P, larger loss barrier")
    r.add_paragraph(
        "Loss barrier on the forget set between the trained model and its oracle (THEORY §6). "
        f"Spearman(P, barrier) over all P-bin forget sets: "
        f"{s['claim2']['spearman_P_barrier']}; Spearman(bin, barrier): "
        f"{s['claim2']['spearman_bin_barrier']}."
    )
    r.add_image("plots/barrier_vs_p_bin.png", "Loss barrier vs P bin")


def _add_claim3(r: Report, s: dict[str, Any]) -> None:
    methods = s["methods"]
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
